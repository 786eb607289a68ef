"""The status list (blacklist) of cards and OBUs, at national scale.

The toll centre sends a *full list* (a version and every entry) and *deltas* (entries to
add and to remove, a new version, and the ``base`` version they apply on). The lane looks
an OBU up at B2 and a card at B4, inside the RSU's ~1.1 s budget, so a lookup takes
microseconds, and the national list (≈ 20 million entries) has to fit a lane PC.

Identities
    * a card: network number (4 BCD digits, ``"3701"``) + card number (16 digits);
    * an OBU: its 4-byte OBU id, or its 8-byte serial number (the contract serial, which
      the OBU sends with its 8-byte issuer). Lookups are by id and by serial; an issuer
      given in the payload is checked for form but not kept — a serial listed for one
      issuer also matches the same serial of another issuer (a refusal to the manual lane,
      never a free pass).

    Each entry carries a reason code 1–255 (1 lost/blacklisted, 2 insufficient,
    3 tampered …; the centre's codes are kept as given). 0 is never a reason, so a
    lookup's answer can be tested for truth.

Key encoding: exact, not hashed
    Twenty decimal digits (network + card number) need 67 bits, and an 8-byte serial
    needs all 64, so no single 64-bit integer holds every identity exactly. A 64-bit
    keyed hash (BLAKE2b, 8 bytes) would: with n = 2·10⁷ entries the chance that a given
    unlisted identity collides with some listed key is n / 2⁶⁴ ≈ 1.1·10⁻¹² per lookup,
    but a hit could then not be confirmed without keeping the full identities (≥ 20
    bytes each, over budget). Instead the list is split into *partitions*, and the part
    of the identity that names the partition is not stored per entry:

    ========================  ====================  =============================
    identity                  partition             ident (stored, < 2⁵⁶)
    ========================  ====================  =============================
    card                      ``"C" + network``     card number as an integer
                                                    (< 10¹⁶ < 2⁵⁴)
    OBU id (4 bytes)          ``"I" + hex byte 0``  bytes 1–3 (24 bits)
    OBU serial (8 bytes)      ``"S" + hex byte 0``  bytes 1–7 (56 bits)
    ========================  ====================  =============================

    Every entry is then one exact 64-bit word ``ident << 8 | reason``: **8 bytes per
    entry**, no false hits, no separate reason array. A partition is a sequence of sorted
    ``array('Q')`` *chunks* of at most 65,536 words (512 KiB) plus the first ident of each
    chunk. A lookup is a dict get (≤ 10,000 card networks + 512 OBU partitions), a
    ``bisect`` over the chunk fences and a ``bisect_left`` for ``ident << 8`` in the chunk;
    the word found matches if its top 56 bits are the ident, and its low byte is the
    reason. Chunks bound every copy, fill and free to 512 KiB, whatever the size of a
    partition, and let versions share what a delta did not touch.

Consistency while a delta is applied
    :meth:`StatusList.apply_delta_steps` merges the delta into *new* chunks for the
    chunks it touches, beside the current ones, in bounded steps (≈ 1–2 ms), shares the
    untouched chunks, and publishes the new partitions together with the new version in
    one assignment at the end. Lookups during the application answer **exactly the old
    version** (every entry as it was), and from the step that publishes on, exactly the
    new one — never a mix. A published snapshot and its chunks are never modified, so
    :meth:`StatusList.save` may run in a thread. While a delta is applied the chunks it
    touches exist twice: a 100,000-entry delta spread over 20 million entries touches
    every chunk (≈ +150 MiB for about a second), a small one only its few chunks. The
    replaced chunks are freed a few per step after the switch.

    A delta is checked (base version, version) before anything changes, and a payload
    is fully parsed and validated before it can be applied; if the store is replaced
    while a delta is being applied (a full load, a file load, another delta), that delta
    is refused at its last step and nothing of it is published.

Full loads
    :meth:`StatusList.load_full` takes an iterable of :class:`Entry`, packs each into its
    partition's list and sorts each partition once. It blocks for as long as that takes
    (≈ 2 µs per entry on the 2-core benchmark machine, ~45 s for 20 million) — it is
    meant for start-up and tools; a lane restarts from its saved file
    (:meth:`StatusList.load`, ~0.2 s for 20 million). A full list that arrives from the
    centre while the lane runs goes through :func:`apply_delta` like a delta: parsed and
    applied in bounded steps (≈ 5 µs per entry in all; a 100,000-entry delta, parse
    included, ≈ 0.5 s at 20 million entries — docs/benchmarks.md), with ~20 bytes per entry of
    transient memory besides the payload. Only turning the payload bytes into text is one
    piece of work (~1 ms per MB: 3 ms for a 100,000-entry delta, 0.7 s for a national
    full list in JSON).

Payload format (JSON, UTF-8), from the centre::

    {"version": 42, "base": 41,
     "add": [{"card": "3701-2301000012345678", "reason": 1},
             {"obu": "a1b2c3d4", "reason": 3},
             {"obu": "0102030405060708", "issuer": "c9bdb6ab37010001"}],
     "remove": [{"card": "3701-2301000012349999"}]}

    * ``version``: whole number 0 … 2⁶³−1. ``base``: the version the delta applies on;
      absent or null for a full list (which then must not have ``remove``).
    * entries: exactly one of ``card`` (``NNNN-NNNNNNNNNNNNNNNN``) or ``obu`` (8 hex
      digits: OBU id; 16 hex digits: OBU serial, optionally with ``issuer``, 16 hex
      digits); ``reason`` 1–255, default 1 (ignored in ``remove``). Any other field in
      an entry is an error; other top-level fields are ignored (envelope metadata).
    * an identity in both ``add`` and ``remove`` is refused; an identity added twice
      keeps the larger reason code (the same rule for full loads).
    * every error names the entry: ``add[17] {'card': '3701-12'}: card '3701-12' is not …``.

    :func:`parse_payload_steps` decodes and validates in bounded steps too (one
    ``json.loads`` of a 100,000-entry payload holds the event loop for ~70 ms).

File format (:meth:`StatusList.save` / :meth:`StatusList.load`), little-endian::

    header     "<8sHHQQI" magic b"LNDSTAT1", format 1, 0, version, entries, partitions
    checksum   "<I" CRC-32 of the header, the directory and the arrays, in that order
    directory  "<8sQ" per partition: name (ASCII, NUL-padded), entry count
    arrays     the packed words of each partition, in directory order

    A file whose size, magic, format, directory or checksum is wrong is refused with a
    :class:`StatusListError` naming the file and the fault, and the store keeps its state.
"""

