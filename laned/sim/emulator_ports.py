"""Byte transports of the emulated devices: the device end of a pseudo-terminal, or a TCP
listener on 127.0.0.1. Both can *vanish* and come back, as a USB adapter that is pulled
out and plugged in again, or an RSU that reboots.

A pty port holds the master side and keeps one descriptor of the slave side open itself:
without it, the master reads ``EIO`` every time laned closes its end (between reconnects),
which would spin the reader. Vanishing closes both, so laned's open slave descriptor sees
end-of-file on read and ``EIO`` on write — what a pulled adapter looks like. The
replacement pty is allocated at the moment of vanishing (and published only on
:meth:`PtyPort.restore`), so it gets a different ``/dev/pts/N`` — as a re-plugged adapter
comes back as ``ttyUSB1`` — and laned must be told the new path (``device_added(path)``).

Writes are buffered here (``add_writer`` while anything is left) because a lane that
stops reading fills the pty's few kilobytes; :meth:`drain` waits until the last byte
left the buffer and returns that moment (``time.perf_counter()``), which the turnaround
measurements use.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import tty
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

READ_CHUNK = 4096
MAX_BUFFER = 1 << 20  # a lane that never reads must not make the emulator grow without bound

DataCallback = Callable[[bytes, float], None]  # bytes, perf_counter() of their arrival


class PtyPort:
    kind = "pty"

    def __init__(self, on_data: DataCallback, on_connection: Callable[[], None], name: str = "rsu-emulator") -> None:
        self._on_data = on_data
        self._on_connection = on_connection  # a fresh byte stream begins (new pty)
        self.name = name
        self._loop = asyncio.get_running_loop()
        self._master: int | None = None
        self._slave: int | None = None
        self._reserved: tuple[int, int] | None = None
        self._buf = bytearray()
        self._drained = asyncio.Event()
        self._drained.set()
        self._last_write = 0.0
        self.path: str | None = None

    @property
    def address(self) -> str:
        return self.path or "(vanished)"

    @property
    def up(self) -> bool:
        return self._master is not None

    def open(self) -> str:
        self._activate(self._allocate())
        assert self.path is not None
        return self.path

    @staticmethod
    def _allocate() -> tuple[int, int]:
        master, slave = os.openpty()
        tty.setraw(slave)  # no echo, no CR/LF translation: bytes as on a serial line
        os.set_blocking(master, False)
        return master, slave

    def _activate(self, pair: tuple[int, int]) -> None:
        self._master, self._slave = pair
        self.path = os.ttyname(self._slave)
        self._loop.add_reader(self._master, self._readable)
        self._on_connection()

    def _readable(self) -> None:
        if self._master is None:
            return
        try:
            data = os.read(self._master, READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:  # cannot happen while we hold the slave; never spin on it
            log.warning("%s: reading pty %s failed: %s; port closed", self.name, self.path, err)
            self._close_fds()
            return
        if data:
            self._on_data(data, time.perf_counter())

    def write(self, data: bytes) -> bool:
        if self._master is None:
            return False
        if len(self._buf) + len(data) > MAX_BUFFER:
            log.warning("%s: the lane is not reading %s; %d bytes dropped", self.name, self.path, len(data))
            return False
        if not self._buf:
            try:
                n = os.write(self._master, data)
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError as err:
                log.warning("%s: writing pty %s failed: %s", self.name, self.path, err)
                return False
            if n == len(data):
                self._last_write = time.perf_counter()
                return True
            data = data[n:]
            self._loop.add_writer(self._master, self._writable)
            self._drained.clear()
        self._buf += data
        return True

    def _writable(self) -> None:
        if self._master is None:
            return
        try:
            n = os.write(self._master, self._buf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:
            log.warning("%s: writing pty %s failed: %s", self.name, self.path, err)
            n = len(self._buf)
        del self._buf[:n]
        if not self._buf:
            self._loop.remove_writer(self._master)
            self._last_write = time.perf_counter()
            self._drained.set()

    async def drain(self) -> float:
        await self._drained.wait()
        return self._last_write

    def _close_fds(self) -> None:
        if self._master is not None:
            self._loop.remove_reader(self._master)
            self._loop.remove_writer(self._master)
            os.close(self._master)
            self._master = None
        if self._slave is not None:
            os.close(self._slave)
            self._slave = None
        self._buf.clear()
        self._drained.set()

    async def vanish(self) -> None:
        """Tear the pty down; reserve the one that will replace it (a new path)."""
        if self._reserved is None:
            self._reserved = self._allocate()
        self._close_fds()

    async def restore(self) -> str:
        pair, self._reserved = self._reserved or self._allocate(), None
        self._activate(pair)
        assert self.path is not None
        return self.path

    async def close(self) -> None:
        self._close_fds()
        if self._reserved is not None:
            for fd in self._reserved:
                os.close(fd)
            self._reserved = None


class TcpPort:
    """The RSU is the TCP server; one lane connection at a time (a newer one replaces it)."""

    kind = "tcp"

    def __init__(self, on_data: DataCallback, on_connection: Callable[[], None], host: str = "127.0.0.1",
                 port: int = 0, name: str = "rsu-emulator") -> None:
        self._on_data = on_data
        self._on_connection = on_connection
        self.host = host
        self.port = port
        self.name = name
        self._server: asyncio.Server | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._handlers: set[asyncio.Task[Any]] = set()
        self.connections = 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def up(self) -> bool:
        return self._server is not None

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def open(self) -> str:
        self._server = await asyncio.start_server(self._client, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.address

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._writer is not None:
            log.info("%s: a new lane connection replaces the previous one", self.name)
            self._drop_client()
        self._writer = writer
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        self.connections += 1
        self._on_connection()
        try:
            while True:
                data = await reader.read(READ_CHUNK)
                if not data:
                    break
                self._on_data(data, time.perf_counter())
        except (ConnectionError, OSError):
            pass
        finally:
            if self._writer is writer:
                self._writer = None
            writer.close()

    def write(self, data: bytes) -> bool:
        w = self._writer
        if w is None or w.is_closing():
            return False  # nobody connected: the RSU talks into the void
        w.write(data)
        return True

    async def drain(self) -> float:
        w = self._writer
        if w is not None and not w.is_closing():
            try:
                await w.drain()
            except (ConnectionError, OSError):
                pass
        return time.perf_counter()

    def _drop_client(self) -> None:
        # Closing the transport ends the handler's read with EOF. Cancelling the handler
        # task instead makes asyncio (3.11) log its CancelledError as an error.
        w, self._writer = self._writer, None
        if w is not None:
            w.close()

    async def vanish(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        self._drop_client()
        if self._handlers:  # let them see EOF and end, so nothing is left to cancel
            await asyncio.wait(set(self._handlers), timeout=1.0)
        if server is not None:
            await server.wait_closed()

    async def restore(self) -> str:
        return await self.open()

    async def close(self) -> None:
        await self.vanish()
