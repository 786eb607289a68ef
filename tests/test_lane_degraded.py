"""Degraded modes of the lane machine: a lost device closes ETC, its return opens it.

Each scenario checks both rules as well as what the driver sees: no charge the lane could
not finish, no lower but through the interlock, and a paid vehicle always let out.
"""

from __future__ import annotations

import pytest

from laned.lane.barrier import BarrierCommand
from laned.lane.machine import (
    ChargeRecorded, ChargeRecordFailed, ClearAlarm, Device, DeviceStatus, IntentRecorded, JournalCharged, JournalEvent,
    JournalIntent, JournalNotCharged, LaneSettings, LinkLost, LinkUp, RaiseAlarm, SendFailed, SetLight, Show,
)
from laned.lane.modes import DisplayPolicy
from laned.lane.outcomes import Reason
from laned.drivers.lane_io import Light
from tests.lane_harness import Lane

CLOSED = ("ETC暂停", "请走人工车道")


@pytest.fixture
def lane() -> Lane:
    ln = Lane()
    ln.advance(4.0)  # inputs sampled clear long enough to release the start-up latch
    return ln


def shown(actions) -> list[tuple[str, str]]:
    return [(a.content.line1, a.content.line2) for a in actions if isinstance(a, Show)]


def alarms(actions, kind=RaiseAlarm) -> list[str]:
    return [a.code for a in actions if isinstance(a, kind)]


def events(actions) -> list[str]:
    return [a.kind for a in actions if isinstance(a, JournalEvent)]


def test_a_lost_rsu_closes_etc_with_message_red_light_alarm_and_journal_event(lane):
    out = lane.feed(LinkLost("adapter removed"))
    assert CLOSED in shown(out)
    assert "etc_closed" in alarms(out) and "etc_closed" in events(out)
    assert lane.machine.modes.closed and "rsu: adapter removed" in lane.machine.modes.describe()
    out = lane.feed(LinkUp())
    assert "etc_closed" in alarms(out, ClearAlarm) and "etc_opened" in events(out)
    assert ("ETC车道", "欢迎使用") in shown(out)
    assert lane.sent(lane.pay()) == ["C1", "C1", "C6", "C1"]  # in service again


def test_with_the_io_module_offline_a_new_obu_is_refused_not_charged(lane):
    lane.feed(DeviceStatus(Device.IO, False, "io_module: bus down"))
    out = lane.b2()
    assert lane.sent(out) == ["C2"]
    assert lane.machine.counters[Reason.ETC_CLOSED] == 1
    assert not [j for j in lane.journal if j[0] == "intent"]


def test_an_io_module_lost_between_b2_and_b4_stops_the_charge_before_the_intent(lane):
    lane.b2(), lane.b3()
    lane.feed(DeviceStatus(Device.IO, False, "io_module: bus down"))
    out = lane.b4()
    assert lane.sent(out) == ["C2"]
    assert not [j for j in lane.journal if j[0] == "intent"]
    assert CLOSED in shown(out)


def test_a_vehicle_charged_while_the_io_module_was_lost_is_let_out_when_it_answers_again(lane):
    lane.b2(), lane.b3(), lane.b4()  # C6 is out: the charge goes on whatever happens now
    lane.feed(DeviceStatus(Device.IO, False, "io_module: bus down"))
    out = lane.b5()
    assert lane.barrier(out) == [BarrierCommand.RAISE]  # asked; the module cannot do it yet
    assert lane.machine.counters[Reason.CHARGED] == 1
    out = lane.feed(DeviceStatus(Device.IO, True))
    assert lane.barrier(out) == [BarrierCommand.RAISE]  # asked again now that it can
    assert SetLight(Light.GREEN) in out
    assert "etc_opened" in events(out)


def test_the_raise_is_not_repeated_when_nobody_is_waiting_for_it(lane):
    lane.feed(DeviceStatus(Device.IO, False, "io_module: bus down"))
    out = lane.feed(DeviceStatus(Device.IO, True))
    assert lane.barrier(out) == []


def test_a_paid_vehicle_that_crossed_the_loop_unseen_during_an_outage_holds_the_arm_only_briefly(lane):
    lane.pay()
    lane.feed(DeviceStatus(Device.IO, False, "io_module: bus down"))
    lane.loop_state.clear()  # no samples while the module is gone
    lane.advance(5.0)
    lane.loop_state[lane_signal()] = False
    lane.feed(DeviceStatus(Device.IO, True))
    out = lane.advance(12.0)  # grace (8 s) + hold-off, far below the 60 s passage timeout
    assert BarrierCommand.LOWER in lane.barrier(out)
    assert lane.machine.credits == 0


def test_no_device_return_lowers_the_arm_onto_a_vehicle_on_the_loop(lane):
    lane.pay()
    lane.feed(DeviceStatus(Device.IO, False, "io_module: bus down"))
    lane.loop_state.clear()
    lane.advance(2.0)
    lane.loop_state[lane_signal()] = True  # the car is on the loop when the module is back
    lane.feed(DeviceStatus(Device.IO, True))
    out = lane.advance(30.0)
    assert BarrierCommand.LOWER not in lane.barrier(out)


