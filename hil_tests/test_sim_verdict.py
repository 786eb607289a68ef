"""`laned sim`'s verdict as an instrument: what the schema can now express is judged end to
end against the real daemon, and a lane (or a traffic situation) that sends a payment
out with the wrong vehicle is caught — `paid_not_passed`, `passed_unpaid`, exit 3.

Like hil_tests/test_lane_sim.py, the sabotage tests break one thing on purpose and check
that the verdict says so: a verdict that cannot fail proves nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from laned.cli.sim_cmd import EXIT_OK, EXIT_UNEXPECTED, exit_status
from laned.lane.machine import LaneMachine, MoveBarrier
from laned.sim.lane_sim import LaneSim, SimError
from laned.sim.traffic import RsuSettings, SimVehicle, parse_scenario

pytestmark = [pytest.mark.hil, pytest.mark.timeout(120)]


def car(n: int, **kw: Any) -> dict[str, Any]:
    return {"plate": f"鲁A{n:05d}", "obu_id": f"{0x30000000 + n:08x}", "card_number": f"3701{n:016d}",
            "arrive_after": 1.5, **kw}


async def test_what_the_schema_expresses_is_judged_end_to_end(tmp_path):
    vehicles = parse_scenario([
        # A credit card with balance 0 is charged (its B5 encodes: the balance stops at 0).
        car(1, card_type="credit", balance=0, expect_fee=3500),
        # Card and OBU disagree: plate mismatch and class mismatch, end to end.
        car(2, card_plate="鲁B99999", expect_reason="plate_mismatch"),
        car(3, card_class=2, expect="refused", expect_reason="class_mismatch"),
        # Card validity apart from the OBU contract; relative dates in the lane's time zone.
        car(4, card_expiry="today-1", expect_reason="card_expired"),
        car(5, contract_expiry="today", expect="charged"),  # valid through its last day
        car(6, contract_expiry="today-1", expect_reason="obu_expired"),
        # A Jiangsu card that entered at Shandong's station 0102 pays the 0102 fee …
        car(7, card_number="32010000000000000007", entry_network="3701", expect_fee=3500),
        # … and one whose entry record names its own network (3201-0102, not in the fee
        # table) pays the maximum fee: expect_fee says that is wrong.
        car(8, card_number="32010000000000000008", expect_fee=3500),
        # No OBU at all: no transaction, waits before the closed arm, takes the manual lane.
        # It arrives once the queue of refused cars ahead has drained: reaching the stop
        # line only after car 10 was read, it would drive out on car 10's payment (a
        # follow-car, recorded; car 10 is let out after it — test_a_tailgater_on_…).
        car(9, kind="no_obu", expect="none", arrive_after=22.0),
        # Read while car 9 waits at the stop line: the raise waits until car 9 pulled over.
        car(10, entry_time="now-3h", expect_fee=3500, arrive_after=5.5),
    ])
    summary = await LaneSim(vehicles, tmp_path).run()
    by_number = {o["vehicle"]: o for o in summary.outcomes}
    wrong = {n: o["unexpected"] for n, o in by_number.items() if not o["as_expected"]}
    assert wrong == {8: [f"fee {by_number[8]['fee']}, expected 3500"]}, summary.outcomes
    assert by_number[8]["outcome"] == "charged" and by_number[8]["fee"] > 3500  # the max fee, as the finding said
    assert by_number[1]["outcome"] == "charged" and by_number[1]["fee"] == 3500
    assert [by_number[n]["reason"] for n in (2, 3, 4, 6)] == ["plate_mismatch", "class_mismatch", "card_expired",
                                                               "obu_expired"]
    assert by_number[9]["outcome"] == "none" and by_number[9]["way"] == "diverted"
    assert summary.unknown == 0 and summary.paid_not_passed == 0 and summary.passed_unpaid == 0
    assert summary.safety_violations == 0 and summary.double_charges == 0
    assert summary.unexpected == 1 and exit_status(summary) == EXIT_UNEXPECTED


async def test_a_paid_vehicle_the_lane_never_lets_through_is_paid_not_passed(tmp_path, monkeypatch):
    let_through = LaneMachine._let_through

    def stingy(self, *args, **kw):
        # Charges, journals, shows the fee — and never raises the arm.
        out = args[3]
        mark = len(out)
        let_through(self, *args, **kw)
        out[mark:] = [a for a in out[mark:] if not isinstance(a, MoveBarrier)]

    monkeypatch.setattr(LaneMachine, "_let_through", stingy)
    summary = await LaneSim(parse_scenario([car(1, arrive_after=0.5)]), tmp_path).run()
    [o] = summary.outcomes
    assert o["outcome"] == "charged" and o["way"] == "diverted"
    assert o["as_expected"] is False and o["unexpected"] == ["paid_not_passed"]
    assert summary.paid_not_passed == 1 and summary.passed_unpaid == 0
    assert summary.safety_violations == 0 and summary.double_charges == 0
    assert exit_status(summary) == EXIT_UNEXPECTED  # 3, not 0


async def test_a_tailgater_on_the_next_cars_payment_is_caught(tmp_path):
    # An RSU that reads each OBU as it enters the zone, tailgater ahead or not, and never
    # re-reports it (a re-read at the closed arm would let car 3 out on its record).
    # Slow traffic: car 3 is read and pays while the tailgater is still before the loop,
    # and reaches the arm after it came down behind the tailgater.
    vehicles = parse_scenario([car(1, arrive_after=0.5, speed=1.5),
                               car(2, kind="follow_car", arrive_after=0.0, speed=1.5, length=3.0),
                               car(3, arrive_after=12.5, speed=1.5)])
    summary = await LaneSim(vehicles, tmp_path, rsu=RsuSettings(early_reads=True, reread_for_s=0)).run()
    first, tailgater, payer = summary.outcomes
    assert first["as_expected"] is True
    # The car behind paid, but the tailgater drove out on its payment. The old verdict
    # compared the reason only and called this car "charged, as expected".
    assert payer["outcome"] == "charged" and payer["reason"] == payer["expected"] == "charged"
    assert payer["way"] == "diverted"
    assert payer["as_expected"] is False and "paid_not_passed" in payer["unexpected"]
    assert tailgater["way"] == "passed" and tailgater["outcome"] == "none"
    assert "passed_unpaid" in tailgater["unexpected"]
    assert summary.paid_not_passed == 1 and summary.passed_unpaid == 1
    assert summary.safety_violations == 0 and summary.double_charges == 0
    assert exit_status(summary) == EXIT_UNEXPECTED


def run_cli(*args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "laned.cli", "sim", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_a_state_dir_is_reused_only_with_resume_and_then_remembers_who_paid(tmp_path):
    state = tmp_path / "state"
    scenario = tmp_path / "one.json"
    scenario.write_text(json.dumps([car(1, arrive_after=0.5)]), encoding="utf-8")
    first = run_cli("--scenario", str(scenario), "--state-dir", str(state), "--json")
    assert first.returncode == EXIT_OK, first.stderr
    assert json.loads(first.stdout)["charged"] == 1

    again = run_cli("--scenario", str(scenario), "--state-dir", str(state), "--json", timeout=30)
    assert again.returncode == 2 and "holds a previous run's journal" in again.stderr and again.stdout == ""

    # --resume (sim_cmd.main(resume=True)): the daemon goes on with the journal, so the same
    # OBU back within the re-detection window is let on by its record, never charged again;
    # the verdict reads only this run's journal rows.
    back = tmp_path / "back.json"
    back.write_text(json.dumps([car(1, arrive_after=0.5, expect="paid_on_record")]), encoding="utf-8")
    code = ("import sys; from laned.cli.sim_cmd import main; sys.exit(main(vehicles=1, seed=1, scenario=sys.argv[1], "
            "as_json=True, state_dir=sys.argv[2], keep_state=False, live=False, show_plates=False, resume=True))")
    resumed = subprocess.run([sys.executable, "-c", code, str(back), str(state)], capture_output=True, text=True,
                             timeout=90)
    summary = json.loads(resumed.stdout)
    assert summary["outcomes"][0]["outcome"] == "paid_on_record", summary
    assert summary["charged"] == 0 and summary["double_charges"] == 0
    assert resumed.returncode == EXIT_OK, resumed.stderr


async def test_lane_sim_refuses_a_previous_run_and_duplicate_obus(tmp_path):
    (tmp_path / "journal.db").write_bytes(b"")
    with pytest.raises(SimError, match="previous run"):
        await LaneSim([SimVehicle(**car(1))], tmp_path).run()
    with pytest.raises(SimError, match="already the OBU of vehicle 1"):
        LaneSim([SimVehicle(**car(1)), SimVehicle(**car(1))], Path(tmp_path))
