"""A national status list and a delta from the centre: download and apply without holding the loop.

    .venv/bin/python bench/list_apply_bench.py [--entries 20000000] [--delta 100000] [--gzip]

What the lane does with a list from the centre, on one real asyncio loop, while a ticker
task that only does ``await asyncio.sleep(0)`` records the gaps between its wake-ups (the
longest gap is the longest the loop was held; the contract of issue 10 item 5 is ≤ 10 ms):

1. ``full``: a full list of ``--entries`` entries (60 % cards over 31 networks, 25 % OBU
   ids, 15 % OBU serials, random, reasons 1–3) in the centre's JSON, cut into
   ``--chunk-size`` chunks. Each chunk message is handed to the download as the MQTT
   client would (one loop callback each: ``parse_chunk`` + ``ListDownload.on_chunk``, the
   incremental SHA-256 included); then ``apply_status_list`` parses the pieces, applies
   them beside the (empty) list in use and saves the result (file + manifest, in a thread).
2. ``delta``: a delta of ``--delta`` entries (half adds, half removes of listed entries) on
   that version, the same way.

The longest blocks left are the cyclic garbage collector's full passes (one walks every
tracked object of the process: ~9 ms for the ~40,000 objects laned has after importing
its modules, on the 2-core benchmark machine), not list work; ``--gc-freeze`` measures
with them moved out of the collector's way, as ``gc.freeze()`` at the end of the
daemon's start would.

The chunk messages are made before the clock starts (that is the centre's work). Prints
one JSON object per line: ``{"bench": "list_apply", "metric", "value", "unit"}``:
``<phase>_download_s``, ``<phase>_download_max_loop_block_ms``, ``<phase>_apply_s``,
``<phase>_apply_max_loop_block_ms`` and ``max_loop_block_ms`` (the longest of them all);
the same gaps in thread CPU time as ``..._cpu_ms``;
``<phase>_bytes``, ``load_average_1min``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import gc
import gzip
import hashlib
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from laned.centre.lists import DEFAULT_CHUNK_SIZE  # noqa: E402
from laned.lane.list_update import Complete, DownloadLimits, ListDownload, Started, parse_chunk  # noqa: E402
from laned.lane.status_list import StatusList  # noqa: E402
from laned.uplink.commands import CentreKeys, signature_of  # noqa: E402
from laned.uplink.list_apply import apply_status_list  # noqa: E402
from laned.uplink.messages import Compression, ListChunk, ListFormat, ListKind, ListManifest  # noqa: E402

NETWORKS = [f"{p}01" for p in (11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45,
                                46, 50, 51, 52, 53, 54, 61, 62, 63, 64, 65)]
KEY = Ed25519PrivateKey.generate()
KEY_ID = "bench-1"
LANE = "G0001-0201-03"
NOW = dt.datetime(2024, 11, 22, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=8)))


def emit(metric: str, value: float, unit: str) -> None:
    print(json.dumps({"bench": "list_apply", "metric": metric, "value": round(value, 3), "unit": unit}), flush=True)


def entry_texts(n: int, rng: random.Random) -> list[str]:
    out = []
    for _ in range(n):
        r = rng.random()
        reason = rng.randint(1, 3)
        if r < 0.60:
            out.append(f'{{"card":"{rng.choice(NETWORKS)}-{rng.randrange(10**16):016d}","reason":{reason}}}')
        elif r < 0.85:
            out.append(f'{{"obu":"{rng.randrange(1 << 32):08x}","reason":{reason}}}')
        else:
            out.append(f'{{"obu":"{rng.randrange(1 << 64):016x}","reason":{reason}}}')
    return out


def payload(version: int, add: list[str], base: int | None = None, remove: list[str] | None = None) -> bytes:
    head = f'{{"version":{version}' + (f',"base":{base}' if base is not None else "")
    parts = [head, ',"add":[', ",".join(add), "]"]
    if remove:
        parts += [',"remove":[', ",".join(remove), "]"]
    parts.append("}")
    return "".join(parts).encode()


def publish(version: int, data: bytes, chunk_size: int, compression: Compression,
            base: int | None = None) -> tuple[bytes, list[bytes]]:
    """The signed manifest and every chunk message, as the centre publishes them."""
    if compression is Compression.GZIP:
        data = gzip.compress(data, compresslevel=6)
    count = max(1, -(-len(data) // chunk_size))
    manifest = ListManifest(kind=ListKind.STATUS_LIST, version=version, base_version=base,
                            format=ListFormat.STATUS_JSON, compression=compression, size=len(data),
                            sha256=hashlib.sha256(data).digest(), chunk_size=chunk_size, chunk_count=count,
                            issued_at=NOW, valid_from=NOW, expires_at=NOW + dt.timedelta(days=7), key_id=KEY_ID)
    body = manifest.to_dict()
    body.pop("signature", None)
    body["signature"] = base64.b64encode(signature_of(body, KEY)).decode()
    chunks = []
    for i in range(count):
        piece = data[i * chunk_size:(i + 1) * chunk_size]
        chunks.append(json.dumps({"kind": "status_list", "version": version, "index": i,
                                  "data": base64.b64encode(piece).decode(),
                                  "sha256": hashlib.sha256(piece).hexdigest()}).encode())
    return json.dumps(body).encode(), chunks


async def watched(work: Callable[[], Awaitable[Any]]) -> tuple[Any, float, float, float]:
    """``work()``'s result, how long it took and the longest gap between ticker wake-ups,
    in wall time and in this thread's CPU time (which leaves out time the OS gave the core
    to other processes: on a busy 2-core machine that is most of a long wall gap)."""
    gaps = [0.0]
    cpu_gaps = [0.0]
    done = False

    async def ticker() -> None:
        last, last_cpu = time.perf_counter(), time.thread_time()
        while not done:
            await asyncio.sleep(0)
            now, now_cpu = time.perf_counter(), time.thread_time()
            gaps.append(now - last)
            cpu_gaps.append(now_cpu - last_cpu)
            last, last_cpu = now, now_cpu

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    t = time.perf_counter()
    result = await work()
    took = time.perf_counter() - t
    done = True
    await tick
    return result, took, max(gaps), max(cpu_gaps)


async def run_phase(name: str, manifest: bytes, chunks: list[bytes], store: StatusList, in_use: int | None,
                    path: Path) -> tuple[StatusList, float, float]:
    dl = ListDownload(kind=ListKind.STATUS_LIST, lane_id=LANE, keys=CentreKeys({KEY_ID: KEY.public_key()}),
                      limits=DownloadLimits(max_bytes=1 << 30), in_use=in_use)
    if not isinstance(dl.on_manifest(manifest, NOW), Started):
        raise SystemExit(f"{name}: the manifest was not taken")

    async def deliver() -> Complete:
        outcome: Any = None
        for raw in chunks:  # one loop callback per MQTT message
            chunk = parse_chunk(raw)
            if not isinstance(chunk, ListChunk):
                raise SystemExit(f"{name}: {chunk}")
            outcome = dl.on_chunk(chunk, NOW)
            await asyncio.sleep(0)
        if not isinstance(outcome, Complete):
            raise SystemExit(f"{name}: not complete: {outcome}")
        return outcome

    done, took, block, cpu = await watched(deliver)
    emit(f"{name}_download_s", took, "s")
    emit(f"{name}_download_max_loop_block_ms", block * 1000, "ms")
    emit(f"{name}_download_max_loop_block_cpu_ms", cpu * 1000, "ms")
    made: list[StatusList] = []

    async def apply() -> None:
        await apply_status_list(done.content, store, path=path, now=NOW, install=lambda m: made.append(m.store))

    _, took, apply_block, apply_cpu = await watched(apply)
    emit(f"{name}_apply_s", took, "s")
    emit(f"{name}_apply_max_loop_block_ms", apply_block * 1000, "ms")
    emit(f"{name}_apply_max_loop_block_cpu_ms", apply_cpu * 1000, "ms")
    emit(f"{name}_entries_after", len(made[0]), "entries")
    return made[0], max(block, apply_block), max(cpu, apply_cpu)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--entries", type=int, default=20_000_000)
    ap.add_argument("--delta", type=int, default=100_000, help="entries in the delta, half added, half removed")
    ap.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, help="bytes per chunk (default: the "
                    "reference centre's, 64 KiB; the contract allows up to 1 MiB, ~6 ms of work per chunk)")
    ap.add_argument("--gzip", action="store_true", help="send the lists gzip-compressed")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--gc-freeze", action="store_true", help="gc.freeze() once set up, as a daemon would after "
                    "its start: a full collection then no longer walks the objects that live for good")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    compression = Compression.GZIP if args.gzip else Compression.NONE
    full_entries = entry_texts(args.entries, rng)
    full = payload(1, full_entries)
    emit("entries", args.entries, "entries")
    emit("full_bytes", len(full), "bytes")
    full_msgs = publish(1, full, args.chunk_size, compression)
    del full
    half = min(args.delta, args.entries) // 2
    removed = [e.split(',"reason"')[0] + "}" for e in rng.sample(full_entries, half)]
    del full_entries
    delta = payload(2, entry_texts(half, rng), base=1, remove=removed)
    emit("delta_entries", 2 * half, "entries")
    emit("delta_bytes", len(delta), "bytes")
    delta_msgs = publish(2, delta, args.chunk_size, compression, base=1)
    del delta, removed
    if args.gc_freeze:
        gc.collect()
        gc.freeze()
    emit("gc_frozen", int(args.gc_freeze), "")

    async def both(path: Path) -> tuple[float, float]:
        store, worst, worst_cpu = await run_phase("full", *full_msgs, StatusList(), None, path)
        _, worst2, worst_cpu2 = await run_phase("delta", *delta_msgs, store, 1, path)
        return max(worst, worst2), max(worst_cpu, worst_cpu2)

    with tempfile.TemporaryDirectory() as tmp:
        worst, worst_cpu = asyncio.run(both(Path(tmp) / "status_list.bin"))
    emit("max_loop_block_ms", worst * 1000, "ms")
    emit("max_loop_block_cpu_ms", worst_cpu * 1000, "ms")
    emit("load_average_1min", os.getloadavg()[0], "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
