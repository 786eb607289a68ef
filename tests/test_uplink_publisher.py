"""The outbox publisher's journal operations: the centre's acks marked in parts of at most
MARK_ROWS rows, the look-back read SCAN_BATCH rows at a time, so that a vehicle's intent
never waits behind one long operation of the journal writer; how it gives way to a
vehicle, until the lane says the vehicle has gone; and a row that cannot be encoded, set
aside with an alarm while the others go up."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sqlite3
from types import SimpleNamespace
from typing import Any

import pytest

from laned.journal import B5Result, TransactionIntent
from laned.journal.errors import JournalStorageError
from laned.journal.store import Journal
from laned.uplink.messages import AckStream, TxAck
from laned.uplink import publisher as publisher_module
from laned.uplink.publisher import MARK_ROWS, SCAN_BATCH, OutboxPublisher, PublishSettings, mark_pieces
from laned.uplink.reporting import LaneView

LANE = "G0001-0201-03"
T0 = dt.datetime(2024, 11, 22, 9, 30, tzinfo=dt.UTC)


def test_a_large_ack_is_cut_into_parts_of_at_most_the_limit_each_naming_only_its_own_seqs():
    big = {seq: "event" for seq in range(1, 601)}
    small = {seq: "charged" for seq in (700, 702, 703)}
    tx, rec = object(), object()
    pieces = mark_pieces([(tx, 1, 600, big, T0), (rec, 700, 703, small, T0)], 256)  # type: ignore[list-item]
    assert [sum(len(sent) for *_, sent, _ in p) for p in pieces] == [256, 256, 91]
    parts = [part for p in pieces for part in p]
    assert [(stream is tx, first, last) for stream, first, last, _, _ in parts] == [
        (True, 1, 256), (True, 257, 512), (True, 513, 600), (False, 700, 703)]
    assert [seq for *_, sent, _ in parts for seq in sent] == [*big, *small]  # each once, in order
    assert parts[-1][3] == small  # the states go with their seqs


class Scene:
    """A publisher over a real journal of ``rows`` final rows, all published and in flight."""

    def __init__(self, path: Any, rows: int, *, window: int = 2048, in_flight: bool = True) -> None:
        self.journal = Journal.open(path, LANE, now=T0)
        with self.journal.batch("a backlog"):
            for _ in range(rows):
                self.journal.record_event("follow_car", T0)
        self.operations: list[int] = []  # rows each journal operation marked
        self.read: list[int] = []  # rows each journal operation returned (scans)
        self.fail = False
        self.troubles: list[str] = []
        self.busy = False
        self.publisher = OutboxPublisher(
            PublishSettings(window=window), journal=self._run, lane=LaneView(lambda: True, dict, lambda: self.busy),
            wall=lambda: T0, monotonic=lambda: 0.0, storage_trouble=lambda what, err: self.troubles.append(what))
        window = self.publisher.tx.window
        window.connected()
        if in_flight:
            window.take(self.journal.outbox_after(0, rows), 0.0)

    def _run(self, op: Any) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.fail:
            future.set_exception(JournalStorageError("disk I/O error"))
            return future
        before = self.journal.outbox_backlog().count
        result = op(SimpleNamespace(journal=self.journal))
        future.set_result(result)
        if isinstance(result, list) and all(hasattr(r, "seq") for r in result):
            self.read.append(len(result))
        else:
            self.operations.append(before - self.journal.outbox_backlog().count)
        return future

    async def ack(self, first: int, last: int, unknown: tuple[int, ...] | None = None) -> None:
        self.publisher.on_ack(TxAck(lane_id=LANE, stream=AckStream.TX, first_seq=first, last_seq=last,
                                    unknown_seqs=unknown))
        task = asyncio.create_task(self.publisher.mark_acked())
        for _ in range(100):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def parts(rows: int, limit: int) -> list[int]:
    """``rows`` in journal operations of at most ``limit``, in order: full ones, then the rest."""
    return [limit] * (rows // limit) + ([rows % limit] if rows % limit else [])


async def test_an_ack_of_a_whole_window_is_marked_in_parts_and_every_row_is_delivered(tmp_path):
    scene = Scene(tmp_path / "j.db", 700)
    await scene.ack(1, 700)
    assert scene.operations == parts(700, MARK_ROWS)
    assert scene.journal.outbox_backlog().count == 0
    assert scene.publisher.tx.last_acked == 700
    assert scene.publisher.tx.window.in_flight == []


async def test_an_ack_for_the_unknown_copy_of_a_row_settled_since_leaves_the_settled_copy_in_flight(
        tmp_path, caplog):
    # After an outage the broker delivers the centre's ack of the unknown copy; the lane
    # settled the row meanwhile (a C8 re-fetch) and has the charged copy in flight.
    scene = Scene(tmp_path / "j.db", 3, in_flight=False)
    seq = scene.journal.record_intent(TransactionIntent(obu_id=b"\x01\x02\x03\x04", amount=100,
                                                        purchase_time=dt.datetime(2024, 11, 22, 9, 30)), T0).seq
    scene.journal.mark_unknown(seq, "no B5", T0)
    scene.journal.resolve_unknown(seq, B5Result(tac=bytes.fromhex("fe12ff34")), T0)
    window = scene.publisher.tx.window
    window.take(scene.journal.outbox_after(0, 10), 0.0)
    with caplog.at_level(logging.INFO, logger="laned"):
        await scene.ack(1, seq, unknown=(seq,))
    assert scene.journal.outbox_backlog().count == 1 and window.in_flight == [seq]  # the other three marked
    assert f"is for the unknown copy of seqs [{seq}]" in caplog.text
    await scene.ack(seq, seq)  # the centre's ack of the charged copy
    assert scene.journal.outbox_backlog().count == 0 and window.in_flight == []


async def test_a_journal_failure_while_marking_leaves_every_part_waiting_and_is_reported_once(tmp_path):
    scene = Scene(tmp_path / "j.db", 700)
    scene.fail = True
    await scene.ack(1, 700)
    assert scene.journal.outbox_backlog().count == 700  # sent again and acked again later
    assert len(scene.troubles) == 1 and f"seqs 1…{MARK_ROWS}" in scene.troubles[0]
    # None is remembered as acked-but-being-marked: the look-back sends every one again.
    window = scene.publisher.tx.window
    assert len(window.take(scene.journal.outbox_after(0, 700), 1.0)) == 700


async def test_the_look_back_reads_what_waits_a_scan_batch_at_a_time_up_to_the_room(tmp_path):
    scene = Scene(tmp_path / "j.db", 200, in_flight=False)
    rows = await scene.publisher._look_back(scene.publisher.tx, 0.0)
    assert [r.seq for r in rows] == list(range(1, 201))
    assert scene.read == parts(200, SCAN_BATCH)

    small = Scene(tmp_path / "k.db", 200, window=100, in_flight=False)
    rows = await small.publisher._look_back(small.publisher.tx, 0.0)
    assert [r.seq for r in rows] == list(range(1, 101))  # the window's room, no more
    assert small.read == parts(100, SCAN_BATCH)


async def test_the_outbox_gives_way_to_a_vehicle_until_the_lane_says_it_has_gone(tmp_path, monkeypatch):
    # Its own looks pushed out of reach: only the lane's word ends the wait.
    monkeypatch.setattr(publisher_module, "GIVE_WAY_POLL_S", 3600.0)
    monkeypatch.setattr(publisher_module, "GIVE_WAY_MAX_S", 7200.0)
    scene = Scene(tmp_path / "journal.db", 0)
    scene.busy = True
    waiting = asyncio.create_task(scene.publisher.give_way())
    for _ in range(20):
        await asyncio.sleep(0)
    scene.publisher.vehicle_gone()  # a stale word while the vehicle is still there changes nothing
    for _ in range(20):
        await asyncio.sleep(0)
    assert not waiting.done()
    scene.busy = False
    scene.publisher.vehicle_gone()
    await asyncio.wait_for(waiting, 5)


async def test_a_vehicle_that_stays_is_given_way_for_at_most_give_way_max_s(tmp_path):
    scene = Scene(tmp_path / "journal.db", 0)
    clock = [0.0]
    scene.publisher.monotonic = lambda: clock[0]
    scene.busy = True  # never gone: a queue of vehicles
    waiting = asyncio.create_task(scene.publisher.give_way())
    for _ in range(20):
        await asyncio.sleep(0)
    assert not waiting.done()
    clock[0] += publisher_module.GIVE_WAY_MAX_S
    await asyncio.wait_for(waiting, 5)  # at its next look, GIVE_WAY_POLL_S later


class RecordingSession:
    """The broker as the pump publishes to it: every message, encoded as the real session encodes it."""

    def __init__(self) -> None:
        self.seqs: list[int] = []

    async def publish_all(self, messages: Any) -> None:
        for msg in messages:
            msg.to_json()
            self.seqs += msg.seqs()


async def test_a_row_that_cannot_be_encoded_is_set_aside_with_an_alarm_and_the_others_go_up(
        tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "journal.db"
    with Journal.open(path, LANE, now=T0) as journal:
        for _ in range(3):
            intent = TransactionIntent(amount=3500, purchase_time=dt.datetime(2024, 11, 22, 17, 30), obu_id=bytes(4),
                                       plate="鲁A12345", card_network="3701", card_number="2301000012345678",
                                       vehicle_class=1, fee=3500)
            entry = journal.record_intent(intent, T0)
            journal.complete_charge(entry.seq, B5Result(tac=bytes.fromhex("674030a0"), balance_after=1000,
                                                        trans_time=intent.purchase_time), T0)
    # A damaged row: its lane time stored with an offset, which the contract's lane time
    # (naive, as the card's TAC covers it) cannot carry.
    con = sqlite3.connect(path)
    with con:
        con.execute("UPDATE transactions SET purchase_time = '2024-11-22T17:30:00+08:00' WHERE seq = 2")
    con.close()
    scene = Scene(path, 0, in_flight=False)
    alarms: list[Any] = []
    scene.publisher._alarm = alarms.append
    session = RecordingSession()
    await scene.publisher._pump_once(session, scene.publisher.tx, 0.0)  # type: ignore[arg-type]
    assert session.seqs == [1, 3]
    assert [(a.code, a.detail.split(":")[0]) for a in alarms] == [("uplink_row_unsendable", "tx seq 2")]
    assert "$.purchase_time" in alarms[0].detail
    # Never again in this process: not after a reconnect, not by the look-back for overdue rows.
    window = scene.publisher.tx.window
    window.disconnected()
    window.connected()
    await scene.publisher._pump_once(session, scene.publisher.tx, -3600.0)  # type: ignore[arg-type]
    assert session.seqs == [1, 3, 1, 3]
    assert window.quarantined == [2] and len(alarms) == 1
    # Nothing deleted, nothing marked: it waits in the journal for a laned that can send it.
    assert [e.seq for e in scene.journal.outbox_after(0, 10)] == [1, 2, 3]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "tx seq 2 cannot be encoded" in errors[0]
