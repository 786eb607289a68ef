"""A deterministic lane: vehicles, two loops, a barrier with limit switches, faulty sensors.

Sans-IO like the lane logic it tests: no clock, no asyncio. Time is passed in
(``advance(now)``; every command also takes ``now`` and first advances to it), and the
same calls always give the same lane. Emulated IO modules (the Modbus DI/DO server, the
GPIO mock-pin binding in ``lane_model_gpio.py``) mirror :meth:`LaneModel.sensed` onto
their inputs and turn their outputs into ``command_*`` calls.

The model keeps two views of every input:

- the *true* state (:meth:`true_state`): where the vehicles and the arm really are;
- the *sensed* state (:meth:`sensed`): what an IO module would read after the injected
  faults: stuck occupied, stuck clear, chatter, a dead input (``None``: no reading) or
  the whole IO module offline (``None`` everywhere).

It records a :class:`SafetyViolation` — the first rule of ARCHITECTURE.md, checked
against where the vehicles really are, not against what the sensors claimed — when

- the barrier is told to start down while a vehicle is on the safety loop;
- the arm keeps moving down with a vehicle on the safety loop for longer than the
  reaction bound (``reaction_limit``, the lane's ``[barrier] reaction_limit_ms``): a
  vehicle may drive onto the loop while the arm is on its way down, and the lane must
  reverse it within that bound;
- the arm touches a vehicle, ever.

Drivers stop at the stop line when the arm is not fully up, and (unless ``obeys_light``
is off: a tailgater) when the lane's light is red.

Geometry is one dimension along the direction of travel, in metres, with the barrier arm
at x = 0. A vehicle is a segment ``[front - length, front]``.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from laned.drivers.lane_io import Light, Signal

# Internal integration step: 10 ms keeps loop edges and limit switches within 10 ms of
# the exact time, well under the 50 ms the IO layer samples at.
MAX_STEP_S: Final = 0.01
_EPS: Final = 1e-9


@dataclass(frozen=True, slots=True)
class LaneGeometry:
    """Where things are, in metres along the lane (the barrier arm at ``arm_x``)."""

    spawn_x: float = -30.0  # where an approaching vehicle's front starts
    # The approach loop: it covers the stop line's waiting vehicle and ends less than the
    # shortest vehicle's length before the safety loop (docs/lane_sensors.md).
    entry_loop: tuple[float, float] = (-6.0, -3.0)
    safety_loop: tuple[float, float] = (-1.0, 2.0)  # the loop under and just past the arm
    arm_x: float = 0.0
    # A driver facing a closed (or not fully open) arm stops the front bumper here; it
    # is before the safety loop, so a waiting car does not hold the safety loop.
    stop_x: float = -1.5
    exit_x: float = 20.0  # a vehicle whose rear passes this has left the lane

    def __post_init__(self) -> None:
        for name in ("entry_loop", "safety_loop"):
            start, end = getattr(self, name)
            if not start < end:
                raise ValueError(f"{name} must be (start, end) with start < end, got {(start, end)}")
        lo, hi = self.safety_loop
        if not lo <= self.arm_x <= hi:
            raise ValueError("the safety loop must lie under the barrier arm")
        if not self.spawn_x < self.stop_x < self.arm_x < self.exit_x:
            raise ValueError("expected spawn_x < stop_x < arm_x < exit_x")


@dataclass(frozen=True, slots=True)
class BarrierSpec:
    travel_time: float = 1.5  # seconds for a full stroke, down to up or up to down
    start_raised: bool = False

    def __post_init__(self) -> None:
        if self.travel_time <= 0:
            raise ValueError("travel_time must be > 0")


class Motion(enum.StrEnum):
    STOPPED = "stopped"
    RAISING = "raising"
    LOWERING = "lowering"


class ViolationKind(enum.StrEnum):
    LOWER_COMMANDED_WHILE_OCCUPIED = "lower_commanded_while_safety_loop_occupied"
    MOVING_DOWN_WHILE_OCCUPIED = "arm_moving_down_while_safety_loop_occupied"
    ARM_HIT_VEHICLE = "arm_hit_vehicle"


@dataclass(frozen=True, slots=True)
class SafetyViolation:
    at: float
    kind: ViolationKind
    vehicle: str | None  # the vehicle on the loop / under the arm
    barrier_position: float  # 0 = down, 1 = up
    detail: str


class FaultKind(enum.StrEnum):
    STUCK_OCCUPIED = "stuck_occupied"  # reads occupied (limit switch: made) whatever happens
    STUCK_CLEAR = "stuck_clear"  # reads clear (limit switch: open) whatever happens
    CHATTER = "chatter"  # toggles occupied/clear at rate_hz, whatever happens
    DEAD = "dead"  # no reading any more: the IO layer sees no update (None)


@dataclass(frozen=True, slots=True)
class SensorFault:
    kind: FaultKind
    rate_hz: float = 0.0  # CHATTER only: full occupied+clear cycles per second

    def __post_init__(self) -> None:
        if self.kind is FaultKind.CHATTER and self.rate_hz <= 0:
            raise ValueError("a chatter fault needs rate_hz > 0")

    @classmethod
    def stuck_occupied(cls) -> SensorFault:
        return cls(FaultKind.STUCK_OCCUPIED)

    @classmethod
    def stuck_clear(cls) -> SensorFault:
        return cls(FaultKind.STUCK_CLEAR)

    @classmethod
    def chatter(cls, rate_hz: float) -> SensorFault:
        return cls(FaultKind.CHATTER, rate_hz)

    @classmethod
    def dead(cls) -> SensorFault:
        return cls(FaultKind.DEAD)


@dataclass(frozen=True, slots=True)
class VehicleState:
    id: str
    front: float
    rear: float
    length: float
    moving: bool
    under_arm: bool
    on_entry_loop: bool
    on_safety_loop: bool
    hit_by_arm: bool


@dataclass(frozen=True, slots=True)
class SensedChange:
    """One change of a sensed input, as an IO module would see it."""

    at: float
    signal: Signal
    value: bool | None


@dataclass(frozen=True, slots=True)
class LaneSnapshot:
    at: float
    barrier_position: float
    barrier_motion: Motion
    vehicles: tuple[VehicleState, ...]
    true_inputs: Mapping[Signal, bool]
    sensed_inputs: Mapping[Signal, bool | None]
    io_online: bool
    light: Light
    alarm: bool


@dataclass(slots=True)
class _Vehicle:
    id: str
    length: float
    speed: float
    follow_gap: float
    clearance: float  # barrier position below which the arm touches this vehicle
    front: float
    obeys_light: bool = True
    start_delay: float = 0.0  # s a stopped driver takes to move off once the way is clear
    headway: float = 0.0  # s kept to the vehicle in front while moving, on top of follow_gap
    go_at: float | None = None
    moving: bool = True
    hit_by_arm: bool = False

    @property
    def rear(self) -> float:
        return self.front - self.length


def _overlaps(v: _Vehicle, span: tuple[float, float]) -> bool:
    return v.rear < span[1] and v.front > span[0]


@dataclass(slots=True)
class _Fault:
    fault: SensorFault
    since: float


class LaneModel:
    """One lane's physics. All times are seconds on the caller's clock."""

    def __init__(
        self,
        *,
        now: float = 0.0,
        geometry: LaneGeometry | None = None,
        barrier: BarrierSpec | None = None,
        max_step: float = MAX_STEP_S,
        reaction_limit: float = 0.0,
    ) -> None:
        self.geometry = geometry or LaneGeometry()
        self.barrier = barrier or BarrierSpec()
        self._max_step = max_step
        self._now = now
        self._position = 1.0 if self.barrier.start_raised else 0.0
        self._motion = Motion.STOPPED
        self._vehicles: list[_Vehicle] = []  # ordered front-most first
        self._next_id = 1
        self._departed: list[tuple[str, float]] = []
        self._diverted: list[tuple[str, float]] = []
        self._faults: dict[Signal, _Fault] = {}
        self._io_online = True
        self._light = Light.OFF
        self._alarm = False
        self._violations: list[SafetyViolation] = []
        self._moving_down_recorded = False  # one record per episode of moving onto a vehicle
        self.reaction_limit = reaction_limit  # s the arm may go on down onto an occupied loop
        self._down_on_occupied_since: float | None = None
        self._listeners: list[Callable[[SensedChange], None]] = []
        self._last_sensed = {s: self._compute_sensed(s) for s in Signal}

    # -- observation ---------------------------------------------------------------

    @property
    def now(self) -> float:
        return self._now

    @property
    def barrier_position(self) -> float:
        """0.0 = fully down, 1.0 = fully up."""
        return self._position

    @property
    def barrier_motion(self) -> Motion:
        return self._motion

    @property
    def violations(self) -> tuple[SafetyViolation, ...]:
        return tuple(self._violations)

    @property
    def departed(self) -> tuple[tuple[str, float], ...]:
        """(vehicle id, time its rear passed exit_x), in order."""
        return tuple(self._departed)

    @property
    def io_online(self) -> bool:
        return self._io_online

    @property
    def light(self) -> Light:
        return self._light

    @property
    def alarm(self) -> bool:
        return self._alarm

    def vehicles(self) -> tuple[VehicleState, ...]:
        return tuple(self._vehicle_state(v) for v in self._vehicles)

    def vehicle(self, vehicle_id: str) -> VehicleState | None:
        for v in self._vehicles:
            if v.id == vehicle_id:
                return self._vehicle_state(v)
        return None

    def true_state(self, signal: Signal) -> bool:
        g = self.geometry
        if signal is Signal.ENTRY_LOOP:
            return any(_overlaps(v, g.entry_loop) for v in self._vehicles)
        if signal is Signal.SAFETY_LOOP:
            return any(_overlaps(v, g.safety_loop) for v in self._vehicles)
        if signal is Signal.BARRIER_UP:
            return self._position >= 1.0 - _EPS
        return self._position <= _EPS

    def sensed(self, signal: Signal) -> bool | None:
        """What an IO module reads; ``None`` = no reading (dead input, module offline)."""
        return self._last_sensed[signal]

    def fault(self, signal: Signal) -> SensorFault | None:
        f = self._faults.get(signal)
        return f.fault if f else None

    def snapshot(self) -> LaneSnapshot:
        return LaneSnapshot(
            at=self._now,
            barrier_position=self._position,
            barrier_motion=self._motion,
            vehicles=self.vehicles(),
            true_inputs=MappingProxyType({s: self.true_state(s) for s in Signal}),
            sensed_inputs=MappingProxyType(dict(self._last_sensed)),
            io_online=self._io_online,
            light=self._light,
            alarm=self._alarm,
        )

    def add_listener(self, callback: Callable[[SensedChange], None]) -> None:
        """Called (synchronously, inside advance/commands) on every sensed change."""
        self._listeners.append(callback)

    # -- vehicles -------------------------------------------------------------------

    def add_vehicle(
        self,
        now: float,
        *,
        length: float = 4.5,
        speed: float = 5.0,
        follow_gap: float = 2.0,
        clearance: float = 0.5,
        vehicle_id: str | None = None,
        obeys_light: bool = True,
        start_delay: float = 0.0,
        headway: float = 0.0,
    ) -> str:
        """A vehicle appears at ``spawn_x`` (or right behind the last one) and drives in.

        ``follow_gap`` is how close it follows the vehicle ahead: 2 m is a driver who
        waits, 0.5 m a tailgater trying to slip through behind a paying car.
        ``clearance`` is the barrier position (0 down … 1 up) below which the arm
        touches this vehicle when it is under the arm.
        """
        if length <= 0 or speed <= 0 or follow_gap < 0 or not 0 <= clearance <= 1:
            raise ValueError("expected length > 0, speed > 0, follow_gap >= 0, 0 <= clearance <= 1")
        self.advance(now)
        if vehicle_id is None:
            vehicle_id = f"car-{self._next_id}"
            self._next_id += 1
        if any(v.id == vehicle_id for v in self._vehicles):
            raise ValueError(f"vehicle {vehicle_id!r} is already in the lane")
        front = self.geometry.spawn_x
        if self._vehicles:
            front = min(front, self._vehicles[-1].rear - follow_gap)
        self._vehicles.append(
            _Vehicle(vehicle_id, length, speed, follow_gap, clearance, front, obeys_light=obeys_light,
                     start_delay=start_delay, headway=headway)
        )
        self._emit_changes()
        return vehicle_id

    def divert(self, now: float, vehicle_id: str) -> None:
        """A vehicle waiting before the arm gives up and pulls over to the manual lane.

        Only a vehicle that has not reached the safety loop can leave sideways; one on the
        loop or under the arm is committed to this lane and must drive on.
        """
        self.advance(now)
        v = next((v for v in self._vehicles if v.id == vehicle_id), None)
        if v is None:
            raise ValueError(f"no vehicle {vehicle_id!r} in the lane")
        if v.front > self.geometry.safety_loop[0] or v.rear < self.geometry.arm_x < v.front:
            raise ValueError(f"{vehicle_id} is on the safety loop or under the arm; it cannot pull over")
        self._vehicles.remove(v)
        self._diverted.append((v.id, self._now))
        self._emit_changes()

    @property
    def diverted(self) -> tuple[tuple[str, float], ...]:
        """(vehicle id, time it pulled over to the manual lane), in order."""
        return tuple(self._diverted)

    # -- barrier commands ---------------------------------------------------------

    def command_raise(self, now: float) -> None:
        self.advance(now)
        self._motion = Motion.RAISING if self._position < 1.0 else Motion.STOPPED

    def command_lower(self, now: float) -> None:
        self.advance(now)
        on_loop = self._first_on(self.geometry.safety_loop)
        if on_loop is not None:
            self._record(
                ViolationKind.LOWER_COMMANDED_WHILE_OCCUPIED,
                on_loop,
                f"lower commanded while {on_loop.id} is on the safety loop "
                f"(front {on_loop.front:.2f} m, rear {on_loop.rear:.2f} m)",
            )
        self._motion = Motion.LOWERING if self._position > 0.0 else Motion.STOPPED

    def command_stop(self, now: float) -> None:
        self.advance(now)
        self._motion = Motion.STOPPED

    def set_light(self, now: float, light: Light) -> None:
        self.advance(now)
        self._light = light

    def set_alarm(self, now: float, on: bool) -> None:
        self.advance(now)
        self._alarm = on

    # -- faults ---------------------------------------------------------------------

    def set_fault(self, now: float, signal: Signal, fault: SensorFault) -> None:
        self.advance(now)
        self._faults[signal] = _Fault(fault, now)
        self._emit_changes()

    def clear_fault(self, now: float, signal: Signal) -> None:
        self.advance(now)
        self._faults.pop(signal, None)
        self._emit_changes()

    def set_io_online(self, now: float, online: bool) -> None:
        """Take the whole IO module off the bus (every input unreadable) or back."""
        self.advance(now)
        self._io_online = online
        self._emit_changes()

    # -- time -------------------------------------------------------------------------

    def advance(self, now: float) -> None:
        if now < self._now - _EPS:
            raise ValueError(f"time went backwards: model at {self._now}, asked for {now}")
        while now - self._now > _EPS:
            dt = min(self._max_step, now - self._now)
            # Everything that happens in this step is stamped with its end time.
            self._now += dt
            self._step(dt)
            self._emit_changes()
        self._now = max(self._now, now)

    def _step(self, dt: float) -> None:
        self._move_vehicles(dt)
        self._move_barrier(dt)
        self._check_downward_motion()

    def _move_vehicles(self, dt: float) -> None:
        g = self.geometry
        arm_open = self._position >= 1.0 - _EPS  # drivers go only under a fully raised arm
        leader: _Vehicle | None = None
        for v in self._vehicles:
            limit = v.front + v.speed * dt
            if leader is not None:
                # Standing, a queue closes up to follow_gap; moving, a driver keeps its
                # time headway on top (a tailgater: next to none).
                gap = v.follow_gap + (v.headway * v.speed if leader.moving else 0.0)
                limit = min(limit, leader.rear - gap)
            stop = not arm_open or (v.obeys_light and self._light is Light.RED)
            if stop and v.front <= g.stop_x + _EPS:
                limit = min(limit, g.stop_x)
            new_front = max(v.front, limit)  # vehicles never reverse
            if new_front > v.front + _EPS and not v.moving and v.start_delay > 0:
                # A driver who stood still moves off a moment after the way clears: a
                # queue closed up to 0.5 m opens up again as it starts moving.
                if v.go_at is None:
                    v.go_at = self._now + v.start_delay
                if self._now < v.go_at - _EPS:
                    new_front = v.front
            if new_front > v.front + _EPS:
                v.go_at = None
            v.moving = new_front > v.front + _EPS
            v.front = new_front
            leader = v
        for v in [v for v in self._vehicles if v.rear > g.exit_x]:
            self._vehicles.remove(v)
            self._departed.append((v.id, self._now))

    def _move_barrier(self, dt: float) -> None:
        stroke = dt / self.barrier.travel_time
        if self._motion is Motion.RAISING:
            self._position = min(1.0, self._position + stroke)
            if self._position >= 1.0 - _EPS:  # on the up limit switch: the motor cuts out
                self._position = 1.0
                self._motion = Motion.STOPPED
        elif self._motion is Motion.LOWERING:
            target = max(0.0, self._position - stroke)
            for v in self._under_arm():
                if target < v.clearance:
                    self._hit(v, f"arm came down on {v.id} at position {v.clearance:.2f}")
                    # The arm rests on the roof until the vehicle is out from under it.
                    target = max(target, min(self._position, v.clearance))
            self._position = target
            if self._position <= _EPS:  # on the down limit switch
                self._position = 0.0
                self._motion = Motion.STOPPED
        for v in self._under_arm():
            if self._position < v.clearance - _EPS:
                # Not the arm's motion: a vehicle already committed past the stop line
                # drove into an arm that was no longer fully up.
                self._hit(v, f"{v.id} is under the arm at position {self._position:.2f}")

    def _hit(self, v: _Vehicle, detail: str) -> None:
        if not v.hit_by_arm:
            v.hit_by_arm = True
            self._record(ViolationKind.ARM_HIT_VEHICLE, v, detail)

    def _check_downward_motion(self) -> None:
        on_loop = self._first_on(self.geometry.safety_loop)
        if self._motion is not Motion.LOWERING or on_loop is None:
            self._moving_down_recorded = False
            self._down_on_occupied_since = None
            return
        if self._down_on_occupied_since is None:
            self._down_on_occupied_since = self._now
        late = self._now - self._down_on_occupied_since
        if not self._moving_down_recorded and late > self.reaction_limit + _EPS:
            self._moving_down_recorded = True
            self._record(
                ViolationKind.MOVING_DOWN_WHILE_OCCUPIED,
                on_loop,
                f"arm kept moving down with {on_loop.id} on the safety loop for more than "
                f"{self.reaction_limit * 1000:.0f} ms (the reaction bound)",
            )

    # -- helpers ----------------------------------------------------------------------

    def _first_on(self, span: tuple[float, float]) -> _Vehicle | None:
        return next((v for v in self._vehicles if _overlaps(v, span)), None)

    def _under_arm(self) -> list[_Vehicle]:
        x = self.geometry.arm_x
        return [v for v in self._vehicles if v.rear < x < v.front]

    def _record(self, kind: ViolationKind, vehicle: _Vehicle | None, detail: str) -> None:
        self._violations.append(
            SafetyViolation(
                at=self._now,
                kind=kind,
                vehicle=vehicle.id if vehicle else None,
                barrier_position=self._position,
                detail=detail,
            )
        )

    def _vehicle_state(self, v: _Vehicle) -> VehicleState:
        g = self.geometry
        return VehicleState(
            id=v.id,
            front=v.front,
            rear=v.rear,
            length=v.length,
            moving=v.moving,
            under_arm=v.rear < g.arm_x < v.front,
            on_entry_loop=_overlaps(v, g.entry_loop),
            on_safety_loop=_overlaps(v, g.safety_loop),
            hit_by_arm=v.hit_by_arm,
        )

    def _compute_sensed(self, signal: Signal) -> bool | None:
        if not self._io_online:
            return None
        f = self._faults.get(signal)
        if f is None:
            return self.true_state(signal)
        kind = f.fault.kind
        if kind is FaultKind.DEAD:
            return None
        if kind is FaultKind.STUCK_OCCUPIED:
            return True
        if kind is FaultKind.STUCK_CLEAR:
            return False
        # CHATTER: occupied for the first half period, clear for the second, and so on.
        half_periods = math.floor((self._now - f.since) * 2 * f.fault.rate_hz + _EPS)
        return half_periods % 2 == 0

    def _emit_changes(self) -> None:
        for signal in Signal:
            value = self._compute_sensed(signal)
            if value != self._last_sensed[signal]:
                self._last_sensed[signal] = value
                change = SensedChange(self._now, signal, value)
                for callback in self._listeners:
                    callback(change)
