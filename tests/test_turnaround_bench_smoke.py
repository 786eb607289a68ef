"""The turnaround benchmark runs end to end and prints every metric docs/benchmarks.md records.

It starts the real daemon and the floor responder as child processes on emulated RSU
ptys, so it is run as the command a reader would type; no timing is asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "turnaround_bench.py"
METRICS = {"c1_p50_ms", "c1_p99_ms", "c6_p50_ms", "c6_p99_ms", "floor_p50_ms", "floor_p99_ms", "cpu_ms_per_tx",
           "transactions"}


def test_turnaround_bench_prints_every_metric_for_the_transactions_asked_for():
    done = subprocess.run([sys.executable, str(BENCH), "--transactions", "20", "--block", "10", "--warmup", "2"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert all(set(r) == {"bench", "metric", "value", "unit"} and r["bench"] == "turnaround" for r in rows)
    values = {r["metric"]: r["value"] for r in rows}
    assert set(values) == METRICS
    assert values["transactions"] == 20
    assert all(isinstance(v, (int, float)) and v > 0 for v in values.values()), values
    for name in ("c1", "c6", "floor"):
        assert values[f"{name}_p99_ms"] >= values[f"{name}_p50_ms"], values
    assert {r["metric"]: r["unit"] for r in rows}["c6_p99_ms"] == "ms"
