"""One request scheduler per physical Modbus bus (RTU over RS-485, or Modbus TCP).

RS-485 is half duplex with one master: two requests on the wire at once garble both. A
Modbus TCP gateway in front of an RS-485 segment serialises the same way, and cheap TCP
devices answer one request at a time. So every device on one physical bus (fee display,
IO module …) shares one :class:`ModbusBus`, and the bus is the only code that talks to
pymodbus:

- one worker sends one request, waits for its answer or its timeout, keeps the
  inter-frame gap, and only then takes the next;
- the queue is ordered by :class:`Priority`, then by arrival: a barrier write or a
  safety-loop poll goes before display writes queued earlier; a retry keeps its place;
- each slave id has a circuit breaker: after ``breaker_threshold`` requests in a row get
  no usable answer, requests to that slave fail at once with ``DeviceOffline`` for
  ``breaker_cooldown_s``; then one request goes through as a probe and its answer closes
  the breaker again. A dead display then costs the safety-loop poll nothing;
- when the link drops (TCP connection closed, USB adapter gone) every request fails at
  once with ``DeviceOffline`` while a task reconnects, backing off from
  ``reconnect_min_s`` to ``reconnect_max_s``; :attr:`ModbusBus.generation` counts the
  connections, so a driver can tell that a device may have lost what it was sent.

pymodbus does the framing only. Its own retries, reconnect and "disconnect after N
missing answers" are switched off: they would hide what the bus must count and decide.
"""

from __future__ import annotations

import asyncio
import enum
import heapq
import itertools
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.client.base import ModbusBaseClient
from pymodbus.exceptions import ConnectionException, ModbusException
from pymodbus.pdu import ModbusPDU

from laned.drivers.errors import DeviceError, DeviceOffline, DeviceRejected, DeviceTimeout, UnexpectedReply
from laned.drivers.lane_io import DeviceHealth
from laned.drivers.tasks import cancel_and_wait

log = logging.getLogger(__name__)

# Modbus over Serial Line V1.02, 2.5.1.1: frames are separated by 3.5 character times of
# silence; above 19200 baud the spec fixes the gap at 1.75 ms.
RTU_GAP_CHARS: Final = 3.5
RTU_FAST_BAUD: Final = 19200
RTU_FAST_GAP_S: Final = 0.00175

# pymodbus uses one "timeout" for connecting and for every answer. The bus times both
# itself, so pymodbus gets a bound it never reaches first.
_PYMODBUS_TIMEOUT_S: Final = 3600.0
_PYMODBUS_NEVER_DISCONNECT: Final = 1 << 30

# Modbus exception codes (Modbus Application Protocol V1.1b3, 7) the bus treats specially.
EXC_DEVICE_BUSY: Final = 0x06  # "slave device busy": ask again
EXC_GATEWAY_PATH_UNAVAILABLE: Final = 0x0A  # a TCP gateway cannot reach the RTU slave
EXC_GATEWAY_NO_RESPONSE: Final = 0x0B  # the RTU slave behind the gateway did not answer
_GATEWAY_NO_ANSWER: Final = frozenset({EXC_GATEWAY_PATH_UNAVAILABLE, EXC_GATEWAY_NO_RESPONSE})


def _frozen() -> ConfigDict:
    return ConfigDict(frozen=True, extra="forbid")


# -- where the bus is and how it behaves (config data) ---------------------------------


class TcpLink(BaseModel):
    model_config = _frozen()

    kind: Literal["tcp"] = "tcp"
    host: str = Field(min_length=1)
    port: int = Field(default=502, ge=1, le=65535)

    def describe(self) -> str:
        return f"Modbus TCP {self.host}:{self.port}"


class RtuLink(BaseModel):
    model_config = _frozen()

    kind: Literal["rtu"] = "rtu"
    port: str = Field(min_length=1)  # /dev/ttyUSB0, or a udev name like /dev/laned-rs485
    baudrate: int = Field(default=9600, ge=1200, le=921600)
    parity: Literal["N", "E", "O"] = "N"
    bytesize: Literal[7, 8] = 8
    stopbits: Literal[1, 2] = 1

    def describe(self) -> str:
        return f"Modbus RTU {self.port} {self.baudrate} {self.bytesize}{self.parity}{self.stopbits}"

    @property
    def char_time_s(self) -> float:
        bits = 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits
        return bits / self.baudrate


Link = Annotated[TcpLink | RtuLink, Field(discriminator="kind")]


