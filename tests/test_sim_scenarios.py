"""`laned sim` scenarios: every value validated before anything starts, the schema's
additions (card apart from the OBU, entry network, relative dates, expectations), the
state folder and the end-of-run deadline. Fast: nothing here starts the daemon."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from laned.cli import app
from laned.protocol.records import CardIssueFile, StationRecord
from laned.sim.lane_sim import EXIT_X, SPAWN_X, LaneSim, VehicleRun, spawn_x, traffic_deadline_s
from laned.sim.rsu_scenario import ObuScenario, file_0019
from laned.sim.traffic import Kind, RsuSettings, SimVehicle, build_scenario, parse_scenario, traffic_mix

SHANGHAI = dt.timezone(dt.timedelta(hours=8))


def car(n: int, **kw: Any) -> dict[str, Any]:
    return {"plate": f"鲁A{n:05d}", "obu_id": f"a100{n:04d}", "card_number": f"3701{n:016d}", **kw}


def sim(tmp_path: Path, content: Any, *args: str):
    path = tmp_path / "scenario.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content, ensure_ascii=False), encoding="utf-8")
    return CliRunner().invoke(app, ["sim", "--scenario", str(path), "--json", *args])


# One bad value each (in vehicle 3, behind two good ones) → the line that names it.
BAD = [
    ({"vehicle_class": 300}, 'vehicle_class = 300: not a vehicle class (1–4, 11–16, 21–26)'),
    ({"card_class": 5}, "card_class = 5: not a vehicle class"),
    ({"obu_flags": ["obu_removed", "windscreen"]}, 'obu_flags = ["obu_removed", "windscreen"]: Input should be'),
    ({"kind": "tailgater"}, 'kind = "tailgater": Input should be'),
    ({"plate": "鲁A123456789012"}, 'plate = "鲁A123456789012": 15 bytes in GBK, the plate field holds 12'),
    ({"card_plate": "京" * 7}, "card_plate = \"京京京京京京京\": 14 bytes in GBK"),
    ({"card_number": "3701123"}, 'card_number = "3701123": not 20 digits'),
    ({"card_number": "3701000000000000000x"}, "card_number"),
    ({"obu_id": "a10000zz"}, 'obu_id = "a10000zz": not 8 hex digits'),
    ({"expect": "chargd"}, 'expect = "chargd": not an outcome'),
    ({"expect_reason": "insufficient"}, 'expect_reason = "insufficient": not a reason code'),
    ({"expect_way": "left"}, 'expect_way = "left": Input should be'),
    ({"expect_way": "diverted"}, "paid_not_passed"),  # a charged vehicle that is diverted is never right
    ({"expect": "refused", "expect_way": "passed"}, "passed_unpaid"),
    ({"expect_fee": -1}, "expect_fee = -1"),
    ({"expcet": "charged"}, 'unknown key "expcet" (did you mean "expect"?)'),
    ({"balanse": 5}, 'unknown key "balanse" (did you mean "balance"?)'),
    ({"entry_network": "32A1"}, 'entry_network = "32A1": not 4 digits'),
    ({"entry_station": "01020"}, "entry_station"),
    ({"entry_station": None, "entry_network": "3701"}, 'entry_network = "3701": entry_station is null'),
    ({"contract_expiry": "yesterday"}, 'contract_expiry = "yesterday": '),
    ({"card_expiry": "today-x"}, "today-1"),
    ({"entry_time": "tomorrow"}, 'entry_time = "tomorrow": expected an ISO date-time'),
    ({"speed": 0}, "speed = 0"),
    ({"balance": 2**32}, "balance = 4294967296"),
    ({"rsu_faults": ["lightning"]}, "rsu_faults"),
    ({"rsu_errors": {"B7": 1}}, 'rsu_errors = {"B7": 1}: "B7" is not a frame with an ErrorCode (B2, B3, B4, B5)'),
    ({"rsu_errors": {"b4": 1}}, '"b4" is not a frame with an ErrorCode'),
    ({"rsu_errors": {"B4": 256}}, 'rsu_errors = {"B4": 256}: B4: 256 is not an ErrorCode 1–255'),
    ({"rsu_errors": {"B5": 0}}, "B5: 0 is not an ErrorCode 1–255"),
    ({"rsu_errors": {"B4": "0x1ff"}}, 'B4: "0x1ff" is not an ErrorCode'),
    ({"rsu_errors": {"B3": True}}, "B3: true is not an ErrorCode"),
    ({"rsu_errors": ["B4"]}, 'rsu_errors = ["B4"]: expected an object of frame name to ErrorCode'),
    ({"rsu_erorrs": {"B4": 1}}, 'unknown key "rsu_erorrs" (did you mean "rsu_errors"?)'),
]


@pytest.mark.parametrize("bad, message", BAD, ids=[next(iter(b)) + "-" + str(i) for i, (b, _) in enumerate(BAD)])
def test_a_bad_value_stops_the_run_before_it_starts_with_one_line_and_exit_2(tmp_path, bad, message):
    done = sim(tmp_path, [car(1), car(2), car(3, **bad)])
    assert done.exit_code == 2, done.output
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr
    obu = bad.get("obu_id", "a1000003")
    assert lines[0].startswith(f"laned sim: {tmp_path / 'scenario.json'}: vehicle 3 (obu {obu}): ")
    assert message in lines[0]
    assert done.stdout == ""
    assert not (tmp_path / "journal.db").exists()


def test_the_same_obu_on_two_vehicles_is_refused_the_same_card_is_not(tmp_path):
    done = sim(tmp_path, [car(1), car(2), car(3, obu_id="a1000001")])
    assert done.exit_code == 2
    assert done.stderr.strip().endswith('vehicle 3 (obu a1000001): obu_id = "a1000001": already the OBU of vehicle 1 '
                                        "(one OBU is one vehicle; the same card on two vehicles is allowed)")
    # A card moved to another OBU is a case to test.
    vehicles = parse_scenario([car(1), car(2, card_number=car(1)["card_number"])])
    assert vehicles[0].card_number == vehicles[1].card_number


@pytest.mark.parametrize("content, message", [
    ("{not json", "not JSON"),
    ("[]", "non-empty JSON list"),
    ('{"vehicles": [], "timezone": "UTC"}', "non-empty JSON list"),
    ('{"timzone": "UTC", "vehicles": []}', 'unknown key "timzone" (did you mean "timezone"?)'),
    (json.dumps({"timezone": "Mars/Olympus", "vehicles": [car(1)]}), 'timezone = "Mars/Olympus": not a time zone'),
    ('[1]', "vehicle 1: expected an object"),
    (json.dumps({"rsu": {"zone_m": 50}, "vehicles": [car(1)]}),
     "rsu.zone_m = 50: Input should be less than or equal to 40 (expected 5–40, metres before the arm"),
    (json.dumps({"rsu": {"zone_m": 4.5}, "vehicles": [car(1)]}), "rsu.zone_m = 4.5: "),
    (json.dumps({"rsu": {"zone": 20}, "vehicles": [car(1)]}), 'rsu: unknown key "zone" (did you mean "zone_m"?)'),
    (json.dumps({"rsu": {"reread_for_s": -1}, "vehicles": [car(1)]}), "rsu.reread_for_s = -1: "),
    (json.dumps({"rsu": {"reread_interval_s": 0}, "vehicles": [car(1)]}), "rsu.reread_interval_s = 0: "),
    (json.dumps({"rsu": {"early_reads": "sometimes"}, "vehicles": [car(1)]}),
     'rsu.early_reads = "sometimes": Input should be a valid boolean'),
    (json.dumps({"rsu": 20, "vehicles": [car(1)]}), "rsu = 20: expected an object with zone_m, reread_interval_s"),
    (json.dumps({"rsu": {}, "vehicle": [car(1)]}), 'unknown key "vehicle" (did you mean "vehicles"?)'),
])
def test_a_bad_scenario_file_is_one_line_and_exit_2(tmp_path, content, message):
    done = sim(tmp_path, content)
    assert done.exit_code == 2 and len(done.stderr.splitlines()) == 1
    assert message in done.stderr and "Traceback" not in done.stderr


def test_a_bad_argument_is_exit_2(tmp_path):
    done = CliRunner().invoke(app, ["sim", "-n", "0"])
    assert done.exit_code == 2 and "--vehicles must be at least 1" in done.stderr


# -- the state folder -------------------------------------------------------------------------------
def previous_journal(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(folder / "journal.db")
    db.execute("CREATE TABLE transactions (seq INTEGER)")
    db.execute("INSERT INTO transactions VALUES (7)")
    db.commit()
    db.close()


def test_a_state_dir_holding_a_previous_run_is_refused_without_resume(tmp_path):
    state = tmp_path / "state"
    previous_journal(state)
    done = sim(tmp_path, [car(1)], "--state-dir", str(state))
    assert done.exit_code == 2 and len(done.stderr.splitlines()) == 1
    assert f"--state-dir {state} holds a previous run's journal (journal.db)" in done.stderr
    assert "--resume" in done.stderr
    assert not (state / "laned.log").exists()  # refused before anything started


def test_resume_needs_a_state_dir_and_accepts_a_previous_run(tmp_path):
    from laned.cli.sim_cmd import InputError, check_state_dir

    state = tmp_path / "state"
    previous_journal(state)
    with pytest.raises(InputError, match="--resume needs --state-dir"):
        check_state_dir(None, resume=True)
    check_state_dir(str(state), resume=True)  # explicitly reused: no error
    check_state_dir(str(tmp_path / "empty"), resume=False)  # a new folder is fine either way
    # (hil_tests/test_sim_verdict.py runs a resumed simulation end to end.)


# -- the end-of-run deadline ------------------------------------------------------------------------
def test_the_deadline_allows_for_the_slowest_vehicle():
    fast = parse_scenario([car(1), car(2, arrive_after=1.0)])
    slow = parse_scenario([car(1), car(2, arrive_after=1.0, speed=0.5, length=12.0)])
    drive = (EXIT_X - SPAWN_X + 12.0) / 0.5  # 80 s through the lane at walking pace
    assert traffic_deadline_s(slow) > 5.0 + drive  # traffic, its drive, and more
    # The old fixed allowance (last arrival + 30 s + 3 s per vehicle = 41 s) would have ended
    # the run with the slow vehicle still in the lane.
    assert 5.0 + 30.0 + 3.0 * 2 < drive
    assert traffic_deadline_s(fast) < traffic_deadline_s(slow)
    # A queue moves at the slowest vehicle's pace: a slow vehicle in front slows every one.
    queue = parse_scenario([car(1, speed=1.0)] + [car(n, arrive_after=0.5) for n in range(2, 12)])
    assert traffic_deadline_s(queue) > 10 * (4.5 + 3.0) / 1.0


# -- the schema's additions -------------------------------------------------------------------------
def test_relative_dates_resolve_in_the_lanes_time_zone():
    # 17:00 UTC on 1 March is already 2 March in Shanghai.
    now = dt.datetime(2026, 3, 1, 17, 0, tzinfo=dt.UTC)
    item = car(1, contract_expiry="today-1", card_expiry="today+30", card_start="today", entry_time="now-2h")
    shanghai = build_scenario([item], now=now).vehicles[0]
    assert build_scenario([item], now=now).timezone == "Asia/Shanghai"  # the default
    assert shanghai.contract_expiry == dt.date(2026, 3, 1)
    assert shanghai.card_start == dt.date(2026, 3, 2) and shanghai.card_expiry == dt.date(2026, 4, 1)
    assert shanghai.entry_time == dt.datetime(2026, 3, 1, 15, 0, tzinfo=dt.UTC)
    utc = build_scenario({"timezone": "UTC", "vehicles": [item]}, now=now).vehicles[0]
    assert utc.contract_expiry == dt.date(2026, 2, 28) and utc.card_start == dt.date(2026, 3, 1)
    # --timezone over the file's own.
    assert build_scenario({"timezone": "UTC", "vehicles": [item]}, now=now,
                          timezone="Asia/Shanghai").vehicles[0].card_start == dt.date(2026, 3, 2)
    # An ISO time without an offset is lane time.
    v = build_scenario([car(1, entry_time="2026-03-01T08:30:00")]).vehicles[0]
    assert v.entry_time == dt.datetime(2026, 3, 1, 8, 30, tzinfo=SHANGHAI)


def test_the_rsu_settings_of_a_scenario_and_their_defaults():
    scenario = build_scenario({"rsu": {"zone_m": 30, "reread_interval_s": 1, "reread_for_s": 0, "early_reads": False},
                               "vehicles": [car(1)]})
    assert scenario.rsu == RsuSettings(zone_m=30.0, reread_interval_s=1.0, reread_for_s=0.0, early_reads=False)
    # A list, or an object without "rsu": a real RSU's habits.
    for plain in ([car(1)], {"vehicles": [car(1)]}, {"rsu": {}, "vehicles": [car(1)]}):
        assert build_scenario(plain).rsu == RsuSettings(zone_m=20.0, reread_interval_s=0.5, reread_for_s=60.0,
                                                        early_reads=True)
    # Vehicles appear 5 m before the zone starts, so each enters it moving.
    assert spawn_x(scenario.rsu) == -35.0 and spawn_x(RsuSettings()) == SPAWN_X == -25.0


def test_rsu_errors_become_the_obus_error_codes():
    v = parse_scenario([car(1, rsu_errors={"B4": "0x01", "B5": 23, "B3": "17"})])[0]
    assert v.rsu_errors == {"B4": 1, "B5": 23, "B3": 0x17}  # a string is hex, as the RSU documents write codes
    assert ObuScenario.from_sim_vehicle(v).errors == {"B4": 1, "B5": 23, "B3": 0x17}
    assert ObuScenario.from_sim_vehicle(parse_scenario([car(2)])[0]).errors == {}
    # An OBU without a card answers the card read with 08, unless the scenario says otherwise.
    no_card = parse_scenario([car(3, kind="no_card", obu_flags=["card_absent"])])[0]
    assert ObuScenario.from_sim_vehicle(no_card).errors == {"B4": 0x08}
    told = parse_scenario([car(4, obu_flags=["card_absent"], rsu_errors={"B4": "0x02"})])[0]
    assert ObuScenario.from_sim_vehicle(told).errors == {"B4": 0x02}


def test_card_plate_class_and_validity_apart_from_the_obus():
    v = parse_scenario([car(1, plate="鲁A11111", vehicle_class=1, card_plate="鲁B22222", card_class=12,
                            contract_start="2024-01-01", contract_expiry="2034-01-01",
                            card_start="2025-05-01", card_expiry="2026-02-01")])[0]
    obu = ObuScenario.from_sim_vehicle(v)
    card = CardIssueFile.decode(obu.file_0015())
    assert card.plate == "鲁B22222" and card.vehicle_class == 12
    assert (card.start_date, card.expiry_date) == (dt.date(2025, 5, 1), dt.date(2026, 2, 1))
    assert obu.contract_issue == dt.date(2024, 1, 1) and obu.contract_expiry == dt.date(2034, 1, 1)
    assert obu.plate == "鲁A11111" and obu.vehicle_class == 1  # B3 as the OBU says
    # By default the card carries the OBU's plate, class and dates.
    same = CardIssueFile.decode(ObuScenario.from_sim_vehicle(parse_scenario([car(2, vehicle_class=3)])[0]).file_0015())
    assert (same.plate, same.vehicle_class, same.expiry_date) == ("鲁A00002", 3, dt.date(2033, 1, 1))


def test_the_entry_network_is_the_cards_unless_set():
    jiangsu = car(1, card_number="32010000000000000001")
    default = ObuScenario.from_sim_vehicle(parse_scenario([jiangsu])[0])
    assert default.entry is not None
    assert StationRecord.decode(file_0019(default.entry.record())).station_key == "3201-0102"
    at_0102 = parse_scenario([{**jiangsu, "entry_network": "3701", "entry_time": "2026-03-01T08:00:00"}])[0]
    obu = ObuScenario.from_sim_vehicle(at_0102)
    assert obu.entry is not None
    rec = StationRecord.decode(file_0019(obu.entry.record()))
    assert rec.station_key == "3701-0102"
    assert rec.entry_time == int(dt.datetime(2026, 3, 1, 8, 0, tzinfo=SHANGHAI).timestamp())
    assert ObuScenario.from_sim_vehicle(parse_scenario([car(2, entry_station=None)])[0]).entry is None


@pytest.mark.parametrize("keys, outcome, reason, way", [
    ({}, "charged", "charged", "passed"),
    ({"kind": "low_balance"}, "refused", "insufficient_balance", "diverted"),
    ({"expect": "insufficient_balance"}, "refused", "insufficient_balance", "diverted"),  # a reason code: as before
    ({"expect": "refused"}, "refused", None, "diverted"),  # any refusal
    ({"expect": "refused", "expect_reason": "plate_mismatch"}, "refused", "plate_mismatch", "diverted"),
    ({"expect_reason": "class_mismatch"}, "refused", "class_mismatch", "diverted"),
    ({"expect": "none"}, "none", None, "diverted"),
    ({"kind": "no_obu"}, "none", None, "diverted"),
    ({"kind": "follow_car"}, "follow_car", "follow_car", None),
    ({"kind": "lost_b5"}, "unknown", "outcome_unknown", "diverted"),
])
def test_expectations(keys, outcome, reason, way):
    v = parse_scenario([car(1, **keys)])[0]
    assert (v.expected_outcome, v.expected_reason, v.expected_way) == (outcome, reason, way)


def run_of(outcome: str, end: str, *, reason: str | None = None, fee: int | None = None, final: bool = True,
           **keys: Any) -> VehicleRun:
    r = VehicleRun(0, SimVehicle.model_validate(car(1, **keys)), 0.0)
    r.outcome, r.reason, r.fee, r.end, r.final = outcome, reason or outcome, fee, end, final
    r.follow_recorded = outcome == "follow_car"  # the lane's record was matched to it
    return r


def test_the_verdict_of_one_vehicle():
    assert run_of("charged", "passed", fee=3500).as_expected
    # Charged, but diverted: another vehicle drove out on its payment.
    diverted = run_of("charged", "diverted", fee=3500)
    assert diverted.paid_not_passed and not diverted.as_expected and diverted.problems() == ["paid_not_passed"]
    # Charged and still before the arm when the run ended (not interrupted): not passed either.
    assert run_of("charged", "", final=True).paid_not_passed
    assert not run_of("charged", "", final=False).paid_not_passed  # interrupted: it may yet pass
    # Passed without a transaction of its own.
    unpaid = run_of("none", "passed", reason="none", kind="no_obu")
    assert unpaid.passed_unpaid and "passed_unpaid" in unpaid.problems()
    assert run_of("follow_car", "passed", kind="follow_car").as_expected  # recorded as a follow-car
    refused_through = run_of("refused", "passed", reason="insufficient_balance", kind="low_balance")
    assert refused_through.passed_unpaid and not refused_through.as_expected
    # Fees.
    assert run_of("charged", "passed", fee=3500, expect_fee=3500).as_expected
    assert run_of("charged", "passed", fee=5600, expect_fee=3500).problems() == ["fee 5600, expected 3500"]
    # No transaction at all, as expected.
    assert run_of("none", "diverted", reason="none", expect="none").as_expected
    assert run_of("refused", "diverted", reason="no_card", expect="none").problems() == \
        ["outcome refused, expected none"]


def test_the_seeded_mix_is_valid_and_has_distinct_obus():
    for seed in range(5):
        vehicles = traffic_mix(60, seed)
        assert len({v.obu_id for v in vehicles}) == 60
        assert all(v.kind is not Kind.NO_OBU for v in vehicles)
        assert [SimVehicle.model_validate(v.model_dump()) for v in vehicles] == vehicles


def test_the_scenarios_in_docs_sim_md_are_valid():
    text = (Path(__file__).parents[1] / "docs" / "sim.md").read_text(encoding="utf-8")
    blocks = [json.loads(b.split("```")[0]) for b in text.split("```json\n")[1:] if not b.startswith("{\"vehicles\": 12")]
    scenarios = [b for b in blocks if isinstance(b, list) or "vehicles" in b]
    assert len(scenarios) == 4
    for block in scenarios:
        assert build_scenario(block, source="docs/sim.md").vehicles


def _lane_with(tmp_path: Path, passages: list[tuple[str, str, float]]) -> LaneSim:
    """A simulated lane after the fact: (kind, outcome, when at the arm) per vehicle, all passed."""
    sim = LaneSim([SimVehicle.model_validate(car(i + 1, kind=kind)) for i, (kind, _, _) in enumerate(passages)],
                  tmp_path)
    for r, (_, outcome, at) in zip(sim.runs, passages, strict=True):
        r.outcome, r.end, r.at_arm_at, r.final = outcome, "passed", at, True
    return sim


def test_a_follow_car_found_out_later_is_matched_to_the_tailgater_that_used_the_payment(tmp_path):
    sim = _lane_with(tmp_path, [("normal", "charged", 10.0), ("follow_car", "none", 12.0),
                                ("normal", "charged", 40.0)])
    sim.follow_records.append(35.0)  # when the car behind was reported again at the closed arm
    sim._attribute_follow_cars()
    tailgater = sim.runs[1]
    assert tailgater.follow_recorded and tailgater.outcome == "follow_car" and not tailgater.passed_unpaid
    assert not any(r.passed_unpaid for r in sim.runs)


def test_one_follow_car_record_covers_one_vehicle_and_a_paid_car_never_takes_it(tmp_path):
    sim = _lane_with(tmp_path, [("normal", "charged", 10.0), ("follow_car", "none", 11.0),
                                ("no_obu", "none", 12.0)])
    sim.follow_records.append(11.5)
    sim._attribute_follow_cars()
    assert [r.follow_recorded for r in sim.runs] == [False, True, False]
    assert sim.runs[2].passed_unpaid and sim.runs[2].unrecorded_follow_car
    sim.follow_records[:] = [200.0]  # long after: not theirs
    sim._attribute_follow_cars()
    assert sim.runs[1].passed_unpaid and sim.runs[2].passed_unpaid
