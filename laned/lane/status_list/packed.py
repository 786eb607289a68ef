"""The packed form of a list version and the merging that builds the next one.

A partition is a sequence of sorted ``array('Q')`` chunks of at most CHUNK words
(``ident << 8 | reason``); a version (:class:`Snapshot`) maps partition names to them.
The generators here do bounded work between their yields (a :class:`Budget` counts it):
grouping delta words by partition, sorting them in runs, and merging them into the chunks
they touch while sharing the others. :class:`PackedEntries` holds a parsed payload's
entries as arrays, so the garbage collector never walks 100,000 tuples.
"""

from __future__ import annotations

import heapq
import sys
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Generator, Iterator, Sequence
from itertools import islice
from operator import eq
from typing import Any, NamedTuple

from laned.lane import status_list as tuning
from laned.lane.status_list.entries import IDENT_END, Entry, Key, StatusListError, check_entry, valid_part

EMPTY = array("Q")


class Part(NamedTuple):
    """One partition: sorted chunks of ≤ CHUNK words, and the first ident of each chunk."""

    fences: array[int]
    chunks: tuple[array[int], ...]
    entries: int

    @classmethod
    def of(cls, chunks: Sequence[array[int]]) -> Part:
        return cls(array("Q", [c[0] >> 8 for c in chunks]), tuple(chunks), sum(map(len, chunks)))

    @classmethod
    def from_sorted(cls, words: Sequence[int]) -> Part:
        return cls.of([array("Q", words[i:i + tuning.CHUNK]) for i in range(0, len(words), tuning.CHUNK)])

class Snapshot(NamedTuple):
    """One published version; neither the dict, the partitions nor the chunks change after
    publishing (a later version shares the chunks a delta did not touch)."""

    version: int
    tables: dict[str, Part]
    entries: int


class Budget:
    """Counts work units and says when a step's worth has been done."""

    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = tuning.STEP_WORK

    def spend(self, units: int) -> bool:
        self.left -= units
        if self.left > 0:
            return False
        self.left = tuning.STEP_WORK
        return True


def find(part: Part, ident: int) -> int | None:
    """The reason of ``ident`` in ``part``, or None: bisect the chunk by its first ident
    (an ident below the first chunk lands in the last one and is not found there), then
    the word ``ident << 8`` in the chunk."""
    fences, chunks, _ = part
    chunk = chunks[bisect_right(fences, ident) - 1] if len(chunks) > 1 else chunks[0]
    i = bisect_left(chunk, ident << 8)
    if i < len(chunk):
        word = chunk[i]
        if word >> 8 == ident:
            return word & 0xFF
    return None


def words_of(items: Sequence[Entry] | Sequence[Key], *, removing: bool) -> Iterator[tuple[str, int]]:
    """(partition, word) of each entry; a removal is a word with reason 0."""
    if isinstance(items, PackedEntries):
        yield from items.words()
        return
    low = 0 if removing else 1
    for item in items:
        part, ident, reason = (item[0], item[1], 0) if removing else item  # type: ignore[misc]  # adding: an Entry
        if not (low <= reason < 256 and 0 <= ident < IDENT_END):
            check_entry(part, ident, reason, removing=removing)
        yield part, ident << 8 | reason


def group_words(words: Iterator[tuple[str, int]], groups: dict[str, array[int]],
           budget: Budget) -> Generator[None, None, None]:
    """Sort the words into per-partition arrays.

    Arrays, not lists: the cyclic garbage collector walks every item of a list, and the
    rare collection that finds 100,000 list items would hold the loop for milliseconds
    (2 million: 100 ms); arrays are not walked.
    """
    for n, (part, word) in enumerate(words, 1):
        same = groups.get(part)
        if same is None:
            if not valid_part(part):
                check_entry(part, word >> 8, word & 0xFF, removing=True)
            same = groups[part] = array("Q")
        same.append(word)
        if n % 4 == 0 and budget.spend(1):
            yield


