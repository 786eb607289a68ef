"""Health checks on device and resource snapshots, fed into the alarm registry: each
scenario runs the checks the way the daemon does (every second, time passed in)."""

from __future__ import annotations

import ast
import datetime as dt
from dataclasses import replace
from pathlib import Path

import pytest

from laned.health.alarms import CATALOGUE, AlarmRegistry, Change, UnknownAlarm
from laned.health.checks import (
    BarrierSnapshot, CheckResult, CheckStatus, ClockWatch, DisplaySnapshot, HealthChecker, HealthSettings,
    InputReading, IoBackend, IoSnapshot, JournalSnapshot, LaneSnapshot, RsuSnapshot, TablesSnapshot, apply,
    check_barrier, check_io, check_journal, check_rsu, check_tables, clock_jump, overall,
)

CST = dt.timezone(dt.timedelta(hours=8))
T0 = dt.datetime(2026, 3, 1, 8, 0, 0, tzinfo=CST)
CFG = HealthSettings()


def wall(t: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=t)


def by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {r.name: r for r in results}


def rsu_up(now: float) -> RsuSnapshot:
    return RsuSnapshot(connected=True, connected_at=0.0, initialised=True, last_seen=now - 1.0,
                       description="/dev/laned-rsu")


def io_ok(now: float, **kw) -> IoSnapshot:
    kw.setdefault("inputs", (InputReading("safety_loop", False, now - 0.05),))
    return IoSnapshot("io_module", online=True, detail="ok", **kw)


def healthy(now: float) -> LaneSnapshot:
    return LaneSnapshot(
        rsu=rsu_up(now), io=(io_ok(now),), display=DisplaySnapshot("fee_display", online=True, detail="ok"),
        journal=JournalSnapshot(writable=True, disk_free_bytes=20 << 30, disk_total_bytes=32 << 30,
                                last_commit_s=0.004, max_commit_s=0.02, path="/var/lib/laned/journal.db"),
        tables=TablesSnapshot(fee_table_version=7, fee_table_valid_from=dt.datetime(2026, 1, 1),
                              status_list_version=41, status_list_updated_at=T0 - dt.timedelta(hours=3)),
        barrier=BarrierSnapshot(fault=None),
    )


class Lane:
    """The daemon's health cycle: snapshot → checks → registry, once a second."""

    def __init__(self, registry: AlarmRegistry | None = None, settings: HealthSettings | None = None) -> None:
        self.registry = registry or AlarmRegistry()
        self.checker = HealthChecker(settings)
        self.changes = []

    def run(self, seconds: range | list[float], snapshot) -> None:
        for t in seconds:
            snap = snapshot(float(t)) if callable(snapshot) else snapshot
            self.changes += apply(self.checker.run(snap, float(t), wall(t)), self.registry, float(t), wall(t))

    def raised(self) -> list[str]:
        return [c.code for c in self.changes if c.change is Change.RAISED]

    def cleared(self) -> list[str]:
        return [c.code for c in self.changes if c.change is Change.CLEARED]


def test_a_healthy_lane_passes_every_check_and_raises_nothing():
    lane = Lane()
    lane.run(range(0, 120), healthy)
    assert lane.changes == [] and lane.registry.active() == []
    results = lane.checker.run(healthy(120.0), 120.0, wall(120))
    assert overall(results) is CheckStatus.OK
    assert all(r.alarm in CATALOGUE for r in results if r.alarm)


# -- RSU -------------------------------------------------------------------------------------------

def test_an_rsu_link_down_for_less_than_its_debounce_raises_nothing():
    lane = Lane()
    def down(t):
        return replace(healthy(t), rsu=RsuSnapshot(connected=False, reason="EIO", description="/dev/laned-rsu"))
    lane.run(range(0, 10), healthy)
    lane.run(range(10, 14), down)  # 4 s down, debounce 5 s
    lane.run(range(14, 60), lambda t: replace(healthy(t), rsu=replace(rsu_up(t), connected_at=14.0)))
    assert lane.changes == []


