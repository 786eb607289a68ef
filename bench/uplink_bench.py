"""Uplink drain: how fast a lane empties a backlog to the centre, and what that costs the lane.

Issue 10, item 10. One run, all on this machine:

* **the broker** — a Mosquitto started by the bench (``hil_tests/mosquitto_broker.py``: TLS
  1.2+ with client certificates and the per-lane ACL, as in production; persistence off;
  the queue limits raised as docs/centre.md says, :class:`BenchBroker`);
* **the centre** — ``laned centre run`` (the reference centre: contract check of every
  payload, SQLite ledger with ``synchronous=FULL``, range acks) as a child process;
* **the lane** — ``laned run`` on an emulated RSU (this process), started through
  ``uplink_daemon.py`` (what ``laned run --config`` does, plus a ticker task on the
  daemon's event loop that records every wake-up later than 1 ms), with an
  ``[uplink]`` section at the defaults of docs/uplink.md (ack timeout 30 s, keep-alive
  30 s; window 2048 and batch_max 64 unless ``--window``, ``--batch-max``). Its journal holds ``--transactions`` final rows (one in five a charge,
  the rest lane events) journalled before it starts: the backlog of a lane whose link
  was down.

While the lane drains its backlog, vehicles pay on the emulated RSU, one every
``--vehicle-gap-ms`` (default 20 ms) after the previous transaction ended, so the lane
machine answers B4 with C6 while it publishes; ``--vehicle-gap-ms 0`` runs them back to
back (as ``turnaround_bench.py`` does), where a vehicle's intent often waits for the
previous vehicle's charge still being committed.

Metrics (one JSON object per line, ``{"bench": "uplink", "metric", "value", "unit"}``):

* ``drain_tx_per_s`` — rows of the backlog acknowledged per second: from the first row
  stored at the centre (the ledger's ``received_at``) to the last row of the backlog marked
  delivered by the centre's ``tx/ack`` (the journal's ``acked_unix``; never by a PUBACK).
  The lane publishes them as it does in service: several per message on ``tx/batch``
  (``[uplink] batch_max``);
* ``mosquitto_pub_msgs_per_s`` — the same payloads published by ``mosquitto_pub -l``
  (one process, one TLS connection with the lane's certificate, one message per stdin
  line, QoS 1, MQTT 5) to the lane's ``tx`` topic and received by ``mosquitto_sub`` with
  the centre's certificate (the centre stopped by then): the count over the time from
  the publisher's start to the subscriber having every message (TLS handshake included;
  see :func:`mosquitto_pub_rate` for why not to the publisher's exit);
* ``drain_ratio`` — ``drain_tx_per_s / mosquitto_pub_msgs_per_s``;
* ``backlog`` — the journal's outbox backlog at the end (0: everything delivered);
* ``max_loop_block_ms`` — the longest the daemon's event loop was late for its 1 ms
  ticker during the drain;
* ``max_loop_busy_ms`` — the most CPU the loop's thread used within one late tick: near
  ``max_loop_block_ms``, code held the loop; far below, the thread was not running (the
  GIL held by the journal writer's thread, or no core free: 2 cores for the lane, the
  centre, Mosquitto and the emulator); ``loop_blocks_over_10ms`` counts the ticks later
  than 10 ms; ``max_gc_ms`` the longest garbage collection pass in the daemon meanwhile
  (``gc.callbacks``; it runs in whichever thread allocates, the loop's or the journal's);
* ``c6_p99_ms`` / ``c6_p50_ms`` — the C6 turnaround (the emulator's figure: last byte of
  B4 written to first byte of C6 read) of the vehicles that paid during the drain, and
  ``c6_samples`` their number; ``c6_idle_p99_ms`` / ``c6_idle_p50_ms`` the same number of
  vehicles after the drain, in the same way, with nothing but their own rows to send: the
  difference is what the drain costs a C6;
* ``c6_lane_p99_ms`` / ``c6_lane_p50_ms`` — laned's share of those turnarounds: from the
  B4's last byte written by the emulator to laned's write of the C6 having returned (the
  daemon notes when, on the same CLOCK_MONOTONIC), so without the emulator's own wake-up to
  read the answer, which a real RSU does on its own processor, not on the lane PC's
  cores; ``c6_lane_idle_p99_ms`` the same for the vehicles after the drain;
* ``drain_s`` — the drain's duration (as ``drain_tx_per_s`` times it), and ``lane_cpu_s``, ``centre_cpu_s``, ``broker_cpu_s``
  the CPU each process used meanwhile (all threads; the lane's includes the vehicles):
  the one near ``drain_s`` is the bottleneck;
* ``transactions`` — the backlog's rows; ``vehicle_gap_ms`` the pause between vehicles;
  ``lane_cpus`` the CPUs laned had to itself (``--lane-cpus``; 0: every process shares
  every CPU, the default). With ``--lane-cpus 1`` laned's process runs on CPU 1 alone and
  the bench (the emulated RSU), Mosquitto, the centre and ``mosquitto_pub`` on the other
  CPUs: a lane PC whose centre and broker are elsewhere. ``drain_ratio`` then compares
  with a ``mosquitto_pub`` held to fewer cores.

For diagnosis, ``UPLINK_BENCH_C6=FILE`` times laned's own path from each B4 to its C6 (the
daemon's methods wrapped, ``uplink_daemon.time_c6_path``) and adds ``c6_stage_*_p50_ms``/``_p99_ms``
for the vehicles of the drain: ``total``, ``machine`` (B4 to the intent's submission),
``queue`` (waiting for the journal writer), ``insert_commit`` (the INSERT and its commit's
fsync), ``insert_commit_runq`` (of that, the writer thread runnable but waiting for a core,
from ``/proc/thread-self/schedstat``), ``insert_commit_cpu`` (its own CPU),
``insert_commit_asleep`` (the rest: the fsync, or waiting for the GIL) and ``back`` (to
the C6 written). ``UPLINK_BENCH_SLOW=FILE`` lists the event loop's
slowest callbacks, ``UPLINK_BENCH_PROFILE=FILE`` profiles the daemon's loop thread.

    .venv/bin/python bench/uplink_bench.py [--transactions 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DAEMON = Path(__file__).with_name("uplink_daemon.py")  # laned with the bench's probes, as a child
sys.path.insert(0, str(ROOT / "hil_tests"))  # the test broker and PKI

from lane_fixtures import prefill_backlog  # noqa: E402
from mosquitto_broker import MosquittoBroker  # noqa: E402
from mqtt_pki import CENTRE, Pki, make_pki  # noqa: E402
from uplink_daemon import LANE_CPUS_ENV, LATE_S, c6_stages  # noqa: E402
from turnaround_bench import (  # noqa: E402
    FEE_TABLE, Lane, cpu_seconds, lane_obu, percentile, run_block, stop_child,
)

from laned.journal.store import Journal  # noqa: E402
from laned.sim.rsu_emulator import EmulatorSettings, LogEntry, RsuEmulator, RsuState  # noqa: E402
from laned.uplink.messages import TransactionMsg  # noqa: E402

LANE_ID = "G0001-0201-03"
TZ = dt.timezone(dt.timedelta(hours=8))
POLL_S = 0.05  # how often the bench reads the centre's and the lane's databases
STARTUP_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 3600.0  # only stops a hung run
C6_BLOCK = 10  # vehicles per block while the drain runs
# The pause between one vehicle's transaction ending and the next arriving. A busy ETC lane
# sees a vehicle every 2–3 s; 20 ms (up to ~40 vehicles a second) is far denser, and still
# lets the previous vehicle's charge reach the journal first, so that a C6 measures what the
# drain costs it, not the wait for the vehicle before. 0: back to back (records before 2026-12-07 06:00).
VEHICLE_GAP_MS = 20.0
# Targets (issue 10, item 10).
TARGET_DRAIN_TX_PER_S = 3000
TARGET_RATIO = 0.3
TARGET_LOOP_BLOCK_MS = 10.0
TARGET_C6_P99_MS = 5.0


def wall() -> dt.datetime:
    return dt.datetime.now(TZ)


# -- set-up -----------------------------------------------------------------------------------

def payload_lines(db: Path, rows: int) -> bytes:
    """The backlog's rows as the lane publishes them (TransactionMsg JSON), one per line."""
    journal = Journal.open(db, LANE_ID, now=wall())
    try:
        entries = journal.outbox_after(0, rows)
    finally:
        journal.close()
    return b"".join(TransactionMsg.from_entry(e).to_json().encode() + b"\n" for e in entries)


class BenchBroker(MosquittoBroker):
    """The test broker, with the queue limits docs/centre.md asks of a centre's broker: the
    defaults (1000 queued, 20 in flight per client) would drop rows for the centre as soon as
    a lane's window is larger (they would come again only after the lane's ack timeout)."""

    def config_text(self) -> str:
        return super().config_text() + "\nmax_queued_messages 1000000\nmax_queued_bytes 0\nmax_inflight_messages 0\n"


def write_config(folder: Path, pty: str, broker: MosquittoBroker, pki: Pki, window: int | None,
                 batch_max: int | None) -> Path:
    creds = pki.client(LANE_ID)
    path = folder / "laned.toml"
    path.write_text(f"""log_level = "warning"

[lane]
lane_id = "{LANE_ID}"
network = "3701"
station = "0201"
lane_number = 3
direction = "exit"

[rsu]
profile = "national"
transport = "serial"
port = "{pty}"
baud = 115200

[journal]
path = "{folder / 'journal.db'}"

[fee_table]
path = "{FEE_TABLE}"

[uplink]
host = "127.0.0.1"
port = {broker.port}
ca = "{pki.ca_cert}"
cert = "{creds.cert}"
key = "{creds.key}"
""" + (f"window = {window}\n" if window is not None else "") + (f"batch_max = {batch_max}\n" if batch_max is not None
                                                                 else ""))
    return path


