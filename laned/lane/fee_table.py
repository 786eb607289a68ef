"""The fee table: what a vehicle class pays from an entry station, versioned.

A table has a version and a validity start. The lane keeps the table in force and at
most one pending table; the pending one takes over once its ``valid_from`` has passed
(``now`` is passed in — no clock here). Amounts are fen.

File format (TOML), documented in docs/fee_table.md::

    version = 7
    valid_from = 2026-11-01T00:00:00
    [stations."3701-0102"]
    1 = 3500
    12 = 9000
"""

from __future__ import annotations

import datetime as dt
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from laned.protocol.records import is_known_vehicle_class


class FeeTableError(ValueError):
    """A fee table that cannot be used; names the station, class and value."""


@dataclass(frozen=True)
class FeeTable:
    version: int
    valid_from: dt.datetime
    fees: Mapping[tuple[str, int], int]
    _max: Mapping[int, int] = field(default_factory=dict)

    def fee(self, entry_station: str, vehicle_class: int) -> int | None:
        return self.fees.get((entry_station, vehicle_class))

    def max_fee(self, vehicle_class: int) -> int | None:
        return self._max.get(vehicle_class)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str = "fee table") -> "FeeTable":
        version = data.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise FeeTableError(f"{source}: version is {version!r}, expected a whole number ≥ 0")
        valid_from = data.get("valid_from")
        if isinstance(valid_from, str):
            try:
                valid_from = dt.datetime.fromisoformat(valid_from)
            except ValueError:
                pass
        if not isinstance(valid_from, dt.datetime):
            raise FeeTableError(f"{source}: valid_from is {valid_from!r}, expected a date-time like 2026-11-01T00:00:00")
        stations = data.get("stations")
        if not isinstance(stations, Mapping) or not stations:
            raise FeeTableError(f"{source}: [stations] is missing or empty")
        fees: dict[tuple[str, int], int] = {}
        for station, classes in stations.items():
            parts = station.split("-")
            if len(parts) != 2 or len(parts[0]) != 4 or not parts[0].isdigit() or len(parts[1]) != 4 \
                    or any(c not in "0123456789abcdef" for c in parts[1].lower()):
                raise FeeTableError(f"{source}: station {station!r} is not NNNN-SSSS (network digits, station hex)")
            if not isinstance(classes, Mapping):
                raise FeeTableError(f"{source}: station {station!r} must be a table of class = fen")
            for klass, amount in classes.items():
                try:
                    k = int(klass)
                except ValueError:
                    k = -1
                if not is_known_vehicle_class(k):
                    raise FeeTableError(f"{source}: station {station!r} class {klass!r} is not a vehicle class "
                                        f"(1–4, 11–16, 21–26)")
                if not isinstance(amount, int) or isinstance(amount, bool) or not 0 <= amount <= 0xFFFFFFFF:
                    raise FeeTableError(f"{source}: station {station!r} class {k} fee is {amount!r}, "
                                        f"expected whole fen 0–4294967295")
                fees[(station.lower(), k)] = amount
        maximum: dict[int, int] = {}
        for (_, k), amount in fees.items():
            maximum[k] = max(amount, maximum.get(k, 0))
        return cls(version, valid_from, fees, maximum)

    @classmethod
    def load(cls, path: str | Path) -> "FeeTable":
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as err:
            raise FeeTableError(f"cannot read fee table {path}: {err.strerror}") from None
        except tomllib.TOMLDecodeError as err:
            raise FeeTableError(f"fee table {path} is not valid TOML: {err}") from None
        return cls.from_mapping(data, source=str(path))


class FeeSchedule:
    """The table in force and the next one, switched by time. Satisfies FeeLookup."""

    def __init__(self, current: FeeTable) -> None:
        self.current = current
        self.pending: FeeTable | None = None

    @property
    def version(self) -> int:
        return self.current.version

    def offer(self, table: FeeTable, now: dt.datetime) -> None:
        """A new table from the centre: in force at once if valid, else pending."""
        if table.version <= self.current.version:
            raise FeeTableError(f"fee table version {table.version} is not newer than {self.current.version}")
        if table.valid_from <= now:
            self.current, self.pending = table, None
        else:
            self.pending = table

    def tick(self, now: dt.datetime) -> bool:
        if self.pending is not None and self.pending.valid_from <= now:
            self.current, self.pending = self.pending, None
            return True
        return False

    def fee(self, entry_station: str, vehicle_class: int) -> int | None:
        return self.current.fee(entry_station.lower(), vehicle_class)

    def max_fee(self, vehicle_class: int) -> int | None:
        return self.current.max_fee(vehicle_class)
