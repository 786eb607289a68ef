"""Shared fixtures of the Modbus HIL tests: emulated devices on a real link, laned's bus
and drivers on the other end.

A *bench* is one emulated Modbus link (TCP on 127.0.0.1, or RTU on a pty pair) with a
fee display at slave 1 and an IO module at slave 2, the way a lane cabinet puts both on
one RS-485 line, and laned's :class:`ModbusBus` connected to it. Timings are shortened
(100 ms answers, 300 ms breaker cool-down) so fault scenarios take a fraction of a second.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
from mosquitto_broker import MosquittoBroker
from mqtt_pki import Pki

from laned.drivers.device_profiles import (
    DEFAULT_FEE_DISPLAY_PROFILE,
    DEFAULT_IO_MODULE_PROFILE,
    FeeDisplayProfile,
    IoModuleProfile,
)
from laned.drivers.modbus_bus import BusSettings, ModbusBus
from laned.drivers.modbus_display import ModbusFeeDisplay
from laned.drivers.modbus_io import ModbusLaneIO
from laned.sim.modbus_devices import EmulatedFeeDisplay, EmulatedIoModule, ModbusDeviceServer

DISPLAY_SLAVE = 1
IO_SLAVE = 2

FAST = BusSettings(
    response_timeout_s=0.1,
    retries=1,
    breaker_threshold=3,
    breaker_cooldown_s=0.3,
    reconnect_min_s=0.05,
    reconnect_max_s=0.2,
    connect_timeout_s=1.0,
)

Transport = Literal["tcp", "rtu"]


@dataclass
class Bench:
    server: ModbusDeviceServer
    display_device: EmulatedFeeDisplay  # the emulated hardware
    io_device: EmulatedIoModule
    bus: ModbusBus
    display_slave: int = DISPLAY_SLAVE
    io_slave: int = IO_SLAVE


@asynccontextmanager
async def open_bench(
    transport: Transport,
    *,
    settings: BusSettings = FAST,
    display_profile: FeeDisplayProfile = DEFAULT_FEE_DISPLAY_PROFILE,
    io_profile: IoModuleProfile = DEFAULT_IO_MODULE_PROFILE,
) -> AsyncIterator[Bench]:
    display = EmulatedFeeDisplay(DISPLAY_SLAVE, display_profile)
    io = EmulatedIoModule(IO_SLAVE, io_profile)
    async with ModbusDeviceServer([display, io], transport=transport) as server:
        async with ModbusBus(server.link, settings, name=f"{transport}-bus") as bus:
            assert bus.link_up, f"the bus did not connect to {server.link.describe()}"
            yield Bench(server, display, io, bus)


@pytest.fixture(params=["tcp", "rtu"])
def transport(request: pytest.FixtureRequest) -> Transport:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def make_bench() -> Callable[..., Any]:
    """``async with make_bench("tcp", io_profile=...) as bench:`` for a bench of one's own."""
    return open_bench


@pytest.fixture
async def bench(transport: Transport) -> AsyncIterator[Bench]:
    async with open_bench(transport) as b:
        yield b


@pytest.fixture
async def display(bench: Bench) -> AsyncIterator[ModbusFeeDisplay]:
    """laned's display driver on the bench (retrying a failed write every 100 ms)."""
    async with ModbusFeeDisplay(bench.bus, DISPLAY_SLAVE, bench.display_device.profile, retry_interval=0.1) as driver:
        yield driver


@pytest.fixture
async def lane_io(bench: Bench) -> AsyncIterator[ModbusLaneIO]:
    async with ModbusLaneIO(bench.bus, IO_SLAVE, bench.io_device.profile) as driver:
        yield driver


async def _wait_until(condition: Callable[[], Any], timeout: float = 3.0, what: str = "") -> Any:
    """Poll ``condition`` until it is truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout} s for {what or condition}")
        await asyncio.sleep(0.005)  # polling interval of the helper, not a wait for an effect


@pytest.fixture
def wait_until() -> Callable[..., Awaitable[Any]]:
    """``await wait_until(lambda: ..., timeout=3, what="...")``: a deadline-bound poll."""
    return _wait_until


@pytest.fixture
async def broker(tmp_path: Path, pki: Pki) -> AsyncIterator[MosquittoBroker]:
    """A Mosquitto of the test's own (TLS, the per-lane ACL) for the lanes of the module's
    ``pki`` fixture; stopped, and its port freed, after the test."""
    async with MosquittoBroker(tmp_path, pki) as b:
        yield b
