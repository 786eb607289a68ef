"""The bus scheduler on a real link shared by the emulated display (slave 1) and IO module
(slave 2), over Modbus TCP and RTU (pty): ordering, timing, breakers and reconnects."""

from __future__ import annotations

import asyncio
import re
import sys

import pytest
from pymodbus.constants import ExcCodes

from laned.drivers.errors import DeviceOffline, DeviceRejected, DeviceTimeout
from laned.drivers.modbus_bus import (
    BreakerState,
    BusSettings,
    ModbusBus,
    Priority,
    ReadCoils,
    ReadDiscreteInputs,
    ReadHoldingRegisters,
    RtuLink,
    TcpLink,
    WriteCoil,
    WriteRegister,
    WriteRegisters,
)

pytestmark = pytest.mark.hil


async def test_barrier_write_queued_behind_many_display_writes_goes_first(bench, wait_until) -> None:
    display, io = bench.display_device, bench.io_device
    # The first display write is slow to answer, so the others are still queued
    # when the barrier command arrives.
    display.faults.slow(0.05, count=1)
    display_writes = [
        asyncio.create_task(bench.bus.request(1, WriteRegister(16 + n, 0x2020), priority=Priority.DISPLAY))
        for n in range(20)
    ]
    await wait_until(lambda: display.request_times, what="the first display write on the wire")

    await bench.bus.request(2, WriteCoil(0, True), priority=Priority.SAFETY)
    await asyncio.gather(*display_writes)

    order = [(w.slave, w.address) for w in sorted(display.writes + io.writes, key=lambda w: w.seq)]
    assert order[:2] == [(1, 16), (2, 0)], "the barrier write goes right after the write already on the wire"
    assert order[2:] == [(1, 16 + n) for n in range(1, 20)], "display writes keep their order"


async def test_a_retry_keeps_its_place_ahead_of_later_requests_of_its_priority(bench) -> None:
    display = bench.display_device
    display.faults.no_answer(count=1)
    first = asyncio.create_task(bench.bus.request(1, WriteRegister(16, 1), priority=Priority.DISPLAY))
    second = asyncio.create_task(bench.bus.request(1, WriteRegister(17, 2), priority=Priority.DISPLAY))

    assert (await first).attempts == 2
    await second
    assert [w.address for w in display.writes] == [16, 17]


@pytest.mark.parametrize("transport", ["rtu"])
async def test_inter_frame_gap_and_one_request_at_a_time(make_bench, transport) -> None:
    gap = 0.02
    settings = BusSettings(response_timeout_s=0.1, frame_gap_s=gap)
    async with make_bench(transport, settings=settings) as bench:
        device = bench.io_device
        device.clear_log()
        await asyncio.gather(*(bench.bus.request(2, ReadDiscreteInputs(0, 4)) for _ in range(6)))

        arrivals = device.request_times
        assert len(arrivals) == 6
        assert min(b - a for a, b in zip(arrivals, arrivals[1:])) >= gap
        assert device.max_in_flight == 1


async def test_a_silent_slave_opens_its_breaker_while_the_other_slave_keeps_working(bench) -> None:
    bench.display_device.faults.no_answer()

    for _ in range(bench.bus.settings.breaker_threshold):
        with pytest.raises(DeviceTimeout):
            await bench.bus.request(1, ReadHoldingRegisters(0, 1))
    assert bench.bus.health(1).breaker is BreakerState.OPEN

    heard = bench.display_device.heard
    with pytest.raises(DeviceOffline, match="next try in"):
        await bench.bus.request(1, ReadHoldingRegisters(0, 1))
    assert bench.display_device.heard == heard

    reply = await bench.bus.request(2, ReadCoils(0, 5))
    assert reply.value == (False,) * 5
    assert bench.bus.health(2).breaker is BreakerState.CLOSED
    health = bench.bus.health(1)
    assert (health.failures, health.timeouts, health.rejected) == (3, 6, 1)
    assert not health.online and bench.bus.health(2).online


async def test_half_open_probe_is_one_attempt_and_a_failed_probe_reopens_the_breaker(bench, wait_until) -> None:
    display = bench.display_device
    display.faults.no_answer()
    for _ in range(bench.bus.settings.breaker_threshold):
        with pytest.raises(DeviceTimeout):
            await bench.bus.request(1, ReadHoldingRegisters(0, 1))

    async def probe() -> BaseException | None:
        try:
            await bench.bus.request(1, ReadHoldingRegisters(0, 1))
        except DeviceOffline:
            return None  # still cooling down
        except DeviceTimeout as exc:
            return exc
        raise AssertionError("a silent display answered")

    heard = display.heard
    async with asyncio.timeout(2.0):
        # The breaker's cool-down is time, not an event the test could wait on: poll it.
        while (outcome := await probe()) is None:  # noqa: ASYNC110
            await asyncio.sleep(0.02)  # polling interval while the cool-down runs
    assert isinstance(outcome, DeviceTimeout)
    assert display.heard == heard + 1, "a probe is a single attempt, without retries"
    assert bench.bus.health(1).breaker is BreakerState.OPEN
    with pytest.raises(DeviceOffline, match="next try in"):
        await bench.bus.request(1, ReadHoldingRegisters(0, 1))


