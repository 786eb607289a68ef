"""RsuLink against an emulated RSU over real pseudo-terminals and a real TCP socket.

The "RSU" is a small peer on the master side of an ``os.openpty()`` pair (or an asyncio
TCP server); laned's :class:`RsuLink` opens the slave side by path exactly as it opens
``/dev/ttyUSB0``. Nothing waits on a fixed sleep: every step awaits an event with a
timeout.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import time
import tty
from collections.abc import AsyncIterator

import pytest

from laned.drivers.errors import DeviceOffline
from laned.drivers.rsu import LinkStatus, RsuFrame, RsuLink
from laned.protocol.codec import Decoded, FrameDecoder, encode_message
from laned.protocol.profiles import get_profile
from laned.protocol.profiles.common import Switch
from laned.protocol.profiles.national import Continue, Init, ObuInfo, RsuInfo, VehicleInfo
from laned.protocol.rsctl import LaneSequence

pytestmark = [pytest.mark.hil, pytest.mark.timeout(20)]

NATIONAL = get_profile("national")
T = 3.0  # generous per-step timeout; every step normally takes milliseconds

OBU = bytes.fromhex("a1b2c3d4")


def rsu_status_frame(rsctl: int = 0x98) -> bytes:
    msg = RsuInfo(rsu_status=0, psam_num=1, rsu_terminal_id1=bytes.fromhex("010203040506"),
                  rsu_terminal_id2=bytes.fromhex("0708090a0b0c"), rsu_alg_id=0, rsu_manu_id=0x21,
                  rsu_id=bytes.fromhex("000102"), rsu_version=bytes.fromhex("0101"), reserved=bytes(5))
    return encode_message(NATIONAL, msg, rsctl=rsctl)


def obu_frame(rsctl: int = 0x48, obu_id: bytes = OBU) -> bytes:
    msg = ObuInfo(obu_id=obu_id, error_code=0, issuer_identifier=bytes.fromhex("c9bdb6ab01000000"),
                  serial_number=bytes.fromhex("0102030405060708"), date_of_issue=dt.date(2023, 1, 2),
                  date_of_expire=dt.date(2033, 1, 2), equipment_cv=0x41, obu_status=bytes.fromhex("0000"))
    return encode_message(NATIONAL, msg, rsctl=rsctl)


def vehicle_frame(rsctl: int = 0x58) -> bytes:
    msg = VehicleInfo(obu_id=OBU, error_code=0, plate_number="京A12345", plate_colour=0, vehicle_class=1,
                      vehicle_user_type=0)
    return encode_message(NATIONAL, msg, rsctl=rsctl)


def heartbeat_frame(obu_id: bytes = b"\x00\x00\x00\x00", rsctl: int = 0x18) -> bytes:
    return encode_message(NATIONAL, ObuInfo(obu_id=obu_id, error_code=0x80), rsctl=rsctl)


class PtyPeer:
    """The RSU side: the master end of a pty pair."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self.received = bytearray()
        self._data = asyncio.Event()
        self._decoder = FrameDecoder(NATIONAL)
        self._frames: list[Decoded] = []
        self.chunk = 65536
        self._loop = asyncio.get_running_loop()
        self._reading = False
        self.closed = False

    def start_reading(self, chunk: int = 65536) -> None:
        self.chunk = chunk
        if not self._reading:
            self._loop.add_reader(self.master, self._on_readable)
            self._reading = True

    def _on_readable(self) -> None:
        try:
            data = os.read(self.master, self.chunk)
        except (BlockingIOError, OSError):
            return
        if data:
            self.received += data
            for item in self._decoder.feed(data):
                if isinstance(item, Decoded):
                    self._frames.append(item)
            self._data.set()

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:  # small test frames: the pty buffer takes them at once
            n = os.write(self.master, view)
            view = view[n:]

    async def wait_bytes(self, n: int, timeout: float = T) -> bytes:
        async def _wait() -> None:
            while len(self.received) < n:
                self._data.clear()
                await self._data.wait()
        self.start_reading(self.chunk)
        await asyncio.wait_for(_wait(), timeout)
        return bytes(self.received)

    async def next_frame(self, timeout: float = T) -> Decoded:
        async def _wait() -> Decoded:
            while not self._frames:
                self._data.clear()
                await self._data.wait()
            return self._frames.pop(0)
        self.start_reading(self.chunk)
        return await asyncio.wait_for(_wait(), timeout)

    def close_master(self) -> None:
        if self._reading:
            self._loop.remove_reader(self.master)
            self._reading = False
        if not self.closed:
            os.close(self.master)
            self.closed = True

    def close(self) -> None:
        self.close_master()
        try:
            os.close(self.slave)
        except OSError:
            pass


