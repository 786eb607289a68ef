"""Status lists and fee tables for the lanes: a signed manifest and its chunks.

``build_list`` cuts a file (a status list as ``laned-status-json-1``, a fee table as
``laned-fee-toml-1``; sent as is, ``compression: none``) into chunks, and signs the manifest
with :func:`laned.uplink.commands.signature_of` over its JSON object without ``signature``
in canonical form (asyncapi.yaml, "Signatures"). The manifest names no lane: one signed
version serves every lane; it is published retained on each lane's ``list/manifest`` with
a message expiry up to its ``expires_at``, the chunks on ``list/chunk``. A lane that misses
chunks asks on ``list/request``; the running centre answers from its database.

``build_list`` signs the bytes it is given (tests send bad content on purpose).
``laned centre publish-list`` first reads them with the lane's own parsers
(:func:`check_content`): a file the lane would refuse — not a status list or fee table, or
another version, base or validity start than the manifest announces — is never signed.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import tomllib
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from laned.centre.errors import CentreError
from laned.lane.fee_table import FeeTable, FeeTableError, local_naive
from laned.lane.status_list import StatusListError, parse_payload
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
    except ValueError as err:  # no canonical form: an integer past what RFC 8785 writes exactly
        raise CentreError(f"{kind} version {version}: the manifest cannot be signed: {err}") from None
    return ListVersion(manifest=body, data=data)


# -- what the lane will do with the content ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckedContent:
    """A status list or fee table the lane can read, as the manifest announces it."""

    description: str  # e.g. "status list full list (+3 −0)", "fee table version 8 (12 fees), valid from ..."
    valid_from: dt.datetime | None  # the manifest's: as given, or a fee table's own when none was given


def check_content(kind: ListKind, data: bytes, *, version: int, base_version: int | None,
                  valid_from: dt.datetime | None) -> CheckedContent:
    """Parse ``data`` with the lane's parser (laned.uplink.list_apply uses the same) and check
    what the lane checks against the manifest: CentreError names what the lane would refuse.

    A status list's ``version`` and ``base`` must be ``version`` and ``base_version``. A fee
    table's ``version`` must be ``version`` and its ``valid_from`` the manifest's, compared
    as the lane does in the offset of ``valid_from`` (a table's time without an offset is the
    lane's local time: give ``valid_from`` in the lane's UTC offset). Without ``valid_from``,
    a fee table's own is taken if it carries an offset.
    """
    if kind is ListKind.STATUS_LIST:
        return CheckedContent(_check_status_list(data, version, base_version), valid_from)
    return _check_fee_table(data, version, base_version, valid_from)


def _check_status_list(data: bytes, version: int, base_version: int | None) -> str:
    try:
        delta = parse_payload(data)
    except StatusListError as err:
        raise CentreError(f"not a status list the lane can read ({FORMATS[ListKind.STATUS_LIST]}): {err}") from None
    if delta.version != version:
        raise CentreError(f"the status list says version {delta.version}, not {version} (--version): the lane "
                          "would refuse it")
    if delta.base != base_version:
        if delta.base is None:
            raise CentreError(f"the status list is a full list (no base), but --base-version {base_version} "
                              "announces a delta: leave --base-version out")
        if base_version is None:
            raise CentreError(f"the status list is a delta on version {delta.base}: give --base-version {delta.base}")
        raise CentreError(f"the status list is a delta on version {delta.base}, not on {base_version} "
                          "(--base-version): the lane would refuse it")
    return str(delta)


def _check_fee_table(data: bytes, version: int, base_version: int | None,
                     valid_from: dt.datetime | None) -> CheckedContent:
    if base_version is not None:
        raise CentreError("a fee table is always sent whole: no --base-version")
    if valid_from is None:
        valid_from = _own_start(data)
    tz = valid_from.tzinfo if valid_from is not None else None
    try:
        table = FeeTable.from_toml_bytes(data, source=f"not a fee table the lane can read "
                                                       f"({FORMATS[ListKind.FEE_TABLE]})", tz=tz)
    except FeeTableError as err:
        raise CentreError(str(err)) from None
    if table.version != version:
        raise CentreError(f"the fee table says version {table.version}, not {version} (--version): the lane "
                          "would refuse it")
    if valid_from is None:
        raise CentreError(f"the fee table's valid_from {table.valid_from.isoformat()} is the lane's local time (no "
                          f"UTC offset): give --valid-from with the lane's offset, e.g. "
                          f"{table.valid_from.isoformat()}+08:00")
    if table.valid_from != local_naive(valid_from, tz):
        raise CentreError(f"the fee table is valid from {table.valid_from.isoformat()}, --valid-from says "
                          f"{local_naive(valid_from, tz).isoformat()} (in its offset, {valid_from.isoformat()}): "
                          "the lane refuses a manifest whose start differs from its table's")
    stations = len(table.stations)
    return CheckedContent(f"fee table version {table.version} ({len(table.fees)} fees, {stations} "
                          f"station{'s' if stations != 1 else ''}), valid from {valid_from.isoformat()}", valid_from)


def _own_start(data: bytes) -> dt.datetime | None:
    """A fee table's valid_from when it names an instant (a UTC offset); None otherwise,
    or when the file does not parse (the parser then says why)."""
    try:
        value = tomllib.loads(data.decode("utf-8")).get("valid_from")
        if isinstance(value, str):
            value = dt.datetime.fromisoformat(value)
    except (UnicodeDecodeError, ValueError, RecursionError):  # TOMLDecodeError is a ValueError
        return None
    return value if isinstance(value, dt.datetime) and value.tzinfo is not None else None
