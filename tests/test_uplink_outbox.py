"""The publishing window over the journal's outbox: in order, windowed, live before backlog,
everything unacked again after a reconnect, and nothing delivered without the centre's ack.

The scenarios drive the window the way the uplink does, against a real journal (SQLite in
tmp_path) and a broker that only records what was published.
"""

from __future__ import annotations

import datetime as dt

import pytest

from laned.journal import B5Result, Journal, ReconcileOutcome, TransactionIntent, TxKind, TxState
from laned.lane.events import ClearAlarm, RaiseAlarm
from laned.uplink.reporting import backlog_alarms
from laned.uplink.outbox import (
    BACKLOG_HYSTERESIS_PCT, OutboxWindow, backlog_level, reconcile_window, transaction_window,
)

LANE = "G0001-0201-03"
T0 = dt.datetime(2026, 11, 22, 10, 0, 0, tzinfo=dt.UTC)
TAC = bytes.fromhex("fe12ff34")
ACK_TIMEOUT_S = 30.0


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


class Uplink:
    """The driver's part, without MQTT: scan, publish (recorded), hand acks to the journal."""

    def __init__(self, journal: Journal, size: int) -> None:
        self.journal = journal
        self.window = transaction_window(size)
        self.published: list[tuple[int, str]] = []  # (seq, state) in publication order
        self.most_in_flight = 0

    def publish(self, now: float = 0.0) -> list[int]:
        rows = self.journal.outbox_after(self.window.next_scan_after(), self.window.room())
        out = self.window.take(rows, now)
        self.published += [(r.seq, str(r.state)) for r in out]
        self.most_in_flight = max(self.most_in_flight, len(self.window.in_flight))
        return [r.seq for r in out]

    def ack(self, first: int, last: int, now: float = 0.0) -> int:
        sent = self.window.acked(first, last)
        return self.journal.outbox_ack(first, last, at(now), sent=sent)

    def drain(self) -> None:
        """The centre acks every copy in flight, one by one, and the lane publishes on, until nothing is left."""
        while self.window.in_flight or self.publish():
            for seq in self.window.in_flight:
                self.ack(seq, seq)


@pytest.fixture
def journal(tmp_path):
    with Journal.open(tmp_path / "journal.db", LANE, now=T0) as j:
        yield j


def events(journal: Journal, n: int) -> list[int]:
    return [journal.record_event(TxKind.FOLLOW_CAR, at(i)).seq for i in range(n)]


def test_a_backlog_drains_in_seq_order_with_at_most_the_window_in_flight(journal):
    rows = events(journal, 10)
    up = Uplink(journal, size=4)
    up.window.connected()
    assert up.publish() == rows[:4]
    assert up.publish() == [] and up.window.room() == 0  # the window is full until an ack
    up.drain()
    assert [seq for seq, _ in up.published] == rows
    assert up.most_in_flight == 4
    assert journal.outbox_backlog().count == 0


def test_a_live_row_jumps_the_backlog(journal):
    rows = events(journal, 10)
    up = Uplink(journal, size=3)
    up.window.connected()
    assert up.publish() == rows[:3]
    new = journal.record_event(TxKind.PAID_ON_RECORD, at(60))
    up.window.live(new)
    up.ack(rows[0], rows[0])
    assert up.publish() == [new.seq]
    up.ack(rows[1], rows[2])
    assert up.publish() == rows[3:5]  # then the backlog carries on where it was
    up.drain()
    assert sorted(seq for seq, _ in up.published) == [*rows, new.seq]  # each once


def test_after_a_reconnect_everything_unacked_is_published_again_from_the_oldest(journal):
    rows = events(journal, 6)
    up = Uplink(journal, size=4)
    up.window.connected()
    up.publish()
    up.ack(rows[1], rows[1])
    up.window.disconnected()
    assert up.window.room() == 0 and up.publish() == []
    up.window.connected()
    assert up.publish() == [rows[0], rows[2], rows[3], rows[4]]


