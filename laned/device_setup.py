"""From the configuration to the drivers: the RSU link, the IO module and the fee display,
and the Modbus buses they share (``laned.app.run_lane`` starts them)."""

from __future__ import annotations

import logging
from typing import Any

from laned.config import Config
from laned.drivers.device_profiles import IoModuleProfile
from laned.drivers.fee_display import FeeDisplay
from laned.drivers.gpio_profile import GpioPinMap
from laned.drivers.lane_io import LaneIO
from laned.drivers.rsu import RsuLink

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
    # The config's validator gave the profile the type its kind needs (config._profile_for).
    if dev.kind == "gpio":
        from laned.drivers.gpio_io import GpioLaneIO
        assert isinstance(dev.profile, GpioPinMap)
        return GpioLaneIO(dev.profile, name="io")
    from laned.drivers.modbus_io import ModbusLaneIO
    assert isinstance(dev.profile, IoModuleProfile)
    return ModbusLaneIO(buses.get(dev), dev.slave, dev.profile, name="io_module")


def make_display(cfg: Config, buses: Buses) -> FeeDisplay | None:
    dev = cfg.devices.fee_display
    if dev.kind == "none":
        return None
    from laned.drivers.modbus_display import ModbusFeeDisplay
    assert dev.profile is not None  # the reference display's map when the file gives none (config._profile_for)
    return ModbusFeeDisplay(buses.get(dev), dev.slave, dev.profile, name="fee_display")


def warn_shared_bus(cfg: Config, buses: Buses) -> None:
    """A fee display on the IO module's bus can hold the line longer than the safety loop
    may go unread: the interlock then holds the arm up (safe) and the lane slows down."""
    if cfg.devices.io.kind not in ("modbus_tcp", "modbus_rtu") or cfg.devices.fee_display.kind == "none":
        return
    if buses.get(cfg.devices.io) is not buses.get(cfg.devices.fee_display):
        return
    bus = buses.get(cfg.devices.io)
    hold = bus.settings.response_timeout_s * (1 + bus.settings.retries)
    if hold >= cfg.barrier.staleness_s:
        log.warning("%s: the fee display shares this Modbus link with the IO module; a display that stops "
                    "answering holds the link up to %.2f s per request (bus response_timeout_s x (1 + retries)), "
                    "longer than barrier.staleness_s = %.2f s, so the safety loop reads stale and the interlock "
                    "holds the arm up until it is fresh again. Give the display its own link, or lower "
                    "devices.io.bus.response_timeout_s / retries.", bus.name, hold, cfg.barrier.staleness_s)
