"""The daemon holds the uplink's journal work back while a vehicle is in the lane.

A background journal operation (the uplink's outbox scans and ack marks) that starts while
a vehicle pays is running when its intent arrives, and the C6 waits for it. ``run_lane``
tells the journal writer when a vehicle is under way; the writer starts none meanwhile
(``laned.journal.writer_queue``, at most 0.2 s at a time). Here the writer's clock stands
still, so the hold lasts exactly as long as the vehicle: what the test sees depends on the
lane's state, not on this machine's speed.
"""

from __future__ import annotations

import pytest

from laned.journal import JournalWriter
from laned.lane.transaction import Stage
from laned.sim.rsu_scenario import ObuScenario

from lane_fixtures import lane_bench

pytestmark = pytest.mark.hil

OBU = "a1b2c3d4"


class StillClock:
    def __call__(self) -> float:
        return 1000.0


async def test_no_background_journal_operation_runs_while_a_vehicle_waits_for_its_b5(tmp_path):
    # The B5 is lost: the vehicle stays in the lane for b5_timeout (0.5 s) after its C6;
    # then the lane journals the outcome as unknown (for reconciliation) and lets it go.
    async with lane_bench(tmp_path, [ObuScenario(OBU, lost_b5=True)],
                          journal_options={"clock": StillClock()}) as bench:
        executor = bench.running
        assert executor is not None
        writer = executor.journal
        assert isinstance(writer, JournalWriter)  # no uplink configured: the executor writes to it directly
        await bench.until(lambda: executor.machine.tx is not None and executor.machine.tx.stage is Stage.CHARGING,
                          what="the vehicle's C6 sent, its B5 awaited")
        seen: list[bool] = []

        def scan(mj):
            seen.append(executor.machine.tx is not None)  # read on the writer thread, as the hold does
            return mj.journal.outbox_after(0, 64)

        scanned = writer.submit(scan, background=True)
        await bench.until(lambda: executor.machine.tx is None, what="the vehicle's transaction to end")
        await bench.until(scanned.done, what="the held scan to run once the vehicle has gone")
        unknown = await bench.journal_row(lambda r: r["state"] == "unknown", what="the unknown outcome")
    assert seen == [False], "the scan ran while the vehicle was still in the lane"
    assert [r.seq for r in scanned.result()] == [unknown["seq"]]