from __future__ import annotations

import heapq
import json
import os
import re
import struct
import sys
import time
import zlib
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from operator import eq
from pathlib import Path
from typing import Any, NamedTuple, TypeGuard, TypeVar, cast

from laned.masking import mask_card

DEFAULT_REASON = 1  # "blacklisted / lost" when the centre gives no reason
MAX_VERSION = (1 << 63) - 1

# Work per step of a delta application, in units of about 2–4 µs on a 2-core lane PC:
# one unit is one delta entry placed (bisect + append) or 1,024 base entries copied.
STEP_WORK = 256
COPY_UNIT = 1024  # base entries copied per unit of work (8 KiB memcpy)
SORT_RUN = 4096  # delta entries sorted at once (one run of the k-way merge)
PARSE_STEP = 256  # payload entries decoded and validated per step
GALLOP = 1024  # look this far ahead before bisecting the whole rest of a chunk
MERGE_PIECES = 512  # pieces of a merged chunk joined and written at once (≤ 256 runs and words)
CHUNK = 1 << 16  # entries per chunk of a partition (512 KiB): every copy, fill and free is bounded by it

_IDENT_END = 1 << 56
_ID_PARTS = tuple(f"I{b:02x}" for b in range(256))
_SERIAL_PARTS = tuple(f"S{b:02x}" for b in range(256))
_OBU_PARTS = frozenset(_ID_PARTS + _SERIAL_PARTS)
_EMPTY = array("Q")
_T = TypeVar("_T")


class StatusListError(ValueError):
    """A list, delta, entry or file that cannot be used; says which and why."""


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
        return Key(_ID_PARTS[obu[0]], int.from_bytes(obu[1:], "big"))
    if len(obu) == 8:
        return Key(_SERIAL_PARTS[obu[0]], int.from_bytes(obu[1:], "big"))
    raise ValueError(f"OBU {bytes(obu).hex()} is {len(obu)} bytes, expected 4 (id) or 8 (serial)")


def _valid_part(part: object) -> TypeGuard[str]:
    return isinstance(part, str) and (part in _OBU_PARTS or (part[:1] == "C" and _is_digits(part[1:], 4)))


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


class _Part(NamedTuple):
    """One partition: sorted chunks of ≤ CHUNK words, and the first ident of each chunk."""

    fences: array[int]
    chunks: tuple[array[int], ...]
    entries: int

    @classmethod
    def of(cls, chunks: Sequence[array[int]]) -> _Part:
        return cls(array("Q", [c[0] >> 8 for c in chunks]), tuple(chunks), sum(map(len, chunks)))

    @classmethod
    def from_sorted(cls, words: Sequence[int]) -> _Part:
        return cls.of([array("Q", words[i:i + CHUNK]) for i in range(0, len(words), CHUNK)])


class _Snapshot(NamedTuple):
    """One published version; neither the dict, the partitions nor the chunks change after
    publishing (a later version shares the chunks a delta did not touch)."""

    version: int
    tables: dict[str, _Part]
    entries: int


class _Budget:
    """Counts work units and says when a step's worth has been done."""

    __slots__ = ("left",)

    def __init__(self) -> None:
        self.left = STEP_WORK

    def spend(self, units: int) -> bool:
        self.left -= units
        if self.left > 0:
            return False
        self.left = STEP_WORK
        return True


def _find(part: _Part, ident: int) -> int | None:
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


