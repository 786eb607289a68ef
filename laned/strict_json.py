"""JSON as the centre's signed payloads must be read: what ``json.loads`` lets through but
RFC 8259 and the canonical form (RFC 8785) do not — NaN/Infinity, a member twice (two
parsers could each see another value under one signature) — is refused."""

from __future__ import annotations

import json
from typing import Any


def reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"member {key!r} appears twice")
        out[key] = value
    return out


def loads_strict(raw: str | bytes | bytearray) -> Any:
    """``json.loads`` refusing NaN/Infinity and duplicate members (ValueError)."""
    return json.loads(raw, object_pairs_hook=unique_members, parse_constant=reject_constant)