class BusSettings(BaseModel):
    """Timing of one bus. ``None`` gaps mean "what suits the link" (see the methods)."""

    model_config = _frozen()

    response_timeout_s: float = Field(default=0.3, gt=0.0, le=10.0)
    retries: int = Field(default=1, ge=0, le=5)
    frame_gap_s: float | None = Field(default=None, ge=0.0, le=1.0)
    after_timeout_gap_s: float | None = Field(default=None, ge=0.0, le=10.0)
    breaker_threshold: int = Field(default=3, ge=1, le=100)
    # The breaker and the reconnect backoff decide how long a device that answers again
    # still counts as gone: both are capped so the lane is back in service within 2 s.
    breaker_cooldown_s: float = Field(default=1.0, gt=0.0, le=2.0)
    reconnect_min_s: float = Field(default=0.2, gt=0.0, le=2.0)
    reconnect_max_s: float = Field(default=1.0, gt=0.0, le=2.0)
    connect_timeout_s: float = Field(default=3.0, gt=0.0, le=60.0)

    @model_validator(mode="after")
    def _backoff_grows(self) -> BusSettings:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError(
                f"reconnect_max_s = {self.reconnect_max_s:g} is below reconnect_min_s = "
                f"{self.reconnect_min_s:g}; the reconnect backoff grows from min to max"
            )
        return self

    def gap_for(self, link: TcpLink | RtuLink) -> float:
        """Silence between the end of one exchange and the next request."""
        if self.frame_gap_s is not None:
            return self.frame_gap_s
        if isinstance(link, RtuLink):
            if link.baudrate > RTU_FAST_BAUD:
                return RTU_FAST_GAP_S
            return RTU_GAP_CHARS * link.char_time_s
        return 0.0

    def after_timeout_gap_for(self, link: TcpLink | RtuLink) -> float:
        """Silence after a request went unanswered.

        On RS-485 there is no transaction id: a late answer arriving while the next
        request waits would be taken as that request's answer. Waiting one more response
        timeout lets a late answer arrive, and be discarded, while nothing is pending.
        Modbus TCP matches answers by transaction id and needs no extra wait.
        """
        if self.after_timeout_gap_s is not None:
            return max(self.after_timeout_gap_s, self.gap_for(link))
        if isinstance(link, RtuLink):
            return max(self.response_timeout_s, self.gap_for(link))
        return self.gap_for(link)


class Priority(enum.IntEnum):
    """Which request goes first; lower first, then in order of arrival."""

    SAFETY = 0  # barrier outputs and the input poll the barrier interlock depends on
    CONTROL = 1  # traffic light, alarm
    DISPLAY = 2  # fee display refresh


# -- requests -----------------------------------------------------------------------------


class _BadReply(Exception):
    """The answer does not belong to the request."""


def _span(address: int, count: int) -> str:
    return str(address) if count == 1 else f"{address}..{address + count - 1}"


def _check_span(address: int, count: int, limit: int) -> None:
    if not 0 <= address <= 0xFFFF:
        raise ValueError(f"address {address} is outside 0..65535")
    if not 1 <= count <= limit:
        raise ValueError(f"count {count} is outside 1..{limit}")
    if address + count - 1 > 0xFFFF:
        raise ValueError(f"{count} items from address {address} run past 65535")


@dataclass(frozen=True, slots=True)
class _Read:
    address: int
    count: int = 1

    function_code: ClassVar[int]
    table: ClassVar[str]
    limit: ClassVar[int]
    method: ClassVar[str]

    def __post_init__(self) -> None:
        _check_span(self.address, self.count, self.limit)

    def describe(self) -> str:
        return f"read {self.table} {_span(self.address, self.count)}"

    def send(self, client: ModbusBaseClient, slave: int) -> Awaitable[ModbusPDU]:
        method: Callable[..., Awaitable[ModbusPDU]] = getattr(client, self.method)  # read_coils, read_discrete_inputs…
        return method(self.address, count=self.count, device_id=slave)

    def result(self, pdu: ModbusPDU) -> tuple[Any, ...]:
        values = list(pdu.bits if self.function_code in (1, 2) else pdu.registers)
        # Bit answers are padded to whole bytes; fewer values than asked is a wrong answer.
        if len(values) < self.count:
            raise _BadReply(f"{len(values)} values in the answer, {self.count} asked")
        return tuple(values[: self.count])


