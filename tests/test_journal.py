"""The journal: intents durable before C6, results applied once, crashes recovered, nothing charged twice."""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
import subprocess
import sys
import textwrap

import pytest

import laned.journal as journal_mod
from laned.executor import LaneExecutor
from laned.journal import (
    B5Result, Journal, JournalError, JournalTransitionError, MachineJournal, Observed, TransactionIntent, TxKind,
    TxState,
)
from laned.lane.dialect import Dialect
from laned.lane.machine import LaneMachine, LaneSettings
from laned.protocol import get_profile
from tests.lane_harness import Fees, Lane

T0 = dt.datetime(2026, 11, 22, 10, 0, 0, tzinfo=dt.UTC)
OBU = bytes.fromhex("a1fe33ff")
CARD = ("3701", "2301000012345678")
TAC = bytes.fromhex("fe12ff34")


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def intent(obu=OBU, card=CARD, amount=3500, kind=TxKind.EXIT_CHARGE, **more) -> TransactionIntent:
    return TransactionIntent(obu_id=obu, issuer=bytes.fromhex("c9bdb6ab37010001"), obu_serial=bytes(range(1, 9)),
                             contract_start=dt.date(2023, 1, 1), contract_expiry=dt.date(2033, 1, 1),
                             obu_status=b"\x00\x00", plate="鲁A12345", plate_colour=0, vehicle_class=1,
                             card_network=card[0], card_number=card[1], card_type=0x16, balance_before=123456,
                             entry_station="3701-0102", fee=amount, fee_table_version=7, status_list_version=42,
                             kind=kind, amount=amount, purchase_time=dt.datetime(2026, 11, 22, 10, 0, 0), **more)


def b5(tac=TAC, balance_after=119956) -> B5Result:
    return B5Result(tac=tac, psam_no=bytes.fromhex("370100000001"), psam_trans_serial=2, icc_pay_serial=1,
                    trans_type=9, balance_after=balance_after, trans_time=dt.datetime(2026, 11, 22, 10, 0, 0))


@pytest.fixture
def db(tmp_path):
    return tmp_path / "journal.db"


@pytest.fixture
def journal(db):
    with Journal.open(db, "G0001-0201-03", now=T0) as j:
        yield j


# -- the normal path ----------------------------------------------------------------------------

def test_an_exit_charge_goes_from_intent_to_charged_with_every_b2_to_b5_field(journal):
    e = journal.record_intent(intent(), at(0))
    assert (e.seq, e.state, e.kind, e.amount) == (1, TxState.INTENT, "exit_charge", 3500)
    done = journal.complete_charge(e.seq, b5(), at(0.3), message="欢迎通行 一路顺风")
    assert done.state is TxState.CHARGED and done.reason == "charged" and not done.reconciled
    assert done.b5 == b5()
    assert (done.card_number, done.plate, done.entry_station, done.contract_expiry) == \
        (CARD[1], "鲁A12345", "3701-0102", dt.date(2033, 1, 1))
    assert (done.fee_table_version, done.status_list_version, done.message) == (7, 42, "欢迎通行 一路顺风")
    assert done.created_unix == T0.timestamp() and done.updated_iso == at(0.3).isoformat()


def test_an_entry_lane_write_ends_entry_written(journal):
    e = journal.record_intent(intent(amount=0, kind=TxKind.ENTRY_WRITE), at(0))
    assert journal.complete_charge(e.seq, b5(), at(0.2)).state is TxState.ENTRY_WRITTEN


def test_the_sequence_is_monotonic_across_reopen_and_never_reused(db):
    with Journal.open(db, "L1", now=T0) as j:
        seqs = [j.record_intent(intent(), at(0)).seq,
                j.record_refusal(Observed(obu_id=OBU), "insufficient_balance", at(1)).seq,
                j.record_event("follow_car", at(2)).seq]
    assert seqs == [1, 2, 3]
    with sqlite3.connect(db) as raw:  # the newest row goes (say, pruned after the centre acknowledged it)
        raw.execute("DELETE FROM transactions WHERE seq = 3")
    with Journal.open(db, "L1", now=at(10)) as j:
        assert j.record_event("alarm", at(11)).seq == 4  # 3 is gone, and stays unused
    with sqlite3.connect(db) as raw:  # a counter wound back (an old backup restored over it)
        raw.execute("UPDATE lane_counter SET last_seq = 1")
    with Journal.open(db, "L1", now=at(20)) as j:
        assert j.record_event("alarm", at(21)).seq == 5  # never below the highest seq on file
        assert j.last_seq() == 5


