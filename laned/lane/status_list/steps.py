"""How much work one step of a list update does.

The other modules of the package read these through the package
(``laned.lane.status_list.STEP_WORK``) when a step runs, not when they are imported, so
that one patch of the package reaches all of them: the tests run the merge with steps of
two words and chunks of three entries to reach every edge, and a bench can tune them.
"""

from __future__ import annotations

# Work per step of a delta application, in units of about 2–4 µs on a 2-core lane PC:
# one unit is one delta entry placed (bisect + append) or 1,024 base entries copied.
STEP_WORK = 256
COPY_UNIT = 1024  # base entries copied per unit of work (8 KiB memcpy)
SORT_RUN = 4096  # delta entries sorted at once (one run of the k-way merge)
PARSE_STEP = 256  # payload entries decoded and validated per step
GALLOP = 1024  # look this far ahead before bisecting the whole rest of a chunk
MERGE_PIECES = 512  # pieces of a merged chunk joined and written at once (≤ 256 runs and words)
CHUNK = 1 << 16  # entries per chunk of a partition (512 KiB): every copy, fill and free is bounded by it
BULK_CHARS = 64 * 1024  # payload text per bulk regex scan: ~1,000 entries, ~1 ms
PACKED_BLOCK = 1 << 16  # parsed entries per block of PackedEntries (512 KiB of words)
# Payload text decoded at once when the payload comes as pieces (a download's chunks): a
# 700 MB national list is never turned into one string in one go (0.7 s of a held loop).
TEXT_PIECE = 256 * 1024

__all__ = ["BULK_CHARS", "CHUNK", "COPY_UNIT", "GALLOP", "MERGE_PIECES", "PACKED_BLOCK", "PARSE_STEP", "SORT_RUN",
           "STEP_WORK", "TEXT_PIECE"]