class ReadCoils(_Read):
    __slots__ = ()
    function_code = 1
    table = "coils"
    limit = 2000
    method = "read_coils"


class ReadDiscreteInputs(_Read):
    __slots__ = ()
    function_code = 2
    table = "discrete inputs"
    limit = 2000
    method = "read_discrete_inputs"


class ReadHoldingRegisters(_Read):
    __slots__ = ()
    function_code = 3
    table = "holding registers"
    limit = 125
    method = "read_holding_registers"


class ReadInputRegisters(_Read):
    __slots__ = ()
    function_code = 4
    table = "input registers"
    limit = 125
    method = "read_input_registers"


class _Write:
    """What the four writes share; each subclass is a dataclass with its own fields."""

    __slots__ = ()
    address: int
    function_code: ClassVar[int]
    table: ClassVar[str]
    limit: ClassVar[int]
    method: ClassVar[str]
    registers: ClassVar[bool]

    def payload(self) -> Any:
        raise NotImplementedError

    def __post_init__(self) -> None:
        payload = self.payload()
        items = payload if isinstance(payload, tuple) else (payload,)
        _check_span(self.address, len(items), self.limit)
        if self.registers and any(not 0 <= int(v) <= 0xFFFF for v in items):
            raise ValueError(f"register values must be within 0..65535, got {items}")

    def describe(self) -> str:
        payload = self.payload()
        if isinstance(payload, tuple):
            return f"write {self.table} {_span(self.address, len(payload))}"
        state = "" if self.registers else f" {'on' if payload else 'off'}"
        return f"write {self.table} {self.address}{state}"

    def send(self, client: ModbusBaseClient, slave: int) -> Awaitable[ModbusPDU]:
        payload = self.payload()
        method: Callable[..., Awaitable[ModbusPDU]] = getattr(client, self.method)  # write_coil, write_registers…
        return method(self.address, list(payload) if isinstance(payload, tuple) else payload, device_id=slave)

    def result(self, pdu: ModbusPDU) -> None:
        # The spec says a write's answer echoes the request; devices differ in whether a
        # single write echoes the request's value or the stored one, so only the address
        # (and the count of a multiple write) is checked. Whether a coil really switched
        # is what the IO driver's read-back is for.
        if pdu.address != self.address:
            raise _BadReply(f"answer is for address {pdu.address}, not {self.address}")
        payload = self.payload()
        if isinstance(payload, tuple) and pdu.count != len(payload):
            raise _BadReply(f"answer confirms {pdu.count} items, {len(payload)} were written")


@dataclass(frozen=True, slots=True)
class WriteCoil(_Write):
    address: int
    value: bool

    function_code = 5
    table = "coil"
    limit = 1
    method = "write_coil"
    registers = False

    def payload(self) -> bool:
        return self.value


@dataclass(frozen=True, slots=True)
class WriteRegister(_Write):
    address: int
    value: int

    function_code = 6
    table = "holding register"
    limit = 1
    method = "write_register"
    registers = True

    def payload(self) -> int:
        return self.value


@dataclass(frozen=True, slots=True)
class WriteCoils(_Write):
    address: int
    values: tuple[bool, ...]

    function_code = 15
    table = "coils"
    limit = 1968
    method = "write_coils"
    registers = False

    def payload(self) -> tuple[bool, ...]:
        return self.values


@dataclass(frozen=True, slots=True)
class WriteRegisters(_Write):
    address: int
    values: tuple[int, ...]

    function_code = 16
    table = "holding registers"
    limit = 123
    method = "write_registers"
    registers = True

    def payload(self) -> tuple[int, ...]:
        return self.values


ModbusOp = (
    ReadCoils
    | ReadDiscreteInputs
    | ReadHoldingRegisters
    | ReadInputRegisters
    | WriteCoil
    | WriteCoils
    | WriteRegister
    | WriteRegisters
)


@dataclass(frozen=True, slots=True)
class Reply:
    """A request's answer. ``value``: a tuple of bits/registers for reads, None for writes.

    ``sent_at`` is the monotonic time the answered attempt went on the wire: the device's
    state is no older than that, which is what input freshness is measured from.
    """

    value: Any
    sent_at: float
    received_at: float
    attempts: int


# -- circuit breaker and health -----------------------------------------------------------


class BreakerState(enum.StrEnum):
    CLOSED = "closed"  # requests go to the slave
    OPEN = "open"  # requests fail at once until the cool-down ends
    HALF_OPEN = "half_open"  # one probe is on its way; the others still fail at once


