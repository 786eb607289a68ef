"""Faults: how fast the real daemon degrades and recovers, and whether the two rules hold.

Runs a representative subset of the fault-injection scenarios of ``hil_tests/`` (the
same code: ``hil_tests/fault_scenarios.py``) ``--runs`` times each and measures, per run:

* ``degrade``: fault injected → ETC closed (the lane's own ``etc_closed`` alarm, raised in
  the executor step that closed ETC; the same step hands the "ETC暂停 请走人工车道"
  screen, the red light and the ``etc_closed`` journal event to their workers). For the
  fee display (``on_offline = "continue"``: ETC stays open) it is the moment the lane
  raised ``display_offline``. For a full disk, the clock starts at the first commit that
  failed (nothing can notice a full disk before something is written).
* ``recover``: the device answers again → ETC open (``etc_opened``). For the TCP reset the
  RSU never went away, so it is counted from the reset. RSU faults: ``rsu_unplug`` is a
  USB-serial adapter pulled and plugged back under a new tty, reported as udev would
  (``device_added``); ``rsu_tcp_reboot`` an RSU on TCP that refuses connections for the
  outage and listens again (laned finds it by its reconnect back-off, as it finds an
  adapter back under its stable udev name); ``rsu_tcp_reset`` a connection reset (RST)
  with the RSU still listening.
* ``served``: the device answers again → the first thing the lane did with it: the C6 to
  the vehicle that waited (RSU), the arm starting up for the vehicle that had paid (IO
  module), the display written again (display), the next vehicle's C6 (journal, TCP reset:
  from the reset).
* ``rules``: both rules of ARCHITECTURE.md held (``fault_scenarios.rule_problems``: no
  safety violation in the lane model, no OBU charged twice, the journal agrees with the
  cards, no intent left open).
* the alarm changes, with the alarm catalogue's own debounces (``--debounce-scale`` 1.0):
  ``<code>_raised_s`` after the fault, ``<code>_cleared_s`` after the device was back.

Everything runs in this process: ``run_lane`` (what ``laned run`` runs) with its SQLite
journal in a temporary folder, the RSU emulator on a pty (or TCP), the fee display and IO
module on a pymodbus TCP server, and the lane model, all on one event loop — so the
emulators' work is included in the figures, as is a 2-core machine's noise.

Prints one JSON object per fault: ``{"bench": "faults", "fault": …, "runs": …,
"rules_held": …, "degrade_p50_ms": …, "degrade_max_ms": …, "recover_…", "served_…",
"alarms": {code: {"raised_p50_s", "cleared_p50_s", "runs"}}, …}``; the slow journal also
gives the C1 and C6 answer times next to the same run with a normal journal.

    .venv/bin/python bench/fault_bench.py [--runs 5] [--only rsu_unplug,io_outage] [--debounce-scale 1.0]
                                          [--log FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hil_tests"))

import fault_scenarios as fs  # noqa: E402  (the HIL tests' own scenarios)

# Targets (issue 8).
TARGET_RSU_DEGRADE_S = 1.0  # RSU lost → ETC closed
TARGET_RSU_SERVED_S = 2.0  # back in service after the RSU answers again

# Device alarms worth timing, per scenario.
ALARMS = {
    "rsu_unplug": ("etc_closed", "rsu_offline", "rsu_not_initialised"),
    "rsu_tcp_reset": ("etc_closed", "rsu_offline", "rsu_not_initialised"),
    "rsu_tcp_reboot": ("etc_closed", "rsu_offline", "rsu_not_initialised"),
    "io_outage": ("etc_closed", "io_offline", "interlock_fault"),
    "display_outage": ("display_offline", "interlock_fault"),
    "journal_disk_full": ("etc_closed", "journal_not_writable", "journal_failed"),
    "journal_slow": ("journal_slow", "interlock_fault"),
}


def scenarios(debounce: float | None) -> dict[str, Callable[[Path], Awaitable[fs.FaultRun]]]:
    return {
        "rsu_unplug": lambda tmp: fs.rsu_unplugged_before_b2(tmp, outage_s=6.0, debounce=debounce),
        "rsu_tcp_reset": lambda tmp: fs.rsu_connection_reset(tmp, debounce=debounce),
        "rsu_tcp_reboot": lambda tmp: fs.rsu_unplugged_before_b2(tmp, outage_s=6.0, debounce=debounce,
                                                                  transport="tcp"),
        "io_outage": lambda tmp: fs.io_module_lost_with_a_paid_car(tmp, "sent C6", outage_s=5.0, debounce=debounce),
        "display_outage": lambda tmp: fs.display_lost(tmp, outage_s=14.0, debounce=debounce),
        "journal_disk_full": lambda tmp: fs.journal_disk_full(tmp, outage_s=3.0, debounce=debounce),
        "journal_slow": lambda tmp: fs.journal_slow(tmp, vehicles=5, commit_s=0.2, debounce=debounce),
    }


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summary(name: str, runs: list[fs.FaultRun], extra: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"bench": "faults", "fault": name, "runs": len(runs)}
    problems = [r.notes["rule_problems"] for r in runs]
    out["rules_held"] = sum(1 for p in problems if not p)
    if any(problems):
        out["rule_problems"] = sorted({p for ps in problems for p in ps})
    for metric in ("degrade", "recover", "served"):
        values = [v for r in runs if (v := getattr(r, f"{metric}_s")) is not None]
        if name == "display_outage" and metric == "degrade":
            values = [r.notes["detected_s"] for r in runs]
        if values:
            out[f"{metric}_p50_ms"] = round(percentile(values, 50) * 1e3, 1)
            out[f"{metric}_max_ms"] = round(max(values) * 1e3, 1)
    alarms: dict[str, Any] = {}
    for code in ALARMS.get(name, ()):
        raised = [t - r.fault_at for r in runs if (t := r.bench.alarm_at(code, "raised", r.fault_at)) is not None]
        cleared = [t - (r.back_at or r.fault_at) for r in runs
                   if (t := r.bench.alarm_at(code, "cleared", r.back_at or r.fault_at)) is not None]
        entry: dict[str, Any] = {"raised_runs": len(raised), "cleared_runs": len(cleared)}
        if raised:
            entry["raised_p50_s"] = round(statistics.median(raised), 2)
        if cleared:
            entry["cleared_p50_s"] = round(statistics.median(cleared), 2)
        alarms[code] = entry
    out["alarms"] = alarms
    out.update(extra)
    return out


def answer_times(runs: list[fs.FaultRun], prefix: str) -> dict[str, float]:
    """C1 and C6 answer times over all the runs' answers: the median and the slowest."""
    out = {}
    for frame in ("C1", "C6"):
        values = [t for r in runs for t in fs.turnarounds(r.bench, frame)]
        out[f"{prefix}{frame.lower()}_p50_ms"] = round(statistics.median(values) * 1e3, 2)
        out[f"{prefix}{frame.lower()}_max_ms"] = round(max(values) * 1e3, 2)
        out[f"{prefix}{frame.lower()}_answers"] = len(values)
    return out


