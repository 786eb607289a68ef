"""aiomqtt's client with a socket reader that gives the event loop back between slices.

aiomqtt reads the broker's socket in one loop callback until nothing is left: paho's
``loop_read`` handles as many packets as there are messages in flight, and aiomqtt calls
it again while TLS holds decrypted bytes. With a full outbox window that is a burst of
hundreds of PUBACKs (and the centre's acks) in one callback: 5–18 ms in a backlog drain,
during which no RSU frame is answered. :class:`SlicedClient` reads at most
:data:`READ_SLICE` packets per callback and, if TLS still holds bytes the socket will not
signal again, schedules the rest for the next turn of the loop.

It also reads each PUBACK's MQTT 5 reason code, which aiomqtt drops: its ``publish``
returns when the PUBACK comes, whatever the broker said, and paho hands the code only to
``on_publish``. A broker whose ACL refuses a topic answers 0x87 (Not authorized) and
discards the message; :attr:`SlicedClient.puback_watcher` hears of it, with the topic.

This leans on paho-mqtt 2.x internals (``_packet_read``, ``_loop_rc_handle``, ``_sock``,
``_out_messages``: the message is still there while ``on_publish`` runs) and aiomqtt
2.x's ``_on_socket_open`` and ``_on_publish``: pyproject pins both to their major version,
and the HIL tests run every publish and receive of the uplink through this client.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

import aiomqtt
import paho.mqtt.client as mqtt
from paho.mqtt.client import MQTT_ERR_AGAIN
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

# Packets handled per turn of the loop: a PUBACK costs ~0.03 ms, a centre ack ~0.1 ms.
READ_SLICE = 32


FAILURE = 0x80  # MQTT 5 reason codes from 0x80 on are failures (MQTT 5.0, section 2.4)


class PubackWatcher(Protocol):
    """Who hears the broker's PUBACK reason codes (laned.uplink.link.PublishRefusals)."""

    def watching(self) -> bool:
        """Whether accepted publishes matter now; refusals are always reported."""

    def answer(self, topic: str, code: int, reason: str) -> None:
        """The broker answered a publish on ``topic`` with reason ``code`` (``reason``: its name)."""


class SlicedClient(aiomqtt.Client):
    """:class:`aiomqtt.Client` whose socket reader handles at most :data:`READ_SLICE`
    packets per loop callback, and whose PUBACKs' reason codes go to :attr:`puback_watcher`
    (see the module docstring)."""

    puback_watcher: PubackWatcher | None = None

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int,  # noqa: ANN401
                    reason_code: ReasonCode, properties: Properties) -> None:
        # paho calls this on the event loop (from the socket reader above), for a QoS 1
        # PUBACK (and for a QoS 0 message once written, with reason Success). aiomqtt's
        # own handling first: the publish waiting for this PUBACK returns, whatever follows.
        super()._on_publish(client, userdata, mid, reason_code, properties)
        watcher = self.puback_watcher
        if watcher is not None:
            code = getattr(reason_code, "value", 0)
            if isinstance(code, int) and (code >= FAILURE or watcher.watching()):
                message = client._out_messages.get(mid)  # noqa: SLF001 - paho pops it after this callback
                if message is not None:
                    watcher.answer(message.topic, code, str(reason_code))

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:  # noqa: ANN401
        super()._on_socket_open(client, userdata, sock)
        # aiomqtt installs its reader through call_soon_threadsafe (paho may call this from
        # the connect's executor thread); queued after it, this one replaces it.
        self._loop.call_soon_threadsafe(self._loop.add_reader, sock.fileno(), self._read_slice, client, sock)

    def _read_slice(self, client: mqtt.Client, sock: Any) -> None:  # noqa: ANN401
        try:
            for _ in range(READ_SLICE):
                if client._sock is not sock:  # noqa: SLF001 - closed (or replaced) meanwhile
                    return
                rc = client._packet_read()  # noqa: SLF001 - one packet, or the part that has arrived
                if rc == MQTT_ERR_AGAIN:
                    return  # all read: the socket signals when more comes
                if rc > 0:
                    client._loop_rc_handle(rc)  # noqa: SLF001 - paho's own handling of a lost connection
                    return
            pending = getattr(sock, "pending", None)
            if pending is not None and pending() > 0:
                # Bytes TLS has decrypted already: the socket will not signal them again.
                asyncio.get_running_loop().call_soon(self._read_slice, client, sock)
        except Exception as exc:  # noqa: BLE001 - as aiomqtt's reader: a read error ends the connection
            if not self._disconnected.done():
                self._disconnected.set_exception(exc)
