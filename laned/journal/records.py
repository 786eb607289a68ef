"""What the journal stores: the kind and state codes and the records that go in and come out.

Plain data, no I/O. Card numbers and plates are kept in full (the centre needs them);
``repr`` and :meth:`Observed.masked` show them masked (``laned.masking``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from laned.masking import mask_card, mask_plate

U32_MAX = 0xFFFF_FFFF  # money is unsigned 32-bit fen on the wire (RSU_PROTOCOL.md)


# -- codes --------------------------------------------------------------------------------------

class TxKind(enum.StrEnum):
    EXIT_CHARGE = "exit_charge"  # C6 debits the card
    ENTRY_WRITE = "entry_write"  # C6 writes the entry record (no toll)
    REFUSAL = "refusal"  # the vehicle was sent to the manual lane
    FOLLOW_CAR = "follow_car"  # a vehicle passed without a transaction (跟车)
    PAID_ON_RECORD = "paid_on_record"  # seen again after paying, let through on its record
    ALARM = "alarm"


CHARGE_KINDS = frozenset({TxKind.EXIT_CHARGE, TxKind.ENTRY_WRITE})


class TxState(enum.StrEnum):
    INTENT = "intent"  # C6 may have gone out; no result yet
    CHARGED = "charged"
    ENTRY_WRITTEN = "entry_written"
    REFUSED = "refused"
    UNKNOWN = "unknown"  # the card may have been debited: reconciliation
    EVENT = "event"  # a lane event, not a charge


class ReconcileOutcome(enum.StrEnum):
    """What the card's issuer says happened to an unknown outcome (topic ``reconcile``)."""

    CHARGED = "charged"
    NOT_CHARGED = "not_charged"


class SettledBy(enum.StrEnum):
    CENTRE = "centre"  # the centre's answer on topic reconcile
    LANE = "lane"  # the TAC re-fetched from the RSU (C8)


class ReconcileStatus(enum.StrEnum):
    APPLIED = "applied"
    ALREADY_SETTLED = "already_settled"
    CONFLICT = "conflict"  # the answer contradicts the journal; not applied
    UNKNOWN_SEQ = "unknown_seq"  # no such row, or its tx_uuid differs


DONE = {TxKind.EXIT_CHARGE: TxState.CHARGED, TxKind.ENTRY_WRITE: TxState.ENTRY_WRITTEN}
# States in which the vehicle has, or may have, paid: the re-detection window covers them.
MAY_HAVE_PAID = (TxState.INTENT, TxState.CHARGED, TxState.ENTRY_WRITTEN, TxState.UNKNOWN)
EVENT_KIND = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


# -- what goes in ---------------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    """JSON-friendly: bytes as hex, times ISO, enums by value, results as dicts."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


