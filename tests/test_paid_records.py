"""The re-detection memory: who paid within the window, found by OBU id or by card."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from laned.lane.paid import Paid, PaidRecords

OBUS = [bytes([i]) * 4 for i in range(4)]
CARDS = [None, "3701-0000000000000001", "3701-0000000000000002"]


def test_an_obu_that_paid_is_found_by_its_id_and_by_its_card_until_the_window_passes():
    paid = PaidRecords()
    paid.add(Paid(OBUS[0], CARDS[1], at=10.0, seq=1))
    assert paid.find(OBUS[0], None) and paid.find(OBUS[3], CARDS[1])
    assert paid.find(OBUS[1], CARDS[2]) == []
    paid.expire(310.0, 300.0)
    assert len(paid) == 1  # exactly at the edge of the window: still remembered
    paid.expire(310.1, 300.0)
    assert paid.find(OBUS[0], CARDS[1]) == [] and len(paid) == 0


def test_records_from_the_journal_are_taken_in_time_order():
    paid = PaidRecords([Paid(OBUS[1], None, at=50.0, seq=2), Paid(OBUS[0], None, at=5.0, seq=1)])
    paid.expire(100.0, 60.0)
    assert [p.seq for p in paid] == [2]


@given(st.lists(st.tuples(st.sampled_from(OBUS), st.sampled_from(CARDS), st.floats(0, 5), st.booleans()),
                max_size=40),
       st.sampled_from(OBUS), st.sampled_from(CARDS), st.floats(1, 20))
def test_the_index_answers_like_a_scan_of_every_payment(steps, obu, card, window):
    paid, scan, now = PaidRecords(), [], 0.0
    for i, (o, c, dt, settled) in enumerate(steps):
        now += dt
        p = Paid(o, c, now, i, settled)
        paid.add(p)
        scan.append(p)
        paid.expire(now, window)
        scan = [q for q in scan if now - q.at <= window]
        expected = [q for q in scan if q.obu_id == obu or (card is not None and q.card_key == card)]
        assert sorted(q.seq for q in paid.find(obu, card)) == sorted(q.seq for q in expected)
