"""Scenarios for the udev hotplug watcher, fed simulated uevents through a real pipe.

The fake monitor below has a real file descriptor, so the watcher's ``loop.add_reader``
path runs exactly as with pyudev's netlink socket; only the bytes are ours.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
from collections.abc import AsyncIterator, Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from laned.drivers.hotplug import (
    DeviceAdded,
    DeviceRemoved,
    HotplugEvent,
    HotplugWatcher,
    UdevMatch,
    UeventSource,
    pyudev_source,
)

TIMEOUT = 2.0
SERIAL = "FTDI_FT232R_USB_UART_A10KXYZ1"

RSU_ADAPTER = {
    "SUBSYSTEM": "tty",
    "DEVNAME": "/dev/ttyUSB0",
    "ID_SERIAL": SERIAL,
    "ID_VENDOR_ID": "0403",
    "ID_MODEL_ID": "6001",
    "DEVLINKS": f"/dev/serial/by-id/usb-{SERIAL}-if00-port0 /dev/laned-rsu",
}
GPS_DONGLE = {
    "SUBSYSTEM": "tty",
    "DEVNAME": "/dev/ttyACM0",
    "ID_SERIAL": "u-blox_AG_GNSS_receiver",
    "ID_VENDOR_ID": "1546",
    "ID_MODEL_ID": "01a8",
    "DEVLINKS": "/dev/serial/by-id/usb-u-blox_AG_GNSS_receiver-if00",
}


class PipeUeventSource:
    """A simulated udev monitor: each uevent is one JSON line written to a pipe."""

    def __init__(self) -> None:
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        self._buffer = b""
        self.closed = False

    def fileno(self) -> int:
        return self._read_fd

    def send(self, action: Any, device_node: Any, properties: Any) -> None:
        line = json.dumps({"action": action, "device_node": device_node, "properties": properties})
        self.send_raw(line.encode() + b"\n")

    def send_raw(self, data: bytes) -> None:
        os.write(self._write_fd, data)

    def poll(self, timeout: float | None = None) -> SimpleNamespace | None:
        while b"\n" not in self._buffer:
            try:
                chunk = os.read(self._read_fd, 4096)
            except BlockingIOError:
                return None
            if not chunk:
                return None
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        # A garbled line raises here, as a malformed netlink message would in libudev.
        return SimpleNamespace(**json.loads(line))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self._read_fd)
            os.close(self._write_fd)


@pytest.fixture
def source() -> Iterator[PipeUeventSource]:
    src = PipeUeventSource()
    yield src
    src.close()


async def next_event(events: AsyncIterator[HotplugEvent]) -> HotplugEvent:
    try:
        return await asyncio.wait_for(anext(events), TIMEOUT)
    except TimeoutError:
        pytest.fail(f"no hotplug event within {TIMEOUT} s")


async def no_event(events: AsyncIterator[HotplugEvent], within: float = 0.2) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(events), within)


def watcher_for(source: UeventSource, **match: Any) -> HotplugWatcher:
    return HotplugWatcher(UdevMatch(**match), source_factory=lambda: source)


async def test_the_adapter_is_matched_by_id_serial_through_add_and_remove(source: PipeUeventSource) -> None:
    async with watcher_for(source, properties={"ID_SERIAL": SERIAL}) as watcher:
        events = watcher.events()
        via_callback: list[HotplugEvent] = []
        watcher.on_event(via_callback.append)

        source.send("add", "/dev/ttyUSB0", RSU_ADAPTER)
        added = await next_event(events)
        assert added == DeviceAdded("/dev/ttyUSB0", RSU_ADAPTER)
        assert "/dev/laned-rsu" in added.devlinks
        assert watcher.present == {"/dev/ttyUSB0"}

        source.send("remove", "/dev/ttyUSB0", RSU_ADAPTER)
        assert await next_event(events) == DeviceRemoved("/dev/ttyUSB0")
        assert watcher.present == frozenset()
        assert via_callback == [added, DeviceRemoved("/dev/ttyUSB0")]


async def test_the_adapter_is_matched_by_its_devlink(source: PipeUeventSource) -> None:
    async with watcher_for(source, devlink="/dev/laned-rsu") as watcher:
        events = watcher.events()
        source.send("add", "/dev/ttyACM0", GPS_DONGLE)
        # Comes back under another ttyUSB number after a replug: still found.
        source.send("add", "/dev/ttyUSB3", {**RSU_ADAPTER, "DEVNAME": "/dev/ttyUSB3"})

        added = await next_event(events)
        assert isinstance(added, DeviceAdded) and added.devnode == "/dev/ttyUSB3"


async def test_the_adapter_is_matched_by_vendor_and_model(source: PipeUeventSource) -> None:
    async with watcher_for(source, properties={"ID_VENDOR_ID": "0403", "ID_MODEL_ID": "6001"}) as watcher:
        events = watcher.events()
        source.send("add", "/dev/ttyACM0", GPS_DONGLE)
        source.send("add", "/dev/ttyUSB0", RSU_ADAPTER)
        assert (await next_event(events)).devnode == "/dev/ttyUSB0"


async def test_other_devices_subsystems_and_actions_are_ignored(source: PipeUeventSource) -> None:
    async with watcher_for(source, properties={"ID_SERIAL": SERIAL}) as watcher:
        events = watcher.events()
        source.send("add", "/dev/ttyACM0", GPS_DONGLE)
        source.send("remove", "/dev/ttyACM0", GPS_DONGLE)
        # The USB device itself carries the same ID_SERIAL, but it is not the tty.
        source.send("add", "/dev/bus/usb/001/007", {**RSU_ADAPTER, "SUBSYSTEM": "usb"})
        source.send("change", "/dev/ttyUSB0", RSU_ADAPTER)
        source.send("bind", "/dev/ttyUSB0", RSU_ADAPTER)
        await no_event(events)

        source.send("add", "/dev/ttyUSB0", RSU_ADAPTER)
        assert await next_event(events) == DeviceAdded("/dev/ttyUSB0", RSU_ADAPTER)
        await no_event(events)


async def test_a_remove_without_properties_is_matched_by_the_remembered_node(source: PipeUeventSource) -> None:
    async with watcher_for(source, properties={"ID_SERIAL": SERIAL}) as watcher:
        events = watcher.events()
        source.send("add", "/dev/ttyUSB0", RSU_ADAPTER)
        await next_event(events)

        source.send("remove", "/dev/ttyUSB9", {"SUBSYSTEM": "tty"})  # some other adapter
        source.send("remove", "/dev/ttyUSB0", {"SUBSYSTEM": "tty"})
        assert await next_event(events) == DeviceRemoved("/dev/ttyUSB0")


async def test_malformed_uevents_are_skipped_and_the_watcher_goes_on(source: PipeUeventSource) -> None:
    async with watcher_for(source, properties={"ID_SERIAL": SERIAL}) as watcher:
        events = watcher.events()
        source.send_raw(b"\x00\xff garbage from the wire\n")
        source.send_raw(b"[1, 2, 3]\n")
        source.send_raw(b'{"action": "add"}\n')  # no device node, no properties
        source.send("add", None, {"ID_SERIAL": SERIAL})  # no node at all
        source.send("add", "/dev/ttyUSB0", ["not", "a", "mapping"])
        source.send(42, "/dev/ttyUSB0", RSU_ADAPTER)
        source.send("add", ["/dev/ttyUSB0"], RSU_ADAPTER)
        await no_event(events)

        source.send("add", "/dev/ttyUSB0", RSU_ADAPTER)
        assert await next_event(events) == DeviceAdded("/dev/ttyUSB0", RSU_ADAPTER)
        health = watcher.health()
        assert health.online and health.errors >= 3


async def test_a_node_missing_from_the_event_is_taken_from_devname(source: PipeUeventSource) -> None:
    async with watcher_for(source, properties={"ID_SERIAL": SERIAL}) as watcher:
        events = watcher.events()
        source.send("add", None, RSU_ADAPTER)
        assert (await next_event(events)).devnode == "/dev/ttyUSB0"


async def test_an_adapter_plugged_in_before_start_is_reported(source: PipeUeventSource) -> None:
    present = [
        SimpleNamespace(action=None, device_node="/dev/ttyACM0", properties=GPS_DONGLE),
        SimpleNamespace(action=None, device_node="/dev/ttyUSB0", properties=RSU_ADAPTER),
    ]
    watcher = HotplugWatcher(
        UdevMatch(properties={"ID_SERIAL": SERIAL}), source_factory=lambda: source, present=lambda: present
    )
    seen: list[HotplugEvent] = []
    watcher.on_event(seen.append)
    async with watcher:
        assert seen == [DeviceAdded("/dev/ttyUSB0", RSU_ADAPTER)]
        assert watcher.present == {"/dev/ttyUSB0"}
        # A reader that subscribes after start learns it too, then follows the changes.
        events = watcher.events()
        assert await next_event(events) == DeviceAdded("/dev/ttyUSB0", RSU_ADAPTER)
        source.send("remove", "/dev/ttyUSB0", RSU_ADAPTER)
        assert await next_event(events) == DeviceRemoved("/dev/ttyUSB0")


class BrokenSource(PipeUeventSource):
    """A monitor whose socket went bad: readable, but every read fails."""

    def poll(self, timeout: float | None = None) -> SimpleNamespace | None:
        raise OSError(errno.EIO, "Input/output error")


async def test_a_monitor_that_keeps_failing_is_reopened() -> None:
    broken, healthy = BrokenSource(), PipeUeventSource()
    sources = iter([broken, healthy])
    watcher = HotplugWatcher(
        UdevMatch(devlink="/dev/laned-rsu"), source_factory=lambda: next(sources), reopen_interval=0.05
    )
    try:
        async with watcher:
            events = watcher.events()
            broken.send_raw(b"x\n")  # makes the broken socket readable
            healthy.send("add", "/dev/ttyUSB0", RSU_ADAPTER)  # waits in the next monitor

            assert await next_event(events) == DeviceAdded("/dev/ttyUSB0", RSU_ADAPTER)
            assert broken.closed, "the failing monitor should have been closed"
            assert watcher.health().online and watcher.health().errors >= 10
    finally:
        healthy.close()


async def test_udev_unavailable_at_start_is_retried(source: PipeUeventSource) -> None:
    attempts = 0

    def factory() -> UeventSource:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise OSError("Could not create udev monitor")
        return source

    watcher = HotplugWatcher(UdevMatch(devlink="/dev/laned-rsu"), source_factory=factory, reopen_interval=0.05)
    async with watcher:
        assert not watcher.health().online
        assert "cannot watch udev" in watcher.health().detail
        events = watcher.events()
        source.send("add", "/dev/ttyUSB0", RSU_ADAPTER)
        assert (await next_event(events)).devnode == "/dev/ttyUSB0"
        assert watcher.health().online


async def test_closing_ends_the_event_stream(source: PipeUeventSource) -> None:
    watcher = watcher_for(source, devlink="/dev/laned-rsu")
    await watcher.start()
    events = watcher.events()
    await watcher.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(events), TIMEOUT)
    assert not watcher.health().online


def test_a_match_needs_a_criterion_and_real_property_names() -> None:
    with pytest.raises(ValueError, match="at least one"):
        UdevMatch()
    with pytest.raises(ValueError, match="udev property name"):
        UdevMatch(properties={"id_serial": SERIAL})
    with pytest.raises(ValueError, match="under /dev/"):
        UdevMatch(devlink="laned-rsu")


def test_pyudev_monitor_is_a_uevent_source() -> None:
    try:
        monitor = pyudev_source("tty")
    except (OSError, ImportError) as exc:  # no netlink in some sandboxes
        pytest.skip(f"no udev netlink monitor here: {exc}")
    assert isinstance(monitor, UeventSource)
    assert monitor.fileno() >= 0


async def test_the_daemon_closes_the_rsu_link_on_unplug_and_reopens_it_on_replug():
    from laned.app import follow_hotplug
    from laned.drivers.hotplug import HotplugWatcher

    class FakeLink:
        def __init__(self):
            self.calls = []
            self.changed = asyncio.Event()

        async def device_removed(self):
            self.calls.append("removed")
            self.changed.set()

        def device_added(self, path):
            self.calls.append(("added", path))
            self.changed.set()

    link = FakeLink()
    source = PipeUeventSource()
    props = {"ID_SERIAL": "FTDI_RSU_A10", "DEVLINKS": "/dev/laned-rsu"}
    watcher = HotplugWatcher(UdevMatch(properties={"ID_SERIAL": "FTDI_RSU_A10"}), name="rsu-hotplug",
                             source_factory=lambda: source, present=list)
    async with watcher:
        follower = asyncio.create_task(follow_hotplug(watcher, link))
        source.send("remove", "/dev/ttyUSB0", props)
        await asyncio.wait_for(link.changed.wait(), 5)
        link.changed.clear()
        source.send("add", "/dev/ttyUSB1", props)
        await asyncio.wait_for(link.changed.wait(), 5)
        follower.cancel()
    assert link.calls == ["removed", ("added", "/dev/ttyUSB1")]
