"""Helpers of the lane scenario tests: the real daemon (``run_lane``) against the emulated
RSU on a pty, optionally with the emulated fee display and IO module on Modbus TCP, and
the journal read back from SQLite (read-only, as an operator's tool would).

A *lane bench* is one daemon run: :func:`lane_bench` starts the emulators, builds the
configuration the way ``laned run`` validates it, runs ``run_lane`` until the test is done
and stops it cleanly. Everything the executor did is in ``bench.seen`` (Observations).

Waits are deadline-bound polls; nothing sleeps a fixed time to let an effect happen.
"""

from __future__ import annotations

import asyncio
import sys
import signal
import os
import datetime as dt
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from unittest import mock
from zoneinfo import ZoneInfo

from laned import app as app_module
from laned.app import run_lane
from laned.config import DEFAULT_TIMEZONE, Config, parse_config
from laned.executor import LaneExecutor, Observation
from laned.health.alarms import CATALOGUE, AlarmKind, AlarmRegistry
from laned.health.monitor import HealthMonitor
from laned.journal import B5Result, Journal, TransactionIntent
from laned.lane.status_list import StatusList, card_key, obu_key
from laned.sim.lane_model import LaneModel
from laned.sim.modbus_devices import EmulatedFeeDisplay, EmulatedIoModule, ModbusDeviceServer
from laned.sim.rsu_emulator import EmulatorSettings, LogEntry, RsuEmulator, RsuState
from laned.sim.rsu_scenario import ObuScenario

FEE_TABLE = str(resources.files("laned") / "data" / "fee_table_sim.toml")
LANE_ID = "G0001-0201-03"
T = 8.0  # generous per-step deadline for a loaded 2-core box; each step normally takes ms
DISPLAY_SLAVE = 1
IO_SLAVE = 2

# Short timings so exception paths take a fraction of a second: the RSU gives an OBU up
# after 1.1 s without an answer (as the real one does) and re-reports an OBU that stays
# in the zone after 0.3 s; no heartbeats unless a test wants them.
FAST_RSU = EmulatorSettings(answer_timeout=1.1, heartbeat_interval=None, redetect_interval=0.3)


def lane_section(**overrides: Any) -> dict[str, Any]:
    lane: dict[str, Any] = {"lane_id": LANE_ID, "network": "3701", "station": "0201", "lane_number": 3,
                            "direction": "exit", "b5_timeout_s": 0.5, "transaction_timeout_s": 3.0}
    lane.update(overrides)
    return lane


def config_data(journal: Path, rsu_port: str, *, profile: str = "national", lane: dict[str, Any] | None = None,
                rsu: dict[str, Any] | None = None, devices: dict[str, Any] | None = None,
                status_list: Path | None = None, barrier: dict[str, Any] | None = None,
                log: dict[str, Any] | None = None) -> dict[str, Any]:
    """The configuration as TOML would hold it (``parse_config`` / a file for ``laned run``)."""
    data: dict[str, Any] = {
        "lane": lane_section(**(lane or {})),
        "rsu": {"profile": profile, "transport": "serial", "port": rsu_port, "baud": 115200, **(rsu or {})},
        "journal": {"path": str(journal)},
        "fee_table": {"path": FEE_TABLE},
    }
    if devices:
        data["devices"] = devices
    if status_list is not None:
        data["status_list"] = {"path": str(status_list)}
    if barrier:
        data["barrier"] = barrier
    if log:
        data["log"] = log
    return data


