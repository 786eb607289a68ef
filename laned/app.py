"""The composition root: configuration → drivers, journal, lane machine, executor.

``run_lane`` builds every part from a validated :class:`~laned.config.Config`, runs them
in one ``asyncio.TaskGroup`` and shuts down cleanly on SIGTERM/SIGINT. A failing device
degrades the lane (the interlock treats unknown inputs as occupied, the machine refuses
when the journal cannot write); it never takes the daemon down.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import signal
import time
from contextlib import AsyncExitStack
from typing import Any

from laned.config import Config
from laned.drivers.fee_display import FeeDisplay
from laned.drivers.lane_io import LaneIO
from laned.drivers.rsu import LinkStatus, RsuLink
from laned.executor import LaneExecutor
from laned.lane.dialect import Dialect
from laned.lane.fee_table import FeeSchedule, FeeTable
from laned.lane.machine import FrameLost, LaneMachine, LinkLost, LinkUp
from laned.lane.status_list import StatusList
from laned.protocol import get_profile

log = logging.getLogger("laned")


def make_rsu(cfg: Config) -> RsuLink:
    r = cfg.rsu
    if r.transport == "serial":
        return RsuLink(r.profile, port=r.port, baud=r.baud, silence_timeout=r.silence_timeout_s)
    return RsuLink(r.profile, host=r.host, tcp_port=r.tcp_port, silence_timeout=r.silence_timeout_s)


class Buses:
    """One ModbusBus per physical bus: a display and an IO module on the same RS-485 line
    (or the same TCP gateway) share one scheduler, so their requests never collide."""

    def __init__(self) -> None:
        self._buses: dict[Any, Any] = {}

    def get(self, dev: Any) -> Any:
        from laned.drivers.modbus_bus import ModbusBus

        link = dev.link()
        key = link.model_dump_json() if hasattr(link, "model_dump_json") else repr(link)
        if key not in self._buses:
            self._buses[key] = ModbusBus(link, dev.bus, name=f"modbus-{len(self._buses) + 1}")
        return self._buses[key]

    def all(self) -> list[Any]:
        return list(self._buses.values())


def make_io(cfg: Config, buses: Buses) -> LaneIO | None:
    dev = cfg.devices.io
    if dev.kind == "none":
        log.warning("no IO module configured: the barrier will never be commanded down")
        return None
    if dev.kind == "gpio":
        from laned.drivers.gpio_io import GpioLaneIO
        return GpioLaneIO(dev.profile, name="io")
    from laned.drivers.modbus_io import ModbusLaneIO
    return ModbusLaneIO(buses.get(dev), dev.slave, dev.profile, name="io_module")


def make_display(cfg: Config, buses: Buses) -> FeeDisplay | None:
    dev = cfg.devices.fee_display
    if dev.kind == "none":
        return None
    from laned.drivers.modbus_display import ModbusFeeDisplay
    return ModbusFeeDisplay(buses.get(dev), dev.slave, dev.profile, name="fee_display")


def hotplug_for(rsu: RsuLink, match: Any, **kw: Any) -> Any:
    """A udev watcher that closes the RSU link at once on unplug and reopens it on replug."""
    from laned.drivers.hotplug import DeviceAdded, DeviceRemoved, HotplugWatcher

    watcher = HotplugWatcher(match, name="rsu-hotplug", **kw)
    tasks: set[asyncio.Task[None]] = set()

    def on_event(ev: Any) -> None:
        if isinstance(ev, DeviceRemoved):
            log.warning("rsu: adapter %s unplugged; link closed, in-flight transaction recorded", ev.devnode)
            task = asyncio.get_running_loop().create_task(rsu.device_removed())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        elif isinstance(ev, DeviceAdded):
            log.info("rsu: adapter %s plugged in; reopening", ev.devnode)
            rsu.device_added(ev.devnode)

    watcher.on_event(on_event)
    return watcher


async def run_lane(cfg: Config, *, stop: asyncio.Event | None = None,
                   observe: Any = None, uevent_source: Any = None) -> LaneExecutor:
    """Run the lane until ``stop`` is set (or SIGTERM); returns the executor for inspection."""
    from laned.journal import Journal, MachineJournal

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests)
            pass
    settings = cfg.lane_settings()
    profile = get_profile(cfg.rsu.profile)
    fees = FeeSchedule(FeeTable.load(cfg.fee_table.path))
    status = StatusList()
    if cfg.status_list is not None and cfg.status_list.path.exists():
        status.load(cfg.status_list.path)
    async with AsyncExitStack() as stack:
        store = Journal.open(cfg.journal.path, settings.lane_id, now=dt.datetime.now())
        stack.callback(store.close)
        if store.recovery.completed or store.recovery.unknown:
            log.warning("journal: recovered after an unclean stop: %s", store.recovery)
        journal = MachineJournal(store)
        recent = journal.recent_paid(settings.redetect_window, dt.datetime.now(), time.monotonic())
        machine = LaneMachine(settings, Dialect(profile, obu_div_factor=bytes.fromhex(cfg.lane.obu_div_factor)),
                              fees=fees, status=status, recent=recent)
        rsu = make_rsu(cfg)
        buses = Buses()
        io = make_io(cfg, buses)
        display = make_display(cfg, buses)
        for bus in buses.all():
            await bus.start()
            stack.push_async_callback(bus.close)
        executor = LaneExecutor(machine, rsu, io, display, journal, wall=dt.datetime.now, observe=observe)

        def on_status(st: LinkStatus) -> None:
            if st.connected:
                log.info("rsu: connected; initialising it (C0)")
                executor.handle(LinkUp())
            elif stop.is_set():
                log.info("rsu: link closed (the lane is stopping)")
                executor.handle(LinkLost())
            else:
                log.warning("rsu: link lost (%s); an in-flight transaction is recorded as unknown", st.reason)
                executor.handle(LinkLost())

        rsu.on_status(on_status)
        rsu.on_drop(lambda reason: executor.handle(FrameLost(reason)))
        await stack.enter_async_context(rsu)
        if cfg.hotplug.enabled and cfg.hotplug.match is not None:
            await stack.enter_async_context(hotplug_for(rsu, cfg.hotplug.match, source_factory=uevent_source))
        if io is not None:
            await io.start()
            stack.push_async_callback(io.close)
        if display is not None:
            await display.start()
            stack.push_async_callback(display.close)
        run = asyncio.create_task(executor.run(rsu.frames(), io.samples() if io is not None else None))
        log.info("lane %s running (%s lane, RSU profile %s)", settings.lane_id, settings.direction, profile.name)
        await stop.wait()
        run.cancel()
        try:
            await run
        except (asyncio.CancelledError, Exception):
            pass
        log.info("lane %s stopped", settings.lane_id)
        return executor
