"""Journal rows in their contract form, as the outbox publishes them.

A backlog after an outage is 100,000 rows and more, and every row is encoded on the lane's
event loop while vehicles pay. Building a :class:`TransactionMsg` per row and encoding it
member by member cost ~34 µs a row; :func:`transaction_payload` writes the same JSON object
straight from the journal row in ~10 µs. It is exactly
``TransactionMsg.from_entry(entry).to_dict()`` (the tests compare the two on every kind of
row): a row holding anything the short way does not know goes the long way.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import operator
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar, Self

from laned.journal.records import JournalEntry, Observed, TxState
from laned.uplink.messages.codec import UplinkMessage, _iso
from laned.uplink.messages.transactions import TransactionBatch, TransactionMsg, _absolute, transaction_runs

# Members read from the journal row itself (Observed's, then the amount and purchase time), from
# its B5 result, and last the outcome's words: TransactionMsg's order, so the JSON is the same.
_ROW_MEMBERS: tuple[str, ...] = (*(f.name for f in dataclasses.fields(Observed)), "amount", "purchase_time")
_B5_MEMBERS = ("tac", "psam_no", "psam_trans_serial", "icc_pay_serial", "trans_type", "balance_after", "trans_time")
_TEXT_MEMBERS = ("reason", "message", "detail")
_row_values = operator.attrgetter(*_ROW_MEMBERS)
_b5_values = operator.attrgetter(*_B5_MEMBERS)
_text_values = operator.attrgetter(*_TEXT_MEMBERS)
_LANE_TIMES = frozenset({"purchase_time", "trans_time"})  # naive on purpose (LANE_TIME)


class _LongWay(Exception):
    """A member the short way does not encode: TransactionMsg does it (or says what is wrong)."""


def _member(out: dict[str, Any], name: str, value: Any) -> None:
    kind = type(value)
    if kind is str or kind is int:
        out[name] = value
    elif kind is bytes:
        out[name] = value.hex()
    elif kind is dt.date:
        out[name] = value.isoformat()
    elif kind is dt.datetime and value.tzinfo is None and name in _LANE_TIMES:
        out[name] = _iso(value)
    else:  # a bool or an enum in a number, an aware lane time, a datetime for a date…
        raise _LongWay(name)


def transaction_payload(entry: JournalEntry) -> dict[str, Any]:
    """``TransactionMsg.from_entry(entry).to_dict()``, without building the message."""
    state = entry.state
    if (state is TxState.INTENT or type(entry.kind) is not str or type(entry.reconciled) is not bool
            or type(entry.lane_id) is not str or type(entry.seq) is not int or type(entry.uuid) is not str):
        return TransactionMsg.from_entry(entry).to_dict()  # refused there, or encoded the long way
    created = _iso(_absolute(entry.created_iso, entry.created_unix))
    updated = (created if entry.updated_iso == entry.created_iso and entry.updated_unix == entry.created_unix
               else _iso(_absolute(entry.updated_iso, entry.updated_unix)))
    out: dict[str, Any] = {
        "lane_id": entry.lane_id, "seq": entry.seq, "tx_uuid": entry.uuid, "kind": entry.kind, "state": state.value,
        "reconcile_required": state is TxState.UNKNOWN, "reconciled": entry.reconciled,
        "created_at": created, "updated_at": updated,
    }
    try:
        for name, value in zip(_ROW_MEMBERS, _row_values(entry)):
            if value is not None:
                _member(out, name, value)
        b5 = entry.b5
        if b5 is not None:
            for name, value in zip(_B5_MEMBERS, _b5_values(b5)):
                if value is not None:
                    _member(out, name, value)
        for name, value in zip(_TEXT_MEMBERS, _text_values(entry)):
            if value is not None:
                _member(out, name, value)
    except _LongWay:
        return TransactionMsg.from_entry(entry).to_dict()
    return out


@dataclasses.dataclass(frozen=True)
class EncodedRows(UplinkMessage):
    """Consecutive journal rows of one lane, already in their contract form (``payloads``):
    one alone goes on ``tx`` (:class:`TransactionOut`), more in one ``tx/batch``
    (:class:`TransactionBatchOut`). Only sent, never received: the centre decodes
    :class:`TransactionMsg` and :class:`TransactionBatch`."""

    lane_id: str
    payloads: tuple[dict[str, Any], ...]

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        raise TypeError(f"{cls.__name__} is only sent: a receiver decodes {TransactionMsg.__name__} "
                        f"or {TransactionBatch.__name__}")

    def rows(self) -> int:
        return len(self.payloads)

    def seqs(self) -> list[int]:
        return [p["seq"] for p in self.payloads]

    def __repr__(self) -> str:  # never the payloads: they hold plates and card numbers
        seqs = self.seqs()
        return f"{type(self).__name__}(lane_id={self.lane_id!r}, rows={len(seqs)}, seqs={seqs[0]}…{seqs[-1]})"


class TransactionOut(EncodedRows):
    MESSAGE: ClassVar[str] = TransactionMsg.MESSAGE

    def to_dict(self) -> dict[str, Any]:
        (payload,) = self.payloads
        return payload


class TransactionBatchOut(EncodedRows):
    MESSAGE: ClassVar[str] = TransactionBatch.MESSAGE

    def to_dict(self) -> dict[str, Any]:
        return {"lane_id": self.lane_id, "transactions": list(self.payloads)}


def outbox_messages(entries: Sequence[JournalEntry], batch_max: int) -> Iterator[EncodedRows]:
    """The messages that carry ``entries``, grouped as :func:`transaction_messages` groups
    :class:`TransactionMsg` values (same runs, same order), each row encoded once.

    One message at a time, as the caller takes it: ``Session.publish_all`` lets the event
    loop run between messages, and a window of overdue rows (2,048, ~35 ms to encode here)
    must not be encoded all in one turn of the loop while a vehicle waits for its C6."""
    runs = transaction_runs(entries, batch_max)  # a bad batch_max is refused here, at the call
    return (_encoded(run) for run in runs)


def _encoded(run: Sequence[JournalEntry]) -> EncodedRows:
    if len(run) == 1:
        return TransactionOut(lane_id=run[0].lane_id, payloads=(transaction_payload(run[0]),))
    return TransactionBatchOut(lane_id=run[0].lane_id, payloads=tuple(transaction_payload(e) for e in run))
