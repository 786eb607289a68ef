"""The link to the RSU: serial port or TCP, framing, liveness, reconnect, hotplug.

``RsuLink`` opens the RSU (a serial port, 8N1 at 9600–115200 baud, or a TCP connection
where the RSU is the server), feeds every byte it reads into the profile's streaming
:class:`~laned.protocol.codec.FrameDecoder` and delivers each decoded frame as an
:class:`RsuFrame` (message, RSCTL/SEQ, monotonic arrival time, wire bytes) through
:meth:`RsuLink.frames`. It answers nothing by itself: the lane machine decides, the
executor calls :meth:`RsuLink.send_nowait`, which encodes and writes at once (no await —
the RSU gives up on an OBU after ~1.1 s and laned's share must stay a few ms).

RSCTL (RSU_PROTOCOL.md, "classic" envelope, document (3)): an answer carries the RSU
frame's RSCTL with its nibbles swapped (:func:`~laned.protocol.rsctl.reply_rsctl`);
frames the lane starts use the free-running ``8X`` of
:class:`~laned.protocol.rsctl.LaneSequence`. ``gb2019tcp`` has a SEQ byte instead (RSU
``0X``, lane ``X0``): answers swap the nibbles the same way, lane-started frames count
``00, 10, … F0``. ``jinyi`` has neither.

Serial layer — why not pyserial-asyncio(-fast)
----------------------------------------------
pyserial-asyncio-fast 0.16 has an open bug (pyserial-asyncio issue 77, the fix proposed
in its PR 36): after a *partial* write its transport can leave an empty write buffer
registered with the loop, and an ``AssertionError`` is then logged on every loop turn.
The RSU link writes short frames but a burst (or a slow adapter) does produce short
writes, and a log flooding on every turn of the loop that also runs the barrier
interlock is not acceptable. So this module uses pyserial only to *open and configure*
the port (``serial.Serial(path, baud, timeout=0, write_timeout=0, exclusive=True)``:
termios 8N1 raw, flock against a second opener) and drives the file descriptor itself
with ``loop.add_reader`` / ``loop.add_writer``. Its own write buffer handles short writes
and ``BlockingIOError`` and removes the writer as soon as the buffer is empty
(:class:`_SerialTransport`). TCP uses ``asyncio.open_connection``.

Liveness: ``last_seen`` is the arrival time of the latest frame of any kind — B0, answers,
and heartbeats (as the profile defines them,
:meth:`~laned.protocol.profiles.base.Profile.is_heartbeat`: B2 with ErrorCode ``0x80`` or
OBU id ``00000000``/``FFFFFFFF``; B1 in gb2019tcp). An RSU that stays silent longer than
``silence_timeout`` (it should heartbeat every 3–60 s) is treated as lost and reopened.
Port errors, EOF, ``EIO`` (a pty whose master closed, an unplugged adapter) close the
port, report ``LinkStatus(connected=False, reason)`` and reconnect with capped
exponential backoff. Bad frames are dropped, counted by reason in :attr:`RsuLink.drops`
and logged with the device name — never fatal.

Hotplug (``laned/drivers/hotplug.py`` emits the events): :meth:`RsuLink.device_removed`
closes at once; :meth:`RsuLink.device_added` re-opens at once, possibly on a new path.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import serial

from laned.drivers.errors import DeviceOffline
from laned.drivers.lane_io import DeviceHealth
from laned.protocol.codec import Decoded, FrameDecoder, encode_message
from laned.protocol.errors import ProtocolError
from laned.protocol.messages import Message
from laned.protocol.profiles import Profile, get_profile
from laned.protocol.rsctl import LaneSequence, reply_rsctl
from laned.drivers.tasks import cancel_and_wait

log = logging.getLogger(__name__)

BAUD_RATES = (9600, 19200, 38400, 57600, 115200)
READ_CHUNK = 65536
# A device that stops reading must not make laned buffer without bound.
MAX_WRITE_BUFFER = 1 << 20
# Frames nobody consumes (the lane stalled or not started): keep the newest, count the rest.
# An RSU sends a few frames a second at most; this is minutes of them.
MAX_QUEUED_FRAMES = 4096
# A noisy line can break hundreds of frames a minute: log a drop reason at most this often
# (the counters in ``drops`` keep the exact numbers).
# A port that stays unopenable is reported again this often (with the attempt count), so
# the log says it is still down without one line per attempt.
OPEN_FAILURE_LOG_INTERVAL_S = 30.0
# Reconnect backoff: from the first to the cap. The cap is what an outage costs on top of
# its own length: the lane must be back in service within 2 s of the RSU answering.
RECONNECT_BACKOFF_S = (0.2, 1.0)
DROP_LOG_INTERVAL_S = 10.0
# Bytes of a dropped frame shown in the log: envelope, TYPE and the OBU id. Never more, as
# B4 carries the card number and the plate (STYLE.md: card numbers and plates masked).
DROP_LOG_BYTES = 10
TCP_CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class RsuFrame:
    """One frame from the RSU as the link received it."""

    message: Message
    rsctl: int | None
    seq: int | None
    arrived_at: float  # time.monotonic() at the read that completed the frame
    wire: bytes
    heartbeat: bool = False  # as the profile defines it (Profile.is_heartbeat)


@dataclass(frozen=True, slots=True)
class LinkStatus:
    connected: bool
    reason: str


@dataclass(frozen=True, slots=True)
class FrameDropped:
    """A damaged frame the link dropped (bad check byte, escape, layout …)."""

    reason: str


LinkItem = RsuFrame | FrameDropped | LinkStatus


_END = object()


class _SerialTransport:
    """A serial port opened by pyserial, driven with add_reader/add_writer."""

    def __init__(self, link: RsuLink, path: str, baud: int) -> None:
        self._link = link
        self._loop = asyncio.get_running_loop()
        self._ser = serial.Serial(path, baud, bytesize=serial.EIGHTBITS, parity=serial.PARITY_NONE,
                                  stopbits=serial.STOPBITS_ONE, timeout=0, write_timeout=0, exclusive=True)
        self._fd: int = self._ser.fileno()
        os.set_blocking(self._fd, False)
        self._buf = bytearray()
        self._writing = False
        self._closed = False
        self._drained = asyncio.Event()
        self._drained.set()
        self.description = path
        self._loop.add_reader(self._fd, self._on_readable)

    @property
    def fd(self) -> int:
        return self._fd

    @property
    def buffered(self) -> int:
        return len(self._buf)

    @property
    def writing(self) -> bool:
        """True while a writer callback is registered (the buffer is not empty)."""
        return self._writing

    def _on_readable(self) -> None:
        if self._closed:
            return
        try:
            data = os.read(self._fd, READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:
            self._link._lost(self, f"read failed: {_oserror(err)}")
            return
        if not data:
            self._link._lost(self, "end of file on the port")
            return
        try:
            self._link._on_data(data)
        except Exception as err:  # a bug: the loop would only log it; the link's owner must die of it
            self._link._fail(err)

    def write(self, data: bytes) -> None:
        if self._buf:
            self._buf += data
            return
        try:
            n = os.write(self._fd, data)
        except (BlockingIOError, InterruptedError):
            n = 0
            self._link.stats["write_blocked"] += 1
        except OSError as err:
            reason = f"write failed: {_oserror(err)}"
            self._link._lost(self, reason)
            raise DeviceOffline(self._link.name, "write", reason) from err
        if n < len(data):
            if n:
                self._link.stats["short_write"] += 1
            self._buf += data[n:]
            self._drained.clear()
            self._loop.add_writer(self._fd, self._on_writable)
            self._writing = True

    def _on_writable(self) -> None:
        if self._closed:
            return
        try:
            n = os.write(self._fd, self._buf)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as err:
            self._link._lost(self, f"write failed: {_oserror(err)}")
            return
        if n < len(self._buf):
            self._link.stats["short_write"] += 1
        del self._buf[:n]
        if not self._buf:
            self._loop.remove_writer(self._fd)
            self._writing = False
            self._drained.set()

    async def drain(self) -> None:
        await self._drained.wait()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._fd)
        if self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False
        if self._buf:
            log.warning("%s: %d unsent bytes dropped at close", self._link.name, len(self._buf))
            self._buf.clear()
        self._drained.set()
        try:
            self._ser.close()
        except Exception as err:  # a vanished device may fail its last tcflush/close
            log.debug("%s: closing %s: %s", self._link.name, self.description, err)


class _TcpTransport:
    """A TCP connection to the RSU (the RSU is the server)."""

    def __init__(self, link: RsuLink, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 description: str) -> None:
        self._link = link
        self._reader = reader
        self._writer = writer
        self._closed = False
        self.description = description
        self._task = asyncio.get_running_loop().create_task(self._read_loop(), name=f"{link.name}-tcp-read")

    @classmethod
    async def open(cls, link: RsuLink, host: str, port: int) -> _TcpTransport:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), TCP_CONNECT_TIMEOUT_S)
        return cls(link, reader, writer, f"tcp://{host}:{port}")

    @property
    def buffered(self) -> int:
        t = self._writer.transport
        return 0 if t is None or t.is_closing() else t.get_write_buffer_size()

    @property
    def writing(self) -> bool:
        return self.buffered > 0

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self._reader.read(READ_CHUNK)
                if not data:
                    self._link._lost(self, "connection closed by the RSU")
                    return
                self._link._on_data(data)
        except asyncio.CancelledError:
            raise
        except OSError as err:
            self._link._lost(self, f"read failed: {_oserror(err)}")
        except Exception as err:  # a bug: nobody awaits this task, so the link's supervisor re-raises it
            self._link._fail(err)

    def write(self, data: bytes) -> None:
        if self._writer.is_closing():
            reason = "connection closing"
            self._link._lost(self, reason)
            raise DeviceOffline(self._link.name, "write", reason)
        self._writer.write(data)

    async def drain(self) -> None:
        try:
            await self._writer.drain()
        except OSError as err:
            self._link._lost(self, f"write failed: {_oserror(err)}")

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._task is not asyncio.current_task():
            self._task.cancel()
        self._writer.close()


def _oserror(err: OSError) -> str:
    if err.errno is not None:
        return f"{errno.errorcode.get(err.errno, err.errno)} {err.strerror or ''}".strip()
    return str(err) or type(err).__name__


class RsuLink:
    """The lane's link to one RSU. Use as ``async with RsuLink(...) as link``."""

    def __init__(self, profile: Profile | str, *, port: str | None = None, baud: int = 115200,
                 host: str | None = None, tcp_port: int | None = None, silence_timeout: float = 70.0,
                 backoff: tuple[float, float] = RECONNECT_BACKOFF_S, name: str = "rsu") -> None:
        self.profile = get_profile(profile) if isinstance(profile, str) else profile
        if (port is None) == (host is None):
            raise ValueError("RsuLink needs either a serial port or a TCP host (not both)")
        if host is not None and tcp_port is None:
            raise ValueError("RsuLink over TCP needs tcp_port")
        if port is not None and baud not in BAUD_RATES:
            raise ValueError(f"baud {baud} not supported; expected one of {', '.join(map(str, BAUD_RATES))}")
        if silence_timeout <= 0:
            raise ValueError("silence_timeout must be positive")
        lo, hi = backoff
        if not 0 < lo <= hi:
            raise ValueError("backoff must be (initial, cap) with 0 < initial <= cap")
        self.port = port
        self.baud = baud
        self.host = host
        self.tcp_port = tcp_port
        self.silence_timeout = float(silence_timeout)
        self.backoff = (float(lo), float(hi))
        self.name = name

        self.drops: Counter[str] = Counter()  # dropped frames by reason, over all connections
        self.stats: Counter[str] = Counter()  # connects, disconnects, frames, heartbeats, short writes…
        self.last_seen: float | None = None

        self._transport: _SerialTransport | _TcpTransport | None = None
        self._decoder = FrameDecoder(self.profile)
        self._lane_seq = LaneSequence()
        self._gb_seq = 0
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._drop_logged: dict[str, tuple[float, int]] = {}  # reason → (last logged, suppressed since)
        self._callbacks: list[Callable[[LinkStatus], None]] = []
        self._drop_callbacks: list[Callable[[str], None]] = []
        self._status = LinkStatus(False, "not started")
        self._connected_event = asyncio.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._removed = False
        self._connected_at = 0.0
        self._delay = self.backoff[0]
        self._next_attempt = 0.0
        self._seen_on_this_connection = False
        self._open_failures = 0
        self._sink: Callable[[LinkItem], None] | None = None
        self._open_warned_at = 0.0
        self._fatal: BaseException | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        if self._task is None:
            self._stopping = False
            if not self._queue.empty():  # drop the end marker an earlier close() left
                left = [self._queue.get_nowait() for _ in range(self._queue.qsize())]
                for item in left:
                    if item is not _END:
                        self._queue.put_nowait(item)
            self._task = asyncio.get_running_loop().create_task(self._supervise(), name=f"{self.name}-link")

    async def close(self) -> None:
        self._stopping = True
        task, self._task = self._task, None
        await cancel_and_wait(task)
        self._drop_transport("closed")
        self._queue.put_nowait(_END)

    async def __aenter__(self) -> RsuLink:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- state ---------------------------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self._transport is not None

    @property
    def alive(self) -> bool:
        """Connected and a frame (heartbeats count) arrived within ``silence_timeout``."""
        return (self._transport is not None and self.last_seen is not None
                and time.monotonic() - self.last_seen <= self.silence_timeout)

    @property
    def status(self) -> LinkStatus:
        return self._status

    @property
    def description(self) -> str:
        return self.port if self.port is not None else f"tcp://{self.host}:{self.tcp_port}"

    @property
    def write_buffer_size(self) -> int:
        t = self._transport
        return 0 if t is None else t.buffered

    @property
    def writing(self) -> bool:
        """True while unsent bytes wait for the port (a writer callback is registered)."""
        t = self._transport
        return t is not None and t.writing

    def attach(self, sink: Callable[[LinkItem], None]) -> None:
        """Deliver frames, dropped frames and link status changes to ``sink``, in the order
        they happened (instead of :meth:`frames`): the lane's one ordered event stream."""
        self._sink = sink

    @property
    def connected_at(self) -> float | None:
        """Monotonic time the current connection came up (None while not connected)."""
        return self._connected_at if self._transport is not None else None

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The link's supervisor task (reconnect, silence); it ends with the link's
        exception if anything unexpected happened in reading."""
        return self._task

    def on_status(self, callback: Callable[[LinkStatus], None]) -> None:
        """Call ``callback(LinkStatus)`` on every connect and disconnect."""
        self._callbacks.append(callback)

    def on_drop(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(reason)`` for every damaged frame dropped (so the lane can ask
        the RSU to resend the frame it is waiting for)."""
        self._drop_callbacks.append(callback)

    async def wait_connected(self) -> None:
        await self._connected_event.wait()

    def health(self) -> DeviceHealth:
        if self._transport is None:
            detail = self._status.reason
        elif self.alive:
            detail = f"connected on {self._transport.description}"
        else:
            detail = f"connected on {self._transport.description}, nothing received yet"
        return DeviceHealth(device=self.name, online=self._transport is not None, detail=detail,
                            errors=sum(self.drops.values()) + self.stats["disconnects"],
                            last_ok_at=self.last_seen)

    # -- frames ------------------------------------------------------------------------------
    async def frames(self) -> AsyncIterator[RsuFrame]:
        """Every frame from the RSU, in order, across reconnects; ends when the link closes.

        One consumer (the lane executor): two iterators would share the frames between them.
        Link up/down is reported through :meth:`on_status`, not here.
        """
        while True:
            item = await self._queue.get()
            if item is _END:
                return
            yield item

    def send_nowait(self, message: Message, reply_to: RsuFrame | int | None = None) -> None:
        """Encode and write ``message`` now. ``reply_to`` is the RSU frame it answers (or
        that frame's RSCTL/SEQ), ``None`` for a frame the lane starts. Raises DeviceOffline."""
        if isinstance(reply_to, RsuFrame):
            reply_to = reply_to.rsctl if reply_to.rsctl is not None else reply_to.seq
        transport = self._transport
        if transport is None:
            raise DeviceOffline(self.name, f"send {message.type_name}", self._status.reason)
        envelope = self.profile.envelope
        if envelope == "classic":
            rsctl = reply_rsctl(reply_to) if reply_to is not None else self._lane_seq.next()
            data = encode_message(self.profile, message, rsctl=rsctl)
        elif envelope == "gb2019tcp":
            if reply_to is not None:
                seq = reply_rsctl(reply_to)
            else:
                seq = self._gb_seq << 4
                self._gb_seq = (self._gb_seq + 1) & 0x0F
            data = encode_message(self.profile, message, seq=seq)
        else:
            data = encode_message(self.profile, message)
        if transport.buffered + len(data) > MAX_WRITE_BUFFER:
            reason = f"write buffer full ({transport.buffered} bytes unsent)"
            raise DeviceOffline(self.name, f"send {message.type_name}", reason)
        transport.write(data)
        self.stats["sent"] += 1

    async def send(self, message: Message, reply_to: RsuFrame | int | None = None) -> None:
        """:meth:`send_nowait`, then wait until the bytes have left laned's buffer."""
        self.send_nowait(message, reply_to)
        transport = self._transport
        if transport is not None:
            await transport.drain()
        if self._transport is not transport:
            raise DeviceOffline(self.name, f"send {message.type_name}", self._status.reason)

    # -- hotplug -------------------------------------------------------------------------------
    async def device_removed(self) -> None:
        """The adapter is gone: close at once and wait for :meth:`device_added`."""
        self._removed = True
        if self._transport is not None:
            self._drop_transport("adapter removed")
        else:
            self._set_status(False, "adapter removed")
        self._wake.set()

    def device_added(self, path: str | None = None) -> None:
        """The adapter is back (maybe under a new path): (re)open it now."""
        if path is not None and self.host is None:
            self.port = path
        self._removed = False
        self._delay = self.backoff[0]
        self._next_attempt = 0.0
        if self._transport is not None and path is not None and self._transport.description != path:
            self._drop_transport(f"adapter moved to {path}")
        self._wake.set()

    # -- internals -----------------------------------------------------------------------------
    def _on_data(self, data: bytes) -> None:
        arrived_at = time.monotonic()
        for item in self._decoder.feed(data):
            self._deliver(item, arrived_at)

    def _deliver(self, item: Decoded | ProtocolError, arrived_at: float) -> None:
        if isinstance(item, ProtocolError):
            self.drops[item.reason] += 1
            self._log_drop(item, arrived_at)
            for callback in self._drop_callbacks:
                callback(item.reason)
            if self._sink is not None:
                self._sink(FrameDropped(item.reason))
            return
        self.last_seen = arrived_at
        if not self._seen_on_this_connection:
            self._seen_on_this_connection = True
            self._delay = self.backoff[0]
        frame = RsuFrame(item.message, item.rsctl, item.seq, arrived_at, item.raw.wire,
                         heartbeat=self.profile.is_heartbeat(item.message))
        self.stats["frames"] += 1
        if frame.heartbeat:
            self.stats["heartbeats"] += 1
        if self._sink is not None:
            self._sink(frame)
            return
        if self._queue.qsize() >= MAX_QUEUED_FRAMES:
            self._queue.get_nowait()  # the oldest: a lane this far behind acts on the newest
            self.stats["queue_overflow"] += 1
        self._queue.put_nowait(frame)

    def _log_drop(self, err: ProtocolError, now: float) -> None:
        last, suppressed = self._drop_logged.get(err.reason, (-DROP_LOG_INTERVAL_S, 0))
        if now - last < DROP_LOG_INTERVAL_S:
            self._drop_logged[err.reason] = (last, suppressed + 1)
            return
        self._drop_logged[err.reason] = (now, 0)
        more = f"; {suppressed} more dropped for this reason since the last report" if suppressed else ""
        log.warning("%s: dropped a bad frame from %s, link stays up: %s (%d bytes, starting %s)%s", self.name,
                    self.description, err, len(err.data), err.data[:DROP_LOG_BYTES].hex(" "), more)

    def _set_status(self, connected: bool, reason: str) -> None:
        status = LinkStatus(connected, reason)
        if status == self._status:
            return
        self._status = status
        if connected:
            self._connected_event.set()
        else:
            self._connected_event.clear()
        if self._sink is not None:
            self._sink(status)
        for cb in list(self._callbacks):
            try:
                cb(status)
            except Exception:
                log.exception("%s: status callback failed", self.name)

    def _fail(self, err: BaseException) -> None:
        """Something unexpected (a bug) happened while reading: the supervisor ends with it."""
        log.critical("%s: unexpected error while reading from %s: %r; the link's supervisor stops",
                     self.name, self.description, err)
        if self._fatal is None:
            self._fatal = err
        self._wake.set()

    def _lost(self, transport: object, reason: str) -> None:
        """Called by a transport that hit an error or EOF."""
        if transport is not self._transport:
            return
        log.warning("%s: link to %s lost: %s", self.name, self.description, reason)
        self._drop_transport(reason)

    def _drop_transport(self, reason: str) -> None:
        transport, self._transport = self._transport, None
        if transport is None:
            if self._status.connected:
                self._set_status(False, reason)
            return
        transport.close()
        now = time.monotonic()
        for item in self._decoder.finish():  # a frame cut short by the loss
            self._deliver(item, now)
        self._decoder = FrameDecoder(self.profile)
        self.stats["disconnects"] += 1
        self._next_attempt = now + self._delay
        self._delay = min(self._delay * 2, self.backoff[1])
        self._set_status(False, reason)
        self._wake.set()

    async def _open(self) -> None:
        try:
            if self.host is not None:
                transport: _SerialTransport | _TcpTransport = await _TcpTransport.open(self, self.host,
                                                                                        self.tcp_port or 0)
            else:
                assert self.port is not None
                transport = _SerialTransport(self, self.port, self.baud)
        except (TimeoutError, OSError, serial.SerialException, ValueError) as err:
            # pyserial repeats the path twice in its message; the errno says it all.
            code = getattr(err, "errno", None)
            why = _oserror(OSError(code, os.strerror(code))) if isinstance(code, int) else str(err)
            self._open_failures += 1
            self.stats["open_failures"] += 1
            now = time.monotonic()
            if self._open_failures == 1 or now - self._open_warned_at >= OPEN_FAILURE_LOG_INTERVAL_S:
                self._open_warned_at = now
                log.warning("%s: cannot open %s: %s (attempt %d; retrying every %.1f s at most; ETC stays "
                            "closed until it opens)", self.name, self.description, why, self._open_failures,
                            self.backoff[1])
            else:
                log.debug("%s: cannot open %s: %s", self.name, self.description, why)
            self._next_attempt = time.monotonic() + self._delay
            self._delay = min(self._delay * 2, self.backoff[1])
            if self._status.connected or self._status.reason == "not started":
                self._set_status(False, f"cannot open {self.description}: {why}")
            return
        if self._stopping or self._removed:
            transport.close()
            return
        self._transport = transport
        self._open_failures = 0
        self._connected_at = time.monotonic()
        self._seen_on_this_connection = False
        self._decoder = FrameDecoder(self.profile)
        self.stats["connects"] += 1
        log.info("%s: connected to %s", self.name, transport.description)
        self._set_status(True, f"connected to {transport.description}")

    async def _supervise(self) -> None:
        while not self._stopping:
            if self._fatal is not None:
                self._drop_transport("laned error")
                raise self._fatal
            self._wake.clear()
            now = time.monotonic()
            timeout: float | None
            if self._transport is None:
                if self._removed:
                    timeout = None
                elif now >= self._next_attempt:
                    await self._open()
                    continue
                else:
                    timeout = self._next_attempt - now
            else:
                ref = max(self.last_seen or 0.0, self._connected_at)
                silent = now - ref
                if silent > self.silence_timeout:
                    self._lost(self._transport, f"silent for {silent:.1f} s (limit {self.silence_timeout:g} s)")
                    continue
                timeout = self.silence_timeout - silent + 0.001
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass
