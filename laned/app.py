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
from laned.executor import LaneExecutor, Observation
from laned.lane.barrier import InterlockSettings
from laned.lane.dialect import Dialect
from laned.lane.fee_table import FeeSchedule, FeeTable
from laned.lane.machine import Direction, LaneMachine, LaneSettings, LinkLost, LinkUp, MissingEntryPolicy
from laned.lane.status_list import StatusList
from laned.protocol import get_profile

log = logging.getLogger("laned")


def lane_settings(cfg: Config) -> LaneSettings:
    lane = cfg.lane
    return LaneSettings(
        lane_id=lane.lane_id,
        direction=Direction(lane.direction),
        network=lane.network,
        station=bytes.fromhex(lane.station),
        lane_number=lane.lane_number,
        accepted_issuers=frozenset(bytes.fromhex(i) for i in lane.accepted_issuers),
        redetect_window=lane.redetect_window_s,
        b5_timeout=lane.b5_timeout_s,
        missing_entry_policy=MissingEntryPolicy(lane.missing_entry_policy),
        allow_credit_cards=lane.credit_card_policy == "allow",
        tx_power=cfg.rsu.tx_power,
        pll_channel=cfg.rsu.pll_channel,
        interlock=InterlockSettings(staleness=cfg.barrier.staleness_s, hold_off=cfg.barrier.hold_off_s,
                                    release_after=cfg.barrier.release_after_s,
                                    chatter_changes=cfg.barrier.chatter_changes),
    )


def make_rsu(cfg: Config) -> RsuLink:
    r = cfg.rsu
    if r.transport == "serial":
        return RsuLink(r.profile, port=r.port, baud=r.baud, silence_timeout=r.silence_timeout_s)
    return RsuLink(r.profile, host=r.host, tcp_port=r.tcp_port, silence_timeout=r.silence_timeout_s)


def make_io(cfg: Config) -> LaneIO | None:
    dev = cfg.devices.io
    if dev.kind == "none":
        log.warning("no IO module configured: the barrier will never be commanded down")
        return None
    if dev.kind == "gpio":
        from laned.drivers.gpio_io import GpioLaneIO
        from laned.drivers.gpio_profile import GpioPinMap
        return GpioLaneIO(GpioPinMap.model_validate(dev.profile), name="io")
    from laned.drivers import modbus_factory
    return modbus_factory.make_io(dev)


def make_display(cfg: Config) -> FeeDisplay | None:
    dev = cfg.devices.fee_display
    if dev.kind == "none":
        return None
    from laned.drivers import modbus_factory
    return modbus_factory.make_display(dev)


async def run_lane(cfg: Config, *, stop: asyncio.Event | None = None,
                   observe: Any = None) -> LaneExecutor:
    """Run the lane until ``stop`` is set (or SIGTERM); returns the executor for inspection."""
    from laned.journal import Journal, MachineJournal

    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests)
            pass
    settings = lane_settings(cfg)
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
        io = make_io(cfg)
        display = make_display(cfg)
        executor = LaneExecutor(machine, rsu, io, display, journal, wall=dt.datetime.now, observe=observe)

        def on_status(st: LinkStatus) -> None:
            if st.connected:
                log.info("rsu: connected; initialising it (C0)")
                executor.handle(LinkUp())
            else:
                log.warning("rsu: link lost (%s); an in-flight transaction is recorded as unknown", st.reason)
                executor.handle(LinkLost())

        rsu.on_status(on_status)
        await stack.enter_async_context(rsu)
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