def test_an_rsu_link_down_past_its_debounce_raises_rsu_offline_once_and_clears_when_back():
    lane = Lane()
    def down(t):
        return replace(healthy(t), rsu=RsuSnapshot(connected=False, reason="EIO: adapter unplugged",
                                                   description="/dev/laned-rsu"))
    lane.run(range(0, 10), healthy)
    lane.run(range(10, 40), down)
    assert lane.raised() == ["rsu_offline"]  # not also rsu_not_initialised / rsu_silent: one cause
    up = lane.changes[0]
    assert up.at == 15.0 and up.zh == "RSU通信中断，ETC暂停，请检查RSU电源和串口线"
    assert up.en.startswith("RSU link down") and "EIO: adapter unplugged" in up.alarm.detail
    assert "/dev/laned-rsu" in up.alarm.detail
    def back(t):
        return replace(healthy(t), rsu=RsuSnapshot(connected=True, connected_at=40.0, initialised=True,
                                                   last_seen=t - 0.5))
    lane.run(range(40, 60), back)
    assert lane.raised() == ["rsu_offline"] and lane.cleared() == ["rsu_offline"]
    assert lane.changes[-1].at == 45.0  # clear debounce 5 s
    assert lane.registry.active() == []


def test_an_rsu_without_b0_after_connecting_raises_rsu_not_initialised_with_its_status():
    lane = Lane()
    def no_b0(t):
        return replace(healthy(t), rsu=RsuSnapshot(connected=True, connected_at=0.0, initialised=False,
                                                   b0_status=0x05, last_seen=t - 1.0))
    lane.run(range(0, 14), no_b0)
    assert lane.changes == []  # the RSU has 15 s to send B0
    lane.run(range(14, 20), no_b0)
    assert lane.raised() == ["rsu_not_initialised"] and "0x05" in lane.changes[0].alarm.detail


def test_an_rsu_silent_past_the_heartbeat_limit_raises_rsu_silent():
    r = check_rsu(RsuSnapshot(connected=True, connected_at=0.0, initialised=True, last_seen=10.0), 80.0, CFG)
    silent = by_name(r)["rsu.heartbeat"]
    assert silent.status is CheckStatus.FAILED and silent.alarm == "rsu_silent" and silent.value == 70.0
    assert "70.0 s" in silent.detail and "limit 65 s" in silent.detail
    # a frame from an earlier connection does not count for this one
    r = check_rsu(RsuSnapshot(connected=True, connected_at=100.0, initialised=False, last_seen=90.0), 170.0, CFG)
    assert "nothing received" in by_name(r)["rsu.heartbeat"].detail
    assert by_name(r)["rsu.heartbeat"].status is CheckStatus.FAILED


# -- IO module, GPIO, display ------------------------------------------------------------------------

def test_an_io_module_offline_raises_io_offline_and_not_input_stale():
    lane = Lane()
    def off(t):
        return replace(healthy(t), io=(IoSnapshot("io_module", online=False, detail="timeout, slave 2",
                                                  inputs=(InputReading("safety_loop", None, 3.0),)),))
    lane.run(range(0, 3), healthy)
    lane.run(range(3, 20), off)
    assert lane.raised() == ["io_offline"] and "timeout, slave 2" in lane.changes[0].alarm.detail


def test_gpio_unusable_raises_gpio_fault():
    r = check_io(IoSnapshot("io", online=False, detail="cannot open GPIO pins: no gpiochip", backend=IoBackend.GPIO),
                 0.0, CFG)
    assert by_name(r)["io.online"].alarm == "gpio_fault"
    assert by_name(r)["io.online"].status is CheckStatus.FAILED


def test_a_stale_safety_loop_raises_input_stale():
    lane = Lane()
    def stale(t):
        return replace(healthy(t), io=(io_ok(t, inputs=(InputReading("safety_loop", False, t - 0.9),)),))
    lane.run(range(0, 10), stale)
    assert lane.raised() == ["input_stale"]
    assert "safety_loop 0.90 s old (limit 0.25 s)" in lane.changes[0].alarm.detail
    never = check_io(IoSnapshot("io_module", online=True), 5.0, CFG)
    assert by_name(never)["io_module.inputs"].status is CheckStatus.FAILED
    assert "safety_loop never read" in by_name(never)["io_module.inputs"].detail


def test_an_output_read_back_wrong_raises_io_readback():
    r = check_io(io_ok(1.0, readback_problems=("barrier_raise: wrote 1, read 0",)), 1.0, CFG)
    assert by_name(r)["io_module.readback"].status is CheckStatus.FAILED
    assert by_name(r)["io_module.readback"].alarm == "io_readback"


