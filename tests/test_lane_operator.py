"""The lane machine and an operator at the centre (issue 10, item 4): a remote raise and a message.

A remote raise (``OperatorRaise``) lets one vehicle out as a payment would: the arm rises,
and it comes down only through the interlock, behind the vehicle, after the hold-off. A
message (``OperatorMessage``) shows on the fee display for its duration, then the display
shows what it showed before. A close by command (``DeviceStatus(OPERATOR, False)``) refuses
the next vehicle to the manual lane. Nothing here can lower the arm on a vehicle.
"""

from __future__ import annotations

import pytest

from tests.lane_harness import Lane
from laned.lane.barrier import BarrierCommand
from laned.lane.events import Device, DeviceStatus, OperatorMessage, OperatorRaise, Show
from laned.lane.outcomes import Reason


@pytest.fixture
def lane() -> Lane:
    lane = Lane()
    lane.advance(4.0)  # fresh, clear inputs: the interlock's latch from start-up is released
    return lane


def shown(actions: list) -> list[tuple[str, str]]:
    return [(a.content.line1, a.content.line2) for a in actions if isinstance(a, Show)]


def test_a_remote_raise_lets_one_vehicle_out_and_the_arm_comes_down_behind_it_only(lane: Lane) -> None:
    out = lane.feed(OperatorRaise("op-0231", "OBU broken, paid at the booth"))
    assert lane.barrier(out) == [BarrierCommand.RAISE]
    out = lane.advance(3.0)
    assert BarrierCommand.LOWER not in lane.barrier(out)  # the vehicle has not come yet: the arm waits
    lane.loop(True)
    out = lane.advance(5.0)
    assert BarrierCommand.LOWER not in lane.barrier(out)  # on the loop: never down on it
    lane.loop(False)
    out = lane.advance(0.5)
    assert BarrierCommand.LOWER not in lane.barrier(out)  # inside the hold-off
    out = lane.advance(1.0)
    assert lane.barrier(out) == [BarrierCommand.LOWER]
    assert lane.machine.counters["remote_raise"] == 1


def test_a_remote_raise_with_the_safety_loop_faulted_never_lowers(lane: Lane) -> None:
    lane.feed(OperatorRaise("op-0231", "paid at the booth"))
    lane.loop(None)  # the loop reads nothing: counts as occupied
    out = lane.advance(70.0)  # beyond the passage timeout
    assert BarrierCommand.LOWER not in lane.barrier(out)


def test_a_message_shows_for_its_duration_then_the_display_goes_back(lane: Lane) -> None:
    before = (lane.machine.display.line1, lane.machine.display.line2)
    out = lane.feed(OperatorMessage("道路施工", "请减速慢行", 10.0))
    assert shown(out) == [("道路施工", "请减速慢行")]
    assert shown(lane.advance(9.0)) == []
    assert shown(lane.advance(1.5)) == [before]


def test_a_vehicles_outcome_replaces_a_message_and_is_not_undone_by_its_end(lane: Lane) -> None:
    lane.feed(OperatorMessage("道路施工", "请减速慢行", 10.0))
    out = lane.pay()
    assert ("欢迎通行", "一路顺风") in shown(out)
    late = lane.advance(11.0)  # the message's time runs out while the paid vehicle's outcome shows
    assert shown(late) == []  # neither the message again nor the display from before it
    assert (lane.machine.display.line1, lane.machine.display.line2) != ("道路施工", "请减速慢行")


def test_closed_by_the_centre_the_next_vehicle_is_refused_until_opened(lane: Lane) -> None:
    lane.feed(DeviceStatus(Device.OPERATOR, False, "closed by the centre: RSU maintenance"))
    assert lane.machine.modes.closed and lane.machine.modes.closed_by == {
        Device.OPERATOR: "closed by the centre: RSU maintenance"}
    out = lane.b2()
    assert lane.sent(out) == ["C2"] and lane.machine.counters[Reason.ETC_CLOSED] == 1
    lane.feed(DeviceStatus(Device.OPERATOR, True, "opened by the centre"))
    assert not lane.machine.modes.closed
