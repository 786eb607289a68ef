"""The reference centre's ledger, without a broker: what it stores, what it drops, what it
keeps aside, which seqs it finds missing, and how it acknowledges (laned/centre)."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from laned.centre.acks import Batch, acks
from laned.centre.ledger import Ledger, StoreOutcome
from laned.centre.reconcile import AutoReconcile, auto_answer
from laned.centre.seqranges import SeqRange, SeqSet, coalesce
from laned.uplink.contract import contract, validate
from laned.uplink.messages import AckStream, ReconcileOutcome, ReconcileResult, TransactionMsg

LANE = "G0001-0201-03"
NOW = dt.datetime(2024, 11, 22, 9, 45, tzinfo=dt.timezone(dt.timedelta(hours=8)))


def example(name: str, message: str = "Transaction") -> dict[str, Any]:
    for ex in contract().messages[message]["examples"]:
        if ex["name"] == name:
            return copy.deepcopy(dict(ex["payload"]))
    raise KeyError(name)


def tx(seq: int, *, tx_uuid: str | None = None, name: str = "exit_charge", lane: str = LANE,
       **changes: Any) -> TransactionMsg:
    payload = example(name)
    payload.update(lane_id=lane, seq=seq, tx_uuid=tx_uuid or str(uuid.UUID(int=seq)), **changes)
    return TransactionMsg.from_dict(payload)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    with Ledger(tmp_path / "centre.db") as opened:
        yield opened


# -- storing ---------------------------------------------------------------------------------------

def test_a_new_transaction_is_stored_and_counted(ledger: Ledger) -> None:
    assert ledger.store_transaction(tx(1), NOW) is StoreOutcome.NEW
    counts = ledger.counts(LANE)
    assert (counts.received, counts.stored, counts.duplicates_dropped, counts.conflicts) == (1, 1, 0, 0)
    assert ledger.transaction(LANE, 1) == tx(1)


def test_the_same_row_delivered_again_is_a_duplicate_dropped_and_counted(ledger: Ledger) -> None:
    ledger.store_transaction(tx(1), NOW)
    assert ledger.store_transactions([tx(1), tx(1)], NOW) == [StoreOutcome.DUPLICATE, StoreOutcome.DUPLICATE]
    counts = ledger.counts(LANE)
    assert (counts.received, counts.stored, counts.duplicates_dropped) == (3, 1, 2)


def test_an_unknown_outcome_settled_later_replaces_the_stored_state_and_is_no_duplicate(ledger: Ledger) -> None:
    unknown = tx(7, name="unknown_outcome")
    assert ledger.store_transaction(unknown, NOW) is StoreOutcome.NEW
    assert [p.seq for p in ledger.pending_reconciliations(LANE)] == [7]
    settled = tx(7, name="unknown_outcome", state="charged", reconcile_required=False, reconciled=True,
                 tac="5e2f8c01", updated_at="2024-11-23T02:15:01.120+08:00")
    assert ledger.store_transaction(settled, NOW) is StoreOutcome.UPDATED
    assert ledger.transaction(LANE, 7) == settled
    counts = ledger.counts(LANE)
    assert (counts.stored, counts.updated, counts.duplicates_dropped) == (1, 1, 0)
    # A late copy of the old unknown row does not put the old state back.
    assert ledger.store_transaction(unknown, NOW) is StoreOutcome.DUPLICATE
    assert ledger.transaction(LANE, 7) == settled


def test_the_ledger_says_which_stored_seqs_it_holds_as_unknown_so_the_ack_can_name_them(ledger: Ledger) -> None:
    unknown = tx(7, name="unknown_outcome")
    settled = tx(7, name="unknown_outcome", state="charged", reconcile_required=False, reconciled=True,
                 tac="5e2f8c01", updated_at="2024-11-23T02:15:01.120+08:00")
    outcomes, held = ledger.store_transactions_held([tx(6), unknown, tx(8)], NOW)
    assert outcomes == [StoreOutcome.NEW] * 3 and held == {LANE: {7}}
    # The unknown copy and the settled one in the same batch: the settled one is held.
    assert ledger.store_transactions_held([unknown, settled], NOW)[1] == {}
    # A late copy of the unknown row after the settled one: a duplicate, and not unknown.
    assert ledger.store_transactions_held([unknown], NOW) == ([StoreOutcome.DUPLICATE], {})


def test_the_same_seq_with_another_uuid_is_a_conflict_kept_aside_never_overwriting(ledger: Ledger) -> None:
    first = tx(5)
    other = tx(5, tx_uuid="11111111-2222-4333-8444-555555555555", amount=9900)
    ledger.store_transaction(first, NOW)
    assert ledger.store_transaction(other, NOW) is StoreOutcome.CONFLICT
    assert ledger.transaction(LANE, 5) == first
    assert ledger.conflicts(LANE) == [(5, other.tx_uuid, first.tx_uuid)]
    assert ledger.counts(LANE).conflicts == 1


def test_lanes_do_not_share_seqs(ledger: Ledger) -> None:
    assert ledger.store_transactions([tx(1), tx(1, lane="G0001-0201-04")], NOW) == [StoreOutcome.NEW] * 2
    assert ledger.lanes() == [LANE, "G0001-0201-04"]


def test_what_was_stored_survives_reopening_and_the_gaps_are_rebuilt(tmp_path: Path) -> None:
    with Ledger(tmp_path / "c.db") as first:
        first.store_transactions([tx(s) for s in (1, 2, 3, 6, 9)], NOW)
    with Ledger(tmp_path / "c.db") as again:
        assert again.gaps(LANE) == [SeqRange(4, 5), SeqRange(7, 8)]
        assert again.store_transaction(tx(6), NOW) is StoreOutcome.DUPLICATE


def test_the_ledger_lists_rows_with_plates_and_cards_masked_on_request(ledger: Ledger) -> None:
    ledger.store_transaction(tx(1), NOW)
    (row,) = ledger.transactions(LANE)
    assert (row.plate, row.card_number) == ("鲁A12345", "37012301000012345678")
    masked = row.masked()
    assert masked.plate == "鲁A*****" and masked.card_number == "3701************5678"


# -- gaps -----------------------------------------------------------------------------------------

def test_gaps_are_the_missing_seqs_below_the_highest_as_ranges(ledger: Ledger) -> None:
    ledger.store_transactions([tx(s) for s in (2, 3, 4, 8, 10)], NOW)
    assert ledger.gaps(LANE) == [SeqRange(1, 1), SeqRange(5, 7), SeqRange(9, 9)]
    assert ledger.counts(LANE).missing == 5


def test_out_of_order_arrival_closes_the_gaps(ledger: Ledger) -> None:
    for seq in (5, 1, 3, 2, 4):
        ledger.store_transaction(tx(seq), NOW)
    assert ledger.gaps(LANE) == []
    assert ledger.highest_seq(LANE) == 5


def test_a_conflict_or_duplicate_does_not_fill_a_gap_twice(ledger: Ledger) -> None:
    ledger.store_transactions([tx(1), tx(3), tx(3), tx(3, tx_uuid=str(uuid.uuid4()))], NOW)
    assert ledger.gaps(LANE) == [SeqRange(2, 2)]


def test_gap_detection_over_100k_seqs_in_random_order_matches_a_plain_set() -> None:
    rng = random.Random(10)
    seqs = list(range(1, 100_001))
    rng.shuffle(seqs)
    held = seqs[: 99_000]  # 1,000 seqs never arrive
    detector = SeqSet()
    for seq in held:
        detector.add(seq)
    expected_missing = sorted(set(range(1, max(held) + 1)) - set(held))
    assert [s for r in detector.gaps() for s in range(r.first, r.last + 1)] == expected_missing
    assert detector.gaps() == coalesce(expected_missing)
    assert len(detector) == len(held)


def test_100k_rows_in_one_ledger_gaps_from_sql_agree_with_the_live_detector(tmp_path: Path) -> None:
    missing = {17, 18, 19, 50_000, 99_999}
    template = tx(1, name="follow_car")  # built once through the contract; the copies differ in seq and uuid
    rows = [dataclasses.replace(template, seq=s, tx_uuid=str(uuid.UUID(int=s))) for s in range(1, 100_001)
            if s not in missing]
    # As the service stores them: with the JSON as received (here: the template's, re-numbered).
    text = template.to_json()
    payloads = [text.replace(f'"seq":1,"tx_uuid":"{template.tx_uuid}"', f'"seq":{r.seq},"tx_uuid":"{r.tx_uuid}"')
                for r in rows]
    assert TransactionMsg.from_json(payloads[-1]) == rows[-1]
    with Ledger(tmp_path / "big.db") as ledger:
        for start in range(0, len(rows), 5000):
            ledger.store_transactions(rows[start:start + 5000], NOW, payloads[start:start + 5000])
        live = ledger.gaps(LANE)
    with Ledger(tmp_path / "big.db") as reopened:
        assert reopened.gaps(LANE) == live == [SeqRange(17, 19), SeqRange(50_000, 50_000), SeqRange(99_999, 99_999)]


def test_the_watermark_is_the_contiguous_prefix() -> None:
    detector = SeqSet([SeqRange(1, 10), SeqRange(12, 20)])
    assert detector.watermark == 10
    detector.add(11)
    assert detector.watermark == 20 and detector.gaps() == []


# -- acknowledgements --------------------------------------------------------------------------------

def test_acks_coalesce_contiguous_seqs_into_ranges_that_validate() -> None:
    made = acks(LANE, AckStream.TX, [5, 3, 4, 9, 10, 3, 12], NOW)
    assert [(a.first_seq, a.last_seq) for a in made] == [(3, 5), (9, 10), (12, 12)]
    for ack in made:
        validate("TxAck", ack.to_dict())


def test_an_ack_names_the_seqs_of_its_range_the_centre_holds_as_unknown() -> None:
    made = acks(LANE, AckStream.TX, [3, 4, 5, 9, 10, 12], NOW, unknown={4, 10})
    assert [(a.first_seq, a.last_seq, a.unknown_seqs) for a in made] == [(3, 5, (4,)), (9, 10, (10,)),
                                                                          (12, 12, None)]
    for ack in made:
        validate("TxAck", ack.to_dict())
    assert "unknown_seqs" not in made[-1].to_dict()  # omitted, not an empty list


def test_a_run_naming_more_unknown_seqs_than_the_contract_allows_is_cut_into_acks_that_validate(monkeypatch) -> None:
    import laned.centre.acks as acks_module

    monkeypatch.setattr(acks_module, "UNKNOWN_SEQS_MAX", 2)
    made = acks(LANE, AckStream.TX, range(1, 11), NOW, unknown={2, 3, 5, 7, 10})
    assert [(a.first_seq, a.last_seq, a.unknown_seqs) for a in made] == [(1, 4, (2, 3)), (5, 9, (5, 7)),
                                                                          (10, 10, (10,))]
    monkeypatch.undo()
    bound = contract().document["components"]["schemas"]["TxAck"]["properties"]["unknown_seqs"]["maxItems"]
    assert acks_module.UNKNOWN_SEQS_MAX == bound
    made = acks(LANE, AckStream.TX, range(1, 3 * bound + 1), NOW, unknown=range(1, 3 * bound + 1))
    assert [len(a.unknown_seqs or ()) for a in made] == [bound] * 3
    for ack in made:
        validate("TxAck", ack.to_dict())


def test_a_batch_is_due_after_its_delay_or_when_full() -> None:
    batch: Batch[int] = Batch(max_items=3, max_delay_s=0.05)
    assert not batch.due(100.0) and batch.deadline() is None
    batch.add(1, 100.0)
    assert not batch.due(100.01) and batch.due(100.05)
    batch.add(2, 100.02)
    batch.add(3, 100.03)
    assert batch.due(100.03)  # full before its time
    assert batch.take() == [1, 2, 3] and batch.deadline() is None


# -- reconciliation ---------------------------------------------------------------------------------

def test_auto_reconcile_answers_validate_and_charged_carries_evidence() -> None:
    unknown = tx(1843, name="unknown_outcome")
    assert auto_answer(unknown, AutoReconcile.OFF, NOW) is None
    not_charged = auto_answer(unknown, AutoReconcile.NOT_CHARGED, NOW)
    charged = auto_answer(unknown, AutoReconcile.CHARGED, NOW)
    assert not_charged is not None and charged is not None
    validate("ReconcileAnswer", not_charged.to_dict())
    validate("ReconcileAnswer", charged.to_dict())
    assert charged.outcome is ReconcileOutcome.CHARGED and charged.tac is not None and charged.amount == 1500
    assert auto_answer(tx(1), AutoReconcile.CHARGED, NOW) is None  # a charged row needs no answer


def test_an_answer_is_repeated_until_the_lane_reports_its_result(ledger: Ledger) -> None:
    unknown = tx(1843, name="unknown_outcome")
    ledger.store_transaction(unknown, NOW)
    reply = auto_answer(unknown, AutoReconcile.NOT_CHARGED, NOW)
    assert reply is not None
    assert ledger.record_answer(reply, "operator")
    assert not ledger.record_answer(reply, "operator")  # the first answer stands
    assert [d.answer_id for d in ledger.answers_due(1000.0, 60)] == [reply.answer_id]
    ledger.mark_answer_sent(reply.answer_id, 1000.0)
    assert ledger.answers_due(1030.0, 60) == []
    assert [d.answer_id for d in ledger.answers_due(1060.0, 60)] == [reply.answer_id]
    result = ReconcileResult.from_dict(example("applied_centre_answer", "ReconcileResult")
                                       | {"lane_id": LANE, "outcome": "not_charged", "answer_id": reply.answer_id})
    assert ledger.store_reconcile_results([result], NOW) == [StoreOutcome.NEW]
    assert ledger.store_reconcile_results([result], NOW) == [StoreOutcome.DUPLICATE]
    assert ledger.answers_due(9999.0, 60) == []
    assert ledger.pending_reconciliations(LANE) == []
    (row,) = ledger.transactions(LANE)
    assert row.settled == "not_charged by centre (applied)"


def test_command_seqs_only_go_up(ledger: Ledger) -> None:
    assert [ledger.next_command_seq(LANE) for _ in range(3)] == [1, 2, 3]
    assert ledger.next_command_seq(LANE, at_least=58) == 58
    assert ledger.next_command_seq(LANE) == 59
