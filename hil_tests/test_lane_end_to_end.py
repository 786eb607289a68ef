"""The real daemon (`run_lane`) against the emulated RSU over a pseudo-terminal.

Configuration, RSU link, lane machine, executor and SQLite journal as `laned run` builds
them; only the RSU is emulated. Vehicles are OBUs of the emulator's scenario.
"""

from __future__ import annotations

import asyncio
import sqlite3
from importlib import resources

import pytest

from laned.app import run_lane
from laned.config import parse_config
from laned.sim.rsu_emulator import EmulatorSettings, RsuEmulator
from laned.sim.rsu_scenario import ObuScenario

pytestmark = pytest.mark.hil

FEE_TABLE = str(resources.files("laned") / "data" / "fee_table_sim.toml")


def config(tmp_path, port):
    return parse_config({
        "lane": {"lane_id": "G0001-0201-03", "network": "3701", "station": "0201", "lane_number": 3,
                 "direction": "exit"},
        "rsu": {"profile": "national", "transport": "serial", "port": port, "baud": 115200},
        "journal": {"path": str(tmp_path / "journal.db")},
        "fee_table": {"path": FEE_TABLE},
    })


def journal_rows(tmp_path):
    db = sqlite3.connect(tmp_path / "journal.db")
    try:
        return db.execute("SELECT * FROM sqlite_master WHERE type='table'").fetchall() and \
            [dict(zip([d[0] for d in cur.description], row))
             for cur in [db.execute("SELECT * FROM transactions ORDER BY seq")] for row in cur.fetchall()]
    finally:
        db.close()


async def run_with(tmp_path, obus, until):
    """Run until ``until(observations)``: what the executor did, as (kind, detail) pairs."""
    settings = EmulatorSettings(heartbeat_interval=0.5, redetect_interval=30.0)
    seen: list[tuple[str, dict]] = []
    async with RsuEmulator(obus, profile="national", settings=settings) as emu:
        stop = asyncio.Event()
        task = asyncio.create_task(run_lane(config(tmp_path, emu.path), stop=stop,
                                            observe=lambda o: seen.append((o.kind, o.detail))))
        try:
            await emu.wait_for(lambda: until(seen), timeout=10.0, what="the lane to decide")
        finally:
            stop.set()
            executor = await asyncio.wait_for(task, 10)
        return emu, executor


async def test_a_vehicle_that_pays_is_charged_once_and_journalled(tmp_path):
    obu = ObuScenario(obu_id="a1b2c3d4", arrive_at=0.3, balance=120_00)
    emu, executor = await run_with(tmp_path, [obu], lambda seen: ("barrier", {"command": "raise"}) in seen)
    assert len(emu.charges) == 1
    assert emu.balance("a1b2c3d4") == 120_00 - 35_00
    assert executor.machine.counters["charged"] == 1
    rows = journal_rows(tmp_path)
    assert [r["state"] for r in rows] == ["charged"]


async def test_a_vehicle_with_too_little_balance_is_refused_and_not_charged(tmp_path):
    obu = ObuScenario(obu_id="0badcafe", arrive_at=0.3, balance=34_99)
    emu, executor = await run_with(tmp_path, [obu], lambda seen: any(k == "refused" for k, _ in seen))
    assert emu.charges == [] and emu.balance("0badcafe") == 34_99
    assert executor.machine.counters["insufficient_balance"] == 1
    assert [r["state"] for r in journal_rows(tmp_path)] == ["refused"]


def test_display_and_io_on_one_modbus_gateway_share_one_bus_scheduler(tmp_path):
    from laned.device_setup import Buses, make_display, make_io

    cfg = parse_config({
        "lane": {"lane_id": "L1", "network": "3701", "station": "0201", "lane_number": 3, "direction": "exit"},
        "rsu": {"profile": "national", "transport": "serial", "port": "/dev/null"},
        "journal": {"path": str(tmp_path / "j.db")}, "fee_table": {"path": FEE_TABLE},
        "devices": {"io": {"kind": "modbus_tcp", "host": "127.0.0.1", "port": 1502, "slave": 1},
                    "fee_display": {"kind": "modbus_tcp", "host": "127.0.0.1", "port": 1502, "slave": 2}},
    })
    buses = Buses()
    io, display = make_io(cfg, buses), make_display(cfg, buses)
    assert io is not None and display is not None
    assert len(buses.all()) == 1
