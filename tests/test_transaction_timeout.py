"""``lane.transaction_timeout_s``: an exchange that stalls before the charge is given up, so
the next OBU is served; a charge under way is left to the B5 timeout."""

from __future__ import annotations

import pytest

from laned.config import load_config
from laned.lane.machine import LaneSettings, Stage
from laned.lane.outcomes import Reason
from tests.lane_harness import Lane
from tests.test_config import EXAMPLE

OBU = b"\xa1\xfe\x33\xff"
NEXT = b"\xa1\x00\x00\x02"


@pytest.fixture
def lane() -> Lane:
    ln = Lane(settings=LaneSettings(transaction_timeout=3.0, b5_timeout=1.0))
    ln.advance(4.0)  # inputs sampled clear long enough to release the start-up latch
    return ln


def test_an_obu_whose_b3_never_comes_is_given_up_after_the_timeout_and_the_next_obu_is_served(lane):
    assert lane.sent(lane.b2(obu_id=OBU)) == ["C1"]
    lane.advance(2.9)
    assert lane.machine.tx is not None and lane.machine.counters["transaction_timeout"] == 0  # not yet
    lane.advance(0.2)
    assert lane.machine.tx is None and lane.machine.counters["transaction_timeout"] == 1
    assert lane.sent(lane.b3(obu_id=OBU)) == ["C2"]  # the late B3 belongs to nothing any more
    out = lane.b2(obu_id=NEXT) + lane.b3(obu_id=NEXT) + lane.b4(obu_id=NEXT) + lane.b5(obu_id=NEXT)
    assert lane.sent(out) == ["C1", "C1", "C6", "C1"]
    assert lane.machine.counters[Reason.CHARGED] == 1


def test_a_stall_after_b3_is_given_up_too(lane):
    lane.b2(obu_id=OBU)
    lane.advance(1.0)
    lane.b3(obu_id=OBU)
    assert lane.machine.tx.stage is Stage.VEHICLE
    lane.advance(2.1)  # 3.1 s after B2: the clock runs from B2, not from the last frame
    assert lane.machine.tx is None and lane.machine.counters["transaction_timeout"] == 1


def test_a_charge_under_way_is_left_to_the_b5_timeout(lane):
    lane.auto_journal = False  # the intent is still being written: stage INTENT
    lane.b2(obu_id=OBU)
    lane.advance(2.0)
    lane.b3(obu_id=OBU)
    lane.b4(obu_id=OBU)
    assert lane.machine.tx.stage is Stage.INTENT
    lane.advance(5.0)
    assert lane.machine.tx is not None and lane.machine.counters["transaction_timeout"] == 0


def test_the_config_key_reaches_the_lane():
    settings = load_config(EXAMPLE, overrides={"lane.transaction_timeout_s": 4.5}).lane_settings()
    assert settings.transaction_timeout == 4.5
