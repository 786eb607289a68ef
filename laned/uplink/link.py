"""The connection to the centre's broker: MQTT 5 over TLS (aiomqtt), as the contract says.

One :meth:`CentreLink.session` is one MQTT connection::

    async with link.session() as session:          # TLS, CONNECT, SUBSCRIBE, state online
        await session.publish(TransactionMsg.from_entry(entry))
        async for item in session.incoming():      # validated centre -> lane messages
            ...

* client id ``laned-{lane_id}``, clean start false with a session expiry, so the broker
  queues the centre's QoS 1 messages while the lane is away;
* the last will is the retained ``state`` message ``offline`` (the contract's
  :meth:`~laned.uplink.messages.LaneState.last_will`); a clean close publishes ``offline``
  itself before DISCONNECT (which discards the will);
* it subscribes exactly the lane's receive topics (``tx/ack``, ``reconcile``, ``cmd``,
  ``list/manifest``, ``list/chunk``), never a wildcard, and publishes with the QoS,
  retain flag and message expiry of :func:`laned.uplink.contract.delivery`, content type
  ``application/json`` and payload format indicator 1;
* every received payload is checked against the contract; one that does not conform is
  logged (topic and member) and dropped: a bad message never ends the link, nor the lane;
* every PUBACK's MQTT 5 reason code is read (:class:`PublishRefusals`): a broker that
  refuses the lane's publishes on a topic (0x87 Not authorized: its ACL) is reported,
  once per topic, and its owner (the uplink service) raises ``uplink_publish_refused``.

Whatever goes wrong with the connection (TLS, refused, lost, a PUBACK that never comes)
comes out as :class:`LinkDown` with a reason a field engineer can act on. Reconnecting is
the caller's loop (:class:`Backoff` gives the delays): a new session is a new connection.
"""

from __future__ import annotations

import asyncio
import functools
import dataclasses
import datetime as dt
import enum
import logging
import random
import ssl
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
from paho.mqtt.client import MQTT_ERR_SUCCESS
from paho.mqtt.client import error_string as mqtt_error_string
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from laned.uplink.contract import ContractError, contract
from laned.uplink.messages import MESSAGE_CLASSES, LaneState, LaneStatus, UplinkMessage
from laned.uplink.mqtt_client import SlicedClient
from laned.uplink.tls import TlsConfigError, check_client_certificate, client_tls_context

log = logging.getLogger("laned.uplink")

CONTENT_TYPE = "application/json"  # the contract's messageTraits.json
PAYLOAD_FORMAT_UTF8 = 1  # MQTT 5 payload format indicator: UTF-8 text
# A PUBACK, SUBACK or CONNACK not back within this many keep-alive periods means the
# connection is dead even if TCP has not noticed: MQTT itself gives a silent peer 1.5.
ANSWER_KEEPALIVES = 1.5
JITTER = 0.2  # each back-off delay is spread ±20 %, so lanes cut off together do not return together
CLOSE_TIMEOUT_S = 2.0  # a clean close (offline state, DISCONNECT) waits no longer on a broker gone quiet
PENDING_CALLS_MARGIN = 16  # state, health, alarms and the subscription besides the outbox windows


# MQTT 5 reason codes of 0x80 and above are failures (MQTT 5.0, section 2.4): in a PUBACK,
# 0x87 Not authorized is a broker ACL refusing the topic, 0x97 Quota exceeded, 0x99 Payload
# format invalid… Below 0x80: accepted (0x10 No matching subscribers included).
REASON_FAILURE = 0x80

# Rows published per turn of the event loop by Session.publish_all (a message costs ~0.1 ms
# of the loop: JSON, paho's packet, the socket write; a batch's rows ~20 µs each); the
# RSU's answers come in between.
PUBLISH_SLICE = 16

DISCONNECT_WITH_WILL = ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message")


class UplinkError(Exception):
    """The uplink layer's errors."""


