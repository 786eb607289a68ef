"""`laned sim`'s RSU reads vehicles as a real one does: each OBU as it enters the zone,
the next one while the vehicle before is still at the arm, and again and again while it
waits in the zone — against the real daemon, end to end, in real time (kept short)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from laned.sim.lane_sim import LaneSim
from laned.sim.traffic import RsuSettings, build_scenario, parse_scenario

pytestmark = [pytest.mark.hil, pytest.mark.timeout(120)]

DOCS = Path(__file__).parents[1] / "docs" / "sim.md"


def car(n: int, **kw: Any) -> dict[str, Any]:
    return {"plate": f"鲁A{n:05d}", "obu_id": f"{0x40000000 + n:08x}", "card_number": f"3701{n:016d}", **kw}


def docs_example(key: str) -> Any:
    """The JSON example of docs/sim.md that uses ``key``."""
    blocks = [b.split("```")[0] for b in DOCS.read_text(encoding="utf-8").split("```json\n")[1:]]
    [block] = [b for b in blocks if f'"{key}"' in b]
    return json.loads(block)


def at(sim: LaneSim, vehicle: int, what: str) -> float:
    """When the trace first says ``what`` of ``vehicle`` (seconds into the traffic)."""
    return next(t for t, n, text in sim.events if n == vehicle and text.startswith(what))


def journal(tmp_path: Path, obu_id: str, state: str, reason: str) -> list[float]:
    """When (unix time) the journal's rows of this OBU, state and reason were last written."""
    db = sqlite3.connect(tmp_path / "journal.db")
    try:
        return [r[0] for r in db.execute("SELECT updated_unix FROM transactions WHERE obu_id = ? AND state = ? "
                                         "AND reason = ? ORDER BY seq", (obu_id, state, reason))]
    finally:
        db.close()


async def test_the_docs_rsu_errors_example_gets_what_it_expects(tmp_path):
    scenario = build_scenario(docs_example("rsu_errors"), source="docs/sim.md")
    summary = await LaneSim(scenario.vehicles, tmp_path, rsu=scenario.rsu).run()
    wrong = {o["vehicle"]: o["unexpected"] for o in summary.outcomes if not o["as_expected"]}
    assert wrong == {}, summary.outcomes
    card_error = summary.outcomes[0]  # B4 "0x01"
    assert (card_error["outcome"], card_error["reason"], card_error["way"]) == ("refused", "card_read_failed",
                                                                               "diverted")
    assert [o["reason"] for o in summary.outcomes] == ["card_read_failed", "vehicle_read_failed", "charge_failed",
                                                       "outcome_unknown", None]
    assert summary.charged == 0 and summary.double_charges == 0 and summary.safety_violations == 0


async def test_with_early_reads_the_car_behind_pays_while_the_first_is_still_before_the_arm(tmp_path):
    vehicles = parse_scenario([car(1, arrive_after=0.5), car(2, arrive_after=0.5)])
    sim = LaneSim(vehicles, tmp_path)
    summary = await sim.run()
    assert at(sim, 2, "in the RSU zone") < at(sim, 2, "lane: charged") < at(sim, 1, "passes the arm")
    assert [(o["outcome"], o["way"]) for o in summary.outcomes] == [("charged", "passed")] * 2
    assert summary.unexpected == 0 and summary.double_charges == 0 and summary.safety_violations == 0
    # One transaction at a time, in the order the OBUs entered the zone.
    detected = [e.detail["obu_id"] for e in sim.emulator.events if e.kind == "obu_detected"]
    assert detected.index(vehicles[0].obu_id) < detected.index(vehicles[1].obu_id)


async def test_a_paid_car_whose_payment_a_tailgater_used_is_reported_again_and_let_out(tmp_path):
    # Car 3 is read and pays while the tailgater is still before the arm; the tailgater
    # drives out on that payment. Car 3, still in the zone, is reported again within
    # reread_for_s: the lane knows its payment was used by another vehicle, records that
    # one as a follow-car and opens for car 3 on its record, without a second charge.
    rsu = RsuSettings(reread_for_s=8.0)
    vehicles = parse_scenario([car(1, arrive_after=0.5), car(2, kind="follow_car", arrive_after=0.0),
                               car(3, arrive_after=3.6, speed=3.0)])  # read early, at the arm well after
    sim = LaneSim(vehicles, tmp_path, rsu=rsu)
    summary = await sim.run()
    payer = vehicles[2].obu_id
    assert at(sim, 3, "lane: charged") < at(sim, 2, "passes the arm")
    [paid] = journal(tmp_path, payer, "charged", "charged")
    again = journal(tmp_path, payer, "event", "paid_on_record")
    # The first re-report (before the tailgater reached the arm) and the one that let it out.
    assert len(again) == 2 and paid < again[0] < again[1] < paid + rsu.reread_for_s
    assert summary.outcomes[1]["outcome"] == "follow_car" and summary.unrecorded_follow_cars == 0
    assert summary.follow_car_records == 1
    outcome = summary.outcomes[2]
    assert (outcome["outcome"], outcome["way"]) == ("charged", "passed")
    assert summary.paid_not_passed == 0 and summary.double_charges == 0 and summary.safety_violations == 0