class StatusList:
    """The lane's status list; satisfies the lane machine's ``StatusLookup``."""

    def __init__(self) -> None:
        self._snap = _Snapshot(0, {}, 0)

    @property
    def version(self) -> int:
        return self._snap.version

    def __len__(self) -> int:
        return self._snap.entries

    @property
    def nbytes(self) -> int:
        """Memory held by the published chunks, fences and dict (``sys.getsizeof``)."""
        tables = self._snap.tables
        return sys.getsizeof(tables) + sum(sys.getsizeof(p) + sys.getsizeof(p.fences) + sys.getsizeof(p.chunks)
                                           + sum(map(sys.getsizeof, p.chunks)) for p in tables.values())

    def __repr__(self) -> str:
        return f"<StatusList version {self.version}, {len(self):,} entries>"

    # -- lookups ----------------------------------------------------------------------------
    def is_listed_card(self, network: str, card_number: str) -> int | None:
        """The reason code if the card is listed, else None (also for a malformed number)."""
        if len(card_number) != 16 or not card_number.isdigit() or not card_number.isascii():
            return None
        part = self._snap.tables.get("C" + network)
        return None if part is None else _find(part, int(card_number))

    def is_listed_obu(self, obu: bytes) -> int | None:
        """The reason code if the OBU id (4 bytes) or serial (8 bytes) is listed, else None."""
        n = len(obu)
        if n == 4:
            part = self._snap.tables.get(_ID_PARTS[obu[0]])
        elif n == 8:
            part = self._snap.tables.get(_SERIAL_PARTS[obu[0]])
        else:
            return None
        return None if part is None else _find(part, int.from_bytes(obu[1:], "big"))

    def lookup(self, key: Key) -> int | None:
        part = self._snap.tables.get(key.part)
        return None if part is None else _find(part, key.ident)

    def entries(self) -> Iterator[Entry]:
        """Every entry of the current version, in partition and ident order (exports, tools)."""
        snap = self._snap
        for name in sorted(snap.tables):
            for chunk in snap.tables[name].chunks:
                for word in chunk:
                    yield Entry(name, word >> 8, word & 0xFF)

    # -- full load ----------------------------------------------------------------------------
    def load_full(self, version: int, entries: Iterable[Entry]) -> None:
        """Replace the list with ``entries``; each partition is sorted once. Blocks."""
        _check_version(version, "version")
        lists: dict[str, list[int]] = {}
        for part, ident, reason in entries:
            words = lists.get(part)
            if words is None:
                _check_entry(part, ident, reason)
                words = lists[part] = []
            elif not (0 < reason < 256 and 0 <= ident < _IDENT_END):
                _check_entry(part, ident, reason)
            words.append(ident << 8 | reason)
        tables: dict[str, _Part] = {}
        count = 0
        for part in sorted(lists):
            words = lists.pop(part)
            words.sort()
            words = _dedupe_sorted(words)
            tables[part] = _Part.from_sorted(words)
            count += len(words)
            del words
        self._snap = _Snapshot(version, tables, count)

    # -- deltas ----------------------------------------------------------------------------
    def apply_delta_steps(self, delta: Delta) -> Generator[None, None, None]:
        """Apply ``delta`` in bounded steps (≈ 1 ms each): iterate to the end to apply it.

        The versions are checked now (StatusListError, nothing changes); lookups answer the
        old version until the last steps publish the new one in one assignment.
        """
        start = self._snap
        _check_version(delta.version, "version")
        if delta.base is None:
            if delta.remove:
                raise StatusListError(f"{delta}: a full list cannot remove entries")
            if delta.version < start.version:
                raise StatusListError(f"{delta}: version {delta.version} is older than this lane's "
                                      f"{start.version}; nothing changed")
        else:
            if delta.base != start.version:
                raise StatusListError(f"{delta}: applies on version {delta.base}, this lane has "
                                      f"{start.version}; nothing changed")
            if delta.version <= delta.base:
                raise StatusListError(f"{delta}: version {delta.version} is not newer than its base "
                                      f"{delta.base}; nothing changed")
        return self._apply(delta, start)

    def apply(self, delta: Delta) -> None:
        """Apply ``delta`` in one go (start-up, tools, tests)."""
        for _ in self.apply_delta_steps(delta):
            pass

    def _apply(self, delta: Delta, start: _Snapshot) -> Generator[None, None, None]:
        budget = _Budget()
        groups: dict[str, array[int]] = {}
        for items, removing in ((delta.remove, True), (delta.add, False)):
            if isinstance(items, PackedEntries):  # parsed: valid, grouped in bulk
                yield from items.group(groups, budget)
            else:
                yield from _group(_words(items, removing=removing), groups, budget)
        old_tables = {} if delta.is_full else start.tables
        tables = {} if delta.is_full else dict(start.tables)
        count = 0 if delta.is_full else start.entries
        old = new = None
        for name in sorted(groups):
            words = groups.pop(name)
            stream = yield from _sorted_steps(words, budget)
            old = old_tables.get(name)
            new = yield from _merge_part(old, stream, budget)
            count += (new.entries if new else 0) - (old.entries if old else 0)
            if new:
                tables[name] = new
            else:
                tables.pop(name, None)
        if self._snap is not start:
            raise StatusListError(f"{delta}: the list changed to version {self.version} while it was being "
                                  f"applied; it was not applied")
        self._snap = _Snapshot(delta.version, tables, count)
        # Free the replaced chunks a few at a time (~0.1 ms per MB here), not all at once.
        kept = {id(c) for part in tables.values() for c in part.chunks}
        retired = [c for part in start.tables.values() for c in part.chunks if id(c) not in kept]
        del start, old_tables, tables, old, new, kept
        while retired:
            if budget.spend(len(retired.pop()) // COPY_UNIT + 1):
                yield

    # -- persistence -------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the current version to ``path`` atomically (temp file, fsync, rename).

        Blocks for the write (~0.2 s for 20 million entries, plus the fsync); safe to run
        in a thread, since it writes the snapshot published when it started.
        """
        snap = self._snap
        path = Path(path)
        parts = sorted(snap.tables)
        head = _HEAD.pack(MAGIC, FILE_FORMAT, 0, snap.version, snap.entries, len(parts))
        directory = b"".join(_DIR.pack(p.encode("ascii"), snap.tables[p].entries) for p in parts)
        bodies = [_little_endian(chunk) for p in parts for chunk in snap.tables[p].chunks]
        crc = zlib.crc32(directory, zlib.crc32(head))
        for body in bodies:
            crc = zlib.crc32(body, crc)
        tmp = path.with_name(path.name + ".tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(head)
                fh.write(_CRC.pack(crc))
                fh.write(directory)
                for body in bodies:
                    fh.write(body)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def load(self, path: str | Path) -> None:
        """Replace the list with a saved one; a bad file is refused and nothing changes."""
        self._snap = _read_file(Path(path))


# -- delta machinery (generators doing bounded work between yields) ---------------------------

def _check_version(version: object, what: str) -> int:
    if not isinstance(version, int) or isinstance(version, bool) or not 0 <= version <= MAX_VERSION:
        raise StatusListError(f"{what} is {version!r}, expected a whole number 0–{MAX_VERSION}")
    return version


def _check_entry(part: object, ident: object, reason: object, *, removing: bool = False) -> None:
    if not _valid_part(part):
        raise StatusListError(f"entry partition {part!r} is not C+network, I+hex byte or S+hex byte")
    if not isinstance(ident, int) or not 0 <= ident < _IDENT_END:
        raise StatusListError(f"entry {part}/{ident!r}: ident out of range")
    if not isinstance(reason, int) or not (removing or 0 < reason) or not 0 <= reason < 256:
        raise StatusListError(f"entry {Key(part, ident)}: reason {reason!r} is not 1–255")


def _words(items: Sequence[Entry] | Sequence[Key], *, removing: bool) -> Iterator[tuple[str, int]]:
    """(partition, word) of each entry; a removal is a word with reason 0."""
    if isinstance(items, PackedEntries):
        yield from items.words()
        return
    low = 0 if removing else 1
    for item in items:
        part, ident, reason = (item[0], item[1], 0) if removing else item  # type: ignore[misc]  # adding: an Entry
        if not (low <= reason < 256 and 0 <= ident < _IDENT_END):
            _check_entry(part, ident, reason, removing=removing)
        yield part, ident << 8 | reason


def _group(words: Iterator[tuple[str, int]], groups: dict[str, array[int]],
           budget: _Budget) -> Generator[None, None, None]:
    """Sort the words into per-partition arrays.

    Arrays, not lists: the cyclic garbage collector walks every item of a list, and the
    rare collection that finds 100,000 list items would hold the loop for milliseconds
    (2 million: 100 ms); arrays are not walked.
    """
    for n, (part, word) in enumerate(words, 1):
        same = groups.get(part)
        if same is None:
            if not _valid_part(part):
                _check_entry(part, word >> 8, word & 0xFF, removing=True)
            same = groups[part] = array("Q")
        same.append(word)
        if n % 4 == 0 and budget.spend(1):
            yield


def _sorted_steps(words: array[int], budget: _Budget) -> Generator[None, None, Iterator[int]]:
    """Sort ``words`` in runs of SORT_RUN (kept as arrays) and merge them lazily."""
    if len(words) <= SORT_RUN:
        return iter(sorted(words))
    runs = []
    for start in range(0, len(words), SORT_RUN):
        runs.append(array("Q", sorted(words[start:start + SORT_RUN])))
        if budget.spend(SORT_RUN // 8):
            yield
    return heapq.merge(*runs)


class _ChunkWriter:
    """Builds a partition's new chunks: words and runs of old words are written into
    preallocated CHUNK-sized arrays (no regrowth), unchanged old chunks are shared."""

    __slots__ = ("chunks", "_cur", "_view", "_fill")

    def __init__(self) -> None:
        self.chunks: list[array[int]] = []
        self._cur = _EMPTY
        self._view = memoryview(_EMPTY)
        self._fill = 0

    def _room(self) -> int:
        if self._fill == len(self._cur):
            self._close()
            self._cur = array("Q", [0]) * CHUNK
            self._view = memoryview(self._cur)
        return len(self._cur) - self._fill

    def _close(self) -> None:
        if self._fill:
            self.chunks.append(self._cur if self._fill == len(self._cur) else self._cur[:self._fill])
        self._view.release()
        self._cur, self._view, self._fill = _EMPTY, memoryview(_EMPTY), 0

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

    def finish(self) -> _Part | None:
        self._close()
        return _Part.of(self.chunks) if self.chunks else None


def _merge_part(old: _Part | None, stream: Iterator[int], budget: _Budget) -> Generator[None, None, _Part | None]:
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
        yield from _merge_chunk(out, _EMPTY, below(1 << 64), budget)
    return out.finish()


def _merge_chunk(out: _ChunkWriter, old: array[int], stream: Iterator[int],
                 budget: _Budget) -> Generator[None, None, None]:
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

    def flush() -> bool:
        data = b"".join(pieces)
        pieces.clear()
        words = memoryview(data).cast("Q")
        out.copy(words, 0, len(words))
        words.release()
        return budget.spend(len(data) // (8 * COPY_UNIT) + 1)

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
            hi = pos + GALLOP
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
            if len(pieces) >= MERGE_PIECES:
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
            end = min(n, pos + STEP_WORK * COPY_UNIT)
            pieces.append(bview[pos << 3:end << 3])
            pos = end
            if flush():
                yield
        if pieces:
            flush()
    finally:
        pieces.clear()
        bview.release()


def _dedupe_sorted(words: list[int]) -> list[int]:
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


async def run_steps(steps: Generator[None, None, _T], *, max_step_ms: float = 5) -> _T:
    """Drive a step generator on the running loop; return what it returns.

    Runs steps until ``max_step_ms`` have passed, then lets the event loop run
    (``await asyncio.sleep(0)``): the loop is held for at most ``max_step_ms`` plus one
    step (≈ 1–2 ms on a 2-core lane PC).
    """
    import asyncio

    budget = max_step_ms / 1000
    clock = time.perf_counter
    started = clock()
    while True:
        try:
            next(steps)
        except StopIteration as done:
            await asyncio.sleep(0)  # so that what the caller runs next starts a fresh slice
            result: _T = done.value
            return result
        if clock() - started >= budget:
            await asyncio.sleep(0)
            started = clock()


async def apply_delta(store: StatusList, delta: Delta | bytes | str, *, max_step_ms: float = 5) -> None:
    """Apply a delta — or the centre's raw payload, parsed in steps first — on the running loop.

    StatusListError (and nothing applied) for a bad payload, entry or version.
    """
    if not isinstance(delta, Delta):
        delta = await run_steps(parse_payload_steps(delta), max_step_ms=max_step_ms)
    await run_steps(store.apply_delta_steps(delta), max_step_ms=max_step_ms)


# -- the centre's payload -------------------------------------------------------------------------

class PackedEntries(Sequence[Any]):
    """Parsed entries (or keys, for ``remove``) held as a partition table and 64-bit words.

    A 100,000-entry delta is then ~1 MB of arrays instead of 100,000 tuples that the
    garbage collector would have to walk; items are made into Entry / Key on access.
    """

    __slots__ = ("removing", "_parts", "_part_no", "_index", "_words")

    def __init__(self, *, removing: bool) -> None:
        self.removing = removing
        self._parts: list[str] = []
        self._part_no: dict[str, int] = {}
        self._index = array("H")
        self._words = array("Q")

    def append(self, part: str, ident: int, reason: int = 0) -> None:
        no = self._part_no.get(part)
        if no is None:
            no = self._part_no[part] = len(self._parts)
            self._parts.append(part)
        self._index.append(no)
        self._words.append(ident << 8 | reason)

    def words(self) -> Iterator[tuple[str, int]]:
        parts = self._parts
        for no, word in zip(self._index, self._words):
            yield parts[no], word

    def __len__(self) -> int:
        return len(self._words)

    def group(self, groups: dict[str, array[int]], budget: _Budget) -> Generator[None, None, None]:
        """Append each word to its partition's array in ``groups``, in bounded steps."""
        sinks: list[array[int]] = []
        for part in self._parts:
            sink = groups.get(part)
            if sink is None:
                sink = groups[part] = array("Q")
            sinks.append(sink)
        appends = [sink.append for sink in sinks]
        index, words = self._index, self._words
        for start in range(0, len(words), 4 * STEP_WORK):
            stop = start + 4 * STEP_WORK
            for no, word in zip(index[start:stop], words[start:stop]):
                appends[no](word)
            if budget.spend(STEP_WORK // 2):
                yield

    def check_disjoint(self, remove: PackedEntries) -> Generator[None, None, None]:
        """StatusListError naming both entries if an identity is both here and in ``remove``."""
        # Keys are ident << 16 | partition number in *this* table (< 65,536 partitions).
        here = self._part_no
        xlat = [here.get(part, -1) for part in remove._parts]
        removed: dict[int, int] = {}
        for i, (no, word) in enumerate(zip(remove._index, remove._words)):
            mine = xlat[no]
            if mine >= 0:
                removed.setdefault(word >> 8 << 16 | mine, i)
            if i % (4 * PARSE_STEP) == 0:
                yield
        for i, (no, word) in enumerate(zip(self._index, self._words)):
            j = removed.get(word >> 8 << 16 | no)
            if j is not None:
                raise StatusListError(f"add[{i}] and remove[{j}] both name {Key(self._parts[no], word >> 8)}")
            if i % (4 * PARSE_STEP) == 0:
                yield

    def __getitem__(self, i: int | slice) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        word = self._words[i]
        part = self._parts[self._index[i]]
        return Key(part, word >> 8) if self.removing else Entry(part, word >> 8, word & 0xFF)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and len(self) == len(other) and all(a == b for a, b in zip(self, other))

    def __repr__(self) -> str:
        return f"<{len(self)} packed {'keys' if self.removing else 'entries'}>"


_ENTRY_FIELDS = frozenset({"card", "obu", "issuer", "reason"})
_CARD = re.compile(r"([0-9]{4})-([0-9]{16})")
_OBU = re.compile(r"[0-9a-fA-F]{8}(?:[0-9a-fA-F]{8})?")
_ISSUER = re.compile(r"[0-9a-fA-F]{16}")
_WS = re.compile(r"[ \t\n\r]*")
# An entry in its usual shape and the separator after it — {"card": "NNNN-N…N"} or
# {"obu": "hex"}, optionally with "reason" (1–999, checked after) — so the common case is
# one regex match; anything else goes through json's decoder and _take.
_FAST_ENTRY = re.compile(r"""\{[ \t\n\r]*(?:
        "card"[ \t\n\r]*:[ \t\n\r]*"([0-9]{4})-([0-9]{16})"
      | "obu"[ \t\n\r]*:[ \t\n\r]*"([0-9a-fA-F]{8}(?:[0-9a-fA-F]{8})?)"
    )[ \t\n\r]*(?:,[ \t\n\r]*"reason"[ \t\n\r]*:[ \t\n\r]*([1-9][0-9]{0,2})[ \t\n\r]*)?
    \}[ \t\n\r]*([,\]])[ \t\n\r]*""", re.VERBOSE).match


_SEP = r"[ \t\n\r]*+"
_REASON = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]?)"  # 1–255, no leading zero
# An entry in the usual shape followed by a comma, all of it captured as group 1. One
# findall over a stretch of an array takes the fields of ~1,000 entries; the entries
# were contiguous (nothing skipped between them) iff the captured texts joined are the
# stretch of text they came from: the pattern holds one "{", at its start, so text that
# repeats a match after a gap would itself have matched. The last entry of an array
# (before "]") and entries of any other shape go the per-entry way.
_BULK_FIELDS = re.compile((r"""(\{S(?:"card"S:S"([0-9]{4})-([0-9]{16})"|"obu"S:S"([0-9a-fA-F]{8}(?:[0-9a-fA-F]{8})?)")"""
                            r"""S(?:,S"reason"S:S(R)S)?\}S,S)""").replace("S", _SEP).replace("R", _REASON)).findall
