"""Health checks: one per device and resource, on plain snapshots, mapped to alarm codes.

The daemon copies what its drivers, journal and tables report into the small frozen
snapshot dataclasses below (this module imports no driver and reads no clock), calls
:meth:`HealthChecker.run` with the monotonic ``now`` and the ``wall`` clock, and feeds the
results into the alarm registry with :func:`apply`::

    results = checker.run(snapshot, now, wall)
    for change in apply(results, registry, now, wall):
        log / journal / publish change

Every :class:`CheckResult` names the alarm code it governs (``alarm``), whatever its
status: ``failed`` and ``degraded`` raise it, ``ok`` clears it (after the debounces of
:mod:`laned.health.alarms`), ``unknown`` (nothing to judge by) leaves it as it is. For an
event alarm (``clock_jump``) a failed result is one occurrence and ``ok`` does nothing.

A part of the snapshot that is ``None`` is not configured on this lane (no fee display,
an entry lane without fee table…): no result at all, hence no alarm. When a device is
down, the checks that depend on it (RSU initialised and heartbeat, input freshness) report
``ok`` "not applicable" so that one cause raises one alarm (``rsu_offline``,
``io_offline``), not three.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from laned.health.alarms import AlarmChange, AlarmKind, AlarmRegistry


class CheckStatus(enum.StrEnum):
    OK = "ok"
    DEGRADED = "degraded"  # works, but worse than it should (slow journal, old status list)
    FAILED = "failed"  # does not work (link down, table expired)
    UNKNOWN = "unknown"  # nothing to judge by (no reading available)

    @property
    def rank(self) -> int:
        return _STATUS_RANK[self]


_STATUS_RANK = {CheckStatus.OK: 0, CheckStatus.UNKNOWN: 1, CheckStatus.DEGRADED: 2, CheckStatus.FAILED: 3}


@dataclass(frozen=True, slots=True)
class CheckResult:
    name: str  # "rsu.link", "io_module.inputs", "journal.disk" …
    status: CheckStatus
    detail: str
    alarm: str | None  # the alarm code this check governs (raised unless ok), None: none
    value: float | None = None  # the number judged (an age, a jump, free bytes), for `laned status`

    @property
    def ok(self) -> bool:
        return self.status is CheckStatus.OK


def overall(results: Iterable[CheckResult]) -> CheckStatus:
    """The worst status of ``results`` (``ok`` when there are none)."""
    return max((r.status for r in results), key=lambda s: s.rank, default=CheckStatus.OK)


# -- settings -------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class HealthSettings:
    # An RSU heartbeats every 3–60 s (RsuLink docstring, document (3)); a little over the
    # slowest interval, and under RsuLink's default silence_timeout (70 s) at which the
    # link is reopened, so the booth learns of the silence before the reconnect.
    rsu_heartbeat_limit_s: float = 65.0
    # The interlock's staleness (InterlockSettings.staleness, config barrier.staleness_s):
    # the safety loop is polled at ≥ 20 Hz, so a sample older than this is a late poll.
    input_staleness_s: float = 0.25
    presence_inputs: tuple[str, ...] = ("safety_loop",)  # Signal values; InterlockSettings.presence
    # The RSU gives up on an OBU after ~1.1 s (RSU_PROTOCOL.md) and an intent is committed
    # before every C6: a commit slower than this leaves too little of that time.
    journal_slow_commit_s: float = 0.2
    disk_min_free_bytes: int = 256 * 1024 * 1024  # the journal, the outbox backlog of days offline, logs
    disk_min_free_pct: float = 5.0
    clock_jump_s: float = 2.0  # NTP slews small errors; a step larger than this is a jump
    status_list_max_age_s: float = 48 * 3600.0  # laned's default; the operator's rule may be stricter
    raise_travel_timeout_s: float = 6.0  # config barrier.raise_travel_timeout_s

    def __post_init__(self) -> None:
        for name in ("rsu_heartbeat_limit_s", "input_staleness_s", "journal_slow_commit_s", "clock_jump_s",
                     "status_list_max_age_s", "raise_travel_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"HealthSettings.{name} must be > 0, got {getattr(self, name)}")
        if self.disk_min_free_bytes < 0 or not 0 <= self.disk_min_free_pct < 100:
            raise ValueError("HealthSettings: disk_min_free_bytes must be ≥ 0 and disk_min_free_pct in [0, 100)")


# -- snapshots (filled by the daemon from its drivers) --------------------------------------------

@dataclass(frozen=True, slots=True)
class RsuSnapshot:
    """From RsuLink (``connected``, ``status.reason``, ``last_seen``, ``description``) and
    the lane machine (a B0 with status 0 since this connection)."""

    connected: bool
    reason: str = ""  # why it is not connected (LinkStatus.reason)
    connected_at: float | None = None  # monotonic time the current connection came up
    initialised: bool = False  # a B0 with RSU status 0 arrived since connected_at
    b0_status: int | None = None  # the status of the latest B0 on this connection, if any
    last_seen: float | None = None  # monotonic arrival of the latest frame (heartbeats count)
    description: str = ""  # "/dev/laned-rsu", "tcp://10.0.0.5:5000"
    name: str = "rsu"


@dataclass(frozen=True, slots=True)
class InputReading:
    """The latest sample of one input (LaneIO.sample): ``active`` None is unknown, ``at``
    None is "never read"."""

    signal: str  # a Signal value: "safety_loop" …
    active: bool | None
    at: float | None


class IoBackend(enum.StrEnum):
    MODBUS = "modbus"  # a DI/DO module: offline raises io_offline
    GPIO = "gpio"  # the lane PC's own pins: unusable raises gpio_fault


@dataclass(frozen=True, slots=True)
class IoSnapshot:
    """From a LaneIO: ``health()`` (online, detail), its read-back mismatches and
    ``sample(signal)`` of every presence input."""

    name: str  # "io_module", "io"
    online: bool
    detail: str = ""  # DeviceHealth.detail
    backend: IoBackend = IoBackend.MODBUS
    readback_problems: tuple[str, ...] = ()  # one text per output whose read-back differs
    inputs: tuple[InputReading, ...] = ()


@dataclass(frozen=True, slots=True)
class DisplaySnapshot:
    name: str  # "fee_display"
    online: bool
    detail: str = ""  # DeviceHealth.detail
    readback_problems: tuple[str, ...] = ()  # fields whose read-back differs (if the profile reads back)


@dataclass(frozen=True, slots=True)
class JournalSnapshot:
    """The journal writer (``laned.journal.writer_health.WriterHealth``: ``writable``,
    ``last_error`` → ``detail``, ``alive``, ``last_commit_s``, ``max_commit_s``) and the file
    system under it (``shutil.disk_usage`` of its directory)."""

    writable: bool | None  # the last write succeeded; None: not known yet
    detail: str = ""  # the last write error
    writer_alive: bool | None = None  # the writer thread runs and is not wedged; None: not known
    disk_free_bytes: int | None = None
    disk_total_bytes: int | None = None
    last_commit_s: float | None = None  # duration of the latest commit
    max_commit_s: float | None = None  # the slowest commit since the previous snapshot
    path: str = ""  # the database, for the detail


@dataclass(frozen=True, slots=True)
class TablesSnapshot:
    """Fee table in force (None: none) and status list (None: none loaded). Naive datetimes
    are taken in the timezone of ``wall`` (the fee table's ``valid_from`` is local time)."""

    fee_table_version: int | None = None
    fee_table_valid_from: dt.datetime | None = None
    fee_table_valid_until: dt.datetime | None = None  # None: valid until replaced
    status_list_version: int | None = None
    status_list_updated_at: dt.datetime | None = None  # wall time of the list's issue or last delta
    fee_table_required: bool = True  # False on an entry lane (it writes, never prices)
    status_list_required: bool = True


@dataclass(frozen=True, slots=True)
class BarrierSnapshot:
    """From the interlock (``fault``) and the executor (the pending raise command)."""

    fault: str | None = None  # BarrierInterlock.fault: the latched fault, None when released
    release_after_s: float | None = None  # InterlockSettings.release_after, for the detail
    raise_commanded_at: float | None = None  # monotonic time of a raise not yet confirmed up
    up_limit: bool | None = None  # the BARRIER_UP limit switch input


@dataclass(frozen=True, slots=True)
class LaneSnapshot:
    """Everything the checks look at. ``None``: not present on this lane, not checked."""

    rsu: RsuSnapshot | None = None
    io: tuple[IoSnapshot, ...] = ()
    display: DisplaySnapshot | None = None
    journal: JournalSnapshot | None = None
    tables: TablesSnapshot | None = None
    barrier: BarrierSnapshot | None = None


# -- helpers ---------------------------------------------------------------------------------------

def _r(name: str, ok: bool, bad: CheckStatus, detail_ok: str, detail_bad: str, alarm: str | None,
       value: float | None = None) -> CheckResult:
    return CheckResult(name, CheckStatus.OK if ok else bad, detail_ok if ok else detail_bad, alarm, value)


def _na(name: str, why: str, alarm: str) -> CheckResult:
    return CheckResult(name, CheckStatus.OK, f"not applicable: {why}", alarm)


def _aligned(t: dt.datetime, wall: dt.datetime) -> dt.datetime:
    """``t`` comparable with ``wall``: a naive one is taken in the other's timezone (no
    conversion through the machine's local timezone, which would read the environment)."""
    if (t.tzinfo is None) == (wall.tzinfo is None):
        return t
    if t.tzinfo is None:
        return t.replace(tzinfo=wall.tzinfo)
    return t.replace(tzinfo=None)  # a naive wall: taken in t's timezone


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _mib(n: float) -> str:
    return f"{n / 1024 / 1024:.0f} MiB"


# -- the checks --------------------------------------------------------------------------------------

def check_rsu(s: RsuSnapshot, now: float, cfg: HealthSettings) -> list[CheckResult]:
    where = f" ({s.description})" if s.description else ""
    if not s.connected:
        down = f"link down: {s.reason or 'not connected'}"
        return [CheckResult(f"{s.name}.link", CheckStatus.FAILED, f"not connected{where}: {s.reason or 'unknown'}",
                            "rsu_offline"),
                _na(f"{s.name}.init", down, "rsu_not_initialised"),
                _na(f"{s.name}.heartbeat", down, "rsu_silent")]
    out = [CheckResult(f"{s.name}.link", CheckStatus.OK, f"connected{where}", "rsu_offline")]
    if s.initialised:
        out.append(CheckResult(f"{s.name}.init", CheckStatus.OK, "B0 ready seen since the connect",
                               "rsu_not_initialised"))
    else:
        why = ("no B0 since the connect" if s.b0_status is None
               else f"latest B0 has RSU status {s.b0_status:#04x} (not ready)")
        out.append(CheckResult(f"{s.name}.init", CheckStatus.FAILED, why, "rsu_not_initialised"))
    # A frame from an earlier connection says nothing about this one (RsuLink does the same).
    seen = s.last_seen if s.last_seen is not None and (s.connected_at is None or s.last_seen >= s.connected_at) \
        else None
    ref = seen if seen is not None else s.connected_at
    if ref is None:
        out.append(CheckResult(f"{s.name}.heartbeat", CheckStatus.UNKNOWN, "no frame and no connect time known",
                               "rsu_silent"))
    else:
        age = max(0.0, now - ref)
        limit = f"(limit {cfg.rsu_heartbeat_limit_s:g} s)"
        if seen is not None:
            ok_text, bad_text = f"last frame {_age(age)} ago", f"no frame for {_age(age)} {limit}"
        else:
            ok_text = f"connected {_age(age)} ago, nothing received yet"
            bad_text = f"nothing received in the {_age(age)} since the connect {limit}"
        out.append(_r(f"{s.name}.heartbeat", age <= cfg.rsu_heartbeat_limit_s, CheckStatus.FAILED, ok_text,
                      bad_text, "rsu_silent", age))
    return out


def check_io(s: IoSnapshot, now: float, cfg: HealthSettings) -> list[CheckResult]:
    offline_alarm = "gpio_fault" if s.backend is IoBackend.GPIO else "io_offline"
    out = [_r(f"{s.name}.online", s.online, CheckStatus.FAILED, s.detail or "answering",
              f"not answering: {s.detail or 'no detail'}", offline_alarm)]
    out.append(_r(f"{s.name}.readback", not s.readback_problems, CheckStatus.FAILED, "outputs read back as written",
                  "; ".join(s.readback_problems), "io_readback"))
    if not s.online:
        out.append(_na(f"{s.name}.inputs", f"{s.name} offline", "input_stale"))
        return out
    readings = {str(r.signal): r for r in s.inputs}
    problems: list[str] = []
    oldest = 0.0
    for sig in cfg.presence_inputs:
        r = readings.get(str(sig))
        if r is None or r.at is None:
            problems.append(f"{sig} never read")
            continue
        age = max(0.0, now - r.at)
        oldest = max(oldest, age)
        if r.active is None:
            problems.append(f"{sig} unknown (read failed)")
        elif age > cfg.input_staleness_s:
            problems.append(f"{sig} {age:.2f} s old (limit {cfg.input_staleness_s:g} s)")
    out.append(_r(f"{s.name}.inputs", not problems, CheckStatus.FAILED,
                  f"presence inputs fresh (oldest {oldest:.2f} s)",
                  "; ".join(problems) + ": counted as occupied, the arm is not lowered", "input_stale", oldest))
    return out


def check_display(s: DisplaySnapshot) -> list[CheckResult]:
    return [_r(f"{s.name}.online", s.online, CheckStatus.FAILED, s.detail or "answering",
               f"not answering: {s.detail or 'no detail'}", "display_offline"),
            _r(f"{s.name}.readback", not s.readback_problems, CheckStatus.FAILED, "shows what was written",
               "; ".join(s.readback_problems), "display_readback")]


def check_journal(s: JournalSnapshot, cfg: HealthSettings) -> list[CheckResult]:
    where = f" ({s.path})" if s.path else ""
    out = []
    if s.writable is None:
        out.append(CheckResult("journal.writable", CheckStatus.UNKNOWN, "nothing written yet", "journal_not_writable"))
    else:
        out.append(_r("journal.writable", s.writable, CheckStatus.FAILED, f"writable{where}",
                      f"cannot write{where}: {s.detail or 'no detail'}", "journal_not_writable"))
    if s.writer_alive is not None:
        out.append(_r("journal.writer", s.writer_alive, CheckStatus.FAILED, "writer thread running",
                      "the journal writer thread is not running: nothing can be written", "journal_not_writable"))
    free, total = s.disk_free_bytes, s.disk_total_bytes
    if free is None:
        out.append(CheckResult("journal.disk", CheckStatus.UNKNOWN, "disk usage not known", "disk_low"))
    else:
        pct = 100.0 * free / total if total else None
        shown = _mib(free) + (f" ({pct:.1f} %)" if pct is not None else "") + " free"
        low = free < cfg.disk_min_free_bytes or (pct is not None and pct < cfg.disk_min_free_pct)
        out.append(_r("journal.disk", not low, CheckStatus.DEGRADED, shown,
                      f"{shown}, below the minimum {_mib(cfg.disk_min_free_bytes)} / {cfg.disk_min_free_pct:g} %",
                      "disk_low", float(free)))
    times = [t for t in (s.last_commit_s, s.max_commit_s) if t is not None]
    if not times:
        out.append(CheckResult("journal.commit", CheckStatus.UNKNOWN, "no commit timed yet", "journal_slow"))
    else:
        worst = max(times)
        shown = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in (("last", s.last_commit_s), ("max", s.max_commit_s))
                          if v is not None)
        out.append(_r("journal.commit", worst <= cfg.journal_slow_commit_s, CheckStatus.DEGRADED,
                      f"commit {shown}", f"commit {shown} over {cfg.journal_slow_commit_s * 1000:.0f} ms",
                      "journal_slow", worst))
    return out


