"""A list download's manifest and chunks as received: checked before anything is believed
(the order is laned.lane.list_update's module docstring). Sans-IO: ``now`` is passed in."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import re
from collections.abc import Mapping
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from laned.lane.list_outcomes import ChunkDropped, Drop, ListRefusal, Refused
from laned.strict_json import loads_strict, reject_constant
from laned.uplink.contract import ContractError
from laned.uplink.messages import ListChunk, ListKind, ListManifest, canonical_json

MAX_MANIFEST_BYTES: Final = 16384  # a manifest is ~600 bytes
DEFAULT_CLOCK_SKEW_S: Final = 300.0  # a valid_from this far ahead of the lane clock is still taken
_SIGNATURE: Final = re.compile(r"[A-Za-z0-9+/]{86}==")  # the contract's Ed25519Signature
_KEY_ID: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_SHA256: Final = re.compile(r"[0-9a-f]{64}")
_CHUNK_MEMBERS: Final = frozenset({"kind", "version", "index", "data", "sha256"})
_MAX_INDEX: Final = 1048575
_MAX_VERSION: Final = 2**63 - 1


# -- the manifest ----------------------------------------------------------------------------------


def check_manifest(raw: bytes | str, *, lane_id: str, keys: Mapping[str, Ed25519PublicKey], now: dt.datetime,
                   max_bytes: int, clock_skew_s: float = DEFAULT_CLOCK_SKEW_S) -> tuple[ListManifest, bytes] | Refused:
    """Checks 1–6 of the module docstring: the manifest and the bytes its signature covers."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware (the lane clock as an aware datetime)")
    if len(raw) > MAX_MANIFEST_BYTES:
        return Refused(reason=ListRefusal.MALFORMED, text=f"{len(raw)} bytes; a manifest is at most "
                       f"{MAX_MANIFEST_BYTES}")
    try:
        data = loads_strict(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        return Refused(reason=ListRefusal.MALFORMED, text=f"not UTF-8 JSON: {err}")
    if not isinstance(data, dict):
        return Refused(reason=ListRefusal.MALFORMED, text=f"a JSON {type(data).__name__}, not an object")
    kind, version = data.get("kind"), data.get("version")
    hints: dict[str, Any] = {"kind": kind_of(kind), "version": version if type(version) is int else None}
    signed = _check_signature(data, keys)
    if isinstance(signed, Refused):
        return Refused(reason=signed.reason, text=signed.text, **hints)
    named = data.pop("lane_id", None)
    if named is not None and named != lane_id:
        return Refused(reason=ListRefusal.WRONG_LANE, text=f"the manifest is for lane {str(named)[:32]!r}, this is "
                       f"lane {lane_id}", **hints)
    if hints["kind"] is None:
        return Refused(reason=ListRefusal.UNKNOWN_KIND, text=f"kind {str(data.get('kind'))[:32]!r} is not one of "
                       f"{', '.join(ListKind)}", version=version)
    try:
        manifest = ListManifest.from_dict(data)
    except ContractError as err:
        return Refused(reason=ListRefusal.MALFORMED, text=f"{err.path}: {err.reason}", **hints)
    hints["version"] = manifest.version
    if manifest.size > max_bytes:
        return Refused(reason=ListRefusal.TOO_LARGE, text=f"{manifest.size:,} bytes; this lane takes at most "
                       f"{max_bytes:,}", **hints)
    if now >= manifest.expires_at:
        return Refused(reason=ListRefusal.EXPIRED, text=f"expired at {manifest.expires_at.isoformat()}; the lane "
                       f"clock says {now.isoformat()}", **hints)
    ahead = (manifest.valid_from - now).total_seconds()
    if manifest.kind is ListKind.STATUS_LIST and ahead > clock_skew_s:
        return Refused(reason=ListRefusal.NOT_YET_VALID, text=f"valid from {manifest.valid_from.isoformat()}, "
                       f"{ahead:g} s ahead of the lane clock (tolerance {clock_skew_s:g} s)", **hints)
    return manifest, signed


def _check_signature(data: Mapping[str, Any], keys: Mapping[str, Ed25519PublicKey]) -> bytes | Refused:
    if "signature" not in data:
        return Refused(reason=ListRefusal.MISSING_SIGNATURE, text="the manifest carries no signature")
    text = data["signature"]
    if not isinstance(text, str) or not _SIGNATURE.fullmatch(text):
        return Refused(reason=ListRefusal.BAD_SIGNATURE, text="not a base64 Ed25519 signature (88 characters)")
    key_id = data.get("key_id")
    key = keys.get(key_id) if isinstance(key_id, str) else None
    if key is None:
        shown = key_id if isinstance(key_id, str) and _KEY_ID.fullmatch(key_id) else repr(str(key_id)[:64])
        return Refused(reason=ListRefusal.UNKNOWN_KEY, text=f"key {shown} is not a trusted centre key "
                       f"(trusted: {', '.join(sorted(keys)) or 'none'})")
    try:
        signed = canonical_json({k: v for k, v in data.items() if k != "signature"})
    except (ValueError, UnicodeEncodeError) as err:
        return Refused(reason=ListRefusal.MALFORMED, text=f"no canonical form to verify: {err}")
    try:
        key.verify(base64.b64decode(text, validate=True), signed)
    except InvalidSignature:
        return Refused(reason=ListRefusal.BAD_SIGNATURE, text=f"the signature does not verify with key {key_id}")
    return signed


def kind_of(value: object) -> ListKind | None:
    """The list kind a payload names, or None if it names none."""
    return ListKind(value) if isinstance(value, str) and value in ListKind.__members__.values() else None


# -- chunks ----------------------------------------------------------------------------------------


def parse_chunk(raw: bytes | str) -> ListChunk | ChunkDropped:
    """A received ``list/chunk`` payload as a ListChunk, or why it is not one.

    Checked member by member as the contract's ListChunk says, without the JSON Schema
    validator: its pattern check of a 1.4 MB base64 string holds the loop for
    milliseconds per chunk, and a national list is hundreds of chunks.
    """
    try:
        data = json.loads(raw, parse_constant=reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        return ChunkDropped(code=Drop.MALFORMED, text=f"not UTF-8 JSON: {str(err)[:200]}")
    if not isinstance(data, dict):
        return ChunkDropped(code=Drop.MALFORMED, text="not a JSON object")
    problems = [f"unknown member {k!r}" for k in data if k not in _CHUNK_MEMBERS]
    problems += [f"no {k}" for k in ("kind", "version", "index", "data") if k not in data]
    kind, version, index, text = data.get("kind"), data.get("version"), data.get("index"), data.get("data")
    list_kind = kind_of(kind)
    if "kind" in data and list_kind is None:
        problems.append(f"kind {str(kind)[:32]!r}")
    if "version" in data and not (type(version) is int and 0 <= version <= _MAX_VERSION):
        problems.append(f"version {str(version)[:32]!r}")
    if "index" in data and not (type(index) is int and 0 <= index <= _MAX_INDEX):
        problems.append(f"index {str(index)[:32]!r}")
    sha = data.get("sha256")
    if sha is not None and not (isinstance(sha, str) and _SHA256.fullmatch(sha)):
        problems.append("sha256 is not 64 lower-case hex digits")
    payload = b""
    if isinstance(text, str):
        try:
            payload = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            problems.append("data is not base64")
    elif "data" in data:
        problems.append("data is not a string")
    if problems or list_kind is None or type(version) is not int or type(index) is not int:
        return ChunkDropped(code=Drop.MALFORMED, text="; ".join(problems[:5]))
    return ListChunk(kind=list_kind, version=version, index=index, data=payload,
                     sha256=bytes.fromhex(sha) if isinstance(sha, str) else None)


__all__ = ["DEFAULT_CLOCK_SKEW_S", "MAX_MANIFEST_BYTES", "check_manifest", "kind_of", "parse_chunk"]
