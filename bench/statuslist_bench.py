"""Status list at national scale: load, memory, lookups, a 100k delta, next to SQLite.

    .venv/bin/python bench/statuslist_bench.py [--entries 20000000] [--sqlite-entries N]

Keys in the store are 64-bit hashes, so the base list is built from uniformly random
64-bit keys (what hashing real card numbers gives). Memory is measured with tracemalloc
around the construction of the store's arrays (what the store keeps alive), divided by
the entry count. Lookups are timed one by one with perf_counter_ns through the public
``is_listed_obu`` (hashing included), half of them hits. The delta is applied through
``apply_delta`` on a real asyncio loop while a ticker task records the longest gap
between its wake-ups: that is the longest time the loop was blocked.

Prints one JSON object per line: ``{"bench": "statuslist", "metric", "value", "unit"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sqlite3
import sys
import tempfile
import time
import tracemalloc
from array import array

from laned.lane.status_list import Delta, StatusList, apply_delta, obu_key


def emit(metric: str, value: float, unit: str) -> None:
    print(json.dumps({"bench": "statuslist", "metric": metric, "value": round(value, 3), "unit": unit}), flush=True)


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=20_000_000)
    ap.add_argument("--sqlite-entries", type=int, default=None,
                    help="rows in the SQLite comparison (default: min(entries, 2,000,000))")
    ap.add_argument("--lookups", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    n = args.entries
    rng = random.Random(args.seed)

    # The listed OBU ids 0..k are real hashed entries (so lookups hash like the lane
    # does); the rest of the list is random 64-bit keys.
    listed = [i.to_bytes(4, "big") for i in range(min(n, args.lookups))]
    raw = os.urandom(8 * (n - len(listed)))
    t0 = time.perf_counter()
    keys_list = array("Q", raw).tolist() + [obu_key(o) for o in listed]
    keys_list.sort()
    tracemalloc.start()
    keys = array("Q", keys_list)
    reasons = array("B", bytes([1]) * len(keys))
    store_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del keys_list
    store = StatusList()
    store.load_sorted_arrays(1, keys, reasons)
    load_s = time.perf_counter() - t0
    emit("entries", n, "entries")
    emit("load_s", load_s, "s")
    emit("ram_bytes_per_entry", store_bytes / n, "bytes")

    probes = [rng.choice(listed) if i % 2 == 0 else (0x80000000 + i).to_bytes(4, "big") for i in range(args.lookups)]
    times = []
    clock = time.perf_counter_ns
    for obu in probes:
        t = clock()
        store.is_listed_obu(obu)
        times.append((clock() - t) / 1000)
    emit("lookup_p50_us", percentile(times, 0.50), "us")
    emit("lookup_p99_us", percentile(times, 0.99), "us")

    delta = Delta(2, 1, add=[(obu_key((0x90000000 + i).to_bytes(4, "big")), 2) for i in range(50_000)],
                  remove=[obu_key(o) for o in listed[:50_000]])

    async def run_delta() -> tuple[float, float]:
        gaps = [0.0]
        stop = asyncio.Event()

        async def ticker() -> None:
            last = time.perf_counter()
            while not stop.is_set():
                await asyncio.sleep(0)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        t = time.perf_counter()
        await apply_delta(store, delta)
        total = time.perf_counter() - t
        stop.set()
        await task
        return total, max(gaps)

    total, block = asyncio.run(run_delta())
    assert store.is_listed_obu((0x90000001).to_bytes(4, "big")) == 2
    emit("delta_100k_s", total, "s")
    emit("max_loop_block_ms", block * 1000, "ms")

    m = min(n, args.sqlite_entries if args.sqlite_entries is not None else 2_000_000)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "status.db")
        db = sqlite3.connect(path)
        db.execute("CREATE TABLE status (key INTEGER PRIMARY KEY, reason INTEGER NOT NULL) WITHOUT ROWID")
        sample = array("Q", os.urandom(8 * (m - len(listed)))).tolist() + [obu_key(o) for o in listed]
        db.executemany("INSERT OR IGNORE INTO status VALUES (?, 1)", ((k - (1 << 63),) for k in sample))
        db.commit()
        times = []
        for obu in probes:
            t = clock()
            db.execute("SELECT reason FROM status WHERE key = ?", (obu_key(obu) - (1 << 63),)).fetchone()
            times.append((clock() - t) / 1000)
        db.close()
        emit("sqlite_entries", m, "entries")
        emit("sqlite_lookup_p99_us", percentile(times, 0.99), "us")
        emit("sqlite_bytes_per_entry", os.path.getsize(path) / m, "bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
