"""Fault injection through the real daemon: the scenarios the fault HIL tests assert and
``bench/fault_bench.py`` measures, and the checks of ARCHITECTURE.md's two rules.

A scenario runs one :func:`~lane_fixtures.lane_bench` (``run_lane`` against the emulated
RSU, the emulated fee display and IO module, and a lane model of vehicles, loops and the
arm), injects one fault, takes it away again and returns a :class:`FaultRun`: when the
fault was injected and when ETC was closed, when the device was back and when ETC was
open again and the next vehicle served, what the display and the light showed meanwhile,
and the bench itself for whatever else a test wants to look at.

Times are ``time.monotonic()``; the lane's observations carry the same clock (an
observation is made inside the executor's step that decided it). "ETC closed" is the
lane's own ``etc_closed`` alarm, raised in the step that closed ETC — the same step hands
the ``etc_closed`` journal event, the "ETC暂停 请走人工车道" display and the red light to
their workers; "ETC open" is the ``etc_opened`` event.

The two rules, checked after every scenario by :func:`rule_problems`:

1. the lane model recorded no :class:`~laned.sim.lane_model.SafetyViolation` (the
   barrier never moved down onto a vehicle, checked against where the vehicles really
   were, not what the sensors said);
2. no OBU was charged twice (the emulated RSU's purchases), and the journal agrees with
   the cards: each purchase is one journal row of that OBU, ``charged`` with the card's
   TAC or ``unknown`` (the lane never learned the result: reconciliation), no ``charged``
   row exists without a purchase, and no intent is left open once the daemon stopped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import socket
import sqlite3
import statistics
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lane_fixtures import FAST_RSU, T, LaneBench, lane_bench
from laned.drivers.fee_display import DisplayContent
from laned.drivers.lane_io import Light, Signal
from laned.journal.testing import CommitFaults
from laned.sim.modbus_devices import WriteRecord
from laned.sim.lane_model import BarrierSpec, LaneGeometry, LaneModel
from laned.sim.rsu_scenario import ObuScenario

CLOSED_LINE1, CLOSED_LINE2 = "ETC暂停", "请走人工车道"
# A short lane and brisk drivers (10 m/s), so that a vehicle reaches the arm in half a
# second and has left the lane a second after the arm is up; the arm travels in 0.4 s and
# is lowered 0.5 s after the loop is clear.
GEOMETRY = LaneGeometry(spawn_x=-6.0, safety_loop=(-1.0, 1.0), exit_x=4.0)
SPEED = 10.0
BARRIER = {"hold_off_s": 0.5, "release_after_s": 0.5}
# The tests scale every alarm debounce by 0.1 and run the health checks every 0.25 s (the
# daemon: once a second); an outage of 2 s then raises each device alarm (a driver takes up
# to a second to call a device offline) and shows it cleared soon after.
DEBOUNCE = 0.1
CHECK_S = 0.25
OUTAGE_S = 2.0


FAST_ALARMS: dict[str, Any] = {"alarm_debounce": DEBOUNCE, "health_interval": CHECK_S}


def alarm_knobs(debounce: float | None) -> dict[str, Any]:
    """``lane_bench`` keywords for a debounce scale (None: the daemon's own debounces and cadence)."""
    return {"alarm_debounce": debounce, "health_interval": None if debounce is None else CHECK_S}
# An OBU in the zone after its transaction is reported again only when a test says so.
QUIET_RSU = dataclasses.replace(FAST_RSU, redetect_interval=30.0)


def short_lane(**barrier: Any) -> LaneModel:
    return LaneModel(now=time.monotonic(), geometry=GEOMETRY, barrier=BarrierSpec(travel_time=0.4, **barrier))


def obu(n: int, **kw: Any) -> ObuScenario:
    """The n-th vehicle's OBU, with a card of its own (the re-detection memory keys on both)."""
    return ObuScenario(obu_id=f"a1{n:06x}", card_number=f"2301{n:012d}", **kw)


def now_for(model: LaneModel) -> float:
    return max(time.monotonic(), model.now)


# -- faults ----------------------------------------------------------------------------------

class GatedCommits:
    """A journal ``commit_hook`` that holds the first commit whose description starts with
    ``prefix`` ("writing the intent", "completing seq") until :meth:`release`: the lane is
    in the middle of answering the frame that commit belongs to."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.reached = threading.Event()
        self._release = threading.Event()
        self.commits: list[str] = []

    def __call__(self, what: str) -> None:
        self.commits.append(what)
        if what.startswith(self.prefix) and not self._release.is_set():
            self.reached.set()
            self._release.wait(2 * T)

    def release(self) -> None:
        self._release.set()


class DiskFull(CommitFaults):
    """A journal whose disk is full from :meth:`fill` until :meth:`free`: every commit that
    writes fails with SQLite's "database or disk is full" (``only``: just the commits whose
    description starts with that text). ``failures`` are (monotonic time, description)."""

    def __init__(self, only: str | None = None) -> None:
        super().__init__()
        self.only = only
        self.failures: list[tuple[float, str]] = []

    def fill(self) -> None:
        self.fail_next(1 << 30)

    def free(self) -> None:
        self.fail_next(0)

    def __call__(self, what: str) -> None:
        if self.only is not None and not what.startswith(self.only):
            return
        try:
            super().__call__(what)
        except sqlite3.OperationalError:
            self.failures.append((time.monotonic(), what))
            raise


def reset_rsu_connection(bench: LaneBench) -> None:
    """The RSU's TCP connection is reset (RST, as a rebooting RSU or a NAT box drops it) while
    the RSU keeps listening: SO_LINGER 0 on the emulator's end of the live connection, then
    close it. (The emulator has no public call for it; its connection is ``_port._writer``.)"""
    writer = bench.emu._port._writer  # type: ignore[union-attr]
    assert writer is not None, "no lane connected to the emulated RSU"
    sock: socket.socket = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()


async def unplug_rsu(bench: LaneBench) -> None:
    """The RSU's USB-serial adapter is pulled (pty) / the RSU goes away (TCP)."""
    await bench.emu.vanish()


