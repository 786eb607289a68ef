"""The barrier reaction benchmark's measurement runs end to end (no timing asserted).

Three reversals through the real daemon (``run_lane``) against the emulated IO module on
Modbus TCP: each must be a raise the module really received after the loop was occupied.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "reaction_bench.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("reaction_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_the_barrier_reaction_bench_times_real_reversals_at_the_io_module():
    result = await load_bench().measure(runs=3)
    assert (result["bench"], result["runs"], result["transport"]) == ("barrier_reaction", 3, "tcp")
    # Positive, ordered figures: each is a raise written after the loop was occupied.
    assert 0 < result["min_ms"] <= result["p50_ms"] <= result["p90_ms"] <= result["p99_ms"] <= result["max_ms"]
    assert 0 < result["decide_p50_ms"] and 0 < result["write_p50_ms"]
    assert (result["poll_ms"], result["safety_loop_hz"], result["reaction_limit_ms"]) == (50.0, 20.0, 400)
    assert 0 <= result["over_limit"] <= 3
