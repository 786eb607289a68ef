"""GpioLaneIO: barrier, loops, light and alarm on the lane PC's own GPIO header.

gpiozero does the pin work. Its edge callbacks run in gpiozero's own threads (the pin
factory's event thread, or whichever thread drives a mock pin), so the callback only
stamps the time and hands the edge to the event loop with ``call_soon_threadsafe``;
every sample, queue and health field is touched from the loop thread alone.

Edges alone are not enough: the barrier interlock treats an old sample as occupied, so a
loop that sits still for minutes must still look fresh. A poll task re-reads every input
at ``sample_hz`` and refreshes the timestamps; it also catches an edge the kernel missed.

When the pins cannot be opened (no pin factory, pin in use, gpiochip gone) the driver
reports offline, every input reads ``active=None`` (unknown = occupied for the
interlock) and it retries every ``retry_interval`` seconds. It never raises out of
``start()``: a broken GPIO header degrades the lane, it does not stop the daemon.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Final, TypeAlias

from gpiozero import DigitalInputDevice, OutputDevice
from gpiozero.pins import Factory

from laned.drivers.errors import DeviceError, DeviceOffline, ReadbackMismatch
from laned.drivers.fanout import Fanout
from laned.drivers.gpio_profile import BarrierMode, GpioPinMap
from laned.drivers.lane_io import DeviceHealth, InputSample, Light, Output, SampledLaneIO, Signal
from laned.drivers.tasks import cancel_and_wait

log = logging.getLogger(__name__)

# Per samples() reader; past this the oldest samples are dropped (and logged).
SUBSCRIBER_QUEUE_SIZE: Final = 1000
RETRY_INTERVAL_S: Final = 5.0

PinFactorySource: TypeAlias = Factory | Callable[[], Factory] | None


class GpioLaneIO(SampledLaneIO):
    """The :class:`~laned.drivers.lane_io.LaneIO` of a lane wired to local GPIO pins.

    ``pin_factory`` is a gpiozero pin factory, or a callable that builds one (called on
    every (re)open, so a factory that failed can succeed later), or ``None`` for
    gpiozero's own choice (``GPIOZERO_PIN_FACTORY``, then lgpio, RPi.GPIO, …).
    """

    def __init__(
        self,
        pin_map: GpioPinMap,
        *,
        name: str = "gpio",
        pin_factory: PinFactorySource = None,
        retry_interval: float = RETRY_INTERVAL_S,
    ) -> None:
        self.name = name
        self._map = pin_map
        self._factory_source = pin_factory
        self._retry_interval = retry_interval
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inputs: dict[Signal, DigitalInputDevice] = {}
        self._outputs: dict[Output, OutputDevice] = {}
        # Bumped on every (re)open: an edge queued by a device that has since been
        # closed carries an old generation and is ignored.
        self._generation = 0
        self._online = False
        self._detail = "not started"  # why the pins are not usable, while offline
        # (output, state) writes that did not read back, with what was seen; cleared when
        # the same write reads back right, so health shows the problems of now. An "off"
        # that works says nothing about an "on" that failed, hence the state in the key.
        self._mismatches: dict[tuple[Output, bool], str] = {}
        self._errors = 0
        self._last_ok_at: float | None = None
        self._samples: dict[Signal, InputSample] = {}
        self._fanout: Fanout[InputSample] = Fanout(name, SUBSCRIBER_QUEUE_SIZE)
        self._task: asyncio.Task[None] | None = None
        self._pulse_task: asyncio.Task[None] | None = None
        self._retry_at = 0.0

    # -- lifetime -------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._try_open()
        self._task = asyncio.create_task(self._run(), name=f"{self.name}-poll")

    @property
    def tasks(self) -> list[asyncio.Task[None]]:
        return [self._task] if self._task is not None else []

    async def close(self) -> None:
        await cancel_and_wait(self._pulse_task, self._task)
        if self._online:
            # Leave the lane in a defined state: barrier outputs released, no light,
            # no alarm. Best effort; a failure is logged, the pins are closed anyway.
            for output in list(self._outputs):
                try:
                    self._write(output, False)
                except DeviceError as exc:
                    log.error("%s: could not switch %s off while closing: %s", self.name, output, exc)
        self._close_devices()
        self._online = False
        self._detail = "closed"
        self._fanout.close()


    # -- inputs -----------------------------------------------------------------------


    # -- outputs ----------------------------------------------------------------------

    async def raise_barrier(self) -> None:
        self._cancel_pulse()
        # Lower off first: the two barrier outputs are never on together.
        self._write(Output.BARRIER_LOWER, False)
        self._write(Output.BARRIER_RAISE, True)
        self._start_pulse(Output.BARRIER_RAISE)

    async def lower_barrier(self) -> None:
        self._cancel_pulse()
        self._write(Output.BARRIER_RAISE, False)
        self._write(Output.BARRIER_LOWER, True)
        self._start_pulse(Output.BARRIER_LOWER)

    async def stop_barrier(self) -> None:
        self._cancel_pulse()
        # Try both even if the first fails: dropping what can be dropped is safer.
        first_error: DeviceError | None = None
        for output in (Output.BARRIER_LOWER, Output.BARRIER_RAISE):
            try:
                self._write(output, False)
            except DeviceError as exc:
                first_error = first_error or exc
        if first_error is not None:
            raise first_error

    async def set_light(self, light: Light) -> None:
        # Off before on, so red and green are never lit together.
        if light is not Light.GREEN:
            self._write(Output.LIGHT_GREEN, False)
        if light is not Light.RED:
            self._write(Output.LIGHT_RED, False)
        if light is Light.GREEN:
            self._write(Output.LIGHT_GREEN, True)
        elif light is Light.RED:
            self._write(Output.LIGHT_RED, True)

    async def set_alarm(self, on: bool) -> None:
        self._write(Output.ALARM, on)

    def health(self) -> DeviceHealth:
        return DeviceHealth(
            device=self.name,
            online=self._online,
            detail=self._detail if not self._online else "; ".join(self._mismatches.values()) or "ok",
            errors=self._errors,
            last_ok_at=self._last_ok_at,
        )

    # -- pins -------------------------------------------------------------------------

    def _resolve_factory(self) -> Factory | None:
        source = self._factory_source
        if source is None or isinstance(source, Factory):
            return source
        return source()

    def _try_open(self) -> None:
        self._retry_at = time.monotonic() + self._retry_interval
        try:
            factory = self._resolve_factory()
            self._open_devices(factory)
        # gpiozero's failures span ImportError (BadPinFactory), ValueError (bad pin
        # name), OSError (gpiochip) and its own GPIOZeroError family; all mean the same
        # thing here: the pins are not usable now, try again later.
        except Exception as exc:  # noqa: BLE001
            self._close_devices()
            self._errors += 1
            self._go_offline(f"cannot open GPIO pins: {exc}")
            return
        self._online = True
        self._detail = "ok"
        self._poll_inputs()
        if self._online:
            log.info("%s: GPIO pins open; %d inputs, %d outputs", self.name, len(self._inputs), len(self._outputs))

    def _open_devices(self, factory: Factory | None) -> None:
        self._generation += 1
        generation = self._generation
        for signal, spec in self._map.inputs.items():
            try:
                device = DigitalInputDevice(
                    spec.pin,
                    pull_up=spec.pull_up,
                    active_state=spec.closed_high if spec.pull_up is None else None,
                    bounce_time=spec.bounce_ms / 1000 or None,
                    pin_factory=factory,
                )
            except Exception as exc:
                raise DeviceError(self.name, f"open {signal} input on {spec.pin}", str(exc)) from exc
            self._inputs[signal] = device
            # gpiozero's is_active means "contact closed" here, whatever the bias.
            device.when_activated = partial(self._edge_from_thread, generation, signal, True)
            device.when_deactivated = partial(self._edge_from_thread, generation, signal, False)
        for output, out_spec in self._map.outputs.items():
            try:
                self._outputs[output] = OutputDevice(
                    out_spec.pin,
                    active_high=out_spec.active_high,
                    initial_value=False,
                    pin_factory=factory,
                )
            except Exception as exc:
                raise DeviceError(self.name, f"open {output} output on {out_spec.pin}", str(exc)) from exc
            # An output that does not read back "off" right after opening is wired or
            # mapped wrongly; a barrier relay we cannot release must not count as online.
            self._verify(output, self._outputs[output], False)

    def _close_devices(self) -> None:
        self._generation += 1
        for device in [*self._inputs.values(), *self._outputs.values()]:
            try:
                device.close()
            except Exception as exc:  # noqa: BLE001 — closing a dead pin may fail any way
                log.debug("%s: closing %r failed: %s", self.name, device, exc)
        self._inputs.clear()
        self._outputs.clear()
        self._mismatches.clear()

    def _go_offline(self, detail: str) -> None:
        was_online = self._online
        self._online = False
        if was_online or detail != self._detail:
            log.error(
                "%s: %s; every lane input reads unknown (the interlock keeps the barrier "
                "up) until the pins open again; retrying every %.0f s",
                self.name, detail, self._retry_interval,
            )
        self._detail = detail
        self._publish_unknown()

    def _lost(self, detail: str) -> None:
        self._close_devices()
        self._errors += 1
        self._go_offline(detail)
        self._retry_at = time.monotonic() + self._retry_interval

    def _publish_unknown(self) -> None:
        now = time.monotonic()
        for signal in self._map.inputs:
            self._update(signal, None, now)

    # -- polling and edges ---------------------------------------------------------

    async def _run(self) -> None:
        period = 1.0 / self._map.sample_hz
        while True:
            await asyncio.sleep(period)
            if self._online:
                self._poll_inputs()
            elif time.monotonic() >= self._retry_at:
                self._try_open()
            else:
                self._publish_unknown()

    def _poll_inputs(self) -> None:
        for signal, device in self._inputs.items():
            # Stamp before reading: an edge between stamp and read then carries a later
            # time than this poll and wins, never the other way round.
            at = time.monotonic()
            try:
                closed = bool(device.is_active)
            except Exception as exc:  # noqa: BLE001 — a vanished gpiochip raises OSError, gpiozero its own
                self._lost(f"reading {signal} on {self._map.inputs[signal].pin} failed: {exc}")
                return
            self._update(signal, self._map.inputs[signal].active_from_closed(closed), at)
        self._last_ok_at = time.monotonic()

    def _edge_from_thread(self, generation: int, signal: Signal, closed: bool) -> None:
        """gpiozero callback: runs in a gpiozero thread, touches nothing of asyncio's."""
        at = time.monotonic()
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._on_edge, generation, signal, closed, at)
        except RuntimeError:
            pass  # the loop is closed: laned is shutting down and nobody listens

    def _on_edge(self, generation: int, signal: Signal, closed: bool, at: float) -> None:
        if generation != self._generation or not self._online:
            return
        self._update(signal, self._map.inputs[signal].active_from_closed(closed), at)

    def _update(self, signal: Signal, active: bool | None, at: float) -> None:
        previous = self._samples.get(signal)
        if previous is not None and at < previous.at:
            # An edge queued from gpiozero's thread before a poll that already saw the
            # new level: the newer reading stands.
            return
        sample = InputSample(signal=signal, active=active, at=at)
        self._samples[signal] = sample
        if previous is None or previous.active != active:
            log.debug("%s: %s -> %s", self.name, signal, active)
            self._fanout.publish(sample)

    # -- writes -----------------------------------------------------------------------

    def _write(self, output: Output, on: bool) -> None:
        spec = self._map.outputs.get(output)
        if spec is None:
            return  # not wired on this lane (e.g. no alarm horn): nothing to switch
        what = f"switch {output} {'on' if on else 'off'}"
        device = self._outputs.get(output)
        if device is None or not self._online:
            raise DeviceOffline(self.name, what, f"GPIO not available: {self._detail}")
        try:
            device.value = on
        except Exception as exc:  # noqa: BLE001
            self._lost(f"writing {output} on {spec.pin} failed: {exc}")
            raise DeviceOffline(self.name, what, f"pin {spec.pin}: {exc}") from exc
        self._verify(output, device, on)

    def _verify(self, output: Output, device: OutputDevice, on: bool) -> None:
        pin = self._map.outputs[output].pin
        try:
            back = bool(device.value)
        except Exception as exc:  # noqa: BLE001
            self._lost(f"reading back {output} on {pin} failed: {exc}")
            raise DeviceOffline(self.name, f"read back {output}", f"pin {pin}: {exc}") from exc
        if back == on:
            self._mismatches.pop((output, on), None)
            return
        self._errors += 1
        problem = f"{output} on {pin} reads back {'on' if back else 'off'} after switching it {'on' if on else 'off'}"
        self._mismatches[(output, on)] = problem
        log.error("%s: %s — check the relay driver and that nothing else claims %s", self.name, problem, pin)
        raise ReadbackMismatch(
            self.name, f"switch {output} {'on' if on else 'off'}", f"pin {pin} reads back {'on' if back else 'off'}"
        )

    def _start_pulse(self, output: Output) -> None:
        if self._map.barrier.mode is not BarrierMode.PULSE:
            return
        self._pulse_task = asyncio.get_running_loop().create_task(
            self._end_pulse(output), name=f"{self.name}-{output}-pulse"
        )

    async def _end_pulse(self, output: Output) -> None:
        await asyncio.sleep(self._map.barrier.pulse_ms / 1000)
        try:
            self._write(output, False)
        except DeviceError as exc:
            log.error("%s: ending the %s pulse failed, the output may still be on: %s", self.name, output, exc)

    def _cancel_pulse(self) -> None:
        if self._pulse_task is not None and not self._pulse_task.done():
            self._pulse_task.cancel()
        self._pulse_task = None
