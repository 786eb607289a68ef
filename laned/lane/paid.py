"""Who paid, recently: the lane's memory for "an OBU seen again after paying".

An OBU that paid is still in the RSU's zone for a while and is reported again. Within
the re-detection window *the same vehicle* is let through on its record and never
charged again: the same OBU, or the same card with the same plate (the RSU re-reading
the card through another read). A recently paid card in another vehicle (another OBU
and another plate) is a new transaction — one payment must not let two vehicles out —
and a sign of a card shared between vehicles. The lane looks this up on every B2 and
B4, so the lookup is by key (OBU id, card) and does not grow with the traffic of the
window.
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

K = TypeVar("K")


@dataclass
class Paid:
    """An OBU/card that paid: recognised again within the re-detection window."""

    obu_id: bytes
    card_key: str | None
    at: float  # monotonic
    seq: int | None
    settled: bool = True  # False: its charge is unknown, it may not have paid
    plate: str | None = None  # of the vehicle that paid (B3, else the card's)
    purchase_time: dt.datetime | None = None  # what the C6 told the card: its B5 (and a C8's) carries it
    refetch_tried: bool = False  # an unknown outcome the lane already asked the OBU about (C8)
    reported_again: bool = False  # the journal has its first "seen again" event

    def same_vehicle(self, obu_id: bytes, card_key: str | None, plate: str | None) -> bool:
        """This payment is the vehicle's own: its OBU, or its card and its plate."""
        if self.obu_id == obu_id:
            return True
        return (card_key is not None and self.card_key == card_key
                and plate is not None and self.plate is not None and _plate(self.plate) == _plate(plate))


class PaidRecords:
    """The payments of the re-detection window, by OBU id and by card."""

    def __init__(self, records: Iterable[Paid] = ()) -> None:
        self._order: deque[Paid] = deque()
        self._by_obu: dict[bytes, list[Paid]] = {}
        self._by_card: dict[str, list[Paid]] = {}
        for p in sorted(records, key=lambda p: p.at):
            self.add(p)

    def add(self, p: Paid) -> None:
        self._order.append(p)
        self._by_obu.setdefault(p.obu_id, []).append(p)
        if p.card_key is not None:
            self._by_card.setdefault(p.card_key, []).append(p)

    def expire(self, now: float, window: float) -> None:
        """Forget payments older than ``window`` seconds."""
        while self._order and now - self._order[0].at > window:
            p = self._order.popleft()
            _forget(self._by_obu, p.obu_id, p)
            if p.card_key is not None:
                _forget(self._by_card, p.card_key, p)

    def find(self, obu_id: bytes, card_key: str | None) -> list[Paid]:
        """Payments of this OBU or of this card."""
        found = list(self._by_obu.get(obu_id, ()))
        if card_key is not None:
            found += [p for p in self._by_card.get(card_key, ()) if p not in found]
        return found

    def __len__(self) -> int:
        return len(self._order)

    def __iter__(self) -> Iterator[Paid]:
        return iter(self._order)


def _plate(plate: str) -> str:
    return plate.strip().upper()


def _forget(index: dict[K, list[Paid]], key: K, p: Paid) -> None:
    entries = index.get(key)
    if entries is None:
        return
    entries[:] = [e for e in entries if e is not p]
    if not entries:
        del index[key]