async def test_exception_response_is_not_retried_but_a_busy_device_is(bench) -> None:
    display = bench.display_device
    display.faults.refuse(ExcCodes.ILLEGAL_VALUE, count=1)
    with pytest.raises(DeviceRejected, match="illegal data value"):
        await bench.bus.request(1, WriteRegister(16, 1))
    assert bench.bus.health(1).retries == 0

    display.faults.refuse(ExcCodes.DEVICE_BUSY, count=1)
    reply = await bench.bus.request(1, WriteRegister(16, 2))
    assert reply.attempts == 2
    assert bench.bus.health(1).exceptions == 2


@pytest.mark.parametrize("transport", ["tcp"])
async def test_lost_tcp_link_fails_fast_and_reconnects_with_backoff(bench, wait_until) -> None:
    await bench.server.go_offline()
    await wait_until(lambda: not bench.bus.link_up, what="the bus to notice the closed connection")

    with pytest.raises(DeviceOffline, match="is down"):
        await bench.bus.request(2, ReadCoils(0, 1))
    assert not bench.bus.link_health().online
    assert bench.bus.health(2).rejected == 1

    await bench.server.come_back()
    async with asyncio.timeout(2.0):
        await bench.bus.wait_generation(1)
    assert (await bench.bus.request(2, ReadCoils(0, 1))).value == (False,)
    assert bench.bus.link_health().online


@pytest.mark.parametrize("transport", ["rtu"])
async def test_pulled_rs485_adapter_fails_fast_and_reconnects_when_plugged_back(bench, wait_until) -> None:
    bench.server.unplug()
    await wait_until(lambda: not bench.bus.link_up, what="the bus to notice the adapter is gone")

    with pytest.raises(DeviceOffline, match="is down"):
        await bench.bus.request(2, ReadCoils(0, 1))
    await wait_until(lambda: "does not exist" in bench.bus.link_health().detail, what="a failed reconnect")

    bench.server.replug()
    async with asyncio.timeout(2.0):
        await bench.bus.wait_generation(1)
    assert (await bench.bus.request(2, ReadCoils(0, 1))).value == (False,)


async def test_bus_started_without_its_device_connects_when_it_appears(transport, make_bench) -> None:
    async with make_bench(transport) as bench:
        link = bench.server.link
        await bench.server.go_offline()
        if isinstance(link, TcpLink):
            # A second bus on the closed port: the device "is not there yet".
            late = ModbusBus(link, bench.bus.settings, name="late")
            await late.start()
            try:
                assert not late.link_up
                with pytest.raises(DeviceOffline, match="refused or unreachable"):
                    await late.request(2, ReadCoils(0, 1))
                await bench.server.come_back()
                async with asyncio.timeout(2.0):
                    await late.wait_connected()
                assert (await late.request(2, ReadCoils(0, 1))).value == (False,)
            finally:
                await late.close()
        else:
            missing = ModbusBus(RtuLink(port=link.port + "-missing"), bench.bus.settings, name="missing")
            await missing.start()
            try:
                with pytest.raises(DeviceOffline, match="does not exist"):
                    await missing.request(2, ReadCoils(0, 1))
            finally:
                await missing.close()


async def test_closing_the_bus_fails_queued_requests_instead_of_leaving_them_hanging(bench, wait_until) -> None:
    bench.display_device.faults.slow(0.05, count=1)
    queued = [asyncio.create_task(bench.bus.request(1, ReadHoldingRegisters(0, 1))) for _ in range(3)]
    await wait_until(lambda: bench.display_device.request_times, what="the first read on the wire")

    await bench.bus.close()

    async with asyncio.timeout(1.0):
        results = await asyncio.gather(*queued, return_exceptions=True)
    assert all(isinstance(r, DeviceOffline) for r in results)


async def test_bench_entry_point_serves_the_display_and_the_io_module() -> None:
    bench = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "laned.sim.modbus_devices", "--tcp", "127.0.0.1:0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(10.0):
            ready = (await bench.stdout.readline()).decode()
        port = re.search(r"Modbus TCP 127\.0\.0\.1:(\d+)", ready)
        assert port, ready
        async with ModbusBus(TcpLink(host="127.0.0.1", port=int(port[1])), name="bench") as bus:
            await bus.request(1, WriteRegisters(7, (0, 1250)))
            assert (await bus.request(1, ReadHoldingRegisters(7, 2))).value == (0, 1250)
            await bus.request(2, WriteCoil(2, True))
    finally:
        bench.terminate()
        _, stderr = await bench.communicate()
    assert bench.returncode == 0, stderr.decode()
    assert "fee 12.50" in stderr.decode()
    assert "light_green=on" in stderr.decode()
