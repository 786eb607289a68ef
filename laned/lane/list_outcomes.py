"""What a list download answers: refusals, no-news, a download started, chunks taken or
dropped, the verified content (laned.lane.list_update's outcomes, apart so that the
download's state machine reads on its own). Sans-IO."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TypeAlias

from laned.uplink.messages import ListKind, ListManifest, ListRequest


class ListRefusal(enum.StrEnum):
    """Why a manifest or a download was refused; each one is an alarm and a log line."""

    MALFORMED = "malformed"
    MISSING_SIGNATURE = "missing_signature"
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KEY = "unknown_key"
    WRONG_LANE = "wrong_lane"
    UNKNOWN_KIND = "unknown_kind"
    TOO_LARGE = "too_large"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    ROLLBACK = "rollback"
    BASE_MISMATCH = "base_mismatch"
    CONFLICTING_MANIFEST = "conflicting_manifest"
    HASH_MISMATCH = "hash_mismatch"
    INTERRUPTED = "interrupted"  # chunks stopped coming; given up after max_requests
    # At the apply stage (laned.uplink.list_apply): the verified bytes do not hold what
    # the manifest announced, or cannot be used.
    CONTENT_MISMATCH = "content_mismatch"
    BAD_CONTENT = "bad_content"
    NOT_SAVED = "not_saved"


class Ignore(enum.StrEnum):
    """Why a manifest is no news: nothing to do, no alarm."""

    IN_USE = "in_use"  # the retained manifest of the version in use, again after a reconnect
    DUPLICATE = "duplicate"  # the manifest of the download in progress, again
    OLDER_THAN_DOWNLOAD = "older_than_download"  # a newer version is being collected
    BEING_APPLIED = "being_applied"  # that version (or a newer one) is downloaded and being applied
    # One version applying and one queued: asked for again once there is room (ListDownload.due)
    APPLY_QUEUE_FULL = "apply_queue_full"


class Drop(enum.StrEnum):
    """Why a chunk was not taken; counted in :attr:`ListDownload.dropped`."""

    MALFORMED = "malformed"
    OTHER_VERSION = "other_version"  # no download in progress, or one of another version
    OUT_OF_RANGE = "out_of_range"
    BAD_LENGTH = "bad_length"
    BAD_CHUNK_HASH = "bad_chunk_hash"
    DUPLICATE = "duplicate"


# -- outcomes --------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Refused:
    """Nothing applied, the version in use untouched: raise an alarm and log ``text``."""

    reason: ListRefusal
    text: str
    kind: ListKind | None = None
    version: int | None = None

    def __str__(self) -> str:
        what = f"{self.kind} version {self.version}" if self.kind and self.version is not None else "list manifest"
        return f"{what} refused ({self.reason}): {self.text}"


@dataclass(frozen=True, kw_only=True)
class Ignored:
    code: Ignore
    text: str


@dataclass(frozen=True, kw_only=True)
class Started:
    """A new download: publish ``request`` (every chunk) on ``list/request``."""

    manifest: ListManifest
    request: ListRequest
    superseded: int | None = None  # the version of the unfinished download it replaced


@dataclass(frozen=True, kw_only=True)
class KeepManifest:
    """The signed manifest of the version in use, for which the lane keeps none (a crash
    between saving the list and its manifest): keep it, so that the version's validity is
    known again, then :meth:`ListDownload.manifest_kept`. Nothing is downloaded."""

    manifest: ListManifest


@dataclass(frozen=True, kw_only=True)
class Accepted:
    """A chunk taken; ``missing`` chunks to go (0: all in, the SHA-256 still catching up:
    :attr:`ListDownload.hashing_due`)."""

    index: int
    missing: int


@dataclass(frozen=True, kw_only=True)
class ChunkDropped:
    code: Drop
    text: str


@dataclass(frozen=True)
class VerifiedContent:
    """The bytes of a version, as transferred (compressed if the manifest says so), in
    chunk order; their size and SHA-256 are the manifest's. Kept as the chunks, never
    joined: a national list is hundreds of MB."""

    manifest: ListManifest
    pieces: tuple[bytes, ...]

    def to_bytes(self) -> bytes:
        """The whole in one piece (a fee table; not for a national list)."""
        return b"".join(self.pieces)


@dataclass(frozen=True, kw_only=True)
class Complete:
    """Every chunk in and the whole verified: apply ``content``, then :meth:`ListDownload.installed`."""

    content: VerifiedContent


ManifestOutcome: TypeAlias = Started | Ignored | Refused | KeepManifest
ChunkOutcome: TypeAlias = Accepted | ChunkDropped | Complete | Refused


# -- one download ----------------------------------------------------------------------------------


__all__ = [
    "Accepted", "ChunkDropped", "ChunkOutcome", "Complete", "Drop", "Ignore", "Ignored", "KeepManifest",
    "ListRefusal", "ManifestOutcome", "Refused", "Started", "VerifiedContent",
]
