"""The status list file (:meth:`StatusList.save` / :meth:`StatusList.load`).

Format, little-endian (also in the package docstring)::

    header     "<8sHHQQI" magic b"LNDSTAT1", format 1, 0, version, entries, partitions
    checksum   "<I" CRC-32 of the header, the directory and the arrays, in that order
    directory  "<8sQ" per partition: name (ASCII, NUL-padded), entry count
    arrays     the packed words of each partition, in directory order
"""

from __future__ import annotations

import os
import struct
import sys
import zlib
from array import array
from collections.abc import Callable
from io import BufferedReader
from pathlib import Path

from laned.atomic_file import write_atomic
from laned.lane import status_list as tuning
from laned.lane.status_list.entries import StatusListError, StatusListUnreadable, valid_part
from laned.lane.status_list.packed import Part, Snapshot

MAGIC = b"LNDSTAT1"
FILE_FORMAT = 1
_HEAD = struct.Struct("<8sHHQQI")  # magic, format, reserved, version, entries, partitions
_CRC = struct.Struct("<I")
_DIR = struct.Struct("<8sQ")  # partition name, entry count
_MAX_PARTS = 10_000 + 2 * 256


def little_endian(arr: array[int]) -> memoryview:
    if sys.byteorder == "little":
        return memoryview(arr).cast("B")
    swapped = array("Q", arr)
    swapped.byteswap()
    return memoryview(swapped).cast("B")


def read_file(path: Path) -> Snapshot:
    def bad(problem: str) -> StatusListError:
        return StatusListError(f"status list file {path}: {problem}; not loaded")

    try:
        with open(path, "rb") as fh:
            return _read(fh, bad)
    except OSError as err:
        raise StatusListUnreadable(f"status list file {path}: cannot be read ({err.strerror or err}); "
                                   "not loaded") from None


def _read(fh: BufferedReader, bad: Callable[[str], StatusListError]) -> Snapshot:
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
        if not valid_part(name) or n == 0:
            raise bad(f"corrupt: directory has partition {name_raw!r} with {n} entries")
        parts.append((name, n))
    if sum(n for _, n in parts) != count:
        raise bad("corrupt: the directory does not add up to the header's entry count")
    tables: dict[str, Part] = {}
    for name, n in parts:
        chunks = []
        for start in range(0, n, tuning.CHUNK):
            chunk = array("Q", [0]) * min(tuning.CHUNK, n - start)  # exact size, no regrowth
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
        tables[name] = Part.of(chunks)
    if crc != _CRC.unpack(crc_raw)[0]:
        raise bad("corrupt (checksum mismatch)")
    return Snapshot(version, tables, count)


def write_file(snap: Snapshot, path: Path) -> None:
    """Write ``snap`` to ``path`` atomically: a temp file beside it, fsync, rename, fsync
    of the directory, so a crash leaves the old file or the new one, never half of one."""
    parts = sorted(snap.tables)
    head = _HEAD.pack(MAGIC, FILE_FORMAT, 0, snap.version, snap.entries, len(parts))
    directory = b"".join(_DIR.pack(p.encode("ascii"), snap.tables[p].entries) for p in parts)
    bodies = [little_endian(chunk) for p in parts for chunk in snap.tables[p].chunks]
    crc = zlib.crc32(directory, zlib.crc32(head))
    for body in bodies:
        crc = zlib.crc32(body, crc)
    write_atomic(path, [head, _CRC.pack(crc), directory, *bodies])