class _Admit(enum.Enum):
    GO = enum.auto()
    PROBE = enum.auto()
    REFUSE = enum.auto()


@dataclass
class _Breaker:
    threshold: int
    cooldown: float
    state: BreakerState = BreakerState.CLOSED
    consecutive: int = 0
    opened_at: float = -math.inf

    def admit(self, now: float) -> _Admit:
        if self.state is BreakerState.CLOSED:
            return _Admit.GO
        if self.state is BreakerState.OPEN and now >= self.opened_at + self.cooldown:
            self.state = BreakerState.HALF_OPEN
            return _Admit.PROBE
        return _Admit.REFUSE

    def next_probe_in(self, now: float) -> float:
        return max(0.0, self.opened_at + self.cooldown - now)

    def answered(self) -> bool:
        """The slave answered. True if that closed an open breaker."""
        was_open = self.state is not BreakerState.CLOSED
        self.state = BreakerState.CLOSED
        self.consecutive = 0
        return was_open

    def failed(self, now: float) -> bool:
        """A request got no usable answer. True if that opened the breaker."""
        self.consecutive += 1
        if self.state is BreakerState.HALF_OPEN or (
            self.state is BreakerState.CLOSED and self.consecutive >= self.threshold
        ):
            self.state = BreakerState.OPEN
            self.opened_at = now
            return True
        return False

    def probe_abandoned(self) -> None:
        """The probe never went out (its caller gave up): let the next request probe."""
        if self.state is BreakerState.HALF_OPEN:
            self.state = BreakerState.OPEN
            self.opened_at = -math.inf


@dataclass(frozen=True, slots=True)
class SlaveHealth:
    """Counters of one slave id on one bus, since the bus started."""

    bus: str
    slave: int
    device: str
    link_up: bool
    breaker: BreakerState
    requests: int  # asked of the bus
    ok: int  # answered
    failures: int  # no usable answer after every attempt (timeout, garbled)
    exceptions: int  # Modbus exception responses
    timeouts: int  # attempts without an answer
    retries: int  # attempts after the first
    rejected: int  # failed at once: breaker open or link down
    consecutive_failures: int
    last_ok_at: float | None
    last_error: str

    @property
    def online(self) -> bool:
        return self.link_up and self.breaker is BreakerState.CLOSED

    @property
    def errors(self) -> int:
        return self.failures + self.exceptions


@dataclass
class _Slave:
    slave: int
    device: str
    breaker: _Breaker
    requests: int = 0
    ok: int = 0
    failures: int = 0
    exceptions: int = 0
    timeouts: int = 0
    retries: int = 0
    rejected: int = 0
    last_ok_at: float | None = None
    last_error: str = ""

    @property
    def label(self) -> str:
        return f"{self.device} (slave {self.slave})" if self.device else f"slave {self.slave}"


@dataclass(eq=False)
class _Pending:
    slave: int
    op: ModbusOp
    priority: Priority
    seq: int
    timeout: float
    max_attempts: int
    probe: bool
    future: asyncio.Future[Reply]
    attempts: int = 0


@dataclass(frozen=True, slots=True)
class _Answered:
    value: Any


@dataclass(frozen=True, slots=True)
class _Refused:
    """A Modbus exception response."""

    code: int


@dataclass(frozen=True, slots=True)
class _NoAnswer:
    """Nothing usable came back; worth another attempt."""

    timeout: bool  # True: silence; False: a garbled or foreign answer
    detail: str


@dataclass(frozen=True, slots=True)
class _LinkLost:
    detail: str


_Outcome = _Answered | _Refused | _NoAnswer | _LinkLost


# -- the bus ----------------------------------------------------------------------------------


