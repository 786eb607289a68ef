"""Identities on the status list (cards, OBU ids, OBU serials), their keys, and a delta.

How an identity becomes a partition and an exact 56-bit ident is in the package
docstring (:mod:`laned.lane.status_list`, "Key encoding").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, TypeGuard

from laned.masking import mask_card

DEFAULT_REASON = 1  # "blacklisted / lost" when the centre gives no reason
MAX_VERSION = (1 << 63) - 1

IDENT_END = 1 << 56
ID_PARTS = tuple(f"I{b:02x}" for b in range(256))
SERIAL_PARTS = tuple(f"S{b:02x}" for b in range(256))
OBU_PARTS = frozenset(ID_PARTS + SERIAL_PARTS)


class StatusListError(ValueError):
    """A list, delta, entry or file that cannot be used; says which and why."""


class StatusListUnreadable(StatusListError):
    """The file is there but the system would not give its bytes (permission, I/O error).

    Unlike a file whose bytes are wrong, its content may be good: it is not set aside, and
    the fault (the disk, the file's owner) is the field engineer's to mend."""


class Key(NamedTuple):
    """An identity as stored: its partition and its ident (see the module docstring)."""

    part: str
    ident: int

    def with_reason(self, reason: int = DEFAULT_REASON) -> Entry:
        return Entry(self.part, self.ident, reason)

    def __str__(self) -> str:
        kind = self.part[0]
        if kind == "C":
            return f"card {self.part[1:]}-{mask_card(f'{self.ident:016d}')}"
        body = bytes.fromhex(self.part[1:]) + self.ident.to_bytes(3 if kind == "I" else 7, "big")
        return f"OBU {'id' if kind == 'I' else 'serial'} {body.hex()}"


class Entry(NamedTuple):
    """A listed identity and its reason code (1–255)."""

    part: str
    ident: int
    reason: int


def _is_digits(text: object, n: int) -> bool:
    return isinstance(text, str) and len(text) == n and text.isascii() and text.isdigit()


def card_key(network: str, card_number: str) -> Key:
    """The key of a card; ValueError unless 4 + 16 ASCII digits."""
    if not (_is_digits(network, 4) and _is_digits(card_number, 16)):
        raise ValueError(f"card {network!r}-{card_number!r} is not 4 + 16 digits")
    return Key("C" + network, int(card_number))


def obu_key(obu: bytes) -> Key:
    """The key of an OBU id (4 bytes) or OBU serial number (8 bytes)."""
    if len(obu) == 4:
        return Key(ID_PARTS[obu[0]], int.from_bytes(obu[1:], "big"))
    if len(obu) == 8:
        return Key(SERIAL_PARTS[obu[0]], int.from_bytes(obu[1:], "big"))
    raise ValueError(f"OBU {bytes(obu).hex()} is {len(obu)} bytes, expected 4 (id) or 8 (serial)")


def valid_part(part: object) -> TypeGuard[str]:
    return isinstance(part, str) and (part in OBU_PARTS or (part[:1] == "C" and _is_digits(part[1:], 4)))


@dataclass(frozen=True)
class Delta:
    """What the centre sent, validated: a delta on ``base``, or a full list (``base`` None)."""

    version: int
    base: int | None
    add: Sequence[Entry] = ()
    remove: Sequence[Key] = ()

    @property
    def is_full(self) -> bool:
        return self.base is None

    def __str__(self) -> str:
        what = "full list" if self.base is None else f"delta {self.base}→{self.version}"
        return f"status list {what} (+{len(self.add)} −{len(self.remove)})"


def check_version(version: object, what: str) -> int:
    if not isinstance(version, int) or isinstance(version, bool) or not 0 <= version <= MAX_VERSION:
        raise StatusListError(f"{what} is {version!r}, expected a whole number 0–{MAX_VERSION}")
    return version


def check_entry(part: object, ident: object, reason: object, *, removing: bool = False) -> None:
    if not valid_part(part):
        raise StatusListError(f"entry partition {part!r} is not C+network, I+hex byte or S+hex byte")
    if not isinstance(ident, int) or not 0 <= ident < IDENT_END:
        raise StatusListError(f"entry {part}/{ident!r}: ident out of range")
    if not isinstance(reason, int) or not (removing or 0 < reason) or not 0 <= reason < 256:
        raise StatusListError(f"entry {Key(part, ident)}: reason {reason!r} is not 1–255")