def test_an_ack_by_range_frees_the_window_and_says_what_was_sent(journal):
    rows = events(journal, 5)
    up = Uplink(journal, size=5)
    up.window.connected()
    up.publish()
    assert up.window.room() == 0
    assert up.window.acked(rows[0], rows[-1]) == {seq: "event" for seq in rows}
    assert up.window.room() == 5 and up.window.in_flight == []


def test_an_ack_for_a_seq_never_sent_is_harmless(journal):
    rows = events(journal, 3)
    up = Uplink(journal, size=2)
    up.window.connected()
    up.publish()
    assert up.ack(rows[2], rows[2] + 100) == 0  # rows[2] is in the journal but was not published yet
    assert up.window.in_flight == rows[:2]
    assert journal.outbox_backlog().count == 3


def test_an_overdue_row_is_published_again_and_counted(journal):
    rows = events(journal, 2)
    window = transaction_window(4)
    window.connected()
    window.take(journal.outbox_after(0, window.room()), 0.0)
    window.acked(rows[1], rows[1])
    assert window.overdue(ACK_TIMEOUT_S - 1, ACK_TIMEOUT_S) == []
    assert [r.seq for r in window.overdue(ACK_TIMEOUT_S, ACK_TIMEOUT_S)] == [rows[0]]
    assert window.overdue(ACK_TIMEOUT_S + 1, ACK_TIMEOUT_S) == []  # its clock restarted
    assert (window.retransmissions, window.published) == (1, 3)


def test_nothing_is_marked_delivered_without_an_ack(journal):
    rows = events(journal, 5)
    up = Uplink(journal, size=10)
    for _ in range(3):  # published, lost with the connection, published again: never acked
        up.window.connected()
        assert up.publish() == rows
        up.window.overdue(1e9, ACK_TIMEOUT_S)
        up.window.disconnected()
    assert journal.outbox_backlog().count == 5
    assert all(journal.get(seq).acked_unix is None for seq in rows)


def test_an_intent_goes_up_once_it_resolves_even_behind_the_cursor(journal):
    first = journal.record_event(TxKind.FOLLOW_CAR, at(0)).seq
    charge = journal.record_intent(TransactionIntent(obu_id=b"\x01\x02\x03\x04", amount=100,
                                                     purchase_time=dt.datetime(2026, 11, 22, 10)), at(1)).seq
    last = journal.record_event(TxKind.FOLLOW_CAR, at(2)).seq
    up = Uplink(journal, size=10)
    up.window.connected()
    assert up.publish() == [first, last]
    up.window.live(journal.complete_charge(charge, B5Result(tac=TAC), at(3)))
    assert up.publish() == [charge]


def test_a_row_that_changed_in_flight_goes_up_again_after_the_ack_of_the_old_copy(journal):
    seq = journal.record_intent(TransactionIntent(obu_id=b"\x01\x02\x03\x04", amount=100,
                                                  purchase_time=dt.datetime(2026, 11, 22, 10)), at(0)).seq
    journal.mark_unknown(seq, "no B5", at(1))
    up = Uplink(journal, size=10)
    up.window.connected()
    assert up.publish() == [seq]
    up.window.live(journal.resolve_unknown(seq, B5Result(tac=TAC), at(2)))
    assert up.publish() == []  # the unknown copy's ack must not be taken for the charged one
    assert up.ack(seq, seq) == 0  # the centre stored the unknown copy: the charged row still waits
    assert up.publish() == [seq]
    assert up.ack(seq, seq) == 1
    assert up.published == [(seq, "unknown"), (seq, "charged")]
    assert journal.outbox_backlog().count == 0 and journal.get(seq).state is TxState.CHARGED


