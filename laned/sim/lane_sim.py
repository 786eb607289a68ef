"""The simulated lane behind ``laned sim``: the real daemon against emulated devices.

What runs, all in one event loop:

- the daemon exactly as ``laned run`` builds it (:func:`laned.app.run_lane`): RSU link,
  lane machine, barrier interlock, SQLite journal, Modbus drivers;
- the emulated RSU (:mod:`laned.sim.rsu_emulator`) on a pseudo-terminal;
- the fee display and the IO module as Modbus TCP servers (:mod:`laned.sim.modbus_devices`),
  the IO module wired to a :class:`~laned.sim.lane_model.LaneModel` in which the vehicles
  drive over the loops and under the arm;
- with ``centre=True`` (``laned sim`` without ``--no-centre``): a private Mosquitto and
  the reference centre (:mod:`laned.sim.sim_centre`), the daemon's ``[uplink]`` pointed at
  them; the centre publishes the status list, signed, and the traffic waits (bounded)
  until the lane uses it; at the end the run waits (bounded) until the centre has
  acknowledged every row. Without the centre the status list is written into the state
  folder by hand;
- a driver (:class:`LaneSim`) that lets the traffic in: each vehicle appears in the lane
  model, its OBU enters the RSU's zone as the vehicle does and leaves it when the vehicle
  passes the arm or pulls over (the scenario's ``rsu`` settings: where the zone starts,
  early reads, re-reads), and a vehicle kept waiting before a closed arm pulls over to
  the manual lane.

The verdict (:mod:`laned.sim.verdict`) compares what each vehicle was expected to get
with what the journal says happened and with where the lane model says it went.

The daemon runs with the lane's time zone (``timezone``) as its ``lane.timezone``, so the
scenario's relative dates ("today-1") and the lane's contract checks agree whatever the
host's time zone (the process's ``TZ`` is left alone).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from laned.app import run_lane
from laned.config import Config, load_sim_config
from laned.executor import LaneExecutor
from laned.observation import Observation
from laned.lane.signals import Light
# JOURNAL_NAME and previous_run are imported from here too (the CLI, the tests).
from laned.sim.journal_rows import JOURNAL_NAME as JOURNAL_NAME, last_seq, previous_run as previous_run, transaction_rows
from laned.sim.lane_model import BarrierSpec, LaneGeometry, LaneModel
from laned.sim.modbus_devices import EmulatedFeeDisplay, EmulatedIoModule, ModbusDeviceServer
from laned.sim.rsu_emulator import EmulatorSettings, RsuEmulator, RsuState
from laned.sim.rsu_scenario import ObuScenario
from laned.sim.scenario import RsuSettings, ScenarioError, check_vehicles
from laned.sim.errors import SimError as SimError  # imported from here by the CLI and the tests
from laned.sim.sim_centre import DRAIN_TIMEOUT_S, CentreReport, SimCentre
from laned.sim.sim_lists import (
    STATUS_LIST_NAME, listed_entries, status_list_payload, status_list_version, wait_status_list,
    write_status_list,
)
from laned.sim.vehicle import DEFAULT_TIMEZONE, Kind, SimVehicle
# SimSummary and VehicleRun are imported from here too (the CLI, the live view, the tests).
from laned.sim.verdict import SimSummary as SimSummary, VehicleRun as VehicleRun, attribute_follow_cars, summarise

log = logging.getLogger("laned.sim")

STEP_S = 0.02  # how often the driver moves the lane model and lets traffic in
JOURNAL_POLL_S = 0.1  # how often the driver reads what the lane decided
# A vehicle appears this far before the RSU's zone starts, so that it enters the zone
# moving, as on a road, not standing in it from the start.
SPAWN_BEFORE_ZONE_M = 5.0
SPAWN_X = -(RsuSettings().zone_m + SPAWN_BEFORE_ZONE_M)  # m before the arm, with the default zone
EXIT_X = 8.0  # m past the arm where a vehicle has left the lane
PATIENCE_S = 3.0  # a driver facing a closed arm this long pulls over to the manual lane
# Loop detectors see two vehicles as one when the gap between them is shorter than the
# loop; the sim's drivers keep gaps the 2 m safety loop can still tell apart.
SAFETY_LOOP_M = (-1.0, 1.0)
# The approach loop (the IO module's entry_loop): it covers a car waiting at the stop line
# (1.5 m before the arm) and ends 1 m before the safety loop, less than any vehicle is long
# (docs/lane_sensors.md). Vehicles closer than its 1.5 m are one vehicle to it.
APPROACH_LOOP_M = (-3.5, -2.0)
GAP_M = 3.0  # a driver queueing behind another
FOLLOW_GAP_M = 3.0  # a tailgater sticking to the car the barrier opened for
# A driver moves off this long after the way ahead clears (a tailgater: at once, nearly).
START_S = 1.0
TAILGATER_START_S = 0.2
# … and keeps this time headway to the vehicle in front while moving (a tailgater: its gap).
HEADWAY_S = 1.0
SETTLE_S = 0.6  # after the last vehicle: let the journal and the display catch up
BARRIER_TRAVEL_S = 0.8  # an ETC lane's fast barrier
# The end-of-run deadline (a lane that deadlocks must end the run with a verdict, not
# hang it): the traffic, the slowest vehicle's drive through the lane, and per vehicle a
# transaction, a barrier cycle and its length plus gap at the slowest vehicle's pace
# (a queue moves no faster than the slowest vehicle in it), plus a margin.
PER_VEHICLE_S = 3.0
DEADLINE_MARGIN_S = 30.0


def spawn_x(rsu: RsuSettings) -> float:
    """Where vehicles appear (the arm at 0) for an RSU whose zone is ``rsu.zone_m`` long."""
    return -(rsu.zone_m + SPAWN_BEFORE_ZONE_M)


def traffic_deadline_s(vehicles: Sequence[SimVehicle], spawn_at: float = SPAWN_X) -> float:
    """Seconds after the traffic started by which every vehicle must have left the lane
    (vehicles appearing at ``spawn_at``)."""
    last_spawn = sum(v.arrive_after for v in vehicles)
    slowest = min(v.speed for v in vehicles)
    drive = max((EXIT_X - spawn_at + v.length) / v.speed for v in vehicles)
    queue = sum(PER_VEHICLE_S + (v.length + GAP_M) / slowest for v in vehicles)
    return last_spawn + drive + queue + DEADLINE_MARGIN_S


class LaneSim:
    """``summary = await LaneSim(vehicles, state_dir).run()``."""

    def __init__(self, vehicles: list[SimVehicle], state_dir: str | Path, *, seed: int = 0,
                 show_plates: bool = False, on_change: Callable[[LaneSim], None] | None = None,
                 timezone: str = DEFAULT_TIMEZONE, resume: bool = False, rsu: RsuSettings | None = None,
                 centre: bool = False) -> None:
        """``resume``: ``state_dir`` may hold a previous run's journal, and the daemon goes on
        with it (its payments are remembered); otherwise such a folder is refused. ``rsu``:
        how the emulated RSU reads the vehicles (the scenario's ``rsu``; default: a real
        RSU's habits, see :class:`~laned.sim.traffic.RsuSettings`). ``centre``: run a private
        broker and the reference centre and point the lane's ``[uplink]`` at them
        (:mod:`laned.sim.sim_centre`; ``laned sim`` does unless ``--no-centre``)."""
        if not vehicles:
            raise SimError("no vehicles to simulate")
        try:
            check_vehicles(vehicles)
        except ScenarioError as err:
            raise SimError(str(err)) from None
        self.state_dir = Path(state_dir)
        self.timezone = timezone
        self.resume = resume
        self.with_centre = centre
        self.centre: SimCentre | None = None  # while a run with the centre runs
        self.centre_report: CentreReport | None = None  # at the end of a run with the centre
        self.outbox_backlog: int | None = None  # final journal rows the centre has not acknowledged
        self.rsu = rsu or RsuSettings()
        self.spawn_x = spawn_x(self.rsu)
        self._past_arm: set[int] = set()  # runs whose front passed the arm
        self._seq_floor = 0  # journal rows up to this seq are a previous run's (--resume)
        self.seed = seed
        self.show_plates = show_plates
        self.on_change = on_change
        t = 0.0
        self.runs: list[VehicleRun] = []
        for i, v in enumerate(vehicles):
            t += v.arrive_after
            self.runs.append(VehicleRun(i, v, t))
        self.model: LaneModel | None = None
        self.emulator: RsuEmulator | None = None
        self.display: EmulatedFeeDisplay | None = None
        self.io: EmulatedIoModule | None = None
        self.executor: LaneExecutor | None = None  # once the lane has stopped
        self._running: LaneExecutor | None = None  # while it runs (run_lane's ``started``)
        self.config: Config | None = None
        self.observations: list[Observation] = []
        self.started = 0.0
        self.interrupted = False
        self._by_model_id: dict[str, VehicleRun] = {}
        self._by_obu: dict[str, VehicleRun] = {}
        self.journal_rows: list[dict[str, Any]] = []
        self._departed_seen = 0
        self.events: list[tuple[float, int, str]] = []  # (seconds, vehicle number, what)
        self.follow_records: list[float] = []  # when the lane recorded a follow-car (monotonic)

    def trace(self, now: float, r: VehicleRun, what: str) -> None:
        self.events.append((round(now - self.started, 2), r.index + 1, what))
        log.debug("sim: vehicle %d (%s): %s", r.index + 1, r.vehicle.kind, what)

    # -- the run ---------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event | None = None) -> SimSummary:
        return await self._run(stop or asyncio.Event())

    async def _run(self, stop: asyncio.Event) -> SimSummary:
        old = previous_run(self.state_dir)
        if old is not None and not self.resume:
            raise SimError(f"{self.state_dir} holds a previous run's journal ({old.name}): its payments would be "
                           "restored into this run's vehicles; use an empty folder, or --resume to reuse it")
        self._seq_floor = last_seq(old) if old is not None else 0
        self.state_dir.mkdir(parents=True, exist_ok=True)
        status_path = self.state_dir / STATUS_LIST_NAME
        listed = listed_entries([r.vehicle for r in self.runs])
        # With the centre the lane gets its list from it, signed (see status_list_version);
        # without, there is no one to send it and the simulator places it by hand.
        list_version = status_list_version(status_path, self.resume) if self.with_centre \
            else write_status_list(status_path, listed)
        self.display, self.io = EmulatedFeeDisplay(slave=1), EmulatedIoModule(slave=2)
        self.model = LaneModel(now=time.monotonic(), geometry=LaneGeometry(spawn_x=self.spawn_x, safety_loop=SAFETY_LOOP_M, exit_x=EXIT_X,
                                                                                     entry_loop=APPROACH_LOOP_M),
                               barrier=BarrierSpec(travel_time=BARRIER_TRAVEL_S))
        self.io.attach_lane_model(self.model)
        # Heartbeats as a real RSU sends them; an OBU still in the zone after its transaction
        # is reported again after ``reread_interval_s`` (with early reads, every OBU; without,
        # the ``seen_again`` vehicles once).
        settings = EmulatorSettings(heartbeat_interval=2.0, redetect_interval=self.rsu.reread_interval_s,
                                    seed=self.seed)
        async with contextlib.AsyncExitStack() as stack:
            server = await stack.enter_async_context(ModbusDeviceServer([self.display, self.io], transport="tcp"))
            self.emulator = await stack.enter_async_context(RsuEmulator([], profile="national", settings=settings))
            port = server.link.port
            overrides: dict[str, Any] = {
                "rsu.port": self.emulator.path, "devices.io.port": port, "devices.fee_display.port": port,
                "status_list.path": str(status_path), "lane.timezone": self.timezone}
            centre = None
            if self.with_centre:
                lane_id = load_sim_config(self.state_dir, overrides=overrides).lane.lane_id
                centre = self.centre = await stack.enter_async_context(SimCentre(self.state_dir, lane_id))
                overrides.update(centre.uplink_overrides())
            self.config = load_sim_config(self.state_dir, overrides=overrides)
            # The model judges down motion on an occupied loop by the lane's own bound.
            self.model.reaction_limit = self.config.barrier.reaction_limit_ms / 1000
            if centre is not None:
                # Published before the lane starts: its manifest is retained, so the lane
                # finds it when it connects and asks for the chunks, as a lane does that
                # was off while the centre published.
                await centre.publish_status_list(status_list_payload(list_version, listed), list_version)
            lane_stop = asyncio.Event()
            lane = asyncio.create_task(run_lane(self.config, stop=lane_stop, observe=self._observe,
                                                started=self._lane_started))
            try:
                await self._wait_ready(lane, stop)
                if centre is not None:
                    await wait_status_list(lambda: self._running, lane, stop, list_version)
                self.started = time.monotonic()
                await self._drive(lane, stop)
                if centre is not None:
                    # The lane's last rows reach the centre while it still runs; an
                    # interrupted run only reads what is left.
                    self.outbox_backlog = await centre.drain(self.config.journal.path,
                                                             0.0 if self.interrupted else DRAIN_TIMEOUT_S)
            finally:
                lane_stop.set()
                self.executor = await asyncio.wait_for(lane, 15)
            if centre is not None:
                self.centre_report = centre.report()
        return summarise(self)


    def _lane_started(self, executor: LaneExecutor) -> None:
        self._running = executor

    async def _wait_ready(self, lane: asyncio.Task[Any], stop: asyncio.Event) -> None:
        """Until the daemon initialised the RSU (C0, C1) and read the IO module once."""
        assert self.emulator is not None
        deadline = time.monotonic() + 15.0
        while self.emulator.state is not RsuState.SEARCHING or not self.io or not self.io.heard:
            if lane.done():
                lane.result()  # raises what stopped the daemon
                raise SimError("the lane daemon stopped before it was ready")
            if stop.is_set():
                return
            if time.monotonic() > deadline:
                raise SimError(f"the lane did not initialise the emulated RSU within 15 s (RSU {self.emulator.state})")
            await asyncio.sleep(STEP_S)
        await asyncio.sleep(0.3)  # the interlock wants fresh clear samples before it trusts the loops

    async def _drive(self, lane: asyncio.Task[Any], stop: asyncio.Event) -> None:
        assert self.model is not None
        deadline = self.started + traffic_deadline_s([r.vehicle for r in self.runs], self.spawn_x)
        done_at: float | None = None
        last_journal_read = 0.0
        while True:
            if stop.is_set():
                self.interrupted = True
                break
            now = time.monotonic()
            if lane.done():
                lane.result()  # raises what stopped the daemon
                # It stopped cleanly: SIGINT/SIGTERM reached it (Ctrl-C). Report what ran.
                self.interrupted = True
                break
            self.model.advance(now)
            self._spawn(now)
            self._track(now)
            self._announce(now)
            if now - last_journal_read > JOURNAL_POLL_S:
                last_journal_read = now
                self._read_journal()
                self._turn_away(now)
                self.on_change and self.on_change(self)
            if all(r.end for r in self.runs) and self.emulator and self.emulator.state is not RsuState.IN_TRANSACTION:
                done_at = done_at or now
                if now - done_at >= SETTLE_S:
                    break
            if now > deadline:
                log.error("simulation: %d vehicle(s) still in the lane at the deadline; stopping",
                          sum(1 for r in self.runs if not r.end))
                break
            await asyncio.sleep(STEP_S)
        self._read_journal()
        self.on_change and self.on_change(self)

    # -- traffic ---------------------------------------------------------------------------
    def _spawn(self, now: float) -> None:
        assert self.model is not None
        elapsed = now - self.started
        for r in self.runs:
            if r.model_id is not None or r.spawn_at > elapsed:
                continue
            v = r.vehicle
            speed = v.speed
            gap = GAP_M
            if v.is_tailgater and r.index > 0:
                # A tailgater keeps up with the car it follows.
                speed = max(speed, self.runs[r.index - 1].vehicle.speed)
                gap = FOLLOW_GAP_M
            if v.gap_m is not None:
                gap = v.gap_m
            # A tailgater goes wherever the car in front goes, red light or not.
            r.model_id = self.model.add_vehicle(now, length=v.length, speed=speed, follow_gap=gap,
                                                obeys_light=not v.is_tailgater,
                                                start_delay=TAILGATER_START_S if v.is_tailgater else START_S,
                                                headway=0.0 if v.is_tailgater else HEADWAY_S,
                                                vehicle_id=f"v{r.index + 1}")
            self._by_model_id[r.model_id] = r
            self._by_obu[v.obu_id] = r
            self.trace(now, r, f"arrives ({v.kind}, {speed:.1f} m/s)")

    def _track(self, now: float) -> None:
        """Who left, who waits before a closed arm (and gives up)."""
        model = self.model
        assert model is not None
        for vid, _ in model.departed[self._departed_seen:]:
            r = self._by_model_id[vid]
            r.end = "passed"
            self.trace(now, r, "drove through and left the lane")
        self._departed_seen = len(model.departed)
        for st in model.vehicles():
            r = self._by_model_id[st.id]
            if st.on_safety_loop and r.at_arm_at is None:
                r.at_arm_at = now
        arm_open = model.barrier_position >= 1.0
        for st in model.vehicles():
            r = self._by_model_id[st.id]
            if st.front >= model.geometry.arm_x and r.index not in self._past_arm:
                self._past_arm.add(r.index)
                self._leave_rsu_zone(r)
                self.trace(now, r, "passes the arm")
            # Stopped at the stop line in front of a closed arm, or of a red light under an open
            # one (the lane holds the arm up while it stands on the approach loop).
            held = not arm_open or (model.light is Light.RED and not r.vehicle.is_tailgater)
            waiting = not st.moving and held and st.front >= model.geometry.stop_x - 0.05
            if not waiting:
                r.stopped_since = None
                continue
            r.stopped_since = r.stopped_since or now
            if now - r.stopped_since >= PATIENCE_S:
                model.divert(now, st.id)
                self._leave_rsu_zone(r)
                r.end = "diverted"
                self.trace(now, r, f"waited {PATIENCE_S} s before the closed arm; pulled over to the manual lane")

    def _turn_away(self, now: float) -> None:
        """A driver told 请走人工车道 (refused, or a charge that went wrong) pulls over to the
        manual lane while it still can; one already on the loop drives on."""
        model = self.model
        assert model is not None
        for r in self.runs:
            if r.end or r.model_id is None or r.outcome not in ("refused", "unknown", "not_charged"):
                continue
            st = model.vehicle(r.model_id)
            if st is not None and st.front <= model.geometry.safety_loop[0] and not st.under_arm:
                model.divert(now, r.model_id)
                self._leave_rsu_zone(r)
                r.end = "diverted"
                self.trace(now, r, f"told to use the manual lane ({r.reason}); pulled over")

    def _leave_rsu_zone(self, r: VehicleRun) -> None:
        """Its OBU leaves the RSU's zone: the vehicle passed the arm or pulled over."""
        if r.announced and self.emulator is not None:
            self.emulator.remove_obu(r.vehicle.obu_id)

    def _obu(self, v: SimVehicle) -> ObuScenario:
        if not self.rsu.early_reads:
            return ObuScenario.from_sim_vehicle(v)
        # In the zone until its vehicle passes the arm or pulls over (_leave_rsu_zone).
        return ObuScenario.from_sim_vehicle(v, dwell=math.inf, reread_for=self.rsu.reread_for_s)

    def _announce(self, now: float) -> None:
        """Each OBU enters the RSU's zone as its vehicle's front passes ``zone_m`` before
        the arm, whoever is ahead of it; the emulator serves the OBUs in its zone one
        transaction at a time, in the order they came, and reports each again while it
        waits there (``reread_interval_s``, ``reread_for_s``). Follow-cars and ``no_obu``
        vehicles carry no OBU."""
        if not self.rsu.early_reads:
            self._announce_in_turn(now)
            return
        model, emu = self.model, self.emulator
        assert model is not None and emu is not None
        for r in self.runs:
            if r.announced or r.end or r.model_id is None or not r.vehicle.has_obu:
                continue
            st = model.vehicle(r.model_id)
            if st is None or st.front < -self.rsu.zone_m:
                continue
            r.announced = True
            self.trace(now, r, "in the RSU zone")
            emu.add_obu(self._obu(r.vehicle), arrive_in=0.0)

    def _announce_in_turn(self, now: float) -> None:
        """``early_reads = false``: the RSU talks to one vehicle at a time, in the order
        they drive: the next one enters its zone once the lane has decided about the one
        before. Follow-cars carry no OBU; the car behind one is read once the tailgater
        reached the arm."""
        model, emu = self.model, self.emulator
        assert model is not None and emu is not None
        if emu.state is RsuState.IN_TRANSACTION:
            return
        for r in self.runs:
            if r.model_id is None:
                return  # not in the lane yet
            if r.end:
                continue
            if r.vehicle.kind is Kind.NO_OBU:
                return  # the RSU has nobody to talk to until it has gone (or drove out)
            if r.vehicle.kind is Kind.FOLLOW_CAR:
                st = model.vehicle(r.model_id)
                if st is not None and st.front <= model.geometry.arm_x:
                    # Not before the tailgater reached the arm: otherwise the next car's
                    # payment would already stand when it slips in, and it would pass on it.
                    return
                continue
            if r.announced:
                if r.outcome in ("none", "in_progress"):
                    return  # the lane has not decided about it yet
                continue
            st = model.vehicle(r.model_id)
            if st is None or st.front < -self.rsu.zone_m:
                return
            r.announced = True
            self.trace(now, r, "in the RSU zone")
            emu.add_obu(self._obu(r.vehicle), arrive_in=0.0)
            return

    # -- what the lane did -------------------------------------------------------------------
    def _observe(self, o: Observation) -> None:
        self.observations.append(o)
        if len(self.observations) > 2000:
            del self.observations[:1000]
        if o.kind == "alarm" and o.detail.get("code") == "follow_car":
            self.follow_records.append(o.at)
            self._attribute_follow_cars()

    def _attribute_follow_cars(self) -> None:
        attribute_follow_cars(self.runs, self.follow_records)

    def _read_journal(self) -> None:
        assert self.config is not None
        rows = transaction_rows(Path(self.config.journal.path), self._seq_floor)
        if rows is None:
            return
        self.journal_rows = rows
        before = {run.index: (run.outcome, run.seen_again) for run in self.runs}
        for run in self.runs:
            run.outcome, run.reason, run.fee, run.seen_again = "none", None, None, False
        for row in rows:
            r = self._by_obu.get((row["obu_id"] or "").lower())
            if r is None:
                continue
            state, reason = row["state"], row["reason"]
            if state == "event":
                r.seen_again = r.seen_again or reason == "paid_on_record"
                continue
            if r.outcome in ("charged", "entry_written"):
                continue  # what it paid stands; a later report of it adds nothing
            r.outcome = "in_progress" if state == "intent" else state
            r.reason = reason or state
            r.fee = row["amount"] if state == "charged" else row["fee"]
        for run in self.runs:
            if run.outcome == "none" and run.seen_again:
                # Paid in a previous run (--resume) and let on by its record in this one.
                run.outcome, run.reason = "paid_on_record", "paid_on_record"
        self._attribute_follow_cars()
        now = time.monotonic()
        for run in self.runs:
            if before[run.index] != (run.outcome, run.seen_again):
                fee = f" {run.fee / 100:.2f} yuan" if run.outcome == "charged" and run.fee is not None else ""
                again = ", reported again and let on without a second charge" if run.seen_again else ""
                self.trace(now, run, f"lane: {run.outcome} ({run.reason}){fee}{again}")