def test_a_flapping_display_link_does_not_storm():
    lane = Lane()
    def flap(t):
        return replace(healthy(t), display=DisplaySnapshot("fee_display", online=int(t) % 4 < 2,
                                                           detail="bus modbus-1 is down"))
    lane.run(range(0, 300), flap)  # down 2 s, up 2 s for five minutes: 75 outages
    assert lane.raised() == ["display_offline"] and lane.cleared() == []
    lane.run(range(300, 420), healthy)
    assert lane.raised() == ["display_offline"] and lane.cleared() == ["display_offline"]


# -- barrier -----------------------------------------------------------------------------------------

def test_a_latched_interlock_fault_is_reported_with_its_reason():
    [fault, _] = check_barrier(BarrierSnapshot(fault="safety_loop stale (0.84 s old)", release_after_s=3.0), 0.0, CFG)
    assert fault.status is CheckStatus.FAILED and fault.alarm == "interlock_fault"
    assert "safety_loop stale (0.84 s old)" in fault.detail and "3 s" in fault.detail


def test_a_barrier_not_up_within_its_travel_time_raises_barrier_raise_timeout():
    lane = Lane()
    lane.run(range(0, 6), lambda t: replace(healthy(t), barrier=BarrierSnapshot(raise_commanded_at=0.0,
                                                                                up_limit=False)))
    assert lane.changes == []
    lane.run(range(6, 9), lambda t: replace(healthy(t), barrier=BarrierSnapshot(raise_commanded_at=0.0,
                                                                                up_limit=False)))
    assert lane.raised() == ["barrier_raise_timeout"]
    lane.run(range(9, 11), lambda t: replace(healthy(t), barrier=BarrierSnapshot(raise_commanded_at=0.0,
                                                                                 up_limit=True)))
    assert lane.cleared() == ["barrier_raise_timeout"]


# -- journal and disk --------------------------------------------------------------------------------

def test_a_disk_below_the_threshold_raises_disk_low():
    lane = Lane()
    def low(t):
        return replace(healthy(t), journal=replace(healthy(t).journal, disk_free_bytes=100 << 20))
    lane.run(range(0, 29), low)
    assert lane.changes == []  # disk_low waits 30 s: a log rotation must not raise it
    lane.run(range(29, 40), low)
    assert lane.raised() == ["disk_low"]
    assert "100 MiB" in lane.changes[0].alarm.detail and "256 MiB" in lane.changes[0].alarm.detail
    # the percentage counts too: 1 GiB free of 32 GiB is 3.1 %
    pct = by_name(check_journal(replace(healthy(0).journal, disk_free_bytes=1 << 30), CFG))["journal.disk"]
    assert pct.status is CheckStatus.DEGRADED and "3.1 %" in pct.detail


def test_a_slow_commit_raises_journal_slow():
    r = by_name(check_journal(replace(healthy(0).journal, last_commit_s=0.01, max_commit_s=0.45), CFG))
    slow = r["journal.commit"]
    assert slow.status is CheckStatus.DEGRADED and slow.alarm == "journal_slow" and slow.value == 0.45
    assert "max 450 ms" in slow.detail


def test_journal_not_writable_holds_while_the_write_or_the_writer_fails():
    reg = AlarmRegistry()
    j = healthy(0).journal
    both = replace(j, writable=False, detail="disk I/O error", writer_alive=False)
    ch = apply(check_journal(both, CFG), reg, 0.0, wall(0))
    assert [c.code for c in ch] == ["journal_not_writable"]
    assert "disk I/O error" in ch[0].alarm.detail and "writer thread" in ch[0].alarm.detail
    ch = apply(check_journal(replace(both, writable=True), CFG), reg, 30.0, wall(30))
    assert ch == [] and reg.is_active("journal_not_writable")  # the writer is still dead
    apply(check_journal(replace(both, writable=True, writer_alive=True), CFG), reg, 31.0, wall(31))
    ch = apply(check_journal(replace(both, writable=True, writer_alive=True), CFG), reg, 41.0, wall(41))
    assert [(c.code, c.change) for c in ch] == [("journal_not_writable", Change.CLEARED)]


def test_an_unknown_result_leaves_its_alarm_as_it_is():
    reg = AlarmRegistry(debounce_s=0.0, clear_debounce_s=0.0)
    apply([CheckResult("journal.disk", CheckStatus.DEGRADED, "90 MiB free", "disk_low")], reg, 0.0, wall(0))
    apply([CheckResult("journal.disk", CheckStatus.UNKNOWN, "disk usage not known", "disk_low")], reg, 1.0, wall(1))
    assert reg.is_active("disk_low")


