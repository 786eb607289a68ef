"""Scenarios for the sans-IO lane model: vehicles, loops, barrier, faults, violations.

Time is simulated: the tests pass it in, nothing sleeps.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from laned.drivers.lane_io import Light, Signal
from laned.sim.lane_model import (
    BarrierSpec,
    FaultKind,
    LaneGeometry,
    LaneModel,
    Motion,
    SensedChange,
    SensorFault,
    ViolationKind,
)

STEP = 0.01


def run_until(model: LaneModel, condition: Callable[[], bool], *, within: float) -> float:
    """Advance simulated time until ``condition`` holds; fail if it does not in time."""
    deadline = model.now + within
    while not condition():
        if model.now >= deadline:
            pytest.fail(f"condition not reached within {within} s of simulated time")
        model.advance(model.now + STEP)
    return model.now


def loop_changes(model: LaneModel) -> list[SensedChange]:
    changes: list[SensedChange] = []
    model.add_listener(changes.append)
    return changes


def test_a_vehicle_stops_before_a_lowered_barrier() -> None:
    model = LaneModel()
    car = model.add_vehicle(0.0, speed=5.0)

    run_until(model, lambda: not model.vehicle(car).moving, within=20)
    model.advance(model.now + 5.0)  # it keeps waiting

    state = model.vehicle(car)
    assert state.front == pytest.approx(model.geometry.stop_x)
    assert state.on_entry_loop and not state.on_safety_loop and not state.under_arm
    assert model.sensed(Signal.ENTRY_LOOP) is True
    assert model.sensed(Signal.SAFETY_LOOP) is False
    assert model.sensed(Signal.BARRIER_DOWN) is True
    assert model.violations == ()


def test_a_vehicle_also_waits_for_an_arm_that_is_still_rising() -> None:
    model = LaneModel(barrier=BarrierSpec(travel_time=4.0))
    car = model.add_vehicle(0.0)
    run_until(model, lambda: not model.vehicle(car).moving, within=20)

    model.command_raise(model.now)
    model.advance(model.now + 2.0)  # arm half way

    assert 0.0 < model.barrier_position < 1.0
    assert model.vehicle(car).front == pytest.approx(model.geometry.stop_x)
    run_until(model, lambda: model.vehicle(car).moving, within=3)
    assert model.true_state(Signal.BARRIER_UP)


def test_a_vehicle_passes_a_raised_barrier_and_the_loops_toggle_in_order() -> None:
    model = LaneModel()
    changes = loop_changes(model)
    car = model.add_vehicle(0.0)
    run_until(model, lambda: not model.vehicle(car).moving, within=20)

    model.command_raise(model.now)
    run_until(model, lambda: model.departed, within=30)

    loops = [(c.signal, c.value) for c in changes if c.signal in (Signal.ENTRY_LOOP, Signal.SAFETY_LOOP)]
    assert loops == [
        (Signal.ENTRY_LOOP, True),
        (Signal.SAFETY_LOOP, True),
        (Signal.ENTRY_LOOP, False),
        (Signal.SAFETY_LOOP, False),
    ]
    up_at = next(c.at for c in changes if c.signal is Signal.BARRIER_UP and c.value)
    safety_at = next(c.at for c in changes if c.signal is Signal.SAFETY_LOOP and c.value)
    assert up_at < safety_at, "the car moved before the arm was fully up"
    assert [vid for vid, _ in model.departed] == [car]
    assert model.violations == ()

    # The lane is empty again: lowering now is safe and ends on the down limit switch.
    model.command_lower(model.now)
    run_until(model, lambda: model.sensed(Signal.BARRIER_DOWN) is True, within=3)
    assert model.barrier_motion is Motion.STOPPED
    assert model.violations == ()


def test_barrier_travel_time_and_limit_switches() -> None:
    model = LaneModel(barrier=BarrierSpec(travel_time=2.0))
    assert model.sensed(Signal.BARRIER_DOWN) is True
    assert model.sensed(Signal.BARRIER_UP) is False

    model.command_raise(10.0)
    model.advance(10.05)
    assert model.sensed(Signal.BARRIER_DOWN) is False  # left the down switch at once
    model.advance(11.0)
    model.command_stop(11.0)
    model.advance(15.0)  # stopped half way: neither switch made
    assert model.barrier_position == pytest.approx(0.5, abs=0.01)
    assert (model.sensed(Signal.BARRIER_UP), model.sensed(Signal.BARRIER_DOWN)) == (False, False)

    model.command_raise(15.0)
    up_at = run_until(model, lambda: model.sensed(Signal.BARRIER_UP) is True, within=3)
    assert up_at - 15.0 == pytest.approx(1.0, abs=0.02)


def test_lowering_on_an_occupied_safety_loop_is_recorded() -> None:
    model = LaneModel(barrier=BarrierSpec(start_raised=True))
    car = model.add_vehicle(0.0, clearance=0.8)  # a van: the arm touches it early
    run_until(model, lambda: model.true_state(Signal.SAFETY_LOOP), within=20)
    run_until(model, lambda: model.vehicle(car).under_arm, within=2)

    lowered_at = model.now
    model.command_lower(lowered_at)
    model.advance(lowered_at + 0.5)

    kinds = [v.kind for v in model.violations]
    assert kinds[0] is ViolationKind.LOWER_COMMANDED_WHILE_OCCUPIED
    assert ViolationKind.MOVING_DOWN_WHILE_OCCUPIED in kinds
    first = model.violations[0]
    assert (first.at, first.vehicle) == (pytest.approx(lowered_at), car)
    assert model.vehicle(car).hit_by_arm
    hit = next(v for v in model.violations if v.kind is ViolationKind.ARM_HIT_VEHICLE)
    assert hit.vehicle == car
    # The arm rests on the roof rather than passing through the car.
    assert model.barrier_position >= 0.8 - 1e-9 or not model.vehicle(car).under_arm


def test_lowering_after_the_safety_loop_cleared_is_not_a_violation() -> None:
    model = LaneModel(barrier=BarrierSpec(start_raised=True))
    model.add_vehicle(0.0)
    run_until(model, lambda: model.true_state(Signal.SAFETY_LOOP), within=20)
    run_until(model, lambda: not model.true_state(Signal.SAFETY_LOOP), within=10)

    model.command_lower(model.now)
    model.advance(model.now + 3.0)

    assert model.true_state(Signal.BARRIER_DOWN)
    assert model.violations == ()


def test_a_tailgating_follow_car_under_the_lowering_arm_is_a_violation() -> None:
    # A fast ETC barrier (0.8 s stroke) reaches the roof before the car is through.
    model = LaneModel(barrier=BarrierSpec(start_raised=True, travel_time=0.8))
    paid = model.add_vehicle(0.0)
    tailgater = model.add_vehicle(0.0, follow_gap=0.5)
    safety_end = model.geometry.safety_loop[1]

    # A naive controller lowers as soon as the paying car is past the safety loop.
    run_until(model, lambda: model.vehicle(paid).rear > safety_end, within=30)
    assert model.vehicle(tailgater).under_arm, "the tailgater should be right under the arm"
    assert model.true_state(Signal.SAFETY_LOOP), "the safety loop never cleared between the cars"
    model.command_lower(model.now)
    model.advance(model.now + 2.0)

    by_kind = {v.kind: v for v in model.violations}
    assert by_kind[ViolationKind.LOWER_COMMANDED_WHILE_OCCUPIED].vehicle == tailgater
    assert by_kind[ViolationKind.ARM_HIT_VEHICLE].vehicle == tailgater
    assert not any(v.vehicle == paid for v in model.violations)


def test_a_follow_car_with_a_normal_gap_stops_at_the_lowering_arm() -> None:
    # Control for the tailgating scenario: 12 m behind, the second car is still before
    # the stop line when the arm starts down, so it stops and nothing is recorded.
    model = LaneModel(barrier=BarrierSpec(start_raised=True))
    paid = model.add_vehicle(0.0)
    second = model.add_vehicle(0.0, follow_gap=12.0)
    run_until(model, lambda: model.vehicle(paid).rear > model.geometry.safety_loop[1], within=30)
    model.command_lower(model.now)
    run_until(model, lambda: model.true_state(Signal.BARRIER_DOWN), within=3)
    model.advance(model.now + 5.0)

    assert model.vehicle(second).front == pytest.approx(model.geometry.stop_x)
    assert model.violations == ()


def twin_models() -> tuple[LaneModel, LaneModel]:
    def build() -> LaneModel:
        model = LaneModel(barrier=BarrierSpec(start_raised=True))
        model.add_vehicle(0.0)
        return model

    return build(), build()


@pytest.mark.parametrize(
    ("signal", "fault", "expected"),
    [
        (Signal.SAFETY_LOOP, SensorFault.stuck_occupied(), True),
        (Signal.ENTRY_LOOP, SensorFault.stuck_clear(), False),
        (Signal.BARRIER_UP, SensorFault.stuck_clear(), False),
        (Signal.BARRIER_DOWN, SensorFault.stuck_occupied(), True),
        (Signal.SAFETY_LOOP, SensorFault.dead(), None),
    ],
    ids=lambda p: p.kind.value if isinstance(p, SensorFault) else str(p),
)
def test_a_sensor_fault_changes_what_is_sensed_not_what_is_true(
    signal: Signal, fault: SensorFault, expected: bool | None
) -> None:
    faulty, healthy = twin_models()
    faulty.set_fault(0.0, signal, fault)

    for t in (1.0, 3.0, 5.5, 6.0, 8.0, 12.0):
        faulty.advance(t)
        healthy.advance(t)
        assert faulty.sensed(signal) is expected, f"at {t} s"
        for s in Signal:
            assert faulty.true_state(s) == healthy.true_state(s) == healthy.sensed(s)
        assert faulty.vehicles() == healthy.vehicles()
    assert faulty.fault(signal) == fault

    # Repairing the sensor brings the truth back.
    faulty.clear_fault(12.0, signal)
    assert faulty.sensed(signal) == faulty.true_state(signal)


def test_stuck_clear_hides_a_car_that_is_really_on_the_loop() -> None:
    model = LaneModel()
    car = model.add_vehicle(0.0)
    run_until(model, lambda: not model.vehicle(car).moving, within=20)
    model.set_fault(model.now, Signal.ENTRY_LOOP, SensorFault.stuck_clear())

    assert model.true_state(Signal.ENTRY_LOOP) is True
    assert model.sensed(Signal.ENTRY_LOOP) is False


def test_a_chattering_input_toggles_at_its_rate() -> None:
    model = LaneModel()
    changes = loop_changes(model)
    model.set_fault(1.0, Signal.SAFETY_LOOP, SensorFault.chatter(5.0))
    model.advance(1.95)

    toggles = [c for c in changes if c.signal is Signal.SAFETY_LOOP]
    # 5 full cycles a second = a change every 0.1 s; starts by reading occupied.
    assert toggles[0].value is True and toggles[0].at == pytest.approx(1.0)
    assert len(toggles) == 10
    gaps = [b.at - a.at for a, b in zip(toggles, toggles[1:])]
    assert all(g == pytest.approx(0.1, abs=STEP + 1e-6) for g in gaps)
    assert model.true_state(Signal.SAFETY_LOOP) is False
    assert model.fault(Signal.SAFETY_LOOP).kind is FaultKind.CHATTER


def test_an_offline_io_module_loses_every_input_but_not_the_physics() -> None:
    faulty, healthy = twin_models()
    changes = loop_changes(faulty)
    faulty.set_io_online(2.0, False)
    healthy.advance(2.0)  # same call times, same integration steps
    faulty.advance(7.0)
    healthy.advance(7.0)

    assert not faulty.io_online
    assert all(faulty.sensed(s) is None for s in Signal)
    assert {(c.signal, c.value) for c in changes if c.at == 2.0} >= {(s, None) for s in Signal}
    assert faulty.snapshot().true_inputs == healthy.snapshot().true_inputs
    assert faulty.vehicles() == healthy.vehicles()

    faulty.set_io_online(7.0, True)
    assert all(faulty.sensed(s) == faulty.true_state(s) for s in Signal)


def test_the_same_calls_give_the_same_lane() -> None:
    def scenario() -> LaneModel:
        model = LaneModel(barrier=BarrierSpec(start_raised=True))
        model.add_vehicle(0.0, speed=4.2)
        model.add_vehicle(0.3, follow_gap=0.4, speed=4.2)
        model.set_fault(1.0, Signal.ENTRY_LOOP, SensorFault.chatter(3.3))
        model.command_lower(8.8)
        model.advance(20.0)
        return model

    a, b = scenario(), scenario()
    assert a.snapshot() == b.snapshot()
    assert a.violations == b.violations
    assert a.violations, "the scenario lowers onto the second car"


def test_time_never_runs_backwards() -> None:
    model = LaneModel(now=100.0)
    model.advance(101.0)
    with pytest.raises(ValueError, match="backwards"):
        model.command_raise(100.5)


def test_bad_geometry_is_refused() -> None:
    with pytest.raises(ValueError, match="under the barrier arm"):
        LaneGeometry(safety_loop=(1.0, 3.0))
    with pytest.raises(ValueError, match="rate_hz"):
        SensorFault(FaultKind.CHATTER)


def test_a_refused_vehicle_waiting_at_the_arm_pulls_over_and_the_next_one_moves_up() -> None:
    model = LaneModel()
    first = model.add_vehicle(0.0, speed=5.0)
    second = model.add_vehicle(0.0, speed=5.0)
    run_until(model, lambda: not model.vehicle(first).moving, within=10.0)
    model.divert(model.now, first)
    assert model.vehicle(first) is None
    assert [v for v, _ in model.diverted] == [first]
    assert model.departed == ()
    run_until(model, lambda: model.vehicle(second).front >= model.geometry.stop_x - 1e-6, within=10.0)
    assert model.violations == ()


def test_a_vehicle_under_the_arm_cannot_pull_over() -> None:
    model = LaneModel(barrier=BarrierSpec(start_raised=True))
    car = model.add_vehicle(0.0, speed=5.0)
    run_until(model, lambda: model.vehicle(car).under_arm, within=10.0)
    with pytest.raises(ValueError, match="cannot pull over"):
        model.divert(model.now, car)
    assert model.vehicle(car) is not None


def _lowering_onto_a_creeping_car(model: LaneModel, reverse_after: float) -> None:
    """A car creeps past the stop line as the arm starts down; the lane reverses the arm
    ``reverse_after`` seconds after the car reached the safety loop."""
    car = model.add_vehicle(0.0, speed=0.8, obeys_light=False)
    run_until(model, lambda: model.vehicle(car).front > model.geometry.stop_x + 0.1, within=60)
    model.command_lower(model.now)
    on_loop = run_until(model, lambda: model.true_state(Signal.SAFETY_LOOP), within=5)
    model.advance(on_loop + reverse_after)
    model.command_raise(model.now)
    model.advance(model.now + 3.0)


def test_an_arm_reversed_within_the_reaction_bound_when_a_car_reaches_the_loop_is_no_violation() -> None:
    model = LaneModel(barrier=BarrierSpec(start_raised=True), reaction_limit=0.3)
    _lowering_onto_a_creeping_car(model, reverse_after=0.2)
    assert model.violations == ()


def test_an_arm_that_goes_on_down_onto_an_occupied_loop_past_the_reaction_bound_is_a_violation() -> None:
    model = LaneModel(barrier=BarrierSpec(start_raised=True), reaction_limit=0.3)
    _lowering_onto_a_creeping_car(model, reverse_after=0.5)
    assert [v.kind for v in model.violations] == [ViolationKind.MOVING_DOWN_WHILE_OCCUPIED]
    assert "300 ms" in model.violations[0].detail


def test_a_driver_stops_at_a_red_light_under_an_open_arm_and_a_tailgater_does_not() -> None:
    model = LaneModel(barrier=BarrierSpec(start_raised=True))
    model.set_light(0.0, Light.RED)
    careful = model.add_vehicle(0.0, speed=5.0)
    model.advance(10.0)
    assert model.vehicle(careful).front == pytest.approx(model.geometry.stop_x)
    model2 = LaneModel(barrier=BarrierSpec(start_raised=True))
    model2.set_light(0.0, Light.RED)
    tailgater = model2.add_vehicle(0.0, speed=5.0, obeys_light=False)
    model2.advance(14.0)
    assert model2.vehicle(tailgater) is None and model2.departed[0][0] == tailgater


def test_a_queue_closed_up_to_half_a_metre_opens_up_as_it_moves_off() -> None:
    model = LaneModel()  # the arm is down: the queue waits at the stop line
    first = model.add_vehicle(0.0, speed=2.0, follow_gap=0.5, start_delay=1.0)
    second = model.add_vehicle(0.0, speed=2.0, follow_gap=0.5, start_delay=1.0)
    model.advance(25.0)
    gap = model.vehicle(first).rear - model.vehicle(second).front
    assert gap == pytest.approx(0.5, abs=0.02)
    model.command_raise(25.0)
    model.advance(30.0)
    # Each driver moved off 1 s after the way cleared: 2 m/s × 1 s more between them.
    gap = model.vehicle(first).rear - model.vehicle(second).front
    assert gap == pytest.approx(2.5, abs=0.05)


def test_a_driver_keeps_a_time_headway_while_moving_and_closes_up_when_the_queue_stands() -> None:
    model = LaneModel(barrier=BarrierSpec(start_raised=True))
    first = model.add_vehicle(0.0, speed=10.0)
    second = model.add_vehicle(0.0, speed=10.0, follow_gap=0.5, headway=1.0)
    model.advance(2.0)
    gap = model.vehicle(first).rear - model.vehicle(second).front
    assert gap == pytest.approx(0.5 + 10.0, abs=0.2)