@pytest.fixture
async def peers() -> AsyncIterator[list[PtyPeer]]:
    made: list[PtyPeer] = []
    yield made
    for p in made:
        p.close()


@pytest.fixture
def new_peer(peers: list[PtyPeer]):
    def make() -> PtyPeer:
        p = PtyPeer()
        peers.append(p)
        return p
    return make


class StatusLog:
    def __init__(self, link: RsuLink) -> None:
        self.events: list[LinkStatus] = []
        self._changed = asyncio.Event()
        link.on_status(self._on)

    def _on(self, status: LinkStatus) -> None:
        self.events.append(status)
        self._changed.set()

    async def wait(self, connected: bool, timeout: float = T, after: int = 0) -> LinkStatus:
        """The first status with ``connected`` at or after index ``after``."""
        async def _wait() -> LinkStatus:
            while True:
                for s in self.events[after:]:
                    if s.connected is connected:
                        return s
                self._changed.clear()
                await self._changed.wait()
        return await asyncio.wait_for(_wait(), timeout)


async def next_frame(it: AsyncIterator[RsuFrame], timeout: float = T) -> RsuFrame:
    return await asyncio.wait_for(anext(it), timeout)


@pytest.fixture
async def serial_link(new_peer) -> AsyncIterator[tuple[RsuLink, PtyPeer, StatusLog]]:
    peer = new_peer()
    link = RsuLink(NATIONAL, port=peer.path, baud=115200, name="rsu-test")
    log = StatusLog(link)
    async with link:
        await asyncio.wait_for(link.wait_connected(), T)
        yield link, peer, log


# -- frames in -------------------------------------------------------------------------------

async def test_frames_arrive_typed_with_arrival_time(serial_link) -> None:
    link, peer, _ = serial_link
    frames = link.frames()
    before = time.monotonic()
    peer.write(rsu_status_frame(0x98) + obu_frame(0x48))
    b0 = await next_frame(frames)
    b2 = await next_frame(frames)
    after = time.monotonic()
    assert isinstance(b0.message, RsuInfo) and b0.message.rsu_manu_id == 0x21
    assert b0.rsctl == 0x98 and b0.wire == rsu_status_frame(0x98)
    assert isinstance(b2.message, ObuInfo) and b2.message.obu_id == OBU and b2.rsctl == 0x48
    assert not b2.heartbeat
    assert before <= b0.arrived_at <= b2.arrived_at <= after
    assert link.last_seen == b2.arrived_at and link.alive
    h = link.health()
    assert h.online and h.device == "rsu-test" and h.last_ok_at == b2.arrived_at
    with pytest.raises(Exception):  # frozen
        b2.rsctl = 1  # type: ignore[misc]


async def test_answer_carries_swapped_rsctl_and_lane_frames_count(serial_link) -> None:
    link, peer, _ = serial_link
    frames = link.frames()
    peer.write(obu_frame(0x48))
    f = await next_frame(frames)
    answer = Continue(obu_id=f.message.obu_id, obu_div_factor=bytes.fromhex("c9bdb6ab01000000"))
    link.send_nowait(answer, f.rsctl)
    got = await peer.next_frame()
    assert got.rsctl == 0x84 and got.message == answer
    # Frames the lane starts: free-running 8X.
    await link.send(Switch(control_type=1))
    link.send_nowait(Switch(control_type=0))
    a, b = await peer.next_frame(), await peer.next_frame()
    assert (a.rsctl, b.rsctl) == (0x80, 0x81)
    assert a.message == Switch(control_type=1) and b.message == Switch(control_type=0)


