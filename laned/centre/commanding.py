"""Commands to a lane (topic ``cmd``): built, signed, checked against the contract.

Each command gets a new ``command_id`` (a UUID), the centre's next ``seq`` for the lane
(kept in the centre's database so it only goes up: the lane refuses a seq not above the
last one it executed), ``issued_at`` now and ``expires_at`` after ``lifetime_s``. It is
signed with :func:`laned.uplink.commands.sign` and published with an MQTT message expiry
of its remaining lifetime, so the broker drops it rather than deliver it late.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from laned.centre.errors import CentreError
from laned.uplink.commands import CommandKeyError, sign
from laned.uplink.contract import ContractError, validate
from laned.uplink.messages import CommandName

DEFAULT_LIFETIME_S = 300.0  # five minutes: long enough for a lane that reconnects, short enough not to surprise
MAX_LIFETIME_S = 86400.0  # the contract's cmd message expiry maximum


@dataclass(frozen=True, slots=True)
class SignedCommand:
    lane_id: str
    command_id: str
    seq: int
    command: CommandName
    expires_at: dt.datetime
    payload: dict[str, Any]  # as published, signature included
    data: bytes  # the UTF-8 JSON published

    def remaining_s(self, now: dt.datetime) -> float:
        return (self.expires_at - now).total_seconds()


def build_command(*, lane_id: str, command: str, args: Mapping[str, Any], seq: int, now: dt.datetime,
                  private_key: Ed25519PrivateKey, key_id: str,
                  lifetime_s: float = DEFAULT_LIFETIME_S) -> SignedCommand:
    """A signed command, checked against the contract before it leaves (CentreError names the member)."""
    if now.tzinfo is None:
        raise CentreError("now must be timezone-aware")
    if not 1 <= lifetime_s <= MAX_LIFETIME_S:
        raise CentreError(f"a command lives 1 to {MAX_LIFETIME_S:g} s, not {lifetime_s:g}")
    try:
        name = CommandName(command)
    except ValueError:
        raise CentreError(f"{command!r} is not a command; the contract knows "
                          f"{', '.join(c.value for c in CommandName)} (none lowers the barrier)") from None
    issued = now.replace(microsecond=now.microsecond - now.microsecond % 1000)
    body = {"lane_id": lane_id, "command_id": str(uuid.uuid4()), "seq": seq,
            "issued_at": issued.isoformat(timespec="milliseconds"),
            "expires_at": (issued + dt.timedelta(seconds=lifetime_s)).isoformat(timespec="milliseconds"),
            "command": name.value, "args": dict(args)}
    try:
        data = sign(body, private_key, key_id)
    except CommandKeyError as err:
        raise CentreError(str(err)) from None
    except ValueError as err:  # no canonical form: an integer past what RFC 8785 writes exactly
        raise CentreError(f"{name} for lane {lane_id} cannot be signed: {err}") from None
    payload = json.loads(data)
    try:
        validate("CommandRequest", payload)
    except ContractError as err:
        raise CentreError(f"{name} for lane {lane_id} would be refused as malformed: {err.path}: {err.reason}") \
            from None
    return SignedCommand(lane_id=lane_id, command_id=payload["command_id"], seq=seq, command=name,
                         expires_at=issued + dt.timedelta(seconds=lifetime_s), payload=payload, data=data)