async def replug_rsu(bench: LaneBench) -> float:
    """The adapter is back (a new tty path: tell the daemon, as udev would) / the RSU listens
    again. Returns the moment the device was there again."""
    where = await bench.emu.restore()
    back = time.monotonic()
    if bench.emu.transport == "pty":
        assert bench.running is not None
        bench.running.rsu.device_added(where)  # type: ignore[attr-defined]
    return back


# -- what the lane did ----------------------------------------------------------------------

@dataclass
class FaultRun:
    bench: LaneBench
    fault_at: float = 0.0  # the fault was injected
    degraded_at: float | None = None  # ETC closed (etc_closed raised by the lane)
    back_at: float | None = None  # the device answers again
    recovered_at: float | None = None  # ETC open again (etc_opened)
    served_at: float | None = None  # the first vehicle served after back_at (see the scenario)
    shown_degraded: DisplayContent | None = None  # the fee display while degraded
    light_degraded: Light | None = None  # the lane model's signal light while degraded
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def degrade_s(self) -> float | None:
        return None if self.degraded_at is None else self.degraded_at - self.fault_at

    @property
    def recover_s(self) -> float | None:
        if self.recovered_at is None or self.back_at is None:
            return None
        return self.recovered_at - self.back_at

    @property
    def served_s(self) -> float | None:
        if self.served_at is None or self.back_at is None:
            return None
        return self.served_at - self.back_at

    def raised(self) -> list[str]:
        return self.bench.alarms("raised")

    def cleared(self) -> list[str]:
        return self.bench.alarms("cleared")

    def journal_events(self) -> list[str]:
        return [r["kind"] for r in self.bench.rows() if r["state"] == "event"]


def lane_alarm_at(bench: LaneBench, code: str, after: float = 0.0) -> float | None:
    """When the lane machine itself raised ``code`` (before any debounce of the registry)."""
    return next((o.at for o in bench.seen if o.kind == "alarm" and o.detail["code"] == code and o.at >= after), None)


