"""The IO-module driver against the emulated DI/DO module, over Modbus TCP and RTU (pty).

The emulator plays the cabinet: input bits as the detectors and limit switches present
them (NO/NC applied), and coils that drive relays, one of which can weld.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from laned.drivers.device_profiles import (
    DEFAULT_IO_MODULE_PROFILE,
    BarrierDrive,
    BarrierMode,
    InputKind,
    InputPoint,
    Polarity,
)
from laned.drivers.errors import DeviceOffline, DeviceTimeout, ReadbackMismatch
from laned.drivers.lane_io import InputSample, LaneIO, Light, Output, Signal
from laned.drivers.modbus_io import ModbusLaneIO
from laned.sim.lane_model import BarrierSpec, LaneModel, Motion

pytestmark = pytest.mark.hil


async def next_sample(stream: AsyncIterator[InputSample], signal: Signal, active: bool | None) -> InputSample:
    """The next sample of ``signal`` reading ``active`` (others are skipped); 2 s at most."""
    async with asyncio.timeout(2.0):
        async for sample in stream:
            if sample.signal is signal and sample.active is active:
                return sample
    raise AssertionError("the sample stream ended")


def outputs_on(bench) -> set[Output]:
    return {o for o in bench.io_device.profile.outputs if bench.io_device.output_active(o)}


async def test_barrier_light_and_alarm_commands_switch_the_relays_and_are_read_back(bench, lane_io) -> None:
    assert isinstance(lane_io, LaneIO)
    await lane_io.raise_barrier()
    assert outputs_on(bench) == {Output.BARRIER_RAISE}

    await lane_io.lower_barrier()
    assert outputs_on(bench) == {Output.BARRIER_LOWER}

    await lane_io.stop_barrier()
    await lane_io.set_light(Light.GREEN)
    await lane_io.set_alarm(True)
    assert outputs_on(bench) == {Output.LIGHT_GREEN, Output.ALARM}

    await lane_io.set_light(Light.RED)
    assert outputs_on(bench) == {Output.LIGHT_RED, Output.ALARM}

    # Off before on: the coil log never has raise and lower (or red and green) on together.
    coils = [False] * 16
    for write in bench.io_device.writes:
        coils[write.address] = bool(write.values[0])
        assert not (coils[0] and coils[1]) and not (coils[2] and coils[3])
    assert lane_io.readback_faults == 0
    assert lane_io.health().online


async def test_input_changes_arrive_as_samples_stamped_with_the_time_of_their_read(bench, lane_io) -> None:
    stream = lane_io.samples()
    assert (await next_sample(stream, Signal.SAFETY_LOOP, False)).signal is Signal.SAFETY_LOOP

    before = time.monotonic()
    bench.io_device.set_input(Signal.SAFETY_LOOP, True)
    occupied = await next_sample(stream, Signal.SAFETY_LOOP, True)
    # The safety loop is wired NC: occupied is the bit going to 0.
    assert bench.io_device.discrete_inputs[1] is False
    # Stamped when the read went out, so no later than now and not before the change
    # less one poll period (a read already on its way may have seen the new state).
    assert before - 0.05 <= occupied.at <= time.monotonic()
    assert lane_io.sample(Signal.SAFETY_LOOP) is not None

    bench.io_device.set_input(Signal.ENTRY_LOOP, True)
    entry = await next_sample(stream, Signal.ENTRY_LOOP, True)
    assert entry.at >= occupied.at


async def test_safety_loop_is_read_at_20_hz_or_faster(bench, lane_io, wait_until) -> None:
    device = bench.io_device
    device.clear_log()

    await wait_until(lambda: len(device.request_times) >= 11, what="eleven polls")

    reads = device.request_times[:11]
    # 50 ms a poll, with room for a busy test machine; the other inputs' 10 Hz would fail.
    assert (reads[-1] - reads[0]) / 10 <= 0.05 * 1.5, "the safety loop must be polled at >= 20 Hz"


async def test_inputs_on_register_bits_with_nc_polarity_are_decoded(make_bench) -> None:
    profile = DEFAULT_IO_MODULE_PROFILE.model_copy(
        update={
            "inputs": {
                Signal.ENTRY_LOOP: InputPoint(kind=InputKind.INPUT_REGISTER_BIT, address=3, bit=0),
                Signal.SAFETY_LOOP: InputPoint(kind=InputKind.INPUT_REGISTER_BIT, address=3, bit=9, polarity=Polarity.NC),
                Signal.BARRIER_UP: InputPoint(kind=InputKind.HOLDING_REGISTER_BIT, address=1, bit=15),
                Signal.BARRIER_DOWN: InputPoint(kind=InputKind.HOLDING_REGISTER_BIT, address=1, bit=14, polarity=Polarity.NC),
            }
        }
    )
    async with make_bench("tcp", io_profile=profile) as bench:
        bench.io_device.set_input(Signal.SAFETY_LOOP, True)
        bench.io_device.set_input(Signal.BARRIER_UP, True)
        async with ModbusLaneIO(bench.bus, bench.io_slave, profile) as lane_io:
            stream = lane_io.samples()
            assert bench.io_device.input_registers[3] == 0  # NC, occupied: bit 9 clear
            assert bench.io_device.holding[1] == (1 << 15) | (1 << 14)
            got = {s.signal: s.active for s in [await anext(stream) for _ in Signal]}
            assert got == {
                Signal.ENTRY_LOOP: False,
                Signal.SAFETY_LOOP: True,
                Signal.BARRIER_UP: True,
                Signal.BARRIER_DOWN: False,
            }

            bench.io_device.set_input(Signal.SAFETY_LOOP, False)
            await next_sample(stream, Signal.SAFETY_LOOP, False)
            assert bench.io_device.input_registers[3] == 1 << 9


async def test_pulse_mode_drops_the_barrier_output_after_the_pulse(make_bench, wait_until) -> None:
    profile = DEFAULT_IO_MODULE_PROFILE.model_copy(update={"barrier": BarrierDrive(mode=BarrierMode.PULSE, pulse_ms=50)})
    async with make_bench("tcp", io_profile=profile) as bench:
        async with ModbusLaneIO(bench.bus, bench.io_slave, profile) as lane_io:
            await lane_io.raise_barrier()
            assert bench.io_device.output_active(Output.BARRIER_RAISE)

            await wait_until(lambda: not bench.io_device.output_active(Output.BARRIER_RAISE), what="the pulse to end")
            raise_writes = [w for w in bench.io_device.writes if w.address == 0]
            assert [w.values for w in raise_writes] == [(1,), (0,)]
            assert 0.05 <= raise_writes[1].at - raise_writes[0].at < 0.5


async def test_welded_relay_raises_readback_mismatch_and_counts_a_fault(bench, lane_io) -> None:
    bench.io_device.stick(Output.BARRIER_RAISE, False)

    with pytest.raises(ReadbackMismatch, match="coil 0 reads back off"):
        await lane_io.raise_barrier()

    assert lane_io.readback_faults == 1
    assert lane_io.health().errors == 1
    assert "barrier_raise (coil 0) reads back off" in lane_io.health().detail

    bench.io_device.unstick(Output.BARRIER_RAISE)
    await lane_io.raise_barrier()
    assert lane_io.health().detail == "ok", "a write that reads back right clears the fault"


async def test_io_module_offline_makes_every_input_unknown_until_it_answers_again(bench, lane_io) -> None:
    stream = lane_io.samples()
    await next_sample(stream, Signal.SAFETY_LOOP, False)

    await bench.server.go_offline()
    unknown = await next_sample(stream, Signal.SAFETY_LOOP, None)
    assert all(lane_io.sample(s).active is None for s in Signal)
    assert not lane_io.health().online
    with pytest.raises((DeviceOffline, DeviceTimeout)):
        await lane_io.raise_barrier()

    bench.io_device.set_input(Signal.SAFETY_LOOP, True)  # a car arrived meanwhile
    await bench.server.come_back()
    back = await next_sample(stream, Signal.SAFETY_LOOP, True)
    assert back.at > unknown.at
    assert lane_io.health().online


@pytest.mark.parametrize("transport", ["tcp"])
async def test_tcp_io_module_back_after_an_outage_is_reached_on_a_new_connection(bench, lane_io) -> None:
    stream = lane_io.samples()
    generation = bench.bus.generation

    await bench.server.go_offline()
    await next_sample(stream, Signal.BARRIER_DOWN, None)
    await bench.server.come_back()
    await next_sample(stream, Signal.BARRIER_DOWN, False)

    assert bench.bus.generation == generation + 1


async def test_lane_model_sees_the_barrier_commands_and_drives_the_inputs(bench, lane_io) -> None:
    now = time.monotonic()
    model = LaneModel(now=now, barrier=BarrierSpec(travel_time=1.0))
    bench.io_device.attach_lane_model(model)
    stream = lane_io.samples()
    await next_sample(stream, Signal.BARRIER_DOWN, True)

    await lane_io.raise_barrier()
    assert model.barrier_motion is Motion.RAISING
    model.advance(max(time.monotonic(), model.now) + 1.0)  # the arm reaches the top
    await next_sample(stream, Signal.BARRIER_UP, True)

    await lane_io.set_light(Light.GREEN)
    assert model.light is Light.GREEN

    model.set_io_online(model.now, False)
    await next_sample(stream, Signal.BARRIER_UP, None)
