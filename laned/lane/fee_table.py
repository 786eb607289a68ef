"""The fee table: what a vehicle class pays from an entry station, versioned.

A table has a version and a validity start. The lane keeps the table in force and at
most one pending table; the pending one takes over once its ``valid_from`` has passed
(``now`` is passed in — no clock here). Amounts are fen.

File format (TOML, or the same structure in JSON), documented in docs/fee_table.md::

    version = 7
    valid_from = 2026-11-01T00:00:00
    valid_until = 2027-11-01T00:00:00     # optional: after it the lane refuses to price
    [stations."3701-0102"]
    1 = 3500
    12 = 9000

Times are the lane's local civil time, like the ``wall`` the lane machine gets: a
``valid_from`` with a UTC offset is converted to the lane's time zone (``tz``: the
daemon passes ``lane.timezone``; None is the host's), one without is taken as is.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from laned.protocol.records import is_known_vehicle_class

FEN_MAX = 0xFFFF_FFFF  # ConsumeMoney is an unsigned 32-bit fen amount (RSU_PROTOCOL.md)
MAX_LISTED_ERRORS = 20  # a hopeless file is not echoed in full
_STATION_KEY = re.compile(r"^\d{4}-[0-9a-fA-F]{4}$")  # network BCD - station, as StationRecord.station_key
_CLASS_KEY = re.compile(r"[0-9]{1,18}")  # ASCII digits, short enough for int() (classes are 1–26)


class FeeTableError(ValueError):
    """A fee table that cannot be used; names the station, class and value."""


def local_naive(value: dt.datetime, tz: dt.tzinfo | None = None) -> dt.datetime:
    """The lane's local civil time: aware times converted to ``tz`` (None: the host's time
    zone), naive ones kept."""
    return value.astimezone(tz).replace(tzinfo=None) if value.tzinfo is not None else value


@dataclass(frozen=True)
class FeeTable:
    version: int
    valid_from: dt.datetime  # local, naive
    fees: Mapping[tuple[str, int], int]  # (station key lower-case, class) -> fen
    _max: Mapping[int, int] = field(default_factory=dict)
    valid_until: dt.datetime | None = None  # local, naive; None: until a newer table replaces it

    def fee(self, entry_station: str, vehicle_class: int) -> int | None:
        return self.fees.get((entry_station.lower(), vehicle_class))

    def max_fee(self, vehicle_class: int) -> int | None:
        """The highest fee of a class over every station (the ``max_fee`` missing-entry policy)."""
        return self._max.get(vehicle_class)

    @property
    def stations(self) -> frozenset[str]:
        return frozenset(station for station, _ in self.fees)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "fee table",
                     tz: dt.tzinfo | None = None) -> FeeTable:
        """Validate a parsed file. Every problem is listed, each naming station, class and value.
        Times with a UTC offset are converted to ``tz``, the lane's time zone."""
        errors: list[str] = []
        version = data.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            errors.append(f"version is {version!r}, expected a whole number ≥ 0")
        valid_from = _valid_from(data.get("valid_from"), tz)
        if valid_from is None:
            errors.append(f"valid_from is {data.get('valid_from')!r}, expected a date-time like 2026-11-01T00:00:00")
        valid_until = None
        if data.get("valid_until") is not None:
            valid_until = _valid_from(data["valid_until"], tz)
            if valid_until is None:
                errors.append(f"valid_until is {data['valid_until']!r}, expected a date-time like 2027-11-01T00:00:00")
            elif valid_from is not None and valid_until <= valid_from:
                errors.append(f"valid_until {valid_until.isoformat()} is not after valid_from {valid_from.isoformat()}")
        unknown = sorted(set(data) - {"version", "valid_from", "valid_until", "stations"})
        if unknown:
            errors.append(f"{', '.join(unknown)}: not a fee table setting (expected version, valid_from, "
                          "valid_until, stations)")
        fees: dict[tuple[str, int], int] = {}
        stations = data.get("stations")
        if not isinstance(stations, Mapping) or not stations:
            errors.append("[stations] is missing or empty")
        else:
            seen: dict[str, str] = {}
            for station, classes in stations.items():
                errors += _station(station, classes, seen, fees)
        if errors:
            shown = errors[:MAX_LISTED_ERRORS]
            more = f"\n  … and {len(errors) - len(shown)} more" if len(errors) > len(shown) else ""
            raise FeeTableError(f"{source}: " + "\n  ".join(shown) + more)
        assert isinstance(version, int) and valid_from is not None
        maximum: dict[int, int] = {}
        for (_, k), amount in fees.items():
            maximum[k] = max(amount, maximum.get(k, 0))
        return cls(version, valid_from, fees, maximum, valid_until)

    @classmethod
    def from_toml_bytes(cls, data: bytes, *, source: str = "fee table", tz: dt.tzinfo | None = None) -> FeeTable:
        """A fee table as the centre sends it (``laned-fee-toml-1``: this file format in
        UTF-8 TOML), validated as :meth:`from_mapping` does."""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            raise FeeTableError(f"{source} is not UTF-8 text: {err.reason} at byte {err.start}") from None
        try:
            parsed = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise FeeTableError(f"{source} is not valid TOML: {err}") from None
        except (RecursionError, ValueError) as err:  # what tomllib lets through
            raise FeeTableError(f"{source} cannot be read as TOML: {_parser_limit(err)}") from None
        return cls.from_mapping(parsed, source=source, tz=tz)

    @classmethod
    def load(cls, path: str | Path, *, tz: dt.tzinfo | None = None) -> FeeTable:
        """A ``.json`` file is read as JSON, anything else as TOML (``tz``: see from_mapping)."""
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as err:
            raise FeeTableError(f"cannot read fee table {p}: {err.strerror}") from None
        except UnicodeDecodeError as err:
            raise FeeTableError(f"fee table {p} is not UTF-8 text: {err.reason} at byte {err.start}") from None
        try:
            data = json.loads(text) if p.suffix.lower() == ".json" else tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise FeeTableError(f"fee table {p} is not valid TOML: {err}") from None
        except json.JSONDecodeError as err:
            raise FeeTableError(f"fee table {p} is not valid JSON: {err.msg} "
                                f"(line {err.lineno}, column {err.colno})") from None
        except (RecursionError, ValueError) as err:  # what the parsers let through
            raise FeeTableError(f"fee table {p} cannot be read: {_parser_limit(err)}") from None
        if not isinstance(data, Mapping):
            raise FeeTableError(f"fee table {p}: expected a table at the top, found {type(data).__name__}")
        return cls.from_mapping(data, source=str(p), tz=tz)


