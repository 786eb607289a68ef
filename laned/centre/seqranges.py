"""Sets of sequence numbers kept as sorted, disjoint, inclusive ranges (sans-IO).

A lane numbers its journal from 1 without gaps, so the seqs the centre holds are almost
always one range (``1…n``) plus a few islands while a backlog arrives out of order. Keeping
ranges, not numbers, makes "what is missing below the highest seq" cheap for any number of
rows: adding a seq is a binary search and at most one merge.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True, slots=True, order=True)
class SeqRange:
    """``first`` … ``last``, both included."""

    first: int
    last: int

    def __post_init__(self) -> None:
        if self.last < self.first:
            raise ValueError(f"range {self.first}…{self.last}: last is below first")

    def __len__(self) -> int:
        return self.last - self.first + 1

    def __contains__(self, seq: object) -> bool:
        return isinstance(seq, int) and self.first <= seq <= self.last

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


def coalesce(seqs: Iterable[int]) -> list[SeqRange]:
    """Contiguous runs of ``seqs`` (any order, repeats allowed) as ranges, ascending."""
    out: list[SeqRange] = []
    first = last = None
    for seq in sorted(set(seqs)):
        if last is not None and seq == last + 1:
            last = seq
            continue
        if first is not None and last is not None:
            out.append(SeqRange(first, last))
        first = last = seq
    if first is not None and last is not None:
        out.append(SeqRange(first, last))
    return out


class SeqSet:
    """The seqs seen, as ranges; :meth:`gaps` is what is missing from ``start`` to the highest."""

    def __init__(self, ranges: Iterable[SeqRange] = (), *, start: int = 1) -> None:
        self.start = start  # the lowest seq there should be (a lane's journal starts at 1)
        self._firsts: list[int] = []
        self._lasts: list[int] = []
        for r in ranges:
            self.add_range(r)

    def __contains__(self, seq: object) -> bool:
        if not isinstance(seq, int):
            return False
        i = bisect.bisect_right(self._firsts, seq) - 1
        return i >= 0 and seq <= self._lasts[i]

    def __len__(self) -> int:
        return sum(last - first + 1 for first, last in zip(self._firsts, self._lasts))

    def __iter__(self) -> Iterator[SeqRange]:
        return (SeqRange(f, s) for f, s in zip(self._firsts, self._lasts))

    @property
    def highest(self) -> int | None:
        return self._lasts[-1] if self._lasts else None

    @property
    def watermark(self) -> int:
        """The highest seq below which nothing is missing (``start - 1`` if ``start`` is missing)."""
        if self._firsts and self._firsts[0] <= self.start:
            return self._lasts[0]
        return self.start - 1

    def add(self, seq: int) -> bool:
        """Note ``seq``; False if it was already there."""
        if seq in self:
            return False
        self.add_range(SeqRange(seq, seq))
        return True

    def add_range(self, r: SeqRange) -> None:
        firsts, lasts = self._firsts, self._lasts
        # Every stored range that overlaps or touches r is merged into it.
        lo = bisect.bisect_left(lasts, r.first - 1)
        hi = bisect.bisect_right(firsts, r.last + 1)
        first, last = r.first, r.last
        if lo < hi:
            first = min(first, firsts[lo])
            last = max(last, lasts[hi - 1])
        firsts[lo:hi] = [first]
        lasts[lo:hi] = [last]

    def gaps(self) -> list[SeqRange]:
        """The seqs missing from ``start`` up to the highest seen, as ranges."""
        out: list[SeqRange] = []
        expected = self.start
        for first, last in zip(self._firsts, self._lasts):
            if first > expected:
                out.append(SeqRange(expected, first - 1))
            expected = max(expected, last + 1)
        return out

    def missing(self) -> int:
        return sum(len(r) for r in self.gaps())
