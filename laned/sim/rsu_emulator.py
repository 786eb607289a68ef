"""An emulated RSU on a real pseudo-terminal or a TCP socket, for hil_tests and ``laned sim``.

It speaks every profile of :mod:`laned.protocol` (``national`` and ``network2019`` in
the classic envelope; ``jinyi`` and ``gb2019tcp`` with OBU-id-prefixed raw payloads, see
:mod:`laned.sim.rsu_frames`) and follows the RSU's state machine of RSU_PROTOCOL.md,
"The transaction"::

    C0 → B0 (ready)          C1 → searching
    OBU in range → B2        C1 → B3        C1 → B4        C6 → purchase → B5      C1 → searching
    C2 stop_type 1: drop the OBU (search again)     C2 stop_type 2: resend the current frame
    C8 (network2019): the B5 of the OBU's last purchase again (same TAC), or error 35/36

* C6 is accepted only right after a good B4; any other C6 is ignored and counted
  (``counters["c6_ignored"]``) — the RSU cannot charge a card it is not talking to.
* An RSU frame the lane leaves unanswered for ``answer_timeout`` (1.1 s, source (1)) makes
  the RSU abandon the OBU and search again. After its transaction (completed, stopped
  by C2, abandoned) an OBU drives on — unless its scenario sets ``redetect`` (reported
  once more after ``redetect_interval``: "OBU seen again after paying") or a ``dwell``
  (reported again every ``redetect_interval`` while it is in the zone, for at most
  ``reread_for`` seconds after its first transaction). OBUs waiting in the zone are
  served one transaction at a time, in the order they arrived.
* A purchase takes the amount off the balance, computes a TAC deterministically
  (HMAC-SHA256 with a fixed key over OBU id, amount and purchase time, first 4 bytes) and
  increments the PSAM and card serials; it is appended to :attr:`RsuEmulator.charges`
  (an OBU charged twice shows up twice there).
* With no transaction running it sends heartbeats (B2 ``00000000 80``; B1 in gb2019tcp)
  every ``heartbeat_interval`` seconds.

Everything sent and received is in :attr:`RsuEmulator.log`: for a frame sent, the
``time.perf_counter()`` at which its last byte was written; for a frame received, the
moment its first byte arrived and the turnaround since the RSU frame it answers.

Faults (:mod:`laned.sim.rsu_faults`): corrupted, dropped, duplicated, delayed and split
frames, noise between frames — per frame, per OBU scenario or by probability from a
seeded RNG; :meth:`RsuEmulator.silence` stops all output for a while;
:meth:`RsuEmulator.vanish` / :meth:`RsuEmulator.restore` take the port away and bring it
back (a pty comes back under a new path, reported through ``on_port_changed`` and the
``port_changed`` event; TCP listens again on the same port).

Command line: ``python -m laned.sim.rsu_emulator --pty`` prints the tty path and serves
the built-in demo traffic; ``--tcp 127.0.0.1:9527``; ``--profile``; ``--scenario FILE``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import enum
import hashlib
import hmac
import logging
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from laned.protocol.codec import Decoded, FrameDecoder, encode_message
from laned.protocol.errors import ProtocolError
from laned.protocol.messages import Message
from laned.protocol.profiles import Profile, get_profile
from laned.protocol.profiles.common import STOP_RESEND, STOP_SEARCH_AGAIN
from laned.protocol.rsctl import reply_rsctl
from laned.sim.emulator_ports import PtyPort, TcpPort
from laned.sim.rsu_faults import FaultPlan, FaultSpec, plan_writes
from laned.sim.rsu_frames import LaneFrame, Purchase, RsuDialect, RsuIdentity
from laned.sim.rsu_scenario import Fault, ObuScenario, demo_scenario, file_0019, load_obu_scenarios

log = logging.getLogger("laned.sim.rsu")

# RSU_PROTOCOL.md: "the RSU (1) gives up on the OBU and silently returns to searching if
# the PC is silent for about 1.1 s".
ANSWER_TIMEOUT_S = 1.1
# Document (3): heartbeat every 3–60 s with no OBU in range.
HEARTBEAT_INTERVAL_S = 10.0
# gb2019tcp: "The RSU retransmits an unanswered frame up to 3 times, 120 ms apart".
GB2019_RETRANSMITS = 3
RETRANSMIT_INTERVAL_S = 0.12
# B5 ErrorCodes the emulated card produces by itself (RSU_PROTOCOL.md, "B5 ErrorCode").
B5_REFUSED_BY_CARD = 0x17
B5_REFETCH_FAILED = 0x36
# C6 TradeMode 1 (network2019): write EF04 / the station record only, no purchase.
TRADE_WRITE_ONLY = 1


class RsuState(enum.StrEnum):
    UNINIT = "uninit"  # powered up, waiting for C0
    READY = "ready"  # B0 sent, waiting for C1 to start searching
    SEARCHING = "searching"
    IN_TRANSACTION = "in_transaction"  # a B2–B5 awaits the lane's answer
    OFF = "off"  # switched off by C4 00


class Stage(enum.StrEnum):
    """The RSU frame the lane must answer next."""

    B2 = "B2"
    B3 = "B3"
    B4 = "B4"
    B5 = "B5"


@dataclass(frozen=True)
class EmulatorSettings:
    answer_timeout: float = ANSWER_TIMEOUT_S
    heartbeat_interval: float | None = HEARTBEAT_INTERVAL_S  # None: no heartbeats
    redetect_interval: float = 5.0  # an OBU still in the zone is reported again after this
    require_init: bool = True  # power up waiting for C0 (False: searching at once)
    baud: int | None = None  # pace output at this rate, 10 bits a byte (None: as fast as the port takes)
    retransmits: int | None = None  # None: the profile's habit (gb2019tcp 3, others 0)
    retransmit_interval: float = RETRANSMIT_INTERVAL_S
    seed: int = 0
    identity: RsuIdentity = RsuIdentity()
    tac_key: bytes = b"laned RSU emulator TAC key"
    psam_serial_start: int = 1000


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One frame on the link. ``at`` is ``time.perf_counter()``: for ``tx`` when its last
    byte was written, for ``rx`` when its first byte arrived."""

    direction: Literal["tx", "rx"]
    name: str  # B0…B5, HB (heartbeat), C0…C8, "other"
    at: float
    wire: bytes
    message: Message | None
    rsctl: int | None = None
    seq: int | None = None
    obu_id: str | None = None
    note: str = ""  # tx: faults applied, "silenced", "no lane connected"; rx: why it was ignored
    answers: int | None = None  # rx: RSCTL/SEQ of the RSU frame it answers (the lane should swap it)
    turnaround: float | None = None  # rx: seconds since that RSU frame's last byte was written