BULK_CHARS = 64 * 1024  # text per findall: ~1,000 entries, ~1 ms


def _take_bulk(sink: PackedEntries, text: str, pos: int) -> tuple[int, int]:
    """Entries in the usual shape from text[pos:], up to BULK_CHARS: (entries taken, end)."""
    found = _BULK_FIELDS(text, pos, pos + BULK_CHARS)
    if not found:
        return 0, pos
    run = "".join([f[0] for f in found])
    if not text.startswith(run, pos):  # something between the matches: go entry by entry
        return 0, pos
    part_no = sink._part_no
    index = sink._index.append
    words = sink._words.append
    removing = sink.removing
    for _, network, number, obu, reason in found:
        if network:
            part = "C" + network
            ident = int(number)
        else:
            part = (_ID_PARTS if len(obu) == 8 else _SERIAL_PARTS)[int(obu[:2], 16)]
            ident = int(obu[2:], 16)
        no = part_no.get(part)
        if no is None:
            no = part_no[part] = len(sink._parts)
            sink._parts.append(part)
        index(no)
        words(ident << 8 if removing else ident << 8 | (int(reason) if reason else DEFAULT_REASON))
    return len(found), pos + len(run)


def parse_payload(data: bytes | str | Mapping[str, Any]) -> Delta:
    """The centre's JSON payload as a validated :class:`Delta`, in one go."""
    steps = parse_payload_steps(data)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            delta: Delta = done.value
            return delta