def to_toml(data: dict[str, Any]) -> str:
    """A minimal TOML writer for :func:`config_data` (tables of scalars and lists)."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"cannot write {v!r} as TOML")

    lines: list[str] = []

    def table(name: str, t: dict[str, Any]) -> None:
        lines.append(f"[{name}]")
        subs = []
        for k, v in t.items():
            if isinstance(v, dict):
                subs.append((f"{name}.{k}", v))
            else:
                lines.append(f"{k} = {value(v)}")
        lines.append("")
        for sub_name, sub in subs:
            table(sub_name, sub)

    for name, t in data.items():
        table(name, t)
    return "\n".join(lines)


def write_status_list(path: Path, *, obus: Iterable[bytes] = (), cards: Iterable[str] = ()) -> Path:
    """Save a status list file the daemon loads at start (cards as network + number, 20 digits)."""
    entries = [obu_key(o).with_reason() for o in obus] + [card_key(c[:4], c[4:]).with_reason() for c in cards]
    status = StatusList()
    status.load_full(1, entries)
    status.save(path)
    return path


def prefill_backlog(db: Path, lane_id: str, rows: int, wall: Callable[[], dt.datetime]) -> None:
    """``rows`` final rows in the journal in one commit, as a lane's backlog after an outage:
    one in five a charge (each with its own card), the rest lane events."""
    journal = Journal.open(db, lane_id, now=wall())
    try:
        with journal.batch("a backlog"):
            for n in range(rows):
                if n % 5 == 4:
                    intent = TransactionIntent(amount=3500, purchase_time=wall().replace(tzinfo=None, microsecond=0),
                                               obu_id=bytes.fromhex("a1fe0033"), plate="鲁A12345",
                                               card_network="3701", card_number=f"2399{n:012d}", vehicle_class=1,
                                               fee=3500)
                    entry = journal.record_intent(intent, wall())
                    journal.complete_charge(entry.seq, B5Result(tac=bytes.fromhex("674030a0"), balance_after=96500,
                                                                trans_time=intent.purchase_time), wall())
                else:
                    journal.record_event("follow_car", wall(), reason="follow_car")
    finally:
        journal.close()


def read_journal(path: Path) -> list[dict[str, Any]]:
    """Every row of ``transactions`` in seq order, read-only; [] while there is no table yet."""
    if not Path(path).exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=2.0)
    try:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM transactions ORDER BY seq")]
    except sqlite3.OperationalError as err:
        if "no such table" in str(err):
            return []
        raise
    finally:
        db.close()


async def poll_until(predicate: Callable[[], Any], timeout: float = T, what: str = "",
                     describe: Callable[[], str] | None = None) -> Any:
    """A deadline-bound poll (the daemon, the Modbus server and SQLite have no shared event)."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout} s for {what or predicate}" + (f"\n{describe()}" if describe else ""))
        await asyncio.sleep(0.01)  # the poll interval, not a wait for an effect
    return value


@dataclass
class LaneBench:
    emu: RsuEmulator
    config: Config
    display: EmulatedFeeDisplay | None = None
    io: EmulatedIoModule | None = None
    model: LaneModel | None = None
    seen: list[Observation] = field(default_factory=list)
    executor: LaneExecutor | None = None  # set once the daemon stopped
    task: asyncio.Task[LaneExecutor] | None = None
    # The executor while the daemon runs (run_lane's ``started=``): its ``rsu`` is the link a
    # test tells about a re-plugged adapter, as udev would (``rsu.device_added(path)``).
    running: LaneExecutor | None = None
    # The emulated Modbus servers: one for both devices, or one each (``split_modbus``), so
    # that one device's server can go offline alone.
    display_server: ModbusDeviceServer | None = None
    io_server: ModbusDeviceServer | None = None
    # Called synchronously with each observation, inside the executor's step: what a hook
    # reads from the journal is what was durable when the executor acted.
    hooks: list[Callable[[Observation], None]] = field(default_factory=list)

    def observe(self, o: Observation) -> None:
        self.seen.append(o)
        for hook in self.hooks:
            hook(o)

    @property
    def journal_path(self) -> Path:
        return self.config.journal.path

    def rows(self) -> list[dict[str, Any]]:
        return read_journal(self.journal_path)

    def observed(self, kind: str) -> list[dict[str, Any]]:
        return [o.detail for o in self.seen if o.kind == kind]

    def alarms(self, change: Literal["raised", "cleared"]) -> list[str]:
        """Alarm codes raised (or cleared) by the health monitor so far, in order."""
        return [o.detail["code"] for o in self.seen if o.kind == f"alarm_{change}"]

    def alarm_at(self, code: str, change: Literal["raised", "cleared"], after: float = 0.0) -> float | None:
        """Monotonic time ``code`` was first raised (or cleared) at or after ``after``."""
        return next((o.at for o in self.seen if o.kind == f"alarm_{change}" and o.detail["code"] == code
                     and o.at >= after), None)

    def events_at(self, kind: str, after: float = 0.0) -> float | None:
        """Monotonic time the lane first journalled a lane event ``kind`` at or after ``after``
        (the observation is made as the event is handed to the journal writer)."""
        return next((o.at for o in self.seen if o.kind == "event" and o.detail["kind"] == kind and o.at >= after),
                    None)

    def c2_for(self, obu_id: str) -> list[LogEntry]:
        return [e for e in self.emu.received("C2") if e.obu_id == obu_id]

    def c6_for(self, obu_id: str) -> list[LogEntry]:
        return [e for e in self.emu.received("C6") if e.obu_id == obu_id]

    def describe(self) -> str:
        emu = self.emu
        lines = [f"emulator {emu.state}, counters {dict(emu.counters)}, charges {len(emu.charges)}"]
        lines += [f"  {e.direction} {e.name} {e.obu_id or ''} {e.note}" for e in emu.log[-25:]]
        lines += [f"  lane {o.kind} {o.detail}" for o in self.seen[-25:]]
        lines += [f"  journal {r['seq']} {r['kind']} {r['state']} {r['reason']}" for r in self.rows()]
        if self.display is not None:
            lines.append(f"  display {self.display.shown()}")
        return "\n".join(lines)

    async def until(self, predicate: Callable[[], Any], timeout: float = T, what: str = "") -> Any:
        if self.task is not None and self.task.done():
            self.task.result()  # what stopped the daemon
        return await poll_until(predicate, timeout, what, self.describe)

    async def decided(self, kind: str, timeout: float = T) -> dict[str, Any]:
        """The first observation of ``kind`` (refused, unknown, barrier …)."""
        found: dict[str, Any] = await self.until(lambda: next(iter(self.observed(kind)), None), timeout,
                                                 f"the lane to report {kind!r}")
        return found

    async def journal_row(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = T,
                          what: str = "a journal row") -> dict[str, Any]:
        row: dict[str, Any] = await self.until(lambda: next((r for r in self.rows() if predicate(r)), None),
                                               timeout, what)
        return row

    async def display_shows(self, line1: str, timeout: float = T) -> Any:
        assert self.display is not None, "no fee display on this bench"
        display = self.display
        return await self.until(lambda: display.shown() if display.shown().line1 == line1 else None, timeout,
                                f"the fee display to show {line1!r}")