def check_tables(s: TablesSnapshot, wall: dt.datetime, cfg: HealthSettings) -> list[CheckResult]:
    out = []
    if not s.fee_table_required:
        out.append(_na("fee_table.present", "this lane does not price", "fee_table_missing"))
        out.append(_na("fee_table.valid", "this lane does not price", "fee_table_expired"))
    elif s.fee_table_version is None:
        out.append(CheckResult("fee_table.present", CheckStatus.FAILED, "no fee table loaded", "fee_table_missing"))
        out.append(_na("fee_table.valid", "no fee table", "fee_table_expired"))
    else:
        v = s.fee_table_version
        start = _aligned(s.fee_table_valid_from, wall) if s.fee_table_valid_from is not None else None
        end = _aligned(s.fee_table_valid_until, wall) if s.fee_table_valid_until is not None else None
        if start is not None and wall < start:
            out.append(CheckResult("fee_table.present", CheckStatus.FAILED,
                                   f"version {v} is valid only from {start.isoformat()}: no table in force",
                                   "fee_table_missing"))
        else:
            out.append(CheckResult("fee_table.present", CheckStatus.OK, f"version {v} in force", "fee_table_missing"))
        if end is not None and wall >= end:
            out.append(CheckResult("fee_table.valid", CheckStatus.FAILED,
                                   f"version {v} expired at {end.isoformat()} ({_age((wall - end).total_seconds())} "
                                   f"ago)", "fee_table_expired", (wall - end).total_seconds()))
        else:
            until = f"until {end.isoformat()}" if end is not None else "until replaced"
            out.append(CheckResult("fee_table.valid", CheckStatus.OK, f"version {v} valid {until}",
                                   "fee_table_expired"))
    if not s.status_list_required:
        out.append(_na("status_list.present", "not used on this lane", "status_list_missing"))
        out.append(_na("status_list.age", "not used on this lane", "status_list_old"))
    elif s.status_list_version is None:
        out.append(CheckResult("status_list.present", CheckStatus.FAILED, "no status list loaded",
                               "status_list_missing"))
        out.append(_na("status_list.age", "no status list", "status_list_old"))
    else:
        v = s.status_list_version
        out.append(CheckResult("status_list.present", CheckStatus.OK, f"version {v}", "status_list_missing"))
        if s.status_list_updated_at is None:
            out.append(CheckResult("status_list.age", CheckStatus.UNKNOWN, f"version {v}, update time not known",
                                   "status_list_old"))
        else:
            age = (wall - _aligned(s.status_list_updated_at, wall)).total_seconds()
            out.append(_r("status_list.age", age <= cfg.status_list_max_age_s, CheckStatus.DEGRADED,
                          f"version {v}, updated {_age(max(age, 0.0))} ago",
                          f"version {v} is {_age(age)} old (max {_age(cfg.status_list_max_age_s)})",
                          "status_list_old", age))
    return out