def sorted_steps(words: array[int], budget: Budget) -> Generator[None, None, Iterator[int]]:
    """Sort ``words`` in runs of SORT_RUN (kept as arrays) and merge them lazily."""
    if len(words) <= tuning.SORT_RUN:
        return iter(sorted(words))
    runs = []
    for start in range(0, len(words), tuning.SORT_RUN):
        runs.append(array("Q", sorted(words[start:start + tuning.SORT_RUN])))
        if budget.spend(tuning.SORT_RUN // 8):
            yield
    return heapq.merge(*runs)


class _ChunkWriter:
    """Builds a partition's new chunks: words and runs of old words are written into
    preallocated CHUNK-sized arrays (no regrowth), unchanged old chunks are shared."""

    __slots__ = ("chunks", "_cur", "_view", "_fill")

    def __init__(self) -> None:
        self.chunks: list[array[int]] = []
        self._cur = EMPTY
        self._view = memoryview(EMPTY)
        self._fill = 0

    def _room(self) -> int:
        if self._fill == len(self._cur):
            self._close()
            self._cur = array("Q", [0]) * tuning.CHUNK
            self._view = memoryview(self._cur)
        return len(self._cur) - self._fill

    def _close(self) -> None:
        if self._fill:
            self.chunks.append(self._cur if self._fill == len(self._cur) else self._cur[:self._fill])
        self._view.release()
        self._cur, self._view, self._fill = EMPTY, memoryview(EMPTY), 0

    def append(self, word: int) -> None:
        self._room()
        self._cur[self._fill] = word
        self._fill += 1

    def replace_last(self, word: int) -> None:
        self._cur[self._fill - 1] = word

    def copy(self, view: memoryview, start: int, stop: int) -> None:
        """Append ``view[start:stop]`` (words of an old chunk) with memcpy."""
        while start < stop:
            n = min(self._room(), stop - start)
            self._view[self._fill:self._fill + n] = view[start:start + n]
            self._fill += n
            start += n

    def share(self, chunk: array[int]) -> None:
        self._close()
        self.chunks.append(chunk)

    def finish(self) -> Part | None:
        self._close()
        return Part.of(self.chunks) if self.chunks else None


def merge_part(old: Part | None, stream: Iterator[int], budget: Budget) -> Generator[None, None, Part | None]:
    """A new partition: ``old`` with the sorted delta words of ``stream`` merged in.

    Old chunks no delta word falls into are shared with the new partition, untouched;
    the others are merged into new chunks.
    """
    out = _ChunkWriter()
    pending = next(stream, None)

    def below(limit: int) -> Iterator[int]:
        nonlocal pending
        while pending is not None and pending < limit:
            yield pending
            pending = next(stream, None)

    if old is not None:
        fences, chunks = old.fences, old.chunks
        for c, chunk in enumerate(chunks):
            limit = fences[c + 1] << 8 if c + 1 < len(chunks) else 1 << 64
            if pending is None or pending >= limit:
                out.share(chunk)
                if budget.spend(1):
                    yield
            else:
                yield from _merge_chunk(out, chunk, below(limit), budget)
    if pending is not None:  # no old chunks
        yield from _merge_chunk(out, EMPTY, below(1 << 64), budget)
    return out.finish()


def _merge_chunk(out: _ChunkWriter, old: array[int], stream: Iterator[int],
                 budget: Budget) -> Generator[None, None, None]:
    """Write ``old`` with the sorted delta words of ``stream`` merged in to ``out``.

    A word with reason 0 removes its ident, any other adds or replaces it; the same
    ident twice in the delta keeps the larger reason. The merged chunk is gathered as
    pieces — runs of ``old`` between delta words (memoryview slices, no copy) and the
    packed delta words — joined and written with memcpy every MERGE_PIECES pieces and at
    the end: per delta word only a bisect and two list appends run in Python.
    """
    n = len(old)
    bview = memoryview(old).cast("B")
    pieces: list[Any] = []
    pos = 0
    prev_ident = -1
    kept_prev = False
    order = sys.byteorder
    gallop, merge_pieces = tuning.GALLOP, tuning.MERGE_PIECES

    def flush() -> bool:
        data = b"".join(pieces)
        pieces.clear()
        words = memoryview(data).cast("Q")
        out.copy(words, 0, len(words))
        words.release()
        return budget.spend(len(data) // (8 * tuning.COPY_UNIT) + 1)

    try:
        for word in stream:
            ident = word >> 8
            reason = word & 0xFF
            if ident == prev_ident:
                if reason:
                    if kept_prev:
                        pieces[-1] = word.to_bytes(8, order)
                    else:
                        pieces.append(word.to_bytes(8, order))
                        kept_prev = True
                continue
            prev_ident = ident
            probe = word - reason
            hi = pos + gallop
            if hi < n and old[hi] >= probe:
                i = bisect_left(old, probe, pos, hi)
            else:
                i = bisect_left(old, probe, pos)
            if pos < i:
                pieces.append(bview[pos << 3:i << 3])
                pos = i
            if pos < n and old[pos] >> 8 == ident:
                pos += 1  # replaced or removed
            kept_prev = reason != 0
            if kept_prev:
                pieces.append(word.to_bytes(8, order))
            if len(pieces) >= merge_pieces:
                # Not while the last piece may still be replaced by a duplicate ident.
                last = pieces.pop() if kept_prev else None
                spent = flush()
                if last is not None:
                    pieces.append(last)
                if spent:
                    yield
            elif budget.spend(1):
                yield
        while pos < n:
            end = min(n, pos + tuning.STEP_WORK * tuning.COPY_UNIT)
            pieces.append(bview[pos << 3:end << 3])
            pos = end
            if flush():
                yield
        if pieces:
            flush()
    finally:
        pieces.clear()
        bview.release()


def dedupe_sorted(words: list[int]) -> list[int]:
    """Sorted words with one word per ident: the last, i.e. the larger reason."""
    shift = (8).__rrshift__  # w -> w >> 8
    if not any(map(eq, map(shift, words), map(shift, islice(words, 1, None)))):
        return words
    out: list[int] = []
    last = -1
    for word in words:
        if word >> 8 == last:
            out[-1] = word
        else:
            out.append(word)
            last = word >> 8
    return out


class PackedEntries(Sequence[Any]):
    """Parsed entries (or keys, for ``remove``) held as a partition table and 64-bit words.

    A 100,000-entry delta is then ~1 MB of arrays instead of 100,000 tuples that the
    garbage collector would have to walk; items are made into Entry / Key on access. The
    arrays are blocks of about PACKED_BLOCK entries, not one array each: a national list
    is 20 million entries (160 MB of words), and growing one such array copies it whole
    (10–20 ms) once the allocator has put it on the heap, and freeing it unmaps it all at
    once; blocks are grown and freed (:meth:`release_steps`) 512 KiB at a time.
    """

    __slots__ = ("removing", "_parts", "_part_no", "_index", "_words", "_blocks", "_before")

    def __init__(self, *, removing: bool) -> None:
        self.removing = removing
        self._parts: list[str] = []
        self._part_no: dict[str, int] = {}
        self._index = array("H")  # the block being filled
        self._words = array("Q")
        self._blocks: list[tuple[array[int], array[int]]] = []  # the full ones before it
        self._before = 0  # entries in _blocks

    def room(self) -> None:
        """Start a new block if the current one is full (before a run of appends)."""
        if len(self._words) >= tuning.PACKED_BLOCK:
            self._blocks.append((self._index, self._words))
            self._before += len(self._words)
            self._index, self._words = array("H"), array("Q")

    def append(self, part: str, ident: int, reason: int = 0) -> None:
        no = self._part_no.get(part)
        if no is None:
            no = self._part_no[part] = len(self._parts)
            self._parts.append(part)
        self.room()
        self._index.append(no)
        self._words.append(ident << 8 | reason)

    def _all(self) -> list[tuple[array[int], array[int]]]:
        return [*self._blocks, (self._index, self._words)]

    def _pairs(self) -> Iterator[tuple[int, int]]:
        """(partition number, word) of every entry, in order."""
        for index, words in self._all():
            yield from zip(index, words)

    def words(self) -> Iterator[tuple[str, int]]:
        parts = self._parts
        for no, word in self._pairs():
            yield parts[no], word

    def __len__(self) -> int:
        return self._before + len(self._words)

    def group(self, groups: dict[str, array[int]], budget: Budget) -> Generator[None, None, None]:
        """Append each word to its partition's array in ``groups``, in bounded steps."""
        sinks: list[array[int]] = []
        for part in self._parts:
            sink = groups.get(part)
            if sink is None:
                sink = groups[part] = array("Q")
            sinks.append(sink)
        appends = [sink.append for sink in sinks]
        for index, words in self._all():
            for start in range(0, len(words), 4 * tuning.STEP_WORK):
                stop = start + 4 * tuning.STEP_WORK
                for no, word in zip(index[start:stop], words[start:stop]):
                    appends[no](word)
                if budget.spend(tuning.STEP_WORK // 2):
                    yield

    def check_disjoint(self, remove: PackedEntries) -> Generator[None, None, None]:
        """StatusListError naming both entries if an identity is both here and in ``remove``."""
        # Keys are ident << 16 | partition number in *this* table (< 65,536 partitions).
        here = self._part_no
        xlat = [here.get(part, -1) for part in remove._parts]
        removed: dict[int, int] = {}
        for i, (no, word) in enumerate(remove._pairs()):
            mine = xlat[no]
            if mine >= 0:
                removed.setdefault(word >> 8 << 16 | mine, i)
            if i % (4 * tuning.PARSE_STEP) == 0:
                yield
        for i, (no, word) in enumerate(self._pairs()):
            j = removed.get(word >> 8 << 16 | no)
            if j is not None:
                raise StatusListError(f"add[{i}] and remove[{j}] both name {Key(self._parts[no], word >> 8)}")
            if i % (4 * tuning.PARSE_STEP) == 0:
                yield

    def release_steps(self) -> Generator[None, None, None]:
        """Free the entries a block per step, once they are applied: this is then empty."""
        while self._blocks:
            self._blocks.pop()
            yield
        self._index, self._words, self._before = array("H"), array("Q"), 0

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"entry {i} of {n}")
        for index, words in self._all():
            if i < len(words):
                word = words[i]
                part = self._parts[index[i]]
                return Key(part, word >> 8) if self.removing else Entry(part, word >> 8, word & 0xFF)
            i -= len(words)
        raise IndexError(f"entry {i} of {n}")  # not reached: the blocks hold len(self) entries

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and len(self) == len(other) and all(a == b for a, b in zip(self, other))

    def __repr__(self) -> str:
        return f"<{len(self)} packed {'keys' if self.removing else 'entries'}>"