def test_two_lanes_in_one_file_count_separately(db):
    with Journal.open(db, "L1", now=T0) as j:
        j.record_event("alarm", at(0))
    with Journal.open(db, "L2", now=T0) as j:
        assert j.record_event("alarm", at(0)).seq == 1
        assert [e.lane_id for e in j.iter_since(0)] == ["L2"]


def test_the_intent_is_durable_when_record_intent_returns(journal, db):
    seq = journal.record_intent(intent(), at(0)).seq
    other = sqlite3.connect(db)  # another process's view: only what was committed
    assert other.execute("SELECT state, amount, obu_id FROM transactions WHERE seq = ?", (seq,)).fetchone() == \
        ("intent", 3500, "a1fe33ff")
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert journal._con.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL: WAL fsynced at every commit
    other.close()
    assert db.stat().st_mode & 0o077 == 0  # card numbers and plates in full: laned's alone


# -- crash recovery --------------------------------------------------------------------------------

CHILD = textwrap.dedent("""
    import datetime as dt, os, signal, sys
    from laned.journal import B5Result, Journal, TransactionIntent
    now = dt.datetime(2026, 11, 22, 10, 0, 0, tzinfo=dt.timezone.utc)
    j = Journal.open(sys.argv[1], "G0001-0201-03", now=now)
    e = j.record_intent(TransactionIntent(obu_id=bytes.fromhex("a1fe33ff"), card_network="3701",
                                          card_number="2301000012345678", plate="鲁A12345", amount=3500,
                                          purchase_time=now.replace(tzinfo=None)), now)
    if sys.argv[2] == "b5-kept":
        j.record_b5(e.seq, B5Result(tac=bytes.fromhex("fe12ff34"), balance_after=119956), now)
    print(e.seq, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # the lane PC loses power: no close, no cleanup
""")


def crash_child(db, mode: str) -> int:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(db), mode], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    return int(proc.stdout)


def test_a_crash_between_intent_and_b5_leaves_an_unknown_to_reconcile_not_a_lost_charge(db):
    seq = crash_child(db, "intent-only")
    with Journal.open(db, "G0001-0201-03", now=at(60)) as j:
        assert j.recovery.unknown == (seq,) and j.recovery.completed == ()
        e = j.get(seq)
        assert e.state is TxState.UNKNOWN and "between C6 and B5" in e.detail and e.updated_iso == at(60).isoformat()
        assert j.pending_intents() == [] and [u.seq for u in j.unresolved()] == [seq]
        # It may have paid: the same OBU inside the window must not be charged again.
        assert j.charged_within(obu_id=OBU, since=at(-300)).seq == seq
        # A C8 re-fetch brings the TAC: the charge is reconciled, once.
        resolved = j.resolve_unknown(seq, b5(), at(70))
        assert resolved.state is TxState.CHARGED and resolved.reconciled and resolved.b5.tac == TAC
        assert j.resolve_unknown(seq, b5(), at(71)) == resolved
    with Journal.open(db, "G0001-0201-03", now=at(120)) as j:
        assert j.recovery.unknown == () and j.get(seq).state is TxState.CHARGED
        assert j.counters()["charged"] == 1 and j.counters()["reconciled"] == 1


def test_a_crash_after_the_b5_was_kept_completes_the_charge_at_start_up_once(db):
    seq = crash_child(db, "b5-kept")
    with Journal.open(db, "G0001-0201-03", now=at(60)) as j:
        assert j.recovery.completed == (seq,) and j.recovery.unknown == ()
        e = j.get(seq)
        assert e.state is TxState.CHARGED and e.b5.tac == TAC and e.b5.balance_after == 119956 and not e.reconciled
        assert "start-up" in e.detail
    with Journal.open(db, "G0001-0201-03", now=at(90)) as j:  # a second start changes nothing
        assert j.recovery.completed == () and j.get(seq).updated_iso == at(60).isoformat()


