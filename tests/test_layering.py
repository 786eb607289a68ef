"""The sans-IO core stays sans-IO: ``laned/lane/`` and ``laned/protocol/`` import no driver,
no event loop, no clock, no thread and no socket (ARCHITECTURE.md, "One process, layered").

Time is passed in; the values the lane shares with the drivers (input samples, signals,
display content) live in the lane's layer and the drivers import them from there.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

import laned

PACKAGE = pathlib.Path(laned.__file__).parent
CORE = ("lane", "protocol")
FORBIDDEN = ("laned.drivers", "laned.app", "laned.executor", "asyncio", "time", "threading", "socket", "serial")

# Known exceptions, each with its reason. Remove an entry when its module is fixed.
KNOWN: dict[tuple[str, str], str] = {}


def _imports(path: pathlib.Path) -> list[tuple[str, int]]:
    """Every module an import statement names, anywhere in the file (function bodies too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node.lineno))
            found += [(f"{node.module}.{alias.name}", node.lineno) for alias in node.names]
    return found


def _forbidden(module: str) -> str | None:
    return next((f for f in FORBIDDEN if module == f or module.startswith(f + ".")), None)


CORE_FILES = sorted(p for part in CORE for p in (PACKAGE / part).rglob("*.py"))


@pytest.mark.parametrize("path", CORE_FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_sans_io_core_imports_no_driver_loop_clock_or_socket(path):
    rel = str(path.relative_to(PACKAGE))
    bad = sorted({f"{module} (line {line})" for module, line in _imports(path)
                  if (f := _forbidden(module)) is not None and (rel, f) not in KNOWN})
    assert not bad, f"laned/{rel} imports {', '.join(bad)}: the lane and protocol layers are sans-IO"


def test_the_scan_would_see_the_old_driver_imports(tmp_path):
    """The check itself: machine.py used to import DisplayContent, InputSample, Light and
    Signal from laned.drivers; such a file is caught, also with the import in a function."""
    old = tmp_path / "machine.py"
    old.write_text("from laned.drivers.fee_display import DisplayContent\n"
                   "def f():\n    import time\n    from laned.drivers import lane_io\n")
    assert {_forbidden(m) for m, _ in _imports(old)} >= {"laned.drivers", "time"}


def test_the_known_exceptions_are_still_needed():
    for rel, module in KNOWN:
        assert any(_forbidden(m) == module for m, _ in _imports(PACKAGE / rel)), f"{rel} no longer imports {module}"


def test_the_drivers_share_the_lanes_value_types_not_copies_of_them():
    from laned.drivers import fee_display, lane_io
    from laned.lane import display, signals

    assert lane_io.InputSample is signals.InputSample and lane_io.Signal is signals.Signal
    assert lane_io.Light is signals.Light and fee_display.DisplayContent is display.DisplayContent


# What ships to a lane PC or a centre never imports the simulator: laned/sim/ is emulated
# devices and a throw-away centre; what both need (certificates, broker rules) is in
# laned/provisioning/. Only the CLI's `sim` command and the simulator itself import it.
NOT_SIM = ("centre", "provisioning", "uplink", "journal", "health", "drivers", "config")
NOT_SIM_FILES = sorted([*(p for part in NOT_SIM for p in (PACKAGE / part).rglob("*.py")), *PACKAGE.glob("*.py")])


@pytest.mark.parametrize("path", NOT_SIM_FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_centre_and_the_lane_services_import_nothing_from_the_simulator(path):
    bad = sorted({f"{module} (line {line})" for module, line in _imports(path)
                  if module == "laned.sim" or module.startswith("laned.sim.")})
    assert not bad, f"laned/{path.relative_to(PACKAGE)} imports {', '.join(bad)}: the simulator is not shipped code"
