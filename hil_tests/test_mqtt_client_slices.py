"""The uplink's MQTT client reads the broker in slices (laned.uplink.mqtt_client), over a real
Mosquitto with TLS: a burst of hundreds of PUBACKs is handled a few dozen packets per turn
of the event loop, and none is lost on the way — also the ones TLS has already decrypted,
which the socket never signals again."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from mosquitto_broker import TOPIC_ROOT, MosquittoBroker
from mqtt_pki import CENTRE, Pki, make_pki
from laned.uplink.mqtt_client import READ_SLICE, SlicedClient
from laned.uplink.tls import client_tls_context

pytestmark = [pytest.mark.hil, pytest.mark.timeout(60)]

LANE = "G0001-01"
BURST = 600


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki", lanes=(LANE,))


class CountingClient(SlicedClient):
    """Records how many packets each reader callback handled."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.per_callback: list[int] = []
        self._handled = 0
        paho = self._client
        read = paho._packet_read

        def counted() -> Any:
            rc = read()
            if rc == 0:  # a whole packet handled
                self._handled += 1
            return rc

        paho._packet_read = counted  # type: ignore[method-assign]

    def _read_slice(self, client: Any, sock: Any) -> None:
        self._handled = 0
        super()._read_slice(client, sock)
        self.per_callback.append(self._handled)


def tls(pki: Pki, who: str) -> Any:
    creds = pki.client(who)
    return client_tls_context(pki.ca_cert, creds.cert, creds.key)


async def test_a_burst_of_pubacks_is_read_a_slice_per_turn_and_every_message_arrives(
        broker: MosquittoBroker, pki: Pki, wait_until: Any) -> None:
    received: list[bytes] = []
    topic = f"{TOPIC_ROOT}/{LANE}/tx"
    async with aiomqtt.Client("127.0.0.1", broker.port, identifier="centre-test", tls_context=tls(pki, CENTRE),
                              protocol=aiomqtt.ProtocolVersion.V5) as centre:
        await centre.subscribe(topic, qos=1)

        async def collect() -> None:
            async for message in centre.messages:
                received.append(bytes(message.payload))  # type: ignore[arg-type]

        collector = asyncio.create_task(collect())
        lane = CountingClient("127.0.0.1", broker.port, identifier=f"laned-{LANE}", tls_context=tls(pki, LANE),
                              protocol=aiomqtt.ProtocolVersion.V5, max_inflight_messages=0)
        async with lane:
            paho = lane._client
            for n in range(BURST):  # handed to paho at once, as the outbox does: no await per PUBACK
                assert paho.publish(topic, b'{"n":%d}' % n, qos=1).rc == 0
            await wait_until(lambda: not paho._out_messages, timeout=30, what="every PUBACK read")
            await wait_until(lambda: len(received) >= BURST, timeout=30, what="every message at the subscriber")
        collector.cancel()
    assert sorted(received) == sorted(b'{"n":%d}' % n for n in range(BURST))
    handled = [n for n in lane.per_callback if n]
    assert sum(handled) >= BURST  # every PUBACK went through the sliced reader (and the CONNACK-era packets)
    assert max(handled) <= READ_SLICE
    assert len(handled) >= BURST // READ_SLICE
