"""The journal writer holds the uplink's background work back while a vehicle is in the lane.

A background operation (an outbox scan, an ack's marks) that starts between a vehicle's B2
and its B4 is running when the intent arrives, and the C6 waits for it. So the writer
starts none while the lane says a vehicle is under way — for at most HOLD_MAX_S at a time,
so that a queue of vehicles does not stop the backlog draining.

The writer's clock is a hand-driven one here: the hold is measured on it, so a test decides
when it has lasted long enough, whatever this machine's speed.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid

import pytest

from laned.journal import JournalWriter, writer_queue
from laned.journal.writer_queue import HOLD_MAX_S

T0 = dt.datetime(2026, 11, 22, 10, 0, 0, tzinfo=dt.UTC)
LANE = "G0001-0201-03"
WAIT = 10.0  # seconds a test waits for a future before calling it hung
QUIET = 0.2  # real seconds in which a held operation must not have run


class HandClock:
    """Monotonic seconds that move only when the test moves them."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Lane:
    """What the lane tells the writer: is a vehicle under way?"""

    def __init__(self) -> None:
        self.busy = False
        self.asked = threading.Event()  # the writer has looked at least once

    def vehicle_busy(self) -> bool:
        self.asked.set()
        return self.busy


def intent_op(i: int):
    rec = {"tx_id": str(uuid.uuid4()), "lane_id": LANE, "direction": "exit", "obu_id": bytes([0xA1, 0xFE, 0x33, i]),
           "plate": "鲁A12345", "card_network": "3701", "card_number": "2301000012345678", "fee": 3500,
           "purchase_time": dt.datetime(2026, 11, 22, 10, 0, 0)}
    return lambda mj: mj.record_intent(rec, T0)


@pytest.fixture
def clock():
    return HandClock()


@pytest.fixture
def lane():
    return Lane()


@pytest.fixture
def writer(tmp_path, clock, lane):
    w = JournalWriter.open(tmp_path / "journal.db", LANE, now=T0, clock=clock).start()
    w.hold_background(lane.vehicle_busy)
    yield w
    lane.busy = False
    w.close(timeout=WAIT)


def scan(writer: JournalWriter, ran: list[str], name: str):
    def op(mj):
        ran.append(name)
        return mj.journal.outbox_after(0, 64)
    return writer.submit(op, background=True)


def held_scan(writer: JournalWriter, lane: Lane):
    """A scan submitted while a vehicle is in the lane, once the writer has looked; and the
    list it adds its name to when it runs."""
    ran: list[str] = []
    lane.busy = True
    scanned = scan(writer, ran, "scan")
    assert lane.asked.wait(WAIT)
    return scanned, ran


def test_with_a_vehicle_in_the_lane_the_uplinks_scan_waits_and_runs_once_it_has_gone(writer, lane):
    scanned, ran = held_scan(writer, lane)
    with pytest.raises(TimeoutError):
        scanned.result(QUIET)
    assert ran == []
    lane.busy = False
    assert scanned.result(WAIT) == []
    assert ran == ["scan"]


def test_the_vehicles_intent_is_not_held_and_goes_before_the_waiting_scan(writer, lane):
    scanned, ran = held_scan(writer, lane)
    intent = writer.submit(intent_op(1))
    assert intent.result(WAIT) == 1  # written while the vehicle is still there
    assert ran == [] and not scanned.done()
    lane.busy = False
    scanned.result(WAIT)
    assert ran == ["scan"]


def test_a_vehicle_that_stays_holds_the_backlog_for_at_most_hold_max_s_at_a_time(writer, lane, clock):
    ran: list[str] = []
    lane.busy = True
    first, second = scan(writer, ran, "first"), scan(writer, ran, "second")
    assert lane.asked.wait(WAIT)
    with pytest.raises(TimeoutError):
        first.result(QUIET)
    clock.now += HOLD_MAX_S  # the vehicle has held the writer for HOLD_MAX_S: one operation runs
    first.result(WAIT)
    with pytest.raises(TimeoutError):  # and the next is held again, from now
        second.result(QUIET)
    assert ran == ["first"]
    clock.now += HOLD_MAX_S
    second.result(WAIT)
    assert ran == ["first", "second"]


def test_when_the_lane_says_its_vehicle_has_gone_the_held_scan_runs_without_waiting_for_a_look(
        writer, lane, monkeypatch):
    # The writer's own looks (every HOLD_POLL_S, for HOLD_MAX_S at most) pushed out of
    # reach: only the lane's word can let the scan run.
    monkeypatch.setattr(writer_queue, "HOLD_POLL_S", 3600.0)
    monkeypatch.setattr(writer_queue, "HOLD_MAX_S", 7200.0)
    scanned, ran = held_scan(writer, lane)
    lane.busy = False  # gone, but nobody said so
    with pytest.raises(TimeoutError):
        scanned.result(QUIET)
    writer.vehicle_gone()
    scanned.result(WAIT)
    assert ran == ["scan"]


def test_a_word_that_the_vehicle_has_gone_while_it_is_still_there_changes_nothing(writer, lane):
    scanned, ran = held_scan(writer, lane)
    writer.vehicle_gone()  # a stale word: the lane's state decides
    with pytest.raises(TimeoutError):
        scanned.result(QUIET)
    lane.busy = False
    writer.vehicle_gone()
    scanned.result(WAIT)
    assert ran == ["scan"]


def test_closing_the_writer_with_a_vehicle_in_the_lane_finishes_the_held_operations(writer, lane):
    ran: list[str] = []
    lane.busy = True
    held = [scan(writer, ran, f"scan{i}") for i in range(3)]
    assert lane.asked.wait(WAIT)
    writer.close(timeout=WAIT)  # raises if the hold kept the writer from finishing
    assert [f.result(0) for f in held] == [[], [], []]
    assert ran == ["scan0", "scan1", "scan2"]


def test_without_a_lane_to_ask_background_operations_run_as_before(tmp_path):
    with JournalWriter.open(tmp_path / "journal.db", LANE, now=T0) as w:
        assert w.submit(lambda mj: mj.journal.last_seq(), background=True).result(WAIT) == 0
