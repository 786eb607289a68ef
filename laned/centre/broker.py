"""How the centre reaches the broker: its settings, its MQTT 5 client and its publishes.

The centre connects as the broker's ``centre`` identity (its client certificate's CN; the
ACL lets it read and write every lane's topics). ``laned centre run`` keeps a *persistent*
session (clean start off, a session expiry of a day): while it is down the broker queues
every QoS 1 message the lanes publish, and hands them over when it comes back. One-shot
CLI commands (send-command, publish-list) use a clean session under another client id,
so they never take over the running centre's session.
"""

from __future__ import annotations

import math
import ssl
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from laned.cancellation import stop_if_cancelled
from laned.centre.errors import CentreError
from laned.centre.keys import check_centre_key_file
from laned.uplink.contract import delivery, topic
from laned.uplink.tls import TlsConfigError, client_tls_context

CENTRE_CLIENT_ID = "laned-centre"
SESSION_EXPIRY_S = 86400  # the contract's session expiry: a day of lane traffic queued while the centre is down
KEEPALIVE_S = 30  # as the lanes (asyncapi.yaml servers.centre.bindings)
MQTT_TIMEOUT_S = 10.0  # CONNACK, SUBACK, PUBACK


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    host: str
    port: int
    ca: Path
    cert: Path
    key: Path
    client_id: str = CENTRE_CLIENT_ID
    session_expiry_s: int = SESSION_EXPIRY_S
    timeout_s: float = MQTT_TIMEOUT_S

    def tls_context(self) -> ssl.SSLContext:
        try:
            check_centre_key_file(self.key)  # first: its advice names this user, not the lane's service user
            return client_tls_context(self.ca, self.cert, self.key)
        except TlsConfigError as err:
            raise CentreError(f"centre TLS: {err}") from None

    def describe(self) -> str:
        return f"{self.host}:{self.port}"


def _properties(packet_type: int) -> Properties:
    # paho's Properties.__init__ carries no annotations; the value is a plain Properties.
    return Properties(packet_type)  # type: ignore[no-untyped-call]


def make_client(broker: BrokerSettings, *, persistent: bool) -> aiomqtt.Client:
    """An MQTT 5 client over TLS with the centre's certificate; ``persistent``: the centre's
    own session, else a clean one under a fresh client id."""
    properties = _properties(PacketTypes.CONNECT)
    properties.SessionExpiryInterval = broker.session_expiry_s if persistent else 0
    identifier = broker.client_id if persistent else f"{broker.client_id}-cli-{uuid.uuid4().hex[:8]}"
    return aiomqtt.Client(broker.host, broker.port, identifier=identifier, protocol=aiomqtt.ProtocolVersion.V5,
                          clean_start=not persistent, properties=properties, tls_context=broker.tls_context(),
                          keepalive=KEEPALIVE_S, timeout=broker.timeout_s)


async def publish(client: aiomqtt.Client, channel: str, lane_id: str, payload: bytes | str, *,
                  expiry_s: float | None = None, correlation: bytes | None = None) -> None:
    """Publish on a contract channel with its QoS and retain flag (``delivery``), as JSON;
    ``expiry_s`` overrides the channel's message expiry (a command's remaining lifetime)."""
    d = delivery(channel)
    properties = _properties(PacketTypes.PUBLISH)
    properties.PayloadFormatIndicator = 1
    properties.ContentType = "application/json"
    expiry = expiry_s if expiry_s is not None else d.expiry_s
    if expiry is not None:
        properties.MessageExpiryInterval = max(1, math.ceil(expiry))
    if correlation is not None:
        properties.CorrelationData = correlation
    data = payload.encode("utf-8") if isinstance(payload, str) else payload
    await client.publish(topic(channel, lane_id), data, qos=d.qos, retain=d.retain, properties=properties)
    # aiomqtt awaits the PUBACK with asyncio.wait_for, which in Python 3.11 returns the PUBACK
    # that came at the moment the task was cancelled and drops the cancellation: the centre's
    # ack loop then waited for its next ack forever and the centre could not stop (seen in the
    # test suite, about one run in ten of hil_tests/test_centre.py).
    stop_if_cancelled()