def parse_payload_steps(data: bytes | str | Mapping[str, Any]) -> Generator[None, None, Delta]:
    """:func:`parse_payload` in bounded steps; the Delta is the generator's return value."""
    add = PackedEntries(removing=False)
    remove = PackedEntries(removing=True)
    sinks = {"add": add, "remove": remove}
    if isinstance(data, Mapping):
        doc = dict(data)
        for name, sink in sinks.items():
            items = doc.get(name)
            if isinstance(items, list):
                for i, raw in enumerate(items):
                    _take(sink, name, i, raw)
                    if i % PARSE_STEP == PARSE_STEP - 1:
                        yield
                doc[name] = sink
    else:
        if isinstance(data, (bytes, bytearray, memoryview)):
            try:
                data = bytes(data).decode("utf-8")
            except UnicodeDecodeError as err:
                raise StatusListError(f"status list payload is not UTF-8: {err}") from None
        doc = yield from _decode_steps(data, sinks)
    version = _check_version(doc.get("version"), "status list version")
    base = doc.get("base")
    if base is not None:
        _check_version(base, "status list base")
    for name in sinks:
        if doc.get(name, sinks[name]) is not sinks[name]:
            raise StatusListError(f"status list {name!r} is {_show(doc[name])}, expected a list of entries")
    if base is None and remove:
        raise StatusListError(f"status list version {version} has no base (a full list) but removes "
                              f"{len(remove)} entries; a full list cannot remove")
    if remove and add:  # an identity both added and removed is ambiguous: refuse
        yield from add.check_disjoint(remove)
    return Delta(version, base, add, remove)


