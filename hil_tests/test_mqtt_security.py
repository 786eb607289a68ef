"""The centre link's security against a real Mosquitto (issue 10, item 3).

Each test starts its own broker (``MosquittoBroker``: TLS listener on a free port, client
certificates required, the certificate's CN as username, the per-lane ACL) with a PKI the
test generates (``make_pki``); no key is committed, none is readable by others.

What is refused, and how the refusal shows (Mosquitto 2.0, aiomqtt 2.5 / paho 2.2):

- plaintext MQTT on the TLS port: the broker fails the TLS handshake ("wrong version
  number"); the client never gets a CONNACK. There is no plaintext listener, and one
  added on purpose refuses every client with CONNACK 0x87 "Not authorized", named or not;
- no client certificate, a certificate from another CA, an expired certificate: the broker
  ends the TLS 1.3 handshake with an alert (certificate required / unknown CA / certificate
  expired). aiomqtt only sees the connection die before CONNACK and raises ``MqttError``
  ("Operation timed out") when its ``timeout`` runs out, so the tests use a 1 s timeout and
  read the alert from a raw TLS connection with the same context (``ssl.SSLError.reason``);
- lane A publishing under lane B's prefix (or to any centre->lane topic): Mosquitto drops
  the message. With MQTT 3.1.1 the PUBACK still says success; with MQTT 5 it carries reason
  code 0x87 "Not authorized". Either way the centre and lane B never receive it;
- lane A subscribing to ``#`` or to lane B's topics: Mosquitto's ``acl_file`` grants the
  SUBACK and checks read access per message at delivery, so lane A receives nothing of lane
  B's, retained messages included.

"Receives nothing" is checked without sleeping: after the forbidden messages a permitted
*sentinel* goes the same way; the broker delivers in order, so once the sentinel is there
anything forbidden that got through would be there too.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
import paho.mqtt.client as paho
import pytest
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from mosquitto_broker import LANE_PUBLISHES, LANE_SUBSCRIBES, TOPIC_ROOT, MosquittoBroker
from mqtt_pki import CENTRE, Credentials, Pki, make_pki
from laned.uplink.tls import TlsConfigError, check_client_certificate, client_tls_context

pytestmark = [pytest.mark.hil, pytest.mark.timeout(15)]

LANE_A = "G0001-01"
LANE_B = "SIM-0201-03"
T = 3.0  # per-step deadline; every step normally takes milliseconds
REFUSAL_TIMEOUT = 1.0  # aiomqtt's wait for a CONNACK that a refused TLS connection never gets
NOT_AUTHORIZED = 0x87  # MQTT 5 reason code 135 (PUBACK, SUBACK, CONNACK)
V5 = aiomqtt.ProtocolVersion.V5
V311 = aiomqtt.ProtocolVersion.V311


def topic(lane: str, suffix: str) -> str:
    return f"{TOPIC_ROOT}/{lane}/{suffix}"


# -- fixtures and helpers ---------------------------------------------------------------------

@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki", lanes=(LANE_A, LANE_B))


def context_for(pki: Pki, credentials: Credentials, *, trust: Path | None = None) -> ssl.SSLContext:
    """laned's client context (``client_tls_context``) for these credentials."""
    return client_tls_context(trust or pki.ca_cert, credentials.cert, credentials.key)


