"""Scenarios of the lane state machine with a fake clock: what a toll operator expects."""

from __future__ import annotations

import datetime as dt

import pytest

from laned.lane.signals import Light
from laned.lane.barrier import BarrierCommand, BarrierPosition
from laned.lane.machine import (
    RaiseAlarm,     Direction, FrameLost, IntentFailed, JournalIntent, LaneSettings, LinkLost, MissingEntryPolicy, Send, SetLight,
    Show, Tick,
)
from laned.lane.outcomes import Reason
from laned.protocol.profiles.common import STOP_RESEND
from tests.lane_harness import Lane, Listed, card_file, station_record

OBU = b"\xa1\xfe\x33\xff"


@pytest.fixture
def lane() -> Lane:
    ln = Lane()
    ln.advance(4.0)  # inputs sampled clear long enough to release the start-up latch
    return ln


OTHER = b"\x01\x02\x03\x04"


def pay_other_car(lane: Lane, obu_id: bytes = OTHER, plate: str = "京B99999", number: str = "2301000099999999"):
    """Another vehicle (its own OBU, card and plate) pays."""
    card = card_file(plate=plate, number=number)
    return (lane.b2(obu_id=obu_id) + lane.b3(obu_id=obu_id, plate=plate) + lane.b4(obu_id=obu_id, card=card)
            + lane.b5(obu_id=obu_id))


def shown(actions) -> list[tuple[str, str]]:
    return [(a.content.line1, a.content.line2) for a in actions if isinstance(a, Show)]


def test_a_vehicle_that_pays_gets_the_barrier_raised_after_the_charge_is_journalled(lane):
    out = lane.b2()
    assert lane.sent(out) == ["C1"]
    assert lane.sent(lane.b3()) == ["C1"]
    out = lane.b4()
    kinds = [type(a).__name__ for a in out]
    assert kinds.index("JournalIntent") < kinds.index("Send")  # intent durable before C6
    assert lane.sent(out) == ["C6"]
    c6 = [a for a in out if type(a).__name__ == "Send"][0]
    assert c6.message.consume_money == 3500 and c6.reply_to == 0x48
    out = lane.b5()
    kinds = [type(a).__name__ for a in out]
    assert kinds.index("JournalCharged") < kinds.index("MoveBarrier")  # journalled before the barrier rises
    assert lane.barrier(out) == [BarrierCommand.RAISE]
    assert ("欢迎通行", "一路顺风") in shown(out)
    assert SetLight(Light.GREEN) in out
    assert lane.machine.counters[Reason.CHARGED] == 1


def test_the_barrier_lowers_only_after_the_paid_vehicle_left_the_safety_loop_for_the_hold_off(lane):
    out = lane.pay() + lane.advance(2.0)
    assert BarrierCommand.LOWER not in lane.barrier(out)  # paid, not yet arrived at the arm
    lane.loop(True)
    out = lane.advance(3.0)
    assert BarrierCommand.LOWER not in lane.barrier(out)  # still on the loop
    lane.loop(False)
    out = lane.advance(0.5)
    assert BarrierCommand.LOWER not in lane.barrier(out)  # inside the hold-off
    out = lane.advance(1.0)
    assert lane.barrier(out) == [BarrierCommand.LOWER]


def test_a_vehicle_with_low_balance_is_refused_and_the_barrier_stays_down(lane):
    out = lane.b2() + lane.b3() + lane.b4(balance=3499)
    assert lane.sent(out) == ["C1", "C1", "C2"]
    assert ("余额不足", "请走人工车道") in shown(out)
    assert BarrierCommand.RAISE not in lane.barrier(out)
    assert lane.machine.counters[Reason.INSUFFICIENT_BALANCE] == 1
    assert lane.journal[-1][0] == "JournalRefusal"


def test_a_balance_exactly_equal_to_the_fee_is_enough(lane):
    out = lane.pay(balance=3500)
    assert lane.machine.counters[Reason.CHARGED] == 1
    assert BarrierCommand.RAISE in lane.barrier(out)


@pytest.mark.parametrize("flags,reason,text", [
    (bytes([0x80, 0]), Reason.NO_CARD, "无卡"),
    (bytes([0x02, 0]), Reason.OBU_TAMPERED, "标签拆卸"),
    (bytes([0x04, 0]), Reason.OBU_LOCKED, "标签锁定"),
    (bytes([0x08, 0]), Reason.CARD_ERROR, "卡片异常"),
])
def test_an_obu_with_a_bad_status_is_refused_at_b2(lane, flags, reason, text):
    out = lane.b2(status=flags)
    assert lane.sent(out) == ["C2"]
    assert shown(out)[0][0] == text
    assert lane.machine.counters[reason] == 1