@asynccontextmanager
async def lane_bench(tmp_path: Path, obus: Iterable[ObuScenario] = (), *, profile: str = "national",
                     lane: dict[str, Any] | None = None, rsu: dict[str, Any] | None = None,
                     settings: EmulatorSettings = FAST_RSU, display: bool = True,
                     model: LaneModel | None = None, status_list: Path | None = None,
                     barrier: dict[str, Any] | None = None,
                     hooks: Iterable[Callable[[Observation], None]] = (),
                     rsu_transport: Literal["pty", "tcp"] = "pty", split_modbus: bool = False,
                     journal_options: dict[str, Any] | None = None,
                     wall: Callable[[], dt.datetime] | None = None,
                     alarm_debounce: float | None = None,
                     health_interval: float | None = None,
                     health: dict[str, Any] | None = None,
                     display_on_offline: str | None = None,
                     uplink: dict[str, Any] | None = None) -> AsyncIterator[LaneBench]:
    """The daemon against the emulated RSU (and fee display; IO module wired to ``model``).

    Fault-injection knobs: ``rsu_transport="tcp"`` puts the RSU on a TCP port instead of a
    pty; ``split_modbus`` gives the display and the IO module a Modbus TCP server each
    (``bench.display_server`` / ``bench.io_server``; shared by default, as one gateway);
    ``journal_options`` and ``wall`` go to ``run_lane`` (commit faults, the lane's civil
    clock); ``alarm_debounce`` multiplies every condition alarm's raise and clear debounce
    of the catalogue (0.1: rsu_offline after 0.5 s instead of 5 s), so that a short
    outage shows the whole alarm life cycle; ``health`` is the ``[health]`` section;
    ``uplink`` the ``[uplink]`` section (the centre link, a broker of the test's own).
    """
    async with AsyncExitStack() as stack:
        if alarm_debounce is not None:
            stack.enter_context(mock.patch.object(app_module, "AlarmRegistry", scaled_registry(alarm_debounce)))
        if health_interval is not None:
            stack.enter_context(mock.patch.object(app_module, "HealthMonitor", checking_every(health_interval)))
        emu = await stack.enter_async_context(RsuEmulator(obus, profile=profile, settings=settings,
                                                          transport=rsu_transport))
        devices: dict[str, Any] = {}
        fee_display = io = None
        display_server = io_server = None
        if display or model is not None:
            if display:
                fee_display = EmulatedFeeDisplay(DISPLAY_SLAVE)
            if model is not None:
                io = EmulatedIoModule(IO_SLAVE)
                io.attach_lane_model(model)
            groups = [[d] for d in (fee_display, io) if d is not None] if split_modbus else \
                [[d for d in (fee_display, io) if d is not None]]
            for group in groups:
                server = await stack.enter_async_context(ModbusDeviceServer(group, transport="tcp"))
                port = server.link.port  # type: ignore[union-attr]
                for device in group:
                    if device is fee_display:
                        display_server = server
                        devices["fee_display"] = {"kind": "modbus_tcp", "host": "127.0.0.1", "port": port,
                                                  "slave": DISPLAY_SLAVE}
                        if display_on_offline is not None:
                            devices["fee_display"]["on_offline"] = display_on_offline
                    else:
                        io_server = server
                        devices["io"] = {"kind": "modbus_tcp", "host": "127.0.0.1", "port": port, "slave": IO_SLAVE}
        if rsu_transport == "tcp":
            rsu = {"transport": "tcp", "host": "127.0.0.1", "tcp_port": emu.tcp_port, **(rsu or {})}
        data = config_data(tmp_path / "journal.db", emu.path if rsu_transport == "pty" else "", profile=profile,
                           lane=lane, rsu=rsu, devices=devices, status_list=status_list, barrier=barrier)
        if rsu_transport == "tcp":
            del data["rsu"]["port"], data["rsu"]["baud"]
        if health:
            data["health"] = health
        if uplink:
            data["uplink"] = uplink
        cfg = parse_config(data)
        bench = LaneBench(emu, cfg, fee_display, io, model, hooks=list(hooks), display_server=display_server,
                          io_server=io_server)
        stop = asyncio.Event()

        def started(executor: LaneExecutor) -> None:
            bench.running = executor

        extra: dict[str, Any] = {"journal_options": journal_options, "started": started}
        if wall is not None:
            extra["wall"] = wall
        bench.task = asyncio.create_task(run_lane(cfg, stop=stop, observe=bench.observe, **extra))
        mover = asyncio.create_task(_move(model)) if model is not None else None
        try:
            await bench.until(lambda: emu.state is not RsuState.UNINIT and emu.received("C1"), T,
                              "the daemon to initialise the RSU (C0, C1)")
            await bench.until(lambda: bench.running is not None, T, "run_lane to start every task")
            yield bench
        except BaseException:
            print(bench.describe())  # shown by pytest with the failure
            raise
        finally:
            if mover is not None:
                mover.cancel()
            stop.set()
            bench.executor = await asyncio.wait_for(bench.task, 15)