# -- clock -------------------------------------------------------------------------------------------

def test_a_wall_clock_jump_of_an_hour_raises_clock_jump_with_the_jump_size():
    lane = Lane()
    lane.run(range(0, 10), healthy)
    snap = healthy(10.0)
    jumped = wall(10) + dt.timedelta(hours=1)
    lane.changes += apply(lane.checker.run(snap, 10.0, jumped), lane.registry, 10.0, jumped)
    assert lane.raised() == ["clock_jump"]
    alarm = lane.changes[0].alarm
    assert "+3600.0 s (forward)" in alarm.detail and lane.changes[0].zh.startswith("系统时钟跳变")
    # the next reading agrees with the monotonic clock again: no second raise
    later = jumped + dt.timedelta(seconds=1)
    lane.changes += apply(lane.checker.run(healthy(11.0), 11.0, later), lane.registry, 11.0, later)
    assert lane.raised() == ["clock_jump"] and lane.registry.is_active("clock_jump")


def test_clock_jump_is_the_wall_delta_minus_the_monotonic_delta():
    assert clock_jump((100.0, T0), (101.0, T0 + dt.timedelta(seconds=1))) == 0.0
    assert clock_jump((100.0, T0), (101.0, T0 - dt.timedelta(seconds=29))) == -30.0
    watch = ClockWatch(2.0)
    assert watch.check(0.0, T0).status is CheckStatus.OK  # first reading
    assert watch.check(1.0, T0 + dt.timedelta(seconds=2.5)).status is CheckStatus.OK  # 1.5 s: NTP slews that
    back = watch.check(2.0, T0 - dt.timedelta(seconds=60))
    assert back.status is CheckStatus.FAILED and back.value == pytest.approx(-63.5)
    assert "backward" in back.detail


# -- fee table and status list ---------------------------------------------------------------------

def test_a_fee_table_past_its_expiry_fails_the_check_and_raises_fee_table_expired():
    lane = Lane()
    def expired(t):
        return replace(healthy(t), tables=replace(healthy(t).tables,
                                                  fee_table_valid_until=dt.datetime(2026, 3, 1, 0, 0)))
    lane.run(range(0, 3), expired)
    [check] = [r for r in lane.checker.run(expired(3.0), 3.0, wall(3)) if r.name == "fee_table.valid"]
    assert check.status is CheckStatus.FAILED and check.alarm == "fee_table_expired"
    assert "version 7 expired at 2026-03-01T00:00:00+08:00 (8.0 h ago)" == check.detail
    assert lane.raised() == ["fee_table_expired"]
    assert lane.changes[0].zh.startswith("费率表已过期")


def test_a_fee_table_not_yet_in_force_or_absent_raises_fee_table_missing():
    future = check_tables(replace(healthy(0).tables, fee_table_valid_from=dt.datetime(2026, 3, 2)), T0, CFG)
    assert by_name(future)["fee_table.present"].status is CheckStatus.FAILED
    assert by_name(future)["fee_table.present"].alarm == "fee_table_missing"
    none = by_name(check_tables(TablesSnapshot(status_list_version=1, status_list_updated_at=T0), T0, CFG))
    assert none["fee_table.present"].status is CheckStatus.FAILED and none["fee_table.valid"].ok
    entry_lane = check_tables(TablesSnapshot(fee_table_required=False, status_list_version=1,
                                             status_list_updated_at=T0), T0, CFG)
    assert overall(entry_lane) is CheckStatus.OK


def test_an_old_status_list_is_a_warning_and_a_missing_one_fails():
    lane = Lane()
    def old(t):
        return replace(healthy(t), tables=replace(healthy(t).tables,
                                                  status_list_updated_at=T0 - dt.timedelta(days=3)))
    lane.run(range(0, 2), old)
    assert lane.raised() == ["status_list_old"]
    assert lane.changes[0].severity == "warning" and "3.0 d old (max 2.0 d)" in lane.changes[0].alarm.detail
    missing = by_name(check_tables(replace(healthy(0).tables, status_list_version=None), T0, CFG))
    assert missing["status_list.present"].status is CheckStatus.FAILED
    assert missing["status_list.present"].alarm == "status_list_missing"