def test_a_b5_kept_for_an_unknown_row_resolves_it_at_start_up(db):
    with Journal.open(db, "L1", now=T0) as j:
        seq = j.record_intent(intent(), at(0)).seq
        j.mark_unknown(seq, "no B5 within the timeout", at(1))
        j.record_b5(seq, b5(), at(5))  # a TAC fetched by C8 while the lane was busy
    with Journal.open(db, "L1", now=at(60)) as j:
        assert j.recovery.completed == (seq,)
        assert j.get(seq).state is TxState.CHARGED and j.get(seq).reconciled


def test_recovery_logs_mask_the_card_and_plate(db, caplog):
    crash_child(db, "intent-only")
    with caplog.at_level(logging.WARNING, logger="laned.journal"):
        Journal.open(db, "G0001-0201-03", now=at(60)).close()
    assert "marked unknown" in caplog.text and "3701************5678" in caplog.text
    assert "2301000012345678" not in caplog.text


# -- guarded transitions ---------------------------------------------------------------------------

def test_completing_twice_with_the_same_tac_is_harmless_and_with_another_tac_refused(journal):
    seq = journal.record_intent(intent(), at(0)).seq
    first = journal.complete_charge(seq, b5(), at(0.3))
    assert journal.complete_charge(seq, b5(), at(5)) == first
    with pytest.raises(JournalTransitionError, match="already charged with TAC fe12ff34.*00000001.*twice"):
        journal.complete_charge(seq, b5(tac=bytes.fromhex("00000001")), at(6))
    with pytest.raises(JournalTransitionError, match="only an intent can become unknown"):
        journal.mark_unknown(seq, "late timeout", at(7))
    assert journal.get(seq) == first


@pytest.mark.parametrize("setup,call,fragment", [
    ("unknown", lambda j, s: j.complete_charge(s, b5(), at(9)), "awaits reconciliation: use resolve_unknown"),
    ("intent", lambda j, s: j.resolve_unknown(s, b5(), at(9)), "not unknown yet: use complete_charge"),
    ("intent", lambda j, s: j.resolve_not_charged(s, "no debit", at(9)), "only an unknown transaction"),
    ("refused", lambda j, s: j.complete_charge(s, b5(), at(9)), "is refused, cannot complete"),
    ("refused", lambda j, s: j.record_b5(s, b5(), at(9)), "no B5 result belongs to it"),
    ("event", lambda j, s: j.mark_unknown(s, "?", at(9)), "only an intent"),
])
def test_transitions_the_state_does_not_allow_are_refused(journal, setup, call, fragment):
    if setup in ("intent", "unknown"):
        seq = journal.record_intent(intent(), at(0)).seq
        if setup == "unknown":
            journal.mark_unknown(seq, "no B5 within the timeout", at(1))
    elif setup == "refused":
        seq = journal.record_refusal(Observed(obu_id=OBU), "obu_listed", at(0)).seq
    else:
        seq = journal.record_event("follow_car", at(0)).seq
    before = journal.get(seq)
    with pytest.raises(JournalTransitionError, match=fragment):
        call(journal, seq)
    assert journal.get(seq) == before


def test_an_unknown_charge_the_card_never_paid_is_resolved_as_refused(journal):
    seq = journal.record_intent(intent(), at(0)).seq
    journal.mark_unknown(seq, "no B5 within the timeout", at(1))
    assert journal.mark_unknown(seq, "again", at(2)).detail == "no B5 within the timeout"  # first reason kept
    e = journal.resolve_not_charged(seq, "C8: card has no transaction with this purchase time", at(30))
    assert (e.state, e.reconciled, e.reason) == (TxState.REFUSED, True, "charge_failed")
    assert journal.charged_within(obu_id=OBU, since=at(-300)) is None  # it never paid: a new charge is fine


