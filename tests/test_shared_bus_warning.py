"""A fee display on the IO module's Modbus link can starve the safety-loop poll: laned says so at start."""

from __future__ import annotations

import logging

from laned.device_setup import Buses, make_display, make_io, warn_shared_bus
from laned.config import parse_config


def config(display_port: int, **io_bus):
    return parse_config({
        "lane": {"lane_id": "G0001-0201-03", "network": "3701", "station": "0201", "lane_number": 3,
                 "direction": "exit"},
        "rsu": {"port": "/dev/null"}, "journal": {"path": "/tmp/j.db"}, "fee_table": {"path": "/tmp/f.toml"},
        "devices": {"io": {"kind": "modbus_tcp", "host": "127.0.0.1", "port": 1502, "slave": 2,
                           **({"bus": io_bus} if io_bus else {})},
                    "fee_display": {"kind": "modbus_tcp", "host": "127.0.0.1", "port": display_port, "slave": 1}},
    })


def warnings_for(cfg, caplog) -> list[str]:
    buses = Buses()
    make_io(cfg, buses), make_display(cfg, buses)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="laned"):
        warn_shared_bus(cfg, buses)
    return [r.getMessage() for r in caplog.records]


def test_a_display_on_the_io_modules_link_with_long_timeouts_is_reported_naming_the_keys(caplog):
    [msg] = warnings_for(config(1502), caplog)
    assert "0.60 s" in msg and "barrier.staleness_s = 0.25 s" in msg and "devices.io.bus.response_timeout_s" in msg


def test_a_display_on_its_own_link_or_short_timeouts_is_not_reported(caplog):
    assert warnings_for(config(1503), caplog) == []
    assert warnings_for(config(1502, response_timeout_s=0.1, retries=1), caplog) == []