_SIXTEEN_DIGITS = re.compile(r"(?<![0-9])([0-9]{4})[0-9]{8}([0-9]{4})(?![0-9])")


def _show(value: Any) -> str:
    """A payload value for an error message: shortened, card numbers masked."""
    text = _SIXTEEN_DIGITS.sub(r"\1********\2", repr(value))
    return text if len(text) <= 100 else text[:97] + "..."


def _bad(where: str, i: int, raw: Any, problem: str) -> StatusListError:
    return StatusListError(f"{where}[{i}] {_show(raw)}: {problem}")


def _take(sink: PackedEntries, where: str, i: int, raw: Any) -> None:
    """Validate payload entry ``where[i]`` and append it to ``sink``."""
    if type(raw) is not dict:
        raise _bad(where, i, raw, "expected an object with 'card' or 'obu'")
    if not _ENTRY_FIELDS.issuperset(raw):
        unknown = ", ".join(repr(k) for k in raw if k not in _ENTRY_FIELDS)
        raise _bad(where, i, raw, f"unknown field {unknown}")
    card = raw.get("card")
    obu = raw.get("obu")
    if card is not None:
        if obu is not None or "issuer" in raw:
            raise _bad(where, i, raw, "has both 'card' and 'obu'/'issuer'")
        match = _CARD.fullmatch(card) if type(card) is str else None
        if match is None:
            raise _bad(where, i, raw, f"card {_show(card)} is not NNNN-NNNNNNNNNNNNNNNN (network, card number)")
        part, ident = "C" + match[1], int(match[2])
    elif obu is not None:
        if type(obu) is not str or not _OBU.fullmatch(obu):
            raise _bad(where, i, raw, f"obu {_show(obu)} is not 8 hex digits (OBU id) or 16 (OBU serial)")
        issuer = raw.get("issuer")
        if issuer is not None and (len(obu) != 16 or type(issuer) is not str or not _ISSUER.fullmatch(issuer)):
            raise _bad(where, i, raw, f"issuer {_show(issuer)} is not 16 hex digits next to a 16-digit OBU serial")
        first = int(obu[:2], 16)
        part = _ID_PARTS[first] if len(obu) == 8 else _SERIAL_PARTS[first]
        ident = int(obu[2:], 16)
    else:
        raise _bad(where, i, raw, "has neither 'card' nor 'obu'")
    if sink.removing:
        sink.append(part, ident)
        return
    reason = raw.get("reason", DEFAULT_REASON)
    if type(reason) is not int or not 1 <= reason <= 255:
        raise _bad(where, i, raw, f"reason {reason!r} is not 1–255")
    sink.append(part, ident, reason)