async def test_heartbeat_refreshes_last_seen(serial_link) -> None:
    link, peer, _ = serial_link
    frames = link.frames()
    peer.write(obu_frame())
    first = await next_frame(frames)
    peer.write(heartbeat_frame())
    hb = await next_frame(frames)
    assert hb.heartbeat and hb.message.error_code == 0x80 and hb.message.issuer_identifier is None
    assert hb.arrived_at >= first.arrived_at and link.last_seen == hb.arrived_at
    peer.write(encode_message(NATIONAL, ObuInfo(obu_id=b"\xff\xff\xff\xff", error_code=0x80), rsctl=0x28))
    hb2 = await next_frame(frames)
    assert hb2.heartbeat and link.last_seen == hb2.arrived_at
    assert link.stats["heartbeats"] == 2


# -- bad input -------------------------------------------------------------------------------

async def test_corrupted_frame_is_counted_and_the_next_arrives(serial_link, caplog) -> None:
    link, peer, _ = serial_link
    frames = link.frames()
    bad = bytearray(vehicle_frame(0x58))
    # Flip a bit in a DATA byte that is neither FE nor FF and does not become one.
    i = next(i for i in range(6, len(bad) - 2) if bad[i] < 0xF0)
    bad[i] ^= 0x01
    caplog.set_level(logging.WARNING, logger="laned.drivers.rsu")
    peer.write(bytes(bad) + obu_frame(0x68))
    f = await next_frame(frames)
    assert isinstance(f.message, ObuInfo) and f.rsctl == 0x68
    assert link.drops["bcc"] == 1
    assert any("rsu-test" in r.getMessage() and "bcc" in r.getMessage() for r in caplog.records)
    assert link.connected


async def test_noise_and_split_writes_are_resynchronised(serial_link) -> None:
    link, peer, _ = serial_link
    frames = link.frames()
    peer.write(b"\x01\x02garbage\x00\x7f")
    peer.write(obu_frame(0x48))
    f = await next_frame(frames)
    assert isinstance(f.message, ObuInfo) and f.rsctl == 0x48
    # One frame one byte at a time, yielding to the loop between bytes so the link reads
    # each byte separately.
    for byte in vehicle_frame(0x58):
        peer.write(bytes((byte,)))
        await asyncio.sleep(0)
    f = await next_frame(frames)
    assert isinstance(f.message, VehicleInfo) and f.message.plate_number == "京A12345"
    # Two frames split at awkward places, noise between them.
    data = heartbeat_frame() + b"\x55\xaa" + rsu_status_frame(0x08)
    for a, b in ((0, 3), (3, 11), (11, 12), (12, len(data))):
        peer.write(data[a:b])
        await asyncio.sleep(0)
    hb = await next_frame(frames)
    b0 = await next_frame(frames)
    assert hb.heartbeat and isinstance(b0.message, RsuInfo) and b0.rsctl == 0x08
    assert link.connected


# -- writes ----------------------------------------------------------------------------------

