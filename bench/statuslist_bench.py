"""Status list at national scale: load, memory, lookups, a 100k delta, next to SQLite.

    .venv/bin/python bench/statuslist_bench.py [--entries 20000000] [--sqlite-entries N]

The list is a mix meant to resemble the national one (the shares are assumptions): 60 %
cards over the 31 provincial networks ("1101" … "6501"), 25 % OBU ids, 15 % OBU serials;
numbers are uniformly random, reasons 1–3. How each figure is taken:

* ``load_s``: ``StatusList.load_full`` over a prepared list of entries (sort once).
* ``ram_bytes_per_entry``: the list is saved and loaded back into a fresh store under
  tracemalloc; the bytes still allocated after the load (the store's arrays and dict)
  divided by the entries. ``rss_bytes_per_entry`` cross-checks it: the resident-set
  growth (/proc/self/statm) of a fresh interpreter loading the same file.
  ``ram_bytes_per_entry_after_delta`` is ``StatusList.nbytes`` (sys.getsizeof of the
  arrays) after the deltas, whose arrays grow by ``frombytes`` and keep ≤ 1/16 slack.
* ``lookup_p50_us`` / ``lookup_p99_us``: each lookup timed alone with perf_counter_ns
  through the public ``is_listed_card`` / ``is_listed_obu`` (parsing the identity
  included), over ``--lookups`` probes in random order, half listed and half not,
  ``--lookup-rounds`` times; percentiles over all the timings. A call that does nothing
  measures ~0.25 µs the same way.
* A 100,000-entry delta (50,000 adds, 50,000 removes of listed entries) in the centre's
  JSON payload, on a real asyncio loop, while a ticker task that only does
  ``await asyncio.sleep(0)`` records the gaps between its wake-ups:
  ``delta_100k_parse_s`` is ``run_steps(parse_payload_steps(payload))``,
  ``delta_100k_s`` the ``apply_delta`` of the parsed delta until the new version is
  published and the old arrays freed, ``delta_100k_total_s`` both (what
  ``apply_delta(store, payload)`` does), and ``max_loop_block_ms`` the longest ticker
  gap over both, i.e. the longest the loop was held (``max_loop_block_cpu_ms``: the
  same in this thread's CPU time, which leaves out time the OS gave the core to other
  processes; ``load_average_1min`` says how busy the machine was). ``json_loads_100k_ms`` is what a
  single ``json.loads`` of that payload would hold the loop, for comparison.
* ``delta_peak_extra_mb``: tracemalloc peak while a second such delta is applied, over
  what was allocated before it (new arrays built beside the old ones).
* SQLite: a ``WITHOUT ROWID`` table with primary key (partition, ident) holding the same
  entries (``--sqlite-entries``, default all), inserted in key order; lookups are the
  same probes, timed the same way, through one connection with the default cache, the
  key parsed as for the store. ``sqlite_bytes_per_entry`` is the db file size / rows.
  The file has just been written, so it is in the page cache.

Prints one JSON object per line: ``{"bench": "statuslist", "metric", "value", "unit"}``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import time
import tracemalloc
from array import array
from pathlib import Path
from typing import Any
from collections.abc import Callable

from laned.lane.status_list import Entry, Key, StatusList, card_key, obu_key, parse_payload, parse_payload_steps
from laned.uplink.list_apply import apply_delta, run_steps

NETWORKS = [f"{p}01" for p in (11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45,
                                46, 50, 51, 52, 53, 54, 61, 62, 63, 64, 65)]
CARD_SHARE, OBU_ID_SHARE = 0.60, 0.25  # the rest are OBU serials
# One string object per partition, shared by the entries (the bench holds 20 million).
CARD_PARTS = [card_key(net, "0" * 16).part for net in NETWORKS]
ID_PARTS = [obu_key(bytes([b, 0, 0, 0])).part for b in range(256)]
SERIAL_PARTS = [obu_key(bytes([b]) + bytes(7)).part for b in range(256)]


def emit(metric: str, value: float, unit: str) -> None:
    print(json.dumps({"bench": "statuslist", "metric": metric, "value": round(value, 3), "unit": unit}), flush=True)


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


RSS_PROBE = """
import gc, os, sys
from laned.lane.status_list import StatusList
def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
store = StatusList()
gc.collect()
before = rss()
store.load(sys.argv[1])
print(rss() - before, len(store))
"""


def rss_growth(file: Path) -> tuple[int, int]:
    """Resident-set growth of a fresh interpreter loading ``file``, and the entries loaded."""
    out = subprocess.run([sys.executable, "-c", RSS_PROBE, str(file)], capture_output=True, text=True, check=True)
    grown, count = out.stdout.split()
    return int(grown), int(count)


def random_entries(n: int, rng: random.Random) -> list[Entry]:
    """``n`` entries in the national mix (random numbers: duplicates are possible, rare)."""
    n_card = int(n * CARD_SHARE)
    n_id = int(n * OBU_ID_SHARE)  # the rest (n - n_card - n_id) are contract serials
    words = array("Q", rng.randbytes(8 * n))
    reasons = [1 + b % 3 for b in rng.randbytes(n)]
    card_parts = [CARD_PARTS[b % len(CARD_PARTS)] for b in rng.randbytes(n_card)]
    out = list(map(Entry, card_parts, [w % 10**16 for w in words[:n_card]], reasons[:n_card]))
    ids = words[n_card:n_card + n_id]
    out += map(Entry, [ID_PARTS[w >> 56] for w in ids], [w >> 32 & 0xFFFFFF for w in ids], reasons[n_card:])
    serials = words[n_card + n_id:]
    out += map(Entry, [SERIAL_PARTS[w >> 56] for w in serials], [w & (1 << 56) - 1 for w in serials],
               reasons[n_card + n_id:])
    return out


def identity(key: Key | Entry) -> tuple[str, Any]:
    """("card", (network, number)) or ("obu", bytes) of a stored key."""
    part, ident = key[0], key[1]
    if part[0] == "C":
        return "card", (part[1:], f"{ident:016d}")
    return "obu", bytes.fromhex(part[1:]) + ident.to_bytes(3 if part[0] == "I" else 7, "big")


def payload_entry(key: Key | Entry, reason: int | None = None) -> dict[str, Any]:
    kind, value = identity(key)
    entry: dict[str, Any] = {"card": "-".join(value)} if kind == "card" else {"obu": value.hex()}
    if reason is not None:
        entry["reason"] = reason
    return entry


def probes_for(listed: list[Entry], n: int, rng: random.Random) -> list[tuple[str, Any]]:
    """Half listed identities, half fresh random ones, shuffled."""
    hits = [identity(e) for e in rng.choices(listed, k=n // 2)]
    misses = [identity(e) for e in random_entries(n - len(hits), rng)]
    probes = hits + misses
    rng.shuffle(probes)
    return probes


def time_lookups(probes: list[tuple[str, Any]], card: Callable[[str, str], Any],
                 obu: Callable[[bytes], Any]) -> tuple[list[float], int]:
    """Microseconds per lookup, and how many were found."""
    clock = time.perf_counter_ns
    times = []
    found = 0
    for kind, value in probes:
        if kind == "card":
            t = clock()
            r = card(*value)
            dt = clock() - t
        else:
            t = clock()
            r = obu(value)
            dt = clock() - t
        times.append(dt / 1000)
        found += r is not None
    return times, found


def delta_payload(version: int, adds: list[Entry], removes: list[Key | Entry]) -> bytes:
    return json.dumps({"version": version, "base": version - 1,
                       "add": [payload_entry(e, e.reason) for e in adds],
                       "remove": [payload_entry(k) for k in removes]}).encode()


async def apply_with_ticker(store: StatusList, data: bytes) -> tuple[float, float, float, float]:
    """Seconds to parse, seconds to apply, and the longest gap between wake-ups of a ticker
    task in ms: wall-clock, and in CPU time of this thread (what the loop itself spent,
    without the time the OS gave the core to other processes)."""
    gaps = [(0.0, 0.0)]
    done = asyncio.Event()

    async def ticker() -> None:
        last, last_cpu = time.perf_counter(), time.thread_time()
        while not done.is_set():
            await asyncio.sleep(0)
            now, cpu = time.perf_counter(), time.thread_time()
            gaps.append((now - last, cpu - last_cpu))
            last, last_cpu = now, cpu

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    t = time.perf_counter()
    delta = await run_steps(parse_payload_steps(data))  # what apply_delta(store, data) does first
    parsed = time.perf_counter()
    await apply_delta(store, delta)
    applied = time.perf_counter()
    done.set()
    await task
    return parsed - t, applied - parsed, max(g for g, _ in gaps) * 1000, max(c for _, c in gaps) * 1000


def sqlite_figures(store: StatusList, probes: list[tuple[str, Any]], tmp: Path) -> None:
    path = tmp / "status.db"
    db = sqlite3.connect(path)
    db.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF; PRAGMA cache_size=-262144;"
                     "CREATE TABLE status_list (part TEXT NOT NULL, ident INTEGER NOT NULL,"
                     " reason INTEGER NOT NULL, PRIMARY KEY (part, ident)) WITHOUT ROWID;")
    t = time.perf_counter()
    db.executemany("INSERT INTO status_list VALUES (?, ?, ?)", store.entries())
    db.commit()
    db.close()
    build_s = time.perf_counter() - t
    db = sqlite3.connect(path)  # default cache, as a lane would open it
    query = "SELECT reason FROM status_list WHERE part = ? AND ident = ?"

    def card(network: str, number: str) -> Any:
        return db.execute(query, card_key(network, number)).fetchone()

    def obu(value: bytes) -> Any:
        return db.execute(query, obu_key(value)).fetchone()

    times, _ = time_lookups(probes, card, obu)
    db.close()
    emit("sqlite_entries", len(store), "entries")
    emit("sqlite_build_s", build_s, "s")
    emit("sqlite_lookup_p50_us", percentile(times, 0.50), "us")
    emit("sqlite_lookup_p99_us", percentile(times, 0.99), "us")
    emit("sqlite_bytes_per_entry", path.stat().st_size / len(store), "bytes")
    path.unlink()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--entries", type=int, default=20_000_000)
    ap.add_argument("--sqlite-entries", type=int, default=None, help="rows in the SQLite comparison "
                    "(default: as many as --entries)")
    ap.add_argument("--lookups", type=int, default=100_000)
    ap.add_argument("--lookup-rounds", type=int, default=3, help="times the probes are looked up; the "
                    "percentiles are over all of them")
    ap.add_argument("--delta", type=int, default=100_000, help="entries in each delta, half added and half "
                    "removed (at most --entries; the metrics keep the name delta_100k, delta_entries says)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    n = args.entries
    m = min(n, args.sqlite_entries if args.sqlite_entries is not None else n)
    half = min(args.delta, n) // 2
    rng = random.Random(args.seed)

    entries = random_entries(n, rng)
    store = StatusList()
    t = time.perf_counter()
    store.load_full(1, entries)
    emit("entries", n, "entries")
    emit("load_s", time.perf_counter() - t, "s")
    emit("distinct_entries", len(store), "entries")

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        file = tmp / "status.bin"
        t = time.perf_counter()
        store.save(file)
        emit("save_s", time.perf_counter() - t, "s")
        emit("file_bytes_per_entry", file.stat().st_size / len(store), "bytes")
        del store
        gc.collect()
        store = StatusList()
        t = time.perf_counter()
        store.load(file)
        emit("file_load_s", time.perf_counter() - t, "s")
        del store
        gc.collect()
        store = StatusList()
        tracemalloc.start()
        store.load(file)
        held = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        emit("ram_bytes_per_entry", held / len(store), "bytes")
        grown, count = rss_growth(file)
        emit("rss_bytes_per_entry", grown / count, "bytes")

        probes = probes_for(entries, args.lookups, rng)
        times = []
        for _ in range(args.lookup_rounds):
            round_times, found = time_lookups(probes, store.is_listed_card, store.is_listed_obu)
            assert found >= len(probes) // 2, (found, len(probes))
            times += round_times
        emit("lookup_p50_us", percentile(times, 0.50), "us")
        emit("lookup_p99_us", percentile(times, 0.99), "us")

        if m == n:
            sqlite_figures(store, probes, tmp)
        else:
            sample = rng.sample(entries, m)
            small = StatusList()
            small.load_full(1, sample)
            sqlite_figures(small, probes_for(sample, args.lookups, rng), tmp)
            del small, sample

    removes = rng.sample(entries, half)
    gone = {(e.part, e.ident) for e in removes}
    adds = [e for e in random_entries(2 * half, rng) if (e.part, e.ident) not in gone][:half]
    data = delta_payload(2, adds, removes)
    emit("delta_entries", len(adds) + len(removes), "entries")
    del entries
    gc.collect()
    t = time.perf_counter()
    json.loads(data)
    emit("json_loads_100k_ms", (time.perf_counter() - t) * 1000, "ms")
    parse_s, apply_s, block, block_cpu = asyncio.run(apply_with_ticker(store, data))
    assert store.version == 2
    for e in adds[:1000]:
        kind, value = identity(e)
        got = store.is_listed_card(*value) if kind == "card" else store.is_listed_obu(value)
        assert got == e.reason, (e, got)
    emit("delta_100k_s", apply_s, "s")
    emit("delta_100k_parse_s", parse_s, "s")
    emit("delta_100k_total_s", parse_s + apply_s, "s")
    emit("max_loop_block_ms", block, "ms")
    emit("max_loop_block_cpu_ms", block_cpu, "ms")
    emit("load_average_1min", os.getloadavg()[0], "processes")

    listed = {(e.part, e.ident) for e in adds}
    second = parse_payload(delta_payload(3, [e for e in random_entries(half, rng) if (e.part, e.ident) not in listed],
                                         adds))
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    store.apply(second)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    emit("delta_peak_extra_mb", (peak - before) / 2**20, "MiB")
    emit("ram_bytes_per_entry_after_delta", store.nbytes / len(store), "bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
