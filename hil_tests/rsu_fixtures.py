"""Helpers of the RSU link HIL tests: an emulated RSU and laned's RsuLink on a real pty or
TCP socket, a scripted minimal lane, a raw pty peer for byte-exact driver tests.

The scripted lane is deliberately not laned's lane machine: it answers B2 with C1, B3
with C1, B4 with C6 and B5 with C1, leaves heartbeats unanswered, and answers a frame
that arrives twice in a row (a duplicated or retransmitted frame, same bytes) only once —
the de-duplication a real lane must do, since the link delivers duplicates as they come.
What it does is what the RSU protocol asks of any lane, so the tests check the link and
the emulator, not lane policy.

Nothing here waits on a fixed sleep: waits are on events with deadlines.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
import tty
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from laned.drivers.rsu import LinkStatus, RsuFrame, RsuLink
from laned.protocol.codec import Decoded, FrameDecoder
from laned.protocol.messages import Message, OpaqueMessage
from laned.protocol.profiles import Profile, get_profile, national, network2019
from laned.protocol.profiles.common import STOP_SEARCH_AGAIN, Stop
from laned.sim.rsu_emulator import EmulatorSettings, RsuEmulator
from laned.sim.rsu_scenario import EntryRecord, ObuScenario

T = 5.0  # generous per-step timeout (a loaded CI box); every step normally takes milliseconds
AMOUNT = 35_00  # fen: what the scripted lane charges
PURCHASE_TIME = dt.datetime(2026, 11, 22, 10, 0, 0)
# The exit station record the lane writes into 0019 with C6.
EXIT_STATION = EntryRecord(network="3701", station="0203", lane=5, entry_time=1_763_805_600, in_out=3).record()

FAST_EMULATOR = EmulatorSettings(answer_timeout=1.1, heartbeat_interval=0.2, redetect_interval=5.0)


# -- lane frames for every profile -------------------------------------------------------------

def lane_init(profile: Profile) -> Message:
    init = national.Init(unix_time=int(PURCHASE_TIME.timestamp()), date_time=PURCHASE_TIME, lane_mode=4,
                         wait_time=5, tx_power=8, pll_channel_id=0, trans_mode=0)
    if profile.name == "network2019":
        return network2019.Init(unix_time=init.unix_time, date_time=PURCHASE_TIME, lane_mode=network2019.LaneMode.EXIT,
                                bst_interval=5, tx_power=8, pll_channel_id=0, ef04_opt=0, ef04_offset=0,
                                ef04_length=0)
    if profile.name in ("jinyi", "gb2019tcp"):
        return OpaqueMessage(type_code=0xC0, data=init.encode()[1:])
    return init


def lane_continue(profile: Profile, obu_id: bytes) -> Message:
    if profile.name == "network2019":
        return network2019.Continue(obu_id=obu_id)
    if profile.name in ("jinyi", "gb2019tcp"):
        return profile.messages[0xC1](obu_id=obu_id, data=bytes(8))  # type: ignore[call-arg]
    return national.Continue(obu_id=obu_id, obu_div_factor=bytes(8))


def lane_charge(profile: Profile, obu_id: bytes, amount: int = AMOUNT) -> Message:
    if profile.name == "network2019":
        return network2019.Charge(obu_id=obu_id, trade_mode=0, consume_money=amount, station=EXIT_STATION,
                                  purchase_time=PURCHASE_TIME, ef04_offset=0, ef04_length=0, ef04_info=b"")
    c6 = national.Charge(obu_id=obu_id, card_div_factor=bytes(8), reserved=bytes(4), consume_money=amount,
                         purchase_time=PURCHASE_TIME, station=EXIT_STATION)
    if profile.name in ("jinyi", "gb2019tcp"):
        return profile.messages[0xC6](obu_id=obu_id, data=c6.encode()[5:])  # type: ignore[call-arg]
    return c6


def lane_stop(profile: Profile, obu_id: bytes, stop_type: int = STOP_SEARCH_AGAIN) -> Message:
    if profile.name in ("jinyi", "gb2019tcp"):
        return profile.messages[0xC2](obu_id=obu_id, data=bytes((stop_type,)))  # type: ignore[call-arg]
    return Stop(obu_id=obu_id, stop_type=stop_type)


def lane_refetch(obu_id: bytes) -> Message:
    return network2019.RefetchTac(obu_id=obu_id, opt_mode=0, ef04_offset=0, ef04_length=0, ef04_info=b"")


def frame_name(f: RsuFrame) -> str:
    return "HB" if f.heartbeat else f.message.type_name


# -- waiting -----------------------------------------------------------------------------------

class Changes:
    """A broadcast "something changed": waiters re-check their condition on each change."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = T, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"waited {timeout} s for {what or predicate}")
            event = self._event
            try:
                await asyncio.wait_for(event.wait(), left)
            except TimeoutError:
                pass