# -- the layer as a whole --------------------------------------------------------------------------

def test_every_alarm_a_check_can_name_is_in_the_catalogue():
    bad = LaneSnapshot(
        rsu=RsuSnapshot(connected=True, connected_at=0.0, initialised=False, last_seen=None),
        io=(IoSnapshot("io_module", online=True, readback_problems=("x",)),
            IoSnapshot("io", online=False, backend=IoBackend.GPIO)),
        display=DisplaySnapshot("fee_display", online=False, readback_problems=("line1",)),
        journal=JournalSnapshot(writable=False, writer_alive=False, disk_free_bytes=0, disk_total_bytes=1,
                                last_commit_s=9.0),
        tables=TablesSnapshot(fee_table_version=1, fee_table_valid_until=dt.datetime(2000, 1, 1),
                              status_list_version=1, status_list_updated_at=dt.datetime(2000, 1, 1)),
        barrier=BarrierSnapshot(fault="x", raise_commanded_at=0.0, up_limit=False),
    )
    checker = HealthChecker()
    checker.run(bad, 0.0, T0)
    results = checker.run(bad, 1000.0, T0 + dt.timedelta(hours=2))
    named = {r.alarm for r in results if r.alarm}
    assert named <= set(CATALOGUE)
    reg = AlarmRegistry(debounce_s=0.0)
    apply(results, reg, 1000.0, T0)
    assert {a.code for a in reg.active()} == {r.alarm for r in results if r.alarm and not r.ok}
    assert {"rsu_silent", "io_readback", "gpio_fault", "display_offline", "display_readback", "journal_not_writable",
            "disk_low", "journal_slow", "fee_table_expired", "status_list_old", "interlock_fault",
            "barrier_raise_timeout", "clock_jump", "rsu_not_initialised"} <= named


def test_a_result_naming_an_unknown_alarm_changes_nothing():
    reg = AlarmRegistry(debounce_s=0.0)
    results = [CheckResult("rsu.link", CheckStatus.FAILED, "down", "rsu_offline"),
               CheckResult("x", CheckStatus.FAILED, "?", "no_such_alarm")]
    with pytest.raises(UnknownAlarm, match="no_such_alarm"):
        apply(results, reg, 0.0, T0)
    assert reg.active() == []


def test_the_health_layer_is_sans_io():
    health = Path(__file__).resolve().parents[1] / "laned" / "health"
    for name in ("alarms.py", "checks.py"):
        tree = ast.parse((health / name).read_text(encoding="utf-8"))
        imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        forbidden = {m for m in imported if m.split(".")[0] in {"asyncio", "time", "os", "shutil", "socket"}
                     or m.startswith("laned.drivers")}
        assert not forbidden, f"{name} imports {forbidden}"
        calls = {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
        assert not calls & {"now", "utcnow", "today", "monotonic", "time"}, f"{name} reads a clock"


def test_a_daemon_running_for_months_keeps_a_bounded_number_of_alarm_changes_and_says_how_many_it_dropped(
        monkeypatch):
    """A flapping device makes thousands of changes a day: memory must not grow with them.
    Whoever reads the changes by number (the uplink, after an outage) learns how many of
    those it asks for are gone."""
    from laned.health import monitor as monitor_module
    from laned.health.monitor import HealthMonitor
    from laned.lane.events import ClearAlarm, RaiseAlarm

    monkeypatch.setattr(monitor_module, "CHANGES_KEPT", 10)
    clock = [0.0]
    monitor = HealthMonitor(registry=AlarmRegistry(), settings=CFG, post=lambda ev: None,
                            monotonic=lambda: clock[0], wall=lambda: wall(clock[0]))
    for i in range(20):
        clock[0] = i * 3600.0  # an hour apart: a flapping alarm would be held back (flap suppression)
        monitor.lane_alarm(RaiseAlarm("uplink_publish_refused", f"tx: try {i}") if i % 2 == 0
                           else ClearAlarm("uplink_publish_refused"))
    assert monitor.changes_total == 20 and len(monitor.changes) == 10
    changes, lost = monitor.changes_since(4)
    assert lost == 6 and [c.at for c in changes] == [i * 3600.0 for i in range(10, 20)]
    changes, lost = monitor.changes_since(15)
    assert lost == 0 and [c.at for c in changes] == [i * 3600.0 for i in range(15, 20)]
    assert monitor.changes_since(20) == ([], 0)