@dataclass(frozen=True, kw_only=True, repr=False, slots=True)
class Observed:
    """What B2–B4 said about the OBU, the vehicle and the card, and how the lane priced it."""

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
    entry_station: str | None = None  # "3701-0102", StationRecord.station_key
    fee: int | None = None
    fee_table_version: int | None = None
    status_list_version: int | None = None

    @property
    def card_key(self) -> str | None:
        """Network + card number, as status lists and the re-detection window name a card."""
        if self.card_network is None or self.card_number is None:
            return None
        return self.card_network + self.card_number

    def as_dict(self) -> dict[str, Any]:
        """Every field in full, JSON-friendly (bytes as hex, times ISO) — for the uplink."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def masked(self) -> dict[str, Any]:
        """Every field for people: as :meth:`as_dict`, the card number and plate masked."""
        out = self.as_dict()
        network, number = out.pop("card_network"), out.pop("card_number")
        out["card"] = None if number is None else mask_card((network or "") + number)
        out["plate"] = None if self.plate is None else mask_plate(self.plate)
        return out

    _REPR_FIRST: ClassVar[tuple[str, ...]] = ()

    def __repr__(self) -> str:
        shown = self.masked()
        first = [(k, shown.pop(k)) for k in self._REPR_FIRST]
        rest = [(k, v) for k, v in shown.items() if v is not None]
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in first + rest)})"


@dataclass(frozen=True, kw_only=True, repr=False, slots=True)
class TransactionIntent(Observed):
    """A C6 about to be sent: journalled durably first."""

    kind: TxKind = TxKind.EXIT_CHARGE
    amount: int  # ConsumeMoney in the C6, fen
    purchase_time: dt.datetime  # PurchaseTime in the C6 (the card's TAC covers it): lane time, naive
    tx_id: str | None = None  # the lane machine's transaction id; a new UUID if None


@dataclass(frozen=True, kw_only=True, slots=True)
class B5Result:
    """A successful B5 (or the B5 answering a C8 TAC re-fetch)."""

    tac: bytes
    psam_no: bytes | None = None
    psam_trans_serial: int | None = None
    icc_pay_serial: int | None = None
    trans_type: int | None = None
    balance_after: int | None = None
    trans_time: dt.datetime | None = None


@dataclass(frozen=True, kw_only=True, repr=False, slots=True)
class JournalEntry(Observed):
    """One row of the journal, as stored."""

    seq: int
    uuid: str
    lane_id: str
    kind: str  # a TxKind value; events may carry other kinds
    state: TxState
    reconciled: bool
    created_iso: str
    created_unix: float
    updated_iso: str
    updated_unix: float
    amount: int | None = None
    purchase_time: dt.datetime | None = None
    b5: B5Result | None = None  # the result that completed it
    reason: str | None = None  # outcome code (laned.lane.outcomes.Reason values)
    message: str | None = None  # what the fee display showed
    detail: str | None = None  # why it is unknown, what reconciled it, …
    # When the centre's tx/ack named this version of the row; None while it is in the outbox.
    acked_unix: float | None = None

    _REPR_FIRST = ("seq", "lane_id", "kind", "state")


@dataclass(frozen=True)
class Recovery:
    """What :meth:`Journal.open` found left over from a crash."""

    completed: tuple[int, ...] = ()  # intents/unknowns whose B5 result was journalled
    unknown: tuple[int, ...] = ()  # intents with no result: now unknown, to reconcile (C8)


@dataclass(frozen=True, kw_only=True)
class ReconcileRecord:
    """How an unknown outcome was settled: one row of the lane's ``reconcile/result`` stream.

    ``tx_seq`` and ``tx_uuid`` name the transaction (as the centre's answer named them, for
    ``unknown_seq``); ``tx_seq`` is the message's ``seq`` on the wire, which the centre keys
    and acks results by. ``seq`` is the journal's own numbering of results (1, 2, … per
    lane, never reused): their order, and which of two results of one transaction the
    centre acked. ``outcome`` is what the journal holds now (the centre's outcome when
    nothing matched). ``settled_by`` is the centre for an answer applied or naming no row,
    the lane for a C8 settlement and for a conflict (the lane's record stands, as in the
    contract's example), whoever settled it first for ``already_settled``.
    """

    lane_id: str
    seq: int
    tx_seq: int
    tx_uuid: str
    outcome: ReconcileOutcome
    settled_by: SettledBy
    result: ReconcileStatus
    at_iso: str
    at_unix: float
    answer_id: str | None = None  # the centre's answer; None when the lane settled it (C8)
    tac: bytes | None = None
    detail: str | None = None


@dataclass(frozen=True)
class Backlog:
    """What waits for the centre's ack: final transactions and reconciliation results.

    ``count``/``oldest_*`` are the transaction stream (``tx``); ``reconcile_count`` the
    ``reconcile/result`` stream, counted apart (it is small and never blocks the other).
    """

    count: int
    oldest_seq: int | None
    oldest_unix: float | None  # created_unix of the oldest waiting row: how far behind the centre is
    reconcile_count: int = 0


OBSERVED_FIELDS = tuple(f.name for f in dataclasses.fields(Observed))
B5_FIELDS = tuple(f.name for f in dataclasses.fields(B5Result))
