"""Vehicles, not occupations: payments bound to the vehicles that drive out, in order.

Scenarios with the lane's loops as the daemon sees them (docs/lane_sensors.md): the
safety loop under the arm and, where the IO profile has one, the approach loop before it.
"""

from __future__ import annotations

import pytest

from laned.lane.barrier import BarrierCommand, InterlockSettings
from laned.lane.machine import InputIn, JournalEvent, LaneSettings, RaiseAlarm, SetLight
from laned.lane.outcomes import Reason
from laned.lane.signals import InputSample, Light, Signal
from tests.lane_harness import Lane, card_file

A = b"\xa1\xfe\x33\xff"
B = b"\x01\x02\x03\x04"


def with_approach(**interlock) -> Lane:
    ln = Lane(settings=LaneSettings(interlock=InterlockSettings(approach=(Signal.ENTRY_LOOP,), **interlock)))
    ln.loop_state[Signal.ENTRY_LOOP] = False
    ln.advance(4.0)
    return ln


def approach(lane: Lane, occupied: bool | None):
    lane.loop_state[Signal.ENTRY_LOOP] = occupied
    return lane.feed(InputIn(InputSample(Signal.ENTRY_LOOP, occupied, lane.now)))


def pay_b(lane: Lane):
    card = card_file(plate="京B99999", number="2301000099999999")
    return lane.b2(obu_id=B) + lane.b3(obu_id=B, plate="京B99999") + lane.b4(obu_id=B, card=card) + lane.b5(obu_id=B)


def drive_through(lane: Lane) -> list:
    """One vehicle over the approach loop and the safety loop, at a walking pace."""
    out = approach(lane, True) + lane.advance(0.6) + lane.loop(True) + lane.advance(0.3)
    out += approach(lane, False) + lane.advance(0.6) + lane.loop(False)
    return out


def follow_cars(out) -> list[RaiseAlarm]:
    return [a for a in out if isinstance(a, RaiseAlarm) and a.code == Reason.FOLLOW_CAR]


def test_two_paid_vehicles_closer_than_the_safety_loop_both_get_out_and_the_arm_then_closes():
    lane = with_approach()
    lane.pay()
    pay_b(lane)
    assert lane.machine.credits == 2
    # A on the approach loop and then on the safety loop; B right behind it, so close that
    # the safety loop never clears between them.
    out = approach(lane, True) + lane.advance(0.5) + lane.loop(True) + lane.advance(0.3) + approach(lane, False)
    out += lane.advance(0.2) + approach(lane, True) + lane.advance(0.5) + approach(lane, False)
    out += lane.advance(0.5) + lane.loop(False)
    assert lane.machine.credits == 0 and not follow_cars(out)
    out = lane.advance(2.5)
    assert lane.barrier(out) == [BarrierCommand.LOWER]


def test_without_an_approach_loop_two_paid_vehicles_on_one_occupation_leave_the_arm_waiting():
    """The documented limit of a lane with a safety loop only: one occupation is one vehicle."""
    lane = Lane()
    lane.advance(4.0)
    lane.pay()
    pay_b(lane)
    lane.loop(True), lane.advance(2.0), lane.loop(False)
    out = lane.advance(3.0)
    assert lane.machine.credits == 1 and BarrierCommand.LOWER not in lane.barrier(out)


def test_an_unpaid_vehicle_right_behind_a_paid_one_is_a_follow_car_and_keeps_the_arm_up():
    lane = with_approach()
    lane.pay()
    out = approach(lane, True) + lane.advance(0.5) + lane.loop(True) + lane.advance(0.3) + approach(lane, False)
    assert not follow_cars(out)
    # The tailgater reaches the safety loop while the paid car is still on it.
    out = lane.advance(0.2) + approach(lane, True) + lane.advance(0.5) + approach(lane, False)
    assert len(follow_cars(out)) == 1 and BarrierCommand.RAISE in lane.barrier(out)
    assert any(isinstance(a, JournalEvent) and a.kind == Reason.FOLLOW_CAR for a in out)
    out = lane.advance(2.0)
    assert BarrierCommand.LOWER not in lane.barrier(out)  # both still on the loop
    lane.loop(False)
    assert lane.machine.credits == 0
    out = lane.advance(2.5)
    assert lane.barrier(out) == [BarrierCommand.LOWER]


def test_a_vehicle_that_turns_away_at_the_stop_line_does_not_count_as_passing():
    lane = with_approach()
    lane.b2(), lane.b3(), lane.b4(balance=10)  # refused: low balance; it waits at the stop line …
    approach(lane, True), lane.advance(2.0)
    approach(lane, False)  # … and pulls over to the manual lane
    lane.advance(1.0)
    pay_b(lane)
    out = drive_through(lane)
    assert not follow_cars(out) and lane.machine.credits == 0
    out = lane.advance(2.5)
    assert lane.barrier(out) == [BarrierCommand.LOWER]


def test_a_vehicle_on_the_approach_loop_holds_the_arm_up_until_it_cleared_for_the_hold_off():
    """Stopping distance: a vehicle on the approach loop may not stop before the arm."""
    lane = with_approach(approach_hold_off=1.5)
    lane.pay()
    drive_through(lane)
    approach(lane, True)  # the next vehicle, close behind
    out = lane.advance(4.0)
    assert BarrierCommand.LOWER not in lane.barrier(out)
    approach(lane, False)  # it stopped short of the loop, or turned away
    out = lane.advance(1.2)
    assert BarrierCommand.LOWER not in lane.barrier(out)
    out = lane.advance(0.5)
    assert lane.barrier(out) == [BarrierCommand.LOWER]
    assert lane.machine.may_lower(lane.now)


