"""The uplink's messages as typed values: one frozen dataclass per payload of the contract.

Each message class names its contract message (``MESSAGE``) and converts both ways:

* ``to_dict()`` / ``to_json()`` — the payload as the contract writes it: members with no
  value are left out (never ``null``), bytes as hex (base64 where the contract says so),
  times as RFC 3339;
* ``from_dict()`` / ``from_json()`` — check the payload against the contract first
  (:func:`laned.uplink.contract.validate`), then build the value; anything wrong raises
  :class:`~laned.uplink.contract.ContractError` naming the message and the member.

Field names are the contract's member names. Absolute times are aware ``datetime``\\ s;
*lane times* (``purchase_time``, ``trans_time``: the lane's civil time as the card
records it) are naive; building a payload with the wrong kind raises ``ContractError``.

Signed messages (:class:`CommandRequest`, :class:`ListManifest`) keep the payload they
were read from: :meth:`CommandRequest.signed_bytes` is computed from it, not from a
re-encoding (``...00.000+08:00`` and ``...00+08:00`` are the same time but not the same
bytes). Verifying the signature is the caller's business (a trusted key is needed).

Sans-IO: no clock, no socket, no event loop. Times are passed in.
"""

from __future__ import annotations

import base64
import binascii
import copy
import dataclasses
import datetime as dt
import enum
import json
import math
import types
import typing
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from laned.health.alarms import Alarm as RegistryAlarm
from laned.health.alarms import AlarmChange, AlarmKind, Change, Severity
from laned.health.checks import CheckResult, CheckStatus
from laned.journal.records import B5Result, JournalEntry, TxState
from laned.lane.events import Device
from laned.masking import mask_card, mask_plate
from laned.uplink.contract import ContractError, validate

# -- codes ----------------------------------------------------------------------------------------


class AckStream(enum.StrEnum):
    TX = "tx"  # transactions (topic tx)
    RECONCILE = "reconcile"  # reconciliation results (topic reconcile/result)


class ReconcileOutcome(enum.StrEnum):
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


class LaneStatus(enum.StrEnum):
    ONLINE = "online"
    DEGRADED = "degraded"  # connected, ETC closed
    OFFLINE = "offline"


class CommandName(enum.StrEnum):
    CLOSE_ETC = "close_etc"
    OPEN_ETC = "open_etc"
    SHOW_MESSAGE = "show_message"
    RESEND_FROM = "resend_from"
    PUBLISH_HEALTH = "publish_health"
    FETCH_LIST = "fetch_list"
    RAISE_BARRIER = "raise_barrier"  # an operator's remote raise; nothing lowers the barrier remotely


class CommandOutcome(enum.StrEnum):
    EXECUTED = "executed"
    REFUSED = "refused"


class RefusalReason(enum.StrEnum):
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KEY = "unknown_key"  # key_id is not in the lane's trust store
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"  # issued_at in the future beyond the clock tolerance
    REPLAYED = "replayed"  # seq not above the last executed command's
    WRONG_LANE = "wrong_lane"
    MALFORMED = "malformed"  # does not conform to the contract
    NOT_POSSIBLE = "not_possible"  # valid, but the lane cannot do it now (detail says why)


class ListKind(enum.StrEnum):
    STATUS_LIST = "status_list"
    FEE_TABLE = "fee_table"


class ListFormat(enum.StrEnum):
    STATUS_JSON = "laned-status-json-1"  # laned/lane/status_list.py
    FEE_TOML = "laned-fee-toml-1"  # laned/lane/fee_table.py


class Compression(enum.StrEnum):
    NONE = "none"
    GZIP = "gzip"


# -- the codec --------------------------------------------------------------------------------------
# Field metadata: LANE_TIME marks a naive lane time; BASE64 bytes travel as base64, not hex;
# NOT_JSON fields are kept on the value but never sent.

LANE_TIME: Mapping[str, Any] = types.MappingProxyType({"lane_time": True})
BASE64: Mapping[str, Any] = types.MappingProxyType({"base64": True})
NOT_JSON: Mapping[str, Any] = types.MappingProxyType({"json": False})


class _Invalid(Exception):
    def __init__(self, path: str, reason: str) -> None:
        super().__init__(reason)
        self.path, self.reason = path, reason


