"""The status list (blacklist) of cards and OBUs, at national scale.

The centre sends a full list with a version, then deltas that add and remove entries on
top of the version they name as their ``base``. The lane looks an OBU up at B2 and a card
at B4, inside the RSU's ~1.1 s budget, so lookups must take microseconds and the whole
national list (≈ 20 million entries) must fit in a lane PC's memory.

Layout: one sorted ``array('Q')`` of 64-bit keys and a parallel ``array('B')`` of reason
codes — 9 bytes per entry — searched with ``bisect``. A delta first lands in a small
overlay (key → reason, or ``None`` for "removed"), consulted before the base, and is
then merged into the base in bounded steps, so the event loop is never blocked for long.

Keys are a 64-bit BLAKE2b digest of a typed identity (``C`` + network + card number,
``O`` + OBU id or OBU serial). Twenty decimal digits of a card do not fit in 64 bits
exactly, so a hash is used: with n = 2·10⁷ entries the chance that a given unlisted card
collides with any listed key is n / 2⁶⁴ ≈ 1.1·10⁻¹², i.e. one false refusal in about 10¹²
lookups — and a false hit refuses to the manual lane, never lets an unpaid vehicle
through.

During a delta's application every lookup answers either the old or the new state of
each entry (the overlay holds the new state until its key is merged into the base), and
``version`` changes to the delta's version when the delta is accepted.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import itertools
import json
import os
import struct
import time
import zlib
from array import array
from bisect import bisect_left
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

MAGIC = b"LANEDSL1"
_HEADER = struct.Struct(">8sQQI")  # magic, version, count, crc32 of keys+reasons
DEFAULT_REASON = 1


class StatusListError(ValueError):
    """A list, delta or file that cannot be applied; names what was wrong."""


def card_key(network: str, card_number: str) -> int:
    return int.from_bytes(hashlib.blake2b(b"C" + network.encode() + card_number.encode(), digest_size=8).digest(),
                          "big")


def obu_key(obu: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(b"O" + obu, digest_size=8).digest(), "big")


@dataclass(frozen=True)
class Delta:
    version: int
    base: int | None  # None: a full list
    add: list[tuple[int, int]]  # (key, reason)
    remove: list[int]


def parse_payload(data: bytes | str | dict[str, Any]) -> Delta:
    """The centre's JSON: ``{"version", "base"?, "add": [{"card"|"obu", "reason"?}], "remove": [...]}``."""
    if isinstance(data, (bytes, str)):
        try:
            data = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise StatusListError(f"status list payload is not JSON: {err}") from None
    if not isinstance(data, dict):
        raise StatusListError("status list payload must be a JSON object")
    version = data.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise StatusListError(f"version is {version!r}, expected a whole number ≥ 0")
    base = data.get("base")
    if base is not None and (not isinstance(base, int) or isinstance(base, bool)):
        raise StatusListError(f"base is {base!r}, expected a whole number")
    add = [_entry(e, i, "add", with_reason=True) for i, e in enumerate(data.get("add", []))]
    remove = [_entry(e, i, "remove", with_reason=False)[0] for i, e in enumerate(data.get("remove", []))]
    return Delta(version, base, add, remove)  # type: ignore[arg-type]


def _entry(e: Any, i: int, where: str, *, with_reason: bool) -> tuple[int, int]:
    if not isinstance(e, dict):
        raise StatusListError(f"{where}[{i}] is {e!r}, expected an object with 'card' or 'obu'")
    reason = e.get("reason", DEFAULT_REASON)
    if with_reason and (not isinstance(reason, int) or isinstance(reason, bool) or not 1 <= reason <= 255):
        raise StatusListError(f"{where}[{i}] reason is {reason!r}, expected 1–255")
    if "card" in e:
        card = e["card"]
        parts = card.split("-") if isinstance(card, str) else []
        if len(parts) != 2 or len(parts[0]) != 4 or len(parts[1]) != 16 or not (parts[0] + parts[1]).isdigit():
            raise StatusListError(f"{where}[{i}] card is {card!r}, expected NNNN-NNNNNNNNNNNNNNNN")
        return card_key(parts[0], parts[1]), reason
    if "obu" in e:
        obu = e["obu"]
        try:
            raw = bytes.fromhex(obu) if isinstance(obu, str) else b""
        except ValueError:
            raw = b""
        if len(raw) not in (4, 8):
            raise StatusListError(f"{where}[{i}] obu is {obu!r}, expected 8 hex digits (id) or 16 (serial)")
        return obu_key(raw), reason
    raise StatusListError(f"{where}[{i}] has neither 'card' nor 'obu'")


