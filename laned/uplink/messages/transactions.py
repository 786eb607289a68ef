"""Transactions and their reconciliation: the journal rows the lane sends (topic ``tx``),
the centre's acknowledgements (``tx/ack``) and answers on unknown outcomes (``reconcile``),
and how each unknown outcome was settled (``reconcile/result``)."""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass, field
from collections.abc import Sequence
from typing import ClassVar, Protocol, TypeVar

from laned.journal.records import B5Result, JournalEntry, ReconcileRecord, TxState
from laned.journal.records import ReconcileOutcome as ReconcileOutcome
from laned.journal.records import ReconcileStatus as ReconcileStatus
from laned.journal.records import SettledBy as SettledBy
from laned.masking import mask_card, mask_plate
from laned.uplink.contract import ContractError
from laned.uplink.messages.codec import LANE_TIME, UplinkMessage, _check_uuid, _Invalid

# -- codes ----------------------------------------------------------------------------------------


class AckStream(enum.StrEnum):
    TX = "tx"  # transactions (topic tx)
    RECONCILE = "reconcile"  # reconciliation results (topic reconcile/result)


# ReconcileOutcome, SettledBy and ReconcileStatus are the journal's codes (it stores them);
# re-exported here, where the messages carrying them live.


# -- messages --------------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class TransactionMsg(UplinkMessage):
    """One journal row for the centre (topic ``tx``): full plate and card number (billing)."""

    MESSAGE: ClassVar[str] = "Transaction"

    lane_id: str
    seq: int
    tx_uuid: str
    kind: str
    state: TxState
    reconcile_required: bool
    reconciled: bool
    created_at: dt.datetime
    updated_at: dt.datetime
    obu_id: bytes | None = None
    issuer: bytes | None = None
    obu_serial: bytes | None = None
    contract_start: dt.date | None = None
    contract_expiry: dt.date | None = None
    obu_status: bytes | None = None
    plate: str | None = None
    plate_colour: int | None = None
    vehicle_class: int | None = None
    card_network: str | None = None
    card_number: str | None = None
    card_type: int | None = None
    balance_before: int | None = None
    entry_station: str | None = None
    fee: int | None = None
    fee_table_version: int | None = None
    status_list_version: int | None = None
    amount: int | None = None
    purchase_time: dt.datetime | None = field(default=None, metadata=LANE_TIME)
    tac: bytes | None = None
    psam_no: bytes | None = None
    psam_trans_serial: int | None = None
    icc_pay_serial: int | None = None
    trans_type: int | None = None
    balance_after: int | None = None
    trans_time: dt.datetime | None = field(default=None, metadata=LANE_TIME)
    reason: str | None = None
    message: str | None = None
    detail: str | None = None

    def __repr__(self) -> str:  # plates and card numbers masked, as every log line
        plate = None if self.plate is None else mask_plate(self.plate)
        card = None if self.card_number is None else mask_card((self.card_network or "") + self.card_number)
        return (f"TransactionMsg(lane_id={self.lane_id!r}, seq={self.seq}, kind={self.kind!r}, "
                f"state={str(self.state)!r}, plate={plate!r}, card={card!r}, amount={self.amount!r})")

    @classmethod
    def from_entry(cls, entry: JournalEntry) -> TransactionMsg:
        """The message for a journal row. An intent is not final and is never sent."""
        if entry.state is TxState.INTENT:
            raise ContractError(cls.MESSAGE, [("$.state", f"seq {entry.seq} is an intent: it goes up once "
                                                          "its outcome is known")])
        b5 = entry.b5
        return cls(
            lane_id=entry.lane_id, seq=entry.seq, tx_uuid=entry.uuid, kind=str(entry.kind), state=entry.state,
            reconcile_required=entry.state is TxState.UNKNOWN, reconciled=entry.reconciled,
            created_at=_absolute(entry.created_iso, entry.created_unix),
            updated_at=_absolute(entry.updated_iso, entry.updated_unix),
            obu_id=entry.obu_id, issuer=entry.issuer, obu_serial=entry.obu_serial,
            contract_start=entry.contract_start, contract_expiry=entry.contract_expiry, obu_status=entry.obu_status,
            plate=entry.plate, plate_colour=entry.plate_colour, vehicle_class=entry.vehicle_class,
            card_network=entry.card_network, card_number=entry.card_number, card_type=entry.card_type,
            balance_before=entry.balance_before, entry_station=entry.entry_station, fee=entry.fee,
            fee_table_version=entry.fee_table_version, status_list_version=entry.status_list_version,
            amount=entry.amount, purchase_time=entry.purchase_time,
            tac=b5.tac if b5 else None, psam_no=b5.psam_no if b5 else None,
            psam_trans_serial=b5.psam_trans_serial if b5 else None,
            icc_pay_serial=b5.icc_pay_serial if b5 else None, trans_type=b5.trans_type if b5 else None,
            balance_after=b5.balance_after if b5 else None, trans_time=b5.trans_time if b5 else None,
            reason=entry.reason, message=entry.message, detail=entry.detail,
        )

    def _check(self) -> None:
        _check_uuid(self.tx_uuid, "$.tx_uuid")