def _decode_steps(text: str, sinks: Mapping[str, PackedEntries]) -> Generator[None, None, dict[str, Any]]:
    """Decode a top-level JSON object; the arrays named in ``sinks`` element by element.

    Each element of those arrays is validated into its sink as soon as it is decoded,
    PARSE_STEP elements per step; every value is decoded by ``json``'s own decoder.
    """
    scan = json.JSONDecoder().raw_decode
    ws = cast(Callable[[str, int], re.Match[str]], _WS.match)  # [ \t\n\r]* matches anywhere: never None
    end = len(text)
    doc: dict[str, Any] = {}

    def fail(pos: int, expected: str) -> StatusListError:
        found = f"{text[pos]!r} at char {pos}" if pos < end else f"the end at char {pos}"
        return StatusListError(f"status list payload is not JSON: found {found}, expected {expected}")

    def value(pos: int) -> tuple[Any, int]:
        try:
            return scan(text, pos)
        except json.JSONDecodeError as err:
            raise StatusListError(f"status list payload is not JSON: {err}") from None

    pos = ws(text, 0).end()
    if not text.startswith("{", pos):
        raise fail(pos, "'{'")
    pos = ws(text, pos + 1).end()
    closed = text.startswith("}", pos)
    while not closed:
        if not text.startswith('"', pos):
            raise fail(pos, "a member name")
        name, pos = value(pos)
        if name in doc:
            raise StatusListError(f"status list payload has the member {name!r} twice")
        pos = ws(text, pos).end()
        if not text.startswith(":", pos):
            raise fail(pos, "':'")
        pos = ws(text, pos + 1).end()
        sink = sinks.get(name)
        if sink is not None and text.startswith("[", pos):
            pos = ws(text, pos + 1).end()
            i = 0
            more = not text.startswith("]", pos)
            if not more:
                pos += 1
            bulk_at = 0  # the entry index from which bulk takes are tried again
            while more:
                if i >= bulk_at:
                    taken, pos = _take_bulk(sink, text, pos)
                    if taken:
                        pos = ws(text, pos).end()  # the stretch may end inside the white space
                        i += taken
                        yield
                        continue
                    bulk_at = i + PARSE_STEP  # not in the usual shape here: a step entry by entry
                fast = _FAST_ENTRY(text, pos)  # the usual shape, without building a dict
                if fast is not None:
                    network, number, obu, reason, sep = fast.groups()
                    if network is not None:
                        part, ident = "C" + network, int(number)
                    else:
                        parts = _ID_PARTS if len(obu) == 8 else _SERIAL_PARTS
                        part, ident = parts[int(obu[:2], 16)], int(obu[2:], 16)
                    if sink.removing:
                        sink.append(part, ident)
                    else:
                        code = DEFAULT_REASON if reason is None else int(reason)
                        if code > 255:
                            fast = None  # the general path words the error
                        else:
                            sink.append(part, ident, code)
                if fast is not None:
                    pos = fast.end()
                    more = sep == ","
                else:
                    raw, pos = value(pos)
                    _take(sink, name, i, raw)
                    pos = ws(text, pos).end()
                    if text.startswith(",", pos):
                        pos = ws(text, pos + 1).end()
                    elif text.startswith("]", pos):
                        pos += 1
                        more = False
                    else:
                        raise fail(pos, "',' or ']'")
                i += 1
                if i % PARSE_STEP == 0:
                    yield
            doc[name] = sink
        else:
            doc[name], pos = value(pos)
        pos = ws(text, pos).end()
        if text.startswith(",", pos):
            pos = ws(text, pos + 1).end()
        elif text.startswith("}", pos):
            closed = True
        else:
            raise fail(pos, "',' or '}'")
    pos = ws(text, pos + 1).end()
    if pos != end:
        raise StatusListError(f"status list payload is not JSON: extra data at char {pos}")
    return doc


