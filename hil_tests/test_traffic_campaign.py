"""A short seeded part of the traffic campaign (``python -m laned.sim.campaign``), in CI.

The full campaign (docs/reliability.md, "Traffic campaign") runs 1,000 vehicles; this runs
one seed of its traffic — queues closing up, crawlers and fast cars, tailgaters with and
without OBUs, cards moved into other vehicles, early RSU reads — through the real daemon
and holds it to the same five counts.
"""

from __future__ import annotations

import pytest

from laned.sim.campaign import COUNTS, CampaignReport, campaign_traffic, run_one
from laned.sim.traffic import Kind

pytestmark = [pytest.mark.hil, pytest.mark.timeout(600)]

SEED, VEHICLES = 3, 16


def test_the_campaign_traffic_has_what_real_traffic_does():
    vehicles = [v for seed in range(1, 6) for v in campaign_traffic(25, seed)]
    assert min(v.speed for v in vehicles) < 1.0 and max(v.speed for v in vehicles) > 10.0
    assert min(v.gap_m or 3.0 for v in vehicles) < 1.0
    assert any(v.is_tailgater and v.has_obu for v in vehicles)
    assert any(v.kind is Kind.FOLLOW_CAR for v in vehicles) and any(v.kind is Kind.NO_OBU for v in vehicles)
    assert any(v.expect == "plate_mismatch" and v.card_plate for v in vehicles)  # a card in another vehicle
    # The same seed, the same traffic.
    assert campaign_traffic(25, 4) == campaign_traffic(25, 4)


async def test_a_seed_of_the_campaign_keeps_all_five_counts_at_zero(tmp_path):
    summary = await run_one(SEED, VEHICLES, tmp_path / "run")
    report = CampaignReport()
    report.add(SEED, summary.as_json())
    assert report.vehicles == VEHICLES and report.ok, (report.counts, report.failures)
    assert set(report.counts) == set(COUNTS)