def test_a_lost_display_only_raises_an_alarm_by_default(lane):
    out = lane.feed(DeviceStatus(Device.DISPLAY, False, "fee_display: no answer"))
    assert "display_offline" in alarms(out) and "etc_closed" not in alarms(out)
    assert lane.sent(lane.pay()) == ["C1", "C1", "C6", "C1"]
    out = lane.feed(DeviceStatus(Device.DISPLAY, True))
    assert "display_offline" in alarms(out, ClearAlarm)
    assert [a for a in out if isinstance(a, Show)]  # rewritten with what it missed


def test_a_lost_display_closes_etc_when_the_policy_says_so():
    ln = Lane(settings=LaneSettings(display_policy=DisplayPolicy.CLOSE))
    ln.advance(4.0)
    out = ln.feed(DeviceStatus(Device.DISPLAY, False, "fee_display: no answer"))
    assert "etc_closed" in alarms(out)
    assert ln.sent(ln.b2()) == ["C2"]


def test_a_journal_that_cannot_write_closes_etc_and_no_c6_goes_out(lane):
    lane.feed(DeviceStatus(Device.JOURNAL, False, "disk full"))
    out = lane.b2() + lane.b3() + lane.b4()
    assert "C6" not in lane.sent(out)
    lane.feed(DeviceStatus(Device.JOURNAL, True))
    assert "C6" in lane.sent(lane.pay(obu_id=b"\x01\x02\x03\x04"))


def test_a_missing_fee_table_closes_etc(lane):
    out = lane.feed(DeviceStatus(Device.FEES, False, "no usable fee table: file not found"))
    assert "etc_closed" in alarms(out)
    assert lane.sent(lane.b2()) == ["C2"]


def test_etc_stays_closed_until_every_cause_is_gone(lane):
    lane.feed(LinkLost("silent"))
    lane.feed(DeviceStatus(Device.IO, False, "bus down"))
    out = lane.feed(LinkUp())
    assert "etc_closed" not in alarms(out, ClearAlarm)
    out = lane.feed(DeviceStatus(Device.IO, True))
    assert "etc_closed" in alarms(out, ClearAlarm)


def test_a_c6_that_could_not_be_sent_ends_the_charge_as_unknown_never_as_unpaid(lane):
    lane.b2(), lane.b3(), lane.b4()
    out = lane.feed(SendFailed("C6", "rsu: write buffer full"))
    assert any(type(a).__name__ == "JournalUnknown" for a in out)
    assert "rsu_send_failed" in alarms(out)
    out = lane.b2()  # seen again: neither charged again nor waved through
    assert lane.sent(out) == ["C2"] and lane.barrier(out) == []


def test_a_send_that_fails_between_transactions_only_raises_an_alarm(lane):
    out = lane.feed(SendFailed("C1", "rsu: not connected"))
    assert alarms(out) == ["rsu_send_failed"]
    assert lane.sent(lane.pay()) == ["C1", "C1", "C6", "C1"]


def test_an_interlock_fault_raises_an_alarm_that_says_why_the_arm_stays_up_and_clears(lane):
    out = lane.loop(None)  # the loop input reads unknown
    out += lane.advance(0.1)
    raised = [a for a in out if isinstance(a, RaiseAlarm) and a.code == "interlock_fault"]
    assert raised and "safety_loop" in raised[0].detail and "not lowered" in raised[0].detail
    lane.loop(False)
    out = lane.advance(4.0)
    assert "interlock_fault" in alarms(out, ClearAlarm)


def lane_signal():
    from laned.drivers.lane_io import Signal
    return Signal.SAFETY_LOOP


def test_an_intent_written_after_its_transaction_ended_is_closed_as_not_charged():
    """The link dropped while the intent was being committed: no C6 ever went out for it,
    so the journal must not keep it open as a charge that may have happened."""
    ln = Lane(auto_journal=False)
    ln.advance(4.0)
    ln.b2(), ln.b3()
    out = ln.b4()
    intent = next(a for a in out if isinstance(a, JournalIntent))
    ln.feed(LinkLost("adapter removed"))
    out = ln.feed(IntentRecorded(intent.tx_id, 9))
    assert lane_sent(out) == []
    closed = [a for a in out if isinstance(a, JournalNotCharged)]
    assert closed and closed[0].seq == 9 and "before its C6" in closed[0].reason


def test_a_charge_the_journal_could_not_keep_is_written_again_when_the_journal_takes_writes():
    ln = Lane(auto_journal=False)
    ln.advance(4.0)
    ln.b2(), ln.b3()
    intent = next(a for a in ln.b4() if isinstance(a, JournalIntent))
    ln.feed(IntentRecorded(intent.tx_id, 3))
    charged = next(a for a in ln.b5() if isinstance(a, JournalCharged))
    out = ln.feed(ChargeRecordFailed(charged.tx_id, "disk full"))
    assert "journal_failed" in alarms(out) and ln.barrier(out) == []
    ln.feed(DeviceStatus(Device.JOURNAL, False, "disk full"))
    out = ln.feed(DeviceStatus(Device.JOURNAL, True))
    again = [a for a in out if isinstance(a, JournalCharged)]
    assert again == [charged]  # the same result, for the same seq
    out = ln.feed(ChargeRecorded(charged.tx_id))
    assert ln.barrier(out) == [] and ln.machine.counters["charge_recorded_late"] == 1
    assert [a for a in ln.feed(DeviceStatus(Device.JOURNAL, True)) if isinstance(a, JournalCharged)] == []


def lane_sent(actions):
    return [a.message.type_name for a in actions if type(a).__name__ == "Send"]
