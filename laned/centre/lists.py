"""Status lists and fee tables for the lanes: a signed manifest and its chunks.

``build_list`` cuts a file (a status list as ``laned-status-json-1``, a fee table as
``laned-fee-toml-1``; sent as is, ``compression: none``) into chunks, and signs the manifest
with :func:`laned.uplink.commands.signature_of` over its JSON object without ``signature``
in canonical form (asyncapi.yaml, "Signatures"). The manifest names no lane: one signed
version serves every lane; it is published retained on each lane's ``list/manifest`` with
a message expiry up to its ``expires_at``, the chunks on ``list/chunk``. A lane that misses
chunks asks on ``list/request``; the running centre answers from its database.

A lane that missed versions (offline longer than its MQTT session) gets only the last
retained manifest back; :func:`catch_up` picks, from the lane's ``list/versions``, what the
running centre offers it (docs/centre.md, "Lanes that missed list versions").

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from laned.centre.errors import CentreError
from laned.lane.fee_table import FeeTable, FeeTableError, local_naive
from laned.lane.status_list import StatusListError, parse_payload
from laned.uplink.commands import signature_of
from laned.uplink.contract import ContractError, validate
from laned.uplink.messages import Compression, ListChunk, ListFormat, ListKind, ListManifest, ListVersions

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


# -- lanes that missed versions ---------------------------------------------------------------------

# The same version is offered to the same lane again only after this long: a lane that
# reconnects while it downloads a national list (~800 MB) publishes list/versions again,
# and must not be sent the whole list again on every reconnect. Its own list/request (after
# its chunk timeout) fetches what it still lacks meanwhile.
OFFER_COOLDOWN_S = 600.0


@dataclass(frozen=True, slots=True)
class Offer:
    """Publish ``version`` of ``kind`` to the lane; ``reason`` says why, for the log."""

    kind: ListKind
    version: int
    reason: str


@dataclass(frozen=True, slots=True)
class CannotCatchUp:
    """The lane is behind, but nothing the centre holds takes it forward."""

    kind: ListKind
    reason: str


def catch_up(held: Sequence[Mapping[str, Any]], lane: ListVersions,
             now: dt.datetime) -> list[Offer | CannotCatchUp]:
    """What to offer a lane that published ``lane`` (its ``list/versions``), from the signed
    manifests ``held`` (every version in the centre's database); nothing for a kind it is up
    to date in. Expired versions are never offered, nor a status list before its
    ``valid_from`` (the lane refuses both).

    A status list: the delta on the version the lane uses (the newest, if several), so a
    lane several deltas behind walks the chain one delta per ``list/versions``; failing
    that, the newest full list; failing that, :class:`CannotCatchUp`. A fee table is always
    whole: the newest, if newer than both the lane's table and its pending one.
    """
    live = [m for m in held if dt.datetime.fromisoformat(str(m["expires_at"])) > now]
    found: list[Offer | CannotCatchUp] = []
    status = _status_list(
        [m for m in live if m["kind"] == ListKind.STATUS_LIST
         and dt.datetime.fromisoformat(str(m["valid_from"])) <= now],
        None if lane.status_list is None else lane.status_list.version)
    if status is not None:
        found.append(status)
    tables = (lane.fee_table, lane.fee_table_pending)
    has = max((t.version for t in tables if t is not None), default=None)
    newest = max((int(m["version"]) for m in live if m["kind"] == ListKind.FEE_TABLE), default=None)
    if newest is not None and (has is None or newest > has):
        found.append(Offer(ListKind.FEE_TABLE, newest, "the lane has no fee table" if has is None else
                           f"the lane's newest fee table is version {has}"))
    return found


def _status_list(held: Sequence[Mapping[str, Any]], has: int | None) -> Offer | CannotCatchUp | None:
    newer = [m for m in held if has is None or int(m["version"]) > has]
    if not newer:
        return None
    newest = max(int(m["version"]) for m in newer)
    uses = "the lane has no status list" if has is None else f"the lane uses status list version {has}"
    deltas = [int(m["version"]) for m in newer if has is not None and m.get("base_version") == has]
    if deltas:
        return Offer(ListKind.STATUS_LIST, max(deltas), f"{uses}; the delta {has}→{max(deltas)} (newest held "
                     f"{newest})")
    fulls = [int(m["version"]) for m in newer if m.get("base_version") is None]
    if fulls:
        return Offer(ListKind.STATUS_LIST, max(fulls), f"{uses}, no delta on it held; the newest full list")
    bases = sorted({int(m["base_version"]) for m in newer})
    return CannotCatchUp(ListKind.STATUS_LIST, f"{uses}; the centre holds versions up to {newest}, but only as "
                         f"deltas on version(s) {', '.join(map(str, bases))} and no full list"
                         f"{'' if has is None else f' newer than {has}'}: publish a full list (laned centre publish-list "
                         "without --base-version) to bring it up to date")


class RecentOffers:
    """Which version of each kind was offered to each lane, and when (time passed in, seconds):
    the same version again only after ``cooldown_s``; another version at once."""

    def __init__(self, cooldown_s: float = OFFER_COOLDOWN_S) -> None:
        self.cooldown_s = cooldown_s
        self._last: dict[tuple[str, str], tuple[int, float]] = {}

    def due(self, lane_id: str, kind: str, version: int, now_s: float) -> bool:
        last = self._last.get((lane_id, str(kind)))
        return last is None or last[0] != version or now_s - last[1] >= self.cooldown_s

    def note(self, lane_id: str, kind: str, version: int, now_s: float) -> None:
        self._last[(lane_id, str(kind))] = (version, now_s)
