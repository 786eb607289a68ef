"""The journal as the outbox to the centre: delivered only when the centre's ack names a row,
a changed row goes up again, the centre's answers on unknown outcomes settle them once, and
the executed-command ledger shares the action's SQLite transaction (schema version 2)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import sqlite3
import uuid

import pytest

from laned.journal import (
    MIGRATIONS, B5Result, Journal, JournalError, MachineJournal, Observed, ReconcileOutcome, ReconcileStatus,
    SettledBy, TransactionIntent, TxKind, TxState,
)
from laned.journal.outbox import BACKLOG_SQL, RECONCILE_BACKLOG_SQL
from laned.uplink import contract as contract_mod
from laned.uplink.commands import CommandLedger
from laned.uplink.messages import ReconcileResult

LANE = "G0001-0201-03"
T0 = dt.datetime(2026, 11, 22, 10, 0, 0, tzinfo=dt.UTC)
OBU = bytes.fromhex("a1fe33ff")
TAC = bytes.fromhex("fe12ff34")
OTHER_TAC = bytes.fromhex("0badc0de")


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def intent(amount: int = 3500) -> TransactionIntent:
    return TransactionIntent(obu_id=OBU, card_network="3701", card_number="2301000012345678", plate="鲁A12345",
                             amount=amount, purchase_time=dt.datetime(2026, 11, 22, 10, 0, 0))


def b5(tac: bytes = TAC) -> B5Result:
    return B5Result(tac=tac, psam_no=bytes.fromhex("370100000001"), psam_trans_serial=2, balance_after=119956,
                    trans_time=dt.datetime(2026, 11, 22, 10, 0, 0))


@pytest.fixture
def db(tmp_path):
    return tmp_path / "journal.db"


@pytest.fixture
def journal(db):
    with Journal.open(db, LANE, now=T0) as j:
        yield j


def seqs(rows) -> list[int]:
    return [r.seq for r in rows]


def unknown_row(journal: Journal, t: float = 1) -> int:
    seq = journal.record_intent(intent(), at(t)).seq
    journal.mark_unknown(seq, "no B5 within 1.1 s", at(t + 1))
    return seq


# -- the schema ----------------------------------------------------------------------------------------

def _v1_file(path) -> None:
    """A journal as the previous release (schema 1) left it: a charge, a refusal, an event, an intent."""
    con = sqlite3.connect(path)
    for statement in MIGRATIONS[0].split(";\n"):
        if statement.strip():
            con.execute(statement)
    con.execute("INSERT INTO lane_counter (lane_id, last_seq) VALUES (?, 4)", (LANE,))
    stamp = (T0.isoformat(), T0.timestamp(), T0.isoformat(), T0.timestamp())
    rows = [(1, "exit_charge", "charged", TAC.hex()), (2, "refusal", "refused", None), (3, "follow_car", "event", None),
            (4, "exit_charge", "intent", None)]
    for seq, kind, state, tac in rows:
        con.execute("INSERT INTO transactions (lane_id, seq, uuid, kind, state, created_iso, created_unix, "
                    "updated_iso, updated_unix, obu_id, amount, tac) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (LANE, seq, str(uuid.uuid4()), kind, state, *stamp, OBU.hex(), 3500, tac))
    con.execute("PRAGMA user_version = 1")
    con.commit()
    con.close()


def test_a_v1_journal_is_migrated_and_every_row_of_it_goes_up_once_more(db):
    _v1_file(db)
    with Journal.open(db, LANE, now=at(5)) as j:
        waiting = j.outbox_after(0, 100)
        assert j.recovery.unknown == (4,)  # the intent a crash left, flagged for reconciliation
        assert [(e.seq, e.state) for e in waiting] == [(1, TxState.CHARGED), (2, TxState.REFUSED),
                                                       (3, TxState.EVENT), (4, TxState.UNKNOWN)]
        assert waiting[0].b5 is not None and waiting[0].b5.tac == TAC
        assert j.outbox_backlog().count == 4
        assert j.record_event("alarm", at(6)).seq == 5  # the counter carried over
    with sqlite3.connect(db) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == 2


def test_the_outbox_queries_read_the_backlog_index_not_the_whole_history(journal):
    """At 140,000 waiting rows (7 days of a busy lane) the count is a scan of the partial index."""
    con = journal._con
    with journal.batch("loading a week of rows"):
        con.executemany("INSERT INTO transactions (lane_id, seq, uuid, kind, state, created_iso, created_unix, "
                        "updated_iso, updated_unix) VALUES (?, ?, ?, 'follow_car', 'event', ?, ?, ?, ?)",
                        ((LANE, s, str(uuid.UUID(int=s)), T0.isoformat(), T0.timestamp() + s, T0.isoformat(),
                          T0.timestamp() + s) for s in range(1, 140_001)))
        con.execute("UPDATE lane_counter SET last_seq = 140000 WHERE lane_id = ?", (LANE,))
    assert journal.outbox_ack(1, 40_000, at(1)) == 40_000
    backlog = journal.outbox_backlog()
    assert (backlog.count, backlog.oldest_seq) == (100_000, 40_001)
    assert backlog.oldest_unix == T0.timestamp() + 40_001

    executed: list[str] = []
    con.set_trace_callback(executed.append)
    try:
        journal.outbox_backlog()
        assert seqs(journal.outbox_after(90_000, 3)) == [90_001, 90_002, 90_003]
    finally:
        con.set_trace_callback(None)
    selects = [s for s in executed if s.lstrip().upper().startswith("SELECT") and "transactions" in s
               and "acked_unix" in s]
    assert len(selects) == 2
    for sql in [*selects, BACKLOG_SQL.replace("?", repr(LANE))]:
        plan = " ".join(str(row[-1]) for row in con.execute(f"EXPLAIN QUERY PLAN {sql}"))
        assert "transactions_outbox" in plan, (sql, plan)
    plan = " ".join(str(r[-1]) for r in con.execute(f"EXPLAIN QUERY PLAN {RECONCILE_BACKLOG_SQL}", (LANE,)))
    assert "reconcile_results_outbox" in plan


# -- the transaction stream -----------------------------------------------------------------------------

def test_an_intent_is_skipped_not_waited_for_and_goes_up_once_it_resolves(journal):
    first = journal.record_event(TxKind.FOLLOW_CAR, at(1)).seq
    charge = journal.record_intent(intent(), at(2)).seq
    after = journal.record_refusal(Observed(obu_id=OBU), "insufficient_balance", at(3)).seq
    assert seqs(journal.outbox_after(0, 10)) == [first, after]
    journal.complete_charge(charge, b5(), at(4))
    assert seqs(journal.outbox_after(0, 10)) == [first, charge, after]
    assert seqs(journal.outbox_after(first, 1)) == [charge]


def test_a_row_is_delivered_only_once_the_centre_acks_it_and_an_ack_repeated_changes_nothing(journal):
    rows = [journal.record_event(TxKind.FOLLOW_CAR, at(i)).seq for i in range(5)]
    pending = journal.record_intent(intent(), at(9)).seq
    assert journal.outbox_backlog().count == 5
    assert journal.outbox_ack(rows[0], pending, at(10)) == 5  # the intent in the range is not marked
    assert journal.outbox_ack(rows[0], pending, at(11)) == 0
    assert journal.outbox_after(0, 10) == []
    assert journal.get(rows[0]).acked_unix == at(10).timestamp()
    assert journal.get(pending).acked_unix is None


def test_an_ack_naming_seqs_the_lane_never_journalled_marks_what_exists(journal):
    seq = journal.record_event(TxKind.FOLLOW_CAR, at(1)).seq
    assert journal.outbox_ack(seq, seq + 1000, at(2)) == 1
    assert journal.outbox_ack(seq + 1, seq + 1000, at(3)) == 0
    with pytest.raises(JournalError, match="last_seq is below first_seq"):
        journal.outbox_ack(5, 4, at(3))


@pytest.mark.parametrize("settle", [
    lambda j, s: j.resolve_unknown(s, b5(), at(20)),
    lambda j, s: j.resolve_not_charged(s, "C8: no such transaction", at(20)),
], ids=["charged by C8", "not charged"])
def test_an_unknown_row_the_centre_acked_goes_up_again_once_it_is_settled(journal, settle):
    seq = unknown_row(journal)
    assert journal.outbox_ack(seq, seq, at(10)) == 1
    assert journal.outbox_after(0, 10) == []
    settle(journal, seq)
    (again,) = journal.outbox_after(0, 10)
    assert (again.seq, again.uuid, again.reconciled, again.acked_unix) == (seq, journal.get(seq).uuid, True, None)
    assert again.state in (TxState.CHARGED, TxState.REFUSED)


def test_an_ack_of_the_copy_sent_before_the_row_changed_leaves_the_new_state_in_the_outbox(journal):
    seq = unknown_row(journal)
    journal.resolve_unknown(seq, b5(), at(5))  # settled while the unknown copy was in flight
    assert journal.outbox_ack(seq, seq, at(6), sent={seq: "unknown"}) == 0
    assert seqs(journal.outbox_after(0, 10)) == [seq]
    assert journal.outbox_ack(seq, seq, at(7), sent={seq: "charged"}) == 1
    assert journal.outbox_after(0, 10) == []


# -- the centre's answers ------------------------------------------------------------------------------------

def answer(journal: Journal, seq: int, outcome: ReconcileOutcome, *, tac: bytes | None = TAC,
           answer_id: str | None = None, tx_uuid: str | None = None, t: float = 30):
    return journal.settle_from_centre(
        seq=seq, tx_uuid=tx_uuid or journal.get(seq).uuid, outcome=outcome, answer_id=answer_id or str(uuid.uuid4()),
        b5=b5(tac) if outcome is ReconcileOutcome.CHARGED else None, now=at(t))


def test_the_centre_answering_charged_completes_the_unknown_row_and_records_it(journal):
    seq = unknown_row(journal)
    journal.outbox_ack(seq, seq, at(10))
    record = answer(journal, seq, ReconcileOutcome.CHARGED)
    row = journal.get(seq)
    assert (row.state, row.reconciled, row.b5.tac, row.acked_unix) == (TxState.CHARGED, True, TAC, None)
    assert (record.result, record.settled_by, record.outcome, record.tx_seq, record.seq, record.tac) == (
        ReconcileStatus.APPLIED, SettledBy.CENTRE, ReconcileOutcome.CHARGED, seq, 1, TAC)
    assert journal.reconcile_after(0, 10) == [record]
    assert journal.outbox_backlog().reconcile_count == 1
    payload = ReconcileResult.from_record(record).to_dict()
    contract_mod.validate("ReconcileResult", payload)
    assert (payload["seq"], payload["tx_uuid"], payload["tac"]) == (seq, row.uuid, TAC.hex())


def test_the_centre_answering_not_charged_makes_the_unknown_row_refused(journal):
    seq = unknown_row(journal)
    record = answer(journal, seq, ReconcileOutcome.NOT_CHARGED)
    row = journal.get(seq)
    assert (row.state, row.reconciled, row.b5) == (TxState.REFUSED, True, None)
    assert (record.result, record.outcome, record.tac) == (ReconcileStatus.APPLIED, ReconcileOutcome.NOT_CHARGED, None)
    contract_mod.validate("ReconcileResult", ReconcileResult.from_record(record).to_dict())


def test_a_redelivered_answer_returns_the_first_result_and_records_nothing(journal):
    seq = unknown_row(journal)
    answer_id = str(uuid.uuid4())
    first = answer(journal, seq, ReconcileOutcome.CHARGED, answer_id=answer_id)
    row = journal.get(seq)
    again = answer(journal, seq, ReconcileOutcome.CHARGED, answer_id=answer_id, t=99)
    assert again == first and again.result is ReconcileStatus.APPLIED
    assert journal.reconcile_results(seq) == [first]
    assert journal.get(seq) == row


def test_an_answer_for_a_seq_the_lane_does_not_have_is_reported_and_changes_nothing(journal):
    seq = unknown_row(journal)
    before = journal.get(seq)
    missing = answer(journal, seq + 50, ReconcileOutcome.CHARGED, tx_uuid=str(uuid.uuid4()))
    other = answer(journal, seq, ReconcileOutcome.NOT_CHARGED, tx_uuid=str(uuid.uuid4()))
    assert missing.result is other.result is ReconcileStatus.UNKNOWN_SEQ
    assert "is transaction" in (other.detail or "")
    assert journal.get(seq) == before
    contract_mod.validate("ReconcileResult", ReconcileResult.from_record(missing).to_dict())


@pytest.mark.parametrize("setup, outcome, tac, held", [
    # charged on the lane with one TAC, the centre names another
    (lambda j, s: j.resolve_unknown(s, b5(), at(5)), ReconcileOutcome.CHARGED, OTHER_TAC, ReconcileOutcome.CHARGED),
    # the lane kept a B5 result (record_b5) the centre says never debited
    (lambda j, s: j.record_b5(s, b5(), at(5)), ReconcileOutcome.NOT_CHARGED, None, ReconcileOutcome.CHARGED),
    # the lane settled it as not charged, the centre says charged
    (lambda j, s: j.resolve_not_charged(s, "C8: no such transaction", at(5)), ReconcileOutcome.CHARGED, TAC,
     ReconcileOutcome.NOT_CHARGED),
], ids=["another TAC", "TAC held against not charged", "refused against charged"])
def test_an_answer_contradicting_the_journal_is_a_conflict_and_leaves_the_row_as_it_was(journal, setup, outcome, tac,
                                                                                        held):
    seq = unknown_row(journal)
    setup(journal, seq)
    before = journal.get(seq)
    record = answer(journal, seq, outcome, tac=tac)
    assert (record.result, record.outcome, record.settled_by) == (ReconcileStatus.CONFLICT, held, SettledBy.LANE)
    assert journal.get(seq) == before
    contract_mod.validate("ReconcileResult", ReconcileResult.from_record(record).to_dict())


def test_an_answer_agreeing_with_a_row_already_settled_is_already_settled(journal):
    seq = unknown_row(journal)
    journal.resolve_unknown(seq, b5(), at(5))
    before = journal.get(seq)
    record = answer(journal, seq, ReconcileOutcome.CHARGED)
    assert (record.result, record.settled_by, record.tac) == (ReconcileStatus.ALREADY_SETTLED, SettledBy.LANE, TAC)
    assert journal.get(seq) == before
    refused = unknown_row(journal, t=40)
    answer(journal, refused, ReconcileOutcome.NOT_CHARGED, t=41)
    again = answer(journal, refused, ReconcileOutcome.NOT_CHARGED, t=42)  # a second answer id, the same verdict
    assert (again.result, again.settled_by) == (ReconcileStatus.ALREADY_SETTLED, SettledBy.CENTRE)


def test_a_charged_answer_without_its_tac_is_refused(journal):
    seq = unknown_row(journal)
    with pytest.raises(JournalError, match="TAC evidence"):
        journal.settle_from_centre(seq=seq, tx_uuid=journal.get(seq).uuid, outcome=ReconcileOutcome.CHARGED,
                                   answer_id=str(uuid.uuid4()), b5=None, now=at(9))
    assert journal.get(seq).state is TxState.UNKNOWN and journal.reconcile_results(seq) == []


# -- the lane settling on its own -------------------------------------------------------------------------

def test_a_c8_settlement_of_a_row_the_centre_holds_as_unknown_is_reported_as_settled_by_the_lane(journal):
    seq = unknown_row(journal)
    journal.outbox_ack(seq, seq, at(10))
    journal.resolve_unknown(seq, b5(), at(11))
    (record,) = journal.reconcile_results(seq)
    assert (record.settled_by, record.result, record.outcome, record.answer_id, record.tac) == (
        SettledBy.LANE, ReconcileStatus.APPLIED, ReconcileOutcome.CHARGED, None, TAC)
    contract_mod.validate("ReconcileResult", ReconcileResult.from_record(record).to_dict())


def test_an_unknown_row_completed_at_start_up_from_its_kept_b5_is_reported_too(journal, db):
    seq = unknown_row(journal)
    journal.outbox_ack(seq, seq, at(10))
    journal.record_b5(seq, b5(), at(11))  # the result was kept; laned stopped before applying it
    journal.close()
    with Journal.open(db, LANE, now=at(20)) as again:
        assert again.recovery.completed == (seq,)
        (record,) = again.reconcile_results(seq)
        assert (record.settled_by, record.outcome, record.tac) == (SettledBy.LANE, ReconcileOutcome.CHARGED, TAC)
        assert seqs(again.outbox_after(0, 10)) == [seq]


def test_a_row_settled_before_the_centre_acked_it_goes_up_settled_without_a_result(journal):
    seq = unknown_row(journal)
    journal.resolve_unknown(seq, b5(), at(11))
    assert journal.reconcile_results(seq) == []
    assert journal.outbox_after(0, 10)[0].state is TxState.CHARGED
    # the lane's own "B5 error: never debited" path (intent → unknown → refused in one commit)
    lane = MachineJournal(journal)
    other = journal.record_intent(intent(), at(12)).seq
    lane.not_charged(other, "B5 error: card refused the debit", at(13))
    assert journal.reconcile_results(other) == []


def test_a_newer_result_of_a_transaction_supersedes_the_one_still_waiting(journal):
    seq = unknown_row(journal)
    journal.outbox_ack(seq, seq, at(10))
    journal.resolve_unknown(seq, b5(), at(11))  # settled by the lane: result 1
    late = answer(journal, seq, ReconcileOutcome.CHARGED)  # the centre's answer crossed it: result 2
    assert late.result is ReconcileStatus.ALREADY_SETTLED
    assert journal.reconcile_after(0, 10) == [late]
    assert journal.reconcile_ack(seq, seq, at(40), sent={seq: "1"}) == 0  # an ack of the superseded copy
    assert journal.reconcile_ack(seq, seq, at(41), sent={seq: str(late.seq)}) == 1
    assert journal.reconcile_after(0, 10) == [] and journal.outbox_backlog().reconcile_count == 0
    assert journal.reconcile_ack(seq, seq, at(42)) == 0


# -- the command ledger ---------------------------------------------------------------------------------------

def test_the_journal_is_the_command_ledger_and_a_command_is_recorded_with_its_action_or_not_at_all(journal, db):
    assert isinstance(journal, CommandLedger)
    assert (journal.executed("c-1"), journal.highest_seq(), journal.command_result("c-1")) == (False, None, None)
    with journal.batch("closing ETC by command c-1"):
        journal.record_event("etc_closed", at(1), reason="command")
        journal.record_command("c-1", 7, "close_etc", '{"status": "ok"}', at(1))
    with pytest.raises(RuntimeError), journal.batch("opening ETC by command c-2"):
        journal.record_event("etc_opened", at(2), reason="command")
        journal.record_command("c-2", 8, "open_etc", '{"status": "ok"}', at(2))
        raise RuntimeError("the action failed before the commit")
    assert journal.executed("c-1") and not journal.executed("c-2")
    assert journal.highest_seq() == 7 and journal.command_result("c-1") == '{"status": "ok"}'
    assert [e.kind for e in journal.outbox_after(0, 10)] == ["etc_closed"]
    with pytest.raises(JournalError, match="already recorded"):
        journal.record_command("c-1", 9, "close_etc", "{}", at(3))
    with pytest.raises(JournalError, match="not JSON"):
        journal.record_command("c-3", 9, "close_etc", "ok", at(3))
    journal.close()
    with Journal.open(db, LANE, now=at(4)) as again:
        assert again.executed("c-1") and again.highest_seq() == 7


def test_a_journal_entry_carries_its_ack_time(journal):
    row = journal.record_event(TxKind.FOLLOW_CAR, at(1))
    journal.outbox_ack(row.seq, row.seq, at(2))
    assert journal.get(row.seq) == dataclasses.replace(row, acked_unix=at(2).timestamp())
