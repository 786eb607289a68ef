"""`laned sim` judges relative dates in the lane's time zone without touching the process's.

The host is on Pacific/Pago_Pago (UTC−11), the lane on Pacific/Kiritimati (UTC+14): 25 hours
apart, so at any moment the lane's day is the host's next day (or the one after). The
simulator passes its time zone to the daemon as ``lane.timezone``; a daemon that judged
dates by the host's clock would charge the OBU that expired "yesterday" (the host's today)
and refuse the one valid from "today" (the host's tomorrow).
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterator
from typing import Any

import pytest

from laned.sim.lane_sim import JOURNAL_NAME, LaneSim
from laned.sim.traffic import parse_scenario

pytestmark = [pytest.mark.hil, pytest.mark.timeout(120)]

HOST_TZ, LANE_TZ = "Pacific/Pago_Pago", "Pacific/Kiritimati"


@pytest.fixture
def host_far_behind() -> Iterator[None]:
    old = os.environ.get("TZ")
    os.environ["TZ"] = HOST_TZ
    time.tzset()
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old
        time.tzset()


def car(n: int, **kw: Any) -> dict[str, Any]:
    return {"plate": f"鲁A{n:05d}", "obu_id": f"{0x31000000 + n:08x}", "card_number": f"3701{n:016d}",
            "arrive_after": 1.5, **kw}


async def test_the_daemon_judges_the_scenarios_days_in_the_lanes_time_zone_not_the_hosts(tmp_path, host_far_behind):
    vehicles = parse_scenario([
        car(1, contract_start="today", expect="charged"),  # the host's tomorrow
        car(2, contract_expiry="today-1", expect_reason="obu_expired"),  # the host's today
        car(3, card_start="today", card_expiry="today", expect="charged"),
    ], timezone=LANE_TZ)
    summary = await LaneSim(vehicles, tmp_path, timezone=LANE_TZ).run()
    wrong = {o["vehicle"]: o["unexpected"] for o in summary.outcomes if not o["as_expected"]}
    assert wrong == {}, summary.outcomes
    assert summary.safety_violations == 0 and summary.double_charges == 0
    assert os.environ["TZ"] == HOST_TZ  # left alone
    db = sqlite3.connect(tmp_path / JOURNAL_NAME)
    try:
        stamps = [iso for (iso,) in db.execute("SELECT created_iso FROM transactions")]
    finally:
        db.close()
    assert stamps and all(iso.endswith("+14:00") for iso in stamps), stamps  # lane time, with its offset