def test_an_ack_the_broker_queued_during_an_outage_does_not_mark_the_row_settled_since(journal):
    # The window remembers nothing of the connection before; the ack says which seqs the
    # centre holds as unknown, so the one for the unknown copy is not taken for the charged.
    seq = journal.record_intent(TransactionIntent(obu_id=b"\x01\x02\x03\x04", amount=100,
                                                  purchase_time=dt.datetime(2026, 11, 22, 10)), at(0)).seq
    journal.mark_unknown(seq, "no B5", at(1))
    up = Uplink(journal, size=10)
    up.window.connected()
    assert up.publish() == [seq]  # the unknown copy; the centre stores it, its ack waits at the broker
    up.window.disconnected()
    journal.resolve_unknown(seq, B5Result(tac=TAC), at(2))  # a C8 re-fetch while the link is down
    up.window.connected()
    assert up.publish() == [seq]  # the charged copy
    queued = up.window.acked(seq, seq, held={seq: "unknown"})  # the ack of the unknown copy arrives
    assert queued == {} and up.window.version_in_flight(seq) == "charged"  # still waiting for its own
    assert journal.outbox_backlog().count == 1
    assert [r.seq for r in up.window.overdue(ACK_TIMEOUT_S, ACK_TIMEOUT_S)] == [seq]  # lost? it goes again
    assert up.ack(seq, seq) == 1  # the centre's ack of the charged copy names no unknown seq
    assert journal.get(seq).state is TxState.CHARGED and journal.outbox_backlog().count == 0
    assert up.published == [(seq, "unknown"), (seq, "charged")]


def test_an_ack_naming_a_seq_as_unknown_frees_the_unknown_copy_in_flight_as_any_ack(journal):
    rows = events(journal, 2)
    seq = journal.record_intent(TransactionIntent(obu_id=b"\x01\x02\x03\x04", amount=100,
                                                  purchase_time=dt.datetime(2026, 11, 22, 10)), at(0)).seq
    journal.mark_unknown(seq, "no B5", at(1))
    up = Uplink(journal, size=10)
    up.window.connected()
    assert up.publish() == [*rows, seq]
    assert up.window.acked(rows[0], seq, held={seq: "unknown"}) == {rows[0]: "event", rows[1]: "event",
                                                                    seq: "unknown"}
    assert up.window.in_flight == []


def test_a_live_queue_that_overflows_leaves_the_rows_to_the_scan(journal):
    rows = events(journal, 6)
    window = OutboxWindow(2, key=lambda e: e.seq, position=lambda e: e.seq, version=lambda e: str(e.state),
                          live_limit=2)
    window.connected()
    window.take(journal.outbox_after(0, window.room()), 0.0)  # rows 1-2 in flight, cursor at 2
    for seq in rows[2:]:
        window.live(journal.get(seq))
    assert window.live_waiting == 2 and window.next_scan_after() == rows[2] - 1  # 3 and 4 dropped
    window.acked(rows[0], rows[1])
    published = [r.seq for r in window.take([], 0.0)]
    published += [r.seq for r in window.take(journal.outbox_after(window.next_scan_after(), 2), 0.0)]
    window.acked(rows[0], rows[-1])
    published += [r.seq for r in window.take(journal.outbox_after(window.next_scan_after(), 2), 0.0)]
    assert sorted(published) == rows[2:]


def test_the_reconcile_window_is_acked_by_the_transaction_seq(journal):
    seq = journal.record_intent(TransactionIntent(obu_id=b"\x01\x02\x03\x04", amount=100,
                                                  purchase_time=dt.datetime(2026, 11, 22, 10)), at(0)).seq
    row = journal.mark_unknown(seq, "no B5", at(1))
    record = journal.settle_from_centre(seq=seq, tx_uuid=row.uuid, outcome=ReconcileOutcome.NOT_CHARGED,
                                        answer_id="7e9a1c3b-5d2f-4e8a-9b0c-1d3e5f7a9b2c", b5=None, now=at(2))
    window = reconcile_window(8)
    window.connected()
    assert window.take(journal.reconcile_after(window.next_scan_after(), window.room()), 0.0) == [record]
    sent = window.acked(seq, seq)
    assert sent == {seq: str(record.seq)}
    assert journal.reconcile_ack(seq, seq, at(3), sent=sent) == 1
    assert journal.outbox_backlog().reconcile_count == 0


