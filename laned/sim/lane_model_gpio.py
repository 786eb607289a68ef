"""Bind a :class:`~laned.sim.lane_model.LaneModel` to gpiozero mock pins.

The binding plays the cabinet wiring: it drives the input pins of a
:class:`~gpiozero.pins.mock.MockFactory` with the model's *sensed* state, through the
same pin map (NO/NC contact, pull-up/down) that :class:`~laned.drivers.gpio_io.GpioLaneIO`
reads with, and turns writes to the output pins into barrier commands, the way a barrier
controller wired to those relays would.

How faults look on a GPIO header:

- a dead input is a broken wire: the contact reads *open*, so a NO loop reads clear and
  an NC loop reads occupied (which is why safety loops are wired NC);
- an offline IO module is a gpiochip that stops answering: every read and write on the
  pins raises ``OSError``, as the kernel does for a vanished chip.

Usage (the binding must create the pins before GpioLaneIO opens them)::

    factory = MockFactory()
    model = LaneModel(now=time.monotonic())
    binding = LaneModelGpio(model, pin_map, factory)
    io = GpioLaneIO(pin_map, pin_factory=factory)
    await io.start()
    binding.sync(time.monotonic())   # or: asyncio.create_task(binding.run())
"""

from __future__ import annotations

import asyncio
import errno
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from gpiozero.pins.mock import MockFactory, MockPin

from laned.drivers.gpio_profile import BarrierMode, GpioPinMap
from laned.drivers.lane_io import Light, Output, Signal
from laned.sim.lane_model import LaneModel


class LaneModelPin(MockPin):
    """A mock pin that the lane model drives (input) or listens to (output).

    - ``external_level``: the level the outside world holds the pin at; the pull
      resistor setting does not override it (a relay contact beats a 50 kΩ pull).
    - ``offline``: every read and write raises ``OSError(EIO)``.
    - ``writes``: level changes of an output pin with their monotonic time, so a pulse
      shorter than the binding's sync period is still seen.
    """

    def __init__(self, factory: Any, info: Any) -> None:
        self.external_level: bool | None = None
        self.offline = False
        self.writes: deque[tuple[float, bool]] = deque()
        super().__init__(factory, info)

    def _check_online(self) -> None:
        if self.offline:
            raise OSError(errno.EIO, f"{self.info.name}: GPIO chip not responding (simulated)")

    def _get_state(self) -> bool:
        self._check_online()
        state: bool = super()._get_state()  # gpiozero is untyped
        return state

    def _set_state(self, value: Any) -> None:
        self._check_online()
        super()._set_state(value)

    def _set_pull(self, value: str) -> None:
        super()._set_pull(value)
        if self.external_level is not None and self._state != self.external_level:
            self._change_state(self.external_level)

    def _change_state(self, value: Any) -> bool:
        changed: bool = super()._change_state(value)
        if changed and self._function == "output":
            self.writes.append((time.monotonic(), bool(value)))
        return changed

    def hold(self, level: bool) -> None:
        """Hold an input pin at ``level`` (firing gpiozero's edge callback on a change)."""
        self.external_level = level
        if self._function != "input":
            return  # someone made it an output; the wiring has nothing to drive
        if level:
            self.drive_high()
        else:
            self.drive_low()


class LaneModelGpio:
    """Mirrors a lane model onto the mock pins named in a :class:`GpioPinMap`."""

    def __init__(self, model: LaneModel, pin_map: GpioPinMap, factory: MockFactory) -> None:
        self.model = model
        self._map = pin_map
        self.input_pins: dict[Signal, LaneModelPin] = {
            s: self._pin(factory, spec.pin) for s, spec in pin_map.inputs.items()
        }
        self.output_pins: dict[Output, LaneModelPin] = {
            o: self._pin(factory, spec.pin) for o, spec in pin_map.outputs.items()
        }
        self._active: dict[Output, bool] = {o: False for o in Output}
        self._drive_inputs()

    @staticmethod
    def _pin(factory: MockFactory, name: str) -> LaneModelPin:
        pin = factory.pin(name, pin_class=LaneModelPin)
        if not isinstance(pin, LaneModelPin):
            raise ValueError(
                f"pin {name} already exists as {type(pin).__name__}: create the "
                "LaneModelGpio binding before anything opens the pins"
            )
        return pin

    def sync(self, now: float) -> None:
        """Apply output writes up to ``now`` (in time order), advance, drive the inputs."""
        writes: list[tuple[float, int, Output, bool]] = []
        for order, (output, pin) in enumerate(self.output_pins.items()):
            while pin.writes:
                at, level = pin.writes.popleft()
                writes.append((at, order, output, level))
        writes.sort()
        for at, _, output, level in writes:
            at = min(max(at, self.model.now), now)
            self._apply(output, level == self._map.outputs[output].active_high, at)
            self._drive_inputs()
        self.model.advance(now)
        self._drive_inputs()

    async def run(self, period: float = 0.005, clock: Callable[[], float] = time.monotonic) -> None:
        """Keep the model in step with the pins until cancelled."""
        while True:
            self.sync(clock())
            await asyncio.sleep(period)

    def _apply(self, output: Output, active: bool, at: float) -> None:
        if self._active[output] == active:
            return
        self._active[output] = active
        model = self.model
        level_mode = self._map.barrier.mode is BarrierMode.LEVEL
        if output in (Output.BARRIER_RAISE, Output.BARRIER_LOWER):
            other = Output.BARRIER_LOWER if output is Output.BARRIER_RAISE else Output.BARRIER_RAISE
            if active:
                # A pulse (rising edge) starts a latched run; a held level runs the motor.
                if output is Output.BARRIER_RAISE:
                    model.command_raise(at)
                else:
                    model.command_lower(at)
            elif level_mode and not self._active[other]:
                model.command_stop(at)
        elif output in (Output.LIGHT_GREEN, Output.LIGHT_RED):
            if self._active[Output.LIGHT_RED]:
                light = Light.RED  # both lit reads as red: the driver stops
            elif self._active[Output.LIGHT_GREEN]:
                light = Light.GREEN
            else:
                light = Light.OFF
            model.set_light(at, light)
        elif output is Output.ALARM:
            model.set_alarm(at, active)

    def _drive_inputs(self) -> None:
        offline = not self.model.io_online
        for pin in self.output_pins.values():
            pin.offline = offline
        for signal, pin in self.input_pins.items():
            pin.offline = offline
            if offline:
                continue
            spec = self._map.inputs[signal]
            value = self.model.sensed(signal)
            # A dead input is a broken wire: the contact reads open.
            level = (not spec.closed_high) if value is None else spec.level_for(value)
            pin.hold(level)