@dataclass(frozen=True, slots=True)
class EmuEvent:
    kind: str  # charged, abandoned, c6_ignored, port_vanished, port_changed, lane_connected, rx_error …
    at: float  # time.perf_counter()
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Obu:
    scenario: ObuScenario
    arrival: float  # monotonic
    balance: int
    station: bytes | None  # the 40-byte record in 0019 (None: never written)
    icc_serial: int = 0
    done_at: float | None = None  # end of its last transaction
    gone: bool = False  # left the zone
    redetected: bool = False  # a ``redetect`` OBU already got its second report
    first_done_at: float | None = None  # end of its first transaction: ``reread_for`` runs from here
    transactions: int = 0  # ended so far
    last_purchase: Purchase | None = None

    @property
    def obu_id(self) -> str:
        return self.scenario.obu_id

    def in_zone(self, now: float) -> bool:
        if self.gone or now < self.arrival:
            return False
        dwell = self.scenario.dwell
        return dwell is None or now < self.arrival + dwell


@dataclass
class _Tx:
    obu: _Obu
    stage: Stage
    message: Message
    error: bool  # the frame awaiting an answer is an error frame
    rsctl: int | None = None
    seq: int | None = None
    written_at: float | None = None  # perf_counter of its last byte (None: not on the wire yet)
    deadline: float | None = None  # monotonic
    retransmits: int = 0
    last_write: float = 0.0  # monotonic
    current: _Out | None = None  # the queued frame that awaits the answer
    answered: set[int] = field(default_factory=set)  # RSCTL/SEQ of the answers already acted on


@dataclass
class _Out:
    message: Message
    name: str
    obu_id: str | None
    faults: list[FaultSpec]
    tx: _Tx | None = None
    rsctl: int | None = None
    seq: int | None = None
    note: str = ""


