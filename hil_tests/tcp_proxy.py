"""An unkind network between the lane and its broker: a TCP proxy that can cut, slow, slice and swallow.

``TcpProxy(target_port)`` listens on a free port of 127.0.0.1 and forwards every connection
to ``127.0.0.1:target_port``. While it runs, a test turns the network bad and good again::

    async with TcpProxy(broker.port) as net:       # the lane connects to net.port
        net.reset()                 # every connection through it dies with a TCP RST (SO_LINGER 0)
        net.delay(0.3)              # 300 ms more latency each way (order and throughput kept)
        net.slice(7)                # bytes forwarded in pieces of 7, each sent on its own
        net.blackhole()             # accepted, read and swallowed: nothing forwarded, nothing closed
        net.pass_()                 # a good network again

* **reset** is a pulled cable seen from both ends at once: no FIN, no MQTT DISCONNECT; the
  broker publishes the lane's last will and the lane's next read fails.
* **delay** queues each chunk with a due time and writes it when due, so latency is added
  without capping throughput (a sleep per chunk would do both).
* **slice** splits every chunk (TLS records, MQTT packets) into small writes with
  TCP_NODELAY, drained one by one: a parser that assumes a whole packet per read breaks here.
* **blackhole** is a dead route that nobody reports: connections stay open, what is sent
  is read and dropped, nothing comes back. Only a keep-alive (MQTT PINGREQ without PINGRESP)
  finds it. New connections are accepted and swallowed too (a TLS handshake hangs).

The mode applies to connections already open as well as to new ones; :attr:`connections`
counts the connections accepted, :attr:`open_connections` those still open.
"""

from __future__ import annotations

import asyncio
import enum
import socket
import struct
from dataclasses import dataclass, field
from types import TracebackType

from mosquitto_broker import free_port

READ_SIZE = 65536


class Mode(enum.StrEnum):
    PASS = "pass"
    DELAY = "delay"
    SLICE = "slice"
    BLACKHOLE = "blackhole"


@dataclass
class _Connection:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST: SO_LINGER on with a 0 s timeout, then close without flushing."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass  # already closed
    writer.transport.abort()


class TcpProxy:
    """See the module docstring."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target_host, self.target_port = target_host, target_port
        self.host = "127.0.0.1"
        self.port = free_port()
        self.mode = Mode.PASS
        self.delay_s = 0.0
        self.slice_bytes = 0
        self.connections = 0
        self.resets = 0
        self.swallowed_bytes = 0
        self._server: asyncio.Server | None = None
        self._conns: list[_Connection] = []

    # -- the network's condition ----------------------------------------------------------------
    def pass_(self) -> None:
        self.mode, self.delay_s, self.slice_bytes = Mode.PASS, 0.0, 0

    def delay(self, seconds: float) -> None:
        self.mode, self.delay_s = Mode.DELAY, seconds

    def slice(self, size: int) -> None:
        if size < 1:
            raise ValueError(f"slice size {size}, expected 1 byte or more")
        self.mode, self.slice_bytes = Mode.SLICE, size

    def blackhole(self) -> None:
        self.mode = Mode.BLACKHOLE

    def reset(self) -> None:
        """Every open connection dies with an RST on both sides; the mode is unchanged."""
        for conn in list(self._conns):
            self._drop(conn, rst=True)
            self.resets += 1

    @property
    def open_connections(self) -> int:
        return len(self._conns)

    # -- lifetime -------------------------------------------------------------------------------
    async def __aenter__(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._server is not None:
            self._server.close()
        tasks = [t for conn in self._conns for t in conn.tasks]
        self.reset()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # -- forwarding -----------------------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        _nodelay(writer)
        if self.mode is Mode.BLACKHOLE:
            conn = _Connection(writer, None)
            self._conns.append(conn)
            conn.tasks.append(asyncio.create_task(self._swallow(reader, conn)))
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            _rst(writer)  # nobody behind the proxy: the lane sees its connection refused at once
            return
        _nodelay(up_writer)
        conn = _Connection(writer, up_writer)
        self._conns.append(conn)
        conn.tasks += [asyncio.create_task(self._pipe(reader, up_writer, conn)),
                       asyncio.create_task(self._pipe(up_reader, writer, conn))]

    async def _swallow(self, reader: asyncio.StreamReader, conn: _Connection) -> None:
        try:
            while data := await reader.read(READ_SIZE):
                self.swallowed_bytes += len(data)
        except OSError:
            pass
        self._drop(conn, rst=False)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, conn: _Connection) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sender = asyncio.create_task(self._send_due(queue, dst))
        try:
            while data := await src.read(READ_SIZE):
                if self.mode is Mode.BLACKHOLE:
                    self.swallowed_bytes += len(data)
                    continue
                due = loop.time() + (self.delay_s if self.mode is Mode.DELAY else 0.0)
                queue.put_nowait((due, data))
            await queue.join()  # what was read before the peer's FIN still goes out
        except OSError:
            pass
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            self._drop(conn, rst=False)

    async def _send_due(self, queue: asyncio.Queue[tuple[float, bytes]], dst: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due, data = await queue.get()
            try:
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)  # the added latency of this chunk
                size = self.slice_bytes if self.mode is Mode.SLICE else len(data)
                for i in range(0, len(data), size):
                    dst.write(data[i:i + size])
                    await dst.drain()
            except OSError:
                return
            finally:
                queue.task_done()

    def _drop(self, conn: _Connection, *, rst: bool) -> None:
        if conn not in self._conns:
            return
        self._conns.remove(conn)
        for w in (conn.client, conn.upstream):
            if w is None:
                continue
            if rst:
                _rst(w)
            else:
                w.close()


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