def test_an_unknown_approach_loop_counts_as_occupied_for_lowering():
    lane = with_approach()
    lane.pay()
    drive_through(lane)
    approach(lane, None)
    out = lane.advance(5.0)
    assert BarrierCommand.LOWER not in lane.barrier(out)


@pytest.mark.parametrize("has_approach", [True, False])
def test_a_tailgater_that_used_the_next_cars_payment_is_found_out_and_that_car_still_gets_out(has_approach):
    """Finding 2 of issue 9: the RSU read the car behind a tailgater early; the tailgater
    drove out on that car's payment. When the car is reported again at the closed arm the
    tailgater is recorded as a follow-car and the car is let out: it never pays twice."""
    lane = with_approach() if has_approach else Lane()
    if not has_approach:
        lane.advance(4.0)
    lane.pay()
    pay_b(lane)  # read early, while the tailgater is between the two
    drive_through(lane) if has_approach else (lane.loop(True), lane.advance(1.0), lane.loop(False))
    lane.advance(0.5)
    out = drive_through(lane) if has_approach else lane.loop(True) + lane.advance(1.0) + lane.loop(False)
    assert not follow_cars(out)  # two vehicles on two payments: the lane cannot tell yet
    out = lane.advance(3.0)
    assert lane.barrier(out) == [BarrierCommand.LOWER]
    # B waits at the closed arm; the RSU reports its OBU again.
    out = lane.b2(obu_id=B)
    assert lane.sent(out) == ["C2"] and lane.barrier(out) == [BarrierCommand.RAISE]
    found = follow_cars(out)
    assert len(found) == 1 and B.hex() in found[0].detail
    assert any(j[0] == "JournalEvent" and j[1].kind == Reason.FOLLOW_CAR for j in lane.journal)
    assert len(lane.machine.c6_sent) == 2 and lane.machine.credits == 1  # no second charge


def test_a_paid_vehicle_heard_again_as_it_drives_out_is_not_a_follow_car():
    lane = with_approach()
    lane.pay()
    drive_through(lane)
    out = lane.advance(0.2) + lane.b2()  # the RSU heard it once more at the edge of its zone
    assert not follow_cars(out) and lane.machine.credits == 0


def test_a_paid_vehicle_that_comes_round_again_minutes_later_is_let_out_on_its_record_without_a_follow_car():
    lane = with_approach()
    lane.pay()
    drive_through(lane)
    lane.advance(90.0)  # round the plaza and back into the lane
    out = lane.b2()
    assert not follow_cars(out) and lane.barrier(out) == [BarrierCommand.RAISE]
    assert len(lane.machine.c6_sent) == 1


def test_a_payment_read_while_another_vehicle_stands_at_the_stop_line_waits_for_it_to_turn_away():
    """The car without an OBU waits at the closed arm; the RSU reads the car behind it as it
    enters the zone and it pays. Raising now would let the car in front out on that payment."""
    lane = with_approach()
    approach(lane, True)  # a car without an OBU at the stop line
    lane.advance(2.0)
    out = pay_b(lane)
    assert BarrierCommand.RAISE not in lane.barrier(out) and lane.machine.credits == 1
    out = lane.advance(1.0)
    assert BarrierCommand.RAISE not in lane.barrier(out)
    out = approach(lane, False) + lane.advance(0.1)  # it pulled over to the manual lane
    assert lane.barrier(out) == [BarrierCommand.RAISE]


def test_a_held_raise_is_given_after_a_while_if_the_standing_vehicle_does_not_move():
    """… in case the vehicle at the stop line was the one that paid after all (read late)."""
    lane = with_approach()
    approach(lane, True)
    lane.advance(2.0)
    pay_b(lane)
    out = lane.advance(3.5)
    assert BarrierCommand.RAISE not in lane.barrier(out)
    out = lane.advance(1.0)
    assert lane.barrier(out) == [BarrierCommand.RAISE]


def test_the_light_turns_red_once_the_paid_car_is_at_the_arm_and_green_again_for_the_next_payment():
    """A driver behind the paid car waits for a payment of its own: the green was the paid car's."""
    lane = with_approach()
    out = lane.pay()
    assert SetLight(Light.GREEN) in out
    out = approach(lane, True) + lane.advance(0.5) + lane.loop(True)
    assert SetLight(Light.RED) in out
    out = pay_b(lane)  # the car behind pays: green for it, though the first is still at the arm
    assert SetLight(Light.GREEN) in out


def test_a_paid_car_that_passed_uncounted_behind_another_stops_holding_the_arm_once_the_rsu_no_longer_hears_it():
    """Two paid cars closer than the approach loop is long: one vehicle to the loops. The
    second car's OBU, reported while it waited, falls silent once it is past the arm."""
    lane = with_approach()
    lane.pay()
    pay_b(lane)
    lane.b2(obu_id=B)  # the RSU reports B again on its way
    drive_through(lane)  # both, as one vehicle
    assert lane.machine.credits == 1
    out = lane.advance(3.0)
    assert BarrierCommand.LOWER not in lane.barrier(out)
    out = lane.advance(4.0)
    assert lane.machine.credits == 0 and lane.barrier(out) == [BarrierCommand.LOWER]
    assert lane.machine.counters["passed_uncounted"] == 1 and not follow_cars(out)


def test_a_paid_car_the_rsu_keeps_reporting_keeps_its_payment():
    lane = with_approach()
    lane.pay()
    for _ in range(8):
        lane.advance(1.0)
        lane.b2()  # waiting in the zone, reported again
    assert lane.machine.credits == 1