class RsuEmulator:
    """``async with RsuEmulator(obus, profile="national") as emu:`` — see the module doc."""

    def __init__(self, obus: Iterable[ObuScenario] = (), *, profile: Profile | str = "national",
                 transport: Literal["pty", "tcp"] = "pty", host: str = "127.0.0.1", port: int = 0,
                 settings: EmulatorSettings = EmulatorSettings(), name: str = "rsu-emulator",
                 on_port_changed: Callable[[str], None] | None = None) -> None:
        self.profile = get_profile(profile) if isinstance(profile, str) else profile
        if transport not in ("pty", "tcp"):
            raise ValueError(f"transport must be 'pty' or 'tcp', got {transport!r}")
        self.transport = transport
        self.settings = settings
        self.name = name
        self.dialect = RsuDialect(self.profile)
        self.faults = FaultPlan(settings.seed)
        self.on_port_changed = on_port_changed
        self._host, self._port_no = host, port
        self._initial = list(obus)

        self.log: list[LogEntry] = []
        self.events: list[EmuEvent] = []
        self.charges: list[Purchase] = []
        self.counters: Counter[str] = Counter()
        self.state = RsuState.SEARCHING if not settings.require_init else RsuState.UNINIT

        self._obus: dict[str, _Obu] = {}
        self._tx: _Tx | None = None
        self._rsctl_n = -1  # -1: the first frame after power-up carries 98
        self._seq_n = 0
        self._psam_serial = settings.psam_serial_start
        self._ef04_length = 0
        self._t0 = 0.0
        self._silent_until = 0.0
        self._last_sent = 0.0  # monotonic: when the latest frame was queued
        self._port: PtyPort | TcpPort | None = None
        self._decoder = FrameDecoder(self.profile)
        self._rx_offset = 0
        self._rx_chunks: deque[tuple[int, float]] = deque(maxlen=64)
        self._outq: asyncio.Queue[_Out] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._changed = asyncio.Event()
        self._port_changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = False

    # -- lifecycle -----------------------------------------------------------------------
    async def __aenter__(self) -> RsuEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        self._t0 = time.monotonic()
        self._last_sent = self._t0
        for o in self._initial:
            self.add_obu(o)
        if self.transport == "pty":
            self._port = PtyPort(self._on_bytes, self._new_stream, self.name)
            self._port.open()
        else:
            self._port = TcpPort(self._on_bytes, self._new_stream, self._host, self._port_no, self.name)
            await self._port.open()
        log.info("%s: %s RSU (%s) on %s", self.name, self.profile.name, self.state, self._port.address)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._run(), name=f"{self.name}-rsu"),
                       loop.create_task(self._sender(), name=f"{self.name}-sender")]

    async def close(self) -> None:
        self._stopped = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except asyncio.CancelledError:
                pass
        self._tasks = []
        if self._port is not None:
            await self._port.close()

    # -- where the lane finds it -----------------------------------------------------------
    @property
    def path(self) -> str:
        """The tty the lane opens (pty transport); changes after :meth:`restore`."""
        if not isinstance(self._port, PtyPort) or self._port.path is None:
            raise RuntimeError(f"{self.name} has no pty (transport {self.transport})")
        return self._port.path

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the lane connects to (TCP transport)."""
        if not isinstance(self._port, TcpPort):
            raise RuntimeError(f"{self.name} is not on TCP (transport {self.transport})")
        return self._port.host, self._port.port

    @property
    def tcp_port(self) -> int:
        """The TCP port the emulator listens on (stays the same across vanish/restore)."""
        return self.address[1]

    @property
    def port_changed(self) -> asyncio.Event:
        """Set (and replaced by a fresh event) each time :meth:`restore` brings the port back."""
        return self._port_changed

    def elapsed(self) -> float:
        """Seconds since start — the clock of ``ObuScenario.arrive_at``."""
        return time.monotonic() - self._t0

    # -- scenario --------------------------------------------------------------------------
    def add_obu(self, obu: ObuScenario, *, arrive_in: float | None = None, keep_card: bool = False) -> None:
        """Put ``obu`` into the traffic: at ``obu.arrive_at`` after start, or ``arrive_in``
        seconds from now. An OBU with the same id is replaced — its card state too, unless
        ``keep_card``: then it is the same vehicle back in the zone, with the balance, the
        last purchase (what a C8 re-fetches) and the serials its card has now."""
        arrival = self._t0 + obu.arrive_at if arrive_in is None else time.monotonic() + arrive_in
        new = _Obu(obu, arrival, obu.balance, obu.entry.record() if obu.entry else None)
        old = self._obus.get(obu.obu_id)
        if keep_card and old is not None:
            new.balance, new.station, new.icc_serial = old.balance, old.station, old.icc_serial
            new.last_purchase = old.last_purchase
        self._obus[obu.obu_id] = new
        self._poke()

    def remove_obu(self, obu_id: str) -> None:
        """The OBU leaves the zone now (a transaction with it runs on until it ends)."""
        o = self._obus.get(obu_id.lower())
        if o is not None:
            o.gone = True
            self._poke()

    def balance(self, obu_id: str) -> int:
        return self._obus[obu_id.lower()].balance

    def last_purchase(self, obu_id: str) -> Purchase | None:
        return self._obus[obu_id.lower()].last_purchase

    # -- faults ----------------------------------------------------------------------------
    def inject(self, fault: Fault | str, frame: str | None = None, count: int = 1, *, delay: float | None = None,
               pieces: int = 3, noise: bytes | None = None) -> None:
        """Put ``fault`` on the next ``count`` frames named ``frame`` (B0…B5, HB; None: any)."""
        self.faults.inject(FaultSpec(Fault(fault), delay, pieces, noise), frame, count)

    def set_fault_probability(self, fault: Fault | str, probability: float, frames: set[str] | None = None, *,
                              delay: float | None = None, pieces: int = 3, noise: bytes | None = None) -> None:
        """Put ``fault`` on each frame (named in ``frames``, or any) with ``probability``,
        drawn from the RNG seeded with ``settings.seed``."""
        self.faults.set_probability(FaultSpec(Fault(fault), delay, pieces, noise), probability, frames)

    def silence(self, duration: float) -> None:
        """Send nothing at all (heartbeats included) for ``duration`` seconds."""
        self._silent_until = time.monotonic() + duration
        self._event("silence", duration=duration)
        self._poke()

    async def vanish(self) -> None:
        """The port disappears: a pty is torn down, the TCP listener and connection closed."""
        assert self._port is not None
        await self._port.vanish()
        self._abort_tx("port vanished")
        self._event("port_vanished")
        log.info("%s: port vanished", self.name)

    async def restore(self) -> str:
        """The port is back (a pty under a new path); returns the path or host:port."""
        assert self._port is not None
        where = await self._port.restore()
        log.info("%s: port back on %s", self.name, where)
        self._event("port_changed", path=where)
        changed, self._port_changed = self._port_changed, asyncio.Event()
        changed.set()
        if self.on_port_changed is not None:
            self.on_port_changed(where)
        return where

    # -- waiting (tests) --------------------------------------------------------------------
    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 5.0, what: str = "") -> Any:
        """Wait until ``predicate()`` is truthy (re-checked on every frame and event)."""
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            left = deadline - time.monotonic()
            if left <= 0:
                recent = ", ".join(f"{e.direction}:{e.name}{'(' + e.note + ')' if e.note else ''}"
                                   for e in self.log[-12:])
                raise TimeoutError(f"{self.name}: waited {timeout} s for {what or predicate}; state {self.state}; "
                                   f"last frames: {recent}")
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), left)
            except TimeoutError:
                pass

    async def expect_frame(self, direction: Literal["tx", "rx"], name: str, *, since: int = 0,
                           timeout: float = 5.0) -> LogEntry:
        """The first log entry at index >= ``since`` with this direction and name."""
        def find() -> LogEntry | None:
            return next((e for e in self.log[since:] if e.direction == direction and e.name == name), None)
        entry: LogEntry = await self.wait_for(find, timeout, f"{direction} {name}")
        return entry

    async def expect_event(self, kind: str, *, since: int = 0, timeout: float = 5.0) -> EmuEvent:
        def find() -> EmuEvent | None:
            return next((e for e in self.events[since:] if e.kind == kind), None)
        event: EmuEvent = await self.wait_for(find, timeout, f"event {kind}")
        return event

    def sent(self, name: str) -> list[LogEntry]:
        """Frames of this name that went on the wire (dropped and silenced ones excluded)."""
        return [e for e in self.log if e.direction == "tx" and e.name == name and e.wire]

    def received(self, name: str) -> list[LogEntry]:
        return [e for e in self.log if e.direction == "rx" and e.name == name]

    def turnarounds(self) -> list[float]:
        """The lane's answer times: first byte of each answer − last byte of the RSU frame."""
        return [e.turnaround for e in self.log if e.direction == "rx" and e.turnaround is not None]

    # -- internals: notification ---------------------------------------------------------------
    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _poke(self) -> None:
        self._wake.set()
        self._notify()

    def _event(self, kind: str, **detail: Any) -> None:
        self.events.append(EmuEvent(kind, time.perf_counter(), detail))
        self._notify()

    def _append(self, entry: LogEntry) -> None:
        self.log.append(entry)
        self._notify()

    # -- internals: sending --------------------------------------------------------------------
    def _next_ids(self) -> tuple[int | None, int | None]:
        env = self.profile.envelope
        if env == "classic":
            # Document (3): RSU frames carry X8, X = 9 for the first frame after power-up.
            if self._rsctl_n < 0:
                self._rsctl_n = 0
                return 0x98, None
            rsctl = (self._rsctl_n << 4) | 0x08
            self._rsctl_n = (self._rsctl_n + 1) & 0x07
            return rsctl, None
        if env == "gb2019tcp":
            seq = self._seq_n  # RSU SEQ 0X
            self._seq_n = (self._seq_n + 1) & 0x0F
            return None, seq
        return None, None

    def _send(self, message: Message, name: str, obu: _Obu | None = None, tx: _Tx | None = None,
              *, note: str = "", faults: Iterable[FaultSpec] = ()) -> None:
        rsctl, seq = self._next_ids()
        specs = list(faults)
        if obu is not None and note not in ("resend", "refetch"):
            # A scenario's faults hit the first sending of a frame; what the lane asks for
            # again (C2 stop type 2) goes out clean.
            specs += [FaultSpec(f) for f in obu.scenario.faults.get(name, ())]
        out = _Out(message, name, obu.obu_id if obu else None, specs, tx, rsctl, seq, note)
        if tx is not None:
            tx.rsctl, tx.seq, tx.written_at, tx.deadline, tx.current = rsctl, seq, None, None, out
        self._last_sent = time.monotonic()
        self._outq.put_nowait(out)

    async def _sender(self) -> None:
        while True:
            out = await self._outq.get()
            try:
                await self._transmit(out)
            except asyncio.CancelledError:
                raise
            except Exception:  # the emulator must keep serving; a bug here is logged, loudly
                log.exception("%s: sending %s failed", self.name, out.name)

    async def _transmit(self, out: _Out) -> None:
        wire = encode_message(self.profile, out.message, rsctl=out.rsctl, seq=out.seq)
        specs = out.faults + self.faults.draw(out.name)
        note = ",".join([out.note] * bool(out.note) + [s.fault.value for s in specs])
        now = time.monotonic()
        port = self._port
        if now < self._silent_until:
            self._start_answer_timer(out, None)
            self._logged_tx(out, b"", time.perf_counter(), (note + ",silenced").lstrip(","))
            return
        writes = plan_writes(wire, specs, self.profile.envelope, self.faults.rng)
        if not writes:
            # The RSU believes it sent the frame (the line lost it), so it waits for the
            # answer as usual and gives the OBU up when none comes.
            self.counters["tx_dropped"] += 1
            self._start_answer_timer(out, None)
            self._logged_tx(out, b"", time.perf_counter(), note)
            return
        on_wire = b""
        for pause, data in writes:
            if pause:
                await asyncio.sleep(pause)  # an injected delay or split gap: this is the fault itself
            if port is None or not await self._write(port, data):
                self._logged_tx(out, on_wire, time.perf_counter(), (note + ",no lane connected").lstrip(","))
                return
            on_wire += data
        assert port is not None  # writes is not empty, and the loop returned if there was no port
        written_at = await port.drain()
        self.counters["tx_frames"] += 1
        self._start_answer_timer(out, written_at)
        self._logged_tx(out, on_wire, written_at, note)

    def _start_answer_timer(self, out: _Out, written_at: float | None) -> None:
        # The answer timer runs from the moment the lane can have the whole frame — unless
        # the lane has answered already and the transaction moved on to another frame.
        if out.tx is not None and out.tx is self._tx and out.tx.current is out:
            out.tx.written_at = written_at
            out.tx.last_write = time.monotonic()
            out.tx.deadline = out.tx.last_write + self.settings.answer_timeout
            self._wake.set()

    async def _write(self, port: PtyPort | TcpPort, data: bytes) -> bool:
        baud = self.settings.baud
        if not baud:
            return port.write(data)
        # Pace at the line rate, 10 bits a byte (8N1): a byte reaches the lane once its
        # stop bit is out, so byte k (from 0) is written (k + 1)·10/baud after the start.
        start = time.monotonic()
        sent = 0
        while sent < len(data):
            allowed = int((time.monotonic() - start) * baud / 10)
            if allowed <= sent:
                await asyncio.sleep((sent + 1) * 10 / baud - (time.monotonic() - start))
                continue
            n = min(len(data), allowed) - sent
            if not port.write(data[sent:sent + n]):
                return False
            sent += n
        return True

    def _logged_tx(self, out: _Out, wire: bytes, at: float, note: str) -> None:
        self._append(LogEntry("tx", out.name, at, wire, out.message, out.rsctl, out.seq, out.obu_id, note))
        log.debug("%s: sent %s %s%s", self.name, out.name, wire.hex(" "), f" ({note})" if note else "")

    # -- internals: receiving -----------------------------------------------------------------
    def _new_stream(self) -> None:
        """A fresh byte stream: a new pty or a new lane connection."""
        self._decoder = FrameDecoder(self.profile)
        self._rx_offset = 0
        self._rx_chunks.clear()
        self._event("lane_connected" if self.transport == "tcp" else "pty_opened")

    def _on_bytes(self, data: bytes, at: float) -> None:
        self._rx_chunks.append((self._rx_offset, at))
        self._rx_offset += len(data)
        for item in self._decoder.feed(data):
            if isinstance(item, ProtocolError):
                self.counters[f"rx_{item.reason}"] += 1
                self._event("rx_error", reason=item.reason, data=item.data.hex())
                log.info("%s: dropped a lane frame: %s", self.name, item)
                continue
            self._on_frame(item, self._first_byte_time(item.offset, at))

    def _first_byte_time(self, offset: int, default: float) -> float:
        for start, at in reversed(self._rx_chunks):
            if start <= offset:
                return at
        return default

    def _on_frame(self, item: Decoded, first_byte_at: float) -> None:
        frame = self.dialect.read(item.message)
        self.counters[f"rx_{frame.kind}"] += 1
        tx = self._tx
        answers = None
        turnaround = None
        if tx is not None and frame.kind in ("C1", "C2", "C6") and frame.obu_id == tx.obu.scenario.obu_bytes:
            answers = tx.rsctl if tx.rsctl is not None else tx.seq
            if tx.written_at is not None:
                turnaround = first_byte_at - tx.written_at
            expected = reply_rsctl(answers) if answers is not None else None
            got = item.rsctl if item.rsctl is not None else item.seq
            if expected is not None and got != expected:
                self.counters["rsctl_not_swapped"] += 1
            # (Not a C2: a resend request answers a frame the lane could not read, so it
            # cannot carry that frame's RSCTL.)
            if frame.kind != "C2" and got is not None and got != expected and got in tx.answered:
                # A second answer to a frame this transaction is already past (the lane
                # answered a frame the line duplicated): a real RSU drops it by its RSCTL.
                note = self._ignored("stale_answer", frame, f"answers an earlier frame (RSCTL/SEQ {got:02x})")
                self._append(LogEntry("rx", frame.kind, first_byte_at, item.raw.wire, item.message, item.rsctl,
                                      item.seq, tx.obu.obu_id, note, answers, turnaround))
                self._wake.set()
                return
            if got is not None and got == expected:
                tx.answered.add(got)
        note = self._handle(frame)
        obu_id = frame.obu_id.hex() if frame.obu_id else None
        self._append(LogEntry("rx", frame.kind, first_byte_at, item.raw.wire, item.message, item.rsctl, item.seq,
                              obu_id, note, answers, turnaround))
        self._wake.set()

    # -- internals: the state machine -----------------------------------------------------------
    def _handle(self, f: LaneFrame) -> str:
        """Act on one lane frame; returns a note when it was ignored."""
        if f.kind == "C0":
            self._abort_tx("C0 re-initialised the RSU")
            self._ef04_length = f.ef04_length
            self.state = RsuState.READY
            self._send(self.dialect.status(self.settings.identity), "B0")
            return ""
        if f.kind == "C4":
            if f.control == 0:
                self._abort_tx("switched off by C4")
                self.state = RsuState.OFF
            elif self.state is RsuState.OFF:
                self.state = RsuState.SEARCHING
            return ""
        if f.kind == "C8":
            return self._refetch(f)
        tx = self._tx
        if f.kind == "C6" and (tx is None or tx.stage is not Stage.B4 or tx.error
                               or f.obu_id != tx.obu.scenario.obu_bytes):
            return self._ignored("c6_ignored", f, "C6 not right after a B4 of this OBU")
        if tx is None:
            if f.kind == "C1":
                if self.state is RsuState.UNINIT:
                    return self._ignored("c1_before_init", f, "C1 before C0: the RSU is not initialised")
                if self.state is RsuState.READY:
                    self.state = RsuState.SEARCHING
                return ""
            return self._ignored(f"unexpected_{f.kind}", f, f"{f.kind} with no OBU in a transaction")
        if f.obu_id != tx.obu.scenario.obu_bytes:
            return self._ignored("obu_mismatch", f, f"{f.kind} for another OBU than {tx.obu.obu_id}")
        if f.kind == "C2":
            if f.stop_type == STOP_RESEND:
                self._send(tx.message, tx.stage.value, tx.obu, tx, note="resend")
                return ""
            self._end_tx("stopped by the lane" if f.stop_type == STOP_SEARCH_AGAIN else f"stop type {f.stop_type}")
            return ""
        if f.kind == "C6":
            self._purchase(tx, f)
            return ""
        if f.kind != "C1":
            return self._ignored(f"unexpected_{f.kind}", f, f"{f.kind} in a transaction")
        if tx.error or tx.stage is Stage.B5:
            self._end_tx("completed" if not tx.error else f"ended after an error {tx.stage.value}")
        elif tx.stage is Stage.B2:
            self._step(tx, Stage.B3)
        elif tx.stage is Stage.B3:
            self._step(tx, Stage.B4)
        else:  # C1 after a good B4: the RSU waits for C6 or C2
            return self._ignored("c1_after_b4", f, "C1 after B4: the RSU waits for C6 or C2")
        return ""

    def _ignored(self, counter: str, f: LaneFrame, why: str) -> str:
        self.counters[counter] += 1
        self._event(counter, frame=f.kind, obu_id=f.obu_id.hex() if f.obu_id else None)
        log.info("%s: ignored %s: %s", self.name, f.kind, why)
        return f"ignored: {why}"

    def _step(self, tx: _Tx, stage: Stage) -> None:
        o = tx.obu
        err = o.scenario.errors.get(stage.value, 0)
        if stage is Stage.B3:
            msg = self.dialect.vehicle(o.scenario, err)
        else:
            msg = self.dialect.card(o.scenario, o.balance, file_0019(o.station), err, self._ef04_length)
        tx.stage, tx.message, tx.error, tx.retransmits = stage, msg, bool(err), 0
        self._send(msg, stage.value, o, tx)

    def _start_tx(self, o: _Obu) -> None:
        err = o.scenario.errors.get("B2", 0)
        msg = self.dialect.obu(o.scenario, err)
        self._tx = _Tx(o, Stage.B2, msg, bool(err))
        self.state = RsuState.IN_TRANSACTION
        self._event("obu_detected", obu_id=o.obu_id)
        self._send(msg, "B2", o, self._tx)

    def _purchase(self, tx: _Tx, f: LaneFrame) -> None:
        o, sc = tx.obu, tx.obu.scenario
        amount = 0 if f.trade_mode == TRADE_WRITE_ONLY else (f.amount or 0)
        err = sc.errors.get("B5", 0)
        debit = sc.card_type.name == "STORED_VALUE" or sc.debit_credit_card
        if not err and debit and sc.card_type.name == "STORED_VALUE" and o.balance < amount:
            err = B5_REFUSED_BY_CARD  # the card refuses a purchase above its balance
        p: Purchase | None = None
        if not err:
            self._psam_serial += 1
            o.icc_serial += 1
            if debit:
                # A credit card is charged whatever its balance; its balance field is
                # unsigned on the wire (B5 card_balance), so it stops at 0.
                o.balance = max(0, o.balance - amount)
            when = f.purchase_time or dt.datetime.now().replace(microsecond=0)
            station = f.station or bytes(40)
            p = Purchase(o.obu_id, amount, self._tac(o.scenario.obu_bytes, amount, when, self._psam_serial),
                         o.balance, self._psam_serial, o.icc_serial, when,
                         int.from_bytes(station[5:9], "big"), station)
            o.station = station
            o.last_purchase = p
            self.charges.append(p)
            self._event("charged", obu_id=o.obu_id, amount=amount, tac=p.tac.hex(), balance_after=o.balance)
            log.info("%s: OBU %s charged %d fen, balance %d, TAC %s", self.name, o.obu_id, amount, o.balance,
                     p.tac.hex())
        msg = self.dialect.result(sc.obu_bytes, p, self.settings.identity, err)
        tx.stage, tx.message, tx.error, tx.retransmits = Stage.B5, msg, bool(err), 0
        lost = [FaultSpec(Fault.DROP)] if sc.lost_b5 and p is not None else []
        self._send(msg, "B5", o, tx, note="lost_b5" if lost else "", faults=lost)

    def _tac(self, obu_id: bytes, amount: int, when: dt.datetime, psam_serial: int) -> bytes:
        # Deterministic: HMAC-SHA256 over OBU id + amount + purchase time, first 4 bytes.
        # (A real card's TAC also covers its serials; the emulator keeps it reproducible.)
        del psam_serial
        data = obu_id + amount.to_bytes(4, "big") + when.strftime("%Y%m%d%H%M%S").encode()
        return hmac.new(self.settings.tac_key, data, hashlib.sha256).digest()[:4]

    def _refetch(self, f: LaneFrame) -> str:
        """C8: the B5 of the OBU's last purchase again, or the scenario's error."""
        o = self._obus.get(f.obu_id.hex()) if f.obu_id else None
        if o is None:
            return self._ignored("unexpected_C8", f, "C8 for an OBU the RSU never saw")
        err = o.scenario.refetch_error or (0 if o.last_purchase else B5_REFETCH_FAILED)
        msg = self.dialect.result(o.scenario.obu_bytes, o.last_purchase, self.settings.identity, err)
        self._event("refetched", obu_id=o.obu_id, error=err)
        tx = self._tx if self._tx is not None and self._tx.obu is o else None
        if tx is not None:
            tx.stage, tx.message, tx.error, tx.retransmits = Stage.B5, msg, bool(err), 0
        self._send(msg, "B5", o, tx, note="refetch")
        return ""

    def _end_tx(self, why: str) -> None:
        tx, self._tx = self._tx, None
        if tx is None:
            return
        tx.obu.done_at = time.monotonic()
        if tx.obu.first_done_at is None:
            tx.obu.first_done_at = tx.obu.done_at
        tx.obu.transactions += 1
        if tx.obu.scenario.dwell is None:
            if tx.obu.scenario.redetect and not tx.obu.redetected:
                tx.obu.redetected = True  # still in the zone: reported again after redetect_interval
            else:
                tx.obu.gone = True  # it drove on
        if self.state is RsuState.IN_TRANSACTION:
            self.state = RsuState.SEARCHING
        self._event("transaction_end", obu_id=tx.obu.obu_id, why=why, stage=tx.stage.value)
        self._poke()

    def _abort_tx(self, why: str) -> None:
        if self._tx is not None:
            self._end_tx(why)

    def _abandon(self, tx: _Tx) -> None:
        self.counters["abandoned"] += 1
        self._event("abandoned", obu_id=tx.obu.obu_id, stage=tx.stage.value)
        log.info("%s: no answer to %s of OBU %s within %.2f s; OBU abandoned, searching again", self.name,
                 tx.stage.value, tx.obu.obu_id, self.settings.answer_timeout)
        self._end_tx(f"no answer to {tx.stage.value}")

    # -- internals: timers ---------------------------------------------------------------------
    async def _run(self) -> None:
        while not self._stopped:
            self._wake.clear()
            delay = self._tick(time.monotonic())
            try:
                await asyncio.wait_for(self._wake.wait(), delay)
            except TimeoutError:
                pass

    def _retransmits(self) -> int:
        n = self.settings.retransmits
        if n is None:
            return GB2019_RETRANSMITS if self.profile.envelope == "gb2019tcp" else 0
        return n

    def _tick(self, now: float) -> float | None:
        """Fire what is due; return seconds until the next timer (None: none pending)."""
        due: list[float] = []
        tx = self._tx
        if tx is not None and tx.deadline is not None:
            if now >= tx.deadline:
                self._abandon(tx)
                return 0.0
            due.append(tx.deadline)
            if tx.retransmits < self._retransmits():
                at = tx.last_write + self.settings.retransmit_interval
                if now >= at:
                    tx.retransmits += 1
                    tx.last_write = now
                    self._outq.put_nowait(_Out(tx.message, tx.stage.value, tx.obu.obu_id, [], None, tx.rsctl,
                                               tx.seq, "retransmit"))
                    at = now + self.settings.retransmit_interval
                due.append(at)
        port_up = self._port is not None and self._port.up
        if self._tx is None and self.state is RsuState.SEARCHING and port_up:
            nxt = self._next_obu(now)
            if isinstance(nxt, _Obu):
                self._start_tx(nxt)
                return 0.0
            if nxt is not None:
                due.append(nxt)
        hb = self.settings.heartbeat_interval
        if hb and self._tx is None and port_up:
            if now < self._silent_until:
                due.append(self._silent_until)
            elif now - self._last_sent >= hb:
                self.counters["heartbeats"] += 1
                self._send(self.dialect.heartbeat(), "HB")
                due.append(now + hb)
            else:
                due.append(self._last_sent + hb)
        return max(0.0, min(due) - now) if due else None

    def _next_obu(self, now: float) -> _Obu | float | None:
        """An OBU to report now, or when the next one becomes reportable."""
        later: list[float] = []
        for o in sorted(self._obus.values(), key=lambda o: o.arrival):
            if o.gone:
                continue
            if now < o.arrival:
                later.append(o.arrival)
                continue
            if not o.in_zone(now) or self._rereads_over(o, now):
                o.gone = True
                continue
            if o.done_at is not None and now < o.done_at + self.settings.redetect_interval:
                later.append(o.done_at + self.settings.redetect_interval)
                continue
            return o
        return min(later) if later else None

    @staticmethod
    def _rereads_over(o: _Obu, now: float) -> bool:
        """Whether the RSU stopped reporting an OBU that waits in its zone (``reread_for``)."""
        window = o.scenario.reread_for
        if window is None or o.first_done_at is None:
            return False
        if o.scenario.redetect and o.transactions < 2:
            return False  # "seen again after paying" is reported once more whatever the window
        return now >= o.first_done_at + window