async def test_partial_writes_drain_in_order_without_errors(serial_link, caplog) -> None:
    link, peer, _ = serial_link
    caplog.set_level(logging.DEBUG)
    seq = LaneSequence()
    expected = bytearray()
    i = 0
    while len(expected) < 64 * 1024:
        msg = Continue(obu_id=i.to_bytes(4, "big"), obu_div_factor=(i * 7919).to_bytes(8, "big"))
        expected += encode_message(NATIONAL, msg, rsctl=seq.next())
        link.send_nowait(msg)
        i += 1
    # The pty took only part of it: the rest waits in the link's buffer, writer registered.
    assert link.writing and link.write_buffer_size > 0
    assert link.stats["short_write"] + link.stats["write_blocked"] > 0
    peer.chunk = 61  # the RSU reads slowly, in small chunks
    got = await peer.wait_bytes(len(expected), timeout=15)
    assert got == bytes(expected)
    assert not link.writing and link.write_buffer_size == 0
    loop = asyncio.get_running_loop()
    assert loop.remove_writer(link._transport.fd) is False  # nothing left registered
    # Every frame decodes on the RSU side, in order.
    decoded = FrameDecoder(NATIONAL).feed(got)
    assert len(decoded) == i and all(isinstance(d, Decoded) for d in decoded)
    assert [d.message.obu_id for d in decoded[:3]] == [b"\0\0\0\0", b"\0\0\0\x01", b"\0\0\0\x02"]
    # Let a few loop turns pass: no AssertionError, nothing at warning or above.
    for _ in range(20):
        await asyncio.sleep(0)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert "AssertionError" not in caplog.text
    assert link.connected


async def test_send_when_disconnected_raises_device_offline(new_peer) -> None:
    peer = new_peer()
    link = RsuLink(NATIONAL, port=peer.path)
    with pytest.raises(DeviceOffline):
        link.send_nowait(Switch(control_type=1))
    with pytest.raises(ValueError):
        RsuLink(NATIONAL, port=peer.path, baud=4800)
    with pytest.raises(ValueError):
        RsuLink(NATIONAL)


# -- losing the device -----------------------------------------------------------------------

async def test_pty_closed_then_new_device_added_reconnects(serial_link, new_peer) -> None:
    link, peer, log = serial_link
    frames = link.frames()
    replacement = new_peer()  # made first, so the new adapter gets a different path
    assert replacement.path != peer.path
    mark = len(log.events)
    peer.close()  # master and our slave fd: the adapter is gone, the link reads EIO/EOF
    down = await log.wait(connected=False, after=mark)
    assert not link.connected and down.reason
    assert not link.health().online
    with pytest.raises(DeviceOffline):
        link.send_nowait(Switch(control_type=1))
    mark = len(log.events)
    t0 = time.monotonic()
    link.device_added(replacement.path)
    up = await log.wait(connected=True, after=mark, timeout=1.0)
    assert time.monotonic() - t0 < 1.0 and replacement.path in up.reason
    replacement.write(obu_frame(0x48))
    f = await next_frame(frames)
    assert isinstance(f.message, ObuInfo)
    link.send_nowait(Continue(obu_id=OBU, obu_div_factor=bytes(8)), f.rsctl)
    assert (await replacement.next_frame()).rsctl == 0x84


async def test_device_removed_closes_at_once_and_added_reopens(serial_link) -> None:
    link, peer, log = serial_link
    mark = len(log.events)
    await link.device_removed()
    assert not link.connected
    assert log.events[mark:] == [LinkStatus(False, "adapter removed")]
    with pytest.raises(DeviceOffline):
        link.send_nowait(Switch(control_type=1))
    link.device_added(peer.path)
    await log.wait(connected=True, after=mark, timeout=1.0)
    frames = link.frames()
    peer.write(heartbeat_frame())
    assert (await next_frame(frames)).heartbeat


async def test_silence_forces_a_reconnect(new_peer) -> None:
    peer = new_peer()
    link = RsuLink(NATIONAL, port=peer.path, silence_timeout=0.3, backoff=(0.05, 0.2), name="rsu-quiet")
    log = StatusLog(link)
    async with link:
        await asyncio.wait_for(link.wait_connected(), T)
        down = await log.wait(connected=False)
        assert "silent" in down.reason
        mark = log.events.index(down)
        await log.wait(connected=True, after=mark)
        frames = link.frames()
        peer.write(heartbeat_frame())
        assert (await next_frame(frames)).heartbeat and link.alive


# -- TCP -------------------------------------------------------------------------------------

