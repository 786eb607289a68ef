"""The simulated lane's traffic: reproducible from a seed, scenario files validated."""

from __future__ import annotations

import json

import pytest

from laned.sim.traffic import (EXPECT, MIX_KINDS, Kind, ScenarioError, load_scenario, parse_scenario, status_entries,
                               traffic_mix)


def test_the_same_seed_gives_the_same_traffic_and_another_seed_does_not():
    assert traffic_mix(30, seed=7) == traffic_mix(30, seed=7)
    assert traffic_mix(30, seed=7) != traffic_mix(30, seed=8)


def test_every_kind_of_vehicle_appears_in_a_mix_of_twelve_or_more():
    kinds = {v.kind for v in traffic_mix(12, seed=1)}
    assert kinds == set(MIX_KINDS) == set(Kind) - {Kind.NO_OBU}  # no_obu: scenario files only


def test_balances_match_their_kind():
    for v in traffic_mix(200, seed=3):
        if v.kind is Kind.LOW_BALANCE:
            assert v.balance < 3500
        if v.kind is Kind.EXACT_BALANCE:
            assert v.balance == 3500
        assert v.expected == EXPECT[v.kind]


def test_listed_vehicles_are_on_the_sim_status_list():
    vehicles = traffic_mix(50, seed=5)
    cards, obus = status_entries(vehicles)
    assert {v.card_number for v in vehicles if v.kind is Kind.LISTED_CARD} == cards
    assert all(v.obu_id in obus for v in vehicles if v.kind is Kind.LISTED_OBU)


def test_a_scenario_file_with_a_bad_value_names_the_vehicle_and_key(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps([{"plate": "鲁A1", "obu_id": "01020304", "card_number": "3" * 20},
                                {"plate": "鲁A2", "obu_id": "xyz", "card_number": "3" * 20}]))
    # Vehicles are numbered from 1, as in the summary.
    with pytest.raises(ScenarioError, match=r'vehicle 2 \(obu xyz\): obu_id = "xyz": not 8 hex digits'):
        load_scenario(path)


def test_a_scenario_must_be_a_list_and_must_be_json(tmp_path):
    with pytest.raises(ScenarioError, match="non-empty JSON list"):
        parse_scenario({"plate": "x"})
    path = tmp_path / "bad.json"
    path.write_text("[{")
    with pytest.raises(ScenarioError, match="line 1"):
        load_scenario(path)


def test_unknown_keys_are_refused_rather_than_ignored():
    with pytest.raises(ScenarioError, match="colour"):
        parse_scenario([{"plate": "鲁A1", "obu_id": "01020304", "card_number": "3" * 20, "colour": 1}])


@pytest.mark.parametrize("seed", range(20))
def test_every_tailgater_follows_a_vehicle_that_pays(seed):
    from laned.sim.traffic import LEADERS
    for n in (1, 5, 12, 50):
        vehicles = traffic_mix(n, seed)
        assert len(vehicles) == n
        for i, v in enumerate(vehicles):
            if v.kind is Kind.FOLLOW_CAR:
                assert i > 0 and vehicles[i - 1].kind in LEADERS
                assert v.arrive_after == 0.0
        if n >= len(MIX_KINDS):
            assert {v.kind for v in vehicles} == set(MIX_KINDS)
