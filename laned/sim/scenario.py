"""A scenario file of the simulated lane: JSON → vehicles, the lane's time zone, how the RSU reads.

Every value is validated before anything starts (:func:`parse_scenario`): a bad one is a
:class:`ScenarioError` naming the vehicle (its number, 1-based as in the summary, and its
OBU id), the key, the value and what was expected. Relative dates (``"today-1"``,
``"now-2h"``) are resolved in the lane's time zone (``timezone``, default Asia/Shanghai).

How the emulated RSU reads the vehicles (where its zone starts, whether it reads the
next OBU while the vehicle before is still at the arm, how it re-reports an OBU that
waits in its zone) is the scenario's ``rsu`` object (:class:`RsuSettings`).

The JSON scenario schema is documented with examples in ``docs/sim.md``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import difflib
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from laned.sim.rsu_scenario import read_json_file
from laned.sim.vehicle import DEFAULT_TIMEZONE, LaneClock, SimVehicle, show


class ScenarioError(ValueError):
    """A scenario that cannot be used: one line naming the vehicle, the key, the value and why."""


class RsuSettings(BaseModel):
    """How the emulated RSU reads the vehicles: a scenario's ``rsu`` object.

    A real RSU's zone is 15–30 m long: it reads each OBU as its vehicle enters the zone,
    the next one while the vehicle before is still at the arm, and it reports an OBU that
    waits in its zone again and again (the next beacon wakes an OBU whose transaction
    ended). ``early_reads = false`` is the simulator's earlier, politer RSU, kept for
    comparison: it reads the next OBU only once the lane decided about the vehicle before
    (and a tailgater reached the arm), and reports an OBU again only for ``seen_again``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    zone_m: float = Field(20.0, ge=5, le=40, description="where the RSU starts reading an OBU, metres before the arm")
    reread_interval_s: float = Field(0.5, ge=0.1, le=10, description="an OBU still in the zone is reported again "
                                     "this long after its last transaction ended (paid, refused, stopped)")
    reread_for_s: float = Field(60.0, ge=0, le=300, description="for this long after its first transaction ended, "
                                "while its vehicle is before the arm; 0: never (re-reads suppressed)")
    early_reads: bool = Field(True, description="read each OBU as it enters the zone (a real RSU); false: only once "
                              "the lane decided about the vehicle before")


# What each ``rsu`` key takes, for the error line.
_RSU_EXPECTED = {
    "zone_m": "5–40, metres before the arm where the RSU starts reading",
    "reread_interval_s": "0.1–10 seconds between reports of an OBU that waits in the zone",
    "reread_for_s": "0–300 seconds after an OBU's first transaction; 0 = never reported again",
    "early_reads": "true or false",
}


def rsu_settings(data: Any, source: str = "scenario") -> RsuSettings:
    """A scenario's ``rsu`` object (None: the defaults); ScenarioError naming the key."""
    if data is None:
        return RsuSettings()
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: rsu = {show(data)}: expected an object with "
                            f"{', '.join(RsuSettings.model_fields)}")
    try:
        return RsuSettings.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        key = str(first["loc"][0]) if first["loc"] else ""
        if first["type"] == "extra_forbidden":
            raise ScenarioError(f"{source}: rsu: unknown key {show(key)}{_did_you_mean(key, RsuSettings.model_fields)}"
                                f" (the keys are {', '.join(RsuSettings.model_fields)})") from None
        msg = str(first["msg"]).removeprefix("Value error, ")
        raise ScenarioError(f"{source}: rsu.{key} = {show(data.get(key))}: {msg} "
                            f"(expected {_RSU_EXPECTED.get(key, 'see docs/sim.md')})") from None


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A parsed scenario: its vehicles, the lane's time zone and how the RSU reads."""

    vehicles: list[SimVehicle]
    timezone: str = DEFAULT_TIMEZONE
    rsu: RsuSettings = dataclasses.field(default_factory=RsuSettings)


SCENARIO_KEYS = ("vehicles", "timezone", "rsu")


def check_timezone(name: str, what: str = "timezone") -> str:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScenarioError(f"{what} = {show(name)}: not a time zone (an IANA name such as Asia/Shanghai)") from None
    return name


def read_scenario(path: str | Path, *, timezone: str | None = None, now: dt.datetime | None = None) -> Scenario:
    """A scenario file; ``timezone`` (``--timezone``) overrides the file's own."""
    return build_scenario(read_json_file(path, ScenarioError), source=str(path), timezone=timezone, now=now)


