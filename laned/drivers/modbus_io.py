"""ModbusLaneIO: barrier, loops, traffic light and alarm on a Modbus DI/DO module.

Inputs are polled, never pushed: a Modbus slave cannot report an edge. The reads that
cover the safety loop or the approach loop run at ``poll.safety_loop_hz`` (at least 20 Hz,
so the interlock always has a sample younger than 50 ms), the others at
``poll.other_inputs_hz``. Inputs
of one kind that sit close together are read in one request, so the default module costs
one request per 50 ms. Polls go to the bus at :attr:`Priority.SAFETY`, ahead of any
display refresh.

Each :class:`InputSample` carries the monotonic time its request went on the wire: the
state it reports is no older than that. A poll that fails turns the inputs it covers to
``active=None`` (unknown), which the interlock treats as occupied.

Every output write is read back (a coil read right after the write, same priority). A
coil that reads back wrong raises :class:`ReadbackMismatch` and counts as a fault: a
welded relay or a profile pointing at the wrong coil must not pass for a barrier that
moved. Commands switch "off" before "on", so raise and lower (or red and green) are
never on together, and stop at the first output that cannot be confirmed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from laned.drivers.device_profiles import DEFAULT_IO_MODULE_PROFILE, BarrierMode, InputKind, InputPoint, IoModuleProfile
from laned.drivers.errors import DeviceError, ReadbackMismatch
from laned.drivers.fanout import Fanout
from laned.drivers.lane_io import DeviceHealth, InputSample, Light, Output, SampledLaneIO, Signal
from laned.drivers.modbus_bus import (
    ModbusBus,
    Priority,
    ReadCoils,
    ReadDiscreteInputs,
    ReadHoldingRegisters,
    ReadInputRegisters,
    WriteCoil,
)
from laned.drivers.tasks import cancel_and_wait

log = logging.getLogger(__name__)

# Per samples() reader; past this the oldest samples are dropped (and logged).
SUBSCRIBER_QUEUE_SIZE: Final = 1000

# Inputs of one kind further apart than this are read separately rather than in one
# request spanning the gap.
_MAX_SPAN: Final = {
    InputKind.DISCRETE_INPUT: 64,
    InputKind.INPUT_REGISTER_BIT: 8,
    InputKind.HOLDING_REGISTER_BIT: 8,
}
_READ_OP: Final[dict[InputKind, type[ReadDiscreteInputs | ReadInputRegisters | ReadHoldingRegisters]]] = {
    InputKind.DISCRETE_INPUT: ReadDiscreteInputs,
    InputKind.INPUT_REGISTER_BIT: ReadInputRegisters,
    InputKind.HOLDING_REGISTER_BIT: ReadHoldingRegisters,
}

Step = tuple[Output, bool]
# Each command as (output, active) writes in order: off before on.
_RAISE: Final[tuple[Step, ...]] = ((Output.BARRIER_LOWER, False), (Output.BARRIER_RAISE, True))
_LOWER: Final[tuple[Step, ...]] = ((Output.BARRIER_RAISE, False), (Output.BARRIER_LOWER, True))
_STOP: Final[tuple[Step, ...]] = ((Output.BARRIER_LOWER, False), (Output.BARRIER_RAISE, False))
_LIGHT: Final[dict[Light, tuple[Step, ...]]] = {
    Light.GREEN: ((Output.LIGHT_RED, False), (Output.LIGHT_GREEN, True)),
    Light.RED: ((Output.LIGHT_GREEN, False), (Output.LIGHT_RED, True)),
    Light.OFF: ((Output.LIGHT_GREEN, False), (Output.LIGHT_RED, False)),
}


def _on_off(state: bool) -> str:
    return "on" if state else "off"


@dataclass(frozen=True, slots=True)
class _InputRead:
    """One poll request and the signals it covers."""

    op: ReadDiscreteInputs | ReadInputRegisters | ReadHoldingRegisters
    signals: tuple[Signal, ...]

    @property
    def polled_fast(self) -> bool:
        # The approach loop counts vehicles and holds lowering back: it is read as fast as
        # the safety loop, or two vehicles a short gap apart would read as one.
        return Signal.SAFETY_LOOP in self.signals or Signal.ENTRY_LOOP in self.signals

    def bit(self, point: InputPoint, values: Sequence[int | bool]) -> bool:
        value = values[point.address - self.op.address]
        if point.kind is InputKind.DISCRETE_INPUT:
            return bool(value)
        return bool(int(value) >> (point.bit or 0) & 1)


def plan_reads(profile: IoModuleProfile) -> list[_InputRead]:
    """The fewest reads that cover every input of ``profile``."""
    reads: list[_InputRead] = []
    for kind in InputKind:
        signals = sorted((s for s, p in profile.inputs.items() if p.kind is kind), key=lambda s: profile.inputs[s].address)
        group: list[Signal] = []
        for sig in signals:
            if group and profile.inputs[sig].address - profile.inputs[group[0]].address >= _MAX_SPAN[kind]:
                reads.append(_read_of(profile, kind, group))
                group = []
            group.append(sig)
        if group:
            reads.append(_read_of(profile, kind, group))
    return reads


def _read_of(profile: IoModuleProfile, kind: InputKind, signals: list[Signal]) -> _InputRead:
    first = profile.inputs[signals[0]].address
    last = profile.inputs[signals[-1]].address
    return _InputRead(_READ_OP[kind](first, last - first + 1), tuple(signals))


class ModbusLaneIO(SampledLaneIO):
    """The :class:`~laned.drivers.lane_io.LaneIO` of an IO module at ``slave`` on ``bus``."""

    def __init__(
        self,
        bus: ModbusBus,
        slave: int,
        profile: IoModuleProfile = DEFAULT_IO_MODULE_PROFILE,
        *,
        name: str = "io_module",
    ) -> None:
        self.name = name
        self._bus = bus
        self._slave = slave
        self._profile = profile
        self._reads = plan_reads(profile)
        self._samples: dict[Signal, InputSample] = {}
        self._fanout: Fanout[InputSample] = Fanout(name, SUBSCRIBER_QUEUE_SIZE)
        self._failing: dict[int, str] = {}  # read index -> why it fails, while it does
        self._failing_since: float | None = None
        # (output, active) writes that did not read back, with what was seen; cleared
        # when the same write reads back right, so health shows the problems of now.
        self._mismatches: dict[tuple[Output, bool], str] = {}
        self._errors = 0
        self._readback_faults = 0
        self._last_ok_at: float | None = None
        self._outputs_lock = asyncio.Lock()
        self._poll_task: asyncio.Task[None] | None = None
        self._pulse_task: asyncio.Task[None] | None = None

    # -- lifetime ---------------------------------------------------------------------

    async def start(self) -> None:
        """Read every input once (so ``sample()`` has an answer), then poll."""
        for index, read in enumerate(self._reads):
            await self._poll(index, read)
        self._poll_task = asyncio.create_task(self._poll_forever(), name=f"{self.name}-poll")

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        """The long-running poll task (the short barrier pulse task is not watched)."""
        return [self._poll_task] if self._poll_task is not None else []

    async def close(self) -> None:
        await cancel_and_wait(self._pulse_task, self._poll_task)
        # Leave the lane in a defined state: barrier outputs released, no light, no
        # alarm. Best effort; the bus may already be gone.
        try:
            async with self._outputs_lock:
                await self._apply(tuple((o, False) for o in self._profile.outputs), Priority.SAFETY, keep_going=True)
        except DeviceError as exc:
            log.error("%s: could not switch every output off while closing: %s", self.name, exc)
        self._fanout.close()


    # -- inputs -----------------------------------------------------------------------


    async def _poll_forever(self) -> None:
        fast = [(i, r) for i, r in enumerate(self._reads) if r.polled_fast]
        slow = [(i, r) for i, r in enumerate(self._reads) if not r.polled_fast]
        poll = self._profile.poll
        schedule = [(fast, 1.0 / poll.safety_loop_hz), (slow, 1.0 / poll.other_inputs_hz)]
        due = [time.monotonic()] * len(schedule)
        while True:
            for n, (reads, period) in enumerate(schedule):
                if reads and time.monotonic() >= due[n]:
                    for index, read in reads:
                        await self._poll(index, read)
                    # Behind schedule (a slow or failing bus): poll again at once rather
                    # than in a burst of catch-up reads.
                    due[n] = max(due[n] + period, time.monotonic())
            wake = min((due[n] for n, (reads, _) in enumerate(schedule) if reads), default=math.inf)
            await asyncio.sleep(max(0.0, wake - time.monotonic()))  # the poll rate

    async def _poll(self, index: int, read: _InputRead) -> None:
        try:
            reply = await self._bus.request(self._slave, read.op, priority=Priority.SAFETY, device=self.name)
        except DeviceError as exc:
            self._poll_failed(index, read, exc)
            return
        for sig in read.signals:
            point = self._profile.inputs[sig]
            self._update(sig, point.active_from_bit(read.bit(point, reply.value)), reply.sent_at)
        self._last_ok_at = reply.received_at
        if self._failing.pop(index, None) is not None and not self._failing:
            down_for = time.monotonic() - (self._failing_since or time.monotonic())
            log.warning("%s: inputs readable again after %.1f s", self.name, down_for)
            self._failing_since = None

    def _poll_failed(self, index: int, read: _InputRead, exc: DeviceError) -> None:
        self._errors += 1
        now = time.monotonic()
        if index not in self._failing:
            places = ", ".join(f"{s} ({self._profile.inputs[s].location})" for s in read.signals)
            log.error(
                "%s: reading %s failed: %s; they read unknown, which the barrier interlock "
                "treats as occupied (the barrier stays up) until the module answers",
                self.name, places, exc,
            )
            self._failing_since = self._failing_since or now
        self._failing[index] = str(exc)
        for sig in read.signals:
            self._update(sig, None, now)

    def _update(self, signal: Signal, active: bool | None, at: float) -> None:
        previous = self._samples.get(signal)
        sample = InputSample(signal=signal, active=active, at=at)
        self._samples[signal] = sample
        if previous is None or previous.active != active:
            log.debug("%s: %s -> %s", self.name, signal, active)
            self._fanout.publish(sample)

    # -- outputs ----------------------------------------------------------------------

    async def raise_barrier(self) -> None:
        await self._drive_barrier(_RAISE)

    async def lower_barrier(self) -> None:
        await self._drive_barrier(_LOWER)

    async def stop_barrier(self) -> None:
        self._cancel_pulse()
        async with self._outputs_lock:
            # Both, even if the first fails: dropping what can be dropped is safer.
            await self._apply(_STOP, Priority.SAFETY, keep_going=True)

    async def set_light(self, light: Light) -> None:
        async with self._outputs_lock:
            await self._apply(_LIGHT[light], Priority.CONTROL)

    async def set_alarm(self, on: bool) -> None:
        async with self._outputs_lock:
            await self._apply(((Output.ALARM, on),), Priority.CONTROL)

    @property
    def readback_problems(self) -> tuple[str, ...]:
        """One text per output whose last write did not read back (cleared when one does)."""
        return tuple(self._mismatches.values())

    @property
    def readback_faults(self) -> int:
        """Output writes whose read-back disagreed, since start."""
        return self._readback_faults

    def health(self) -> DeviceHealth:
        problems = [*self._failing.values(), *self._mismatches.values()]
        online = self._bus.link_up and self._last_ok_at is not None and not self._failing
        detail = "; ".join(problems) or ("ok" if online else f"no answer yet ({self._bus.health(self._slave).last_error or 'starting'})")
        return DeviceHealth(self.name, online, detail, self._errors, self._last_ok_at)

    async def _drive_barrier(self, steps: tuple[Step, ...]) -> None:
        self._cancel_pulse()
        async with self._outputs_lock:
            await self._apply(steps, Priority.SAFETY)
        if self._profile.barrier.mode is BarrierMode.PULSE:
            self._pulse_task = asyncio.create_task(self._end_pulse(steps[-1][0]), name=f"{self.name}-pulse")

    async def _end_pulse(self, output: Output) -> None:
        await asyncio.sleep(self._profile.barrier.pulse_ms / 1000)  # the pulse width
        try:
            async with self._outputs_lock:
                await self._switch(output, False, Priority.SAFETY)
        except DeviceError as exc:
            log.error("%s: ending the %s pulse failed, the output may still be on: %s", self.name, output, exc)

    def _cancel_pulse(self) -> None:
        if self._pulse_task is not None and not self._pulse_task.done():
            self._pulse_task.cancel()
        self._pulse_task = None

    async def _apply(self, steps: Sequence[Step], priority: Priority, *, keep_going: bool = False) -> None:
        first_error: DeviceError | None = None
        for output, active in steps:
            try:
                await self._switch(output, active, priority)
            except DeviceError as exc:
                if not keep_going:
                    raise
                first_error = first_error or exc
        if first_error is not None:
            raise first_error

    async def _switch(self, output: Output, active: bool, priority: Priority) -> None:
        point = self._profile.outputs.get(output)
        if point is None:
            return  # not wired on this lane (e.g. no alarm horn): nothing to switch
        coil = point.coil_for(active)
        what = f"switch {output} {_on_off(active)}"
        try:
            await self._bus.request(self._slave, WriteCoil(point.coil, coil), priority=priority, device=self.name)
            reply = await self._bus.request(self._slave, ReadCoils(point.coil), priority=priority, device=self.name)
        except DeviceError as exc:
            self._errors += 1
            log.error("%s: could not %s (coil %d): %s", self.name, what, point.coil, exc)
            raise
        back = bool(reply.value[0])
        if back == coil:
            self._mismatches.pop((output, active), None)
            return
        self._errors += 1
        self._readback_faults += 1
        problem = f"{output} (coil {point.coil}) reads back {_on_off(back)} after switching it {_on_off(coil)}"
        self._mismatches[(output, active)] = problem
        log.error(
            "%s: %s — a welded relay, or outputs.%s.coil in the profile names the wrong coil; "
            "check the module's output LED",
            self.name, problem, output,
        )
        raise ReadbackMismatch(self.name, what, f"coil {point.coil} reads back {_on_off(back)}")