async def test_tcp_frames_both_ways_and_reconnect() -> None:
    conns: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await conns.put((reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    writers: list[asyncio.StreamWriter] = []
    try:
        link = RsuLink("national", host="127.0.0.1", tcp_port=port, backoff=(0.05, 0.2), name="rsu-tcp")
        log = StatusLog(link)
        async with link:
            reader, writer = await asyncio.wait_for(conns.get(), T)
            writers.append(writer)
            await asyncio.wait_for(link.wait_connected(), T)
            frames = link.frames()
            writer.write(rsu_status_frame(0x98) + obu_frame(0x48)[:5])
            await writer.drain()
            b0 = await next_frame(frames)
            writer.write(obu_frame(0x48)[5:])
            b2 = await next_frame(frames)
            assert isinstance(b0.message, RsuInfo) and isinstance(b2.message, ObuInfo)
            link.send_nowait(Continue(obu_id=OBU, obu_div_factor=bytes(8)), b2.rsctl)
            init = Init(unix_time=1_700_000_000, date_time=dt.datetime(2023, 11, 14, 22, 13, 20), lane_mode=3,
                        wait_time=10, tx_power=8, pll_channel_id=0, trans_mode=0)
            await link.send(init)
            dec = FrameDecoder(NATIONAL)
            got: list[Decoded] = []
            while len(got) < 2:
                data = await asyncio.wait_for(reader.read(4096), T)
                assert data
                got += [d for d in dec.feed(data) if isinstance(d, Decoded)]
            assert got[0].rsctl == 0x84 and isinstance(got[0].message, Continue)
            assert got[1].rsctl == 0x80 and got[1].message == init
            # The RSU drops the connection: reported, then reconnected.
            mark = len(log.events)
            writer.close()
            await log.wait(connected=False, after=mark)
            reader2, writer2 = await asyncio.wait_for(conns.get(), T)
            writers.append(writer2)
            await log.wait(connected=True, after=mark)
            writer2.write(heartbeat_frame())
            assert (await next_frame(frames)).heartbeat
    finally:
        for w in writers:
            w.close()
        server.close()
        await server.wait_closed()


async def test_tcp_gb2019_seq_answers_and_lane_frames() -> None:
    gb = get_profile("gb2019tcp")
    conns: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await conns.put((reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    writer = None
    try:
        async with RsuLink(gb, host="127.0.0.1", tcp_port=port, name="rsu-gb") as link:
            reader, writer = await asyncio.wait_for(conns.get(), T)
            await asyncio.wait_for(link.wait_connected(), T)
            frames = link.frames()
            b2 = gb.messages[0xB2](obu_id=OBU, data=b"\x00\x01\x02")
            writer.write(encode_message(gb, b2, seq=0x03))
            f = await next_frame(frames)
            assert f.seq == 0x03 and f.message == b2 and f.rsctl is None
            c1 = gb.messages[0xC1](obu_id=OBU, data=b"")
            link.send_nowait(c1, f.seq)
            link.send_nowait(c1)
            link.send_nowait(c1)
            dec = FrameDecoder(gb)
            got: list[Decoded] = []
            while len(got) < 3:
                data = await asyncio.wait_for(reader.read(4096), T)
                assert data
                got += [d for d in dec.feed(data) if isinstance(d, Decoded)]
            assert [d.seq for d in got] == [0x30, 0x00, 0x10]
            assert all(d.message == c1 for d in got)
    finally:
        if writer is not None:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_frames_iterator_ends_at_close_and_link_restarts(new_peer) -> None:
    peer = new_peer()
    link = RsuLink(NATIONAL, port=peer.path)
    async with link:
        await asyncio.wait_for(link.wait_connected(), T)
    assert [f async for f in link.frames()] == []  # ended by close()
    async with link:
        await asyncio.wait_for(link.wait_connected(), T)
        peer.write(heartbeat_frame())
        assert (await next_frame(link.frames())).heartbeat