def build_scenario(data: Any, *, source: str = "scenario", timezone: str | None = None,
                   now: dt.datetime | None = None) -> Scenario:
    """A JSON list of vehicles, or an object ``{"timezone": …, "rsu": {…}, "vehicles": [...]}``."""
    tz = timezone
    rsu = RsuSettings()
    if isinstance(data, dict):
        unknown = [k for k in data if k not in SCENARIO_KEYS]
        if unknown:
            raise ScenarioError(f"{source}: expected a non-empty JSON list of vehicles, or an object with "
                                f"{', '.join(SCENARIO_KEYS)}: unknown key {show(unknown[0])}"
                                f"{_did_you_mean(unknown[0], SCENARIO_KEYS)}")
        file_tz = data.get("timezone")
        if file_tz is not None and not isinstance(file_tz, str):
            raise ScenarioError(f"{source}: timezone = {show(file_tz)}: not a time zone name")
        tz = tz or file_tz
        rsu = rsu_settings(data.get("rsu"), source)
        data = data.get("vehicles")
    try:
        tz = check_timezone(tz) if tz else DEFAULT_TIMEZONE
    except ScenarioError as err:
        raise ScenarioError(f"{source}: {err}") from None
    if not isinstance(data, list) or not data:
        raise ScenarioError(f"{source}: expected a non-empty JSON list of vehicles, got {type(data).__name__}")
    clock = LaneClock(tz, now)
    vehicles = []
    for i, item in enumerate(data):
        vehicles.append(_vehicle_from_json(item, i, source, clock))
    try:
        check_vehicles(vehicles)
    except ScenarioError as err:
        raise ScenarioError(f"{source}: {err}") from None
    return Scenario(vehicles, tz, rsu)


def _where(source: str, i: int, item: Any) -> str:
    obu = item.get("obu_id") if isinstance(item, dict) else None
    return f"{source}: vehicle {i + 1}" + (f" (obu {obu})" if isinstance(obu, str) and obu else "")


def _did_you_mean(key: str, known: Any) -> str:
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f" (did you mean {show(close[0])}?)" if close else ""


def _vehicle_from_json(item: Any, i: int, source: str, clock: LaneClock) -> SimVehicle:
    where = _where(source, i, item)
    if not isinstance(item, dict):
        raise ScenarioError(f"{where}: expected an object with plate, obu_id, card_number …, got {show(item)}")
    try:
        return SimVehicle.model_validate(item, context={"clock": clock})
    except ValidationError as err:
        first = err.errors()[0]
        loc = first["loc"]
        msg = str(first["msg"]).removeprefix("Value error, ")
        if not loc:  # a rule across keys: the message names them
            raise ScenarioError(f"{where}: {msg}") from None
        key = str(loc[0])
        if first["type"] == "extra_forbidden":
            raise ScenarioError(f"{where}: unknown key {show(key)}"
                                f"{_did_you_mean(key, SimVehicle.model_fields)}") from None
        if first["type"] == "missing":
            raise ScenarioError(f"{where}: {key}: required") from None
        value = item.get(key, first.get("input"))
        if key in _DATE_KEYS and str(first["type"]).startswith("date"):
            msg += " (an ISO date such as 2026-03-01, or today, today-1, today+30 in the lane's time zone)"
        raise ScenarioError(f"{where}: {key} = {show(value)}: {msg}") from None


_DATE_KEYS = ("contract_start", "contract_expiry", "card_start", "card_expiry", "entry_time")


def check_vehicles(vehicles: list[SimVehicle]) -> None:
    """Rules across vehicles: one OBU is one vehicle (the same *card* in two OBUs is a case
    to test and stays allowed)."""
    first_of: dict[str, int] = {}
    for i, v in enumerate(vehicles):
        if v.obu_id in first_of:
            raise ScenarioError(f"vehicle {i + 1} (obu {v.obu_id}): obu_id = {show(v.obu_id)}: already the OBU of "
                                f"vehicle {first_of[v.obu_id] + 1} (one OBU is one vehicle; the same card on two "
                                "vehicles is allowed)")
        first_of[v.obu_id] = i


def load_scenario(path: str | Path) -> list[SimVehicle]:
    return read_scenario(path).vehicles


def parse_scenario(data: Any, *, source: str = "scenario", timezone: str | None = None) -> list[SimVehicle]:
    return build_scenario(data, source=source, timezone=timezone).vehicles
