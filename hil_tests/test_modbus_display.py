"""The fee display driver against the emulated display, over Modbus TCP and RTU (pty).

Every scenario reads the result back from the emulator's registers: what a driver at
the lane would see on the display, decoded from GBK text and fen.
"""

from __future__ import annotations

import dataclasses

import pytest
from pymodbus.constants import ExcCodes

from laned.drivers.errors import DeviceOffline, DeviceRejected, DeviceTimeout
from laned.drivers.fee_display import DisplayContent, FeeDisplay
from laned.drivers.lane_io import Light
from laned.drivers.modbus_bus import BreakerState
from laned.sim.modbus_devices import yuan

pytestmark = pytest.mark.hil

PAID = DisplayContent(
    plate="鲁AD12345",
    vehicle_class=1,
    fee_fen=1250,
    balance_fen=98750,
    line1="缴费成功",
    line2="一路平安",
    light=Light.GREEN,
    brightness=80,
)
REFUSED = DisplayContent(
    plate="鲁A12345",
    vehicle_class=11,
    fee_fen=4300,
    balance_fen=1200,
    line1="余额不足",
    line2="请走人工车道",
    light=Light.RED,
)


async def test_display_shows_plate_class_fee_balance_and_chinese_text(bench, display) -> None:
    assert isinstance(display, FeeDisplay)
    await display.show(PAID)

    shown = bench.display_device.shown()
    assert shown == PAID
    assert (yuan(shown.fee_fen), yuan(shown.balance_fen)) == ("12.50", "987.50")
    assert display.health().online


async def test_second_show_writes_only_the_registers_that_changed(bench, display) -> None:
    device = bench.display_device
    await display.show(REFUSED)
    device.clear_log()

    await display.show(REFUSED)
    assert device.writes == [], "nothing changed, nothing may be written"

    await display.show(dataclasses.replace(REFUSED, fee_fen=4350))
    fee = device.profile.fee
    assert [(w.address, w.values) for w in device.writes] == [(fee.address, (0, 4350))]

    device.clear_log()
    await display.show(dataclasses.replace(REFUSED, fee_fen=4350, line2="请缴现金", light=Light.GREEN))
    written = {w.address for w in device.writes}
    assert written == {device.profile.light.address, device.profile.line2.address}
    assert device.registers_written() == 1 + device.profile.line2.registers
    assert device.shown().line2 == "请缴现金"


async def test_neighbouring_changed_fields_go_out_in_one_write(bench, display) -> None:
    device = bench.display_device
    await display.show(REFUSED)
    device.clear_log()

    # fee (registers 7–8) and balance (9–10) sit next to each other
    await display.show(dataclasses.replace(REFUSED, fee_fen=1, balance_fen=2))

    assert [(w.address, w.values) for w in device.writes] == [(device.profile.fee.address, (0, 1, 0, 2))]


async def test_slow_display_times_out_then_the_retry_succeeds_and_both_are_counted(bench, display) -> None:
    bench.display_device.faults.slow(0.15, count=1)  # the answer timeout is 0.1 s

    await display.show(PAID)

    health = bench.bus.health(bench.display_slave)
    assert health.timeouts >= 1 and health.retries >= 1, "the late answer counts as a timeout, then a retry"
    assert health.failures == 0
    assert bench.display_device.shown() == PAID
    assert display.health().online


async def test_exception_response_is_counted_raised_and_forces_a_full_rewrite(bench, display) -> None:
    device = bench.display_device
    await display.show(PAID)
    device.faults.refuse(ExcCodes.ILLEGAL_ADDRESS, count=1)

    with pytest.raises(DeviceRejected) as refused:
        await display.show(REFUSED)
    assert refused.value.code == ExcCodes.ILLEGAL_ADDRESS
    health = bench.bus.health(bench.display_slave)
    assert (health.exceptions, health.breaker) == (1, BreakerState.CLOSED), "an exception proves the display is alive"
    assert display.health().errors == 1

    device.clear_log()
    await display.show(REFUSED)
    # Everything again, brightness included: laned no longer knows what the display holds.
    refused_as_shown = dataclasses.replace(REFUSED, brightness=PAID.brightness)
    assert device.registers_written() == sum(len(v) for _, _, v in device.profile.encode(refused_as_shown))
    assert device.shown() == refused_as_shown


async def test_silent_display_opens_the_breaker_fails_fast_and_a_half_open_probe_recovers(
    bench, display, wait_until
) -> None:
    device = bench.display_device
    device.faults.no_answer()

    with pytest.raises(DeviceTimeout):
        await display.show(PAID)
    # The driver keeps retrying in the background; the breaker opens after three
    # requests in a row went unanswered.
    await wait_until(lambda: bench.bus.health(bench.display_slave).breaker is BreakerState.OPEN, what="the breaker to open")
    assert bench.bus.health(bench.display_slave).failures == bench.bus.settings.breaker_threshold

    heard = device.heard
    with pytest.raises(DeviceOffline, match="requests in a row failed"):
        await display.show(PAID)
    assert device.heard == heard, "an open breaker must not put anything on the wire"
    assert bench.bus.health(bench.display_slave).rejected >= 1
    assert not display.health().online

    device.faults.clear()
    # Nobody calls show() again: the driver's own retry probes once the cool-down ends.
    await wait_until(lambda: device.shown() == PAID, what="the display to be rewritten after the outage")
    # The display has applied the write; the driver learns it when the answer arrives.
    await wait_until(lambda: display.health().online, what="the driver to see the display answer")
    assert bench.bus.health(bench.display_slave).breaker is BreakerState.CLOSED


async def test_display_offline_then_back_shows_the_latest_content_in_full(bench, display, wait_until) -> None:
    device = bench.display_device
    await display.show(PAID)

    await bench.server.go_offline()
    device.power_cycle()  # it lost everything while it was away
    with pytest.raises((DeviceOffline, DeviceTimeout)):
        await display.show(REFUSED)
    assert not display.health().online

    await bench.server.come_back()
    await wait_until(
        lambda: device.shown() == dataclasses.replace(REFUSED, brightness=PAID.brightness),
        what="the display to show the latest content after it came back",
    )
    await wait_until(lambda: display.health().online, what="the driver to see the display answer")


@pytest.mark.parametrize("transport", ["tcp"])
async def test_tcp_reconnect_rewrites_everything_without_a_new_show(bench, display, wait_until) -> None:
    device = bench.display_device
    await display.show(PAID)
    generation = bench.bus.generation

    await bench.server.go_offline()
    await wait_until(lambda: not bench.bus.link_up, what="the bus to notice the closed connection")
    device.power_cycle()
    await bench.server.come_back()

    await wait_until(lambda: device.shown() == PAID, what="the display to be rewritten after the reconnect")
    assert bench.bus.generation > generation


async def test_a_display_that_dies_while_the_lane_is_idle_is_known_before_the_next_vehicle(
        bench, display, wait_until) -> None:
    """No show() after the display died: the driver's keep-alive read finds out, so the
    lane's health (and display_offline) does not wait for the next vehicle's screen."""
    await display.show(PAID)
    assert display.health().online
    bench.display_device.faults.no_answer()
    await wait_until(lambda: not display.health().online, what="the idle display to be known dead")
    bench.display_device.faults.answer_again()
    await wait_until(lambda: display.health().online, what="the display to be back")
    assert bench.display_device.shown() == PAID
