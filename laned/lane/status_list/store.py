"""The status list store: lookups on the published version, full loads, deltas in steps."""

from __future__ import annotations

import sys
from array import array
from collections.abc import Generator, Iterable, Iterator
from pathlib import Path

from laned.lane import status_list as tuning
from laned.lane.status_list.entries import (
    ID_PARTS,
    IDENT_END,
    SERIAL_PARTS,
    Delta,
    Entry,
    Key,
    StatusListError,
    check_entry,
    check_version,
)
from laned.lane.status_list.file import read_file, write_file
from laned.lane.status_list.packed import (
    Budget,
    PackedEntries,
    Part,
    Snapshot,
    dedupe_sorted,
    find,
    group_words,
    merge_part,
    sorted_steps,
    words_of,
)


class StatusList:
    """The lane's status list; satisfies the lane machine's ``StatusLookup``."""

    def __init__(self) -> None:
        self._snap = Snapshot(0, {}, 0)

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
        return None if part is None else find(part, int(card_number))

    def is_listed_obu(self, obu: bytes) -> int | None:
        """The reason code if the OBU id (4 bytes) or serial (8 bytes) is listed, else None."""
        n = len(obu)
        if n == 4:
            part = self._snap.tables.get(ID_PARTS[obu[0]])
        elif n == 8:
            part = self._snap.tables.get(SERIAL_PARTS[obu[0]])
        else:
            return None
        return None if part is None else find(part, int.from_bytes(obu[1:], "big"))

    def lookup(self, key: Key) -> int | None:
        part = self._snap.tables.get(key.part)
        return None if part is None else find(part, key.ident)

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
        check_version(version, "version")
        lists: dict[str, list[int]] = {}
        for part, ident, reason in entries:
            words = lists.get(part)
            if words is None:
                check_entry(part, ident, reason)
                words = lists[part] = []
            elif not (0 < reason < 256 and 0 <= ident < IDENT_END):
                check_entry(part, ident, reason)
            words.append(ident << 8 | reason)
        tables: dict[str, Part] = {}
        count = 0
        for part in sorted(lists):
            words = lists.pop(part)
            words.sort()
            words = dedupe_sorted(words)
            tables[part] = Part.from_sorted(words)
            count += len(words)
            del words
        self._snap = Snapshot(version, tables, count)

    # -- deltas ----------------------------------------------------------------------------
    def apply_delta_steps(self, delta: Delta) -> Generator[None, None, None]:
        """Apply ``delta`` in bounded steps (≈ 1 ms each): iterate to the end to apply it.

        The versions are checked now (StatusListError, nothing changes); lookups answer the
        old version until the last steps publish the new one in one assignment.
        """
        start = self._snap
        check_version(delta.version, "version")
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

    def _apply(self, delta: Delta, start: Snapshot) -> Generator[None, None, None]:
        budget = Budget()
        groups: dict[str, array[int]] = {}
        for items, removing in ((delta.remove, True), (delta.add, False)):
            if isinstance(items, PackedEntries):  # parsed: valid, grouped in bulk
                yield from items.group(groups, budget)
            else:
                yield from group_words(words_of(items, removing=removing), groups, budget)
        old_tables = {} if delta.is_full else start.tables
        tables = {} if delta.is_full else dict(start.tables)
        count = 0 if delta.is_full else start.entries
        old = new = None
        for name in sorted(groups):
            words = groups.pop(name)
            stream = yield from sorted_steps(words, budget)
            old = old_tables.get(name)
            new = yield from merge_part(old, stream, budget)
            count += (new.entries if new else 0) - (old.entries if old else 0)
            if new:
                tables[name] = new
            else:
                tables.pop(name, None)
        if self._snap is not start:
            raise StatusListError(f"{delta}: the list changed to version {self.version} while it was being "
                                  f"applied; it was not applied")
        self._snap = Snapshot(delta.version, tables, count)
        # Free the replaced chunks a few at a time (~0.1 ms per MB here), not all at once.
        kept = {id(c) for part in tables.values() for c in part.chunks}
        retired = [c for part in start.tables.values() for c in part.chunks if id(c) not in kept]
        del start, old_tables, tables, old, new, kept
        while retired:
            if budget.spend(len(retired.pop()) // tuning.COPY_UNIT + 1):
                yield

    # -- persistence -------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the current version to ``path`` atomically (temp file, fsync, rename).

        Blocks for the write (~0.2 s for 20 million entries, plus the fsync); safe to run
        in a thread, since it writes the snapshot published when it started.
        """
        write_file(self._snap, Path(path))

    def load(self, path: str | Path) -> None:
        """Replace the list with a saved one; a bad file is refused and nothing changes."""
        self._snap = read_file(Path(path))

    def fork(self) -> StatusList:
        """A second store holding the same version, sharing every chunk (no copy).

        A list update is applied to the fork, off to the side; the lane keeps looking up
        in this one until the caller puts the fork in its place. Snapshots never change
        after they are published, so sharing them is safe.
        """
        other = StatusList()
        other._snap = self._snap
        return other
