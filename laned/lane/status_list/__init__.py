"""The status list (blacklist) of cards and OBUs, at national scale.

Modules: :mod:`~.entries` (identities, keys, :class:`Delta`), :mod:`~.packed` (the
packed chunks and the merge that builds a new version), :mod:`~.parse` (the centre's
payload), :mod:`~.file` (save / load), :mod:`~.store` (:class:`StatusList`),
:mod:`~.steps` (how much work a step does). Every public name is importable from here.
Sans-IO: driving the steps on the event loop is :mod:`laned.uplink.list_apply`.

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
    centre while the lane runs goes through :meth:`StatusList.apply_delta_steps` like a
    delta (driven on the event loop by :mod:`laned.uplink.list_apply`): parsed and
    applied in bounded steps (≈ 5 µs per entry in all; a 100,000-entry delta, parse
    included, ≈ 0.5 s at 20 million entries — docs/benchmarks.md), with ~20 bytes per entry of
    transient memory besides the payload. A payload given as one ``bytes`` is decoded
    TEXT_PIECE at a time; a download's chunks go through :func:`text_pieces` and
    :func:`parse_text_steps` and are never joined (docs/lists.md).

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

from laned.lane.status_list.steps import (
    BULK_CHARS,
    CHUNK,
    COPY_UNIT,
    GALLOP,
    MERGE_PIECES,
    PACKED_BLOCK,
    PARSE_STEP,
    SORT_RUN,
    STEP_WORK,
    TEXT_PIECE,
)
from laned.lane.status_list.entries import (
    DEFAULT_REASON,
    MAX_VERSION,
    Delta,
    Entry,
    Key,
    StatusListError,
    StatusListUnreadable,
    card_key,
    obu_key,
)
from laned.lane.status_list.file import FILE_FORMAT, MAGIC
from laned.lane.status_list.packed import PackedEntries
from laned.lane.status_list.parse import parse_payload, parse_payload_steps, parse_text_steps, text_pieces
from laned.lane.status_list.store import StatusList

__all__ = [
    "BULK_CHARS", "CHUNK", "COPY_UNIT", "DEFAULT_REASON", "FILE_FORMAT", "GALLOP", "MAGIC", "MAX_VERSION",
    "MERGE_PIECES", "PACKED_BLOCK", "PARSE_STEP", "SORT_RUN", "STEP_WORK", "TEXT_PIECE", "Delta", "Entry", "Key", "PackedEntries",
    "StatusList", "StatusListError", "StatusListUnreadable", "card_key", "obu_key", "parse_payload", "parse_payload_steps",
    "parse_text_steps", "text_pieces",
]