class ModbusBus:
    """The one master on a Modbus link; every device driver on that link goes through it.

    Use as ``async with ModbusBus(link, settings, name="rs485-1") as bus:``. ``start()``
    tries to connect once and returns either way: a missing device degrades the lane, it
    does not stop the daemon; the reconnect task keeps trying.
    """

    def __init__(self, link: TcpLink | RtuLink, settings: BusSettings | None = None, *, name: str = "modbus") -> None:
        self.name = name
        self.link = link
        self.settings = settings or BusSettings()
        self._gap = self.settings.gap_for(link)
        self._after_timeout_gap = self.settings.after_timeout_gap_for(link)
        self._client: ModbusBaseClient | None = None
        self._queue: list[tuple[int, int, _Pending]] = []
        self._seq = itertools.count()
        self._queued = asyncio.Event()
        self._current: _Pending | None = None
        self._ready_at = 0.0  # monotonic time the line is quiet enough for the next frame
        self._slaves: dict[int, _Slave] = {}
        self._link_up = False
        self._link_detail = "not started"
        self._down_since: float | None = None
        self._reconnect_attempts = 0
        self._needs_connect = asyncio.Event()
        self._connected = asyncio.Event()
        self._generation = 0
        self._generation_changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    # -- lifetime ---------------------------------------------------------------------

    async def start(self) -> None:
        if self._tasks:
            return
        self._client = self._make_client()
        self._link_detail = "connecting"
        self._down_since = time.monotonic()
        if not await self._connect():
            self._needs_connect.set()
        self._tasks = [
            asyncio.create_task(self._keep_link(), name=f"{self.name}-link"),
            asyncio.create_task(self._serve(), name=f"{self.name}-scheduler"),
        ]

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        """The link keeper and the scheduler: both run until close()."""
        return list(self._tasks)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Taken before cancelling: the worker forgets its current request as it unwinds.
        in_flight = self._current
        await cancel_and_wait(*self._tasks)
        closed = DeviceOffline(self.name, "request", "the bus is closed (laned is stopping)")
        leftovers = [p for _, _, p in self._queue] + ([in_flight] if in_flight else [])
        for pending in leftovers:
            if not pending.future.done():
                pending.future.set_exception(closed)
        self._queue.clear()
        self._current = None
        if self._client is not None:
            self._client.close()
        self._link_up = False
        self._link_detail = "closed"
        self._connected.clear()

    async def __aenter__(self) -> ModbusBus:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- state --------------------------------------------------------------------------

    @property
    def link_up(self) -> bool:
        return self._link_up

    @property
    def generation(self) -> int:
        """How many times the link has been (re)connected. A change means the devices
        may have restarted, or missed writes, while it was down."""
        return self._generation

    async def wait_connected(self) -> None:
        await self._connected.wait()

    async def wait_generation(self, after: int) -> int:
        """Wait until the link has been (re)connected since generation ``after``."""
        while self._generation <= after:
            await self._generation_changed.wait()
        return self._generation

    def health(self, slave: int) -> SlaveHealth:
        record = self._slave(slave)
        return SlaveHealth(
            bus=self.name,
            slave=slave,
            device=record.device,
            link_up=self._link_up,
            breaker=record.breaker.state,
            requests=record.requests,
            ok=record.ok,
            failures=record.failures,
            exceptions=record.exceptions,
            timeouts=record.timeouts,
            retries=record.retries,
            rejected=record.rejected,
            consecutive_failures=record.breaker.consecutive,
            last_ok_at=record.last_ok_at,
            last_error=record.last_error,
        )

    def link_health(self) -> DeviceHealth:
        oks = [r.last_ok_at for r in self._slaves.values() if r.last_ok_at is not None]
        return DeviceHealth(
            device=self.name,
            online=self._link_up,
            detail=f"{self.link.describe()}: {'up' if self._link_up else self._link_detail}",
            errors=sum(r.failures + r.exceptions for r in self._slaves.values()),
            last_ok_at=max(oks, default=None),
        )

    # -- requests -----------------------------------------------------------------------

    async def request(
        self,
        slave: int,
        op: ModbusOp,
        *,
        priority: Priority = Priority.CONTROL,
        device: str = "",
        timeout: float | None = None,
        retries: int | None = None,
    ) -> Reply:
        """Queue ``op`` for ``slave`` and wait for its answer.

        ``device`` names the device in errors, logs and health ("fee_display"). Raises
        ``DeviceOffline`` at once while the link is down or the slave's breaker is open,
        ``DeviceTimeout`` after every attempt went unanswered, ``UnexpectedReply`` when
        the answers did not match the request, ``DeviceRejected`` for a Modbus exception.
        """
        if not 1 <= slave <= 247:
            # 0 is broadcast: nobody answers it, so it cannot be a request that waits.
            raise ValueError(f"Modbus slave id {slave} is outside 1..247")
        record = self._slave(slave, device)
        record.requests += 1
        if self._closed or not self._tasks:
            raise DeviceOffline(record.label, op.describe(), f"bus {self.name} is {'closed' if self._closed else 'not started'}")
        if not self._link_up:
            record.rejected += 1
            raise self._link_down_error(record, op)
        admit = record.breaker.admit(time.monotonic())
        if admit is _Admit.REFUSE:
            record.rejected += 1
            raise self._breaker_error(record, op)
        if admit is _Admit.PROBE:
            log.info("%s: %s: cool-down over, sending %s as a probe", self.name, record.label, op.describe())
        pending = _Pending(
            slave=slave,
            op=op,
            priority=priority,
            seq=next(self._seq),
            timeout=self.settings.response_timeout_s if timeout is None else timeout,
            # A probe only asks whether the slave is back: one attempt, no retries.
            max_attempts=1 if admit is _Admit.PROBE else 1 + (self.settings.retries if retries is None else retries),
            probe=admit is _Admit.PROBE,
            future=asyncio.get_running_loop().create_future(),
        )
        self._push(pending)
        return await pending.future

    def _push(self, pending: _Pending) -> None:
        heapq.heappush(self._queue, (pending.priority, pending.seq, pending))
        self._queued.set()

    def _slave(self, slave: int, device: str = "") -> _Slave:
        record = self._slaves.get(slave)
        if record is None:
            breaker = _Breaker(self.settings.breaker_threshold, self.settings.breaker_cooldown_s)
            record = self._slaves[slave] = _Slave(slave, device, breaker)
        elif device and not record.device:
            record.device = device
        return record

    def _link_down_error(self, record: _Slave, op: ModbusOp) -> DeviceOffline:
        return DeviceOffline(
            record.label, op.describe(), f"{self.link.describe()} is down ({self._link_detail}); reconnecting"
        )

    def _breaker_error(self, record: _Slave, op: ModbusOp) -> DeviceOffline:
        breaker = record.breaker
        return DeviceOffline(
            record.label,
            op.describe(),
            f"not answering on {self.link.describe()}: {breaker.consecutive} requests in a row "
            f"failed; next try in {breaker.next_probe_in(time.monotonic()):.1f} s",
        )

    # -- the scheduler ------------------------------------------------------------------

    async def _serve(self) -> None:
        while True:
            pending = await self._next()
            self._current = pending
            try:
                await self._exchange(pending)
            except Exception as exc:  # noqa: BLE001 — the scheduler must outlive any one request
                log.exception("%s: internal error while sending %s", self.name, pending.op.describe())
                self._resolve(pending, DeviceError(self._slave(pending.slave).label, pending.op.describe(), repr(exc)))
            finally:
                self._current = None

    async def _next(self) -> _Pending:
        while True:
            quiet_in = self._ready_at - time.monotonic()
            if quiet_in > 0:
                # The inter-frame gap: the devices need this silence on the line. The
                # queue is looked at only afterwards, so a request that arrived during
                # the gap still competes on priority.
                await asyncio.sleep(quiet_in)
                continue
            if not self._queue:
                self._queued.clear()
                await self._queued.wait()
                continue
            _, _, pending = heapq.heappop(self._queue)
            if pending.future.done():  # the caller gave up (cancelled) while queued
                if pending.probe:
                    self._slaves[pending.slave].breaker.probe_abandoned()
                continue
            return pending

    async def _exchange(self, pending: _Pending) -> None:
        record = self._slaves[pending.slave]
        if not pending.probe and record.breaker.state is not BreakerState.CLOSED:
            record.rejected += 1  # the breaker opened while this request was queued
            self._resolve(pending, self._breaker_error(record, pending.op))
            return
        if not self._link_up:
            record.rejected += 1
            if pending.probe:
                record.breaker.probe_abandoned()
            self._resolve(pending, self._link_down_error(record, pending.op))
            return
        pending.attempts += 1
        if pending.attempts > 1:
            record.retries += 1
        sent_at = time.monotonic()
        outcome = await self._send(pending)
        received_at = time.monotonic()
        quiet = self._after_timeout_gap if isinstance(outcome, _NoAnswer) else self._gap
        self._ready_at = received_at + quiet
        match outcome:
            case _Answered(value):
                record.ok += 1
                record.last_ok_at = received_at
                if record.breaker.answered():
                    log.warning("%s: %s answers again; breaker closed, requests flow normally", self.name, record.label)
                self._resolve(pending, Reply(value, sent_at, received_at, pending.attempts))
            case _Refused(code):
                self._refused(pending, record, code)
            case _NoAnswer(timeout, detail):
                if timeout:
                    record.timeouts += 1
                record.last_error = f"{pending.op.describe()}: {detail}"
                if pending.attempts < pending.max_attempts:
                    log.debug("%s: %s: %s (%s); retrying", self.name, record.label, pending.op.describe(), detail)
                    self._push(pending)  # same priority and sequence number: it keeps its place
                    return
                self._failed(pending, record, timeout, detail)
            case _LinkLost(detail):
                if pending.probe:
                    record.breaker.probe_abandoned()
                self._lose_link(detail)
                self._resolve(pending, self._link_down_error(record, pending.op))

    async def _send(self, pending: _Pending) -> _Outcome:
        client = self._client
        assert client is not None
        try:
            async with asyncio.timeout(pending.timeout):
                pdu = await pending.op.send(client, pending.slave)
        except TimeoutError:
            if not client.connected:
                return _LinkLost("the connection closed while waiting for an answer")
            return _NoAnswer(True, f"no answer within {pending.timeout:.2f} s")
        except ConnectionException as exc:
            return _LinkLost(f"not connected: {exc}")
        except ModbusException as exc:
            return _NoAnswer(False, f"answer could not be used: {exc}")
        if pdu.isError():
            if pdu.exception_code in _GATEWAY_NO_ANSWER:
                return _NoAnswer(True, f"the gateway reports no answer from the slave (exception {pdu.exception_code})")
            return _Refused(pdu.exception_code)
        if pdu.function_code != pending.op.function_code:
            return _NoAnswer(False, f"answer with function code {pdu.function_code}, asked {pending.op.function_code}")
        try:
            return _Answered(pending.op.result(pdu))
        except _BadReply as exc:
            return _NoAnswer(False, f"answer does not match the request: {exc}")

    def _refused(self, pending: _Pending, record: _Slave, code: int) -> None:
        record.exceptions += 1
        # An exception response proves the slave is alive and listening.
        record.breaker.answered()
        record.last_error = f"{pending.op.describe()}: exception code {code}"
        if code == EXC_DEVICE_BUSY and pending.attempts < pending.max_attempts:
            self._push(pending)
            return
        log.warning(
            "%s: %s refused %s with Modbus exception %d (%s); check the device profile's "
            "addresses against the vendor manual",
            self.name, record.label, pending.op.describe(), code, _EXCEPTION_NAMES.get(code, "vendor specific"),
        )
        self._resolve(
            pending,
            DeviceRejected(
                record.label, pending.op.describe(),
                f"Modbus exception {code} ({_EXCEPTION_NAMES.get(code, 'vendor specific')})", code=code,
            ),
        )

    def _failed(self, pending: _Pending, record: _Slave, timeout: bool, detail: str) -> None:
        record.failures += 1
        now = time.monotonic()
        attempts = f"{pending.attempts} attempt{'s' if pending.attempts > 1 else ''}"
        if record.breaker.failed(now):
            log.error(
                "%s: %s did not answer %s (%s, %s); breaker open: its requests fail at once "
                "for %.1f s, then one probe. Check its power, the bus wiring (A/B, "
                "termination), its slave id and baud rate",
                self.name, record.label, pending.op.describe(), detail, attempts, record.breaker.cooldown,
            )
        else:
            log.warning("%s: %s: %s failed after %s: %s", self.name, record.label, pending.op.describe(), attempts, detail)
        error = DeviceTimeout if timeout else UnexpectedReply
        self._resolve(pending, error(record.label, pending.op.describe(), f"{detail}, {attempts}"))

    @staticmethod
    def _resolve(pending: _Pending, result: Reply | DeviceError) -> None:
        if pending.future.done():
            return  # the caller was cancelled; the exchange still counted
        if isinstance(result, Reply):
            pending.future.set_result(result)
        else:
            pending.future.set_exception(result)

    # -- the link -----------------------------------------------------------------------

    def _make_client(self) -> ModbusBaseClient:
        common: dict[str, Any] = {
            "name": self.name,
            "reconnect_delay": 0,  # 0 switches pymodbus's own reconnect off
            "retries": 0,
            "timeout": _PYMODBUS_TIMEOUT_S,
            "trace_connect": self._on_pymodbus_connect,
        }
        link = self.link
        client: ModbusBaseClient
        if isinstance(link, TcpLink):
            client = AsyncModbusTcpClient(link.host, port=link.port, **common)
        else:
            client = AsyncModbusSerialClient(
                link.port, baudrate=link.baudrate, parity=link.parity, bytesize=link.bytesize,
                stopbits=link.stopbits, **common,
            )
        client.set_max_no_responses(_PYMODBUS_NEVER_DISCONNECT)
        return client

    def _on_pymodbus_connect(self, connected: bool) -> None:
        """pymodbus's trace_connect: called (synchronously) when its transport comes or goes."""
        if not connected and self._link_up:
            self._lose_link("the connection was closed by the device, the network or the OS")

    async def _connect(self) -> bool:
        client = self._client
        assert client is not None
        self._reconnect_attempts += 1
        reason = ""
        try:
            async with asyncio.timeout(self.settings.connect_timeout_s):
                ok = await client.connect()
        except TimeoutError:
            ok, reason = False, f"no connection within {self.settings.connect_timeout_s:g} s"
        # pyserial and asyncio raise OSError, SerialException (an OSError) or ValueError
        # (port settings the adapter refuses); all mean "not now, try again".
        except (OSError, ValueError) as exc:
            ok, reason = False, str(exc)
        if ok and client.connected:
            self._link_is_up()
            return True
        client.close()
        reason = reason or self._why_not_connected()
        self._link_detail = reason
        if self._reconnect_attempts == 1 or self._reconnect_attempts % 10 == 0:
            log.error(
                "%s: cannot open %s: %s (attempt %d); requests fail with DeviceOffline, "
                "retrying every %g–%g s",
                self.name, self.link.describe(), reason, self._reconnect_attempts,
                self.settings.reconnect_min_s, self.settings.reconnect_max_s,
            )
        return False

    def _why_not_connected(self) -> str:
        # pymodbus swallows the reason; say what a field engineer would check first.
        link = self.link
        if isinstance(link, RtuLink):
            if not os.path.exists(link.port):
                return f"{link.port} does not exist (adapter unplugged, or a wrong udev name?)"
            return f"{link.port} cannot be opened (in use by another program, or no permission?)"
        return f"{link.host}:{link.port} refused or unreachable (device off, cable, IP address?)"

    def _link_is_up(self) -> None:
        now = time.monotonic()
        down_for = now - self._down_since if self._down_since is not None else 0.0
        if self._generation == 0:
            log.info("%s: connected to %s", self.name, self.link.describe())
        else:
            log.warning(
                "%s: %s is back after %.1f s (%d attempts); drivers rewrite what the devices may have lost",
                self.name, self.link.describe(), down_for, self._reconnect_attempts,
            )
        self._link_up = True
        self._link_detail = "up"
        self._down_since = None
        self._reconnect_attempts = 0
        self._needs_connect.clear()
        self._connected.set()
        self._generation += 1
        changed, self._generation_changed = self._generation_changed, asyncio.Event()
        changed.set()

    def _lose_link(self, reason: str) -> None:
        if not self._link_up or self._closed:
            return
        self._link_up = False
        self._link_detail = reason
        self._down_since = time.monotonic()
        self._connected.clear()
        log.error(
            "%s: lost %s: %s; requests fail with DeviceOffline until it is back; reconnecting",
            self.name, self.link.describe(), reason,
        )
        if self._client is not None:
            self._client.close()
        self._needs_connect.set()

    async def _keep_link(self) -> None:
        delay = self.settings.reconnect_min_s
        while True:
            await self._needs_connect.wait()
            if await self._connect():
                delay = self.settings.reconnect_min_s
                continue
            # The reconnect backoff: protocol timing, not a wait for something to happen.
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.reconnect_max_s)


_EXCEPTION_NAMES: Final[dict[int, str]] = {
    0x01: "illegal function",
    0x02: "illegal data address",
    0x03: "illegal data value",
    0x04: "slave device failure",
    0x05: "acknowledge",
    0x06: "slave device busy",
    0x08: "memory parity error",
    0x0A: "gateway path unavailable",
    0x0B: "gateway target failed to respond",
}


__all__ = [
    "BreakerState",
    "BusSettings",
    "Link",
    "ModbusBus",
    "ModbusOp",
    "Priority",
    "ReadCoils",
    "ReadDiscreteInputs",
    "ReadHoldingRegisters",
    "ReadInputRegisters",
    "Reply",
    "RtuLink",
    "SlaveHealth",
    "TcpLink",
    "WriteCoil",
    "WriteCoils",
    "WriteRegister",
    "WriteRegisters",
]