class LinkDown(UplinkError):
    """The connection to the centre's broker could not be made or was lost; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class LinkState(enum.StrEnum):
    DOWN = "down"
    CONNECTING = "connecting"
    UP = "up"


@dataclass(frozen=True, slots=True)
class LinkSettings:
    """Where the broker is and how to talk to it (``[uplink]`` of laned.toml)."""

    lane_id: str
    host: str
    port: int
    ca: Path
    cert: Path
    key: Path
    keepalive_s: int = 30
    session_expiry_s: int = 86_400
    max_inflight: int = 2048  # the outbox window: rows of one stream published and not acked yet

    @property
    def client_id(self) -> str:
        return f"laned-{self.lane_id}"

    @property
    def answer_timeout_s(self) -> float:
        return ANSWER_KEEPALIVES * self.keepalive_s

    def where(self) -> str:
        return f"{self.host}:{self.port}"


# Channels whose payloads are handed over as received (``Incoming.payload``, no message):
# the list downloads check them themselves (laned.lane.list_update) — a refused manifest is
# an alarm there, not a silent drop here, and the contract's pattern check of a chunk's
# base64 (up to 1.4 MB) would hold the loop for milliseconds per chunk. A command too: the
# lane answers every command it reads, a malformed or unsigned one with a refusal that says
# why (laned.uplink.commands.verify), which a drop here would swallow.
RAW_CHANNELS = frozenset({"listManifest", "listChunk", "cmd"})


@dataclass(frozen=True, slots=True)
class Incoming:
    """A centre -> lane message that conforms to the contract, or (``RAW_CHANNELS``:
    ``message`` None) a payload as received, for its own checks."""

    channel: str  # the contract's channel key: txAck, reconcile, cmd, listManifest, listChunk
    topic: str
    message: UplinkMessage | None
    correlation_data: bytes | None = None  # MQTT 5, copied onto a command's result
    payload: bytes = b""  # RAW_CHANNELS only
    # The broker's retained copy, delivered on subscribing (not published just now): a
    # list manifest seen this way had its chunks sent while the lane was away.
    retained: bool = False


class Backoff:
    """Reconnect delays: ``min_s`` doubling up to ``max_s``, each ±20 % at random; sans-IO."""

    def __init__(self, min_s: float, max_s: float, *, rng: random.Random | None = None) -> None:
        if not 0 < min_s <= max_s:
            raise ValueError(f"back-off needs 0 < min_s <= max_s, got {min_s} and {max_s}")
        self.min_s, self.max_s = min_s, max_s
        self._rng = rng or random.Random()
        self._failures = 0

    def next(self) -> float:
        """The delay before the next attempt, after one more failure."""
        base = min(self.max_s, self.min_s * 2.0 ** min(self._failures, 32))
        self._failures += 1
        # Never past max_s: it bounds how long after the network returns the first
        # transaction goes up (reconnect_max_s is documented as that bound).
        return float(min(self.max_s, base * (1 + self._rng.uniform(-JITTER, JITTER))))

    def reset(self) -> None:
        """The link came up: the next failure starts from ``min_s`` again."""
        self._failures = 0


class _PackedOnce(Properties):
    """Publish properties packed on first use and kept: paho packs a publish's properties
    on every send, which was a twentieth of the lane's loop in a backlog drain. Never
    changed after the first publish (only :func:`_publish_properties` makes them)."""

    def pack(self) -> bytes:
        packed: bytes | None = self.__dict__.get("_packed")
        if packed is None:
            packed = super().pack()  # type: ignore[no-untyped-call]
            object.__setattr__(self, "_packed", packed)  # paho's __setattr__ takes property names only
        return packed


def _properties(packet: int, expiry_s: int | None = None, *, cls: type[Properties] = Properties) -> Properties:
    props = cls(packet)
    props.PayloadFormatIndicator = PAYLOAD_FORMAT_UTF8
    props.ContentType = CONTENT_TYPE
    if expiry_s is not None:
        props.MessageExpiryInterval = expiry_s
    return props


@functools.lru_cache(maxsize=16)
def _publish_properties(expiry_s: int | None) -> Properties:
    # Shared by every publish of a channel: paho only reads them when it packs the
    # packet, and building them anew was a tenth of the loop's time in a backlog drain.
    return _properties(PacketTypes.PUBLISH, expiry_s, cls=_PackedOnce)


def _reason(err: BaseException) -> str:
    """One readable line for a connection failure (aiomqtt nests the socket error)."""
    text = str(err) or type(err).__name__
    cause = err.__cause__
    if cause is not None and str(cause) and str(cause) not in text:
        text += f" ({cause})"
    return text


@dataclass
class LinkStats:
    """Counters over every session since start (``laned status``, the health snapshot's counters)."""

    sessions: int = 0  # connections made
    lost: int = 0  # connections lost (not closed by laned)
    dropped: int = 0  # received payloads that did not conform to the contract
    refused: int = 0  # publishes the broker refused (PUBACK reason code 0x80 or above)


class PublishRefusals:
    """The broker's answers to the lane's QoS 1 publishes, per topic: which topics it
    refuses now (sans-IO; :class:`~laned.uplink.mqtt_client.SlicedClient` feeds it every
    PUBACK while :meth:`watching`, and every refusal).

    A refusal of a topic is logged once, when it starts, and ``on_change`` is told; so is
    the first publish the broker takes on that topic again. A refused transaction is not
    lost: no ``tx/ack`` comes for it, so it goes up again when its ack is overdue — which is
    also how the lane finds out that the centre has fixed its ACL.
    """

    def __init__(self, stats: LinkStats, on_change: Callable[[Mapping[str, str]], None] | None = None) -> None:
        self.stats = stats
        self.on_change = on_change  # called with the topics refused now (topic -> reason)
        self._refused: dict[str, str] = {}

    @property
    def refused(self) -> Mapping[str, str]:
        """Topic -> the broker's reason (``Not authorized (0x87)``), for the topics it refuses now."""
        return dict(self._refused)

    def watching(self) -> bool:
        """Whether accepted publishes matter now (a topic is refused): the MQTT client then
        reports every PUBACK, else only refusals — a backlog's drain is thousands a second."""
        return bool(self._refused)

    def answer(self, topic: str, code: int, reason: str) -> None:
        """The broker's PUBACK for a publish on ``topic``: reason ``code`` (``reason``, its name)."""
        if code >= REASON_FAILURE:
            self.stats.refused += 1
            if topic in self._refused:
                return
            self._refused[topic] = f"{reason} (0x{code:02x})"
            log.error("centre link: the broker refuses what this lane publishes on %s: %s (0x%02x). The link stays "
                      "up but these messages do not reach the centre (transactions stay in the journal and go up "
                      "again); the centre must let this lane write the topic in its broker's ACL "
                      "(uplink_publish_refused)", topic, reason, code)
        elif topic in self._refused:
            del self._refused[topic]
            log.info("centre link: the broker takes this lane's publishes on %s again", topic)
        else:
            return
        if self.on_change is not None:
            self.on_change(self.refused)


class Session:
    """One live connection: publish and receive (see the module docstring)."""

    def __init__(self, client: aiomqtt.Client, settings: LinkSettings, stats: LinkStats) -> None:
        self._client = client
        self.settings = settings
        self.stats = stats

    async def publish(self, msg: UplinkMessage, *, correlation_data: bytes | None = None,
                      expiry_s: int | None = None) -> None:
        """Publish ``msg`` on its channel, as the contract's delivery table says; returns
        once the broker has answered (PUBACK for QoS 1) — which says nothing about the
        centre, and a refusal in it goes to :class:`PublishRefusals`, not to the caller.
        ``correlation_data``: MQTT 5 correlation data (a command's, copied onto its result).
        ``expiry_s``: the message expiry instead of the contract's, for a message that waited
        (what is left of the contract's); never longer than the contract's."""
        c = contract()
        delivery = c.delivery(msg.MESSAGE)
        topic = c.topic(delivery.channel, self.settings.lane_id)
        expiry = delivery.expiry_s
        if expiry_s is not None:
            expiry = max(1, expiry_s if expiry is None else min(expiry, expiry_s))
        if correlation_data is None and expiry == delivery.expiry_s:
            properties = _publish_properties(expiry)
        else:
            properties = _properties(PacketTypes.PUBLISH, expiry)
            if correlation_data is not None:
                properties.CorrelationData = correlation_data
        try:
            await self._client.publish(topic, msg.to_json().encode("utf-8"), qos=delivery.qos,
                                       retain=delivery.retain, properties=properties,
                                       timeout=self.settings.answer_timeout_s)
        except aiomqtt.MqttError as err:
            raise LinkDown(f"publish to {topic} failed: {_reason(err)}") from err

    async def publish_all(self, messages: Iterable[UplinkMessage]) -> None:
        """Publish several, in this order, handing each to the MQTT client's queue without
        waiting for its PUBACK: the outbox's rows (delivery is decided by the centre's
        ``tx/ack``, never by a PUBACK; a row lost on the way is sent again when overdue
        or after a reconnect). Waiting per message cost a task, an event and a timeout
        each, and aiomqtt's bookkeeping of pending calls grows with their square."""
        c = contract()
        paho = self._client._client  # noqa: SLF001 - aiomqtt's publish always awaits the PUBACK
        routes: dict[str, tuple[str, int, bool, Properties]] = {}  # per message kind, looked up once
        rows = 0
        for msg in messages:
            route = routes.get(msg.MESSAGE)
            if route is None:
                delivery = c.delivery(msg.MESSAGE)
                route = routes[msg.MESSAGE] = (c.topic(delivery.channel, self.settings.lane_id), delivery.qos,
                                               delivery.retain, _publish_properties(delivery.expiry_s))
            topic, qos, retain, properties = route
            info = paho.publish(topic, msg.to_json().encode("utf-8"), qos, retain, properties)
            if info.rc != MQTT_ERR_SUCCESS:
                raise LinkDown(f"publish to {topic} refused by the MQTT client: {mqtt_error_string(info.rc)}")
            rows += msg.rows()
            if rows >= PUBLISH_SLICE:
                # Let the loop run between slices: the RSU's frames must not wait behind a
                # whole window being encoded (a batch of 64 rows is a slice by itself).
                rows = 0
                await asyncio.sleep(0)

    async def incoming(self) -> AsyncIterator[Incoming]:
        """The centre's messages that conform to the contract, in arrival order, until the
        connection is lost (then :class:`LinkDown`)."""
        try:
            async for message in self._client.messages:
                item = self._parse(message)
                if item is not None:
                    yield item
        except aiomqtt.MqttError as err:
            raise LinkDown(f"connection lost: {_reason(err)}") from err

    def _parse(self, message: aiomqtt.Message) -> Incoming | None:
        topic = message.topic.value
        c = contract()
        routed = c.route(topic)
        if routed is None or routed[1] != self.settings.lane_id:
            self._drop(topic, "not a topic of this lane in the contract")
            return None
        channel = routed[0]
        correlation = getattr(message.properties, "CorrelationData", None) if message.properties else None
        if channel in RAW_CHANNELS:
            raw = message.payload
            return Incoming(channel=channel, topic=topic, message=None,
                            payload=bytes(raw) if isinstance(raw, (bytes, bytearray)) else str(raw).encode(),
                            correlation_data=bytes(correlation) if correlation else None,
                            retained=bool(message.retain))
        cls = MESSAGE_CLASSES[c.message_of(channel)]
        try:
            parsed = cls.from_json(message.payload)
        except ContractError as err:
            self._drop(topic, f"{err.message} {err.path}: {err.reason}")
            return None
        lane = getattr(parsed, "lane_id", None)
        if lane is not None and lane != self.settings.lane_id:
            self._drop(topic, f"{cls.MESSAGE} $.lane_id: {lane!r} is not this lane")
            return None
        return Incoming(channel=channel, topic=topic, message=parsed,
                        correlation_data=bytes(correlation) if correlation else None)

    def _drop(self, topic: str, why: str) -> None:
        self.stats.dropped += 1
        log.warning("centre link: dropped a message on %s that does not conform to the contract (%s); "
                    "the link goes on. Tell the centre: it sent something laned cannot read", topic, why)


class CentreLink:
    """Opens sessions to the centre's broker; ``lane_state`` gives the retained state
    published on every connect (``online``, or ``degraded`` with why ETC is closed)."""

    def __init__(self, settings: LinkSettings, *, lane_state: Callable[[], LaneState],
                 wall: Callable[[], dt.datetime]) -> None:
        self.settings = settings
        self.lane_state = lane_state
        self.wall = wall
        self.state = LinkState.DOWN
        self.stats = LinkStats()
        # What the broker refuses, over every session (a wrong ACL outlives a reconnect).
        self.refusals = PublishRefusals(self.stats)

    def _tls(self) -> ssl.SSLContext:
        """Read the files on every connect, so that a renewed certificate installed in
        place is used without a restart."""
        s = self.settings
        check_client_certificate(s.cert, identity=s.lane_id, now=self.wall())
        return client_tls_context(s.ca, s.cert, s.key)

    def _client(self, tls: ssl.SSLContext) -> aiomqtt.Client:
        s = self.settings
        c = contract()
        will = LaneState.last_will(s.lane_id)
        will_delivery = c.delivery(will.MESSAGE)
        connect = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        connect.SessionExpiryInterval = s.session_expiry_s
        client = SlicedClient(
            s.host, s.port, identifier=s.client_id, protocol=aiomqtt.ProtocolVersion.V5, tls_context=tls,
            will=aiomqtt.Will(c.topic(will_delivery.channel, s.lane_id), will.to_json().encode("utf-8"),
                              qos=will_delivery.qos, retain=will_delivery.retain,
                              properties=_properties(PacketTypes.WILLMESSAGE, will_delivery.expiry_s)),
            clean_start=False, properties=connect, keepalive=s.keepalive_s, timeout=s.answer_timeout_s,
            max_inflight_messages=0, logger=log.getChild("mqtt"))
        # paho's own in-flight limit is off (0): the outbox windows bound what is in flight
        # (max_inflight rows per stream, plus a few state, health and alarm messages), and
        # with a limit paho walks every message in flight on each PUBACK — quadratic in the
        # window, a fifth of the loop's time in a backlog drain.
        # aiomqtt warns about every publish beyond 10 awaiting its PUBACK; a full window of
        # transactions (plus state, health and alarms) is normal here, not a problem.
        client.pending_calls_threshold = 2 * s.max_inflight + PENDING_CALLS_MARGIN
        client.puback_watcher = self.refusals
        return client

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Session]:
        """Connect, subscribe, publish the lane state; yield the session; on the way out
        publish ``offline`` and disconnect cleanly (if the connection still stands)."""
        s = self.settings
        self.state = LinkState.CONNECTING
        try:
            tls = await asyncio.to_thread(self._tls)
        except TlsConfigError as err:
            self.state = LinkState.DOWN
            raise LinkDown(f"TLS files cannot be used: {err}") from err
        client = self._client(tls)
        try:
            await client.__aenter__()
        except aiomqtt.MqttError as err:
            self.state = LinkState.DOWN
            raise LinkDown(f"cannot connect to {s.where()}: {_reason(err)}") from err
        session = Session(client, s, self.stats)
        lost = False
        try:
            await self._subscribe(client)
            await session.publish(self.lane_state())
            self.state = LinkState.UP
            self.stats.sessions += 1
            yield session
        except LinkDown:
            lost = True
            if self.state is LinkState.UP:  # a session that stood, lost (not a failed connect)
                self.stats.lost += 1
            raise
        finally:
            # Stopping (cancelled) or done: say offline ourselves. Lost: the broker has
            # published the will already, or will when it notices.
            self.state = LinkState.DOWN
            await self._close(client, session, clean=not lost)

    async def _subscribe(self, client: aiomqtt.Client) -> None:
        topics = contract().subscriptions(self.settings.lane_id)
        try:
            codes = await client.subscribe(topics, timeout=self.settings.answer_timeout_s)
        except aiomqtt.MqttError as err:
            raise LinkDown(f"subscribing at {self.settings.where()} failed: {_reason(err)}") from err
        for (topic, _), code in zip(topics, codes, strict=False):
            value = getattr(code, "value", code)
            if isinstance(value, int) and value >= 0x80:
                # The centre's broker refuses a topic the contract gives the lane: its ACL is
                # wrong. The rest still works; the centre must fix the ACL.
                log.error("centre link: the broker refused the subscription to %s (reason code 0x%02x): "
                          "the centre's ACL must let this lane read it", topic, value)

    async def _close(self, client: aiomqtt.Client, session: Session, *, clean: bool) -> None:
        """Say offline and disconnect; a connection that is already gone is just let go."""
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT_S):
                if clean:
                    offline = dataclasses.replace(LaneState.last_will(self.settings.lane_id),
                                                  state=LaneStatus.OFFLINE, reason="laned stopped", at=self.wall())
                    await session.publish(offline)
                else:
                    # Given up on a connection that may still stand (a PUBACK that never came):
                    # a plain DISCONNECT would discard the will and leave "online" retained
                    # while the lane is away, so ask the broker to publish the will (MQTT 5
                    # reason 0x04). aiomqtt has no parameter for it: paho's client does.
                    client._client.disconnect(reasoncode=DISCONNECT_WITH_WILL)  # noqa: SLF001
                await client.__aexit__(None, None, None)
        except (LinkDown, aiomqtt.MqttError, TimeoutError) as err:
            log.debug("centre link: closing the connection: %s", err)