def test_an_expired_obu_and_a_not_yet_valid_obu_are_refused(lane):
    assert lane.sent(lane.b2(expiry=dt.date(2026, 11, 21))) == ["C2"]
    assert lane.sent(lane.b2(start=dt.date(2026, 11, 23))) == ["C2"]
    assert lane.machine.counters[Reason.OBU_EXPIRED] == 1
    assert lane.machine.counters[Reason.OBU_NOT_YET_VALID] == 1


def test_an_obu_on_the_status_list_is_refused_with_tag_invalid():
    ln = Lane(status=Listed(obus={OBU}))
    out = ln.b2()
    assert ln.sent(out) == ["C2"] and shown(out)[0] == ("标签失效", "请走人工车道")


def test_a_card_on_the_status_list_is_refused_at_b4():
    ln = Lane(status=Listed(cards={"37012301000012345678"}))
    out = ln.b2() + ln.b3() + ln.b4()
    assert ln.sent(out) == ["C1", "C1", "C2"]
    assert ln.machine.counters[Reason.CARD_LISTED] == 1


def test_an_expired_card_is_refused(lane):
    out = lane.b2() + lane.b3() + lane.b4(card=card_file(expiry=dt.date(2025, 1, 1)))
    assert lane.sent(out)[-1] == "C2" and ("卡片过期", "请走人工车道") in shown(out)


def test_plate_and_class_must_agree_with_the_card(lane):
    lane.b2(), lane.b3(plate="鲁B99999")
    lane.b4()
    assert lane.machine.counters[Reason.PLATE_MISMATCH] == 1
    lane.b2(), lane.b3(vclass=2)
    lane.b4()
    assert lane.machine.counters[Reason.CLASS_MISMATCH] == 1


def test_a_missing_entry_record_charges_the_maximum_fee_by_policy(lane):
    out = lane.b2() + lane.b3() + lane.b4(station=station_record(empty=True))
    c6 = [a for a in out if type(a).__name__ == "Send"][-1]
    assert c6.message.consume_money == 12000


def test_a_missing_entry_record_is_refused_to_the_manual_lane_by_policy():
    ln = Lane(settings=LaneSettings(missing_entry_policy=MissingEntryPolicy.REFUSE))
    out = ln.b2() + ln.b3() + ln.b4(station=station_record(empty=True))
    assert ln.sent(out)[-1] == "C2" and ln.machine.counters[Reason.NO_ENTRY_RECORD] == 1


def test_credit_cards_are_refused_when_the_policy_says_so():
    ln = Lane(settings=LaneSettings(allow_credit_cards=False))
    out = ln.b2() + ln.b3() + ln.b4(card=card_file(card_type=0x17))
    assert ln.sent(out)[-1] == "C2" and ln.machine.counters[Reason.CREDIT_CARD_REFUSED] == 1


def test_a_credit_card_with_no_balance_is_charged_when_allowed(lane):
    lane.pay(card=card_file(card_type=0x17), balance=0)
    assert lane.machine.counters[Reason.CHARGED] == 1


def test_an_obu_seen_again_after_paying_is_let_through_on_its_record_not_charged_again(lane):
    lane.pay()
    out = lane.b2()
    assert lane.sent(out) == ["C2"]
    out += lane.b3() + lane.b4()
    assert "C6" not in lane.sent(out)
    assert len(lane.machine.c6_sent) == 1
    # Still on its way to the arm: its payment waits for it. The first report is kept …
    assert lane.machine.credits == 1
    assert [j[1].kind for j in lane.journal if j[0] == "JournalEvent"] == ["paid_on_record"]
    lane.b2()  # … the RSU's later re-reports of the waiting OBU add nothing
    assert [j[1].kind for j in lane.journal if j[0] == "JournalEvent"] == ["paid_on_record"]


def test_a_paid_vehicle_whose_payment_expired_is_let_out_on_its_record_when_seen_again(lane):
    lane.pay()
    lane.advance(62.0)  # it did not reach the arm in time: the arm went down
    assert lane.machine.credits == 0
    out = lane.b2()
    assert lane.sent(out) == ["C2"] and lane.barrier(out) == [BarrierCommand.RAISE]
    assert len(lane.machine.c6_sent) == 1 and lane.machine.credits == 1
    assert any(j[0] == "JournalEvent" and j[1].kind == "paid_on_record" for j in lane.journal)


