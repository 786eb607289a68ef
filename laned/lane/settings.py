"""The lane's settings, and the lookups the machine reads synchronously (in memory, no I/O)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol

from laned.lane.barrier import InterlockSettings
from laned.lane.modes import DisplayPolicy


class StatusLookup(Protocol):
    @property
    def version(self) -> int: ...  # read-only: the lane never sets it

    def is_listed_card(self, network: str, card_number: str) -> int | None: ...

    def is_listed_obu(self, obu: bytes) -> int | None: ...


class FeeLookup(Protocol):
    @property
    def version(self) -> int: ...  # read-only: the lane never sets it

    def fee(self, entry_station: str, vehicle_class: int) -> int | None: ...

    def max_fee(self, vehicle_class: int) -> int | None: ...


class EmptyStatusList:
    version = 0

    def is_listed_card(self, network: str, card_number: str) -> int | None:
        return None

    def is_listed_obu(self, obu: bytes) -> int | None:
        return None


class Direction(enum.StrEnum):
    ENTRY = "entry"
    EXIT = "exit"


class MissingEntryPolicy(enum.StrEnum):
    MAX_FEE = "max_fee"
    REFUSE = "refuse"


@dataclass(frozen=True)
class LaneSettings:
    lane_id: str = "G0001-01"
    direction: Direction = Direction.EXIT
    network: str = "3701"  # BCD, 4 digits
    station: bytes = b"\x01\x02"
    lane_number: int = 1
    accepted_issuers: frozenset[bytes] = frozenset()  # empty: every issuer
    redetect_window: float = 300.0  # s an OBU/card that paid is recognised
    b5_timeout: float = 1.0  # s after C6
    transaction_timeout: float = 3.0  # s from B2 to the intent; later stages wait b5_timeout
    # A vehicle let through that has not passed the safety loop after this long (it
    # turned back, or was never there) no longer holds the arm open for whoever comes next.
    passage_timeout: float = 60.0
    # A paid OBU reported again after paying, then not heard for this long, has left the zone:
    # its payment stops holding the arm open (docs/lane_sensors.md). 0: off.
    left_zone_after: float = 5.0
    refetch_attempts: int = 1
    missing_entry_policy: MissingEntryPolicy = MissingEntryPolicy.MAX_FEE
    allow_credit_cards: bool = True
    tx_power: int = 10
    pll_channel: int = 0
    interlock: InterlockSettings = field(default_factory=InterlockSettings)
    display_policy: DisplayPolicy = DisplayPolicy.CONTINUE  # does losing the fee display close ETC?
