"""Emulated fee display and IO module: pymodbus servers speaking real Modbus TCP or RTU.

The devices are built with pymodbus's simulator API (``SimDevice``/``SimData``, new in
3.16; the old ``ModbusSlaveContext``/``ModbusSequentialDataBlock`` datastore is
deprecated). Each emulated device keeps its own register image as the truth, and the
``SimDevice`` *action* (called on every access) copies that image into pymodbus's
registers before it answers and records every write. The image therefore outlives a
server restart (``go_offline``/``come_back``), which rebuilds pymodbus's registers from
the ``SimData`` definitions, the way a device keeps its state while its cable is out.

Where the simulator API is not enough, the server's public ``trace_pdu`` hook is used:
returning ``None`` for a received request makes pymodbus drop it unanswered. That is how
"no answer" is injected, and how a request to a slave id nobody emulates goes unanswered,
as on a real RS-485 line (pymodbus would answer it with an exception).

Transports:

- Modbus TCP on 127.0.0.1 and a free port (``port=0``);
- Modbus RTU over a :class:`PtyPair`: two pseudo-terminals joined back to back in this
  process. pymodbus's serial server opens the device side by path (pyserial accepts a
  pty path like any tty), laned opens the host side.

Faults (:class:`Faults`, per device): slow answers, Modbus exception responses, no
answer; per server: offline (TCP port closed / RTU device deaf) and back. The IO module
adds stuck relays (an output that does not follow its coil: what read-back catches).

Bench use::

    python -m laned.sim.modbus_devices --tcp 127.0.0.1:15020
    python -m laned.sim.modbus_devices --rtu        # prints the tty to give laned
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import itertools
import logging
import os
import signal
import tempfile
import termios
import time
import tty
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal, cast

from pymodbus.constants import ExcCodes
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from laned.drivers.device_profiles import (
    DEFAULT_FEE_DISPLAY_PROFILE,
    DEFAULT_IO_MODULE_PROFILE,
    BarrierMode,
    FeeDisplayProfile,
    InputKind,
    IoModuleProfile,
)
from laned.drivers.fee_display import DisplayContent
from laned.drivers.lane_io import Light, Output, Signal
from laned.drivers.modbus_bus import RtuLink, TcpLink
from laned.sim.lane_model import LaneModel, SensedChange

log = logging.getLogger(__name__)

# Orders writes across every emulated device of the process (the priority tests compare
# a display write with an IO write).
_WRITE_SEQ: Final = itertools.count(1)

_COIL_FUNCTIONS: Final = frozenset({1, 5, 15})
_HOLDING_FUNCTIONS: Final = frozenset({3, 6, 16, 22, 23})
# pymodbus answers a single write (5, 6) by reading the value back through the action.
_SINGLE_WRITES: Final = frozenset({5, 6})


def _whole_words(bits: int) -> int:
    return max(16, (bits + 15) // 16 * 16)


def _pack(bits: Sequence[bool]) -> list[int]:
    """Bits to 16-bit registers, bit 0 first (pymodbus's layout for bit blocks)."""
    return [sum(1 << i for i, bit in enumerate(bits[w : w + 16]) if bit) for w in range(0, len(bits), 16)]


# -- faults ---------------------------------------------------------------------------------


class _Countdown:
    """A fault for the next ``count`` requests, or until cleared (``count=None``)."""

    def __init__(self) -> None:
        self._left: int | None = 0

    def arm(self, count: int | None) -> None:
        if count is not None and count < 1:
            raise ValueError("count must be at least 1, or None for 'until cleared'")
        self._left = count

    def clear(self) -> None:
        self._left = 0

    def take(self) -> bool:
        if self._left is None:
            return True
        if self._left > 0:
            self._left -= 1
            return True
        return False


class Faults:
    """What an emulated device does wrong. Each fault hits the next ``count`` requests,
    or every request until :meth:`clear` when ``count`` is None."""

    def __init__(self) -> None:
        self._slow = _Countdown()
        self._refuse = _Countdown()
        self._silent = _Countdown()
        self.delay_s = 0.0
        self.exception_code = ExcCodes.DEVICE_FAILURE

    def slow(self, seconds: float, *, count: int | None = None) -> None:
        """Answer ``seconds`` late."""
        self.delay_s = seconds
        self._slow.arm(count)

    def refuse(self, code: ExcCodes = ExcCodes.DEVICE_FAILURE, *, count: int | None = None) -> None:
        """Answer with a Modbus exception response instead of doing the request."""
        self.exception_code = code
        self._refuse.arm(count)

    def no_answer(self, *, count: int | None = None) -> None:
        """Hear the request and say nothing (dead device, wrong baud rate, broken A/B)."""
        self._silent.arm(count)

    def answer_again(self) -> None:
        """End a ``no_answer`` fault only."""
        self._silent.clear()

    def clear(self) -> None:
        for countdown in (self._slow, self._refuse, self._silent):
            countdown.clear()

    # The device consults these once per request.

    def take_delay(self) -> float:
        return self.delay_s if self._slow.take() else 0.0

    def take_refusal(self) -> ExcCodes | None:
        return self.exception_code if self._refuse.take() else None

    def take_silence(self) -> bool:
        return self._silent.take()


@dataclass(frozen=True, slots=True)
class WriteRecord:
    """One write request as the device applied it."""

    seq: int  # order across all emulated devices in this process
    at: float  # monotonic time it was applied
    slave: int
    table: Literal["coils", "holding registers"]
    address: int
    values: tuple[int, ...]  # registers, or 0/1 per coil


# -- devices ----------------------------------------------------------------------------------


class EmulatedDevice:
    """A slave id on an emulated bus with its own register image (the device's truth)."""

    def __init__(self, slave: int, name: str, *, coils: int, discrete_inputs: int, holding: int, inputs: int) -> None:
        if not 1 <= slave <= 247:
            raise ValueError(f"slave id {slave} is outside 1..247")
        self.slave = slave
        self.name = name
        self.faults = Faults()
        self.coils = [False] * _whole_words(coils)
        self.discrete_inputs = [False] * _whole_words(discrete_inputs)
        self.holding = [0] * max(1, holding)
        self.input_registers = [0] * max(1, inputs)
        self.writes: list[WriteRecord] = []
        self.heard = 0  # requests that reached this slave id, answered or not
        self.request_times: list[float] = []  # monotonic arrival of each served request
        self.in_flight = 0
        self.max_in_flight = 0  # > 1 would mean two requests overlapped on the line
        self.listeners: list[Callable[[WriteRecord], None]] = []
        self._single_write_echo: tuple[int, int] | None = None

    def simdevice(self) -> SimDevice:
        """A fresh pymodbus SimDevice whose action serves this device's image."""
        return SimDevice(
            id=self.slave,
            simdata=(
                [SimData(0, count=len(self.coils), values=False, datatype=DataType.BITS)],
                [SimData(0, count=len(self.discrete_inputs), values=False, datatype=DataType.BITS)],
                [SimData(0, count=len(self.holding), values=0, datatype=DataType.REGISTERS)],
                [SimData(0, count=len(self.input_registers), values=0, datatype=DataType.REGISTERS)],
            ),
            action=self._action,
        )

    def clear_log(self) -> None:
        self.writes.clear()
        self.request_times.clear()

    def registers_written(self) -> int:
        return sum(len(w.values) for w in self.writes if w.table == "holding registers")

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """pymodbus's SimDevice action: runs before every read and write of this device."""
        if set_values is None and self._single_write_echo == (function_code, address):
            # The read-back half of a single write: the same request, no new fault.
            self._single_write_echo = None
            self._load(function_code, registers)
            return None
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            self.request_times.append(time.monotonic())
            if delay := self.faults.take_delay():
                await asyncio.sleep(delay)  # the injected fault is the delay
            if refusal := self.faults.take_refusal():
                return refusal
            if set_values is not None:
                self._store(function_code, address, set_values)
                if function_code in _SINGLE_WRITES:
                    self._single_write_echo = (function_code, address)
            self._load(function_code, registers)
            return None
        finally:
            self.in_flight -= 1

    def _store(self, function_code: int, address: int, values: list[int] | list[bool]) -> None:
        if function_code in _COIL_FUNCTIONS:
            for i, value in enumerate(values):
                # Writing into ``values`` changes what pymodbus stores too (SimDevice
                # action contract): a stuck relay stays stuck in both images.
                values[i] = self._coil_written(address + i, bool(value))
                self.coils[address + i] = bool(values[i])
            table: Literal["coils", "holding registers"] = "coils"
        else:
            self.holding[address : address + len(values)] = [int(v) for v in values]
            table = "holding registers"
        record = WriteRecord(next(_WRITE_SEQ), time.monotonic(), self.slave, table, address, tuple(int(v) for v in values))
        self.writes.append(record)
        self._written(record)
        for listener in self.listeners:
            listener(record)

    def _load(self, function_code: int, registers: list[int]) -> None:
        """Copy this device's image into pymodbus's block (SimData blocks start at 0)."""
        if function_code in _COIL_FUNCTIONS:
            image = _pack(self.coils)
        elif function_code == 2:
            image = _pack(self.discrete_inputs)
        elif function_code in _HOLDING_FUNCTIONS:
            image = self.holding
        else:
            image = self.input_registers
        registers[: len(image)] = image

    def _coil_written(self, address: int, value: bool) -> bool:
        return value

    def _written(self, record: WriteRecord) -> None:
        """Hook for subclasses: a write was applied."""


class EmulatedFeeDisplay(EmulatedDevice):
    """A fee display: holding registers laid out by a :class:`FeeDisplayProfile`."""

    def __init__(self, slave: int = 1, profile: FeeDisplayProfile = DEFAULT_FEE_DISPLAY_PROFILE) -> None:
        super().__init__(slave, "fee display", coils=16, discrete_inputs=16, holding=profile.register_count, inputs=1)
        self.profile = profile
        self.power_cycle()

    def power_cycle(self) -> None:
        """The display restarts: everything blank, the light off, full brightness."""
        self.holding[:] = [0] * len(self.holding)
        for _, address, values in self.profile.encode(DisplayContent(light=Light.OFF, brightness=100)):
            self.holding[address : address + len(values)] = values

    def shown(self) -> DisplayContent:
        """What the display shows, decoded from its registers (money in fen)."""
        return self.profile.decode(lambda address, count: self.holding[address : address + count])


def yuan(fen: int | None) -> str:
    """12.50 for 1250 fen; an empty string for a blank field."""
    return "" if fen is None else f"{fen // 100}.{fen % 100:02d}"


class EmulatedIoModule(EmulatedDevice):
    """A DI/DO module wired to the lane as an :class:`IoModuleProfile` describes."""

    def __init__(self, slave: int = 2, profile: IoModuleProfile = DEFAULT_IO_MODULE_PROFILE) -> None:
        points = profile.inputs.values()

        def size(kind: InputKind) -> int:
            return 1 + max((p.address for p in points if p.kind is kind), default=0)

        super().__init__(
            slave,
            "IO module",
            coils=1 + max(o.coil for o in profile.outputs.values()),
            discrete_inputs=size(InputKind.DISCRETE_INPUT),
            holding=size(InputKind.HOLDING_REGISTER_BIT),
            inputs=size(InputKind.INPUT_REGISTER_BIT),
        )
        self.profile = profile
        self._stuck: dict[int, bool] = {}
        self._model: LaneModel | None = None
        self._clock: Callable[[], float] = time.monotonic
        self._driven: dict[Output, bool] = {o: False for o in Output}
        for sig in Signal:
            self.set_input(sig, False)

    # -- inputs, as the cabinet wiring presents them -----------------------------------

    def set_input(self, sig: Signal, active: bool | None) -> None:
        """Present ``active`` on ``sig``'s input after NO/NC; ``None`` is a cut wire
        (no current: the bit reads 0, which an NC input reads as "active")."""
        point = self.profile.inputs[sig]
        bit = False if active is None else point.bit_for(active)
        if point.kind is InputKind.DISCRETE_INPUT:
            self.discrete_inputs[point.address] = bit
            return
        table = self.input_registers if point.kind is InputKind.INPUT_REGISTER_BIT else self.holding
        mask = 1 << (point.bit or 0)
        table[point.address] = (table[point.address] | mask) if bit else (table[point.address] & ~mask)

    def input_active(self, sig: Signal) -> bool:
        point = self.profile.inputs[sig]
        if point.kind is InputKind.DISCRETE_INPUT:
            bit = self.discrete_inputs[point.address]
        else:
            table = self.input_registers if point.kind is InputKind.INPUT_REGISTER_BIT else self.holding
            bit = bool(table[point.address] >> (point.bit or 0) & 1)
        return point.active_from_bit(bit)

    # -- outputs --------------------------------------------------------------------------

    def output_active(self, output: Output) -> bool:
        point = self.profile.outputs[output]
        return point.active_from_coil(self.coils[point.coil])

    def stick(self, output: Output, active: bool) -> None:
        """The relay of ``output`` welds: it stays ``active`` whatever laned writes."""
        point = self.profile.outputs[output]
        self._stuck[point.coil] = point.coil_for(active)
        self.coils[point.coil] = self._stuck[point.coil]

    def unstick(self, output: Output) -> None:
        self._stuck.pop(self.profile.outputs[output].coil, None)

    def _coil_written(self, address: int, value: bool) -> bool:
        return self._stuck.get(address, value)

    # -- the lane model -------------------------------------------------------------------

    def attach_lane_model(self, model: LaneModel, clock: Callable[[], float] = time.monotonic) -> None:
        """Play the cabinet wiring between this module and a lane model.

        Inputs follow ``model.sensed`` (a dead sensor is a cut wire); when the model
        takes the IO module off the bus, the module stops answering. Coil writes become
        barrier, light and alarm commands, stamped with ``clock()``. The caller keeps
        the model moving (``model.advance(clock())``).
        """
        self._model = model
        self._clock = clock
        model.add_listener(self._on_sensed)
        for sig in Signal:
            self.set_input(sig, model.sensed(sig))

    def _on_sensed(self, change: SensedChange) -> None:
        assert self._model is not None
        self.set_input(change.signal, change.value)
        if self._model.io_online:
            self.faults.answer_again()
        else:
            self.faults.no_answer()

    def _written(self, record: WriteRecord) -> None:
        model = self._model
        if model is None or record.table != "coils":
            return
        at = max(self._clock(), model.now)
        now_on = {o: self.output_active(o) for o in self.profile.outputs}
        was_on, self._driven = self._driven, {**self._driven, **now_on}
        rising = {o for o, on in now_on.items() if on and not was_on[o]}
        # A rising edge starts a run (a pulse latches it, a held level drives it); in
        # level mode, dropping the held output stops the arm where it is.
        if Output.BARRIER_RAISE in rising:
            model.command_raise(at)
        elif Output.BARRIER_LOWER in rising:
            model.command_lower(at)
        elif self.profile.barrier.mode is BarrierMode.LEVEL and not (
            now_on.get(Output.BARRIER_RAISE) or now_on.get(Output.BARRIER_LOWER)
        ) and (was_on[Output.BARRIER_RAISE] or was_on[Output.BARRIER_LOWER]):
            model.command_stop(at)
        # Red wins when both are lit, as a driver reads a confused signal head.
        light = Light.RED if now_on.get(Output.LIGHT_RED) else Light.GREEN if now_on.get(Output.LIGHT_GREEN) else Light.OFF
        if light is not model.light:
            model.set_light(at, light)
        alarm = now_on.get(Output.ALARM, False)
        if alarm != model.alarm:
            model.set_alarm(at, alarm)


# -- transports --------------------------------------------------------------------------------


class PtyPair:
    """Two pseudo-terminals joined back to back: an RS-485 line in software.

    The emulator's serial server opens :attr:`device_path`, laned opens
    :attr:`host_path`; both are symlinks in a private directory, stable across
    :meth:`unplug_host`/:meth:`replug_host` the way udev keeps ``/dev/laned-rs485``
    for a USB adapter that is pulled and plugged back. Both slave ends are also held
    open here, so neither master sees a hangup while a program reopens its port.
    """

    def __init__(self) -> None:
        self._ends: dict[str, tuple[int, int]] = {}  # side -> (master fd, held slave fd)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dir = ""
        self.device_listening = True

    def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._dir = tempfile.mkdtemp(prefix="laned-rs485-")
        for side in ("device", "host"):
            self._open_side(side)

    @property
    def device_path(self) -> str:
        return os.path.join(self._dir, "device")

    @property
    def host_path(self) -> str:
        return os.path.join(self._dir, "host")

    def set_device_listening(self, listening: bool) -> None:
        """A deaf device hears nothing; when it listens again, nothing old is waiting."""
        self.device_listening = listening
        if listening:
            termios.tcflush(self._ends["device"][1], termios.TCIFLUSH)

    def unplug_host(self) -> None:
        """laned's adapter is pulled out: its open port fails, its path disappears."""
        self._close_side("host")

    def replug_host(self) -> None:
        if "host" not in self._ends:
            self._open_side("host")

    def close(self) -> None:
        for side in list(self._ends):
            self._close_side(side)
        if self._dir:
            os.rmdir(self._dir)
            self._dir = ""

    def _open_side(self, side: str) -> None:
        assert self._loop is not None
        master, held = os.openpty()
        tty.setraw(held)  # no echo, no line editing: bytes pass as they are
        os.set_blocking(master, False)
        self._ends[side] = (master, held)
        os.symlink(os.ttyname(held), os.path.join(self._dir, side))
        self._loop.add_reader(master, self._pump, side, "host" if side == "device" else "device")

    def _close_side(self, side: str) -> None:
        master, held = self._ends.pop(side)
        if self._loop is not None:
            self._loop.remove_reader(master)
        os.close(master)
        os.close(held)
        os.unlink(os.path.join(self._dir, side))

    def _pump(self, source: str, target: str) -> None:
        try:
            data = os.read(self._ends[source][0], 4096)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EIO):
                log.warning("pty pair: reading the %s side failed: %s", source, exc)
            return
        if target not in self._ends or (target == "device" and not self.device_listening):
            return  # nobody on the other end hears it
        try:
            os.write(self._ends[target][0], data)
        except BlockingIOError:
            log.warning("pty pair: %s side is not reading; dropped %d bytes", target, len(data))