def stale_latches(bench: LaneBench, after: float = 0.0) -> int:
    """How often the interlock latched its fault because the safety loop's sample went stale
    (the lane re-raises interlock_fault every tick while it stays stale: one episode is a run
    of those less than 0.2 s apart)."""
    times = [o.at for o in bench.seen if o.kind == "alarm" and o.detail["code"] == "interlock_fault"
             and o.at >= after and " stale " in o.detail["detail"]]
    return sum(1 for i, t in enumerate(times) if i == 0 or t - times[i - 1] > 0.2)


def sent_at(bench: LaneBench, frame: str, obu_id: str | None = None, after: float = 0.0) -> float | None:
    return next((o.at for o in bench.seen if o.kind == "sent" and o.detail["type"] == frame and o.at >= after
                 and (obu_id is None or o.detail["obu_id"] == obu_id)), None)


def turnarounds(bench: LaneBench, answer: str) -> list[float]:
    """The lane's answer times (s) for ``answer`` frames (C1, C6), as the emulated RSU measured them."""
    return [e.turnaround for e in bench.emu.log if e.direction == "rx" and e.name == answer
            and e.turnaround is not None]


# -- the two rules -----------------------------------------------------------------------------

def rule_problems(bench: LaneBench, *, open_intents_allowed: bool = False) -> list[str]:
    """What broke ARCHITECTURE.md's two rules in this run ([] when both held)."""
    problems: list[str] = []
    model = bench.model
    if model is not None:
        problems += [f"rule 1: {v.kind} ({v.detail})" for v in model.violations]
    purchases = bench.emu.charges
    per_obu = Counter(p.obu_id for p in purchases)
    problems += [f"rule 2: OBU {o} charged {n} times by the RSU" for o, n in per_obu.items() if n > 1]
    rows = bench.rows()
    charged = [r for r in rows if r["state"] in ("charged", "entry_written")]
    for o, n in Counter(r["obu_id"] for r in charged).items():
        if n > 1:
            problems.append(f"rule 2: OBU {o} has {n} charged rows in the journal")
    for p in purchases:
        mine = [r for r in rows if r["obu_id"] == p.obu_id and r["kind"] in ("exit_charge", "entry_write")]
        if not any((r["state"] == "charged" and r["tac"] == p.tac.hex()) or r["state"] == "unknown" for r in mine):
            problems.append(f"rule 2: the RSU charged OBU {p.obu_id} (TAC {p.tac.hex()}) and the journal has "
                            f"no charged or unknown row for it: {[(r['seq'], r['state']) for r in mine]}")
    for r in charged:
        if not any(p.obu_id == r["obu_id"] and p.tac.hex() == r["tac"] for p in purchases):
            problems.append(f"rule 2: journal seq {r['seq']} says OBU {r['obu_id']} was charged (TAC {r['tac']}) "
                            f"but the RSU never made that purchase")
    if not open_intents_allowed and bench.executor is not None:
        problems += [f"rule 2: journal seq {r['seq']} (OBU {r['obu_id']}) is still an open intent after the "
                     f"daemon stopped" for r in rows if r["state"] == "intent"]
    return problems


def assert_rules(bench: LaneBench, *, open_intents_allowed: bool = False) -> None:
    problems = rule_problems(bench, open_intents_allowed=open_intents_allowed)
    assert not problems, "\n".join(problems) + "\n" + bench.describe()


# -- vehicles ----------------------------------------------------------------------------------

async def paid_car(bench: LaneBench, n: int, **obu_kw: Any) -> str:
    """A vehicle with OBU n drives up (lane model) while its OBU enters the RSU's zone;
    returns the model's vehicle id. Use :func:`passed` to wait until it has left."""
    assert bench.model is not None
    bench.emu.add_obu(obu(n, **obu_kw), arrive_in=0.0)
    return bench.model.add_vehicle(now_for(bench.model), speed=SPEED, vehicle_id=f"car-{n}")


async def passed(bench: LaneBench, car: str, timeout: float = T) -> float:
    """Wait until ``car`` has left the lane and the arm is down behind it; when it left."""
    model = bench.model
    assert model is not None
    await bench.until(lambda: car in dict(model.departed), timeout, f"{car} to leave the lane")
    await bench.until(lambda: model.barrier_position == 0.0 and not model.true_state(Signal.SAFETY_LOOP), timeout,
                      f"the arm to come down behind {car}")
    return dict(model.departed)[car]


