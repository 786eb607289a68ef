"""Status lists and fee tables from the centre: the download, checked before anything is applied.

The centre announces a version with a signed manifest (topic ``list/manifest``,
:class:`~laned.uplink.messages.ListManifest`) and sends its bytes in chunks
(``list/chunk``). One :class:`ListDownload` per kind (:class:`ListDownloads` holds both
and routes by kind) checks the manifest, collects the chunks in any order and, once it
holds them all, checks their total size and SHA-256 and hands back the verified bytes
(:class:`Complete`). Applying them is :mod:`laned.uplink.list_apply`'s; until then
nothing the lane uses has changed.

The SHA-256 of the whole is computed as the contiguous run of chunks from chunk 0 grows,
at most ``hash_step_bytes`` per call: when a late chunk 0 joins hundreds of MB already
in, :attr:`ListDownload.hashing_due` says so and the caller drives :meth:`ListDownload.hash_step`
once per loop turn until the download completes (a national list must never hold the
lane's loop for long: issue 10 item 5, 10 ms).

A version handed over in a :class:`Complete` is *being applied* (:attr:`ListDownload.applying`)
until the caller says :meth:`~ListDownload.installed` or :meth:`~ListDownload.apply_ended`:
a manifest of it (or older) meanwhile is no news, and a delta built on it is collected and
waits for it (at most one version queued behind the one applying; a newer one announced
then is asked for again once there is room, :meth:`ListDownload.due`).

A manifest is checked in this order, the first failure decides (docs/lists.md has the
table): JSON object → signature present, well-formed, by a trusted key, verifying over
the canonical bytes (asyncapi.yaml "Signatures"; nothing else is believed before) → a
``lane_id``, if named, is this lane's → kind known, contract → size → not expired, a
status list not ahead of its ``valid_from`` (a fee table may be: it waits as the pending
one) → versions: the version in use again is no news (:class:`Ignored`) — unless the lane
keeps no manifest for it (a crash between saving the list and its manifest): then it is
:class:`KeepManifest`, so that its validity is known again — an older one a ``rollback``,
the version being applied (or an older one) no news, a delta not on the version in use
(or on the one being applied, if any) a ``base_mismatch`` (never a mix of versions);
against the download in progress, a newer version supersedes it.

Every refusal is a :class:`Refused` (a :class:`ListRefusal` and a text) for the caller to
raise as an alarm and log; a chunk that cannot be taken is dropped, counted and asked for
again (:meth:`ListDownload.due`). :func:`list_age_state` is the freshness of the version
in use (the *freeze attack*: blocked updates must not go unnoticed).

The outcomes are in :mod:`laned.lane.list_outcomes`, the manifest's and chunks' checks in
:mod:`laned.lane.list_manifest`. Sans-IO: no clock (``now`` is passed in), no socket, no
event loop.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from laned.lane.list_freshness import Freshness, ListAge, StalePolicy, list_age_state
from laned.lane.list_manifest import DEFAULT_CLOCK_SKEW_S, MAX_MANIFEST_BYTES, check_manifest, kind_of, parse_chunk
from laned.lane.list_outcomes import (
    Accepted,
    ChunkDropped,
    ChunkOutcome,
    Complete,
    Drop,
    Ignore,
    Ignored,
    KeepManifest,
    ListRefusal,
    ManifestOutcome,
    Refused,
    Started,
    VerifiedContent,
)
from laned.uplink.messages import ListChunk, ListKind, ListManifest, ListRequest

MAX_REQUEST_CHUNKS: Final = 4096  # the contract's ListRequest.chunks maxItems
DEFAULT_CHUNK_TIMEOUT_S: Final = 30.0  # the contract's chunk expiry is 3600 s; a live centre answers in seconds
DEFAULT_MAX_REQUESTS: Final = 5
# The running SHA-256 takes at most this much per call: ≈ 2 ms at the ~1 GB/s of the 2-core
# benchmark machine, ~7 ms on a slow ARM lane PC (~300 MB/s) — under the 10 ms a list
# update may hold the loop (issue 10 item 5) even with the chunk's own SHA-256 (≤ 1 MiB,
# the contract's largest chunk) in the same call.
DEFAULT_HASH_STEP_BYTES: Final = 2 << 20
# Versions handed over for applying and not installed yet, at most: the one applying and one
# queued behind it (a delta built on it). A full status list holds ~800 MB until applied.
MAX_APPLYING: Final = 2


# -- one download ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DownloadLimits:
    max_bytes: int  # a manifest announcing more is refused (too_large)
    clock_skew_s: float = DEFAULT_CLOCK_SKEW_S
    chunk_timeout_s: float = DEFAULT_CHUNK_TIMEOUT_S
    max_requests: int = DEFAULT_MAX_REQUESTS
    hash_step_bytes: int = DEFAULT_HASH_STEP_BYTES  # the running SHA-256's bytes per call, at most


@dataclass
class _Collecting:
    manifest: ListManifest
    signed: bytes  # the canonical bytes the signature covers: the same manifest again is a duplicate
    pieces: list[bytes | None]
    missing: int
    hasher: Any  # hashlib.sha256 over pieces[:hashed] and pieces[hashed][:offset], in order
    hashed: int = 0
    offset: int = 0
    last_progress: dt.datetime | None = None
    requests: int = 0


@dataclass
class ListDownload:
    """The download of one kind of list. ``in_use``: the version the lane uses (None: none);
    ``in_use_manifest_kept``: False when the lane keeps no manifest for it (its validity is
    unknown; the centre's signed manifest of it is then :class:`KeepManifest`)."""

    kind: ListKind
    lane_id: str
    keys: Mapping[str, Ed25519PublicKey]
    limits: DownloadLimits
    in_use: int | None = None
    in_use_manifest_kept: bool = True
    dropped: dict[Drop, int] = field(default_factory=dict)
    _current: _Collecting | None = field(default=None, repr=False)
    _applying: list[int] = field(default_factory=list, repr=False)  # handed over, in order
    _deferred: int | None = field(default=None, repr=False)  # announced while the queue was full

    @property
    def collecting(self) -> ListManifest | None:
        """The manifest of the download in progress, if any."""
        return self._current.manifest if self._current is not None else None

    @property
    def applying(self) -> int | None:
        """The newest version handed over in a :class:`Complete` and not installed (or
        given up) yet: what the version in use becomes once the applies under way end."""
        return self._applying[-1] if self._applying else None

    @property
    def hashing_due(self) -> bool:
        """Chunks are in that the running SHA-256 has not taken yet: call :meth:`hash_step`
        (once per loop turn) until this is False."""
        cur = self._current
        return cur is not None and cur.hashed < len(cur.pieces) and cur.pieces[cur.hashed] is not None

    def missing(self) -> tuple[int, ...]:
        """The chunk indexes still missing (empty when nothing is being collected)."""
        cur = self._current
        return () if cur is None else tuple(i for i, p in enumerate(cur.pieces) if p is None)

    # -- manifest ---------------------------------------------------------------------------
    def on_manifest(self, raw: bytes | str, now: dt.datetime) -> ManifestOutcome:
        """Check a received manifest (the MQTT payload as received); see the module docstring."""
        checked = check_manifest(raw, lane_id=self.lane_id, keys=self.keys, now=now, max_bytes=self.limits.max_bytes,
                                 clock_skew_s=self.limits.clock_skew_s)
        if isinstance(checked, Refused):
            return checked
        manifest, signed = checked
        if manifest.kind is not self.kind:
            return Refused(reason=ListRefusal.UNKNOWN_KIND, text=f"a {manifest.kind} manifest given to the "
                           f"{self.kind} download", kind=manifest.kind, version=manifest.version)
        if manifest.version == self.in_use and not self.in_use_manifest_kept:
            return KeepManifest(manifest=manifest)
        refused = self._check_versions(manifest)
        if refused is not None:
            return refused
        cur = self._current
        superseded = None
        if cur is not None:
            if manifest.version < cur.manifest.version:
                return Ignored(code=Ignore.OLDER_THAN_DOWNLOAD, text=f"version {manifest.version}: version "
                               f"{cur.manifest.version} is being collected")
            if manifest.version == cur.manifest.version:
                if signed == cur.signed:
                    return Ignored(code=Ignore.DUPLICATE, text=f"version {manifest.version} is being collected")
                return Refused(reason=ListRefusal.CONFLICTING_MANIFEST, text=f"a second, different manifest for "
                               f"version {manifest.version}; the first one's download goes on",
                               kind=self.kind, version=manifest.version)
            superseded = cur.manifest.version
        self._current = _Collecting(manifest=manifest, signed=signed, pieces=[None] * manifest.chunk_count,
                                    missing=manifest.chunk_count, hasher=hashlib.sha256(), last_progress=now)
        return Started(manifest=manifest, superseded=superseded,
                       request=ListRequest(lane_id=self.lane_id, kind=self.kind, version=manifest.version, at=now,
                                           reason=f"manifest of version {manifest.version}"))

    def _check_versions(self, manifest: ListManifest) -> Ignored | Refused | None:
        v, in_use, applying = manifest.version, self.in_use, self.applying
        if in_use is not None and v == in_use:
            return Ignored(code=Ignore.IN_USE, text=f"version {v} is the one in use")
        if in_use is not None and v < in_use:
            return Refused(reason=ListRefusal.ROLLBACK, text=f"version {v} is older than version {in_use} in use",
                           kind=self.kind, version=v)
        if applying is not None and v <= applying:
            # The retained manifest again after a reconnect, while the ~40 s of a national
            # list's apply run: downloading it again would be ~800 MB for nothing.
            return Ignored(code=Ignore.BEING_APPLIED, text=f"version {v}: version {applying} is downloaded and "
                           "being applied")
        # Once the applies under way end, the version in use is the newest of them: a delta
        # must build on that one (if they fail, its apply is refused base_mismatch).
        base = applying if applying is not None else in_use
        if manifest.base_version is not None and manifest.base_version != base:
            have = "no version" if in_use is None else f"version {in_use}"
            if applying is not None:
                have += f" and applies version {applying}"
            return Refused(reason=ListRefusal.BASE_MISMATCH, text=f"a delta {manifest.base_version}→{v}, but the lane "
                           f"uses {have}: a full list is needed", kind=self.kind, version=v)
        if len(self._applying) >= MAX_APPLYING:
            self._deferred = max(v, self._deferred or 0)
            return Ignored(code=Ignore.APPLY_QUEUE_FULL, text=f"version {v}: versions "
                           f"{', '.join(map(str, self._applying))} are being applied; it is asked for again after")
        return None

    # -- chunks -----------------------------------------------------------------------------
    def on_chunk(self, chunk: ListChunk, now: dt.datetime) -> ChunkOutcome:
        """Take a chunk (parsed with :func:`parse_chunk`); :class:`Complete` with the last one."""
        cur = self._current
        if cur is None or chunk.kind is not self.kind or chunk.version != cur.manifest.version:
            what = "no download" if cur is None else f"version {cur.manifest.version} is being collected"
            return self._drop(Drop.OTHER_VERSION, f"chunk {chunk.index} of version {chunk.version}: {what}")
        m = cur.manifest
        if chunk.index >= m.chunk_count:
            return self._drop(Drop.OUT_OF_RANGE, f"chunk {chunk.index}, version {m.version} has {m.chunk_count}")
        if cur.pieces[chunk.index] is not None:
            return self._drop(Drop.DUPLICATE, f"chunk {chunk.index} of version {m.version} again")
        expected = m.chunk_length(chunk.index)
        if len(chunk.data) != expected:
            return self._drop(Drop.BAD_LENGTH, f"chunk {chunk.index} of version {m.version} holds {len(chunk.data)} "
                              f"bytes, the manifest makes it {expected}")
        if chunk.sha256 is not None and hashlib.sha256(chunk.data).digest() != chunk.sha256:
            return self._drop(Drop.BAD_CHUNK_HASH, f"chunk {chunk.index} of version {m.version}: its SHA-256 does "
                              f"not match; asked for again")
        cur.pieces[chunk.index] = chunk.data
        cur.missing -= 1
        cur.last_progress = now
        cur.requests = 0
        if not self._hash(cur) or cur.missing:
            return Accepted(index=chunk.index, missing=cur.missing)
        return self._finish(cur)

    def hash_step(self) -> Complete | Refused | None:
        """Take the next ``hash_step_bytes`` of the chunks in (while :attr:`hashing_due`):
        :class:`Complete` (or ``hash_mismatch``) when that finished the download, else None."""
        cur = self._current
        if cur is None or not self._hash(cur) or cur.missing:
            return None
        return self._finish(cur)

    def _hash(self, cur: _Collecting) -> bool:
        """The running SHA-256 over the contiguous chunks from where it stopped, at most
        ``hash_step_bytes`` of them: True when it has taken every chunk."""
        budget = self.limits.hash_step_bytes
        pieces = cur.pieces
        while cur.hashed < len(pieces) and (piece := pieces[cur.hashed]) is not None:
            if budget <= 0:
                return False
            take = min(len(piece) - cur.offset, budget)
            cur.hasher.update(memoryview(piece)[cur.offset:cur.offset + take])
            budget -= take
            cur.offset += take
            if cur.offset == len(piece):
                cur.hashed, cur.offset = cur.hashed + 1, 0
        return cur.hashed == len(pieces)

    def _finish(self, cur: _Collecting) -> Complete | Refused:
        m = cur.manifest
        self._current = None
        digest = cur.hasher.digest()
        if digest != m.sha256:
            return Refused(reason=ListRefusal.HASH_MISMATCH, text=f"the {m.chunk_count} chunks hash to "
                           f"{digest.hex()}, the manifest says {m.sha256.hex()}; all dropped",
                           kind=self.kind, version=m.version)
        pieces = tuple(p for p in cur.pieces if p is not None)
        self._applying.append(m.version)
        return Complete(content=VerifiedContent(manifest=m, pieces=pieces))

    def _drop(self, code: Drop, text: str) -> ChunkDropped:
        self.dropped[code] = self.dropped.get(code, 0) + 1
        return ChunkDropped(code=code, text=text)

    # -- timers and results -----------------------------------------------------------------
    def due(self, now: dt.datetime) -> ListRequest | Refused | None:
        """Call every second or so: a ``list/request`` for the missing chunks once
        ``chunk_timeout_s`` passed without a new chunk; after ``max_requests`` of them
        the download is given up (``interrupted``: an alarm; the version in use stays).
        With nothing being collected: the request of a version announced while the apply
        queue was full, once there is room for it."""
        cur = self._current
        if cur is None:
            return self._deferred_request(now)
        if cur.last_progress is None:
            return None
        if (now - cur.last_progress).total_seconds() < self.limits.chunk_timeout_s:
            return None
        m = cur.manifest
        if cur.requests >= self.limits.max_requests:
            self._current = None
            return Refused(reason=ListRefusal.INTERRUPTED, text=f"{cur.missing} of {m.chunk_count} chunks still "
                           f"missing after {cur.requests} requests; the download is given up",
                           kind=self.kind, version=m.version)
        cur.requests += 1
        cur.last_progress = now
        missing = self.missing()
        chunks = None if len(missing) == m.chunk_count else missing[:MAX_REQUEST_CHUNKS]
        return ListRequest(lane_id=self.lane_id, kind=self.kind, version=m.version, at=now, chunks=chunks,
                           reason=f"{len(missing)} chunks missing after {self.limits.chunk_timeout_s:g} s "
                                  f"(request {cur.requests} of {self.limits.max_requests})")

    def _deferred_request(self, now: dt.datetime) -> ListRequest | None:
        v = self._deferred
        if v is None or len(self._applying) >= MAX_APPLYING:
            return None
        self._deferred = None
        have = [known for known in (self.in_use, self.applying) if known is not None]
        if have and v <= max(have):
            return None  # what came since covers it
        return ListRequest(lane_id=self.lane_id, kind=self.kind, version=v, at=now,
                           reason=f"version {v} was announced while two versions were being applied")

    def installed(self, version: int) -> None:
        """The caller applied a :class:`Complete` version: it is now the version in use
        (with the manifest it came with)."""
        self.in_use = version
        self.in_use_manifest_kept = True
        self._applying = [v for v in self._applying if v > version]

    def apply_ended(self, version: int) -> None:
        """The apply of ``version`` is over, whatever its outcome (after :meth:`installed`
        for one that succeeded): it is no longer being applied."""
        if version in self._applying:
            self._applying.remove(version)

    def manifest_kept(self) -> None:
        """The caller kept the :class:`KeepManifest` of the version in use."""
        self.in_use_manifest_kept = True

    def abandon(self) -> None:
        """Drop the download in progress (shutdown, or a fetch_list for another version)."""
        self._current = None


class ListDownloads:
    """The status list and fee table downloads, fed the raw payloads of ``list/manifest``
    and ``list/chunk`` and routed by their kind."""

    def __init__(self, *, lane_id: str, keys: Mapping[str, Ed25519PublicKey], status_list: DownloadLimits,
                 fee_table: DownloadLimits, status_list_in_use: int | None = None,
                 fee_table_in_use: int | None = None) -> None:
        self.lane_id, self.keys = lane_id, keys
        self.status_list = ListDownload(kind=ListKind.STATUS_LIST, lane_id=lane_id, keys=keys, limits=status_list,
                                        in_use=status_list_in_use)
        self.fee_table = ListDownload(kind=ListKind.FEE_TABLE, lane_id=lane_id, keys=keys, limits=fee_table,
                                      in_use=fee_table_in_use)

    def of(self, kind: ListKind) -> ListDownload:
        return self.status_list if kind is ListKind.STATUS_LIST else self.fee_table

    def on_manifest(self, raw: bytes | str, now: dt.datetime) -> ManifestOutcome:
        try:
            kind = kind_of(json.loads(raw).get("kind")) if len(raw) <= MAX_MANIFEST_BYTES else None
        except (ValueError, UnicodeDecodeError, RecursionError, AttributeError):
            kind = None
        if kind is not None:
            return self.of(kind).on_manifest(raw, now)
        # No kind to route by: the checks in their order say why (the signature first).
        checked = check_manifest(raw, lane_id=self.lane_id, keys=self.keys, now=now, max_bytes=0)
        return checked if isinstance(checked, Refused) else Refused(
            reason=ListRefusal.UNKNOWN_KIND, text="the manifest names no kind this lane knows")

    def on_chunk(self, raw: bytes | str, now: dt.datetime) -> ChunkOutcome:
        chunk = parse_chunk(raw)
        return chunk if isinstance(chunk, ChunkDropped) else self.of(chunk.kind).on_chunk(chunk, now)

    def due(self, now: dt.datetime) -> list[ListRequest | Refused]:
        return [r for d in (self.status_list, self.fee_table) if (r := d.due(now)) is not None]


# Re-exported here, the download's interface in one place: the outcomes (laned.lane.list_outcomes),
# the manifest and chunk checks (laned.lane.list_manifest), the freshness (laned.lane.list_freshness).


__all__ = [
    "DEFAULT_CHUNK_TIMEOUT_S", "DEFAULT_CLOCK_SKEW_S", "DEFAULT_HASH_STEP_BYTES", "DEFAULT_MAX_REQUESTS",
    "MAX_APPLYING", "MAX_MANIFEST_BYTES", "Accepted", "ChunkDropped", "ChunkOutcome", "Complete", "DownloadLimits",
    "Drop", "Freshness", "Ignore", "Ignored", "KeepManifest", "ListAge", "ListDownload", "ListDownloads",
    "ListRefusal", "ManifestOutcome", "Refused", "Started", "StalePolicy", "VerifiedContent",
    "check_manifest", "list_age_state", "parse_chunk",
]