async def run_fault(name: str, make: Callable[[Path], Awaitable[fs.FaultRun]], runs: int) -> list[fs.FaultRun]:
    done = []
    for i in range(runs):
        with tempfile.TemporaryDirectory(prefix=f"fault-bench-{name}-{i}-") as tmp:
            run = await make(Path(tmp))
            run.notes["rule_problems"] = fs.rule_problems(run.bench)  # while the journal is still there
            done.append(run)
    return done


def measure(args: argparse.Namespace) -> int:
    debounce = None if args.debounce_scale == 1.0 else args.debounce_scale
    table = scenarios(debounce)
    names = list(table) if not args.only else args.only.split(",")
    unknown = [n for n in names if n not in table]
    if unknown:
        print(f"unknown fault {unknown}; known: {', '.join(table)}", file=sys.stderr)
        return 2
    failed = 0
    for name in names:
        started = time.monotonic()
        runs = asyncio.run(run_fault(name, table[name], args.runs))
        extra: dict[str, Any] = {"wall_s": round(time.monotonic() - started, 1)}
        if name == "journal_slow":
            extra.update(answer_times(runs, ""))
            normal = asyncio.run(run_fault("journal_normal", lambda tmp: fs.journal_slow(
                tmp, vehicles=5, commit_s=0.0, debounce=debounce), args.runs))
            extra.update(answer_times(normal, "normal_journal_"))
        if name == "rsu_tcp_reset":
            extra["initialised_p50_ms"] = round(statistics.median(r.notes["initialised_s"] for r in runs) * 1e3, 1)
        if name == "display_outage":
            extra["rewritten_p50_ms"] = round(statistics.median(r.notes["rewritten_s"] for r in runs) * 1e3, 1)
            extra["rewritten_max_ms"] = round(max(r.notes["rewritten_s"] for r in runs) * 1e3, 1)
            # The display shares the Modbus link with the IO module: its unanswered requests
            # hold the link past the safety loop's staleness limit, which latches the interlock.
            extra["stale_latches_per_run"] = [r.notes["stale_latches"] for r in runs]
        line = summary(name, runs, extra)
        failed += line["runs"] - line["rules_held"]
        print(json.dumps(line, ensure_ascii=False), flush=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="runs of each fault (default 5)")
    ap.add_argument("--only", default="", help="comma-separated faults to run (default all): " +
                    ", ".join(scenarios(None)))
    ap.add_argument("--debounce-scale", type=float, default=1.0,
                    help="multiply the alarm catalogue's debounces (default 1.0: as in production)")
    ap.add_argument("--log", help="write laned's log (INFO) to this file (default: discarded)")
    args = ap.parse_args(argv)
    if args.runs < 1 or args.debounce_scale <= 0:
        ap.error("--runs must be at least 1 and --debounce-scale above 0")
    root = logging.getLogger()
    if args.log:
        logging.basicConfig(filename=args.log, level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    else:
        root.addHandler(logging.NullHandler())  # not logging.lastResort on stderr
    return measure(args)


if __name__ == "__main__":
    sys.exit(main())
