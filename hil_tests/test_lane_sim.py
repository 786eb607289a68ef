"""`laned sim`: the real daemon against the emulated RSU, Modbus fee display and IO module
and the lane model, with traffic — and a verdict that catches a lane that breaks a rule.

The sabotage tests swap a piece of the lane for a reckless one and check that the
simulation's verdict says so: a simulation that cannot fail proves nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from laned.cli.sim_cmd import EXIT_OK, EXIT_RULE_BROKEN, exit_status
from laned.lane.barrier import BarrierCommand, BarrierInterlock, BarrierPosition
from laned.lane.machine import LaneMachine, MoveBarrier
from laned.sim.lane_sim import LaneSim
from laned.sim.traffic import MIX_KINDS, Kind, SimVehicle, traffic_mix

pytestmark = [pytest.mark.hil, pytest.mark.timeout(120)]

SUMMARY_KEYS = {"vehicles", "charged", "entry_written", "refused", "unknown", "safety_violations", "double_charges",
                "turnaround_p50_ms", "turnaround_p99_ms", "outcomes"}


def car(n: int, kind: Kind = Kind.NORMAL, **kw) -> SimVehicle:
    return SimVehicle(plate=f"鲁A{n:05d}", obu_id=f"{0x20000000 + n:08x}", card_number=f"3701{n:016d}", kind=kind,
                      arrive_after=kw.pop("arrive_after", 1.0), **kw)


async def test_every_kind_of_vehicle_gets_what_it_should_and_both_rules_hold(tmp_path):
    traffic = traffic_mix(12, seed=5)  # from 12 vehicles on, every kind of the mix appears
    assert {v.kind for v in traffic} == set(MIX_KINDS)
    summary = await LaneSim(traffic, tmp_path).run()
    wrong = [o for o in summary.outcomes if not o["as_expected"]]
    assert wrong == []
    assert summary.safety_violations == 0 and summary.double_charges == 0
    assert summary.charged == sum(1 for v in traffic if v.expected == "charged")
    assert summary.unknown == 1 and summary.follow_cars == sum(1 for v in traffic if v.kind is Kind.FOLLOW_CAR)
    assert exit_status(summary) == EXIT_OK
    # The seen-again vehicle was let on without a second charge, on its record.
    again = next(i for i, v in enumerate(traffic) if v.kind is Kind.SEEN_AGAIN)
    assert summary.outcomes[again]["outcome"] == "charged"


async def test_a_lane_that_lowers_onto_a_vehicle_is_caught(tmp_path, monkeypatch):
    def reckless_barrier(self, now, out):
        # Lowers as soon as a vehicle is on the safety loop: exactly what must never happen.
        if self.barrier.position is BarrierPosition.UP and self.safety_occupied:
            self.barrier.position = BarrierPosition.LOWERING
            out.append(MoveBarrier(BarrierCommand.LOWER))

    monkeypatch.setattr(LaneMachine, "_barrier", reckless_barrier)
    monkeypatch.setattr(BarrierInterlock, "occupied", lambda self, now: False)
    monkeypatch.setattr(BarrierInterlock, "approach_doubt", lambda self, now: None)  # the IO worker's last check
    summary = await LaneSim([car(1), car(2, arrive_after=2.0)], tmp_path).run()
    assert summary.safety_violations >= 1
    assert any("safety_loop" in v or "hit" in v for v in summary.violations)
    assert exit_status(summary) == EXIT_RULE_BROKEN


async def test_a_lane_that_forgets_who_paid_charges_twice_and_is_caught(tmp_path, monkeypatch):
    monkeypatch.setattr(LaneMachine, "_paid_recently", lambda self, *args: False)
    monkeypatch.setattr(LaneMachine, "_being_recorded", lambda self, *args: False)
    summary = await LaneSim([car(1, Kind.SEEN_AGAIN)], tmp_path).run()
    assert summary.double_charges >= 1
    assert exit_status(summary) == EXIT_RULE_BROKEN


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "laned.cli", "sim", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_laned_sim_json_prints_the_summary_with_the_documented_keys(tmp_path):
    scenario = tmp_path / "two.json"
    scenario.write_text(json.dumps([
        {"plate": "鲁A12345", "obu_id": "a1b2c3d4", "card_number": "37012301000012345678", "balance": 120000,
         "arrive_after": 0.5},
        {"plate": "鲁B88888", "obu_id": "0badcafe", "card_number": "37012301000099990001", "balance": 500,
         "kind": "low_balance", "arrive_after": 1.0},
    ], ensure_ascii=False), encoding="utf-8")
    done = run_cli("--scenario", str(scenario), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert SUMMARY_KEYS <= summary.keys()
    assert summary["vehicles"] == 2 and summary["charged"] == 1
    assert summary["refused"] == {"insufficient_balance": 1}
    assert [o["outcome"] for o in summary["outcomes"]] == ["charged", "refused"]
    assert summary["outcomes"][0]["fee"] == 3500
    assert summary["outcomes"][0]["plate"] == "鲁A*****"  # masked unless --show-plates
    assert summary["turnaround_p50_ms"] > 0 and summary["turnaround_p99_ms"] >= summary["turnaround_p50_ms"]


def test_laned_sim_without_a_terminal_prints_one_line_per_event_and_the_summary(tmp_path):
    done = run_cli("-n", "2", "--seed", "3", "--state-dir", str(tmp_path / "state"))
    assert done.returncode == 0, done.stderr
    assert "vehicle   1" in done.stdout and "safety violations" in done.stdout
    assert (tmp_path / "state" / "journal.db").exists() and (tmp_path / "state" / "laned.log").exists()


@pytest.mark.parametrize("content, expected", [
    ('[{"plate": "鲁A1", "obu_id": "xyz", "card_number": "37012301000012345678"}]', "vehicle 1 (obu xyz): obu_id = \"xyz\": not 8 hex digits"),
    ("[]", "non-empty JSON list"),
    ("{not json", "not JSON"),
])
def test_a_bad_scenario_file_stops_the_sim_with_the_vehicle_and_key(tmp_path, content, expected):
    bad = tmp_path / "bad.json"
    bad.write_text(content, encoding="utf-8")
    done = run_cli("--scenario", str(bad), timeout=30)
    assert done.returncode == 2
    assert expected in done.stderr
    assert done.stdout == ""


def test_ctrl_c_stops_the_sim_cleanly_with_a_summary_of_what_ran(tmp_path):
    import signal
    import time

    proc = subprocess.Popen([sys.executable, "-m", "laned.cli", "sim", "-n", "20", "--json",
                             "--state-dir", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / "journal.db").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3.0)  # some traffic
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    summary = json.loads(out)
    assert summary["interrupted"] is True and summary["vehicles"] == 20
    assert summary["safety_violations"] == 0 and summary["double_charges"] == 0
    assert any(o["way"] == "in_lane" for o in summary["outcomes"])