@pytest.mark.parametrize("count, previous, level", [
    (0, None, None), (69_999, None, None), (70_000, None, 50), (112_000, None, 80), (133_000, None, 95),
    (140_000, None, 95), (200_000, None, 95),
    (111_000, 80, 80),  # just below 80 %: still 80 (hysteresis)
    (int(140_000 * (80 - BACKLOG_HYSTERESIS_PCT) / 100), 80, 50),  # far enough below: down to 50
    (10, 95, None),  # the backlog drained: cleared at once
    (133_000, 50, 95),  # rising is immediate
])
def test_backlog_levels_follow_the_fill_of_the_capacity(count, previous, level):
    assert backlog_level(count, 140_000, previous) == level


def test_a_window_or_capacity_of_nothing_is_refused():
    with pytest.raises(ValueError, match="window size"):
        transaction_window(0)
    with pytest.raises(ValueError, match="capacity"):
        backlog_level(1, 0)


def test_the_backlog_alarms_raise_the_level_reached_and_clear_the_others():
    level = backlog_level(115_000, 140_000)  # 82 %
    actions = backlog_alarms(level, "115000 of 140000 rows unacknowledged")
    assert level == 80
    assert [(type(a), a.code) for a in actions] == [(ClearAlarm, "uplink_backlog_50"), (RaiseAlarm, "uplink_backlog_80"),
                                                     (ClearAlarm, "uplink_backlog_95")]
    assert all(type(a) is ClearAlarm for a in backlog_alarms(None, "drained"))


def test_rows_sent_at_different_times_come_due_in_sending_order_and_a_resent_row_goes_to_the_back(journal):
    rows = events(journal, 4)
    window = transaction_window(8)
    window.connected()
    window.take(journal.outbox_after(0, 2), 0.0)  # rows 1-2 at 0 s
    window.take(journal.outbox_after(rows[1], 2), 10.0)  # rows 3-4 at 10 s
    assert [r.seq for r in window.overdue(ACK_TIMEOUT_S, ACK_TIMEOUT_S)] == rows[:2]
    # Rows 1-2 were sent again at 30 s: rows 3-4 come due first now, then 1-2.
    assert [r.seq for r in window.overdue(ACK_TIMEOUT_S + 10, ACK_TIMEOUT_S)] == rows[2:]
    assert [r.seq for r in window.overdue(2 * ACK_TIMEOUT_S, ACK_TIMEOUT_S)] == rows[:2]


@pytest.mark.parametrize("first, last", [(2, 3), (1, 10_000), (0, 4), (3, 3)])
def test_an_ack_frees_exactly_the_rows_in_flight_in_its_range_narrow_or_wide(journal, first, last):
    rows = events(journal, 6)
    window = transaction_window(8)
    window.connected()
    window.take(journal.outbox_after(0, 8), 0.0)
    window.acked(rows[4], rows[4])  # a hole in what is in flight
    done = window.acked(first, last)
    expected = [s for s in rows if first <= s <= last and s != rows[4]]
    assert list(done) == expected and set(window.in_flight) == set(rows) - set(expected) - {rows[4]}


def test_an_acked_row_whose_mark_is_pending_is_not_sent_again_by_a_look_back_until_settled(journal):
    rows = events(journal, 3)
    window = transaction_window(8)
    window.connected()
    window.take(journal.outbox_after(0, 8), 0.0)
    window.acked(rows[0], rows[1])  # the journal's mark runs after: both rows still wait there
    assert [r.seq for r in window.take(journal.outbox_after(0, 8), 1.0)] == []  # the look-back from the oldest
    window.settled(rows[:2])  # the mark failed: the rows still wait, and now go up again
    assert [r.seq for r in window.take(journal.outbox_after(0, 8), 2.0)] == rows[:2]


def test_rows_the_centre_asks_for_again_go_up_even_while_their_acks_marks_are_on_the_way(journal):
    rows = events(journal, 3)
    window = transaction_window(8)
    window.connected()
    window.take(journal.outbox_after(0, 8), 0.0)
    window.acked(rows[0], rows[-1])  # not marked yet: the rows still wait in the journal
    window.rescan(0)  # resend_from(1)
    assert [r.seq for r in window.take(journal.outbox_after(window.next_scan_after(), 8), 1.0)] == rows