@dataclass(frozen=True, kw_only=True)
class TransactionBatch(UplinkMessage):
    """Consecutive journal rows in one message (topic ``tx/batch``): what the outbox sends
    when more than one row is ready at once. Each row is acked by its own ``seq`` as on
    ``tx``; the batch only saves the per-message cost (a backlog of 100,000 rows)."""

    MESSAGE: ClassVar[str] = "TransactionBatch"
    MAX_ROWS: ClassVar[int] = 256  # the contract's maxItems

    lane_id: str
    transactions: tuple[TransactionMsg, ...]

    def __repr__(self) -> str:
        seqs = [t.seq for t in self.transactions]
        return (f"TransactionBatch(lane_id={self.lane_id!r}, rows={len(seqs)}, "
                f"seqs={seqs[0] if seqs else None}…{seqs[-1] if seqs else None})")

    def _check(self) -> None:
        previous = 0
        for i, row in enumerate(self.transactions):
            where = f"$.transactions[{i}]"
            if row.lane_id != self.lane_id:
                raise _Invalid(f"{where}.lane_id", f"{row.lane_id!r} in a batch of lane {self.lane_id!r}")
            if row.seq <= previous:
                raise _Invalid(f"{where}.seq", f"{row.seq} does not ascend (the row before has seq {previous})")
            previous = row.seq
            _check_uuid(row.tx_uuid, f"{where}.tx_uuid")

    def rows(self) -> int:
        return len(self.transactions)


class _Row(Protocol):
    @property
    def seq(self) -> int: ...
    @property
    def lane_id(self) -> str: ...


RowT = TypeVar("RowT", bound=_Row)


def transaction_runs(rows: Sequence[RowT], batch_max: int) -> list[list[RowT]]:
    """``rows`` in the messages they go out in, in the same order: each run of ascending
    seqs of one lane cut into batches of at most ``batch_max`` rows (a run of one row goes
    alone, on ``tx``). Live rows ahead of the backlog end a run, so they are not held back
    behind it."""
    if not 1 <= batch_max <= TransactionBatch.MAX_ROWS:
        raise ValueError(f"batch_max is {batch_max!r}, expected 1–{TransactionBatch.MAX_ROWS} rows")
    runs: list[list[RowT]] = []
    for row in rows:
        run = runs[-1] if runs else None
        if run is None or len(run) >= batch_max or row.seq <= run[-1].seq or row.lane_id != run[-1].lane_id:
            runs.append([row])
        else:
            run.append(row)
    return runs


def transaction_messages(rows: Sequence[TransactionMsg], batch_max: int) -> list[TransactionMsg | TransactionBatch]:
    """``rows`` as they go out (:func:`transaction_runs`): a batch per run, a run of one alone."""
    return [run[0] if len(run) == 1 else TransactionBatch(lane_id=run[0].lane_id, transactions=tuple(run))
            for run in transaction_runs(rows, batch_max)]


def _absolute(iso: str, unix: float) -> dt.datetime:
    """The journal's stamp as an absolute time: as written if it has an offset, else from the
    Unix time (UTC) — a naive stamp says nothing about its zone."""
    stamp = dt.datetime.fromisoformat(iso)
    return stamp if stamp.utcoffset() is not None else dt.datetime.fromtimestamp(unix, dt.UTC)