def checking_every(interval: float) -> type[HealthMonitor]:
    """The daemon's HealthMonitor with its checks every ``interval`` (``run``'s own parameter)."""

    class Monitor(HealthMonitor):
        async def run(self, interval_: float = interval, after: Callable[[], object] = lambda: None) -> None:
            await super().run(interval_, after)

    return Monitor


def scaled_registry(scale: float) -> Callable[..., AlarmRegistry]:
    """An AlarmRegistry factory whose condition debounces are the catalogue's × ``scale``
    (the registry's own per-code override, ``debounce_s`` / ``clear_debounce_s``)."""
    conditions = [spec for spec in CATALOGUE.values() if spec.kind is AlarmKind.CONDITION]
    raise_after = {s.code: s.raise_after_s * scale for s in conditions}
    clear_after = {s.code: s.clear_after_s * scale for s in conditions}

    def factory(*args: Any, **kwargs: Any) -> AlarmRegistry:
        kwargs.setdefault("debounce_s", raise_after)
        kwargs.setdefault("clear_debounce_s", clear_after)
        return AlarmRegistry(*args, **kwargs)

    return factory


async def _move(model: LaneModel) -> None:
    """Keep the lane model's vehicles and arm moving on the real clock."""
    while True:
        model.advance(time.monotonic())
        await asyncio.sleep(0.01)


def today() -> dt.date:
    """The lane's civil date (the daemon compares contract dates with its wall clock, which
    runs in lane.timezone — not in the host's time zone)."""
    return dt.datetime.now(ZoneInfo(DEFAULT_TIMEZONE)).date()


class LanedProcess:
    """One ``laned run`` child process, its output in a log file."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.log_path = config, log
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        # The log file is the child's stdout: opened once, before it starts (not on the hot path).
        with open(self.log_path, "ab") as out:  # noqa: ASYNC230 - a restart appends
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "laned.cli", "run", "--config", str(self.config),
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT)

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def check_running(self) -> None:
        assert self.proc is not None
        if self.proc.returncode is not None:
            raise AssertionError(f"laned exited with {self.proc.returncode}:\n{self.log()}")

    async def kill(self) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        assert await asyncio.wait_for(self.proc.wait(), 10) == -signal.SIGKILL

    async def stop(self) -> int:
        """SIGTERM: a clean stop (exit status 0)."""
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), 15)

    async def ensure_dead(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    def alive(self) -> bool:
        """True while it runs (for a wait condition); its log in the failure once it exited."""
        self.check_running()
        return True

