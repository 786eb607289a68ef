"""A lane that never stops silently: supervision of the daemon's tasks, through run_lane.

* a frame that cannot be sent is a lane event, and the lane goes on serving;
* a bug in any task ends run_lane with the task's name (``laned run`` then exits 70 and
  systemd restarts it), instead of leaving a process without an executor;
* a lane that starts with its RSU missing says it is degraded — in the log, in systemd's
  STATUS= and READY — and never that it is running.
"""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest
from typer.testing import CliRunner

from hil_tests.lane_fixtures import T, config_data, lane_bench, poll_until, to_toml
from laned.app import LaneTaskFailed, run_lane
from laned.config import parse_config
from laned.drivers.errors import DeviceOffline
from laned.drivers.rsu import RsuLink
from laned.health.sdnotify import Notifier
from laned.lane.machine import LaneMachine
from laned.sim.rsu_scenario import ObuScenario

pytestmark = pytest.mark.hil


class NotifySocket:
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""

    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def read(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except BlockingIOError:
                return self.messages

    def fields(self, key: str) -> list[str]:
        return [line.split("=", 1)[1] for m in self.read() for line in m.split("\n") if line.startswith(key + "=")]


async def test_a_c1_that_cannot_be_sent_is_a_lane_event_and_the_next_vehicle_is_served(tmp_path, monkeypatch):
    real = RsuLink.send_nowait
    failed: list[str] = []

    def flaky(self, message, reply_to=None):
        if message.type_name == "C1" and getattr(message, "obu_id", b"") == bytes.fromhex("a1000001") and not failed:
            failed.append(message.type_name)
            raise DeviceOffline(self.name, f"send {message.type_name}", "write failed: EIO")
        return real(self, message, reply_to)

    monkeypatch.setattr(RsuLink, "send_nowait", flaky)
    obus = [ObuScenario("a1000001", arrive_at=0.2, dwell=0.5), ObuScenario("a1000002", arrive_at=1.5)]
    async with lane_bench(tmp_path, obus) as bench:
        await bench.until(lambda: bench.c6_for("a1000002"), T, "the second vehicle to be charged")
        assert failed == ["C1"]
        assert bench.task is not None and not bench.task.done()
        ex = bench.executor or None
    ex = bench.executor
    assert ex is not None and ex.counters["send_failed"] == 1
    assert ex.machine.counters["send_failed"] == 1
    assert any(code == "rsu_send_failed" for _, code, _ in ex.alarms)
    assert len(bench.emu.charges) == 1  # the first was never charged; the second once


async def test_a_bug_in_the_lane_ends_run_lane_naming_the_task(tmp_path, monkeypatch):
    real = LaneMachine.handle

    def broken(self, event, now, wall):
        if type(event).__name__ == "FrameIn" and event.message.type_name == "B3":
            raise ZeroDivisionError("a bug in the lane")
        return real(self, event, now, wall)

    monkeypatch.setattr(LaneMachine, "handle", broken)
    with pytest.raises(LaneTaskFailed) as caught:
        async with lane_bench(tmp_path, [ObuScenario("a1000001", arrive_at=0.2)]) as bench:
            await bench.until(lambda: bench.task is not None and bench.task.done(), T, "the daemon to stop")
    assert caught.value.task == "lane-executor"
    assert isinstance(caught.value.error, ZeroDivisionError)
    assert "task lane-executor failed: ZeroDivisionError: a bug in the lane" in str(caught.value)


async def test_a_driver_task_that_dies_ends_run_lane_naming_the_driver(tmp_path, monkeypatch):
    real = RsuLink._on_data

    def broken(self, data):
        raise RuntimeError("decoder bug")

    monkeypatch.setattr(RsuLink, "_on_data", broken)
    with pytest.raises(LaneTaskFailed) as caught:
        async with lane_bench(tmp_path, []) as bench:
            await bench.until(lambda: bench.task is not None and bench.task.done(), T, "the daemon to stop")
    assert caught.value.task == "rsu-link" and "decoder bug" in str(caught.value)
    monkeypatch.setattr(RsuLink, "_on_data", real)


async def test_a_lane_started_without_its_rsu_says_it_is_degraded_never_running(tmp_path, caplog):
    notify = NotifySocket(tmp_path / "notify.sock")
    cfg = parse_config(config_data(tmp_path / "journal.db", str(tmp_path / "no-such-tty")))
    stop = asyncio.Event()
    caplog.set_level(logging.INFO, logger="laned")
    task = asyncio.create_task(run_lane(cfg, stop=stop, notifier=Notifier(notify.path)))
    try:
        await poll_until(lambda: notify.fields("READY"), T, "READY=1")
        status = notify.fields("STATUS")
        assert status and "ETC closed (rsu: cannot open" in status[0]
        text = caplog.text
        assert "started DEGRADED" in text and "no-such-tty" in text
        assert " in service " not in text and "running" not in text
        warnings = [r for r in caplog.records if "started DEGRADED" in r.getMessage()]
        assert warnings and warnings[0].levelno == logging.WARNING
        await poll_until(lambda: any("rsu_offline" in s for s in notify.fields("STATUS")), T,
                         "the rsu_offline alarm in STATUS=")
    finally:
        stop.set()
        ex = await asyncio.wait_for(task, T)
    assert ex.machine.modes.closed
    assert any(m.startswith("STOPPING=1") for m in notify.read())


def test_laned_run_exits_70_with_one_line_naming_the_task(tmp_path, monkeypatch):
    from laned import app as app_module
    from laned.cli import app as cli

    async def failing(cfg, **kw):
        raise LaneTaskFailed("rsu-link", OSError(5, "Input/output error"))

    monkeypatch.setattr(app_module, "run_lane", failing)
    conf = tmp_path / "laned.toml"
    conf.write_text(to_toml(config_data(tmp_path / "journal.db", "/dev/null")))
    result = CliRunner().invoke(cli, ["run", "--config", str(conf)])
    assert result.exit_code == 70
