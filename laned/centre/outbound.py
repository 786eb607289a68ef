"""What the centre publishes to a lane on purpose: signed commands and list versions — from
the running :class:`~laned.centre.service.Centre`, or once from the command line
(``laned centre send-command`` / ``publish-list``) on a connection of their own, beside a
running centre (a clean session under another client id: the centre's session is its own).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from laned.centre.broker import BrokerSettings, make_client, publish
from laned.centre.commanding import DEFAULT_LIFETIME_S, SignedCommand, build_command
from laned.centre.errors import CentreError, CommandTimeout
from laned.centre.ledger import Ledger
from laned.centre.lists import ListVersion
from laned.uplink.contract import ContractError, topic
from laned.uplink.messages import CommandResult, ListChunk

log = logging.getLogger("laned.centre")


async def publish_command(client: aiomqtt.Client, signed: SignedCommand, now: dt.datetime) -> None:
    """Publish a signed command: QoS 1, expiry its remaining lifetime, the command id as correlation data."""
    remaining = signed.remaining_s(now)
    if remaining < 1:
        raise CentreError(f"command {signed.command_id} expired before it could be sent")
    await publish(client, "cmd", signed.lane_id, signed.data, expiry_s=remaining,
                  correlation=signed.command_id.encode("ascii"))
    log.info("centre: sent %s (seq %d, id %s) to lane %s, valid %.0f s", signed.command, signed.seq,
             signed.command_id, signed.lane_id, remaining)


async def publish_list_version(client: aiomqtt.Client, version: ListVersion, lanes: list[str],
                               now: dt.datetime) -> None:
    remaining = (version.expires_at() - now).total_seconds()
    if remaining < 1:
        raise CentreError(f"{version.kind} version {version.version} has expired; nothing published")
    manifest = json.dumps(version.manifest, ensure_ascii=False, separators=(",", ":"))
    for lane_id in lanes:
        await publish(client, "listManifest", lane_id, manifest, expiry_s=remaining)
        for index in range(version.chunk_count):
            chunk: ListChunk = version.chunk(index)
            await publish(client, "listChunk", lane_id, chunk.to_json())
        log.info("centre: published %s version %d (%d chunk(s)) to lane %s", version.kind, version.version,
                 version.chunk_count, lane_id)


async def send_command_once(broker: BrokerSettings, ledger: Ledger, *, lane_id: str, command: str,
                            args: Mapping[str, Any], private_key: Ed25519PrivateKey, key_id: str,
                            clock: Callable[[], dt.datetime], lifetime_s: float = DEFAULT_LIFETIME_S,
                            wait_s: float = 10.0, min_seq: int = 1) -> CommandResult:
    """Connect, send one signed command, wait for its ``cmd/result`` (CommandTimeout if none)."""
    async with make_client(broker, persistent=False) as client:
        # Subscribed before the command leaves, so an immediate answer is not missed.
        await client.subscribe(topic("cmdResult", lane_id), qos=1)
        seq = ledger.next_command_seq(lane_id, min_seq)
        signed = build_command(lane_id=lane_id, command=command, args=args, seq=seq, now=clock(),
                               private_key=private_key, key_id=key_id, lifetime_s=lifetime_s)
        ledger.record_command(signed.payload)
        await publish_command(client, signed, clock())
        try:
            async with asyncio.timeout(wait_s):
                async for message in client.messages:
                    try:
                        result = CommandResult.from_json(message.payload)
                    except ContractError as err:
                        log.warning("centre: dropped a CommandResult on %s: %s: %s", message.topic.value, err.path,
                                    err.reason)
                        continue
                    if result.command_id == signed.command_id:
                        ledger.record_command_result(result)
                        return result
        except TimeoutError:
            pass
        raise CommandTimeout(f"lane {lane_id} did not answer command {signed.command_id} ({command}, seq {seq}) "
                             f"within {wait_s:g} s: is it online (laned centre status)? The broker keeps the "
                             f"command for the lane until it expires at {signed.expires_at.isoformat()}")


async def publish_list_once(broker: BrokerSettings, ledger: Ledger, version: ListVersion, lanes: list[str],
                            clock: Callable[[], dt.datetime]) -> None:
    """Keep ``version`` in the centre's database (for chunk requests) and publish it to ``lanes``."""
    ledger.store_list(version.kind, version.version, version.manifest, version.data)
    async with make_client(broker, persistent=False) as client:
        await publish_list_version(client, version, lanes, clock())
