"""Traffic for the simulated lane: a reproducible mix from a seed, or a JSON scenario.

A :class:`SimVehicle` describes one vehicle completely: its OBU and card as the RSU
emulator will report them, how it drives (for the lane model), the RSU faults to inject
during its transaction, and what a correct lane must do with it (``expect``), so the
simulation's summary can say whether laned got every vehicle right.

The JSON scenario schema is documented with examples in ``docs/sim.md``.
"""

from __future__ import annotations

import datetime as dt
import enum
import random
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from laned.sim.rsu_scenario import read_json_file

PROVINCES = "京津沪渝冀晋辽吉黑苏浙皖闽赣鲁豫鄂湘粤琼川贵云陕甘青"
LETTERS = "ABCDEFGHJKLMNPQRSTUVWXY"


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


# Expected outcome per kind (the lane's Reason value); follow-car is a lane event.
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
}

# Seconds between arrivals: a busy ETC lane (the vehicles queue now and then).
ARRIVAL_GAP_S = (0.6, 1.8)

DEFAULT_WEIGHTS: dict[Kind, int] = {
    Kind.NORMAL: 40, Kind.LOW_BALANCE: 5, Kind.EXACT_BALANCE: 4, Kind.LISTED_CARD: 3, Kind.LISTED_OBU: 3,
    Kind.TAMPER: 3, Kind.NO_CARD: 3, Kind.EXPIRED: 3, Kind.FOLLOW_CAR: 4, Kind.SEEN_AGAIN: 4,
    Kind.RSU_GLITCH: 4, Kind.LOST_B5: 2,
}