def test_a_card_moved_to_another_obu_of_the_same_vehicle_after_paying_is_not_charged_again(lane):
    lane.pay()
    other = b"\x01\x02\x03\x04"
    out = lane.b2(obu_id=other) + lane.b3(obu_id=other) + lane.b4(obu_id=other)  # same plate: same vehicle
    assert "C6" not in lane.sent(out)
    assert lane.machine.counters["card_shared"] == 0


def test_a_paid_card_in_another_vehicle_is_a_new_transaction_with_a_card_sharing_alarm(lane):
    """One payment must not let two vehicles out: the same card in another OBU with
    another plate, 6 s after it paid, is charged as the new vehicle it is."""
    lane.pay(card=card_file(plate=""))  # a card without a plate in its 0015 file
    lane.advance(6.0)
    other = b"\x01\x02\x03\x04"
    out = lane.b2(obu_id=other) + lane.b3(obu_id=other, plate="京B99999") + lane.b4(obu_id=other, card=card_file(plate=""))
    assert lane.sent(out)[-1] == "C6"
    alarm = [a for a in out if isinstance(a, RaiseAlarm) and a.code == "card_shared"]
    assert alarm and "a1fe33ff" in alarm[0].detail and "京B*****" in alarm[0].detail
    assert "2301000012345678" not in alarm[0].detail  # card numbers are masked


def test_a_paid_card_in_another_vehicle_whose_plate_it_does_not_carry_is_refused_not_passed(lane):
    lane.pay()
    other = b"\x01\x02\x03\x04"
    out = lane.b2(obu_id=other) + lane.b3(obu_id=other, plate="京B99999") + lane.b4(obu_id=other)
    assert lane.sent(out)[-1] == "C2" and lane.barrier(out) == []
    assert lane.machine.counters[Reason.PLATE_MISMATCH] == 1 and lane.machine.counters["card_shared"] == 1


def test_a_lost_b5_on_the_national_profile_is_recorded_unknown_and_the_barrier_stays_down(lane):
    lane.b2(), lane.b3(), lane.b4()
    out = lane.advance(1.5)
    unknown = [j for j in lane.journal if j[0] == "JournalUnknown"]
    assert len(unknown) == 1
    assert BarrierCommand.RAISE not in lane.barrier(out)
    assert ("交易异常", "请走人工车道") in shown(out)
    # The RSU reports it again: it may have paid, so no second C6.
    out = lane.b2() + lane.b3() + lane.b4()
    assert "C6" not in lane.sent(out)


def test_a_lost_b5_on_network2019_re_fetches_the_tac_and_completes_the_charge():
    ln = Lane(profile="network2019")
    ln.advance(4.0)
    ln.b2(), ln.b3(), ln.b4()
    out = ln.advance(1.1)
    assert "C8" in ln.sent(out)
    out = ln.b5()
    assert BarrierCommand.RAISE in ln.barrier(out)
    assert ln.machine.counters[Reason.CHARGED] == 1


def test_a_b5_error_before_the_debit_is_a_failed_charge_not_an_unknown(lane):
    lane.b2(), lane.b3(), lane.b4()
    out = lane.b5(error=0x17)
    assert lane.sent(out) == ["C2"]
    assert ("交易失败", "请走人工车道") in shown(out)
    assert lane.machine.counters[Reason.OUTCOME_UNKNOWN] == 0


def test_a_b5_error_after_a_possible_debit_is_unknown_for_reconciliation(lane):
    lane.b2(), lane.b3(), lane.b4()
    lane.b5(error=0x19)
    assert lane.machine.counters[Reason.OUTCOME_UNKNOWN] == 1


def test_no_c6_is_sent_when_the_intent_cannot_be_journalled():
    ln = Lane(auto_journal=False)
    ln.advance(4.0)
    ln.b2(), ln.b3()
    out = ln.b4()
    intent = [a for a in out if isinstance(a, JournalIntent)][0]
    out = ln.feed(IntentFailed(intent.tx_id, "disk full"))
    assert "C6" not in ln.sent(out) and ln.sent(out) == ["C2"]
    assert ("ETC暂停使用", "请走人工车道") in shown(out)


def test_losing_the_rsu_link_after_c6_records_the_outcome_as_unknown(lane):
    lane.b2(), lane.b3(), lane.b4()
    lane.feed(LinkLost())
    assert lane.machine.counters[Reason.OUTCOME_UNKNOWN] == 1


def test_a_follow_car_under_the_open_barrier_is_never_trapped_and_is_reported(lane):
    lane.pay()
    lane.loop(True), lane.advance(1.0), lane.loop(False)
    out = lane.advance(0.3)
    out += lane.loop(True)  # the second vehicle, which did not pay, reaches the loop
    assert ("跟车违章", "请停车缴费") in shown(out)
    assert any(type(a).__name__ == "RaiseAlarm" for a in out)
    out = lane.advance(5.0)
    assert BarrierCommand.LOWER not in lane.barrier(out)
    lane.loop(False)
    out = lane.advance(2.0)
    assert BarrierCommand.LOWER in lane.barrier(out)