async def alarms_settled(run: FaultRun, *codes: str, timeout: float = 2 * T) -> None:
    """Wait until each of ``codes`` that was raised after the fault has been cleared again
    (with the catalogue's debounces a clear takes up to 10 s, hence the longer deadline)."""
    bench = run.bench

    def settled() -> bool:
        for code in codes:
            raised = bench.alarm_at(code, "raised", run.fault_at)
            if raised is not None and bench.alarm_at(code, "cleared", raised) is None:
                return False
        return True

    await bench.until(settled, timeout, f"the alarms {', '.join(codes)} to clear")


async def degraded(run: FaultRun, closed_screen: bool = True) -> None:
    """Wait for ETC to close after the fault, and take what the booth sees (with
    ``closed_screen``: once the display says so; a lane still letting a paid vehicle out
    keeps that vehicle's screen)."""
    bench = run.bench
    run.degraded_at = await bench.until(lambda: lane_alarm_at(bench, "etc_closed", run.fault_at), T,
                                        "the lane to close ETC")
    if bench.display is not None and not closed_screen:
        run.shown_degraded = bench.display.shown()
    elif bench.display is not None:
        display = bench.display
        run.shown_degraded = await bench.until(
            lambda: display.shown() if display.shown().line1 in (CLOSED_LINE1, "ETC暂停使用") else None, T,
            "the fee display to say ETC is closed")
    if bench.model is not None:
        run.light_degraded = bench.model.light


async def recovered(run: FaultRun) -> None:
    bench = run.bench
    assert run.back_at is not None
    run.recovered_at = await bench.until(lambda: bench.events_at("etc_opened", run.back_at or 0.0), T,
                                         "the lane to open ETC again")


# -- the scenarios the benchmark repeats -----------------------------------------------------------
# Each takes the pytest-style tmp_path (a fresh folder), the outage length and the debounce
# scale of the alarms (None: the catalogue's own values, as in production).

async def rsu_unplugged_before_b2(tmp: Path, outage_s: float = 1.5, debounce: float | None = DEBOUNCE,
                                  transport: str = "pty") -> FaultRun:
    """The RSU's adapter is pulled with the lane idle; a paying vehicle drives up during the
    outage and waits at the arm; the adapter comes back (TCP: the RSU listens again)."""
    model = short_lane()
    async with lane_bench(tmp, [], model=model, barrier=BARRIER, settings=QUIET_RSU, **alarm_knobs(debounce),
                          rsu_transport=transport) as bench:  # type: ignore[arg-type]
        run = FaultRun(bench, fault_at=time.monotonic())
        await unplug_rsu(bench)
        await degraded(run)
        car = await paid_car(bench, 1)
        await asyncio.sleep(outage_s)  # the outage itself
        run.notes["waiting"] = [v.id for v in model.vehicles() if not v.moving]
        run.back_at = await replug_rsu(bench)
        await recovered(run)
        run.served_at = await bench.until(lambda: sent_at(bench, "C6", "a1000001", run.back_at or 0.0), T,
                                          "the waiting vehicle to be charged")
        await passed(bench, car)
        await alarms_settled(run, "rsu_offline", "etc_closed")
    return run


async def rsu_connection_reset(tmp: Path, debounce: float | None = DEBOUNCE) -> FaultRun:
    """The RSU's TCP connection is reset with the lane idle; the RSU keeps listening, the lane
    reconnects by itself; the next vehicle pays."""
    model = short_lane()
    async with lane_bench(tmp, [], model=model, barrier=BARRIER, settings=QUIET_RSU, **alarm_knobs(debounce),
                          rsu_transport="tcp") as bench:
        run = FaultRun(bench, fault_at=time.monotonic())
        reset_rsu_connection(bench)
        await degraded(run)
        run.back_at = run.fault_at  # the RSU never went away: it answers as soon as the lane reconnects
        await recovered(run)
        init = await bench.until(lambda: sent_at(bench, "C1", "00000000", run.fault_at), T,
                                 "the RSU to be initialised again (C0, B0, C1)")
        run.notes["initialised_s"] = init - run.fault_at
        car = await paid_car(bench, 1)
        run.served_at = await bench.until(lambda: sent_at(bench, "C6", "a1000001"), T, "the vehicle to be charged")
        await passed(bench, car)
    return run