# -- the file ------------------------------------------------------------------------------------

MAGIC = b"LNDSTAT1"
FILE_FORMAT = 1
_HEAD = struct.Struct("<8sHHQQI")  # magic, format, reserved, version, entries, partitions
_CRC = struct.Struct("<I")
_DIR = struct.Struct("<8sQ")  # partition name, entry count
_MAX_PARTS = 10_000 + 2 * 256


def _little_endian(arr: array[int]) -> memoryview:
    if sys.byteorder == "little":
        return memoryview(arr).cast("B")
    swapped = array("Q", arr)
    swapped.byteswap()
    return memoryview(swapped).cast("B")


def _read_file(path: Path) -> _Snapshot:
    def bad(problem: str) -> StatusListError:
        return StatusListError(f"status list file {path}: {problem}; not loaded")

    try:
        fh = open(path, "rb")
    except OSError as err:
        raise bad(f"cannot open ({err.strerror})") from None
    with fh:
        size = os.fstat(fh.fileno()).st_size
        head = fh.read(_HEAD.size)
        crc_raw = fh.read(_CRC.size)
        if len(head) + len(crc_raw) < _HEAD.size + _CRC.size:
            raise bad(f"truncated: {size} bytes, shorter than the header")
        magic, fmt, _, version, count, nparts = _HEAD.unpack(head)
        if magic != MAGIC:
            raise bad(f"not a laned status list (starts with {magic!r})")
        if fmt != FILE_FORMAT:
            raise bad(f"format {fmt}, this laned reads format {FILE_FORMAT}")
        if nparts > _MAX_PARTS:
            raise bad(f"corrupt: {nparts} partitions")
        expected = _HEAD.size + _CRC.size + nparts * _DIR.size + count * 8
        if size < expected:
            raise bad(f"truncated: {size} bytes, the header announces {count:,} entries in {expected} bytes")
        if size > expected:
            raise bad(f"corrupt: {size} bytes, the header announces {count:,} entries in {expected} bytes")
        directory = fh.read(nparts * _DIR.size)
        crc = zlib.crc32(directory, zlib.crc32(head))
        parts = []
        for name_raw, n in _DIR.iter_unpack(directory):
            name = name_raw.rstrip(b"\0").decode("ascii", "replace")
            if not _valid_part(name) or n == 0:
                raise bad(f"corrupt: directory has partition {name_raw!r} with {n} entries")
            parts.append((name, n))
        if sum(n for _, n in parts) != count:
            raise bad("corrupt: the directory does not add up to the header's entry count")
        tables: dict[str, _Part] = {}
        for name, n in parts:
            chunks = []
            for start in range(0, n, CHUNK):
                chunk = array("Q", [0]) * min(CHUNK, n - start)  # exact size, no regrowth
                view = memoryview(chunk).cast("B")
                got = 0
                while got < len(view):
                    read = fh.readinto(view[got:])
                    if not read:
                        raise bad(f"truncated in partition {name}")
                    got += read
                crc = zlib.crc32(view, crc)
                view.release()
                if sys.byteorder != "little":
                    chunk.byteswap()
                chunks.append(chunk)
            tables[name] = _Part.of(chunks)
        if crc != _CRC.unpack(crc_raw)[0]:
            raise bad("corrupt (checksum mismatch)")
    return _Snapshot(version, tables, count)