async def poll_until(predicate: Callable[[], Any], timeout: float = T, what: str = "") -> Any:
    """For driver counters that have no event of their own: a deadline-bound poll."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout} s for {what or predicate}")
        await asyncio.sleep(0.005)  # the poll interval, not a wait for an effect
    return value


class StatusLog:
    """Every LinkStatus the link reported, with waits on them."""

    def __init__(self, link: RsuLink) -> None:
        self.events: list[tuple[float, LinkStatus]] = []
        self._changes = Changes()
        link.on_status(self._on)

    def _on(self, status: LinkStatus) -> None:
        self.events.append((time.monotonic(), status))
        self._changes.notify()

    @property
    def mark(self) -> int:
        return len(self.events)

    async def wait(self, connected: bool, *, after: int = 0, timeout: float = T) -> LinkStatus:
        """The first status with ``connected`` at or after index ``after``."""
        def find() -> LinkStatus | None:
            return next((s for _, s in self.events[after:] if s.connected is connected), None)
        status: LinkStatus = await self._changes.wait_for(find, timeout, f"link {'up' if connected else 'down'}")
        return status


# -- the scripted lane -----------------------------------------------------------------------------

@dataclass
class ScriptedLane:
    """See the module docstring. ``hold`` names frames it leaves unanswered; ``resend_once``
    frames it first answers with C2 stop type 2 (resend); ``stop_paid`` makes it stop
    (C2) an OBU it has seen a B5 for instead of charging it again."""

    link: RsuLink
    profile: Profile
    amount: int = AMOUNT
    hold: set[str] = field(default_factory=set)
    resend_once: set[str] = field(default_factory=set)
    stop_paid: bool = False
    init: bool = True  # send C0 on every connect, and C1 after B0 to start searching

    frames: list[RsuFrame] = field(default_factory=list)  # everything delivered, heartbeats too
    answered: list[tuple[RsuFrame, Message]] = field(default_factory=list)
    duplicates: int = 0
    paid: set[bytes] = field(default_factory=set)
    _changes: Changes = field(default_factory=Changes)
    _last: bytes = b""

    def __post_init__(self) -> None:
        self.link.on_status(self._on_status)

    def _on_status(self, status: LinkStatus) -> None:
        if status.connected:
            # A new connection: the RSU's first B0 may repeat the previous session's bytes
            # exactly (RSCTL 98 after power-up) and must not be taken for a duplicate.
            self._last = b""
        if status.connected and self.init:
            self.link.send_nowait(lane_init(self.profile))
        self._changes.notify()

    async def run(self) -> None:
        async for f in self.link.frames():
            self.frames.append(f)
            self._answer(f)
            self._changes.notify()

    def _answer(self, f: RsuFrame) -> None:
        if f.heartbeat:
            return
        name = f.message.type_name
        if f.wire == self._last:  # the same frame again: answered already
            self.duplicates += 1
            return
        self._last = f.wire
        if name == "B0":
            if self.init:
                self.link.send_nowait(lane_continue(self.profile, bytes(4)))  # start searching
            return
        if name in self.hold:
            return
        oid = f.message.obu_id  # type: ignore[attr-defined]
        if name in self.resend_once:
            self.resend_once.discard(name)
            reply = lane_stop(self.profile, oid, 2)
        elif name == "B2" and self.stop_paid and oid in self.paid:
            reply = lane_stop(self.profile, oid)
        elif name == "B4":
            reply = lane_charge(self.profile, oid, self.amount)
        elif name in ("B2", "B3", "B5"):
            if name == "B5":
                self.paid.add(oid)
            reply = lane_continue(self.profile, oid)
        else:
            return
        self.link.send_nowait(reply, f)
        self.answered.append((f, reply))

    def received(self, name: str) -> list[RsuFrame]:
        return [f for f in self.frames if frame_name(f) == name]

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = T, what: str = "") -> Any:
        return await self._changes.wait_for(predicate, timeout, what)

    async def wait_frame(self, name: str, *, count: int = 1, timeout: float = T) -> RsuFrame:
        """The ``count``-th frame named ``name`` (B0…B5, HB) the lane received."""
        got: list[RsuFrame] = await self.wait_for(lambda: len(self.received(name)) >= count and self.received(name),
                                                  timeout, f"{count} × {name}")
        return got[count - 1]


@dataclass
class RsuBench:
    emu: RsuEmulator
    link: RsuLink
    status: StatusLog
    lane: ScriptedLane
    profile: Profile


@asynccontextmanager
async def rsu_bench(profile: str = "national", transport: Literal["pty", "tcp"] = "pty",
                    obus: Iterable[ObuScenario] = (), *, settings: EmulatorSettings = FAST_EMULATOR,
                    link_kw: dict[str, Any] | None = None, **lane_kw: Any) -> AsyncIterator[RsuBench]:
    """An emulated RSU, laned's RsuLink connected to it, and the scripted lane running."""
    prof = get_profile(profile)
    kw: dict[str, Any] = dict(silence_timeout=5.0, backoff=(0.05, 0.4), name=f"rsu-{profile}-{transport}")
    kw.update(link_kw or {})
    async with RsuEmulator(obus, profile=prof, transport=transport, settings=settings) as emu:
        if transport == "pty":
            link = RsuLink(prof, port=emu.path, **kw)
        else:
            host, port = emu.address
            link = RsuLink(prof, host=host, tcp_port=port, **kw)
        status = StatusLog(link)
        lane = ScriptedLane(link, prof, **lane_kw)
        async with link:
            await status.wait(True)
            task = asyncio.create_task(lane.run(), name="scripted-lane")
            try:
                yield RsuBench(emu, link, status, lane, prof)
            except BaseException:
                print(describe(emu, link, status))  # shown by pytest with the failure
                raise
            finally:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass


def describe(emu: RsuEmulator, link: RsuLink, status: StatusLog) -> str:
    """What happened on the bench, for a failing test's report."""
    lines = [f"emulator state {emu.state}, counters {dict(emu.counters)}",
             f"link drops {dict(link.drops)}, stats {dict(link.stats)}",
             "link status: " + "; ".join(f"{t:.3f} {s.connected} {s.reason}" for t, s in status.events)]
    lines += [f"{e.at:.4f} {e.direction} {e.name} {e.note}" for e in emu.log[-40:]]
    lines += [f"{e.at:.4f} event {e.kind} {e.detail}" for e in emu.events[-20:]]
    return "\n".join(lines)


# -- a raw pty peer, for byte-exact driver tests ---------------------------------------------------

class PtyPeer:
    """The RSU side as bare bytes: the master end of a pty pair, reading as slowly as told."""

    def __init__(self, profile: Profile) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self.received = bytearray()
        self._changes = Changes()
        self._decoder = FrameDecoder(profile)
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
        except OSError:
            return
        if data:
            self.received += data
            self._frames += [d for d in self._decoder.feed(data) if isinstance(d, Decoded)]
            self._changes.notify()

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:  # small test frames: the pty buffer takes them at once
            n = os.write(self.master, view)
            view = view[n:]

    async def wait_bytes(self, n: int, timeout: float = T) -> bytes:
        self.start_reading(self.chunk)
        await self._changes.wait_for(lambda: len(self.received) >= n, timeout, f"{n} bytes")
        return bytes(self.received)

    async def next_frame(self, timeout: float = T) -> Decoded:
        self.start_reading(self.chunk)
        await self._changes.wait_for(lambda: self._frames, timeout, "a frame")
        return self._frames.pop(0)

    def close(self) -> None:
        if self._reading:
            self._loop.remove_reader(self.master)
            self._reading = False
        if not self.closed:
            os.close(self.master)
            os.close(self.slave)
            self.closed = True


async def next_frame(it: AsyncIterator[RsuFrame], timeout: float = T) -> RsuFrame:
    return await asyncio.wait_for(anext(it), timeout)