def check_barrier(s: BarrierSnapshot, now: float, cfg: HealthSettings) -> list[CheckResult]:
    release = f" {s.release_after_s:g} s" if s.release_after_s is not None else ""
    out = [_r("barrier.interlock", s.fault is None, CheckStatus.FAILED, "no fault latched",
              f"{s.fault}: the arm is held up until every presence input is fresh and clear for the "
              f"release time{release}", "interlock_fault")]
    if s.raise_commanded_at is None or s.up_limit:
        out.append(CheckResult("barrier.raise", CheckStatus.OK,
                               "up limit reached" if s.up_limit else "no raise pending", "barrier_raise_timeout"))
    else:
        waited = max(0.0, now - s.raise_commanded_at)
        out.append(_r("barrier.raise", waited <= cfg.raise_travel_timeout_s, CheckStatus.FAILED,
                      f"raising for {waited:.1f} s",
                      f"up limit not reached {waited:.1f} s after the raise command "
                      f"(travel timeout {cfg.raise_travel_timeout_s:g} s)", "barrier_raise_timeout", waited))
    return out


def clock_jump(prev: tuple[float, dt.datetime], cur: tuple[float, dt.datetime]) -> float:
    """How far the wall clock moved beyond the monotonic clock between two (monotonic,
    wall) pairs, in seconds: + forward, − backward, ~0 when the clocks agree."""
    (m0, w0), (m1, w1) = prev, cur
    return (w1 - w0).total_seconds() - (m1 - m0)


