"""Status lists and fee tables: the signed manifest announcing a version (topic ``list/manifest``),
its chunks (``list/chunk``), the lane's request for missing chunks (``list/request``) and the
versions in use (``list/versions``)."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import enum
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from laned.uplink.contract import ContractError
from laned.uplink.messages.codec import BASE64, NOT_JSON, UplinkMessage, _Invalid, _signed_bytes

# -- codes ----------------------------------------------------------------------------------------


class ListKind(enum.StrEnum):
    STATUS_LIST = "status_list"
    FEE_TABLE = "fee_table"


class ListFormat(enum.StrEnum):
    STATUS_JSON = "laned-status-json-1"  # laned/lane/status_list.py
    FEE_TOML = "laned-fee-toml-1"  # laned/lane/fee_table.py


class Compression(enum.StrEnum):
    NONE = "none"
    GZIP = "gzip"


# -- messages --------------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class ListManifest(UplinkMessage):
    """A signed announcement of a status list or fee table version (topic ``list/manifest``)."""

    MESSAGE: ClassVar[str] = "ListManifest"

    kind: ListKind
    version: int
    format: ListFormat
    compression: Compression
    size: int
    sha256: bytes
    chunk_size: int
    chunk_count: int
    issued_at: dt.datetime
    valid_from: dt.datetime
    expires_at: dt.datetime
    key_id: str
    base_version: int | None = None
    signature: bytes = field(default=b"", metadata=BASE64)
    raw: Mapping[str, Any] | None = field(default=None, compare=False, repr=False, metadata=NOT_JSON)

    @property
    def is_delta(self) -> bool:
        return self.base_version is not None

    def signed_bytes(self) -> bytes:
        """The bytes the Ed25519 signature covers: the payload without ``signature``, canonical."""
        return _signed_bytes(self, self.raw)

    def signed(self, signature: bytes) -> ListManifest:
        return dataclasses.replace(self, signature=signature, raw=None)

    def chunk_length(self, index: int) -> int:
        """How many bytes chunk ``index`` holds (the last one may be shorter)."""
        if not 0 <= index < self.chunk_count:
            raise ContractError(self.MESSAGE, [("$.chunk_count", f"no chunk {index} in {self.chunk_count}")])
        return max(0, min(self.chunk_size, self.size - index * self.chunk_size))

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        made = super().from_dict(data)
        object.__setattr__(made, "raw", types.MappingProxyType(copy.deepcopy(dict(data))))
        return made

    def _check(self) -> None:
        expected = max(1, -(-self.size // self.chunk_size))
        if self.chunk_count != expected:
            raise _Invalid("$.chunk_count", f"{self.chunk_count}, but {self.size} bytes in chunks of "
                                            f"{self.chunk_size} make {expected}")
        if self.expires_at <= self.valid_from:
            raise _Invalid("$.expires_at", f"{self.expires_at.isoformat()} is not after valid_from "
                                           f"{self.valid_from.isoformat()}")
        if self.base_version is not None and self.base_version >= self.version:
            raise _Invalid("$.base_version", f"a delta to version {self.version} must apply on an older version, "
                                             f"not {self.base_version}")


@dataclass(frozen=True, kw_only=True)
class ListChunk(UplinkMessage):
    """One chunk of an announced version (topic ``list/chunk``)."""

    MESSAGE: ClassVar[str] = "ListChunk"

    kind: ListKind
    version: int
    index: int
    data: bytes = field(metadata=BASE64)
    sha256: bytes | None = None


@dataclass(frozen=True, kw_only=True)
class ListRequest(UplinkMessage):
    """The lane asks for the chunks it lacks (topic ``list/request``); ``chunks`` None: all."""

    MESSAGE: ClassVar[str] = "ListRequest"

    lane_id: str
    kind: ListKind
    version: int
    at: dt.datetime
    chunks: tuple[int, ...] | None = None
    reason: str | None = None


@dataclass(frozen=True, kw_only=True)
class StatusListVersion:
    version: int
    updated_at: dt.datetime | None = None
    entries: int | None = None


@dataclass(frozen=True, kw_only=True)
class FeeTableVersion:
    version: int
    valid_from: dt.datetime
    valid_until: dt.datetime | None = None


@dataclass(frozen=True, kw_only=True)
class ListVersions(UplinkMessage):
    """The versions in use (retained, topic ``list/versions``)."""

    MESSAGE: ClassVar[str] = "ListVersions"

    lane_id: str
    at: dt.datetime
    status_list: StatusListVersion | None = None
    fee_table: FeeTableVersion | None = None
    fee_table_pending: FeeTableVersion | None = None