def count(db: Path, sql: str, *args: object) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return int(con.execute(sql, args).fetchone()[0])
    except sqlite3.OperationalError as err:
        if "no such table" in str(err):
            return 0
        raise
    finally:
        con.close()


WAITING = "FROM transactions WHERE lane_id = ? AND acked_unix IS NULL AND state != 'intent'"


def lane_backlog(db: Path) -> int:
    """Rows waiting for the centre's ack (the figure reported at the end)."""
    return count(db, f"SELECT COUNT(*) {WAITING}", LANE_ID)


def lane_drained(db: Path, up_to: int | None = None) -> bool:
    """No row waits for the centre's ack; with ``up_to``, none with seq ≤ ``up_to`` (the backlog's).

    Polled while the drain runs, on the cores the lane uses: it asks SQLite for the first
    waiting row (~0.3 ms of CPU), where counting them took ~7 ms with 100,000 waiting."""
    if up_to is None:
        return count(db, f"SELECT EXISTS(SELECT 1 {WAITING})", LANE_ID) == 0
    return count(db, f"SELECT EXISTS(SELECT 1 {WAITING} AND seq <= ?)", LANE_ID, up_to) == 0


def centre_stored(db: Path) -> int:
    return count(db, "SELECT COUNT(*) FROM transactions WHERE lane_id = ?", LANE_ID) if db.exists() else 0