class ClockWatch:
    """Remembers the previous (monotonic, wall) pair and reports a jump beyond the threshold.

    Pass an aware (or UTC) ``wall``: a naive local time jumps at a daylight-saving change."""

    def __init__(self, threshold_s: float) -> None:
        self.threshold_s = threshold_s
        self._prev: tuple[float, dt.datetime] | None = None

    def check(self, now: float, wall: dt.datetime) -> CheckResult:
        prev, self._prev = self._prev, (now, wall)
        if prev is None:
            return CheckResult("clock.jump", CheckStatus.OK, "first reading", "clock_jump")
        if (prev[1].tzinfo is None) != (wall.tzinfo is None):
            return CheckResult("clock.jump", CheckStatus.UNKNOWN, "wall clock readings mix naive and aware times",
                               "clock_jump")
        jump = clock_jump(prev, (now, wall))
        if abs(jump) <= self.threshold_s:
            return CheckResult("clock.jump", CheckStatus.OK, f"wall and monotonic agree within {abs(jump):.3f} s",
                               "clock_jump", jump)
        direction = "forward" if jump > 0 else "backward"
        return CheckResult("clock.jump", CheckStatus.FAILED,
                           f"wall clock jumped {jump:+.1f} s ({direction}) between {prev[1].isoformat()} and "
                           f"{wall.isoformat()} (monotonic {now - prev[0]:.1f} s)", "clock_jump", jump)


