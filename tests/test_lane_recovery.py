"""An OBU whose charge is unknown (laned crashed, or the link dropped, between C6 and B5)
comes back: on network2019 the lane asks the OBU for its last purchase (C8) before it
decides — the re-fetched TAC settles the charge, anything else leaves it unknown. Never a
second C6, never a free pass."""

from __future__ import annotations

import datetime as dt

import pytest

from laned.lane.barrier import BarrierCommand
from laned.lane.machine import ChargeRecorded, FrameIn, JournalEvent, JournalResolved, Paid
from tests.lane_harness import Lane

OBU = b"\xa1\xfe\x33\xff"


def lane_with_unknown(profile: str) -> tuple[Lane, Paid]:
    lane = Lane(profile=profile)
    lane.advance(4.0)
    # The charge of seq 7 was left unknown by the crash; its C6 carried this purchase time.
    unknown = Paid(OBU, None, lane.now - 20, 7, settled=False, plate="鲁A12345",
                   purchase_time=(lane.wall.replace(microsecond=0)))
    lane.machine.paid.add(unknown)
    return lane, unknown


def test_on_network2019_an_unknown_charge_is_settled_by_the_re_fetched_tac_and_the_vehicle_let_out():
    lane, unknown = lane_with_unknown("network2019")
    out = lane.b2()
    assert lane.sent(out) == ["C8"] and lane.machine.counters["recovery_refetch"] == 1
    out = lane.b5()  # the OBU's last purchase: the one this lane's C6 asked for
    resolved = [a for a in out if isinstance(a, JournalResolved)]
    assert resolved and resolved[0].seq == 7 and resolved[0].result["tac"] == b"\xfe\x12\xff\x34"
    assert lane.barrier(out) == []  # not before the settlement is durable
    out = lane.feed(ChargeRecorded(resolved[0].tx_id))
    assert lane.barrier(out) == [BarrierCommand.RAISE]
    assert lane.machine.counters["recovered_charged"] == 1 and not lane.machine.c6_sent
    again = lane.b2()  # and now it counts as paid for sure
    assert lane.sent(again) == ["C2"] and lane.machine.counters["recovery_refetch"] == 1


def test_a_re_fetched_purchase_that_is_not_this_lanes_leaves_the_charge_unknown():
    """The C6 never reached the card: its last purchase is an older one, elsewhere."""
    lane, _ = lane_with_unknown("network2019")
    lane.b2()
    msg = lane.msgs.ChargeResult(obu_id=OBU, error_code=0, trans_time=dt.datetime(2025, 1, 1, 8, 0, 0),
                                 psam_trans_serial=2, icc_pay_serial=1, trans_type=9, card_balance=1,
                                 tac=b"\x00\x00\x00\x01", wr_file_time=1, key_type=0, ef04_write_status=0)
    out = lane.feed(FrameIn(msg, 0x58))
    assert lane.sent(out) == ["C2"] and lane.barrier(out) == []
    assert not [a for a in out if isinstance(a, JournalResolved)]
    events = [a for a in out if isinstance(a, JournalEvent)]
    assert events and events[0].kind == "outcome_unknown" and "not this lane's" in events[0].record["detail"]


@pytest.mark.parametrize("how", ["error", "silence"])
def test_an_obu_that_cannot_say_leaves_the_charge_unknown_and_is_asked_only_once(how):
    lane, _ = lane_with_unknown("network2019")
    lane.b2()
    out = lane.b5(error=0x36) if how == "error" else lane.advance(1.2)
    assert lane.barrier(out) == [] and lane.machine.counters["recovery_refetch_failed"] == 1
    assert "C6" not in lane.sent(out)
    out = lane.b2()  # back again: no second C8 for the same unknown charge, no C6, no pass
    assert lane.sent(out) == ["C2"] and lane.barrier(out) == []


def test_the_national_profile_has_no_c8_the_unknown_charge_stays_for_reconciliation():
    lane, _ = lane_with_unknown("national")
    out = lane.b2()
    assert lane.sent(out) == ["C2"] and lane.barrier(out) == []
    assert lane.machine.counters["recovery_refetch"] == 0
