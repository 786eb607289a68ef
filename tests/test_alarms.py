"""The alarm catalogue and registry: every alarm has texts, debounce stops storms,
events are counted and expire, the systemd status line is short."""

from __future__ import annotations

import ast
import datetime as dt
import json
import re
from pathlib import Path

import pytest

from laned.health.alarms import (
    CATALOGUE, Alarm, AlarmChange, AlarmKind, AlarmRegistry, AlarmSpec, Change, Severity, UnknownAlarm, status_line,
)
from laned.lane.outcomes import OUTCOMES, Reason

LANED = Path(__file__).resolve().parents[1] / "laned"
T0 = dt.datetime(2026, 3, 1, 8, 0, 0, tzinfo=dt.timezone(dt.timedelta(hours=8)))
CJK = re.compile(r"[\u4e00-\u9fff]")


def wall(t: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=t)


def raised(changes: list[AlarmChange]) -> list[str]:
    return [c.code for c in changes if c.change is Change.RAISED]


def cleared(changes: list[AlarmChange]) -> list[str]:
    return [c.code for c in changes if c.change is Change.CLEARED]


# -- the catalogue covers every alarm the lane can raise ------------------------------------------

def _alarm_calls() -> tuple[dict[str, set[str]], list[str]]:
    """Codes of every RaiseAlarm(...)/ClearAlarm(...) in laned/ (by AST), and the places
    whose code is not a literal, as ``file:function``."""
    reasons = {m.name: m.value for m in Reason}
    found: dict[str, set[str]] = {"RaiseAlarm": set(), "ClearAlarm": set()}
    dynamic: list[str] = []

    def code_of(node: ast.expr) -> str | None:
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return node.value
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "Reason"
                and node.attr in reasons):
            return reasons[node.attr]
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "str"
                and len(node.args) == 1):
            return code_of(node.args[0])
        return None

    for path in sorted(LANED.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        for func in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
            for call in [n for n in ast.walk(func) if isinstance(n, ast.Call)]:
                name = call.func.id if isinstance(call.func, ast.Name) else \
                    call.func.attr if isinstance(call.func, ast.Attribute) else None
                if name not in found:
                    continue
                arg = call.args[0] if call.args else next((k.value for k in call.keywords if k.arg == "code"), None)
                code = code_of(arg) if arg is not None else None
                if code is None:
                    dynamic.append(f"{path.name}:{func.name}")
                else:
                    found[name].add(code)
    return found, dynamic


def test_the_catalogue_has_a_text_for_every_alarm_the_lane_can_raise():
    calls, dynamic = _alarm_calls()
    assert "rsu_fault" in calls["RaiseAlarm"]  # the scan does find the machine's calls
    # The one place that raises a computed code raises the Reason being refused, and only
    # when its Outcome has alarm=True: those are covered by the Reason check below. A new
    # computed code elsewhere must be added here with where its codes come from.
    assert set(dynamic) <= {"machine.py:_refuse"}, dynamic
    from_reasons = {str(r) for r, o in OUTCOMES.items() if o.alarm}
    assert from_reasons, "no Reason with alarm=True found"
    needed = calls["RaiseAlarm"] | calls["ClearAlarm"] | from_reasons
    missing = sorted(needed - set(CATALOGUE))
    assert not missing, f"alarm codes raised by laned without an AlarmSpec (texts) in the catalogue: {missing}"


def test_what_the_lane_raises_and_never_clears_is_an_event_and_what_it_clears_is_a_condition():
    # The executor maps RaiseAlarm → registry.raise_alarm and ClearAlarm → clear_alarm. A
    # condition the lane raises but never clears would stay active forever.
    calls, _ = _alarm_calls()
    from_reasons = {str(r) for r, o in OUTCOMES.items() if o.alarm}
    for code in (calls["RaiseAlarm"] | from_reasons) - calls["ClearAlarm"]:
        assert CATALOGUE[code].kind is AlarmKind.EVENT, f"{code} is raised by the lane, never cleared: make it an event"
    for code in calls["ClearAlarm"]:
        assert CATALOGUE[code].kind is AlarmKind.CONDITION, f"{code} is cleared by the lane: make it a condition"


def test_the_catalogue_holds_every_alarm_of_the_health_layer():
    required = {
        "rsu_offline", "rsu_not_initialised", "rsu_silent", "rsu_fault", "io_offline", "io_readback", "input_stale",
        "interlock_fault", "barrier_raise_timeout", "display_offline", "gpio_fault", "journal_not_writable",
        "journal_slow", "disk_low", "clock_jump", "fee_table_missing", "fee_table_expired", "status_list_missing",
        "status_list_old", "etc_closed", "journal_failed", "outcome_unknown", "follow_car", "passage_timeout",
    }
    assert required <= set(CATALOGUE)
    events = {c for c, s in CATALOGUE.items() if s.kind is AlarmKind.EVENT}
    assert {"follow_car", "outcome_unknown", "clock_jump", "journal_failed"} <= events
    assert {"rsu_offline", "io_offline", "disk_low", "etc_closed"}.isdisjoint(events)


@pytest.mark.parametrize("spec", list(CATALOGUE.values()), ids=lambda s: s.code)
def test_every_alarm_text_says_what_is_wrong_in_chinese_and_english(spec: AlarmSpec):
    assert spec.code == spec.code.strip().lower() and re.fullmatch(r"[a-z0-9_]+", spec.code)
    assert CJK.search(spec.zh), f"{spec.code}: zh has no Chinese text"
    assert "请" in spec.zh, f"{spec.code}: zh must say what to check (请检查/请核对…)"
    assert not CJK.search(spec.en) and spec.en.endswith(".") and len(spec.en) >= 40
    assert len(spec.action) >= 40
    assert isinstance(spec.severity, Severity)


def test_rsu_offline_reads_as_the_field_engineer_needs_it():
    spec = CATALOGUE["rsu_offline"]
    assert spec.severity is Severity.CRITICAL and spec.kind is AlarmKind.CONDITION
    assert spec.zh == "RSU通信中断，ETC暂停，请检查RSU电源和串口线"
    assert "/dev/laned-rsu" in spec.en and "ETC closed" in spec.en


# -- conditions: debounce --------------------------------------------------------------------------

def test_an_rsu_link_down_for_less_than_its_debounce_raises_nothing():
    reg = AlarmRegistry(debounce_s={"rsu_offline": 5.0})
    changes = []
    for t in range(0, 5):  # down at 0 … 4, checked every second
        changes += reg.set("rsu_offline", True, float(t), wall(t), "ENOENT")
        changes += reg.tick(t + 0.5, wall(t + 0.5))
    changes += reg.set("rsu_offline", False, 4.9, wall(4.9))
    changes += reg.tick(30.0, wall(30))
    assert changes == [] and reg.active() == [] and reg.history == ()
    assert reg.counts == {}


def test_an_rsu_link_down_past_its_debounce_raises_once_with_texts_and_clears_when_back():
    reg = AlarmRegistry(debounce_s={"rsu_offline": 5.0}, clear_debounce_s={"rsu_offline": 3.0})
    changes = []
    for t in range(0, 20):
        changes += reg.set("rsu_offline", True, float(t), wall(t), "EIO reading /dev/laned-rsu")
    assert raised(changes) == ["rsu_offline"] and cleared(changes) == []
    up = changes[0]
    assert up.at == 5.0 and up.wall == wall(5) and up.alarm.raised_at == wall(5)
    assert up.zh == "RSU通信中断，ETC暂停，请检查RSU电源和串口线" and "serial cable" in up.en
    assert up.alarm.detail == "EIO reading /dev/laned-rsu" and up.alarm.severity is Severity.CRITICAL
    assert "held 5.0 s" in up.cause and "rsu_offline raised (critical)" in up.message()
    [active] = reg.active()
    assert (active.code, active.count, active.total) == ("rsu_offline", 1, 1)

    changes = reg.set("rsu_offline", False, 20.0, wall(20))
    changes += reg.tick(22.0, wall(22))
    assert changes == [] and reg.is_active("rsu_offline")  # not yet absent for 3 s
    changes = reg.tick(23.0, wall(23))
    assert cleared(changes) == ["rsu_offline"] and reg.active() == []
    assert changes[0].alarm.raised_at == wall(5) and changes[0].wall == wall(23)
    assert [c.change for c in reg.history] == [Change.RAISED, Change.CLEARED]
    assert reg.counts == {"rsu_offline": 1}


def test_a_condition_reported_once_is_raised_by_tick_when_its_debounce_has_passed():
    reg = AlarmRegistry(debounce_s={"display_offline": 10.0})
    assert reg.set("display_offline", True, 0.0, wall(0), "bus modbus-1 is down") == []
    assert reg.pending() == ["display_offline"]
    assert reg.tick(9.9, wall(9.9)) == []
    assert raised(reg.tick(10.0, wall(10))) == ["display_offline"]


def test_a_flapping_display_link_does_not_storm():
    reg = AlarmRegistry(debounce_s={"display_offline": 10.0}, clear_debounce_s={"display_offline": 5.0})
    changes = []
    t = 0.0
    while t < 300:  # down 1 s, up 1 s, for five minutes: 150 outages
        changes += reg.set("display_offline", True, t, wall(t), "timeout")
        changes += reg.set("display_offline", False, t + 1, wall(t + 1))
        changes += reg.tick(t + 1.5, wall(t + 1.5))
        t += 2
    assert raised(changes) == ["display_offline"] and cleared(changes) == []
    assert "flapping" in changes[0].cause
    # it settles: cleared once, after the flap window has emptied and the clear debounce passed
    for s in range(300, 400, 5):
        changes += reg.tick(float(s), wall(s))
    assert raised(changes) == ["display_offline"] and cleared(changes) == ["display_offline"]
    assert len(reg.history) == 2


def test_without_flap_detection_a_condition_shorter_than_its_debounce_never_raises():
    reg = AlarmRegistry(debounce_s={"display_offline": 10.0}, flap_count=0)
    changes = []
    for t in range(0, 300, 2):
        changes += reg.set("display_offline", True, float(t), wall(t))
        changes += reg.set("display_offline", False, t + 1.0, wall(t + 1))
    assert changes == []


def test_a_condition_reported_by_two_sources_holds_while_either_says_so():
    reg = AlarmRegistry(debounce_s=0.0, clear_debounce_s=0.0)
    assert raised(reg.set("io_readback", True, 0.0, wall(0), "barrier_raise reads 0", source="io_module")) \
        == ["io_readback"]
    assert reg.set("io_readback", True, 1.0, wall(1), "light_red reads 1", source="gpio") == []
    assert reg.active()[0].detail == "barrier_raise reads 0; light_red reads 1"
    assert reg.set("io_readback", False, 2.0, wall(2), source="io_module") == []
    assert reg.active()[0].detail == "light_red reads 1"
    assert cleared(reg.set("io_readback", False, 3.0, wall(3), source="gpio")) == ["io_readback"]


def test_the_lane_machine_raises_and_clears_a_condition_through_raise_alarm_and_clear_alarm():
    reg = AlarmRegistry()
    [up] = reg.raise_alarm("etc_closed", 0.0, wall(0), "rsu: link lost")
    assert up.raised and up.alarm.detail == "rsu: link lost"
    [down] = reg.clear_alarm("etc_closed", 4.0, wall(4))
    assert not down.raised and down.code == "etc_closed"


def test_an_acknowledged_condition_stays_until_it_is_gone():
    reg = AlarmRegistry(debounce_s=0.0, clear_debounce_s=0.0)
    reg.set("disk_low", True, 0.0, wall(0), "90 MiB free")
    assert reg.acknowledge("disk_low", 1.0, wall(1)) == []
    assert reg.active()[0].acknowledged
    assert cleared(reg.set("disk_low", False, 2.0, wall(2))) == ["disk_low"]


# -- events ------------------------------------------------------------------------------------------

def test_an_event_is_raised_once_counted_and_cleared_after_its_hold_time():
    reg = AlarmRegistry(hold_s={"follow_car": 60.0})
    first = reg.event("follow_car", 0.0, wall(0), "a vehicle entered the safety loop without paying")
    assert raised(first) == ["follow_car"] and first[0].zh.startswith("跟车违章")
    assert reg.event("follow_car", 30.0, wall(30), "again") == []
    assert reg.event("follow_car", 50.0, wall(50), "and again") == []
    [a] = reg.active()
    assert (a.count, a.total, a.detail, a.raised_at) == (3, 3, "and again", wall(0))
    assert reg.tick(109.0, wall(109)) == []  # the hold runs from the last occurrence
    gone = reg.tick(110.0, wall(110))
    assert cleared(gone) == ["follow_car"] and "hold time 60 s" in gone[0].cause
    assert raised(reg.event("follow_car", 200.0, wall(200))) == ["follow_car"]
    assert reg.counts == {"follow_car": 4}
    assert reg.active()[0].total == 4 and reg.active()[0].count == 1


def test_an_acknowledged_event_clears_at_once():
    reg = AlarmRegistry()
    reg.raise_alarm("outcome_unknown", 0.0, wall(0), "seq 17 OBU a1b2c3d4: B5 lost")
    [c] = reg.acknowledge("outcome_unknown", 5.0, wall(5), by="booth")
    assert not c.raised and c.cause == "acknowledged by booth" and reg.active() == []


# -- errors ------------------------------------------------------------------------------------------

def test_an_unknown_code_is_an_error_naming_the_code():
    reg = AlarmRegistry()
    for call in (lambda: reg.set("rsu_on_fire", True, 0.0, wall(0)), lambda: reg.event("rsu_on_fire", 0.0, wall(0)),
                 lambda: reg.raise_alarm("rsu_on_fire", 0.0, wall(0))):
        with pytest.raises(KeyError) as err:
            call()
        assert isinstance(err.value, UnknownAlarm) and "rsu_on_fire" in str(err.value)
        assert "laned/health/alarms.py" in str(err.value)
    with pytest.raises(UnknownAlarm, match="rsu_on_fire"):
        AlarmRegistry(debounce_s={"rsu_on_fire": 1.0})
    assert reg.history == ()


def test_set_is_for_conditions_and_event_for_events():
    reg = AlarmRegistry()
    with pytest.raises(ValueError, match="'follow_car' is an event"):
        reg.set("follow_car", True, 0.0, wall(0))
    with pytest.raises(ValueError, match="'rsu_offline' is a condition"):
        reg.event("rsu_offline", 0.0, wall(0))
    with pytest.raises(ValueError, match="conditions only"):
        AlarmRegistry(debounce_s={"follow_car": 1.0})
    with pytest.raises(ValueError, match="≥ 0"):
        AlarmRegistry(debounce_s=-1.0)


# -- reading ---------------------------------------------------------------------------------------

def test_active_alarms_come_most_severe_first_and_make_a_short_status_line():
    reg = AlarmRegistry(debounce_s=0.0)
    assert status_line(reg.active()) == "alarms: none"
    reg.set("display_offline", True, 0.0, wall(0))
    reg.set("rsu_offline", True, 1.0, wall(1))
    assert [a.code for a in reg.active()] == ["rsu_offline", "display_offline"]
    assert status_line(reg.active()) == "alarms: rsu_offline(critical), display_offline(minor)"
    reg.event("follow_car", 2.0, wall(2))
    reg.event("follow_car", 3.0, wall(3))
    reg.set("status_list_old", True, 4.0, wall(4))
    assert status_line(reg.active(), limit=2) == "alarms: rsu_offline(critical), follow_car(major)×2, +2 more"


def test_changes_are_ready_for_the_journal_and_the_uplink():
    reg = AlarmRegistry(debounce_s=0.0)
    [c] = reg.set("journal_not_writable", True, 0.0, wall(0), "disk I/O error")
    d = json.loads(json.dumps(c.as_dict(), ensure_ascii=False))
    assert d["change"] == "raised" and d["code"] == "journal_not_writable" and d["severity"] == "critical"
    assert d["kind"] == "condition" and d["detail"] == "disk I/O error" and d["at"] == wall(0).isoformat()
    assert "交易日志" in d["zh"] and d["count"] == 1
    assert isinstance(c.alarm, Alarm) and c.alarm.as_dict()["raised_at"] == wall(0).isoformat()


def test_the_history_is_bounded():
    reg = AlarmRegistry(hold_s=0.0, history_size=10)
    for t in range(50):
        reg.event("passage_timeout", float(t), wall(t))
        reg.tick(t + 0.5, wall(t + 0.5))
    assert len(reg.history) == 10 and reg.counts == {"passage_timeout": 50}
    assert reg.history[-1].change is Change.CLEARED


def test_the_lane_re_raising_a_condition_with_a_new_detail_on_every_tick_does_not_storm():
    # The machine re-raises interlock_fault whenever the fault text changes, and a stale
    # input's text carries its age: a new RaiseAlarm every tick.
    reg = AlarmRegistry()
    changes = []
    for i in range(200):  # 10 s at 20 Hz; its raise debounce is 5 s
        t = i * 0.05
        changes += reg.raise_alarm("interlock_fault", t, wall(t), f"safety_loop stale ({0.3 + t:.2f} s old)")
        changes += reg.tick(t, wall(t))
    assert raised(changes) == ["interlock_fault"]
    assert changes[0].at == 5.0 and reg.active()[0].detail == "safety_loop stale (10.25 s old)"
    changes = reg.clear_alarm("interlock_fault", 10.0, wall(10), "presence inputs fresh and clear again")
    assert cleared(changes) == ["interlock_fault"]


def test_the_alarm_page_lists_every_alarm_of_the_catalogue():
    page = (LANED.parent / "docs" / "alarms.md").read_text(encoding="utf-8")
    rows = {m.group(1): m.group(0) for m in re.finditer(r"^\| `([a-z0-9_]+)` \|.*$", page, re.MULTILINE)}
    for code, spec in CATALOGUE.items():
        assert code in rows, f"docs/alarms.md has no row for {code}"
        assert spec.zh in rows[code] and spec.severity in rows[code]