class HealthChecker:
    """Runs every check on a :class:`LaneSnapshot`; keeps the one piece of state the checks
    need between runs (the previous clock reading)."""

    def __init__(self, settings: HealthSettings | None = None) -> None:
        self.settings = settings or HealthSettings()
        self._clock = ClockWatch(self.settings.clock_jump_s)

    def run(self, snap: LaneSnapshot, now: float, wall: dt.datetime) -> list[CheckResult]:
        cfg = self.settings
        out: list[CheckResult] = []
        if snap.rsu is not None:
            out += check_rsu(snap.rsu, now, cfg)
        for io in snap.io:
            out += check_io(io, now, cfg)
        if snap.display is not None:
            out += check_display(snap.display)
        if snap.barrier is not None:
            out += check_barrier(snap.barrier, now, cfg)
        if snap.journal is not None:
            out += check_journal(snap.journal, cfg)
        if snap.tables is not None:
            out += check_tables(snap.tables, wall, cfg)
        out.append(self._clock.check(now, wall))
        return out


def apply(results: Sequence[CheckResult], registry: AlarmRegistry, now: float,
          wall: dt.datetime) -> list[AlarmChange]:
    """Feed check results into the registry, then :meth:`~AlarmRegistry.tick` it.

    Each result is its own source of its condition (``source=result.name``), so two checks
    governing one code (``io_readback`` of two devices, ``journal_not_writable`` from the
    write and the writer thread) hold it while either fails, and the alarm's detail joins
    theirs: every condition is recorded first, and the closing tick raises and clears.
    Unknown codes raise :class:`~laned.health.alarms.UnknownAlarm` before anything changes.
    """
    for r in results:
        if r.alarm is not None:
            registry.spec(r.alarm)
    changes: list[AlarmChange] = []
    for r in results:
        if r.alarm is None or r.status is CheckStatus.UNKNOWN:
            continue
        bad = r.status in (CheckStatus.FAILED, CheckStatus.DEGRADED)
        if registry.spec(r.alarm).kind is AlarmKind.EVENT:
            if bad:
                changes += registry.event(r.alarm, now, wall, r.detail)
        else:
            registry.set(r.alarm, bad, now, wall, r.detail, source=r.name, evaluate=False)
    changes += registry.tick(now, wall)
    return changes


__all__ = [
    "BarrierSnapshot", "CheckResult", "CheckStatus", "ClockWatch", "DisplaySnapshot", "HealthChecker",
    "HealthSettings", "InputReading", "IoBackend", "IoSnapshot", "JournalSnapshot", "LaneSnapshot", "RsuSnapshot",
    "TablesSnapshot", "apply", "check_barrier", "check_display", "check_io", "check_journal", "check_rsu",
    "check_tables", "clock_jump", "overall",
]
