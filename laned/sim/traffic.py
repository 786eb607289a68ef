"""Traffic for the simulated lane: a reproducible mix from a seed.

:func:`traffic_mix` draws ``n`` vehicles of every :class:`Kind` from a seed, each kind
exercising one lane path, a follow-car right behind a vehicle that pays; the vehicle
model is in :mod:`laned.sim.vehicle`, scenario files (JSON → vehicles) in
:mod:`laned.sim.scenario`.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

# The vehicle model and the scenario files used to be part of this module: what was
# imported from here still is.
from laned.sim.scenario import (RsuSettings, Scenario, ScenarioError, build_scenario, check_timezone, check_vehicles,
                                load_scenario, parse_scenario, read_scenario)
from laned.sim.vehicle import DEFAULT_TIMEZONE, EXPECT, PAID_OUTCOMES, Kind, SimVehicle

__all__ = [
    "DEFAULT_TIMEZONE", "DEFAULT_WEIGHTS", "EXPECT", "LEADERS", "MIX_KINDS", "PAID_OUTCOMES", "Kind", "RsuSettings",
    "Scenario", "ScenarioError", "SimVehicle", "build_scenario", "check_timezone", "check_vehicles", "load_scenario",
    "parse_scenario", "random_plate", "read_scenario", "status_entries", "traffic_mix",
]

PROVINCES = "京津沪渝冀晋辽吉黑苏浙皖闽赣鲁豫鄂湘粤琼川贵云陕甘青"
LETTERS = "ABCDEFGHJKLMNPQRSTUVWXY"

# The kinds the seeded mix draws (``no_obu`` is for scenario files only).
MIX_KINDS: tuple[Kind, ...] = tuple(k for k in Kind if k is not Kind.NO_OBU)

# Seconds between arrivals: a busy ETC lane (the vehicles queue now and then).
ARRIVAL_GAP_S = (0.6, 1.8)

DEFAULT_WEIGHTS: dict[Kind, int] = {
    Kind.NORMAL: 40, Kind.LOW_BALANCE: 5, Kind.EXACT_BALANCE: 4, Kind.LISTED_CARD: 3, Kind.LISTED_OBU: 3,
    Kind.TAMPER: 3, Kind.NO_CARD: 3, Kind.EXPIRED: 3, Kind.FOLLOW_CAR: 4, Kind.SEEN_AGAIN: 4,
    Kind.RSU_GLITCH: 4, Kind.LOST_B5: 2,
}


def random_plate(rng: random.Random) -> str:
    return rng.choice(PROVINCES) + rng.choice(LETTERS) + "".join(rng.choice("0123456789ABCDEFGHJK") for _ in range(5))


def traffic_mix(n: int, seed: int, weights: dict[Kind, int] | None = None) -> list[SimVehicle]:
    """``n`` vehicles drawn reproducibly from ``seed``; every kind of the mix appears once n ≥ 12."""
    rng = random.Random(seed)
    weights = weights or DEFAULT_WEIGHTS
    kinds = list(MIX_KINDS)[:n] if n >= len(MIX_KINDS) else []
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
