"""aiomqtt's client with a socket reader that gives the event loop back between slices.

aiomqtt reads the broker's socket in one loop callback until nothing is left: paho's
``loop_read`` handles as many packets as there are messages in flight, and aiomqtt calls
it again while TLS holds decrypted bytes. With a full outbox window that is a burst of
hundreds of PUBACKs (and the centre's acks) in one callback: 5–18 ms in a backlog drain,
during which no RSU frame is answered. :class:`SlicedClient` reads at most
:data:`READ_SLICE` packets per callback and, if TLS still holds bytes the socket will not
signal again, schedules the rest for the next turn of the loop.

This leans on paho-mqtt 2.x internals (``_packet_read``, ``_loop_rc_handle``, ``_sock``)
and aiomqtt 2.x's ``_on_socket_open``: pyproject pins both to their major version, and
the HIL tests run every publish and receive of the uplink through this reader.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
from paho.mqtt.client import MQTT_ERR_AGAIN

# Packets handled per turn of the loop: a PUBACK costs ~0.03 ms, a centre ack ~0.1 ms.
READ_SLICE = 32


class SlicedClient(aiomqtt.Client):
    """:class:`aiomqtt.Client` whose socket reader handles at most :data:`READ_SLICE`
    packets per loop callback (see the module docstring)."""

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