def _parser_limit(err: RecursionError | ValueError) -> str:
    """A parser's own limit, hit by the content: nesting ~1,000 deep (tomllib recurses;
    RecursionError), an integer beyond Python's 4,300 digits (ValueError)."""
    if isinstance(err, RecursionError):
        return "nested too deeply (RecursionError)"
    return str(err)[:200]


def _valid_from(value: Any, tz: dt.tzinfo | None) -> dt.datetime | None:
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            return None
    if isinstance(value, dt.datetime):
        try:
            return local_naive(value, tz)
        except OverflowError:  # 0001-01-01T00:00:00+14:00 has no local time in year 1
            return None
    if isinstance(value, dt.date):  # a bare date: from midnight
        return dt.datetime.combine(value, dt.time())
    return None


def _station(station: str, classes: Any, seen: dict[str, str], fees: dict[tuple[str, int], int]) -> list[str]:
    if not _STATION_KEY.match(station):
        return [f"station {station!r} is not NNNN-SSSS (network 4 digits, station 4 hex digits, e.g. 3701-0102)"]
    key = station.lower()
    if key in seen:
        return [f"station {station!r} is listed twice (also as {seen[key]!r})"]
    seen[key] = station
    if not isinstance(classes, Mapping) or not classes:
        return [f"station {station!r} must be a table of class = fen with at least one class, found {classes!r}"]
    errors = []
    for klass, amount in classes.items():
        # Not str.isdigit: "²" is a digit to it and no number to int(), nor is a 5,000-digit one.
        k = int(klass) if _CLASS_KEY.fullmatch(str(klass)) else -1
        if not is_known_vehicle_class(k):
            errors.append(f"station {station!r} class {klass!r} is not a vehicle class (1–4, 11–16, 21–26)")
        elif not isinstance(amount, int) or isinstance(amount, bool) or not 0 <= amount <= FEN_MAX:
            errors.append(f"station {station!r} class {k} fee is {amount!r}, expected whole fen 0–{FEN_MAX}")
        else:
            fees[(key, k)] = amount
    return errors


