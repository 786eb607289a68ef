"""Records carried inside frames: the 0015 card issue file, the 0019 station record,
and the code tables for vehicle class and plate colour.

Sources: RSU_PROTOCOL.md, "Records inside the frames". Where the layout is inferred
(the tail of 0015, the sub-layout of the 0019 station record, which varies by province)
the raw bytes stay available next to the decoded fields.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass

from laned.protocol.errors import FieldError
from laned.protocol.fields import _bcd_date, gbk_text


class CardType(enum.IntEnum):
    """0015 card type."""

    STORED_VALUE = 0x16  # 22
    CREDIT = 0x17  # 23


class PlateColour(enum.IntEnum):
    """National usage (inferred, RSU_PROTOCOL.md)."""

    BLUE = 0
    YELLOW = 1
    BLACK = 2
    WHITE = 3
    GRADIENT_GREEN = 4
    YELLOW_GREEN = 5


PLATE_COLOUR_NAMES = {0: "blue 蓝", 1: "yellow 黄", 2: "black 黑", 3: "white 白", 4: "gradient green 渐变绿",
                      5: "yellow-green 黄绿"}


def vehicle_class_name(code: int) -> str:
    """Classes 1–4 passenger, 11–16 truck, 21–26 special-purpose (RSU_PROTOCOL.md)."""
    if 1 <= code <= 4:
        return f"passenger class {code} 客{code}"
    if 11 <= code <= 16:
        return f"truck class {code - 10} 货{code - 10}"
    if 21 <= code <= 26:
        return f"special-purpose class {code - 20} 专{code - 20}"
    return f"unknown class {code}"


def is_known_vehicle_class(code: int) -> bool:
    return 1 <= code <= 4 or 11 <= code <= 16 or 21 <= code <= 26


def _bcd_digits(raw: bytes, what: str) -> str:
    s = raw.hex()
    if not s.isdigit():
        raise FieldError(f"{what} {s} is not BCD", raw)
    return s


@dataclass(frozen=True, slots=True)
class CardIssueFile:
    """Card file 0015, 43 bytes."""

    issuer_id: bytes  # 8
    card_type: int
    card_version: int
    network: str  # 2 bytes BCD, e.g. "3701"
    card_number: str  # 8 bytes BCD, 16 digits
    start_date: dt.date | None
    expiry_date: dt.date | None
    plate: str
    user_type: int
    plate_colour: int  # inferred position
    vehicle_class: int  # inferred position
    raw: bytes

    SIZE = 43

    @classmethod
    def decode(cls, raw: bytes) -> CardIssueFile:
        if len(raw) != cls.SIZE:
            raise FieldError(f"card file 0015 is {len(raw)} bytes, expected {cls.SIZE}", raw)
        return cls(
            issuer_id=raw[0:8],
            card_type=raw[8],
            card_version=raw[9],
            network=_bcd_digits(raw[10:12], "0015 network number"),
            card_number=_bcd_digits(raw[12:20], "0015 card number"),
            start_date=_bcd_date(raw[20:24]),
            expiry_date=_bcd_date(raw[24:28]),
            plate=gbk_text(raw[28:40]),
            user_type=raw[40],
            plate_colour=raw[41],
            vehicle_class=raw[42],
            raw=raw,
        )

    @property
    def card_key(self) -> str:
        """Network + card number: how status lists name a card."""
        return self.network + self.card_number


@dataclass(frozen=True, slots=True)
class StationRecord:
    """Card file 0019: 3 header bytes and the 40-byte station record C6 writes back.

    The header and the first fields (entry network and station, lane, entry time,
    vehicle class, in/out status) are common; the rest (staff and device ids, plate)
    varies by province and stays in ``tail``. (1) copies bytes 5–8 of the record into
    B5.WrFileTime, which fixes the entry time's position.
    """

    application_type: int
    record_length: int
    lock_flag: int
    network: str
    station: bytes  # 2
    lane: int
    entry_time: int  # unix seconds; 0 = no entry recorded
    vehicle_class: int
    in_out_status: int
    tail: bytes  # 29
    record: bytes  # the 40 bytes, as C6 writes them

    SIZE = 43

    @classmethod
    def decode(cls, raw: bytes) -> StationRecord:
        if len(raw) != cls.SIZE:
            raise FieldError(f"card file 0019 is {len(raw)} bytes, expected {cls.SIZE}", raw)
        rec = raw[3:]
        return cls(
            application_type=raw[0],
            record_length=raw[1],
            lock_flag=raw[2],
            network=_bcd_digits(rec[0:2], "0019 network number"),
            station=rec[2:4],
            lane=rec[4],
            entry_time=int.from_bytes(rec[5:9], "big"),
            vehicle_class=rec[9],
            in_out_status=rec[10],
            tail=rec[11:],
            record=rec,
        )

    @property
    def station_key(self) -> str:
        """Network + station, the fee table's entry-station key (e.g. "3701-0102")."""
        return f"{self.network}-{self.station.hex()}"

    @property
    def is_empty(self) -> bool:
        return self.entry_time == 0 and self.station == b"\x00\x00"