class ModbusDeviceServer:
    """Emulated devices on one link: a Modbus TCP port, or an RTU line on a pty pair.

    ``async with ModbusDeviceServer([display, io], transport="rtu") as server:`` then
    give laned ``server.link``.
    """

    def __init__(
        self,
        devices: Sequence[EmulatedDevice],
        *,
        transport: Literal["tcp", "rtu"] = "tcp",
        host: str = "127.0.0.1",
        port: int = 0,
        baudrate: int = 19200,
    ) -> None:
        self.devices = {d.slave: d for d in devices}
        if len(self.devices) != len(devices):
            raise ValueError("two emulated devices share a slave id")
        self.transport = transport
        self._host = host
        self._port = port
        self._baudrate = baudrate
        self._pty: PtyPair | None = None
        self._server: ModbusTcpServer | ModbusSerialServer | None = None

    @property
    def link(self) -> TcpLink | RtuLink:
        """Where laned connects to reach these devices."""
        if self.transport == "tcp":
            return TcpLink(host=self._host, port=self._port)
        assert self._pty is not None, "start the server first"
        return RtuLink(port=self._pty.host_path, baudrate=self._baudrate)

    @property
    def online(self) -> bool:
        return self._server is not None

    async def start(self) -> None:
        if self.transport == "rtu" and self._pty is None:
            self._pty = PtyPair()
            self._pty.open()
        await self._listen()

    async def stop(self) -> None:
        await self.go_offline()
        if self._pty is not None:
            self._pty.close()
            self._pty = None

    async def __aenter__(self) -> ModbusDeviceServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def go_offline(self) -> None:
        """Take every device off the link: the TCP port closes (connections drop, new
        ones are refused); on RTU the devices stop hearing the line."""
        if self._server is None:
            return
        server, self._server = self._server, None
        if self._pty is not None:
            self._pty.set_device_listening(False)
        await server.shutdown()  # type: ignore[no-untyped-call]  # pymodbus leaves shutdown() unannotated

    async def come_back(self) -> None:
        """The devices return, on the same port or line, with the state they had."""
        if self._server is None:
            await self._listen()

    def unplug(self) -> None:
        """RTU only: laned's USB-RS485 adapter is pulled out (its port vanishes)."""
        self._rtu_pair().unplug_host()

    def replug(self) -> None:
        """RTU only: the adapter is back under the same name."""
        self._rtu_pair().replug_host()

    def _rtu_pair(self) -> PtyPair:
        if self._pty is None:
            raise RuntimeError("unplug/replug need a started RTU server")
        return self._pty

    async def _listen(self) -> None:
        simdevices = [d.simdevice() for d in self.devices.values()]
        # pymodbus declares that a tracer returns a PDU; a received request traced to None
        # is dropped (its request handler acts only `if self.last_pdu`), which is how a
        # silenced device stays silent. The pin on the pymodbus minor keeps that true.
        trace = cast(Callable[[bool, ModbusPDU], ModbusPDU], self._trace_pdu)
        server: ModbusTcpServer | ModbusSerialServer
        if self.transport == "tcp":
            server = ModbusTcpServer(simdevices, address=(self._host, self._port), trace_pdu=trace)
        else:
            assert self._pty is not None
            self._pty.set_device_listening(True)
            server = ModbusSerialServer(
                simdevices, port=self._pty.device_path, baudrate=self._baudrate, trace_pdu=trace
            )
        await server.serve_forever(background=True)
        if self.transport == "tcp" and self._port == 0:
            # pymodbus annotates transport as a BaseTransport; a listening server keeps its asyncio.Server there.
            self._port = server.transport.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self._server = server

    def _trace_pdu(self, sending: bool, pdu: ModbusPDU) -> ModbusPDU | None:
        if sending:
            return pdu
        device = self.devices.get(pdu.dev_id)
        if device is None:
            return None  # pymodbus drops a request traced to None: no answer at all
        device.heard += 1
        return None if device.faults.take_silence() else pdu