def _encode(value: Any, meta: Mapping[str, Any], path: str) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Invalid(path, f"{value!r} is not a finite number")
        return value
    if isinstance(value, (str, int)):
        return value
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii") if meta.get("base64") else value.hex()
    if isinstance(value, dt.datetime):
        naive = value.tzinfo is None or value.utcoffset() is None
        if naive != bool(meta.get("lane_time")):
            raise _Invalid(path, "a lane time must be naive (no offset)" if meta.get("lane_time")
                           else "an absolute time needs a time zone (an aware datetime)")
        return _iso(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, tuple):
        return [_encode(v, meta, f"{path}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _encode_fields(value, path)
    raise _Invalid(path, f"cannot encode {type(value).__name__}")


def _iso(value: dt.datetime) -> str:
    """RFC 3339 with as many fraction digits as the value needs: none, 3 or 6."""
    spec = ("seconds" if value.microsecond == 0 else "milliseconds" if value.microsecond % 1000 == 0
            else "microseconds")
    return value.isoformat(timespec=spec)


def _encode_fields(value: Any, path: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(value):
        item = getattr(value, f.name)
        if item is None or f.metadata.get("json") is False:
            continue
        out[f.name] = _encode(item, f.metadata, f"{path}.{f.name}")
    return out


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    found = _HINTS.get(cls)
    if found is None:
        found = _HINTS[cls] = typing.get_type_hints(cls)
    return found


def _decode(tp: Any, value: Any, meta: Mapping[str, Any], path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is types.UnionType or origin is typing.Union:
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(options) != 1:
            raise TypeError(f"{path}: a union of {options} needs its own decoder")
        return _decode(options[0], value, meta, path)
    if origin is tuple:
        (item,) = (a for a in typing.get_args(tp) if a is not Ellipsis)
        return tuple(_decode(item, v, meta, f"{path}[{i}]") for i, v in enumerate(value))
    try:
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            return tp(value)
        if tp is float:
            return float(value)
        if tp is int:  # JSON Schema counts 3.0 as an integer: keep it one here too
            return int(value)
        if tp in (str, bool):
            return value
        if tp is bytes:
            return base64.b64decode(value, validate=True) if meta.get("base64") else bytes.fromhex(value)
        if tp is dt.datetime:
            return dt.datetime.fromisoformat(value)
        if tp is dt.date:
            return dt.date.fromisoformat(value)
    except (ValueError, binascii.Error) as err:
        raise _Invalid(path, f"{value!r}: {err}") from None
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _decode_fields(tp, value, path)
    raise TypeError(f"{path}: no decoder for {tp!r}")


def _decode_fields(cls: type, data: Mapping[str, Any], path: str) -> Any:
    hints = _hints(cls)
    custom: Mapping[str, Callable[[Any, Mapping[str, Any], str], Any]] = getattr(cls, "_DECODERS", {})
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data or f.metadata.get("json") is False:
            continue
        where = f"{path}.{f.name}"
        decoder = custom.get(f.name)
        kwargs[f.name] = (decoder(data[f.name], data, where) if decoder
                          else _decode(hints[f.name], data[f.name], f.metadata, where))
    return cls(**kwargs)


def canonical_json(payload: Mapping[str, Any]) -> bytes:
    """RFC 8785 (JCS) form of a payload without floats: sorted keys, no white space, UTF-8."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class UplinkMessage:
    """Base of the message classes: the conversions to and from the contract's JSON."""

    MESSAGE: ClassVar[str]  # the contract's message name (components.messages)

    def to_dict(self) -> dict[str, Any]:
        try:
            return _encode_fields(self, "$")
        except _Invalid as err:
            raise ContractError(self.MESSAGE, [(err.path, err.reason)]) from None

    def to_json(self) -> str:
        """Compact UTF-8 JSON text, as published."""
        return json.dumps(self.to_dict(), ensure_ascii=False, separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        """Check ``data`` against the contract, then build the value (ContractError if either fails)."""
        validate(cls.MESSAGE, data)
        try:
            made: Self = _decode_fields(cls, data, "$")
            made._check()
        except _Invalid as err:
            raise ContractError(cls.MESSAGE, [(err.path, err.reason)]) from None
        return made

    @classmethod
    def from_json(cls, raw: str | bytes | bytearray) -> Self:
        """Parse a received payload (UTF-8 JSON text) and build the value; see :meth:`from_dict`."""
        try:
            data = json.loads(raw, parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError) as err:
            raise ContractError(cls.MESSAGE, [("$", f"not JSON: {err}")]) from None
        return cls.from_dict(data)

    def _check(self) -> None:
        """Rules that span members (JSON Schema cannot say them); raise _Invalid."""


# -- transactions -------------------------------------------------------------------------------------

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


def _absolute(iso: str, unix: float) -> dt.datetime:
    """The journal's stamp as an absolute time: as written if it has an offset, else from the
    Unix time (UTC) — a naive stamp says nothing about its zone."""
    stamp = dt.datetime.fromisoformat(iso)
    return stamp if stamp.utcoffset() is not None else dt.datetime.fromtimestamp(unix, dt.UTC)


def _check_uuid(value: str, path: str) -> None:
    try:
        uuid.UUID(value)
    except ValueError:
        raise _Invalid(path, f"{value!r} is not a UUID") from None


@dataclass(frozen=True, kw_only=True)
class TxAck(UplinkMessage):
    """The centre stored ``first_seq`` … ``last_seq`` of a stream (topic ``tx/ack``)."""

    MESSAGE: ClassVar[str] = "TxAck"

    lane_id: str
    stream: AckStream
    first_seq: int
    last_seq: int
    acked_at: dt.datetime | None = None

    def covers(self, seq: int) -> bool:
        return self.first_seq <= seq <= self.last_seq

    def _check(self) -> None:
        if self.last_seq < self.first_seq:
            raise _Invalid("$.last_seq", f"{self.last_seq} is below first_seq {self.first_seq}")


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


# -- lane state, health, alarms ---------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class ClosedBy:
    device: Device
    reason: str


LAST_WILL_REASON = "connection lost (last will)"


@dataclass(frozen=True, kw_only=True)
class LaneState(UplinkMessage):
    """Retained lane state (topic ``state``); :meth:`last_will` is the broker's copy."""

    MESSAGE: ClassVar[str] = "LaneState"

    lane_id: str
    state: LaneStatus
    reason: str | None = None
    at: dt.datetime | None = None
    etc_open: bool | None = None
    closed_by: tuple[ClosedBy, ...] | None = None
    software_version: str | None = None

    @classmethod
    def last_will(cls, lane_id: str) -> LaneState:
        """The will registered at CONNECT: no time (its text is fixed before it is needed)."""
        return cls(lane_id=lane_id, state=LaneStatus.OFFLINE, reason=LAST_WILL_REASON)


@dataclass(frozen=True, kw_only=True)
class Check:
    name: str
    status: CheckStatus
    detail: str
    alarm: str | None = None
    value: float | None = None

    @classmethod
    def from_result(cls, result: CheckResult) -> Check:
        return cls(name=result.name, status=result.status, detail=result.detail, alarm=result.alarm,
                   value=None if result.value is None else float(result.value))


@dataclass(frozen=True, kw_only=True)
class ActiveAlarm:
    code: str
    severity: Severity
    raised_at: dt.datetime
    count: int
    detail: str | None = None

    @classmethod
    def from_alarm(cls, alarm: RegistryAlarm) -> ActiveAlarm:
        return cls(code=alarm.code, severity=alarm.severity, raised_at=alarm.raised_at, count=alarm.count,
                   detail=alarm.detail or None)


@dataclass(frozen=True, kw_only=True)
class OutboxState:
    pending: int  # journal rows the centre has not acknowledged
    oldest_pending_seq: int | None = None
    last_acked_seq: int | None = None


@dataclass(frozen=True, kw_only=True)
class HealthSnapshot(UplinkMessage):
    """Periodic health (topic ``health``)."""

    MESSAGE: ClassVar[str] = "HealthSnapshot"

    lane_id: str
    at: dt.datetime
    overall: CheckStatus
    etc_open: bool
    checks: tuple[Check, ...] = ()
    alarms: tuple[ActiveAlarm, ...] = ()
    closed_by: tuple[ClosedBy, ...] | None = None
    outbox: OutboxState | None = None
    software_version: str | None = None
    uptime_s: int | None = None


@dataclass(frozen=True, kw_only=True)
class AlarmMsg(UplinkMessage):
    """An alarm raised or cleared (topic ``alarm``)."""

    MESSAGE: ClassVar[str] = "Alarm"

    lane_id: str
    change: Change
    code: str
    kind: AlarmKind
    severity: Severity
    raised_at: dt.datetime
    at: dt.datetime
    count: int
    total: int
    zh: str
    en: str
    detail: str | None = None
    acknowledged: bool | None = None
    cause: str | None = None

    @classmethod
    def from_change(cls, change: AlarmChange, lane_id: str) -> AlarmMsg:
        a = change.alarm
        return cls(lane_id=lane_id, change=change.change, code=a.code, kind=a.kind, severity=a.severity,
                   raised_at=a.raised_at, at=change.wall, count=a.count, total=a.total, zh=change.zh, en=change.en,
                   detail=a.detail or None, acknowledged=a.acknowledged, cause=change.cause or None)


# -- commands -------------------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class CloseEtcArgs:
    reason: str


@dataclass(frozen=True, kw_only=True)
class OpenEtcArgs:
    reason: str | None = None


@dataclass(frozen=True, kw_only=True)
class ShowMessageArgs:
    line1: str
    duration_s: int
    line2: str | None = None


@dataclass(frozen=True, kw_only=True)
class ResendFromArgs:
    seq: int


@dataclass(frozen=True, kw_only=True)
class PublishHealthArgs:
    pass


@dataclass(frozen=True, kw_only=True)
class FetchListArgs:
    kind: ListKind
    version: int


@dataclass(frozen=True, kw_only=True)
class RaiseBarrierArgs:
    operator: str
    reason: str


CommandArgs = (CloseEtcArgs | OpenEtcArgs | ShowMessageArgs | ResendFromArgs | PublishHealthArgs | FetchListArgs
               | RaiseBarrierArgs)
COMMAND_ARGS: Mapping[CommandName, type[CommandArgs]] = types.MappingProxyType({
    CommandName.CLOSE_ETC: CloseEtcArgs,
    CommandName.OPEN_ETC: OpenEtcArgs,
    CommandName.SHOW_MESSAGE: ShowMessageArgs,
    CommandName.RESEND_FROM: ResendFromArgs,
    CommandName.PUBLISH_HEALTH: PublishHealthArgs,
    CommandName.FETCH_LIST: FetchListArgs,
    CommandName.RAISE_BARRIER: RaiseBarrierArgs,
})


def _decode_args(value: Any, data: Mapping[str, Any], path: str) -> CommandArgs:
    args: CommandArgs = _decode_fields(COMMAND_ARGS[CommandName(data["command"])], value, path)
    return args


def _signed_bytes(msg: UplinkMessage, raw: Mapping[str, Any] | None) -> bytes:
    payload = dict(raw) if raw is not None else msg.to_dict()
    payload.pop("signature", None)
    return canonical_json(payload)


@dataclass(frozen=True, kw_only=True)
class CommandRequest(UplinkMessage):
    """A signed command from the centre (topic ``cmd``)."""

    MESSAGE: ClassVar[str] = "CommandRequest"
    _DECODERS: ClassVar[Mapping[str, Callable[[Any, Mapping[str, Any], str], Any]]] = {"args": _decode_args}

    lane_id: str
    command_id: str
    seq: int
    issued_at: dt.datetime
    expires_at: dt.datetime
    command: CommandName
    args: CommandArgs
    key_id: str
    signature: bytes = field(default=b"", metadata=BASE64)
    # The payload it was read from (what the signature covers); None for one built here.
    raw: Mapping[str, Any] | None = field(default=None, compare=False, repr=False, metadata=NOT_JSON)

    def __post_init__(self) -> None:
        expected = COMMAND_ARGS[CommandName(self.command)]
        if type(self.args) is not expected:
            raise ContractError(self.MESSAGE, [("$.args", f"{self.command} takes {expected.__name__}, "
                                                          f"not {type(self.args).__name__}")])

    def signed_bytes(self) -> bytes:
        """The bytes the Ed25519 signature covers: the payload without ``signature``, canonical."""
        return _signed_bytes(self, self.raw)

    def signed(self, signature: bytes) -> CommandRequest:
        """The same command carrying ``signature`` (the centre side, and tests)."""
        return dataclasses.replace(self, signature=signature, raw=None)

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        made = super().from_dict(data)
        object.__setattr__(made, "raw", types.MappingProxyType(copy.deepcopy(dict(data))))
        return made

    def _check(self) -> None:
        _check_uuid(self.command_id, "$.command_id")
        if self.expires_at <= self.issued_at:
            raise _Invalid("$.expires_at", f"{self.expires_at.isoformat()} is not after issued_at "
                                           f"{self.issued_at.isoformat()}")


@dataclass(frozen=True, kw_only=True)
class CommandResult(UplinkMessage):
    """Executed, or refused with a reason (topic ``cmd/result``)."""

    MESSAGE: ClassVar[str] = "CommandResult"

    lane_id: str
    command_id: str
    outcome: CommandOutcome
    at: dt.datetime
    seq: int | None = None
    command: CommandName | None = None
    reason: RefusalReason | None = None
    detail: str | None = None

    @classmethod
    def executed(cls, request: CommandRequest, at: dt.datetime, detail: str | None = None) -> CommandResult:
        return cls(lane_id=request.lane_id, command_id=request.command_id, seq=request.seq, command=request.command,
                   outcome=CommandOutcome.EXECUTED, at=at, detail=detail)

    @classmethod
    def refused(cls, request: CommandRequest, reason: RefusalReason, at: dt.datetime, detail: str | None = None,
                *, lane_id: str | None = None) -> CommandResult:
        """``lane_id``: this lane's id (for a wrong_lane refusal, the request names another)."""
        return cls(lane_id=lane_id or request.lane_id, command_id=request.command_id, seq=request.seq,
                   command=request.command, outcome=CommandOutcome.REFUSED, reason=reason, at=at, detail=detail)


# -- status lists and fee tables --------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class ListManifest(UplinkMessage):
    """A signed announcement of a status list or fee table version (topic ``list/manifest``)."""

    MESSAGE: ClassVar[str] = "ListManifest"

    kind: ListKind
    version: int
    format: ListFormat
    compression: Compression
    size: int
    sha256: bytes
    chunk_size: int
    chunk_count: int
    issued_at: dt.datetime
    valid_from: dt.datetime
    expires_at: dt.datetime
    key_id: str
    base_version: int | None = None
    signature: bytes = field(default=b"", metadata=BASE64)
    raw: Mapping[str, Any] | None = field(default=None, compare=False, repr=False, metadata=NOT_JSON)

    @property
    def is_delta(self) -> bool:
        return self.base_version is not None

    def signed_bytes(self) -> bytes:
        """The bytes the Ed25519 signature covers: the payload without ``signature``, canonical."""
        return _signed_bytes(self, self.raw)

    def signed(self, signature: bytes) -> ListManifest:
        return dataclasses.replace(self, signature=signature, raw=None)

    def chunk_length(self, index: int) -> int:
        """How many bytes chunk ``index`` holds (the last one may be shorter)."""
        if not 0 <= index < self.chunk_count:
            raise ContractError(self.MESSAGE, [("$.chunk_count", f"no chunk {index} in {self.chunk_count}")])
        return max(0, min(self.chunk_size, self.size - index * self.chunk_size))

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        made = super().from_dict(data)
        object.__setattr__(made, "raw", types.MappingProxyType(copy.deepcopy(dict(data))))
        return made

    def _check(self) -> None:
        expected = max(1, -(-self.size // self.chunk_size))
        if self.chunk_count != expected:
            raise _Invalid("$.chunk_count", f"{self.chunk_count}, but {self.size} bytes in chunks of "
                                            f"{self.chunk_size} make {expected}")
        if self.expires_at <= self.valid_from:
            raise _Invalid("$.expires_at", f"{self.expires_at.isoformat()} is not after valid_from "
                                           f"{self.valid_from.isoformat()}")
        if self.base_version is not None and self.base_version >= self.version:
            raise _Invalid("$.base_version", f"a delta to version {self.version} must apply on an older version, "
                                             f"not {self.base_version}")


@dataclass(frozen=True, kw_only=True)
class ListChunk(UplinkMessage):
    """One chunk of an announced version (topic ``list/chunk``)."""

    MESSAGE: ClassVar[str] = "ListChunk"

    kind: ListKind
    version: int
    index: int
    data: bytes = field(metadata=BASE64)
    sha256: bytes | None = None


@dataclass(frozen=True, kw_only=True)
class ListRequest(UplinkMessage):
    """The lane asks for the chunks it lacks (topic ``list/request``); ``chunks`` None: all."""

    MESSAGE: ClassVar[str] = "ListRequest"

    lane_id: str
    kind: ListKind
    version: int
    at: dt.datetime
    chunks: tuple[int, ...] | None = None
    reason: str | None = None


@dataclass(frozen=True, kw_only=True)
class StatusListVersion:
    version: int
    updated_at: dt.datetime | None = None
    entries: int | None = None


@dataclass(frozen=True, kw_only=True)
class FeeTableVersion:
    version: int
    valid_from: dt.datetime
    valid_until: dt.datetime | None = None


@dataclass(frozen=True, kw_only=True)
class ListVersions(UplinkMessage):
    """The versions in use (retained, topic ``list/versions``)."""

    MESSAGE: ClassVar[str] = "ListVersions"

    lane_id: str
    at: dt.datetime
    status_list: StatusListVersion | None = None
    fee_table: FeeTableVersion | None = None
    fee_table_pending: FeeTableVersion | None = None


MESSAGE_CLASSES: Mapping[str, type[UplinkMessage]] = types.MappingProxyType({
    cls.MESSAGE: cls for cls in (TransactionMsg, TxAck, ReconcileAnswer, ReconcileResult, LaneState, HealthSnapshot,
                                 AlarmMsg, CommandRequest, CommandResult, ListManifest, ListChunk, ListRequest,
                                 ListVersions)
})
