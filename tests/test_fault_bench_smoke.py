"""The fault benchmark runs one fault end to end and prints its JSON line (no timing asserted).

It runs the real daemon against the emulated RSU (TCP), display and IO module, so it is
run as the command a reader would type; the alarm debounces are scaled down to keep it short.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "fault_bench.py"


def test_fault_bench_prints_one_line_per_fault_with_its_times_and_the_rules_held():
    done = subprocess.run([sys.executable, str(BENCH), "--runs", "1", "--only", "rsu_tcp_reset",
                           "--debounce-scale", "0.1"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    [row] = [json.loads(line) for line in done.stdout.splitlines()]
    assert (row["bench"], row["fault"], row["runs"], row["rules_held"]) == ("faults", "rsu_tcp_reset", 1, 1)
    for metric in ("degrade", "recover", "served"):
        assert row[f"{metric}_max_ms"] >= row[f"{metric}_p50_ms"] > 0, row
    assert row["alarms"]["etc_closed"]["raised_runs"] == 1 and row["alarms"]["etc_closed"]["cleared_runs"] == 1