class RecordingClient(aiomqtt.Client):
    """aiomqtt drops the PUBACK's reason code (MQTT 5); this keeps it, in arrival order."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.puback_codes: list[ReasonCode] = []

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason_code: ReasonCode,
                    properties: Properties) -> None:
        self.puback_codes.append(reason_code)
        super()._on_publish(client, userdata, mid, reason_code, properties)


def client(broker: MosquittoBroker, context: ssl.SSLContext | None, *, protocol: aiomqtt.ProtocolVersion = V5,
           timeout: float = T, port: int | None = None, **kwargs: Any) -> RecordingClient:
    return RecordingClient(broker.host, port or broker.port, tls_context=context, protocol=protocol,
                           timeout=timeout, **kwargs)


@asynccontextmanager
async def connected(broker: MosquittoBroker, pki: Pki, name: str, *,
                    protocol: aiomqtt.ProtocolVersion = V5, **kwargs: Any) -> AsyncIterator[RecordingClient]:
    async with client(broker, context_for(pki, pki.client(name)), protocol=protocol, **kwargs) as c:
        yield c


async def collect_until(c: aiomqtt.Client, sentinel: str, timeout: float = T) -> list[aiomqtt.Message]:
    """Every message ``c`` receives up to and including the first on topic ``sentinel``."""
    received: list[aiomqtt.Message] = []
    async with asyncio.timeout(timeout):
        async for message in c.messages:
            received.append(message)
            if message.topic.value == sentinel:
                return received
    raise AssertionError("the message stream ended before the sentinel")  # pragma: no cover


async def assert_refused(broker: MosquittoBroker, context: ssl.SSLContext | None, *,
                         error: str = "Operation timed out") -> float:
    """aiomqtt never gets in, failing with ``error`` (by default: no CONNACK within its
    timeout, how a connection the broker ends during TLS shows); returns how long it took."""
    started = time.monotonic()
    with pytest.raises(aiomqtt.MqttError) as refused:
        async with client(broker, context, timeout=REFUSAL_TIMEOUT):
            pass
    assert error in str(refused.value)
    return time.monotonic() - started


async def tls_alert(broker: MosquittoBroker, context: ssl.SSLContext) -> ssl.SSLError:
    """Open a raw TLS connection with ``context`` and return the TLS error it ends with.

    With TLS 1.3 the broker judges the client's certificate after the client has finished
    its side of the handshake, so its verdict comes as an alert on the first read. A
    connection the broker keeps open (it waits for CONNECT) fails the test.
    """
    try:
        async with asyncio.timeout(REFUSAL_TIMEOUT):
            reader, writer = await asyncio.open_connection(broker.host, broker.port, ssl=context,
                                                           server_hostname=broker.host)
            try:
                answer = await reader.read(1)
            finally:
                writer.close()
    except ssl.SSLError as err:
        return err
    except TimeoutError:
        raise AssertionError("the broker kept the TLS connection open: the client was let in") from None
    raise AssertionError(f"the broker closed the TLS connection ({answer!r}) without saying why")


def broker_log_has(broker: MosquittoBroker, text: str) -> bool:
    return text in broker.log_text()


# -- what is allowed ----------------------------------------------------------------------------

async def test_a_lane_publishes_every_lane_topic_under_its_prefix_and_the_centre_receives_them(
        broker: MosquittoBroker, pki: Pki) -> None:
    async with connected(broker, pki, CENTRE) as centre, connected(broker, pki, LANE_A) as lane:
        await centre.subscribe(f"{TOPIC_ROOT}/#", qos=1)
        for suffix in LANE_PUBLISHES:
            await lane.publish(topic(LANE_A, suffix), suffix.encode(), qos=1)
        assert [code.value for code in lane.puback_codes] == [0] * len(LANE_PUBLISHES)
        received = await collect_until(centre, topic(LANE_A, LANE_PUBLISHES[-1]))
    assert [(m.topic.value, m.payload) for m in received] == [
        (topic(LANE_A, suffix), suffix.encode()) for suffix in LANE_PUBLISHES]


async def test_a_lane_receives_every_centre_topic_addressed_to_it(broker: MosquittoBroker, pki: Pki) -> None:
    async with connected(broker, pki, CENTRE) as centre, connected(broker, pki, LANE_A) as lane:
        for suffix in LANE_SUBSCRIBES:
            codes = await lane.subscribe(topic(LANE_A, suffix), qos=1)
            assert [code.value for code in codes] == [1], suffix  # type: ignore[union-attr]
        for suffix in LANE_SUBSCRIBES:
            await centre.publish(topic(LANE_A, suffix), suffix.encode(), qos=1)
        received = await collect_until(lane, topic(LANE_A, LANE_SUBSCRIBES[-1]))
    assert [(m.topic.value, m.payload) for m in received] == [
        (topic(LANE_A, suffix), suffix.encode()) for suffix in LANE_SUBSCRIBES]


async def test_the_broker_knows_a_lane_by_its_certificate_not_by_the_username_it_claims(
        broker: MosquittoBroker, pki: Pki) -> None:
    async with connected(broker, pki, CENTRE) as centre, \
            connected(broker, pki, LANE_A, username=LANE_B, password="irrelevant") as lane:
        await centre.subscribe(f"{TOPIC_ROOT}/#", qos=1)
        await lane.publish(topic(LANE_B, "tx"), b"as B", qos=1)  # what the claimed name may do
        await lane.publish(topic(LANE_A, "tx"), b"as A", qos=1)  # what the certificate's name may do
        received = await collect_until(centre, topic(LANE_A, "tx"))
    assert [code.value for code in lane.puback_codes] == [NOT_AUTHORIZED, 0]
    assert [m.payload for m in received] == [b"as A"]
    assert f"u'{LANE_A}'" in broker.log_text()


# -- plaintext ------------------------------------------------------------------------------------

async def test_plaintext_mqtt_to_the_tls_port_is_refused(broker: MosquittoBroker) -> None:
    took = await assert_refused(broker, None)
    assert took < REFUSAL_TIMEOUT + 1
    assert broker_log_has(broker, "wrong version number")  # the broker saw MQTT where TLS belongs
    assert "New client connected" not in broker.log_text()


async def test_the_broker_has_no_plaintext_listener(broker: MosquittoBroker) -> None:
    opened = [line.rsplit("port ", 1)[1].rstrip(".") for line in broker.log_text().splitlines()
              if "listen socket on port" in line]
    assert opened == [str(broker.port)]  # one listener: the TLS one
    conf = broker.conf_path.read_text().splitlines()
    assert [line for line in conf if line.startswith("listener ")] == [f"listener {broker.port} 127.0.0.1"]
    assert {"require_certificate true", "use_identity_as_username true", "allow_anonymous false",
            "tls_version tlsv1.2"} <= set(conf)


@pytest.mark.parametrize("protocol", [V311, V5], ids=["mqtt311", "mqtt5"])
async def test_a_plaintext_listener_refuses_every_client_even_one_naming_a_lane(
        tmp_path: Path, pki: Pki, protocol: aiomqtt.ProtocolVersion) -> None:
    async with MosquittoBroker(tmp_path, pki, plain_listener=True) as broker:
        assert broker.plain_port is not None
        attempts: list[dict[str, Any]] = [{}, {"username": LANE_A}, {"username": LANE_A, "password": "guess"},
                                          {"username": CENTRE, "password": ""}]
        for credentials in attempts:
            with pytest.raises(MqttConnectError) as refused:
                async with client(broker, None, port=broker.plain_port, protocol=protocol, **credentials):
                    pass
            assert isinstance(refused.value.rc, ReasonCode)
            assert refused.value.rc.value == NOT_AUTHORIZED, credentials  # 3.1.1's CONNACK 5, as paho maps it
        # The broker writes its log line after it answered: wait for the fourth, briefly.
        for _ in range(100):
            if broker.log_text().count("disconnected, not authorised") >= 4:
                break
            await asyncio.sleep(0.02)
        assert broker.log_text().count("disconnected, not authorised") == 4


# -- certificates -------------------------------------------------------------------------------

async def test_a_client_without_a_certificate_is_refused(broker: MosquittoBroker, pki: Pki) -> None:
    no_certificate = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    no_certificate.load_verify_locations(pki.ca_cert)  # it trusts the broker; it has nothing to show
    await assert_refused(broker, no_certificate)
    alert = await tls_alert(broker, no_certificate)
    assert alert.reason == "TLSV13_ALERT_CERTIFICATE_REQUIRED"
    assert broker_log_has(broker, "peer did not return a certificate")
    assert "New client connected" not in broker.log_text()


async def test_a_certificate_from_another_ca_is_refused(broker: MosquittoBroker, pki: Pki) -> None:
    assert pki.foreign is not None and pki.foreign.name == LANE_A  # the right name, the wrong issuer
    foreign = context_for(pki, pki.foreign)
    await assert_refused(broker, foreign)
    alert = await tls_alert(broker, foreign)
    assert alert.reason == "TLSV1_ALERT_UNKNOWN_CA"
    assert broker_log_has(broker, "certificate verify failed")
    assert "New client connected" not in broker.log_text()


async def test_an_expired_certificate_is_refused(broker: MosquittoBroker, pki: Pki) -> None:
    assert pki.expired is not None and pki.expired.name == LANE_A
    expired = context_for(pki, pki.expired)
    await assert_refused(broker, expired)
    alert = await tls_alert(broker, expired)
    assert alert.reason == "SSLV3_ALERT_CERTIFICATE_EXPIRED"
    assert "New client connected" not in broker.log_text()
    # laned says so before it even tries:
    with pytest.raises(TlsConfigError, match="expired"):
        check_client_certificate(pki.expired.cert, identity=LANE_A, now=dt.datetime.now(dt.UTC))


async def test_laned_refuses_a_broker_whose_certificate_its_ca_did_not_issue(
        broker: MosquittoBroker, pki: Pki) -> None:
    """The other way round: laned trusts only the centre's CA, not the system's."""
    trusting_someone_else = context_for(pki, pki.client(LANE_A), trust=pki.foreign_ca_cert)
    took = await assert_refused(broker, trusting_someone_else, error="CERTIFICATE_VERIFY_FAILED")
    assert took < REFUSAL_TIMEOUT / 2  # refused by laned's side of the handshake, at once
    refusal = await tls_alert(broker, trusting_someone_else)
    assert isinstance(refusal, ssl.SSLCertVerificationError)
    assert refusal.reason == "CERTIFICATE_VERIFY_FAILED"


# -- the ACL --------------------------------------------------------------------------------------

FORGED = [  # what lane A must not publish: lane B's topics, and any centre->lane topic
    topic(LANE_B, "tx"),
    topic(LANE_B, "state"),
    topic(LANE_B, "cmd"),
    topic(LANE_A, "cmd"),  # a command to itself, as if from the centre
    topic(LANE_A, "tx/ack"),
    topic(LANE_B, "list/manifest"),
    f"{TOPIC_ROOT}/{CENTRE}/tx",
    "elsewhere/entirely",
]


@pytest.mark.parametrize("protocol", [V311, V5], ids=["mqtt311", "mqtt5"])
async def test_lane_a_publishing_under_lane_b_prefix_never_reaches_anyone(
        broker: MosquittoBroker, pki: Pki, protocol: aiomqtt.ProtocolVersion) -> None:
    async with connected(broker, pki, CENTRE) as centre, connected(broker, pki, LANE_B) as lane_b, \
            connected(broker, pki, LANE_A, protocol=protocol) as lane_a:
        await centre.subscribe("#", qos=1)
        for suffix in LANE_SUBSCRIBES:
            await lane_b.subscribe(topic(LANE_B, suffix), qos=1)
        for forged in FORGED:
            await lane_a.publish(forged, b"forged", qos=1)
        sentinel = topic(LANE_A, "health")
        await lane_a.publish(sentinel, b"ok", qos=1)
        centre_got = await collect_until(centre, sentinel)
        # lane B: the centre's own message to it comes through, the forged ones before it did not
        await centre.publish(topic(LANE_B, "cmd"), b"from the centre", qos=1)
        lane_b_got = await collect_until(lane_b, topic(LANE_B, "cmd"))
    assert [(m.topic.value, m.payload) for m in centre_got] == [(sentinel, b"ok")]
    assert [m.payload for m in lane_b_got] == [b"from the centre"]
    codes = [code.value for code in lane_a.puback_codes]
    if protocol == V5:
        assert codes == [NOT_AUTHORIZED] * len(FORGED) + [0]
    else:  # MQTT 3.1.1 has no PUBACK reason: the broker drops the message and acknowledges it
        assert codes == [0] * (len(FORGED) + 1)


async def test_lane_a_subscribing_to_everything_receives_only_its_own_topics(
        broker: MosquittoBroker, pki: Pki) -> None:
    async with connected(broker, pki, CENTRE) as centre, connected(broker, pki, LANE_B) as lane_b:
        # retained before lane A arrives: lane B's state, a command for lane B
        await lane_b.publish(topic(LANE_B, "state"), b"B state", qos=1, retain=True)
        await centre.publish(topic(LANE_B, "cmd"), b"B retained cmd", qos=1, retain=True)
        async with connected(broker, pki, LANE_A) as lane_a:
            sentinel = topic(LANE_A, "cmd")
            await lane_a.subscribe(sentinel, qos=1)
            suback = await lane_a.subscribe("#", qos=1)
            await lane_a.subscribe(f"{TOPIC_ROOT}/+/cmd", qos=1)
            # live traffic of lane B, both directions
            await lane_b.publish(topic(LANE_B, "tx"), b"B tx", qos=1)
            await centre.publish(topic(LANE_B, "tx/ack"), b"B ack", qos=1)
            await centre.publish(sentinel, b"for A", qos=1)
            received = await collect_until(lane_a, sentinel)
    # Mosquitto's acl_file grants the subscription and filters every delivery by read access.
    assert [code.value for code in suback] in ([1], [NOT_AUTHORIZED])  # type: ignore[union-attr]
    assert {m.topic.value for m in received} == {sentinel}, [(m.topic.value, m.payload) for m in received]
    assert all(m.payload == b"for A" for m in received)


async def test_lane_a_subscribing_to_lane_b_commands_receives_nothing(broker: MosquittoBroker, pki: Pki) -> None:
    async with connected(broker, pki, CENTRE) as centre:
        await centre.publish(topic(LANE_B, "cmd"), b"retained for B", qos=1, retain=True)
        async with connected(broker, pki, LANE_A) as lane_a:
            for suffix in LANE_SUBSCRIBES:
                await lane_a.subscribe(topic(LANE_B, suffix), qos=1)
            sentinel = topic(LANE_A, "cmd")
            await lane_a.subscribe(sentinel, qos=1)
            for suffix in LANE_SUBSCRIBES:
                await centre.publish(topic(LANE_B, suffix), b"for B", qos=1)
            await centre.publish(sentinel, b"for A", qos=1)
            received = await collect_until(lane_a, sentinel)
    assert [(m.topic.value, m.payload) for m in received] == [(sentinel, b"for A")]


# -- the broker fixture itself -------------------------------------------------------------------

async def test_the_broker_restarts_on_the_same_port_and_persists_what_a_clean_stop_saved(
        tmp_path: Path, pki: Pki) -> None:
    async with MosquittoBroker(tmp_path, pki, persistence=True) as broker:
        port = broker.port
        async with connected(broker, pki, LANE_A) as lane:
            await lane.publish(topic(LANE_A, "state"), b"open", qos=1, retain=True)
        await broker.stop()  # SIGTERM: the database is written
        assert not broker.running
        assert any(broker.data_path.iterdir())
        await broker.start()
        assert broker.port == port
        async with connected(broker, pki, CENTRE) as centre:
            await centre.subscribe(topic(LANE_A, "state"), qos=1)
            retained = await collect_until(centre, topic(LANE_A, "state"))
            assert [m.payload for m in retained] == [b"open"]
            await centre.publish(topic(LANE_A, "state"), b"closed", qos=1, retain=True)
        await broker.kill()  # SIGKILL: nothing since the last save survives
        await broker.start()
        async with connected(broker, pki, CENTRE) as centre:
            await centre.subscribe(topic(LANE_A, "state"), qos=1)
            retained = await collect_until(centre, topic(LANE_A, "state"))
            assert [m.payload for m in retained] == [b"open"]