async def io_module_lost_with_a_paid_car(tmp: Path, when: str = "sent C6", outage_s: float = OUTAGE_S,
                                         debounce: float | None = DEBOUNCE) -> FaultRun:
    """The IO module stops answering at the moment ``when`` ("sent C6": between C6 and B5;
    "received B5": after B5, before the raise) of a paying vehicle's transaction; it answers
    again after ``outage_s``; the paid vehicle must then be let out."""
    model = short_lane()
    run: FaultRun | None = None
    kind, frame = when.split()

    def pull(o: Any) -> None:
        if run is not None and not run.fault_at and o.kind == kind and o.detail.get("type") == frame:
            run.fault_at = time.monotonic()
            model.set_io_online(now_for(model), False)  # inside the lane's own step: exactly then

    async with lane_bench(tmp, [], model=model, barrier=BARRIER, settings=QUIET_RSU, **alarm_knobs(debounce),
                          hooks=[pull]) as bench:
        run = FaultRun(bench)
        car = await paid_car(bench, 1)
        await bench.until(lambda: run is not None and run.fault_at, T, f"the moment the lane {when}")
        await degraded(run, closed_screen=False)
        await asyncio.sleep(max(0.0, run.fault_at + outage_s - time.monotonic()))  # the outage itself
        run.notes["arm_during"] = model.barrier_position
        run.notes["car_waiting"] = car not in dict(model.departed)
        model.set_io_online(now_for(model), True)
        run.back_at = time.monotonic()
        await recovered(run)
        # Served: the module took the raise again (the emulated arm starts up).
        run.served_at = await bench.until(lambda: model.barrier_position > 0.0 and time.monotonic(), T,
                                          "the arm to go up for the paid vehicle")
        run.notes["left_at"] = await passed(bench, car)
        if bench.display is not None:
            run.notes["shown_after"] = bench.display.shown()
        run.notes["light_after"] = await bench.until(lambda: model.light is Light.RED and model.light, T,
                                                     "the light to turn red behind the vehicle")
        await alarms_settled(run, "io_offline", "etc_closed", "interlock_fault")
    return run


async def display_lost(tmp: Path, outage_s: float = OUTAGE_S, debounce: float | None = DEBOUNCE,
                       policy: str = "continue") -> FaultRun:
    """The fee display stops answering (dead, or its RS-485 pair cut) while the lane is idle;
    a vehicle pays during the outage (the lane notices the display is gone when it writes the
    vehicle's fee); the display answers again after ``outage_s``. With ``policy="close"`` a
    second vehicle comes once that closed ETC, and a third once the display is back."""
    model = short_lane()
    async with lane_bench(tmp, [], model=model, barrier=BARRIER, settings=QUIET_RSU, **alarm_knobs(debounce),
                          display_on_offline=policy) as bench:
        display = bench.display
        assert display is not None
        run = FaultRun(bench, fault_at=time.monotonic())
        display.faults.no_answer()
        car = await paid_car(bench, 1)
        detected = await bench.until(lambda: lane_alarm_at(bench, "display_offline", run.fault_at), T,
                                     "the lane to notice the display is gone")
        run.notes["detected_s"] = detected - run.fault_at
        run.notes["first_left_at"] = await passed(bench, car)
        if policy == "close":
            run.degraded_at = await bench.until(lambda: lane_alarm_at(bench, "etc_closed", run.fault_at), T,
                                                "the lane to close ETC")
            second = await paid_car(bench, 2)
            await bench.until(lambda: bench.c2_for("a1000002"), T, "the second vehicle to be refused")
            model.divert(now_for(model), second)
        await asyncio.sleep(max(0.0, run.fault_at + outage_s - time.monotonic()))  # the rest of the outage
        run.shown_degraded = display.shown()
        run.light_degraded = model.light
        writes = len(display.writes)
        display.faults.answer_again()
        run.back_at = time.monotonic()
        rewritten = await bench.until(lambda: display.writes[writes:] and display.writes[-1].at, T,
                                      "the display to be written again")
        run.notes["rewritten_s"] = rewritten - run.back_at
        run.notes["shown_after"] = display.shown()
        run.notes["shown_after_at"] = display.writes[-1].at  # the write it shows (the lane may have moved on)
        run.notes["stale_latches"] = stale_latches(bench, run.fault_at)
        if policy == "close":
            await recovered(run)
            last = await paid_car(bench, 3)
            run.served_at = await bench.until(lambda: sent_at(bench, "C6", "a1000003"), T, "the last vehicle to pay")
            await passed(bench, last)
        else:
            run.served_at = rewritten
        await alarms_settled(run, "display_offline", "etc_closed")
    return run


