"""The turnaround benchmark runs end to end and prints every metric docs/benchmarks.md records.

It starts the real daemon and the floor responder as child processes on emulated RSU
ptys, so it is run as the command a reader would type; no timing is asserted (except that
a slow-commit run's C6 waits for its commit, which the bench itself checks).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "turnaround_bench.py"
METRICS = {"c1_p50_ms", "c1_p99_ms", "c6_p50_ms", "c6_p99_ms", "floor_p50_ms", "floor_p99_ms", "cpu_ms_per_tx",
           "transactions"}
ROW_KEYS = {"bench", "metric", "value", "unit", "journal_commit_ms"}


def run_bench(*args: str) -> list[dict]:
    done = subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert all(r["bench"] == "turnaround" for r in rows), rows
    return rows


def check_run(rows: list[dict], transactions: int) -> dict[str, float]:
    assert all(set(r) == ROW_KEYS for r in rows), rows
    values = {r["metric"]: r["value"] for r in rows}
    assert len(values) == len(rows), "a metric printed twice in one run"
    assert set(values) == METRICS
    assert values["transactions"] == transactions
    assert all(isinstance(v, (int, float)) and v > 0 for v in values.values()), values
    for name in ("c1", "c6", "floor"):
        assert values[f"{name}_p99_ms"] >= values[f"{name}_p50_ms"], values
    assert {r["metric"]: r["unit"] for r in rows}["c6_p99_ms"] == "ms"
    return values


def test_turnaround_bench_runs_the_normal_and_a_slow_commit_journal_by_default_and_compares_them():
    rows = run_bench("--transactions", "20", "--block", "10", "--warmup", "2")
    normal = check_run([r for r in rows if r["journal_commit_ms"] == 0 and r["metric"] in METRICS], 20)
    slow = check_run([r for r in rows if r["journal_commit_ms"] == 200 and r["metric"] in METRICS], 20)
    comparison = [r for r in rows if r["metric"] not in METRICS]
    assert len(rows) == 2 * len(METRICS) + 1
    # Normal run first, then the slow one, then the line that puts their C1 p99 side by side.
    assert [r["journal_commit_ms"] for r in rows] == [0] * len(METRICS) + [200] * (len(METRICS) + 1)
    assert comparison == [{"bench": "turnaround", "metric": "c1_p99_ms_slow_journal", "value": slow["c1_p99_ms"],
                           "unit": "ms", "journal_commit_ms": 200, "c1_p99_ms": normal["c1_p99_ms"]}]


def test_turnaround_bench_runs_only_the_journals_asked_for():
    rows = run_bench("--transactions", "4", "--block", "2", "--warmup", "1", "--journal-commit-ms", "50")
    assert {r["journal_commit_ms"] for r in rows} == {50}
    check_run(rows, 4)  # no normal run, so no comparison line
