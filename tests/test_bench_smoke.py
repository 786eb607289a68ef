"""The protocol benchmark runs and prints every metric docs/benchmarks.md records (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "protocol_bench.py"


def test_protocol_bench_prints_the_required_metrics_as_json_lines():
    proc = subprocess.run([sys.executable, str(BENCH), "--seconds", "0.02", "--repeats", "1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert all(r["bench"] == "protocol" and r["value"] > 0 for r in rows)
    metrics = {r["metric"] for r in rows}
    assert {"decode_fps.B2", "decode_fps.B5", "decode_fps_handwritten.B2", "decode_fps_handwritten.B5",
            "encode_fps.C6"} <= metrics
