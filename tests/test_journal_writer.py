"""The journal writer: commits run on one thread, in order, grouped where nothing waits, never on the loop."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import threading
import time
import uuid

import pytest

from laned.journal import (
    B5Result, Journal, JournalError, JournalStorageError, JournalTransitionError, JournalWriter, JournalWriterClosed,
    JournalWriterDead, MachineJournal, Observed, TxState,
)
from laned.journal.testing import CommitFaults

T0 = dt.datetime(2026, 11, 22, 10, 0, 0, tzinfo=dt.UTC)
LANE = "G0001-0201-03"
OBU = bytes.fromhex("a1fe33ff")
WAIT = 10.0  # seconds a test waits for a future before calling it hung


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def record(i: int = 0, **more) -> dict:
    """A lane machine record (``LaneMachine._record``), as the executor hands it over."""
    return {"tx_id": str(uuid.uuid4()), "lane_id": LANE, "direction": "exit", "obu_id": OBU[:3] + bytes([i % 256]),
            "plate": "鲁A12345", "card_network": "3701", "card_number": "2301000012345678", "fee": 3500,
            "purchase_time": dt.datetime(2026, 11, 22, 10, 0, 0), "reason": "insufficient_balance", **more}


def intent_op(i: int = 0):
    rec = record(i)
    return lambda mj: mj.record_intent(rec, at(i))


def refusal_op(i: int = 0, **more):
    rec = record(i, **more)
    return lambda mj: mj.record_refusal(rec, at(i)) or mj.journal.last_seq()


def event_op(i: int = 0):
    return lambda mj: mj.record_event("follow_car", {"lane_id": LANE, "reason": "follow_car"}, at(i))


@pytest.fixture
def db(tmp_path):
    return tmp_path / "journal.db"


@pytest.fixture
def make_writer(db):
    """Started writers on ``db``; every one is closed at the end of the test."""
    made: list[JournalWriter] = []

    def make(**kw) -> JournalWriter:
        w = JournalWriter.open(db, LANE, now=T0, **kw).start()
        made.append(w)
        return w

    yield make
    for w in made:
        w.close(timeout=WAIT)


def hold(writer: JournalWriter) -> threading.Event:
    """Park the writer thread in an operation until the returned event is set (nothing commits meanwhile)."""
    entered, release = threading.Event(), threading.Event()

    def parked(mj):
        entered.set()
        assert release.wait(WAIT)

    writer.submit(parked)
    assert entered.wait(WAIT)
    return release


def rows(db) -> list[tuple]:
    with sqlite3.connect(db) as raw:
        return raw.execute("SELECT seq, kind, state, reason FROM transactions ORDER BY seq").fetchall()


# -- order and threads -------------------------------------------------------------------------------

def test_operations_run_in_submission_order_on_one_thread_that_is_not_the_callers(make_writer):
    w = make_writer()
    seen: list[tuple[int, str, int]] = []

    def op(i, inner):
        def run(mj):
            seen.append((i, threading.current_thread().name, threading.get_ident()))
            return inner(mj)
        return run

    futures = [w.submit(op(i, refusal_op(i) if i % 3 else intent_op(i)), group=bool(i % 2)) for i in range(30)]
    results = [f.result(WAIT) for f in futures]
    assert [i for i, _, _ in seen] == list(range(30))
    assert {name for _, name, _ in seen} == {"journal-writer"}
    assert len({ident for _, _, ident in seen}) == 1 and seen[0][2] != threading.get_ident()
    assert results == list(range(1, 31))  # every op's own result; seqs in submission order


def test_an_intents_future_resolves_with_its_seq_and_reads_go_through_the_writer(make_writer):
    w = make_writer()
    assert w.submit(intent_op(0)).result(WAIT) == 1
    assert w.submit(refusal_op(1), group=True).result(WAIT) == 2
    entry = w.call(lambda mj: mj.journal.get(1))
    assert (entry.state, entry.amount, entry.obu_id) == (TxState.INTENT, 3500, OBU[:3] + b"\x00")
    assert w.call(lambda mj: mj.journal.counters())["refused"] == 1
    assert [p.seq for p in w.call(lambda mj: mj.recent_paid(300, at(10), 100.0))] == [1]
    assert w.recovery is not None and w.recovery.unknown == () and w.lane_id == LANE


def test_the_store_cannot_be_used_from_another_thread_than_the_writers(make_writer):
    w = make_writer()
    store = w.call(lambda mj: mj.journal)  # smuggled out: SQLite's check_same_thread stops it
    with pytest.raises(JournalError, match="thread"):
        store.get(1)
    with pytest.raises(TypeError, match="factory"):
        JournalWriter(store)  # type: ignore[arg-type]


# -- the loop is never blocked --------------------------------------------------------------------------

async def test_a_200ms_commit_does_not_stall_the_event_loop(db):
    async with JournalWriter.open(db, LANE, now=T0, commit_delay_s=0.2) as w:
        gaps: list[float] = []
        stop = asyncio.Event()

        async def ticker():
            last = time.perf_counter()
            while not stop.is_set():
                await asyncio.sleep(0.01)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0.05)
        order: list[str] = []
        started = time.perf_counter()
        intent = w.submit_async(intent_op(0))
        refusal = w.submit_async(refusal_op(1), group=True)
        event = w.submit_async(event_op(2), group=True)
        submitted = time.perf_counter() - started
        for name, fut in (("intent", intent), ("refusal", refusal), ("event", event)):
            fut.add_done_callback(lambda f, name=name: order.append((name, threading.current_thread().name)))
        assert not intent.done()
        assert await intent == 1
        assert await asyncio.gather(refusal, event) == [2, None]
        elapsed = time.perf_counter() - started
        stop.set()
        await tick

    assert submitted < 0.05  # submitting does not wait for the commit
    assert elapsed >= 0.4  # the intent's commit, then the group's: 200 ms each
    assert max(gaps) < 0.1, f"the loop stalled {max(gaps) * 1000:.0f} ms"  # noisy machines: 10 ms ticks, loosely
    assert order == [("intent", "MainThread"), ("refusal", "MainThread"), ("event", "MainThread")]
    assert w.last_commit_s is not None and w.last_commit_s >= 0.2


# -- grouping ---------------------------------------------------------------------------------------------

def test_a_burst_of_50_grouped_refusals_takes_a_few_commits_not_50(make_writer, db):
    w = make_writer(commit_delay_s=0.05)
    before = w.commits
    started = time.perf_counter()
    futures = [w.submit(refusal_op(i), group=True) for i in range(50)]
    assert [f.result(WAIT) for f in futures] == list(range(1, 51))
    assert w.commits - before <= 5  # the first alone, the rest grouped as they queued behind its commit
    assert time.perf_counter() - started < 50 * 0.05
    assert len(rows(db)) == 50 and {r[2:] for r in rows(db)} == {("refused", "insufficient_balance")}


def test_a_grouped_op_that_fails_does_not_lose_the_others(make_writer, db):
    w = make_writer()
    event_seq = w.call(lambda mj: mj.journal.record_event("follow_car", at(0)).seq)
    duplicate = str(uuid.uuid4())
    w.call(refusal_op(1, tx_id=duplicate))
    before = w.commits
    release = hold(w)
    ok1 = w.submit(refusal_op(2), group=True)
    transition = w.submit(lambda mj: mj.mark_unknown(event_seq, "no B5", at(3)), group=True)  # an event can't
    ok2 = w.submit(refusal_op(4), group=True)
    constraint = w.submit(refusal_op(5, tx_id=duplicate), group=True)  # the same transaction id twice
    ok3 = w.submit(refusal_op(6), group=True)
    release.set()
    with pytest.raises(JournalTransitionError, match="only an intent can become unknown"):
        transition.result(WAIT)
    with pytest.raises(JournalError, match="UNIQUE"):
        constraint.result(WAIT)
    assert [f.result(WAIT) for f in (ok1, ok2, ok3)] == [3, 4, 5]  # the failed ones left no seq behind
    assert w.commits - before == 1  # still one transaction for the group
    assert w.call(lambda mj: mj.journal.get(event_seq)).state is TxState.EVENT
    assert w.writable and w.last_error is None  # refused data is not a failing disk
    assert len(rows(db)) == 5


def test_a_group_whose_commit_fails_is_written_op_by_op(db, make_writer):
    faults = CommitFaults()
    w = make_writer(commit_hook=faults)
    before, attempts = w.commits, faults.calls
    release = hold(w)
    futures = [w.submit(refusal_op(i), group=True) for i in range(5)]
    faults.fail_next(1)  # the group's commit
    release.set()
    assert [f.result(WAIT) for f in futures] == [1, 2, 3, 4, 5]
    assert w.commits - before == 5 and faults.calls - attempts == 6  # the group's, then one each
    assert w.writable and w.health().errors == 1


def test_a_group_that_sqlite_abandons_midway_is_written_op_by_op_and_nothing_twice(make_writer, db):
    w = make_writer()
    tries = []

    def io_error_once(mj):  # as SQLite does on SQLITE_IOERR / SQLITE_FULL: the whole transaction is gone
        tries.append(mj.journal.in_transaction)
        if len(tries) == 1:
            mj.journal._con.execute("ROLLBACK")
            raise sqlite3.OperationalError("disk I/O error")
        return refusal_op(1)(mj)

    release = hold(w)
    futures = [w.submit(refusal_op(0), group=True), w.submit(io_error_once, group=True),
               w.submit(refusal_op(2), group=True)]
    release.set()
    assert [f.result(WAIT) for f in futures] == [1, 2, 3]
    assert tries == [True, False]  # in the group's transaction, then on its own (autocommit until it writes)
    assert [r[0] for r in rows(db)] == [1, 2, 3]  # the first refusal, written before the failure, is there once
    assert w.writable and w.health().errors == 1


def test_an_intent_is_not_held_back_by_grouping_and_nothing_overtakes(make_writer):
    w = make_writer(commit_delay_s=0.02)
    before = w.commits
    done: list[tuple[str, int]] = []
    release = hold(w)

    def submit(name, op, group):
        f = w.submit(op, group=group)
        f.add_done_callback(lambda f: done.append((name, w.commits - before)))
        return f

    first = [submit(f"r{i}", refusal_op(i), True) for i in range(20)]
    intent = submit("intent", intent_op(20), False)
    later = [submit(f"r{i}", refusal_op(i), True) for i in range(21, 41)]
    release.set()
    assert intent.result(WAIT) == 21
    for f in first + later:
        f.result(WAIT)
    assert [name for name, _ in done] == [f"r{i}" for i in range(20)] + ["intent"] + [f"r{i}" for i in range(21, 41)]
    assert dict(done)["intent"] == 2  # the 20 before it in one commit, then the intent in its own
    assert w.commits - before == 3


# -- failures ----------------------------------------------------------------------------------------------

class WriterBug(BaseException):
    """Something no operation should raise: it kills the writer thread."""


def test_a_vehicles_intent_overtakes_the_uplinks_queued_background_reads(make_writer):
    w = make_writer()
    done: list[str] = []
    release = hold(w)

    def submit(name, op, **kw):
        f = w.submit(op, **kw)
        f.add_done_callback(lambda _: done.append(name))
        return f

    reads = [submit(f"scan{i}", lambda mj: mj.journal.outbox_after(0, 64), background=True) for i in range(5)]
    intent = submit("intent", intent_op(0))
    refusal = submit("refusal", refusal_op(1), group=True)
    release.set()
    assert intent.result(WAIT) == 1 and refusal.result(WAIT) == 2
    for f in reads:
        f.result(WAIT)
    # The lane's operations first, in their order; the background ones after, in theirs.
    assert done == ["intent", "refusal"] + [f"scan{i}" for i in range(5)]


def test_a_background_operation_is_never_grouped_and_runs_when_the_queue_is_empty(make_writer):
    w = make_writer()
    release = hold(w)
    before = w.commits
    grouped = [w.submit(refusal_op(i), group=True) for i in range(3)]
    marked = w.submit(lambda mj: mj.journal.outbox_ack(1, 3, at(5)), background=True, group=True)
    release.set()
    assert [f.result(WAIT) for f in grouped] == [1, 2, 3]
    assert marked.result(WAIT) == 3  # saw the three refusals committed: it ran after them
    assert w.commits - before == 2  # the group's commit, then the background op's own


async def test_background_operations_answer_on_the_loop_and_close_finishes_them(db):
    w = JournalWriter.open(db, LANE, now=T0, commit_delay_s=0.01).start()
    release = hold(w)
    counted = w.submit_async(lambda mj: mj.journal.outbox_backlog().count, background=True)
    written = w.submit(refusal_op(0), group=True)
    release.set()
    assert await asyncio.wait_for(counted, WAIT) == 1  # the refusal, queued after it, went first
    later = [w.submit(lambda mj: mj.journal.last_seq(), background=True) for _ in range(3)]
    await asyncio.to_thread(w.close, WAIT)
    assert written.result(0) == 1 and [f.result(0) for f in later] == [1, 1, 1]


def test_a_dead_writer_fails_the_background_operations_waiting_too(make_writer):
    w = make_writer()
    entered, release = threading.Event(), threading.Event()

    def bug(mj):
        entered.set()
        release.wait(WAIT)
        raise WriterBug("the writer's own bug")

    w.submit(bug)
    assert entered.wait(WAIT)
    waiting = [w.submit(lambda mj: mj.journal.last_seq(), background=True) for _ in range(3)]
    release.set()
    for f in waiting:
        with pytest.raises(JournalWriterDead):
            f.result(WAIT)



def test_a_dead_writer_fails_pending_and_later_submissions_fast(make_writer):
    w = make_writer()
    died: list[BaseException] = []
    w.on_death(died.append)
    entered, release = threading.Event(), threading.Event()

    def bug(mj):
        entered.set()
        release.wait(WAIT)
        raise WriterBug("the writer's own bug")

    killer = w.submit(bug)
    assert entered.wait(WAIT)
    pending = [w.submit(intent_op(1)), w.submit(refusal_op(2), group=True), w.submit(event_op(3), group=True)]
    release.set()
    for f in [killer, *pending]:
        with pytest.raises(JournalWriterDead) as err:
            f.result(WAIT)
        assert isinstance(err.value.__cause__, WriterBug)
    assert not w.alive and w.dead and isinstance(w.death, WriterBug) and died == [w.death]
    started = time.perf_counter()
    later = w.submit(intent_op(4))
    assert later.done() and time.perf_counter() - started < 0.05
    with pytest.raises(JournalWriterDead, match="dead"):
        later.result(0)
    assert w.queue_depth == 0
    w.close(timeout=WAIT)  # does not hang either


async def test_a_dead_writer_answers_on_the_loop_too(make_writer):
    w = make_writer()
    w.submit(lambda mj: (_ for _ in ()).throw(WriterBug("boom")))
    with pytest.raises(JournalWriterDead):
        await asyncio.wait_for(w.submit_async(intent_op(1)), WAIT)


def test_close_drains_what_was_submitted_and_the_rows_are_on_disk(db):
    w = JournalWriter.open(db, LANE, now=T0, commit_delay_s=0.02).start()
    futures = [w.submit(intent_op(i)) for i in range(10)] + [w.submit(event_op(i), group=True) for i in range(10)]
    w.close(timeout=WAIT)
    assert all(f.done() and f.exception() is None for f in futures)
    assert not w.alive and not w.dead
    with pytest.raises(JournalWriterClosed):
        w.submit(intent_op(99)).result(0)
    w.close()  # idempotent
    with Journal.open(db, LANE, now=at(60)) as j:  # the lock is free again: the journal was closed
        assert [e.seq for e in j.iter_since(0)] == list(range(1, 21))
        assert j.recovery.unknown == tuple(range(1, 11))  # intents with no B5, as after any stop


def test_a_writer_that_is_not_started_or_cannot_open_refuses_work(db):
    w = JournalWriter.open(db, LANE, now=T0)
    with pytest.raises(JournalWriterClosed, match="not started"):
        w.submit(intent_op()).result(0)
    with Journal.open(db, LANE, now=T0):  # another process holds the lane
        with pytest.raises(JournalError, match="in use by another laned process"):
            w.start()
    assert not w.alive
    with pytest.raises(JournalWriterDead):
        w.submit(intent_op()).result(0)


def test_a_full_disk_makes_the_journal_not_writable_until_a_write_succeeds(make_writer, db):
    faults = CommitFaults()
    w = make_writer(commit_hook=faults)
    assert w.writable
    faults.fail_next(2)
    for i in range(2):
        with pytest.raises(JournalStorageError, match="database or disk is full"):
            w.submit(intent_op(i)).result(WAIT)
        assert not w.writable and "disk is full" in w.last_error
    assert w.health().errors == 2 and w.alive  # a failing write does not kill the writer
    assert w.submit(intent_op(2)).result(WAIT) == 1  # the failed intents left nothing, not even a seq
    assert w.writable and w.last_error is None
    assert rows(db) == [(1, "exit_charge", "intent", None)]


def test_a_read_only_database_makes_the_journal_not_writable_until_it_is_writable_again(make_writer):
    w = make_writer()
    w.call(lambda mj: mj.journal._con.execute("PRAGMA query_only = ON"))  # SQLite refuses every write now
    with pytest.raises(JournalStorageError, match="readonly"):
        w.submit(refusal_op(0), group=True).result(WAIT)
    with pytest.raises(JournalStorageError, match="readonly"):
        w.submit(intent_op(1)).result(WAIT)
    assert not w.writable and "readonly" in w.last_error
    w.call(lambda mj: mj.journal._con.execute("PRAGMA query_only = OFF"))
    assert not w.writable  # nothing has been written yet
    assert w.submit(intent_op(2)).result(WAIT) == 1
    assert w.writable


# -- health -------------------------------------------------------------------------------------------------

def test_health_reports_commit_times_queue_depth_and_a_wedged_writer(make_writer):
    clock = [1000.0]
    w = make_writer(commit_delay_s=0.03, clock=lambda: clock[0], stall_s=10.0)
    for i in range(3):
        w.submit(intent_op(i)).result(WAIT)
    h = w.health()
    assert h.alive and h.writable and h.queue_depth == 0 and h.busy_s is None and h.last_error is None
    assert 0.03 <= h.last_commit_s <= h.max_commit_s and h.p99_commit_s <= h.max_commit_s
    assert h.commits >= 3 and w.max_commit_s == h.max_commit_s
    assert w.health(since_commit=h.commits).max_commit_s is None  # nothing committed since that snapshot
    w.submit(refusal_op(9), group=True).result(WAIT)
    assert 0.03 <= w.health(since_commit=h.commits).max_commit_s == w.last_commit_s  # the one since then
    release = hold(w)
    futures = [w.submit(refusal_op(i), group=True) for i in range(5)]
    assert w.queue_depth == 6 and w.alive  # the parked op and five behind it
    clock[0] += 11.0  # one operation for 11 s: wedged
    assert not w.alive and w.health().busy_s == pytest.approx(11.0)
    release.set()
    for f in futures:
        f.result(WAIT)
    assert w.alive and w.queue_depth == 0


# -- the executor's port ---------------------------------------------------------------------------------

def test_not_charged_is_one_commit_and_all_or_nothing(db):
    with Journal.open(db, LANE, now=T0) as j:
        mj = MachineJournal(j)
        seq = mj.record_intent(record(), at(0))
        before = j.commits
        mj.not_charged(seq, "not debited: B5 error 17", at(1))
        assert j.commits - before == 1
        e = j.get(seq)
        assert (e.state, e.reconciled, e.reason) == (TxState.REFUSED, True, "charge_failed")
        # A result was kept for the next one: resolving it as not charged is refused, and the
        # unknown mark made on the way is undone with it.
        kept = mj.record_intent(record(1), at(2))
        j.record_b5(kept, B5Result(tac=bytes.fromhex("fe12ff34")), at(3))
        with pytest.raises(JournalTransitionError, match="it was charged"):
            mj.not_charged(kept, "not debited", at(4))
        assert j.get(kept).state is TxState.INTENT


def synchronous(j: Journal) -> int:
    return int(j._con.execute("PRAGMA synchronous").fetchone()[0])  # noqa: SLF001 - the setting under test


def test_delivery_marks_commit_without_an_fsync_and_every_other_write_still_fsyncs(db):
    with Journal.open(db, LANE, now=T0) as j:
        seq = j.record_event("follow_car", at(0)).seq
        assert synchronous(j) == 2  # FULL: every commit fsyncs the WAL
        with j.batch("marking acked rows delivered", durable=False):
            assert synchronous(j) == 1  # NORMAL for this transaction only
            assert j.outbox_ack(seq, seq, at(1)) == 1
        assert synchronous(j) == 2
        with pytest.raises(RuntimeError):
            with j.batch("marks abandoned", durable=False):
                raise RuntimeError("the caller gives up")
        assert synchronous(j) == 2  # restored whatever ends the transaction
        with j.batch():  # durable inside: the outer transaction decides, and it fsyncs
            with j.batch("marks in a durable batch", durable=False):
                assert synchronous(j) == 2
    with Journal.open(db, LANE, now=T0) as j:
        assert j.outbox_backlog().count == 0  # the mark was committed


def test_a_batch_is_one_commit_and_a_failed_write_inside_leaves_the_others(db):
    with Journal.open(db, LANE, now=T0) as j:
        event = j.record_event("alarm", at(0)).seq
        before = j.commits
        with j.batch():
            j.record_refusal(Observed(obu_id=OBU), "obu_listed", at(1))
            with pytest.raises(JournalTransitionError):
                j.mark_unknown(event, "?", at(2))
            j.record_event("follow_car", at(3))
        assert j.commits - before == 1
        assert [(e.kind, e.state) for e in j.iter_since(event)] == [("refusal", "refused"), ("follow_car", "event")]
        with pytest.raises(RuntimeError):
            with j.batch():
                j.record_event("alarm", at(4))
                raise RuntimeError("the caller gives up")
        assert j.last_seq() == 3 and j.commits - before == 1  # nothing of the abandoned batch
