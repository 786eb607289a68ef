"""The uplink drain benchmark runs end to end and prints every metric docs/benchmarks.md records.

It starts a real Mosquitto, the reference centre and the daemon as child processes, so it
is run as the command a reader would type, with a small backlog; no figure is asserted
except that the backlog ends at 0 (every row acknowledged by the centre).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "uplink_bench.py"
METRICS = {"drain_tx_per_s": "tx/s", "mosquitto_pub_msgs_per_s": "msgs/s", "drain_ratio": "ratio", "backlog": "rows",
           "max_loop_block_ms": "ms", "max_loop_busy_ms": "ms", "loop_blocks_over_10ms": "ticks", "max_gc_ms": "ms", "c6_p50_ms": "ms", "c6_p99_ms": "ms", "c6_samples": "transactions",
           "c6_idle_p50_ms": "ms", "c6_idle_p99_ms": "ms", "c6_lane_p50_ms": "ms", "c6_lane_p99_ms": "ms",
           "c6_lane_idle_p99_ms": "ms",
           "drain_s": "s", "lane_cpu_s": "s", "centre_cpu_s": "s", "broker_cpu_s": "s", "transactions": "transactions",
           "vehicle_gap_ms": "ms", "lane_cpus": "cpus"}
# With UPLINK_BENCH_C6: laned's own B4-to-C6 path, stage by stage, p50 and p99 of each.
STAGES = ("total", "machine", "queue", "insert_commit", "insert_commit_runq", "insert_commit_cpu",
          "insert_commit_asleep", "back")


def test_the_uplink_bench_drains_a_small_backlog_to_zero_and_prints_every_metric_once(tmp_path: Path) -> None:
    env = {**os.environ, "UPLINK_BENCH_C6": str(tmp_path / "c6.json"), "UPLINK_BENCH_STALLS": str(tmp_path / "stalls.txt")}
    done = subprocess.run([sys.executable, str(BENCH), "--transactions", "300"], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert all(set(r) == {"bench", "metric", "value", "unit"} and r["bench"] == "uplink" for r in rows), rows
    stages = {f"c6_stage_{stage}_{p}_ms" for stage in STAGES for p in ("p50", "p99")}
    units = {r["metric"]: r["unit"] for r in rows if r["metric"] not in stages}
    assert units == METRICS and len(rows) == len(METRICS) + len(stages), "a metric missing or printed twice"
    values = {r["metric"]: r["value"] for r in rows}
    assert stages <= set(values), "a C6 stage missing"
    assert values["c6_stage_insert_commit_runq_p99_ms"] <= values["c6_stage_insert_commit_p99_ms"]
    assert values["backlog"] == 0 and values["transactions"] == 300 and values["vehicle_gap_ms"] == 20
    assert values["lane_cpus"] == 0  # by default every process shares every CPU
    assert all(isinstance(v, (int, float)) for v in values.values())
    for name in ("drain_tx_per_s", "mosquitto_pub_msgs_per_s", "drain_ratio", "max_loop_block_ms", "c6_p50_ms", "c6_idle_p50_ms",
                 "c6_samples"):
        assert values[name] > 0, (name, values)
    assert values["c6_p99_ms"] >= values["c6_p50_ms"]
    # laned's share of a turnaround: within it (laned's C6 write returns before, or at
    # most a scheduling slip after, the emulator reads its first byte), and not nothing.
    assert 0 < values["c6_lane_p50_ms"] <= values["c6_lane_p99_ms"]
    assert values["c6_lane_p50_ms"] <= values["c6_p50_ms"] + 1.0, values
    # The stall sampler ran and reported (what it found depends on the machine: maybe nothing).
    stalls = (tmp_path / "stalls.txt").read_text()
    assert stalls == "" or stalls.split("\n", 1)[0].endswith(":") and "loop thread " in stalls, stalls[:500]


def test_a_negative_vehicle_gap_is_refused_naming_the_option() -> None:
    done = subprocess.run([sys.executable, str(BENCH), "--vehicle-gap-ms", "-5"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "--vehicle-gap-ms must be 0 or more" in done.stderr, done.stderr
    assert done.stdout == ""


def test_laned_can_have_a_cpu_to_itself_and_still_drains_everything() -> None:
    """--lane-cpus N: the bench checks laned runs on CPU N alone (and fails otherwise); on a
    one-CPU machine the option is refused, since nothing would be left for the rest."""
    usable = sorted(os.sched_getaffinity(0))
    done = subprocess.run([sys.executable, str(BENCH), "--transactions", "200", "--lane-cpus", str(usable[-1])],
                          capture_output=True, text=True, timeout=300)
    if len(usable) == 1:
        assert done.returncode == 2 and "must leave at least one CPU" in done.stderr, done.stderr
        return
    assert done.returncode == 0, done.stderr
    values = {r["metric"]: r["value"] for r in map(json.loads, done.stdout.splitlines())}
    assert values["lane_cpus"] == 1 and values["backlog"] == 0 and values["c6_samples"] > 0


def test_lane_cpus_that_are_not_cpu_numbers_or_leave_nothing_for_the_rest_are_refused() -> None:
    for argument, message in (("1,x", "'1,x' is not a comma-separated list of CPU numbers"),
                              ("-1", "CPU numbers start at 0"),
                              ("4096", "CPU 4096 is not one this process may use"),
                              (",".join(map(str, sorted(os.sched_getaffinity(0)))), "must leave at least one CPU")):
        done = subprocess.run([sys.executable, str(BENCH), "--lane-cpus", argument], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 2 and message in done.stderr, (argument, done.stderr)
        assert done.stdout == ""
