"""Field kinds of the RSU messages: how bytes on the wire become typed values.

Each kind names its construct type (used to build the compiled struct of a layout) and
converts between the raw value construct gives (int or bytes) and the typed value of the
message (``date``, ``datetime``, ``str`` …). Kinds whose typed value *is* the raw value
(integers, opaque bytes) have no converter, so the hot path skips them.

Conventions (RSU_PROTOCOL.md, "Common conventions"): integers big-endian; money in fen,
u32; ``DateTime`` 7 bytes BCD ``YYYYMMDDhhmmss``; dates 4 bytes BCD ``YYYYMMDD``, all
zero meaning "no date"; plates GBK padded with ``00``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import construct as cs

from laned.protocol.errors import FieldError


@dataclass(frozen=True)
class Kind:
    """How one field is laid out. ``size`` is None for variable-length kinds."""

    name: str
    size: int | None
    con: Any  # construct type
    decode: Callable[[Any], Any] | None = None  # raw → typed; None = identity
    encode: Callable[[Any], Any] | None = None  # typed → raw; None = identity
    length_from: str | None = None  # variable bytes: the field holding the length
    nullable: bool = False  # None is a value on the wire (all-zero date), not an absent field


U8 = Kind("u8", 1, cs.Int8ub)
U16 = Kind("u16", 2, cs.Int16ub)
U32 = Kind("u32", 4, cs.Int32ub)


def Hex(n: int) -> Kind:
    """Opaque bytes: ids, keys, TACs, records kept raw. Shown as lowercase hex."""
    return Kind(f"hex{n}", n, cs.Bytes(n))


# BCD byte → its value 0–99. A byte that is not BCD maps to a value that no year, month,
# day, hour, minute or second accepts, so ``datetime`` itself rejects it: the hot path
# needs no separate digit check.
_BCD = tuple((b >> 4) * 10 + (b & 15) if b >> 4 < 10 and b & 15 < 10 else -10_000 for b in range(256))


def _not_bcd(raw: bytes, err: ValueError) -> str:
    s = raw.hex()
    return f"{s} ({'not BCD' if not s.isdigit() else err})"


def _bcd_date(raw: bytes) -> dt.date | None:
    if raw == b"\x00\x00\x00\x00":
        return None
    b = _BCD
    try:
        return dt.date(b[raw[0]] * 100 + b[raw[1]], b[raw[2]], b[raw[3]])
    except ValueError as err:
        raise FieldError(f"BCD date {_not_bcd(raw, err)} is not a date", raw) from None


def _bcd_date_raw(value: dt.date | None) -> bytes:
    if value is None:
        return b"\x00\x00\x00\x00"
    return bytes.fromhex(f"{value.year:04d}{value.month:02d}{value.day:02d}")


def _bcd_datetime(raw: bytes) -> dt.datetime | None:
    if raw == b"\x00\x00\x00\x00\x00\x00\x00":
        return None
    b = _BCD
    try:
        return dt.datetime(b[raw[0]] * 100 + b[raw[1]], b[raw[2]], b[raw[3]], b[raw[4]], b[raw[5]], b[raw[6]])
    except ValueError as err:
        raise FieldError(f"BCD date-time {_not_bcd(raw, err)} is not a time", raw) from None


def _bcd_datetime_raw(value: dt.datetime | None) -> bytes:
    if value is None:
        return bytes(7)
    return bytes.fromhex(value.strftime("%Y%m%d%H%M%S").zfill(14))


BcdDate = Kind("bcd_date", 4, cs.Bytes(4), _bcd_date, _bcd_date_raw, nullable=True)
BcdDateTime = Kind("bcd_datetime", 7, cs.Bytes(7), _bcd_datetime, _bcd_datetime_raw, nullable=True)


def gbk_text(raw: bytes) -> str:
    """GBK text padded with 00 or spaces (both seen in the field)."""
    try:
        return raw.rstrip(b"\x00 ").decode("gbk")
    except UnicodeDecodeError as err:
        raise FieldError(f"text {raw.hex()} is not GBK ({err.reason})", raw) from None


def Gbk(n: int) -> Kind:
    def encode(value: str) -> bytes:
        try:
            raw = value.encode("gbk")
        except UnicodeEncodeError as err:
            raise FieldError(f"{value!r} cannot be written in GBK ({err.reason})") from None
        if len(raw) > n:
            raise FieldError(f"{value!r} is {len(raw)} bytes in GBK, the field holds {n}")
        return raw.ljust(n, b"\x00")

    return Kind(f"gbk{n}", n, cs.Bytes(n), gbk_text, encode)


def VarBytes(length_from: str) -> Kind:
    """Bytes whose count is the value of an earlier integer field (EF04Info)."""
    return Kind(f"bytes[{length_from}]", None, cs.Bytes(cs.this[length_from]), length_from=length_from)


Rest = Kind("rest", None, cs.GreedyBytes)


def to_jsonable(value: Any) -> Any:
    """The JSON form the decode tool and the vectors use."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).hex()
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    return value