def test_a_tailgater_does_not_use_up_the_payment_of_the_car_behind_it(lane):
    lane.pay()
    lane.loop(True), lane.advance(1.0), lane.loop(False)
    lane.advance(0.2)
    lane.loop(True)  # the tailgater, unpaid
    lane.advance(0.5)
    pay_other_car(lane)  # the next car pays while the tailgater is on the loop
    lane.advance(0.5)
    lane.loop(False)  # the tailgater leaves
    out = lane.advance(3.0)
    assert BarrierCommand.LOWER not in lane.barrier(out)  # still open for the car that paid
    assert lane.machine.credits == 1
    lane.loop(True), lane.advance(1.0), lane.loop(False)  # the paying car passes
    out = lane.advance(2.0)
    assert BarrierCommand.LOWER in lane.barrier(out)


def test_a_paid_vehicle_that_never_reaches_the_loop_stops_holding_the_arm_open(lane):
    lane.pay()  # it paid, then turned back instead of driving through
    out = lane.advance(59.0)
    assert BarrierCommand.LOWER not in lane.barrier(out)
    out = lane.advance(3.0)
    assert BarrierCommand.LOWER in lane.barrier(out)
    assert lane.machine.credits == 0 and lane.machine.counters["passage_timeout"] == 1
    assert any(j[0] == "JournalEvent" and j[1].kind == "passage_timeout" for j in lane.journal)


def test_the_passage_timeout_waits_while_the_loop_is_occupied(lane):
    lane.pay()
    lane.loop(True)  # a long vehicle, or a slow one, still on the loop
    out = lane.advance(70.0)
    assert lane.machine.credits == 1 and BarrierCommand.LOWER not in lane.barrier(out)
    lane.loop(False)
    out = lane.advance(2.0)
    assert lane.machine.counters["passage_timeout"] == 0
    assert BarrierCommand.LOWER in lane.barrier(out)


def test_a_stale_safety_loop_keeps_the_barrier_up():
    ln = Lane()
    ln.advance(4.0)
    ln.pay()
    ln.loop(True), ln.advance(1.0), ln.loop(False)
    del ln.loop_state[ln.machine.s.interlock.presence[0]]  # the input stops updating
    out = []
    for _ in range(40):
        ln.now += 0.1
        out += ln.feed(Tick())
    assert BarrierCommand.LOWER not in ln.barrier(out)
    assert ln.machine.barrier.fault is not None


def test_a_lowering_arm_reverses_when_the_loop_sees_a_vehicle(lane):
    lane.pay()
    lane.loop(True), lane.advance(1.0), lane.loop(False)
    out = lane.advance(1.5)
    assert lane.barrier(out) == [BarrierCommand.LOWER]
    assert lane.machine.barrier.position is BarrierPosition.LOWERING
    out = lane.loop(True)
    assert BarrierCommand.RAISE in lane.barrier(out)


def test_an_unknown_input_counts_as_occupied(lane):
    lane.pay()
    lane.loop(True), lane.advance(1.0)
    lane.loop(None)
    out = lane.advance(5.0)
    assert BarrierCommand.LOWER not in lane.barrier(out)


def test_an_entry_lane_writes_the_entry_record_instead_of_charging():
    ln = Lane(settings=LaneSettings(direction=Direction.ENTRY))
    ln.advance(4.0)
    out = ln.b2() + ln.b3() + ln.b4(station=station_record(empty=True), balance=0)
    c6 = [a for a in out if type(a).__name__ == "Send"][-1]
    assert c6.message.consume_money == 0 and c6.message.station[:2] == bytes.fromhex("3701")
    out = ln.b5()
    assert ln.machine.counters[Reason.ENTRY_WRITTEN] == 1 and BarrierCommand.RAISE in ln.barrier(out)


def test_heartbeats_are_not_answered(lane):
    from laned.protocol.profiles import national
    from laned.lane.machine import FrameIn
    out = lane.feed(FrameIn(national.ObuInfo(obu_id=bytes(4), error_code=0x80), 0x28))
    assert lane.sent(out) == []