# -- bench entry point ----------------------------------------------------------------------


def _describe_display(display: EmulatedFeeDisplay) -> str:
    shown = display.shown()
    return (
        f"plate {shown.plate or '-'} | class {shown.vehicle_class or '-'} | fee {yuan(shown.fee_fen) or '-'} | "
        f"balance {yuan(shown.balance_fen) or '-'} | {shown.line1!r} {shown.line2!r} | light {shown.light}"
    )


async def _serve_bench(args: argparse.Namespace) -> None:
    display = EmulatedFeeDisplay(args.display_slave)
    io = EmulatedIoModule(args.io_slave)
    display.listeners.append(lambda _: log.info("%s: %s", display.name, _describe_display(display)))
    io.listeners.append(
        lambda _: log.info(
            "%s: %s", io.name, ", ".join(f"{o}={'on' if io.output_active(o) else 'off'}" for o in io.profile.outputs)
        )
    )
    if args.rtu:
        server = ModbusDeviceServer([display, io], transport="rtu", baudrate=args.baudrate)
    else:
        host, _, port = args.tcp.rpartition(":")
        server = ModbusDeviceServer([display, io], transport="tcp", host=host or "127.0.0.1", port=int(port))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        print(
            f"fee display = slave {display.slave}, IO module = slave {io.slave} on {server.link.describe()}",
            flush=True,
        )
        await stop.wait()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m laned.sim.modbus_devices",
        description="Emulated fee display and IO module on one Modbus link, for bench use.",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--tcp", default="127.0.0.1:15020", metavar="HOST:PORT", help="Modbus TCP address (default %(default)s)")
    where.add_argument("--rtu", action="store_true", help="Modbus RTU on a pseudo-terminal; prints its path")
    parser.add_argument("--baudrate", type=int, default=19200, help="RTU only (default %(default)s)")
    parser.add_argument("--display-slave", type=int, default=1, help="slave id of the fee display (default %(default)s)")
    parser.add_argument("--io-slave", type=int, default=2, help="slave id of the IO module (default %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(_serve_bench(args))


if __name__ == "__main__":
    main()
