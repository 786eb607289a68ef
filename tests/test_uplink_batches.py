"""Several transactions in one message (topic ``tx/batch``): how the outbox groups its rows,
and what a receiver refuses. The rows are the Transactions ``tx`` carries, acked by seq."""

from __future__ import annotations

import copy
import datetime as dt
import uuid
from typing import Any

import pytest

from laned.centre.acks import Batch
from laned.uplink.contract import ContractError, contract, validate
from laned.uplink.messages import TransactionBatch, TransactionMsg, transaction_messages

LANE = "G0001-0201-03"


def row(seq: int, lane: str = LANE) -> TransactionMsg:
    payload: dict[str, Any] = copy.deepcopy(dict(contract().messages["Transaction"]["examples"][0]["payload"]))
    payload.update(lane_id=lane, seq=seq, tx_uuid=str(uuid.UUID(int=seq)))
    return TransactionMsg.from_dict(payload)


def shape(messages: list[TransactionMsg | TransactionBatch]) -> list[int | list[int]]:
    """A single row as its seq, a batch as the list of its seqs."""
    return [[t.seq for t in m.transactions] if isinstance(m, TransactionBatch) else m.seq for m in messages]


def test_a_backlog_goes_up_in_batches_of_at_most_batch_max_and_a_lone_row_goes_alone():
    rows = [row(seq) for seq in range(1, 12)]
    assert shape(transaction_messages(rows, 4)) == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11]]
    assert shape(transaction_messages(rows[:1], 4)) == [1]
    assert shape(transaction_messages(rows[:5], 4)) == [[1, 2, 3, 4], 5]


def test_a_live_row_ahead_of_the_backlog_is_not_held_back_in_the_backlogs_batch():
    live, backlog = row(900), [row(seq) for seq in range(5, 9)]
    assert shape(transaction_messages([live, *backlog], 64)) == [900, [5, 6, 7, 8]]


def test_with_batch_max_1_every_row_goes_alone_on_tx_and_a_batch_max_past_the_contract_is_refused():
    rows = [row(seq) for seq in (3, 4, 5)]
    assert shape(transaction_messages(rows, 1)) == [3, 4, 5]
    for bad in (0, TransactionBatch.MAX_ROWS + 1):
        with pytest.raises(ValueError, match="batch_max"):
            transaction_messages(rows, bad)
    assert contract().document["components"]["schemas"]["TransactionBatch"]["properties"]["transactions"][
        "maxItems"] == TransactionBatch.MAX_ROWS


def test_each_row_of_a_batch_is_exactly_the_transaction_tx_would_carry():
    rows = [row(seq) for seq in (7, 8, 10)]  # seq 9 an intent still: not sent, the batch skips it
    (batch,) = transaction_messages(rows, 64)
    payload = batch.to_dict()
    validate("TransactionBatch", payload)
    assert payload["transactions"] == [r.to_dict() for r in rows]
    assert TransactionBatch.from_json(batch.to_json()) == batch


@pytest.mark.parametrize("change, path, reason", [
    (lambda t: t.reverse(), "$.transactions[1].seq", "2 does not ascend (the row before has seq 3)"),
    (lambda t: t.append(dict(t[2])), "$.transactions[3].seq", "3 does not ascend"),  # a row twice
    (lambda t: t[2].update(lane_id="G0009-01"), "$.transactions[2].lane_id", "'G0009-01' in a batch of lane"),
    (lambda t: t[0].update(tx_uuid="not-a-uuid"), "$.transactions[0].tx_uuid", "not-a-uuid"),
    (lambda t: t[1].pop("seq"), "$.transactions[1].seq", "required member is missing"),
    (lambda t: t.clear(), "$.transactions", "should be non-empty"),
])
def test_a_batch_breaking_a_rule_is_refused_naming_the_row_and_member(change, path, reason):
    payload = {"lane_id": LANE, "transactions": [r.to_dict() for r in (row(1), row(2), row(3))]}
    change(payload["transactions"])
    with pytest.raises(ContractError) as refused:
        TransactionBatch.from_dict(payload)
    assert refused.value.path == path and reason in refused.value.reason


def test_a_batch_over_the_contracts_size_is_refused():
    rows = [row(seq).to_dict() for seq in range(1, TransactionBatch.MAX_ROWS + 2)]
    with pytest.raises(ContractError) as refused:
        TransactionBatch.from_dict({"lane_id": LANE, "transactions": rows})
    assert refused.value.path == "$.transactions"


def test_the_centres_commit_batch_counts_a_messages_rows_not_the_message():
    batch: Batch[str] = Batch(max_items=500, max_delay_s=0.05)
    batch.add("a tx/batch of 64", 0.0, rows=64)
    assert not batch.due(0.01)
    for n in range(7):
        batch.add(f"batch {n}", 0.01, rows=64)
    assert batch.rows == 512 and batch.due(0.01)  # full: committed before its 50 ms are up
    assert len(batch.take()) == 8 and batch.rows == 0 and batch.deadline() is None
    assert dt.timedelta(seconds=batch.max_delay_s) == dt.timedelta(milliseconds=50)