def drain_seconds(journal_db: Path, centre_db: Path, n: int) -> float:
    """From the first row stored at the centre (its ledger's received_at) to the last of the
    backlog's rows marked delivered at the lane (its journal's acked_unix): both written by
    the processes themselves, so a backlog that drains between two polls of this script is
    timed all the same."""
    con = sqlite3.connect(f"file:{centre_db}?mode=ro", uri=True, timeout=5)
    try:
        first = dt.datetime.fromisoformat(con.execute(
            "SELECT MIN(received_at) FROM transactions WHERE lane_id = ?", (LANE_ID,)).fetchone()[0]).timestamp()
    finally:
        con.close()
    con = sqlite3.connect(f"file:{journal_db}?mode=ro", uri=True, timeout=5)
    try:
        last = float(con.execute("SELECT MAX(acked_unix) FROM transactions WHERE lane_id = ? AND seq <= ?",
                                 (LANE_ID, n)).fetchone()[0])
    finally:
        con.close()
    return last - first


async def wait(condition: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    # In a thread: the emulator answering the lane runs on this loop, and a database read
    # here would show up in the C6 figures as the lane's delay.
    while not await asyncio.to_thread(condition):
        if time.monotonic() > deadline:
            raise RuntimeError(f"not within {timeout} s: {what}")
        await asyncio.sleep(POLL_S)


# -- the run ----------------------------------------------------------------------------------

def emit(metric: str, value: float, unit: str) -> None:
    print(json.dumps({"bench": "uplink", "metric": metric, "value": round(value, 4), "unit": unit}), flush=True)


async def mosquitto_pub_rate(broker: MosquittoBroker, pki: Pki, lines: bytes, n: int) -> float:
    """``mosquitto_pub -l`` publishing ``lines`` at QoS 1 with the lane's certificate, received
    by ``mosquitto_sub`` with the centre's: messages per second from the publisher's start
    until the subscriber has every one.

    The publisher's stdin stays open until then. At the end of its input ``mosquitto_pub``
    2.0.11 (Debian 12) exits without sending what it still has queued: of 100,000 lines,
    ~34,000 reached a subscriber, so the time to its exit counted messages never sent."""
    topic, port = f"etc/v1/{LANE_ID}/tx", str(broker.port)
    centre, lane = pki.client(CENTRE), pki.client(LANE_ID)
    sub = await asyncio.create_subprocess_exec(
        "stdbuf", "-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", port, "-V", "mqttv5", "-q", "1", "-t", topic,
        "-i", f"bench-sub-{LANE_ID}", "-C", str(n), "-d", "--cafile", str(pki.ca_cert), "--cert", str(centre.cert),
        "--key", str(centre.key), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert sub.stdout is not None
    pub = None
    try:
        async with asyncio.timeout(STARTUP_TIMEOUT_S):  # -d: its log says when it is subscribed
            while b"received SUBACK" not in (line := await sub.stdout.readline()):
                if not line:
                    raise RuntimeError(f"mosquitto_sub exited: {(await sub.stderr.read()).decode(errors='replace')}"
                                       if sub.stderr else "mosquitto_sub exited")
        start = time.monotonic()
        pub = await asyncio.create_subprocess_exec(
            "mosquitto_pub", "-h", "127.0.0.1", "-p", port, "-V", "mqttv5", "-q", "1", "-l", "-i", f"bench-pub-{LANE_ID}",
            "-t", topic, "--cafile", str(pki.ca_cert), "--cert", str(lane.cert), "--key", str(lane.key),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        assert pub.stdin is not None
        pub.stdin.write(lines)
        async with asyncio.timeout(DRAIN_TIMEOUT_S):
            while await sub.stdout.read(1 << 16):  # its log and the payloads, until -C n makes it exit
                pass
            await sub.wait()
        took = time.monotonic() - start
        if sub.returncode != 0:
            raise RuntimeError(f"mosquitto_sub exited with {sub.returncode}")
        return n / took
    finally:
        for proc in (pub, sub):
            if proc is not None and proc.returncode is None:
                proc.kill()
                await proc.wait()


async def vehicles(lane: Lane, gap_s: float) -> None:
    """One block of C6_BLOCK vehicles, measured: back to back, or ``gap_s`` apart."""
    if gap_s <= 0:
        await run_block(lane, C6_BLOCK, measure=True)
        return
    for _ in range(C6_BLOCK):
        await run_block(lane, 1, measure=True, settle_s=0.0)
        await asyncio.sleep(gap_s)


async def measure(n: int, window: int | None, batch_max: int | None, workdir: Path | None = None,
                  gap_ms: float = VEHICLE_GAP_MS, lane_cpus: frozenset[int] = frozenset()) -> None:
    with tempfile.TemporaryDirectory(prefix="uplink-bench-") as tmp:
        folder = Path(workdir or tmp)
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        pki = make_pki(folder / "pki", lanes=(LANE_ID,))
        journal_db, centre_db, ticks = folder / "journal.db", folder / "centre.db", folder / "ticks.json"
        await asyncio.to_thread(prefill_backlog, journal_db, LANE_ID, n, wall)
        lines = await asyncio.to_thread(payload_lines, journal_db, n)
        quiet = EmulatorSettings(heartbeat_interval=None, redetect_interval=3600.0)
        async with BenchBroker(folder, pki) as broker, \
                RsuEmulator(profile="national", settings=quiet, name="rsu-laned") as emu:
            centre_creds = pki.client(CENTRE)
            centre_log = await asyncio.to_thread((folder / "centre.log").open, "wb")
            with centre_log:
                centre = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "laned.cli", "centre", "run", "--port", str(broker.port), "--ca",
                    str(pki.ca_cert), "--cert", str(centre_creds.cert), "--key", str(centre_creds.key), "--db",
                    str(centre_db), "--log-level", "info", stdin=asyncio.subprocess.DEVNULL, stdout=centre_log,
                    stderr=centre_log)
            daemon = None
            try:
                await wait(lambda: b"connected to" in (folder / "centre.log").read_bytes() or centre.returncode is not None,
                           "the centre to connect", STARTUP_TIMEOUT_S)
                if centre.returncode is not None:
                    raise RuntimeError(f"the centre exited:\n{(folder / 'centre.log').read_text()[-2000:]}")
                config = write_config(folder, emu.path, broker, pki, window, batch_max)
                lane_log = await asyncio.to_thread((folder / "laned.log").open, "wb")
                with lane_log:
                    env = {**os.environ, LANE_CPUS_ENV: ",".join(map(str, sorted(lane_cpus)))} if lane_cpus else None
                    daemon = await asyncio.create_subprocess_exec(
                        sys.executable, str(DAEMON), str(config), str(ticks),
                        stdin=asyncio.subprocess.DEVNULL, stdout=lane_log, stderr=lane_log, env=env)
                await emu.wait_for(lambda: emu.state is RsuState.SEARCHING or daemon.returncode is not None,
                                   timeout=STARTUP_TIMEOUT_S, what="laned to initialise the RSU")
                if daemon.returncode is not None:
                    raise RuntimeError(f"laned exited:\n{(folder / 'laned.log').read_text()[-2000:]}")
                if lane_cpus and os.sched_getaffinity(daemon.pid) != lane_cpus:
                    raise RuntimeError(f"laned runs on CPUs {sorted(os.sched_getaffinity(daemon.pid))}, "
                                       f"not on --lane-cpus {sorted(lane_cpus)}")
                await wait(lambda: centre_stored(centre_db) > 0, "the first row at the centre", STARTUP_TIMEOUT_S)
                t0 = time.monotonic()
                lane = Lane("laned", emu, lane_obu, pid=daemon.pid)
                drain_c6 = len(emu.received("C6"))
                cpu0 = cpu_seconds(daemon.pid)
                broker_pid = broker.pid
                assert broker_pid is not None
                centre_cpu0, broker_cpu0 = cpu_seconds(centre.pid), cpu_seconds(broker_pid)

                async def drain_watch() -> float:
                    # The prefilled rows: the vehicles' own rows keep coming while they pay.
                    await wait(lambda: lane_drained(journal_db, n), "the backlog drained", DRAIN_TIMEOUT_S)
                    return time.monotonic()

                watcher = asyncio.create_task(drain_watch())
                while True:  # at least one block: a small backlog (the smoke test) may drain before it
                    await vehicles(lane, gap_ms / 1e3)
                    if watcher.done():
                        break
                vehicles_end = time.monotonic()  # the C6 samples are those of every block run, the last one whole
                t1 = await watcher
                lane_cpu = cpu_seconds(daemon.pid) - cpu0
                centre_cpu = cpu_seconds(centre.pid) - centre_cpu0
                broker_cpu = cpu_seconds(broker_pid) - broker_cpu0
                c6 = list(lane.samples["B4"])
                idle_c6 = len(emu.received("C6"))
                await wait(lambda: lane_drained(journal_db), "the vehicles' rows delivered too", 60)
                backlog = lane_backlog(journal_db)
                # The same vehicles again with nothing to drain (the link up, the centre acking
                # each vehicle's rows): what the drain costs a C6 is the difference.
                while len(lane.samples["B4"]) < 2 * len(c6):
                    await vehicles(lane, gap_ms / 1e3)
                c6_idle = lane.samples["B4"][len(c6):]
                span = await asyncio.to_thread(drain_seconds, journal_db, centre_db, n)
            finally:
                if daemon is not None:
                    await stop_child(daemon)
            # The transport alone: the centre stopped, a C subscriber counting.
            await stop_child(centre)
            pub = await mosquitto_pub_rate(broker, pki, lines, n)
        recorded = json.loads(ticks.read_text())
        received_c6 = emu.received("C6")
        c6_lane = lane_shares(received_c6, recorded["c6_written"], drain_c6, idle_c6)
        c6_lane_idle = lane_shares(received_c6, recorded["c6_written"], idle_c6, len(received_c6))
        ticked = [(gap, cpu) for at, gap, cpu in recorded["late"] if t0 <= at <= t1]
        gc_passes = [took for at, took, _ in recorded["gc"] if t0 <= at <= t1]
        late = [gap for gap, _ in ticked]
        busy = [cpu for _, cpu in ticked]
        drain = n / span
        emit("drain_tx_per_s", drain, "tx/s")
        emit("mosquitto_pub_msgs_per_s", pub, "msgs/s")
        emit("drain_ratio", drain / pub, "ratio")
        emit("backlog", backlog, "rows")
        emit("max_loop_block_ms", max(late, default=LATE_S) * 1e3, "ms")
        emit("max_loop_busy_ms", max(busy, default=LATE_S) * 1e3, "ms")
        emit("loop_blocks_over_10ms", sum(1 for gap in late if gap > 0.010), "ticks")
        emit("max_gc_ms", max(gc_passes, default=0.0) * 1e3, "ms")
        emit("c6_p50_ms", percentile(c6, 50) * 1e3, "ms")
        emit("c6_p99_ms", percentile(c6, 99) * 1e3, "ms")
        emit("c6_samples", len(c6), "transactions")
        emit("c6_idle_p50_ms", percentile(c6_idle, 50) * 1e3, "ms")
        emit("c6_idle_p99_ms", percentile(c6_idle, 99) * 1e3, "ms")
        emit("c6_lane_p50_ms", percentile(c6_lane, 50) * 1e3, "ms")
        emit("c6_lane_p99_ms", percentile(c6_lane, 99) * 1e3, "ms")
        emit("c6_lane_idle_p99_ms", percentile(c6_lane_idle, 99) * 1e3, "ms")
        emit("drain_s", span, "s")
        emit("lane_cpu_s", lane_cpu, "s")
        emit("centre_cpu_s", centre_cpu, "s")
        emit("broker_cpu_s", broker_cpu, "s")
        emit("transactions", n, "transactions")
        emit("vehicle_gap_ms", gap_ms, "ms")
        emit("lane_cpus", len(lane_cpus), "cpus")
        c6_to = os.environ.get("UPLINK_BENCH_C6")
        if c6_to:  # diagnosis: where laned's own B4-to-C6 time went, for the vehicles of the drain
            recorded_c6 = json.loads(await asyncio.to_thread(Path(c6_to).read_text))
            for stage, values in c6_stages(recorded_c6, t0, vehicles_end).items():
                emit(f"c6_stage_{stage}_p50_ms", percentile(values, 50) * 1e3, "ms")
                emit(f"c6_stage_{stage}_p99_ms", percentile(values, 99) * 1e3, "ms")


def lane_shares(received: list[LogEntry], c6_written: list[float], first: int, end: int) -> list[float]:
    """For the C6 frames the emulator read, ``received[first:end]``, the seconds from each
    one's B4's last byte written to laned's write of that C6 having returned
    (``record_c6_writes``, the same clock): the turnaround without the emulator's own wake-up
    to read the answer. The n-th C6 the emulator read is the n-th laned wrote (paired by
    count, not by time: either process may be preempted between its write and its clock
    read, which would pair a B4 with the next vehicle's C6)."""
    if len(received) != len(c6_written):
        raise RuntimeError(f"the emulator read {len(received)} C6 frames, laned wrote {len(c6_written)}")
    return [written - (e.at - e.turnaround) for e, written in zip(received[first:end], c6_written[first:end])
            if e.turnaround is not None]


def cpu_list(text: str) -> frozenset[int]:
    """``1`` or ``2,3``: CPU numbers for ``--lane-cpus``."""
    try:
        cpus = frozenset(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of CPU numbers") from None
    if not cpus or min(cpus) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: CPU numbers start at 0")
    return cpus


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--transactions", type=int, default=100_000, help="rows in the lane's backlog")
    parser.add_argument("--window", type=int, help="[uplink] window: rows in flight (default: laned's, 2048)")
    parser.add_argument("--batch-max", type=int, help="[uplink] batch_max: rows per message (default: laned's, 64)")
    parser.add_argument("--workdir", type=Path, help="keep the databases and logs here (default: a temporary folder)")
    parser.add_argument("--vehicle-gap-ms", type=float, default=VEHICLE_GAP_MS,
                        help=f"pause after each vehicle before the next (default {VEHICLE_GAP_MS:g}; 0: back to back)")
    parser.add_argument("--lane-cpus", type=cpu_list, default=frozenset(),
                        help="CPUs for laned alone, e.g. 1 (default: every process shares every CPU); the "
                             "broker, the centre and the emulated RSU run on the others, as on a lane PC "
                             "whose centre and broker are elsewhere")
    args = parser.parse_args(argv)
    if args.lane_cpus:
        usable = os.sched_getaffinity(0)
        if not args.lane_cpus <= usable:
            parser.error(f"--lane-cpus: CPU {min(args.lane_cpus - usable)} is not one this process may use "
                         f"({','.join(map(str, sorted(usable)))})")
        if not usable - args.lane_cpus:
            parser.error("--lane-cpus must leave at least one CPU for the broker, the centre and the RSU")
        # Before any thread starts: the broker's and the centre's processes inherit it.
        os.sched_setaffinity(0, usable - args.lane_cpus)
    if args.transactions < 1:
        parser.error("--transactions must be 1 or more")
    if args.vehicle_gap_ms < 0:
        parser.error("--vehicle-gap-ms must be 0 or more")
    asyncio.run(measure(args.transactions, args.window, args.batch_max, args.workdir, args.vehicle_gap_ms,
                        args.lane_cpus))
    return 0


if __name__ == "__main__":
    sys.exit(main())
