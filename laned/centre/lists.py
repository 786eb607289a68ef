"""Status lists and fee tables for the lanes: a signed manifest and its chunks.

``build_list`` cuts a file (a status list as ``laned-status-json-1``, a fee table as
``laned-fee-toml-1``; sent as is, ``compression: none``) into chunks, and signs the manifest
with :func:`laned.uplink.commands.signature_of` over its JSON object without ``signature``
in canonical form (asyncapi.yaml, "Signatures"). The manifest names no lane: one signed
version serves every lane; it is published retained on each lane's ``list/manifest`` with
a message expiry up to its ``expires_at``, the chunks on ``list/chunk``. A lane that misses
chunks asks on ``list/request``; the running centre answers from its database.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from laned.centre.errors import CentreError
from laned.uplink.commands import signature_of
from laned.uplink.contract import ContractError, validate
from laned.uplink.messages import Compression, ListChunk, ListFormat, ListKind, ListManifest

DEFAULT_CHUNK_SIZE = 65536  # 64 KiB: a chunk is one MQTT message well below any broker's limit
FORMATS = {ListKind.STATUS_LIST: ListFormat.STATUS_JSON, ListKind.FEE_TABLE: ListFormat.FEE_TOML}


@dataclass(frozen=True, slots=True)
class ListVersion:
    manifest: dict[str, Any]  # signed, as published
    data: bytes

    @property
    def kind(self) -> str:
        return str(self.manifest["kind"])

    @property
    def version(self) -> int:
        return int(self.manifest["version"])

    def chunk(self, index: int) -> ListChunk:
        size = int(self.manifest["chunk_size"])
        piece = self.data[index * size:(index + 1) * size]
        return ListChunk(kind=ListKind(self.kind), version=self.version, index=index, data=piece,
                         sha256=hashlib.sha256(piece).digest())

    @property
    def chunk_count(self) -> int:
        return int(self.manifest["chunk_count"])

    def expires_at(self) -> dt.datetime:
        return dt.datetime.fromisoformat(str(self.manifest["expires_at"]))


def build_list(*, kind: ListKind, version: int, data: bytes, now: dt.datetime, valid_from: dt.datetime,
               expires_at: dt.datetime, private_key: Ed25519PrivateKey, key_id: str,
               chunk_size: int = DEFAULT_CHUNK_SIZE, base_version: int | None = None) -> ListVersion:
    """The signed manifest of ``data`` and the means to cut its chunks."""
    if kind is ListKind.FEE_TABLE and base_version is not None:
        raise CentreError("a fee table is always sent whole: no --base-version")
    manifest = ListManifest(kind=kind, version=version, format=FORMATS[kind], compression=Compression.NONE,
                            size=len(data), sha256=hashlib.sha256(data).digest(), chunk_size=chunk_size,
                            chunk_count=max(1, -(-len(data) // chunk_size)), issued_at=now, valid_from=valid_from,
                            expires_at=expires_at, key_id=key_id, base_version=base_version)
    try:
        body = manifest.to_dict()
        body.pop("signature", None)
        body["signature"] = base64.b64encode(signature_of(body, private_key)).decode("ascii")
        validate("ListManifest", body)
        ListManifest.from_dict(body)  # the rules beyond the schema (chunk count, validity order)
    except ContractError as err:
        raise CentreError(f"{kind} version {version}: the manifest would be refused: {err.path}: {err.reason}") \
            from None
    return ListVersion(manifest=body, data=data)