async def journal_disk_full(tmp: Path, outage_s: float = 1.5, debounce: float | None = DEBOUNCE) -> FaultRun:
    """The disk under the journal fills up: the next vehicle's intent cannot be written; a
    second vehicle comes during the outage; the disk has room again; a third pays."""
    model = short_lane()
    disk = DiskFull()
    async with lane_bench(tmp, [], model=model, barrier=BARRIER, settings=QUIET_RSU, **alarm_knobs(debounce),
                          journal_options={"commit_hook": disk}) as bench:
        run = FaultRun(bench)
        # Every screen the booth saw: the refusal screen may last only until ETC closes (the
        # closed screen replaces it when the vehicle is not yet on the loop), so sampling the
        # display once would race the vehicle.
        screens: list[tuple[float, str, str]] = []
        if (display := bench.display) is not None:
            def seen(write: WriteRecord) -> None:
                shown = display.shown()
                screens.append((write.at, shown.line1, shown.line2))
            display.listeners.append(seen)
        disk.fill()
        first = await paid_car(bench, 1)
        run.fault_at = (await bench.until(lambda: disk.failures, T, "the intent to be attempted"))[0][0]
        await degraded(run)
        model.divert(now_for(model), first)  # sent to the manual lane, it pulls over
        await bench.until(lambda: bench.c2_for("a1000001"), T, "the first vehicle to be stopped")
        second = await paid_car(bench, 2)
        await bench.until(lambda: bench.c2_for("a1000002"), T, "the second vehicle to be refused")
        model.divert(now_for(model), second)
        await asyncio.sleep(max(0.0, run.fault_at + outage_s - time.monotonic()))
        disk.free()
        run.back_at = time.monotonic()
        run.notes["screens_during"] = [(l1, l2) for at, l1, l2 in screens if run.fault_at <= at < run.back_at]
        await recovered(run)
        third = await paid_car(bench, 3)
        run.served_at = await bench.until(lambda: sent_at(bench, "C6", "a1000003"), T, "the third vehicle to pay")
        await passed(bench, third)
        await alarms_settled(run, "journal_not_writable", "etc_closed")
    return run


async def journal_slow(tmp: Path, vehicles: int = 3, commit_s: float = 0.2,
                       debounce: float | None = DEBOUNCE) -> FaultRun:
    """Every journal commit takes ``commit_s`` longer (a worn SD card): vehicles pay and pass."""
    model = short_lane()
    async with lane_bench(tmp, [], model=model, barrier=BARRIER, settings=QUIET_RSU, **alarm_knobs(debounce),
                          journal_options={"commit_delay_s": commit_s}) as bench:
        # The journal is slow from its first commit on (before the lane took its first vehicle).
        run = FaultRun(bench, fault_at=bench.seen[0].at if bench.seen else time.monotonic())
        for n in range(1, vehicles + 1):
            car = await paid_car(bench, n)
            await passed(bench, car)
        c1, c6 = turnarounds(bench, "C1"), turnarounds(bench, "C6")
        run.notes.update(c1_p50_ms=statistics.median(c1) * 1e3, c1_max_ms=max(c1) * 1e3,
                         c6_p50_ms=statistics.median(c6) * 1e3, c6_max_ms=max(c6) * 1e3, vehicles=vehicles)
    return run


def wall_clock(offset: list[dt.timedelta]) -> Callable[[], dt.datetime]:
    """The lane's civil clock, ``offset[0]`` away from the machine's (a test steps it)."""
    return lambda: dt.datetime.now() + offset[0]