@dataclass(frozen=True, kw_only=True)
class TxAck(UplinkMessage):
    """The centre stored ``first_seq`` … ``last_seq`` of a stream (topic ``tx/ack``).

    ``unknown_seqs`` (stream ``tx`` only): the seqs of the range the centre holds as an
    unknown outcome. A lane whose copy of such a row in flight is settled knows the ack is
    for an older copy (one the broker kept for it across an outage) and keeps the settled
    copy waiting for its own ack."""

    MESSAGE: ClassVar[str] = "TxAck"

    lane_id: str
    stream: AckStream
    first_seq: int
    last_seq: int
    acked_at: dt.datetime | None = None
    unknown_seqs: tuple[int, ...] | None = None

    def covers(self, seq: int) -> bool:
        return self.first_seq <= seq <= self.last_seq

    def _check(self) -> None:
        if self.last_seq < self.first_seq:
            raise _Invalid("$.last_seq", f"{self.last_seq} is below first_seq {self.first_seq}")
        if self.unknown_seqs is None:
            return
        if self.stream is not AckStream.TX:
            raise _Invalid("$.unknown_seqs", f"only an ack of stream tx names unknown outcomes, this is of "
                                             f"stream {self.stream}")
        for i, seq in enumerate(self.unknown_seqs):
            if not self.covers(seq):
                raise _Invalid(f"$.unknown_seqs[{i}]", f"{seq} is outside the acked range "
                                                       f"{self.first_seq}…{self.last_seq}")


@dataclass(frozen=True, kw_only=True)
class ReconcileAnswer(UplinkMessage):
    """The centre's answer on a transaction sent as unknown (topic ``reconcile``)."""

    MESSAGE: ClassVar[str] = "ReconcileAnswer"

    lane_id: str
    answer_id: str
    seq: int
    tx_uuid: str
    outcome: ReconcileOutcome
    decided_at: dt.datetime
    tac: bytes | None = None
    amount: int | None = None
    balance_after: int | None = None
    trans_time: dt.datetime | None = field(default=None, metadata=LANE_TIME)
    psam_no: bytes | None = None
    psam_trans_serial: int | None = None
    detail: str | None = None

    def to_b5(self) -> B5Result:
        """The evidence of a ``charged`` answer as the journal keeps it (``resolve_unknown``)."""
        if self.outcome is not ReconcileOutcome.CHARGED or self.tac is None:
            raise ContractError(self.MESSAGE, [("$.outcome", f"{self.outcome}: only a charged answer has a TAC")])
        return B5Result(tac=self.tac, psam_no=self.psam_no, psam_trans_serial=self.psam_trans_serial,
                        balance_after=self.balance_after, trans_time=self.trans_time)

    def _check(self) -> None:
        _check_uuid(self.answer_id, "$.answer_id")
        _check_uuid(self.tx_uuid, "$.tx_uuid")


@dataclass(frozen=True, kw_only=True)
class ReconcileResult(UplinkMessage):
    """How an unknown outcome the centre has seen was settled (topic ``reconcile/result``)."""

    MESSAGE: ClassVar[str] = "ReconcileResult"

    lane_id: str
    seq: int
    tx_uuid: str
    outcome: ReconcileOutcome
    settled_by: SettledBy
    result: ReconcileStatus
    at: dt.datetime
    answer_id: str | None = None
    tac: bytes | None = None
    detail: str | None = None

    @classmethod
    def from_record(cls, record: ReconcileRecord) -> ReconcileResult:
        """The message for one result of the journal's ``reconcile/result`` stream.

        On the wire ``seq`` is the *transaction's* seq (``record.tx_seq``): the centre keeps
        one result per transaction and acks them by it (``tx/ack``, ``stream: reconcile``).
        The journal's own numbering of results (``record.seq``) stays on the lane.
        """
        return cls(lane_id=record.lane_id, seq=record.tx_seq, tx_uuid=record.tx_uuid, outcome=record.outcome,
                   settled_by=record.settled_by, result=record.result, at=_absolute(record.at_iso, record.at_unix),
                   answer_id=record.answer_id, tac=record.tac, detail=record.detail)

    def _check(self) -> None:
        _check_uuid(self.tx_uuid, "$.tx_uuid")
        if self.answer_id is not None:
            _check_uuid(self.answer_id, "$.answer_id")
