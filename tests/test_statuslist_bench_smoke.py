"""The status-list benchmark runs small and prints every metric (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "statuslist_bench.py"
METRICS = {"entries", "load_s", "ram_bytes_per_entry", "lookup_p50_us", "lookup_p99_us", "delta_100k_s",
           "max_loop_block_ms", "sqlite_lookup_p99_us", "sqlite_bytes_per_entry"}


def test_statuslist_bench_prints_every_metric():
    proc = subprocess.run([sys.executable, str(BENCH), "--entries", "20000", "--sqlite-entries", "20000",
                           "--lookups", "2000"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert METRICS <= {r["metric"] for r in rows}
    assert all(r["bench"] == "statuslist" for r in rows)