# -- command line -------------------------------------------------------------------------------

def _fault_arg(text: str) -> tuple[Fault, float]:
    name, _, prob = text.partition("=")
    try:
        return Fault(name), float(prob or "0.05")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected FAULT=PROBABILITY with FAULT one of "
                                         f"{', '.join(f.value for f in Fault)}, got {text!r}") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m laned.sim.rsu_emulator",
                                description="An emulated ETC RSU on a pseudo-terminal or TCP, for laned.")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--pty", action="store_true", help="serve on a new pseudo-terminal; prints its path")
    where.add_argument("--tcp", metavar="HOST:PORT", help="listen on TCP, e.g. 127.0.0.1:9527")
    p.add_argument("--profile", default="national", choices=["national", "network2019", "jinyi", "gb2019tcp"])
    p.add_argument("--scenario", metavar="FILE.json", help="OBUs to serve (default: the built-in demo traffic)")
    p.add_argument("--baud", type=int, default=None, help="pace output at this baud rate (10 bits a byte)")
    p.add_argument("--heartbeat", type=float, default=HEARTBEAT_INTERVAL_S, help="heartbeat interval, s")
    p.add_argument("--answer-timeout", type=float, default=ANSWER_TIMEOUT_S, help="abandon an OBU after, s")
    p.add_argument("--redetect", type=float, default=5.0, help="re-detection interval of an OBU, s")
    p.add_argument("--no-init", action="store_true", help="search at once instead of waiting for C0")
    p.add_argument("--fault", type=_fault_arg, action="append", default=[], metavar="FAULT=P",
                   help="put FAULT on each frame with probability P (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="seed of the fault RNG")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("-v", "--verbose", action="store_true", help="log every frame")
    return p


async def _serve(args: argparse.Namespace) -> int:
    obus = load_obu_scenarios(args.scenario) if args.scenario else demo_scenario()
    settings = EmulatorSettings(answer_timeout=args.answer_timeout, heartbeat_interval=args.heartbeat or None,
                                redetect_interval=args.redetect, require_init=not args.no_init, baud=args.baud,
                                seed=args.seed)
    host, port = "127.0.0.1", 0
    if args.tcp:
        host, _, p = args.tcp.rpartition(":")
        port = int(p)
    async with RsuEmulator(obus, profile=args.profile, transport="tcp" if args.tcp else "pty", host=host,
                           port=port, settings=settings,
                           on_port_changed=lambda path: print(f"port: {path}", flush=True)) as emu:
        for fault, prob in args.fault:
            emu.set_fault_probability(fault, prob)
        where = emu.path if args.pty else "{}:{:d}".format(*emu.address)
        print(where, flush=True)
        seen = 0
        deadline = None if args.duration is None else time.monotonic() + args.duration
        while deadline is None or time.monotonic() < deadline:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())

            def more(seen: int = seen) -> bool:  # this round's count, bound now
                return len(emu.events) > seen

            try:
                await emu.wait_for(more, timeout=left if left is not None else 3600)
            except TimeoutError:
                continue
            for ev in emu.events[seen:]:
                if ev.kind not in ("pty_opened",):
                    print(f"{ev.kind} {ev.detail}", flush=True)
            seen = len(emu.events)
        print(f"charges: {len(emu.charges)}; counters: {dict(emu.counters)}", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return asyncio.run(_serve(args))
    except KeyboardInterrupt:
        return 0
    except ValueError as err:  # a bad scenario file names OBU, key and problem
        print(f"rsu_emulator: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