class FeeSchedule:
    """The table in force and the next one, switched by time. Satisfies the machine's FeeLookup.

    ``tz`` is the lane's time zone: an aware ``now`` is converted to it (None: the host's)."""

    def __init__(self, current: FeeTable, *, tz: dt.tzinfo | None = None) -> None:
        self.current = current
        self.pending: FeeTable | None = None
        self.tz = tz

    @classmethod
    def from_tables(cls, tables: Iterable[FeeTable], now: dt.datetime, *,
                    tz: dt.tzinfo | None = None) -> FeeSchedule:
        """The newest table valid at ``now`` in force, the newest later one pending.

        Used at start-up with the table files on disk (the one in force and one the centre
        sent ahead of its date). With none valid yet the lane cannot price: an error.
        """
        now = local_naive(now, tz)
        tables = sorted(tables, key=lambda t: t.version)
        valid = [t for t in tables if t.valid_from <= now]
        if not valid:
            starts = ", ".join(f"version {t.version} from {t.valid_from.isoformat()}" for t in tables) or "none given"
            raise FeeTableError(f"no fee table is valid at {now.isoformat()} ({starts})")
        schedule = cls(valid[-1], tz=tz)
        later = [t for t in tables if t.valid_from > now and t.version > schedule.current.version]
        schedule.pending = later[-1] if later else None
        return schedule

    @property
    def version(self) -> int:
        return self.current.version

    def offer(self, table: FeeTable, now: dt.datetime) -> None:
        """A new table from the centre: in force at once if valid, else pending.

        It must be newer than the table in force and than the pending one. A valid
        table that is older than the pending one leaves that pending.
        """
        now = local_naive(now, self.tz)
        if table.version <= self.current.version:
            raise FeeTableError(f"fee table version {table.version} is not newer than {self.current.version}, "
                                "the one in force")
        if table.valid_from <= now:
            self.current = table
            if self.pending is not None and self.pending.version <= table.version:
                self.pending = None
        elif self.pending is not None and table.version <= self.pending.version:
            raise FeeTableError(f"fee table version {table.version} is not newer than {self.pending.version}, "
                                f"the one pending from {self.pending.valid_from.isoformat()}")
        else:
            self.pending = table

    def tick(self, now: dt.datetime) -> bool:
        """Switch to the pending table once it is valid; True when it switched."""
        if self.pending is not None and self.pending.valid_from <= local_naive(now, self.tz):
            self.current, self.pending = self.pending, None
            return True
        return False

    def expired(self, now: dt.datetime) -> str | None:
        """Why the table in force can no longer price (past its ``valid_until``), or None."""
        until = self.current.valid_until
        if until is not None and local_naive(now, self.tz) >= until:
            return f"fee table version {self.current.version} expired at {until.isoformat()}"
        return None

    def fee(self, entry_station: str, vehicle_class: int) -> int | None:
        return self.current.fee(entry_station, vehicle_class)

    def max_fee(self, vehicle_class: int) -> int | None:
        return self.current.max_fee(vehicle_class)
