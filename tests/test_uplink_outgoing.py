"""The outbox encodes journal rows straight to their contract form (laned/uplink/messages/
outgoing.py). What it publishes must be exactly what ``TransactionMsg.from_entry`` would have
said, to the byte: the centre recognises a row sent twice by its text."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest

from laned.journal.records import B5Result, JournalEntry, TxKind, TxState
from laned.uplink.contract import ContractError, validate
from laned.uplink.messages import (
    TransactionBatchOut, TransactionMsg, TransactionOut, compact_json, outbox_messages, transaction_messages,
    transaction_payload,
)
from laned.uplink.messages.codec import _json_fields
from laned.uplink.messages.outgoing import _B5_MEMBERS, _ROW_MEMBERS, _TEXT_MEMBERS
from tests.test_uplink_contract import LANE, _journal_rows


def _long_way(entry: JournalEntry) -> dict:
    return TransactionMsg.from_entry(entry).to_dict()


def _entry(**changes) -> JournalEntry:
    base = JournalEntry(seq=5, uuid="6f1c3f0e-2a4b-4c1d-9a57-3e0b8d1c2f44", lane_id=LANE, kind="exit_charge",
                        state=TxState.CHARGED, reconciled=False, created_iso="2024-11-22T09:30:12.014+08:00",
                        created_unix=1732239012.014, updated_iso="2024-11-22T09:30:12.181+08:00",
                        updated_unix=1732239012.181, obu_id=b"\xa1\xfe\x00\x33", plate="鲁A12345",
                        contract_start=dt.date(2023, 1, 1), plate_colour=0, card_network="3701",
                        card_number="2301000012345678", amount=3500, purchase_time=dt.datetime(2024, 11, 22, 9, 30, 12),
                        b5=B5Result(tac=bytes.fromhex("674030a0"), balance_after=96500,
                                    trans_time=dt.datetime(2024, 11, 22, 9, 30, 12, 500000)),
                        reason="charged", message="欢迎通行")
    return dataclasses.replace(base, **changes)


def test_every_kind_of_journal_row_is_encoded_exactly_as_the_transaction_message_says(tmp_path):
    rows = _journal_rows(tmp_path)
    assert {r.state for r in rows} == set(TxState) - {TxState.INTENT}
    for entry in rows:
        payload = transaction_payload(entry)
        assert payload == _long_way(entry)
        assert compact_json(payload) == TransactionMsg.from_entry(entry).to_json()  # same members, same order
        validate("Transaction", payload)


def test_the_short_way_reads_the_members_in_the_transaction_messages_order():
    sent = [name for name, _ in _json_fields(TransactionMsg)]
    head = ["lane_id", "seq", "tx_uuid", "kind", "state", "reconcile_required", "reconciled", "created_at", "updated_at"]
    assert sent == head + list(_ROW_MEMBERS + _B5_MEMBERS + _TEXT_MEMBERS)


def test_a_row_updated_later_than_it_was_created_carries_both_times():
    payload = transaction_payload(_entry())
    assert (payload["created_at"], payload["updated_at"]) == ("2024-11-22T09:30:12.014+08:00",
                                                              "2024-11-22T09:30:12.181+08:00")
    assert payload["trans_time"] == "2024-11-22T09:30:12.500"
    assert payload == _long_way(_entry())


@pytest.mark.parametrize("changes", [
    {"kind": TxKind.FOLLOW_CAR, "state": TxState.EVENT, "b5": None},  # an enum for a kind
    {"plate_colour": True},  # a bool where a number goes
    {"amount": 35.0},  # a float where the journal keeps integers
    {"created_iso": "2024-11-22T09:30:12", "created_unix": 1732239012.0},  # a stamp without a zone: UTC
], ids=["enum-kind", "bool-number", "float-amount", "naive-stamp"])
def test_a_row_holding_what_the_short_way_does_not_know_is_encoded_the_long_way_alike(changes):
    entry = _entry(**changes)
    assert transaction_payload(entry) == _long_way(entry)
    assert compact_json(transaction_payload(entry)) == compact_json(_long_way(entry))


@pytest.mark.parametrize(("changes", "path"), [
    ({"state": TxState.INTENT}, "$.state"),  # not final: never sent
    ({"purchase_time": dt.datetime(2024, 11, 22, 9, 30, 12, tzinfo=dt.UTC)}, "$.purchase_time"),  # a lane time has no zone
    ({"contract_start": dt.datetime(2023, 1, 1, 0, 0)}, "$.contract_start"),  # a time where a date goes
], ids=["intent", "aware-lane-time", "datetime-for-date"])
def test_a_row_the_contract_cannot_carry_is_refused_as_the_transaction_message_refuses_it(changes, path):
    entry = _entry(**changes)
    with pytest.raises(ContractError) as long_way:
        _long_way(entry)
    with pytest.raises(ContractError) as short_way:
        transaction_payload(entry)
    assert short_way.value.path == long_way.value.path == path


def test_the_outbox_groups_rows_as_transaction_messages_does_and_publishes_the_same_text(tmp_path):
    rows = _journal_rows(tmp_path)  # seqs ascending: one run
    live = rows[-1]
    for batch_max in (1, 2, 3, 64):
        ordered = [live, *rows[:-1]]  # a live row ahead of the backlog ends a run
        encoded = list(outbox_messages(ordered, batch_max))
        reference = transaction_messages([TransactionMsg.from_entry(e) for e in ordered], batch_max)
        assert [m.to_json() for m in encoded] == [m.to_json() for m in reference]
        assert [m.MESSAGE for m in encoded] == [m.MESSAGE for m in reference]
        assert sum(m.rows() for m in encoded) == len(ordered)
        for m in encoded:
            validate(m.MESSAGE, m.to_dict())
    single, batch = next(outbox_messages([live], 64)), next(outbox_messages(rows[:3], 64))
    assert isinstance(single, TransactionOut) and single.MESSAGE == "Transaction"
    assert isinstance(batch, TransactionBatchOut) and batch.seqs() == [r.seq for r in rows[:3]]


def test_an_encoded_message_never_shows_a_plate_or_card_in_its_repr(tmp_path):
    rows = _journal_rows(tmp_path)
    for m in [*outbox_messages(rows, 64), *outbox_messages(rows[:1], 64)]:
        text = repr(m)
        assert "鲁A12345" not in text and "2301000012345678" not in text and str(rows[0].seq) in text


def test_an_encoded_message_is_only_sent_and_cannot_be_decoded_as_one(tmp_path):
    (single,) = outbox_messages(_journal_rows(tmp_path)[:1], 64)
    with pytest.raises(TypeError, match="only sent"):
        TransactionOut.from_json(single.to_json())
    assert TransactionMsg.from_json(single.to_json()).seq == single.seqs()[0]  # what a receiver does


async def test_a_window_of_overdue_rows_is_encoded_as_it_is_published_a_message_per_turn_of_the_loop(
        tmp_path, monkeypatch):
    """2,048 rows overdue at once (the centre stopped acking) are encoded message by message
    between the event loop's other work, not all before the first is published: a vehicle's
    frames wait for one batch (~1 ms), not the window (~35 ms)."""
    import asyncio
    from types import SimpleNamespace

    from laned.uplink import streams
    from laned.uplink.link import LinkSettings, LinkStats, Session
    from laned.uplink.messages import outgoing

    base = _entry()
    rows = [dataclasses.replace(base, seq=i + 1) for i in range(2048)]
    encoded = [0]
    real_payload = outgoing.transaction_payload

    def counted(entry):
        encoded[0] += 1
        return real_payload(entry)

    monkeypatch.setattr(outgoing, "transaction_payload", counted)
    published: list[bytes] = []
    paho = SimpleNamespace(publish=lambda topic, payload, qos, retain, props: (
        published.append(payload), SimpleNamespace(rc=0))[1])
    settings = LinkSettings(lane_id=LANE, host="broker", port=8883, ca=tmp_path / "ca.pem", cert=tmp_path / "c.pem",
                            key=tmp_path / "c.key")
    session = Session(SimpleNamespace(_client=paho), settings, LinkStats())
    stream = streams.tx_stream(2048, batch_max=64)
    per_turn: list[int] = []

    async def loop_turns() -> None:
        seen = 0
        while True:
            await asyncio.sleep(0)
            per_turn.append(encoded[0] - seen)
            seen = encoded[0]

    watcher = asyncio.create_task(loop_turns())
    await asyncio.sleep(0)
    await session.publish_all(stream.messages(rows))
    watcher.cancel()
    assert encoded[0] == 2048 and len(published) == 32
    assert max(per_turn) <= 64, f"{max(per_turn)} rows encoded in one turn of the loop"
