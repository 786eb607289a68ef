"""The status-list benchmark runs small and prints every metric (no timing asserted)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "statuslist_bench.py"
METRICS = {"entries", "load_s", "ram_bytes_per_entry", "lookup_p50_us", "lookup_p99_us", "delta_100k_s",
           "max_loop_block_ms", "sqlite_lookup_p99_us", "sqlite_bytes_per_entry", "sqlite_entries"}


def test_statuslist_bench_prints_every_metric(capsys):
    spec = importlib.util.spec_from_file_location("statuslist_bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--entries", "20000", "--lookups", "2000"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert all(r["bench"] == "statuslist" and isinstance(r["value"], (int, float)) for r in rows)
    assert METRICS <= {r["metric"] for r in rows}
    assert {r["metric"]: r["value"] for r in rows}["entries"] == 20000