class StatusList:
    """Satisfies the lane machine's StatusLookup."""

    def __init__(self) -> None:
        self.version = 0
        self._keys = array("Q")
        self._reasons = array("B")
        self._overlay: dict[int, int | None] = {}
        self._merging = False

    def __len__(self) -> int:
        return len(self._keys) + sum(1 for k, r in self._overlay.items() if r is not None and not self._in_base(k)) \
            - sum(1 for k, r in self._overlay.items() if r is None and self._in_base(k))

    # -- lookups ------------------------------------------------------------------------
    def _lookup(self, key: int) -> int | None:
        if self._overlay:
            hit = self._overlay.get(key, -1)
            if hit != -1:
                return hit  # type: ignore[return-value]
        keys = self._keys
        i = bisect_left(keys, key)
        if i < len(keys) and keys[i] == key:
            return self._reasons[i]
        return None

    def _in_base(self, key: int) -> bool:
        i = bisect_left(self._keys, key)
        return i < len(self._keys) and self._keys[i] == key

    def is_listed_card(self, network: str, card_number: str) -> int | None:
        return self._lookup(card_key(network, card_number))

    def is_listed_obu(self, obu: bytes) -> int | None:
        return self._lookup(obu_key(obu))

    # -- full load -----------------------------------------------------------------------
    def load_full(self, version: int, entries: Iterable[tuple[int, int]]) -> None:
        """Replace everything with ``entries`` (key, reason); sorted once."""
        pairs = sorted(dict(entries).items())
        keys = array("Q", (k for k, _ in pairs))
        reasons = array("B", (r for _, r in pairs))
        self._keys, self._reasons, self._overlay, self.version = keys, reasons, {}, version

    def load_sorted_arrays(self, version: int, keys: array, reasons: array) -> None:
        """Adopt already sorted, de-duplicated arrays (fast path for big loads)."""
        if len(keys) != len(reasons):
            raise StatusListError("keys and reasons differ in length")
        self._keys, self._reasons, self._overlay, self.version = keys, reasons, {}, version

    # -- deltas ----------------------------------------------------------------------------
    def accept(self, delta: Delta) -> None:
        """Check and stage a delta: lookups see it at once; merge_steps() folds it in."""
        for _ in self.accept_steps(delta, chunk=len(delta.add) + len(delta.remove) + 1):
            pass

    def accept_steps(self, delta: Delta, chunk: int = 1_000) -> Iterator[None]:
        """:meth:`accept` in bounded steps. The delta is checked before anything changes;
        while it is staged each entry reads old or new, and ``version`` moves last."""
        if delta.base is None:
            self.load_full(delta.version, delta.add)
            return
        if delta.base != self.version:
            raise StatusListError(f"delta {delta.version} applies on version {delta.base}, "
                                  f"this lane has {self.version}; nothing changed")
        if delta.version <= self.version:
            raise StatusListError(f"delta version {delta.version} is not newer than {self.version}")
        for start in range(0, len(delta.remove), chunk):
            self._overlay.update(dict.fromkeys(delta.remove[start:start + chunk]))
            yield
        for start in range(0, len(delta.add), chunk):
            self._overlay.update(delta.add[start:start + chunk])
            yield
        self.version = delta.version

    def merge_steps(self, chunk: int = 1_000) -> Iterator[None]:
        """Fold the overlay into the base arrays, yielding after bounded work.

        The new arrays are built by copying runs of the old ones between overlay keys;
        ``chunk`` overlay keys are handled per step. The overlay stays authoritative
        until the new arrays are swapped in at the end, so every lookup is right at
        every step.
        """
        if not self._overlay:
            return
        items = list(self._overlay.items())
        runs = []
        for start in range(0, len(items), chunk):  # sort in bounded pieces …
            runs.append(sorted(items[start:start + chunk]))
            yield
        merged = heapq.merge(*runs)  # … merged lazily, a chunk per step
        pending: list[tuple[int, int | None]] = []
        old_k, old_r = self._keys, self._reasons
        new_k, new_r = array("Q"), array("B")
        pos = 0
        while True:
            piece = list(itertools.islice(merged, chunk))
            if not piece:
                break
            pending += piece
            for key, reason in piece:
                i = bisect_left(old_k, key, pos)
                new_k.extend(old_k[pos:i])
                new_r.extend(old_r[pos:i])
                pos = i
                if pos < len(old_k) and old_k[pos] == key:
                    pos += 1  # replaced or removed
                if reason is not None:
                    new_k.append(key)
                    new_r.append(reason)
            yield
        # Copy the tail in slices so a 20-million-entry copy is split too.
        step = 250_000
        while pos < len(old_k):
            new_k.extend(old_k[pos:pos + step])
            new_r.extend(old_r[pos:pos + step])
            pos += step
            yield
        self._keys, self._reasons = new_k, new_r
        # A delta accepted meanwhile may have changed a key again: keep its newer value.
        overlay = self._overlay
        for start in range(0, len(pending), chunk):
            for key, reason in pending[start:start + chunk]:
                if key in overlay and overlay[key] == reason:
                    del overlay[key]
            yield

    def apply(self, delta: Delta) -> None:
        """Accept and merge in one go (tests, tools)."""
        self.accept(delta)
        for _ in self.merge_steps():
            pass

    # -- persistence -------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        for _ in self.merge_steps():
            pass
        body = self._keys.tobytes() + self._reasons.tobytes()
        tmp = Path(str(path) + ".tmp")
        with open(tmp, "wb") as fh:
            fh.write(_HEADER.pack(MAGIC, self.version, len(self._keys), zlib.crc32(body)))
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)

    def load(self, path: str | Path) -> None:
        """Load a saved list; a corrupt or truncated file is refused and nothing changes."""
        try:
            raw = Path(path).read_bytes()
        except OSError as err:
            raise StatusListError(f"cannot read status list {path}: {err.strerror}") from None
        if len(raw) < _HEADER.size:
            raise StatusListError(f"status list {path} is truncated ({len(raw)} bytes)")
        magic, version, count, crc = _HEADER.unpack_from(raw)
        if magic != MAGIC:
            raise StatusListError(f"status list {path} is not a laned status list file")
        body = raw[_HEADER.size:]
        if len(body) != count * 9:
            raise StatusListError(f"status list {path} is truncated: {count} entries need {count * 9} bytes, "
                                  f"found {len(body)}")
        if zlib.crc32(body) != crc:
            raise StatusListError(f"status list {path} is corrupt (checksum mismatch)")
        keys, reasons = array("Q"), array("B")
        keys.frombytes(body[: count * 8])
        reasons.frombytes(body[count * 8:])
        self.load_sorted_arrays(version, keys, reasons)


async def apply_delta(store: StatusList, delta: Delta, *, chunk: int = 1_000) -> None:
    """Accept ``delta`` and merge it without holding the event loop for long."""
    for _ in store.accept_steps(delta, chunk):
        await asyncio.sleep(0)
    for _ in store.merge_steps(chunk):
        await asyncio.sleep(0)


def timed_steps(store: StatusList, chunk: int) -> tuple[float, float]:
    """Merge synchronously; (total seconds, longest step seconds) — for the benchmark."""
    longest, t0 = 0.0, time.perf_counter()
    last = t0
    for _ in store.merge_steps(chunk):
        now = time.perf_counter()
        longest = max(longest, now - last)
        last = now
    total = time.perf_counter() - t0
    return total, max(longest, time.perf_counter() - last)