def test_the_rsu_is_initialised_on_connect_and_told_to_search_after_b0(lane):
    from laned.lane.machine import FrameIn, LinkUp
    from laned.protocol.profiles import national
    out = lane.feed(LinkUp())
    assert lane.sent(out) == ["C0"] and out[0].message.lane_mode == 4 and out[0].reply_to is None
    b0 = national.RsuInfo(rsu_status=0, psam_num=1, rsu_terminal_id1=bytes(6), rsu_terminal_id2=bytes(6),
                          rsu_alg_id=0, rsu_manu_id=0, rsu_id=bytes(3), rsu_version=bytes(2), reserved=bytes(5))
    out = lane.feed(FrameIn(b0, 0x98))
    assert lane.sent(out) == ["C1"] and out[0].reply_to == 0x98


def test_an_rsu_reporting_a_psam_fault_raises_an_alarm(lane):
    from laned.lane.machine import FrameIn, RaiseAlarm
    from laned.protocol.profiles import national
    out = lane.feed(FrameIn(national.RsuInfo(rsu_status=1), 0x08))
    assert lane.sent(out) == [] and any(isinstance(a, RaiseAlarm) and "PSAM reset failed" in a.detail for a in out)


def test_an_obu_reported_again_while_its_charge_is_being_journalled_is_not_charged_again():
    from laned.lane.machine import ChargeRecorded, JournalCharged
    ln = Lane(profile="network2019", auto_journal=False)
    ln.advance(4.0)
    ln.b2(), ln.b3()
    intent = [a for a in ln.b4() if isinstance(a, JournalIntent)][0]
    from laned.lane.machine import IntentRecorded
    ln.feed(IntentRecorded(intent.tx_id, 1))
    charged = [a for a in ln.b5() if isinstance(a, JournalCharged)][0]
    out = ln.b2() + ln.b3() + ln.b4()  # the RSU reports it again before the journal confirmed
    assert "C6" not in ln.sent(out) and BarrierCommand.RAISE not in ln.barrier(out)
    out = ln.feed(ChargeRecorded(charged.tx_id))  # the confirmation still lets it through
    assert BarrierCommand.RAISE in ln.barrier(out) and ln.machine.counters[Reason.CHARGED] == 1


def test_an_obu_reported_again_after_an_unknown_outcome_is_not_waved_through_nor_charged_again(lane):
    lane.b2(), lane.b3(), lane.b4()
    lane.b5(error=0x19)  # the card may or may not have been debited
    out = lane.b2()
    assert lane.sent(out) == ["C2"]
    assert BarrierCommand.RAISE not in lane.barrier(out)
    assert ("交易异常", "请走人工车道") in shown(out)
    assert lane.machine.counters[Reason.PAID_ON_RECORD] == 0


def test_a_damaged_b3_is_asked_for_again_and_the_vehicle_still_pays_once(lane):
    lane.b2()
    lane.feed(FrameLost("bcc"))
    assert lane.sent(lane.advance(0.05)) == []  # a moment's grace: a good frame may follow
    out = lane.advance(0.1)
    resend = [a for a in out if isinstance(a, Send)]
    assert [(a.message.type_name, a.message.stop_type) for a in resend] == [("C2", STOP_RESEND)]
    assert lane.machine.counters["resend_requested"] == 1
    out = lane.b3() + lane.b4() + lane.b5()
    assert lane.sent(out) == ["C1", "C6", "C1"]
    assert lane.machine.counters[Reason.CHARGED] == 1


def test_noise_right_before_a_good_frame_asks_for_nothing(lane):
    lane.b2()
    lane.feed(FrameLost("short"))
    out = lane.b3() + lane.advance(0.5)
    assert lane.sent(out) == ["C1"]
    assert lane.machine.counters["resend_requested"] == 0


def test_a_damaged_b5_is_asked_for_again_so_the_outcome_is_known_not_unknown(lane):
    lane.b2(), lane.b3(), lane.b4()
    lane.feed(FrameLost("bcc"))
    out = lane.advance(0.15)
    assert [(a.message.type_name, a.message.stop_type) for a in out if isinstance(a, Send)] == [("C2", STOP_RESEND)]
    out = lane.b5()
    assert BarrierCommand.RAISE in lane.barrier(out)
    assert lane.machine.counters[Reason.CHARGED] == 1
    assert lane.machine.counters[Reason.OUTCOME_UNKNOWN] == 0


def test_a_line_that_keeps_damaging_frames_gets_two_resend_requests_per_transaction(lane):
    lane.b2()
    for _ in range(4):
        lane.feed(FrameLost("bcc"))
        lane.advance(0.2)
    assert lane.machine.counters["resend_requested"] == 2


def test_a_damaged_frame_between_transactions_asks_for_nothing(lane):
    lane.feed(FrameLost("crc"))
    assert lane.sent(lane.advance(0.5)) == []
