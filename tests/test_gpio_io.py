"""Scenarios for GpioLaneIO on gpiozero's MockFactory, and the lane model wired to it.

Waiting is on samples or pin states with timeouts; the only sleeps are part of a
scenario's timing (a second command in the middle of a pulse).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from gpiozero.exc import BadPinFactory
from gpiozero.pins.mock import MockFactory, MockPin

from laned.drivers.errors import DeviceOffline, ReadbackMismatch
from laned.drivers.gpio_io import GpioLaneIO
from laned.drivers.gpio_profile import GpioPinMap
from laned.drivers.lane_io import InputSample, LaneIO, Light, Output, Signal
from laned.sim.lane_model import BarrierSpec, LaneGeometry, LaneModel, Motion, SensorFault, ViolationKind
from laned.sim.lane_model_gpio import LaneModelGpio

TIMEOUT = 2.0

PINS = {
    "inputs": {
        # NO loop relay to GND against the pull-up: closed (LOW) = occupied.
        "entry_loop": {"pin": "GPIO5", "contact": "NO", "pull_up": True},
        # NC loop relay: open (HIGH through the pull-up) = occupied; a cut wire reads occupied.
        "safety_loop": {"pin": "GPIO6", "contact": "NC", "pull_up": True},
        # NO limit switch to 3V3 against a pull-down: closed (HIGH) = arm up.
        "barrier_up": {"pin": "GPIO13", "contact": "NO", "pull_up": False},
        # NC limit switch on an opto board that pulls the line high when closed.
        "barrier_down": {"pin": "GPIO19", "contact": "NC", "pull_up": None, "closed_level": "high"},
    },
    "outputs": {
        "barrier_raise": {"pin": "GPIO20"},
        "barrier_lower": {"pin": "GPIO21"},
        # An active-low relay board: LOW energises the lamp.
        "light_green": {"pin": "GPIO22", "active_high": False},
        "light_red": {"pin": "GPIO23", "active_high": False},
        "alarm": {"pin": "GPIO24"},
    },
}


def pin_map(**overrides: object) -> GpioPinMap:
    return GpioPinMap.model_validate({**PINS, **overrides})


async def wait_for_sample(
    samples: AsyncIterator[InputSample], signal: Signal, active: bool | None, timeout: float = TIMEOUT
) -> InputSample:
    async def find() -> InputSample:
        async for sample in samples:
            if sample.signal is signal and sample.active is active:
                return sample
        raise AssertionError("sample stream ended")

    try:
        return await asyncio.wait_for(find(), timeout)
    except TimeoutError:
        pytest.fail(f"no sample {signal}={active} within {timeout} s")


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.005)


@pytest.fixture
def factory() -> MockFactory:
    return MockFactory()


@pytest.fixture
async def io(factory: MockFactory) -> AsyncIterator[GpioLaneIO]:
    driver = GpioLaneIO(pin_map(), pin_factory=factory)
    await driver.start()
    yield driver
    await driver.close()


def is_on(factory: MockFactory, output: Output, pins: GpioPinMap | None = None) -> bool:
    spec = (pins or pin_map()).outputs[output]
    return factory.pin(spec.pin).state == spec.active_high


# -- inputs -------------------------------------------------------------------------


async def test_gpio_lane_io_is_a_lane_io(io: GpioLaneIO) -> None:
    assert isinstance(io, LaneIO)
    assert io.health().online


async def test_untouched_inputs_read_by_contact_type(io: GpioLaneIO) -> None:
    # Nothing drives the pins: every contact reads open. NO inputs are then inactive,
    # NC inputs active: an unplugged NC safety loop keeps the barrier up.
    assert io.sample(Signal.ENTRY_LOOP).active is False
    assert io.sample(Signal.SAFETY_LOOP).active is True
    assert io.sample(Signal.BARRIER_UP).active is False
    assert io.sample(Signal.BARRIER_DOWN).active is True


@pytest.mark.parametrize(
    ("signal", "closed_level", "active_when_closed"),
    [
        (Signal.ENTRY_LOOP, False, True),
        (Signal.SAFETY_LOOP, False, False),
        (Signal.BARRIER_UP, True, True),
        (Signal.BARRIER_DOWN, True, False),
    ],
)
async def test_closing_a_contact_applies_its_polarity(
    io: GpioLaneIO, factory: MockFactory, signal: Signal, closed_level: bool, active_when_closed: bool
) -> None:
    samples = io.samples()
    pin = factory.pin(PINS["inputs"][signal.value]["pin"])

    pin.drive_high() if closed_level else pin.drive_low()
    await wait_for_sample(samples, signal, active_when_closed)
    pin.drive_low() if closed_level else pin.drive_high()
    await wait_for_sample(samples, signal, not active_when_closed)


async def test_an_edge_arrives_in_the_loop_stamped_with_the_time_of_the_edge(factory: MockFactory) -> None:
    # Polling every 10 s: within the test only the edge callback can deliver the change.
    async with GpioLaneIO(pin_map(sample_hz=0.1), pin_factory=factory) as io:
        samples = io.samples()
        before = time.monotonic()
        factory.pin("GPIO5").drive_low()  # entry loop occupied
        after = time.monotonic()

        sample = await wait_for_sample(samples, Signal.ENTRY_LOOP, True)
        assert before <= sample.at <= after
        assert io.sample(Signal.ENTRY_LOOP) == sample


async def test_callbacks_from_another_thread_are_bridged_into_the_loop(factory: MockFactory) -> None:
    loop = asyncio.get_running_loop()
    # Debug mode makes asyncio raise on any loop call from a foreign thread.
    loop.set_debug(True)
    async with GpioLaneIO(pin_map(sample_hz=0.1), pin_factory=factory) as io:
        handled_in: list[int] = []
        on_edge = io._on_edge

        def spy(*args: object) -> None:
            handled_in.append(threading.get_ident())
            on_edge(*args)

        io._on_edge = spy  # type: ignore[method-assign]
        samples = io.samples()
        for _ in Signal:  # the current state of each input comes first
            await asyncio.wait_for(anext(samples), TIMEOUT)
        reader = asyncio.create_task(anext(samples))
        await asyncio.sleep(0)  # the reader now blocks on its empty queue

        driver_thread: list[int] = []

        def drive_from_pin_thread() -> None:
            driver_thread.append(threading.get_ident())
            factory.pin("GPIO6").drive_low()  # NC safety loop closes: clear

        await loop.run_in_executor(None, drive_from_pin_thread)  # raises if the callback did
        sample = await asyncio.wait_for(reader, TIMEOUT)

        assert (sample.signal, sample.active) == (Signal.SAFETY_LOOP, False)
        assert driver_thread[0] != threading.get_ident()
        assert handled_in == [threading.get_ident()]


async def test_periodic_sampling_keeps_samples_fresh_without_edges(factory: MockFactory) -> None:
    async with GpioLaneIO(pin_map(sample_hz=50), pin_factory=factory) as io:
        samples = io.samples()
        primed = [await asyncio.wait_for(anext(samples), TIMEOUT) for _ in Signal]
        first = io.sample(Signal.ENTRY_LOOP)

        await wait_until(lambda: io.sample(Signal.ENTRY_LOOP).at > first.at + 0.2, "a re-read of the entry loop")
        assert all(io.sample(s).is_fresh(time.monotonic(), max_age=0.1) for s in Signal)
        # Refreshing is not a change: the sample stream stays quiet.
        assert {s.signal for s in primed} == set(Signal)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(samples), 0.2)


async def test_without_periodic_sampling_a_quiet_input_goes_stale(factory: MockFactory) -> None:
    # The control for the test above: with polling every 10 s nothing refreshes.
    async with GpioLaneIO(pin_map(sample_hz=0.1), pin_factory=factory) as io:
        await wait_until(
            lambda: not io.sample(Signal.ENTRY_LOOP).is_fresh(time.monotonic(), max_age=0.1),
            "the entry loop sample to age",
        )


# -- outputs ------------------------------------------------------------------------


async def test_level_mode_barrier_outputs(io: GpioLaneIO, factory: MockFactory) -> None:
    await io.raise_barrier()
    assert (is_on(factory, Output.BARRIER_RAISE), is_on(factory, Output.BARRIER_LOWER)) == (True, False)

    await io.lower_barrier()
    assert (is_on(factory, Output.BARRIER_RAISE), is_on(factory, Output.BARRIER_LOWER)) == (False, True)

    await io.stop_barrier()
    assert (is_on(factory, Output.BARRIER_RAISE), is_on(factory, Output.BARRIER_LOWER)) == (False, False)


async def test_lights_and_alarm_on_an_active_low_relay_board(io: GpioLaneIO, factory: MockFactory) -> None:
    green, red = factory.pin("GPIO22"), factory.pin("GPIO23")
    assert (green.state, red.state) == (True, True)  # both relays released at start

    await io.set_light(Light.GREEN)
    assert (green.state, red.state) == (False, True)
    await io.set_light(Light.RED)
    assert (green.state, red.state) == (True, False)
    await io.set_light(Light.OFF)
    assert (green.state, red.state) == (True, True)

    await io.set_alarm(True)
    assert factory.pin("GPIO24").state is True
    await io.set_alarm(False)
    assert factory.pin("GPIO24").state is False


async def test_pulse_mode_drops_the_output_after_the_pulse_width(factory: MockFactory) -> None:
    pins = pin_map(barrier={"mode": "pulse", "pulse_ms": 100})
    async with GpioLaneIO(pins, pin_factory=factory) as io:
        started = time.monotonic()
        await io.raise_barrier()
        assert is_on(factory, Output.BARRIER_RAISE, pins)

        await wait_until(lambda: not is_on(factory, Output.BARRIER_RAISE, pins), "the raise pulse to end")
        assert 0.09 <= time.monotonic() - started < 0.6
        assert not is_on(factory, Output.BARRIER_LOWER, pins)


async def test_a_new_command_restarts_the_pulse_instead_of_being_cut_short(factory: MockFactory) -> None:
    # Long pulses so scheduling jitter on a busy CI machine cannot blur the 0.5 s margins.
    pins = pin_map(barrier={"mode": "pulse", "pulse_ms": 2000})
    async with GpioLaneIO(pins, pin_factory=factory) as io:
        await io.raise_barrier()
        await asyncio.sleep(0.5)  # scenario timing: a quarter into the first pulse
        await io.raise_barrier()
        second_started = time.monotonic()
        await asyncio.sleep(1.75)  # past the end of the first pulse, before the second's
        assert is_on(factory, Output.BARRIER_RAISE, pins), "the first pulse's timer cut the second pulse"
        await wait_until(lambda: not is_on(factory, Output.BARRIER_RAISE, pins), "the second pulse to end")
        assert time.monotonic() - second_started >= 1.99

        await io.lower_barrier()
        await io.stop_barrier()  # stop cancels the lower pulse at once
        assert not is_on(factory, Output.BARRIER_LOWER, pins)


class StuckPin(MockPin):
    """A pin whose driver transistor is dead: writes do not change its level."""

    def _set_state(self, value: object) -> None:
        pass


async def test_an_output_that_does_not_follow_is_a_readback_mismatch(factory: MockFactory) -> None:
    factory.pin("GPIO20", pin_class=StuckPin)  # barrier_raise, active high: stays LOW
    async with GpioLaneIO(pin_map(), pin_factory=factory) as io:
        with pytest.raises(ReadbackMismatch) as raised:
            await io.raise_barrier()

        assert raised.value.device == "gpio"
        assert "barrier_raise" in str(raised.value) and "GPIO20" in str(raised.value)
        assert not is_on(factory, Output.BARRIER_LOWER)  # lower was switched off first
        health = io.health()
        assert health.errors == 1 and "barrier_raise" in health.detail

        # Lowering works (and the raise pin does read "off") but "cannot switch on" stays.
        await io.lower_barrier()
        assert is_on(factory, Output.BARRIER_LOWER)
        assert "barrier_raise" in io.health().detail


async def test_an_output_stuck_on_at_start_keeps_the_io_offline(factory: MockFactory) -> None:
    # Active-low green lamp on a pin stuck LOW: it reads "on" and cannot be released.
    factory.pin("GPIO22", pin_class=StuckPin)
    async with GpioLaneIO(pin_map(), pin_factory=factory, retry_interval=60) as io:
        assert not io.health().online
        assert "light_green" in io.health().detail
        assert all(io.sample(s).active is None for s in Signal)


# -- pins unavailable ---------------------------------------------------------------


async def test_no_pin_factory_means_offline_unknown_inputs_then_recovery(factory: MockFactory) -> None:
    attempts = 0

    def flaky_factory() -> MockFactory:
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise BadPinFactory("Unable to load any default pin factory!")
        return factory

    io = GpioLaneIO(pin_map(sample_hz=100), pin_factory=flaky_factory, retry_interval=0.05)
    await io.start()  # does not raise: the lane runs degraded
    try:
        assert not io.health().online
        assert "pin factory" in io.health().detail
        assert all(io.sample(s).active is None for s in Signal)
        with pytest.raises(DeviceOffline):
            await io.raise_barrier()

        samples = io.samples()
        await wait_for_sample(samples, Signal.ENTRY_LOOP, False)
        assert io.health().online and attempts == 3
        await io.raise_barrier()
    finally:
        await io.close()


async def test_a_pin_already_claimed_is_reported_by_name(factory: MockFactory) -> None:
    from gpiozero import DigitalInputDevice

    squatter = DigitalInputDevice("GPIO6", pin_factory=factory)
    try:
        async with GpioLaneIO(pin_map(), pin_factory=factory, retry_interval=60) as io:
            assert not io.health().online
            assert "safety_loop" in io.health().detail and "GPIO6" in io.health().detail
            assert io.sample(Signal.SAFETY_LOOP).active is None
    finally:
        squatter.close()


def test_the_pin_map_refuses_a_pin_used_twice() -> None:
    bad = {**PINS, "outputs": {**PINS["outputs"], "alarm": {"pin": "GPIO5"}}}
    with pytest.raises(ValueError, match="GPIO5 is used twice"):
        GpioPinMap.model_validate(bad)
    with pytest.raises(ValueError, match="safety_loop"):
        GpioPinMap.model_validate({**PINS, "inputs": {k: v for k, v in PINS["inputs"].items() if k != "safety_loop"}})


# -- the simulated lane over GPIO ---------------------------------------------------

# A short lane so a car arrives in a tenth of a second, and a fast barrier.
SHORT_LANE = LaneGeometry(spawn_x=-7.0)
FAST_BARRIER = BarrierSpec(travel_time=0.3)


@asynccontextmanager
async def simulated_lane(
    factory: MockFactory, pins: GpioPinMap, **io_args: Any
) -> AsyncIterator[tuple[LaneModel, GpioLaneIO]]:
    """A lane model wired to mock pins, the driver on them, and the binding running."""
    model = LaneModel(now=time.monotonic(), geometry=SHORT_LANE, barrier=FAST_BARRIER)
    binding = LaneModelGpio(model, pins, factory)  # before the IO claims the pins
    async with GpioLaneIO(pins, pin_factory=factory, **io_args) as io:
        runner = asyncio.create_task(binding.run())
        try:
            yield model, io
        finally:
            runner.cancel()


async def test_simulated_lane_a_car_pays_and_passes(factory: MockFactory) -> None:
    async with simulated_lane(factory, pin_map()) as (model, io):
        samples = io.samples()
        await wait_for_sample(samples, Signal.BARRIER_DOWN, True)
        model.add_vehicle(time.monotonic(), speed=10.0)

        await wait_for_sample(samples, Signal.ENTRY_LOOP, True)
        await io.raise_barrier()
        await wait_for_sample(samples, Signal.BARRIER_UP, True)
        await wait_for_sample(samples, Signal.SAFETY_LOOP, True)
        await wait_for_sample(samples, Signal.SAFETY_LOOP, False)
        await io.lower_barrier()
        await wait_for_sample(samples, Signal.BARRIER_DOWN, True)

        assert all(v.rear > model.geometry.safety_loop[1] for v in model.vehicles())
        assert model.violations == ()


async def test_simulated_lane_flags_a_controller_that_lowers_onto_a_car(factory: MockFactory) -> None:
    async with simulated_lane(factory, pin_map()) as (model, io):
        samples = io.samples()
        await io.raise_barrier()
        await wait_for_sample(samples, Signal.BARRIER_UP, True)
        model.add_vehicle(time.monotonic(), speed=8.0)
        await wait_for_sample(samples, Signal.SAFETY_LOOP, True)

        await io.lower_barrier()  # what the interlock must never do
        await wait_until(lambda: bool(model.violations), "the model to flag the lowering")
        assert model.violations[0].kind is ViolationKind.LOWER_COMMANDED_WHILE_OCCUPIED


async def test_simulated_lane_stop_halts_a_level_mode_barrier(factory: MockFactory) -> None:
    async with simulated_lane(factory, pin_map()) as (model, io):
        samples = io.samples()
        await io.raise_barrier()
        await wait_for_sample(samples, Signal.BARRIER_DOWN, False)
        await io.stop_barrier()
        await wait_until(lambda: model.barrier_motion is Motion.STOPPED, "the barrier to stop")
        assert 0.0 < model.barrier_position < 1.0


async def test_simulated_lane_a_pulse_runs_the_barrier_to_its_limit(factory: MockFactory) -> None:
    pins = pin_map(barrier={"mode": "pulse", "pulse_ms": 50})
    async with simulated_lane(factory, pins) as (model, io):
        samples = io.samples()
        await io.raise_barrier()
        await wait_for_sample(samples, Signal.BARRIER_UP, True)
        assert not is_on(factory, Output.BARRIER_RAISE, pins)  # the pulse ended long before
        assert model.barrier_position == 1.0


async def test_simulated_lane_dead_inputs_read_as_open_contacts(factory: MockFactory) -> None:
    async with simulated_lane(factory, pin_map()) as (model, io):
        samples = io.samples()
        await wait_for_sample(samples, Signal.SAFETY_LOOP, False)
        model.set_fault(time.monotonic(), Signal.SAFETY_LOOP, SensorFault.dead())  # NC: a cut wire
        await wait_for_sample(samples, Signal.SAFETY_LOOP, True)  # reads occupied: safe
        assert model.true_state(Signal.SAFETY_LOOP) is False

        model.add_vehicle(time.monotonic(), speed=10.0)
        await wait_for_sample(samples, Signal.ENTRY_LOOP, True)
        model.set_fault(time.monotonic(), Signal.ENTRY_LOOP, SensorFault.dead())  # NO: reads clear
        await wait_for_sample(samples, Signal.ENTRY_LOOP, False)
        assert model.true_state(Signal.ENTRY_LOOP) is True


async def test_simulated_lane_io_offline_reads_unknown_and_recovers(factory: MockFactory) -> None:
    async with simulated_lane(factory, pin_map(), retry_interval=0.05) as (model, io):
        samples = io.samples()
        await wait_for_sample(samples, Signal.ENTRY_LOOP, False)
        model.set_io_online(time.monotonic(), False)

        await wait_for_sample(samples, Signal.ENTRY_LOOP, None)
        assert all(io.sample(s).active is None for s in Signal)
        assert not io.health().online and "GPIO" in io.health().detail
        with pytest.raises(DeviceOffline):
            await io.raise_barrier()

        model.set_io_online(time.monotonic(), True)
        await wait_for_sample(samples, Signal.ENTRY_LOOP, False)
        assert io.health().online
        await io.raise_barrier()
        await wait_for_sample(samples, Signal.BARRIER_UP, True)
