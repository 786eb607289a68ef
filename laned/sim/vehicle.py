"""One vehicle of the simulated lane: what it carries, how it drives, what a correct lane does with it.

A :class:`SimVehicle` describes one vehicle completely: its OBU and card as the RSU
emulator will report them (the card's plate, class and validity may differ from the
OBU's), the entry record on the card, how it drives (for the lane model), the RSU faults
to inject during its transaction, and what a correct lane must do with it (``expect``,
``expect_reason``, ``expect_fee``, ``expect_way``), so the simulation's summary can say
whether laned got every vehicle right.

Each value is validated as the vehicle is built. Dates may be relative (``"today"``,
``"today-1"``, ``"today+30"``) and the entry time too (``"now-2h"``), resolved in the
lane's time zone (:class:`LaneClock`, passed as the validation context; default
Asia/Shanghai).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import re
from typing import Any, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from laned.lane.outcomes import Reason
from laned.protocol.profiles.base import ObuFlag
from laned.protocol.records import is_known_vehicle_class

DEFAULT_TIMEZONE = "Asia/Shanghai"
VEHICLE_CLASSES = "1–4, 11–16, 21–26"
PLATE_BYTES = 12  # the plate field of the OBU vehicle file and of card file 0015, GBK
U32_MAX = 0xFFFF_FFFF  # money is unsigned 32-bit fen on the wire
# The frames whose ErrorCode a scenario can set (RSU_PROTOCOL.md, "B5 ErrorCode"); an
# ErrorCode is one byte, 0 meaning no error.
RSU_ERROR_FRAMES = ("B2", "B3", "B4", "B5")
RSU_ERROR_CODES = "1–255 (an integer, or hex as a string: \"0x17\")"


class Kind(enum.StrEnum):
    """The traffic mix of ``laned sim --seed``; each kind exercises one lane path."""

    NORMAL = "normal"
    LOW_BALANCE = "low_balance"
    EXACT_BALANCE = "exact_balance"
    LISTED_CARD = "listed_card"
    LISTED_OBU = "listed_obu"
    TAMPER = "tamper"
    NO_CARD = "no_card"
    EXPIRED = "expired"
    FOLLOW_CAR = "follow_car"  # tailgates the vehicle ahead with no OBU transaction
    SEEN_AGAIN = "seen_again"  # the RSU reports the OBU again after it paid
    RSU_GLITCH = "rsu_glitch"  # corrupted and duplicated frames during the transaction
    LOST_B5 = "lost_b5"  # the RSU never delivers B5
    NO_OBU = "no_obu"  # no OBU at all (a car that took the ETC lane by mistake); scenarios only


# The outcomes the summary reports per vehicle (from the journal; ``follow_car`` from the
# lane's alarm; ``none``: no transaction at all).
OUTCOMES = ("charged", "entry_written", "paid_on_record", "refused", "unknown", "follow_car", "none")
# A vehicle with one of these outcomes paid (or has its record) and must pass the arm.
PAID_OUTCOMES = frozenset({"charged", "entry_written", "paid_on_record"})
# A vehicle may pass the arm with one of these: paid, or recorded as a follow-car.
MAY_PASS_OUTCOMES = PAID_OUTCOMES | {"follow_car"}
WAYS = ("passed", "diverted")

# Expected outcome per kind: a reason code (the lane's Reason value) or an outcome.
EXPECT: dict[Kind, str] = {
    Kind.NORMAL: "charged",
    Kind.LOW_BALANCE: "insufficient_balance",
    Kind.EXACT_BALANCE: "charged",
    Kind.LISTED_CARD: "card_listed",
    Kind.LISTED_OBU: "obu_listed",
    Kind.TAMPER: "obu_tampered",
    Kind.NO_CARD: "no_card",
    Kind.EXPIRED: "obu_expired",
    Kind.FOLLOW_CAR: "follow_car",
    Kind.SEEN_AGAIN: "charged",
    Kind.RSU_GLITCH: "charged",
    Kind.LOST_B5: "outcome_unknown",
    Kind.NO_OBU: "none",
}

_REASONS = {r.value for r in Reason}
# The journal state each reason ends in (everything else is a refusal).
_REASON_OUTCOME = {"charged": "charged", "entry_written": "entry_written", "paid_on_record": "paid_on_record",
                   "outcome_unknown": "unknown", "follow_car": "follow_car"}


def split_expect(value: str) -> tuple[str, str | None]:
    """``expect`` (an outcome or a reason code) → (outcome, reason or None); ValueError if neither."""
    if value in _REASONS:
        return _REASON_OUTCOME.get(value, "refused"), value
    if value in OUTCOMES:
        return value, None
    raise ValueError(f"not an outcome ({', '.join(OUTCOMES)}) nor a reason code ({', '.join(sorted(_REASONS))})")


# -- relative dates, in the lane's time zone ----------------------------------------------------------
_TODAY = re.compile(r"^today(?:([+-])(\d{1,5}))?$")
_NOW = re.compile(r"^now(?:([+-])(\d{1,6})([smhd]))?$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclasses.dataclass(frozen=True)
class LaneClock:
    """What ``today`` and ``now`` mean in a scenario: the lane's time zone, at parse time."""

    timezone: str = DEFAULT_TIMEZONE
    now: dt.datetime | None = None  # aware; None: the current time

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def current(self) -> dt.datetime:
        return self.now.astimezone(self.tz) if self.now is not None else dt.datetime.now(self.tz)

    def date(self, value: Any) -> Any:
        if isinstance(value, str) and (m := _TODAY.match(value.strip())):
            days = int(m.group(2) or 0) * (-1 if m.group(1) == "-" else 1)
            return self.current().date() + dt.timedelta(days=days)
        return value

    def datetime(self, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if m := _NOW.match(text):
                delta = int(m.group(2) or 0) * _UNIT_S[m.group(3) or "s"] * (-1 if m.group(1) == "-" else 1)
                return (self.current() + dt.timedelta(seconds=delta)).replace(microsecond=0)
            if (d := self.date(text)) is not text:
                return dt.datetime.combine(d, dt.time(), self.tz)  # today±N: midnight, lane time
            try:
                value = dt.datetime.fromisoformat(text)
            except ValueError:
                raise ValueError("expected an ISO date-time (2026-03-01T08:30:00, lane time unless it has an "
                                 "offset), now, now-90m, now-2h or now-1d") from None
        if isinstance(value, dt.datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=self.tz)
        return value


def _clock(info: ValidationInfo) -> LaneClock:
    ctx = info.context
    return ctx["clock"] if isinstance(ctx, dict) and isinstance(ctx.get("clock"), LaneClock) else LaneClock()


def _hex(v: str, n: int) -> bool:
    return len(v) == n and all(c in "0123456789abcdefABCDEF" for c in v)


def _plate_problem(v: str) -> str | None:
    if not v:
        return "empty (a plate such as 鲁A12345)"
    try:
        raw = v.encode("gbk")
    except UnicodeEncodeError:
        return "not encodable in GBK (the plate field of the OBU and the card)"
    if len(raw) > PLATE_BYTES:
        return f"{len(raw)} bytes in GBK, the plate field holds {PLATE_BYTES}"
    return None


def show(value: Any) -> str:
    """A value as the scenario file wrote it (JSON), for error lines."""
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(value)


def rsu_error_code(frame: Any, code: Any) -> int:
    """One entry of ``rsu_errors`` → its ErrorCode; ValueError naming the frame or the code.
    A string is hex, as the RSU documents write codes (``"17"`` and ``"0x17"`` are 23)."""
    if frame not in RSU_ERROR_FRAMES:
        raise ValueError(f"{show(frame)} is not a frame with an ErrorCode ({', '.join(RSU_ERROR_FRAMES)})")
    value: int | None = None
    if isinstance(code, int) and not isinstance(code, bool):
        value = code
    elif isinstance(code, str):
        digits = code.strip().lower().removeprefix("0x")
        if 1 <= len(digits) <= 2 and _hex(digits, len(digits)):
            value = int(digits, 16)
    if value is None or not 1 <= value <= 0xFF:
        raise ValueError(f"{frame}: {show(code)} is not an ErrorCode {RSU_ERROR_CODES}")
    return value


class SimVehicle(BaseModel):
    """One vehicle of a scenario. Money in fen; dates ISO or relative (today-1)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    plate: str = Field(description="plate as the OBU carries it (and the card, unless card_plate), e.g. 鲁A12345")
    kind: Kind = Kind.NORMAL
    vehicle_class: int = Field(1, description="the OBU's class: 1–4 passenger, 11–16 truck, 21–26 special")
    card_plate: str | None = Field(None, description="plate in card file 0015; default: plate")
    card_class: int | None = Field(None, description="class in card file 0015; default: vehicle_class")
    obu_id: str = Field(description="8 hex digits")
    card_number: str = Field(description="network (4 digits) + card number (16 digits), 20 digits")
    card_type: Literal["stored_value", "credit"] = "stored_value"
    balance: int = Field(100_00, ge=0, le=U32_MAX, description="card balance in fen")
    contract_start: dt.date = Field(dt.date(2023, 1, 1), description="OBU contract start (issue) date")
    contract_expiry: dt.date = Field(dt.date(2033, 1, 1), description="OBU contract expiry")
    card_start: dt.date | None = Field(None, description="card validity start; default: contract_start")
    card_expiry: dt.date | None = Field(None, description="card expiry; default: contract_expiry")
    entry_station: str | None = Field("0102", description="4 hex digits of the entry station; null = no entry record")
    entry_network: str | None = Field(None, description="4 digits; default: the card's network")
    entry_time: dt.datetime | None = Field(None, description="default: an hour before the vehicle reaches the RSU")
    obu_flags: list[ObuFlag] = Field(default_factory=list, description="OBUStatus flags: card_absent, obu_removed …")
    arrive_after: float = Field(4.0, ge=0, description="seconds after the previous vehicle appeared")
    speed: float = Field(5.0, gt=0, le=40, description="m/s")
    length: float = Field(4.5, ge=2.0, le=25, description="m; 2 m or more (the shortest car: the approach loop ends 1 m before the safety loop)")
    gap_m: float | None = Field(None, ge=0.5, le=50, description="m kept to the vehicle in front, also when queueing; "
                                "default 3 (a tailgater: 3)")
    tailgates: bool | None = Field(None, description="follows the vehicle in front through the open arm, red light or "
                                   "not; default: true for kind follow_car")
    rsu_faults: list[Literal["corrupt", "duplicate", "split", "noise", "lost_b5"]] = Field(default_factory=list)
    rsu_errors: dict[str, int] = Field(default_factory=dict,
                                       description="ErrorCode the RSU puts into B2, B3, B4 or B5 for this OBU")
    expect: str | None = Field(None, description="outcome or reason code; default: from kind")
    expect_reason: str | None = Field(None, description="a reason code")
    expect_fee: int | None = Field(None, ge=0, le=U32_MAX, description="fen")
    expect_way: Literal["passed", "diverted"] | None = None

    @field_validator("rsu_errors", mode="before")
    @classmethod
    def _rsu_errors(cls, v: Any) -> Any:
        if not isinstance(v, dict):
            raise ValueError('expected an object of frame name to ErrorCode, such as {"B4": "0x01"}')
        return {name: rsu_error_code(name, code) for name, code in v.items()}

    @field_validator("obu_id")
    @classmethod
    def _obu_hex(cls, v: str) -> str:
        if not _hex(v, 8):
            raise ValueError("not 8 hex digits")
        return v.lower()

    @field_validator("card_number")
    @classmethod
    def _card_digits(cls, v: str) -> str:
        if len(v) != 20 or not v.isdigit():
            raise ValueError("not 20 digits (network 4 + card number 16)")
        return v

    @field_validator("entry_network")
    @classmethod
    def _network_digits(cls, v: str | None) -> str | None:
        if v is not None and (len(v) != 4 or not v.isdigit()):
            raise ValueError("not 4 digits (a network number such as 3701)")
        return v

    @field_validator("entry_station")
    @classmethod
    def _station_hex(cls, v: str | None) -> str | None:
        if v is not None and not _hex(v, 4):
            raise ValueError("not 4 hex digits or null")
        return v

    @field_validator("plate", "card_plate")
    @classmethod
    def _plate(cls, v: str | None) -> str | None:
        if v is not None and (problem := _plate_problem(v)):
            raise ValueError(problem)
        return v

    @field_validator("vehicle_class", "card_class")
    @classmethod
    def _class(cls, v: int | None) -> int | None:
        if v is not None and not is_known_vehicle_class(v):
            raise ValueError(f"not a vehicle class ({VEHICLE_CLASSES})")
        return v

    @field_validator("contract_start", "contract_expiry", "card_start", "card_expiry", mode="before")
    @classmethod
    def _relative_date(cls, v: Any, info: ValidationInfo) -> Any:
        return _clock(info).date(v)

    @field_validator("entry_time", mode="before")
    @classmethod
    def _relative_time(cls, v: Any, info: ValidationInfo) -> Any:
        return _clock(info).datetime(v)

    @field_validator("entry_time")
    @classmethod
    def _aware_time(cls, v: dt.datetime | None, info: ValidationInfo) -> dt.datetime | None:
        if v is not None and v.tzinfo is None:
            v = v.replace(tzinfo=_clock(info).tz)
        if v is not None and not 0 < v.timestamp() <= U32_MAX:
            raise ValueError("outside the 4-byte unix time of the entry record")
        return v

    @field_validator("expect")
    @classmethod
    def _expect(cls, v: str | None) -> str | None:
        if v is not None:
            split_expect(v)
        return v

    @field_validator("expect_reason")
    @classmethod
    def _expect_reason(cls, v: str | None) -> str | None:
        if v is not None and v not in _REASONS:
            raise ValueError(f"not a reason code ({', '.join(sorted(_REASONS))})")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> SimVehicle:
        if self.expect is not None and self.expect_reason is not None:
            outcome, reason = split_expect(self.expect)
            implied = split_expect(self.expect_reason)[0]
            if implied != outcome or (reason is not None and reason != self.expect_reason):
                raise ValueError(f"expect_reason = {show(self.expect_reason)}: contradicts expect = "
                                 f"{show(self.expect)} (a reason of outcome {implied})")
        if self.entry_station is None:
            for key in ("entry_network", "entry_time"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key} = {show(getattr(self, key))}: entry_station is null (no entry record)")
        outcome = self.expected_outcome
        if self.expect_way == "diverted" and outcome in PAID_OUTCOMES:
            raise ValueError(f"expect_way = \"diverted\": a vehicle expected to be {outcome} must pass "
                             "(a paid vehicle that does not pass is always unexpected: paid_not_passed)")
        if self.expect_way == "passed" and outcome not in MAY_PASS_OUTCOMES:
            raise ValueError(f"expect_way = \"passed\": a vehicle expected to be {outcome} may not pass "
                             "(it would pass without its own payment: passed_unpaid)")
        return self

    # -- what a correct lane does with it ------------------------------------------------------
    @property
    def expected_outcome(self) -> str:
        if self.expect_reason is not None and self.expect is None:
            return split_expect(self.expect_reason)[0]
        return split_expect(self.expect or EXPECT[self.kind])[0]

    @property
    def expected_reason(self) -> str | None:
        return self.expect_reason or split_expect(self.expect or EXPECT[self.kind])[1]

    @property
    def expected_way(self) -> str | None:
        """passed / diverted; None: not judged (a follow-car either way)."""
        if self.expect_way is not None:
            return self.expect_way
        outcome = self.expected_outcome
        if outcome in PAID_OUTCOMES:
            return "passed"
        if outcome == "follow_car":
            return None
        return "diverted"

    @property
    def expected(self) -> str:
        """The expected reason code, or the outcome where no reason is expected."""
        return self.expected_reason or self.expected_outcome

    @property
    def is_tailgater(self) -> bool:
        return self.tailgates if self.tailgates is not None else self.kind is Kind.FOLLOW_CAR

    @property
    def has_obu(self) -> bool:
        return self.kind not in (Kind.FOLLOW_CAR, Kind.NO_OBU)