class SimVehicle(BaseModel):
    """One vehicle of a scenario. Money in fen; dates ISO."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    plate: str = Field(description="plate as on the OBU and card, e.g. 鲁A12345")
    kind: Kind = Kind.NORMAL
    vehicle_class: int = Field(1, description="1–4 passenger, 11–16 truck, 21–26 special")
    obu_id: str = Field(description="8 hex digits")
    card_number: str = Field(description="network (4 digits) + card number (16 digits), 20 digits")
    card_type: Literal["stored_value", "credit"] = "stored_value"
    balance: int = Field(100_00, ge=0, description="card balance in fen")
    entry_station: str | None = Field("0102", description="4 hex digits of the entry station; null = none")
    obu_flags: list[str] = Field(default_factory=list, description="OBUStatus flags: card_absent, obu_removed …")
    contract_expiry: dt.date = dt.date(2033, 1, 1)
    arrive_after: float = Field(4.0, ge=0, description="seconds after the previous vehicle appeared")
    speed: float = Field(5.0, gt=0, description="m/s")
    length: float = Field(4.5, gt=0, description="m")
    rsu_faults: list[Literal["corrupt", "duplicate", "split", "noise", "lost_b5"]] = Field(default_factory=list)
    expect: str | None = None

    @field_validator("obu_id")
    @classmethod
    def _obu_hex(cls, v: str) -> str:
        if len(v) != 8 or any(c not in "0123456789abcdefABCDEF" for c in v):
            raise ValueError(f"obu_id must be 8 hex digits, got {v!r}")
        return v.lower()

    @field_validator("card_number")
    @classmethod
    def _card_digits(cls, v: str) -> str:
        if len(v) != 20 or not v.isdigit():
            raise ValueError(f"card_number must be 20 digits (network + card), got {v!r}")
        return v

    @field_validator("entry_station")
    @classmethod
    def _station_hex(cls, v: str | None) -> str | None:
        if v is not None and (len(v) != 4 or any(c not in "0123456789abcdefABCDEF" for c in v)):
            raise ValueError(f"entry_station must be 4 hex digits or null, got {v!r}")
        return v

    @property
    def expected(self) -> str:
        return self.expect or EXPECT[self.kind]


class ScenarioError(ValueError):
    """A scenario file that cannot be used: names the vehicle index, the key and why."""


def load_scenario(path: str | Path) -> list[SimVehicle]:
    return parse_scenario(read_json_file(path, ScenarioError), source=str(path))


def parse_scenario(data: Any, *, source: str = "scenario") -> list[SimVehicle]:
    if not isinstance(data, list) or not data:
        raise ScenarioError(f"{source}: expected a non-empty JSON list of vehicles, got {type(data).__name__}")
    vehicles = []
    for i, item in enumerate(data):
        try:
            vehicles.append(SimVehicle.model_validate(item))
        except ValidationError as err:
            first = err.errors()[0]
            key = ".".join(str(p) for p in first["loc"]) or "(vehicle)"
            raise ScenarioError(f"{source}: vehicle {i}, key {key!r}, value {first.get('input')!r}: "
                                f"{first['msg']}") from None
    return vehicles


def random_plate(rng: random.Random) -> str:
    return rng.choice(PROVINCES) + rng.choice(LETTERS) + "".join(rng.choice("0123456789ABCDEFGHJK") for _ in range(5))


def traffic_mix(n: int, seed: int, weights: dict[Kind, int] | None = None) -> list[SimVehicle]:
    """``n`` vehicles drawn reproducibly from ``seed``; every kind appears once n ≥ 12."""
    rng = random.Random(seed)
    weights = weights or DEFAULT_WEIGHTS
    kinds = list(Kind)[:n] if n >= len(Kind) else []
    kinds += rng.choices(list(weights), weights=list(weights.values()), k=n - len(kinds))
    rng.shuffle(kinds)
    return [_vehicle(kind, i, rng) for i, kind in enumerate(_behind_payers(kinds, rng))]


# A tailgater slips through behind a vehicle the barrier opened for; behind a refused one
# it would just queue. These kinds pay and pass.
LEADERS = (Kind.NORMAL, Kind.EXACT_BALANCE)


def _behind_payers(kinds: list[Kind], rng: random.Random) -> list[Kind]:
    """Each follow-car right behind a paying vehicle; a follow-car with no payer left to
    follow becomes a normal car."""
    others = [k for k in kinds if k is not Kind.FOLLOW_CAR]
    followers = len(kinds) - len(others)
    free = [i for i, k in enumerate(others) if k in LEADERS]
    rng.shuffle(free)
    followed: set[int] = set()
    for _ in range(followers):
        if free:
            followed.add(free.pop())
        else:
            others.append(Kind.NORMAL)  # no payer left to follow: it pays and drives itself
    out: list[Kind] = []
    for i, k in enumerate(others):
        out.append(k)
        if i in followed:
            out.append(Kind.FOLLOW_CAR)
    return out


def _vehicle(kind: Kind, i: int, rng: random.Random) -> SimVehicle:
    fee = 35_00  # the sim fee table's class-1 fee from station 0102 (laned/data/fee_table_sim.toml)
    v: dict[str, Any] = dict(
        plate=random_plate(rng), kind=kind, vehicle_class=1,
        obu_id=f"{0x10000000 + i * 7919 + rng.randrange(1000):08x}",
        card_number="3701" + f"{rng.randrange(10**16):016d}",
        balance=rng.randrange(100_00, 2000_00), arrive_after=round(rng.uniform(ARRIVAL_GAP_S[0], ARRIVAL_GAP_S[1]), 2),
        speed=round(rng.uniform(5.0, 6.5), 1),
    )
    if kind is Kind.LOW_BALANCE:
        v["balance"] = rng.randrange(0, fee)
    elif kind is Kind.EXACT_BALANCE:
        v["balance"] = fee
    elif kind is Kind.LISTED_CARD:
        v["card_number"] = "3701" + "9" + f"{rng.randrange(10**15):015d}"
    elif kind is Kind.LISTED_OBU:
        v["obu_id"] = "ee" + v["obu_id"][2:]
    elif kind is Kind.TAMPER:
        v["obu_flags"] = ["obu_removed"]
    elif kind is Kind.NO_CARD:
        v["obu_flags"] = ["card_absent"]
    elif kind is Kind.EXPIRED:
        v["contract_expiry"] = dt.date(2025, 6, 30)
    elif kind is Kind.FOLLOW_CAR:
        v["arrive_after"] = 0.0
    elif kind is Kind.RSU_GLITCH:
        v["rsu_faults"] = ["corrupt", "duplicate", "noise", "split"]
    elif kind is Kind.LOST_B5:
        v["rsu_faults"] = ["lost_b5"]
    return SimVehicle(**v)


def status_entries(vehicles: list[SimVehicle]) -> tuple[set[str], set[str]]:
    """What the sim's status list holds: the cards and OBUs of the listed vehicles."""
    cards = {v.card_number for v in vehicles if v.kind is Kind.LISTED_CARD}
    obus = {v.obu_id for v in vehicles if v.kind is Kind.LISTED_OBU}
    return cards, obus