def test_a_kept_b5_blocks_resolving_as_not_charged(journal):
    seq = journal.record_intent(intent(), at(0)).seq
    journal.mark_unknown(seq, "no B5", at(1))
    journal.record_b5(seq, b5(), at(2))
    with pytest.raises(JournalTransitionError, match="it was charged"):
        journal.resolve_not_charged(seq, "verdict", at(3))
    with pytest.raises(JournalTransitionError, match="second one with TAC 00000001"):
        journal.record_b5(seq, b5(tac=bytes(3) + b"\x01"), at(4))


@pytest.mark.parametrize("bad,fragment", [
    (dict(amount=-1), "amount is -1, expected whole fen"),
    (dict(amount=2 ** 32), "amount is 4294967296"),
    (dict(obu=b""), "needs the OBU id"),
    (dict(kind=TxKind.REFUSAL), "not 'refusal'"),
    (dict(tx_id="not-a-uuid"), "tx_id 'not-a-uuid' is not a UUID"),
])
def test_a_malformed_intent_is_refused_before_anything_is_written(journal, bad, fragment):
    with pytest.raises(JournalError, match=fragment):
        journal.record_intent(intent(**bad), at(0))
    assert journal.last_seq() == 0


def test_an_event_kind_must_not_pose_as_a_charge(journal):
    with pytest.raises(JournalError, match="event kind 'exit_charge'"):
        journal.record_event("exit_charge", at(0))


def test_a_missing_row_and_a_closed_journal_are_named(db):
    j = Journal.open(db, "L1", now=T0)
    with pytest.raises(JournalError, match="lane L1 has no transaction seq 9"):
        j.complete_charge(9, b5(), at(0))
    j.close()
    with pytest.raises(JournalError, match="journal is closed"):
        j.record_event("alarm", at(1))


# -- opening --------------------------------------------------------------------------------------------

def test_one_lane_one_process(journal, db):
    with pytest.raises(JournalError, match="in use by another laned process"):
        Journal.open(db, "G0001-0201-03", now=T0)


def test_a_fresh_file_gets_the_current_schema_and_a_newer_one_is_refused(db):
    Journal.open(db, "L1", now=T0).close()
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == journal_mod.SCHEMA_VERSION
        raw.execute("PRAGMA user_version = 99")
    with pytest.raises(JournalError, match="schema version 99, newer than this laned understands"):
        Journal.open(db, "L1", now=T0)


# -- reading --------------------------------------------------------------------------------------------

def test_the_re_detection_window_finds_a_recent_charge_by_obu_or_card(journal):
    paid = journal.record_intent(intent(), at(0))
    journal.complete_charge(paid.seq, b5(), at(0.3))
    journal.record_refusal(Observed(obu_id=bytes(4), card_network="3701", card_number="9" * 16),
                           "insufficient_balance", at(1))
    assert journal.charged_within(obu_id=OBU, since=at(-300)).seq == paid.seq
    # the card moved to another OBU: still recognised
    assert journal.charged_within(obu_id=bytes(4), card_key="".join(CARD), since=at(-300)).seq == paid.seq
    assert journal.charged_within(obu_id=OBU, since=at(1)) is None  # outside the window
    assert journal.charged_within(card_key="3701" + "9" * 16, since=at(-300)) is None  # refused, never paid
    assert [e.seq for e in journal.paid_since(at(-300))] == [paid.seq]


def test_iter_since_yields_every_row_after_a_position_in_order(journal, monkeypatch):
    monkeypatch.setattr(journal_mod.store, "BATCH", 2)  # cross several batches (iter_since reads it there)
    for i in range(5):
        journal.record_event("alarm", at(i), detail=f"#{i}")
    assert [e.seq for e in journal.iter_since(0)] == [1, 2, 3, 4, 5]
    assert [e.detail for e in journal.iter_since(3)] == ["#3", "#4"]
    assert list(journal.iter_since(5)) == []


def test_counters_for_laned_status(journal):
    for n in range(2):
        journal.complete_charge(journal.record_intent(intent(amount=1000 + n), at(n)).seq, b5(tac=bytes([n] * 4)), at(n))
    journal.record_intent(intent(), at(5))
    journal.record_refusal(Observed(), "obu_listed", at(6))
    c = journal.counters()
    assert (c["charged"], c["intent"], c["refused"], c["charged_fen"], c["last_seq"]) == (2, 1, 1, 2001, 4)


def test_entries_show_card_and_plate_masked_but_store_them_in_full(journal):
    e = journal.record_intent(intent(), at(0))
    for text in (repr(e), repr(intent()), str(e.masked())):
        assert "2301000012345678" not in text and "鲁A12345" not in text
        assert "3701************5678" in text and "鲁A*****" in text
    assert e.card_key == "37012301000012345678" and e.as_dict()["plate"] == "鲁A12345"


# -- with the lane machine and the executor -------------------------------------------------------------

def lane_with_journal(db, wall: dt.datetime, *, seed_window: float | None = None):
    """A lane on a real journal: the machine, the executor and a frame builder feeding it."""
    j = Journal.open(db, LaneSettings().lane_id, now=wall)
    port = MachineJournal(j)
    recent = port.recent_paid(seed_window, wall, 100.0) if seed_window else None
    machine = LaneMachine(LaneSettings(), Dialect(get_profile("national")), fees=Fees(), recent=recent)
    sent: list[str] = []

    class Rsu:
        def send_nowait(self, message, reply_to=None):
            sent.append(message.type_name)

    ex = LaneExecutor(machine, Rsu(), None, None, port, monotonic=lambda: 100.0, wall=lambda: wall)
    rsu = Lane()  # builds the RSU frames; they go straight into the executor
    rsu.feed = lambda event: ex.handle(event) or []
    return j, rsu, sent


def test_the_executor_journals_a_charge_through_the_machine_journal(db):
    j, rsu, sent = lane_with_journal(db, dt.datetime(2026, 11, 22, 10, 0, 0))
    rsu.pay()
    assert sent == ["C1", "C1", "C6", "C1"]
    (e,) = j.iter_since(0)
    assert (e.state, e.amount, e.b5.tac, e.plate, e.message) == \
        (TxState.CHARGED, 3500, bytes.fromhex("fe12ff34"), "鲁A12345", "欢迎通行 一路顺风")
    assert (e.entry_station, e.fee_table_version, e.card_network) == ("3701-0102", 7, "3701")
    j.close()


def test_after_a_restart_an_obu_that_paid_is_let_through_not_charged_again(db):
    wall = dt.datetime(2026, 11, 22, 10, 0, 0)
    j, rsu, _ = lane_with_journal(db, wall)
    rsu.pay()
    j.close()  # laned restarts 20 s later; the vehicle is still in front of the barrier
    later = wall + dt.timedelta(seconds=20)
    with Journal.open(db, LaneSettings().lane_id, now=later) as probe:
        seeded = MachineJournal(probe).recent_paid(300, later, 100.0)
    assert [(p.obu_id, p.seq, p.at) for p in seeded] == [(OBU, 1, 80.0)]  # paid 20 s before monotonic 100
    j, rsu, sent = lane_with_journal(db, later, seed_window=300)
    rsu.b2()
    assert sent == ["C2"]  # no C6: let through on its record
    assert [(e.kind, e.state) for e in j.iter_since(1)] == [("paid_on_record", TxState.EVENT)]
    assert j.counters()["charged"] == 1
    j.close()


def test_a_charge_the_card_never_debited_ends_refused_and_reconciled(tmp_path):
    import datetime as _dt

    from laned.journal import Journal, MachineJournal, TxState
    from tests.lane_harness import Lane

    lane = Lane(auto_journal=False)
    lane.advance(4.0)
    lane.b2(), lane.b3()
    intent = [a for a in lane.b4() if type(a).__name__ == "JournalIntent"][0]
    now = _dt.datetime(2026, 11, 22, 10, 0, 5)
    with Journal.open(tmp_path / "j.db", intent.record["lane_id"], now=now) as store:
        mj = MachineJournal(store)
        seq = mj.record_intent(intent.record, now)
        mj.not_charged(seq, "not debited: B5 error 17", now)
        entry = store.get(seq)
        assert entry.state is TxState.REFUSED and entry.reconciled
