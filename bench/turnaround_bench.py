"""RSU turnaround: how fast the real daemon answers B2, B3 and B4, next to a minimal responder.

The RSU gives the lane PC about 1.1 s per frame, but the whole C0…B5 exchange has to fit
while a car drives through the antenna's zone, so the lane's share must stay small. This
measures it end to end, on the same path a serial RSU takes:

* ``laned run --config …`` (``python -m laned.cli``, the production entry point, log level
  ``info`` as in docs/laned.example.toml) in a child process, on the pty of an
  :class:`~laned.sim.rsu_emulator.RsuEmulator` running in this process. The journal is
  SQLite with ``synchronous=FULL`` in a temporary folder; no IO module, no display (the
  barrier part is skipped). Every vehicle is a new OBU with its own card, so none is
  "seen again"; each pays 35.00 (fee table ``fee_table_sim.toml``, station 0102, class 1).
* The floor: a minimal asyncio responder, also a child process (``--serve-floor PTY``),
  reading the lane side of a second emulator's pty with ``add_reader`` and writing a
  pre-encoded answer for each frame (C1, and C6 for a B4; chosen by the frame's type and
  RSCTL byte, nothing decoded). It shows what the pty and one event loop cost by
  themselves.

Turnaround is the emulator's own figure (``LogEntry.turnaround``): from the
``perf_counter`` at which the last byte of the RSU frame was written into the pty to the
one at which the first byte of the answer was read. ``c1_*``: the answers to B2 and B3
(C1); ``c6_*``: the answers to B4 (C6, sent only after the intent is durable);
``floor_*``: the responder's answers to B2, B3 and B4. Percentiles interpolate linearly.

Transactions run back to back: the next OBU enters the zone as soon as the previous
transaction ends (the C1 that answers its B5). The two lanes take turns in blocks
(``--block``), so a change in the machine's load hits both alike; a few transactions of
each are run first and not counted (``--warmup``).

``cpu_ms_per_tx``: the daemon's CPU time (user + system, all its threads: the sum of
``/proc/<pid>/task/*/schedstat`` run times, in ns) over its measured blocks, divided by
their transactions. Each reading is taken with the daemon idle (before a block, and 50 ms
after its last transaction so trailing work is counted); the daemon's 50 ms executor
tick during the blocks is included. The emulator's CPU is not.

laned remembers every vehicle that paid within its re-detection window (300 s by
default) and looks through them on each B2 and B4. Back to back, this run puts all its
vehicles inside that window — far more than a real lane sees in 300 s — so the later
transactions cost more than the first; ``--redetect-window-s`` shows the difference.

Slow-commit journal (issue 8, item 3: C1 p99 must stay ≤ 2 ms however slow the disk).
``--journal-commit-ms`` lists the journals to run with, one complete run (its own daemon,
journal folder and floor) each, in that order; the default ``0 200`` runs the normal
journal and then one whose every commit takes 200 ms longer. ``0`` is the daemon as above.
Any other value starts the daemon through this script (``--serve-laned CONFIG``), which
does what ``laned run --config`` does — load the config, set up logging, ``run_lane`` —
except that it passes ``journal_options={"commit_delay_s": …}``: ``JournalWriter.open``
hands it to ``Journal.open``, so the real writer thread sleeps that long just before each
real ``COMMIT`` (and its fsync) of a transaction that wrote. As a check that the delay
reached that path, such a run fails unless every C6 (sent only after its intent's commit)
came at least that long after its B4. ``c6_*`` then includes the delayed intent commit,
and the wait for the commit of the previous vehicle's B5 result queued before it (commits
run one at a time): it is reported, with no target. The CPU reading after a block waits
for two delayed commits more, so the last transaction's trailing commits are counted.

Prints one JSON object per line: ``{"bench": "turnaround", "metric", "value", "unit",
"journal_commit_ms"}``, the last saying which journal's run the figure is from (0: the
normal journal). When a normal run and a slow one ran, one more line per slow run,
``"metric": "c1_p99_ms_slow_journal"``, puts both side by side: ``value`` is the slow
run's C1 p99 and ``c1_p99_ms`` the normal run's.

    .venv/bin/python bench/turnaround_bench.py [--transactions 2000] [--block 100] [--warmup 20]
                                               [--redetect-window-s 300] [--log-level info]
                                               [--journal-commit-ms 0 200]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from laned.protocol import encode_message, get_profile
from laned.protocol.profiles import national
from laned.protocol.rsctl import reply_rsctl
from laned.sim.rsu_emulator import EmulatorSettings, RsuEmulator, RsuState
from laned.sim.rsu_scenario import ObuScenario

FEE_TABLE = str(resources.files("laned") / "data" / "fee_table_sim.toml")

# Targets (issue 4, item 8).
TARGET_C1_P99_MS = 2.0
TARGET_C6_P99_MS = 5.0
TARGET_CPU_MS_PER_TX = 3.0

FLOOR_OBU = "f100f100"
# Generous: a transaction takes milliseconds (with a slow-commit journal: two of its
# commits); this only stops a hung run.
TX_TIMEOUT_S = 10.0
# The journals run by default: the normal one, and one whose every commit takes 200 ms more.
JOURNAL_COMMIT_MS = [0.0, 200.0]
STARTUP_TIMEOUT_S = 60.0
SETTLE_S = 0.05
# RSCTL of RSU frames (RSU_PROTOCOL.md): X8 with X 0–7, and 98 for the first after power-up.
RSU_RSCTLS = [(x << 4) | 0x08 for x in (0, 1, 2, 3, 4, 5, 6, 7, 9)]


# -- the floor: a minimal responder -------------------------------------------------------

def floor_answers(obu_id: bytes) -> dict[tuple[int, int], bytes]:
    """(RSCTL, frame type) of an RSU frame → the wire bytes that answer it."""
    profile = get_profile("national")
    cont = national.Continue(obu_id=obu_id, obu_div_factor=bytes(8))
    charge = national.Charge(obu_id=obu_id, card_div_factor=bytes(8), reserved=bytes(4), consume_money=35_00,
                             purchase_time=dt.datetime(2026, 1, 1, 12, 0, 0), station=bytes(40))
    answers: dict[tuple[int, int], bytes] = {}
    for rsctl in RSU_RSCTLS:
        for frame_type in (0xB2, 0xB3, 0xB4, 0xB5):
            msg = charge if frame_type == 0xB4 else cont
            answers[(rsctl, frame_type)] = encode_message(profile, msg, rsctl=reply_rsctl(rsctl))
    return answers


async def serve_floor(path: str) -> None:
    """Answer every frame on the tty ``path`` with its pre-encoded answer, until stdin closes."""
    answers = floor_answers(bytes.fromhex(FLOOR_OBU))
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    buf = bytearray()

    def readable() -> None:
        try:
            buf.extend(os.read(fd, 4096))
        except BlockingIOError:
            return
        while True:
            # Classic envelope: FF FF, RSCTL, TYPE … BCC, FF. RSU RSCTLs and B2–B5 are never escaped.
            start = buf.find(b"\xff\xff")
            end = buf.find(b"\xff", start + 2) if start >= 0 else -1
            if end < 0:
                return
            answer = answers.get((buf[start + 2], buf[start + 3]))
            del buf[:end + 1]
            if answer is not None:
                os.write(fd, answer)

    loop = asyncio.get_running_loop()
    loop.add_reader(fd, readable)
    print("ready", flush=True)
    # The bench closes our stdin to stop us.
    await loop.run_in_executor(None, sys.stdin.read)
    loop.remove_reader(fd)
    os.close(fd)


# -- the daemon ---------------------------------------------------------------------------

def serve_laned(config: str, commit_ms: float) -> int:
    """``laned run --config CONFIG`` (laned/cli), with every journal commit ``commit_ms`` slower."""
    import logging

    from laned.app import run_lane
    from laned.config import load_config
    from laned.logs import setup_logging

    cfg = load_config(config)
    setup_logging(cfg.log.level, cfg.log.format)
    logging.getLogger("laned").info("configuration %s: %s; bench: every journal commit %g ms slower", config,
                                    cfg.summary(), commit_ms)
    asyncio.run(run_lane(cfg, journal_options={"commit_delay_s": commit_ms / 1e3}))
    return 0


def write_config(folder: Path, pty: str, log_level: str, redetect_window_s: float) -> Path:
    path = folder / "laned.toml"
    path.write_text(f"""log_level = "{log_level}"

[lane]
lane_id = "G0001-0201-03"
network = "3701"
station = "0201"
lane_number = 3
direction = "exit"
redetect_window_s = {redetect_window_s}

[rsu]
profile = "national"
transport = "serial"
port = "{pty}"
baud = 115200

[journal]
path = "{folder / 'journal.db'}"

[fee_table]
path = "{FEE_TABLE}"
""")
    return path


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid``, all threads, from the scheduler's run times."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # the thread ended between listing and reading
    return total / 1e9


async def stop_child(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


# -- running transactions -----------------------------------------------------------------

@dataclass
class Lane:
    """One emulated RSU and whatever answers it, with what was measured so far."""

    name: str
    emu: RsuEmulator
    obu_factory: Callable[[int], ObuScenario]  # the i-th vehicle
    pid: int | None = None  # the daemon, whose CPU is measured
    done: int = 0  # transactions run
    events_seen: int = 0
    samples: dict[str, list[float]] = field(default_factory=lambda: {"B2": [], "B3": [], "B4": []})
    cpu_s: float = 0.0
    measured: int = 0

    def ended(self) -> int:
        """Transactions ended since the last call."""
        events = self.emu.events
        n = sum(1 for e in events[self.events_seen:] if e.kind == "transaction_end")
        self.events_seen = len(events)
        return n


def lane_obu(i: int) -> ObuScenario:
    return ObuScenario(obu_id=f"{0x10000000 + i:08x}", card_number=f"2301{i:012d}", balance=100_00)


def floor_obu(i: int) -> ObuScenario:
    del i  # the responder's frames are fixed, so the OBU id is too; each arrival replaces the last
    return ObuScenario(obu_id=FLOOR_OBU, balance=100_00)


async def run_block(lane: Lane, count: int, measure: bool, settle_s: float = SETTLE_S) -> None:
    """``count`` transactions back to back; with ``measure``, their turnarounds and CPU."""
    emu = lane.emu
    log_start, charges_start = len(emu.log), len(emu.charges)
    lane.ended()
    cpu0 = cpu_seconds(lane.pid) if measure and lane.pid else 0.0
    for _ in range(count):
        emu.add_obu(lane.obu_factory(lane.done), arrive_in=0)
        lane.done += 1
        await emu.wait_for(lane.ended, timeout=TX_TIMEOUT_S, what=f"{lane.name}: a transaction to end")
    if len(emu.charges) - charges_start != count:
        raise RuntimeError(f"{lane.name}: {count} transactions but {len(emu.charges) - charges_start} charges; "
                           f"emulator counters {dict(emu.counters)}")
    if not measure:
        return
    if lane.pid:
        await asyncio.sleep(settle_s)
        lane.cpu_s += cpu_seconds(lane.pid) - cpu0
    lane.measured += count
    for stage, answer, turnaround in answered(emu, log_start):
        if stage in lane.samples:
            expected = "C6" if stage == "B4" else "C1"
            if answer != expected:
                raise RuntimeError(f"{lane.name}: {stage} answered by {answer}, expected {expected}")
            lane.samples[stage].append(turnaround)


def answered(emu: RsuEmulator, since: int) -> list[tuple[str, str, float]]:
    """(RSU frame, answer, turnaround s) for each answer logged from ``emu.log[since]`` on."""
    frame_by_rsctl: dict[int, str] = {}
    out = []
    for e in emu.log[since:]:
        if e.direction == "tx" and e.rsctl is not None:
            frame_by_rsctl[e.rsctl] = e.name
        elif e.direction == "rx" and e.turnaround is not None and e.answers in frame_by_rsctl:
            out.append((frame_by_rsctl[e.answers], e.name, e.turnaround))
    return out


# -- figures ------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0–100), linear interpolation between the closest ranks."""
    s = sorted(values)
    if not s:
        raise ValueError("no values")
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def emit(metric: str, value: float, unit: str, commit_ms: float, **extra: float) -> None:
    row = {"bench": "turnaround", "metric": metric, "value": round(value, 4), "unit": unit,
           "journal_commit_ms": int(commit_ms) if commit_ms.is_integer() else commit_ms}
    row.update({k: round(v, 4) for k, v in extra.items()})
    print(json.dumps(row), flush=True)


def c1_p99_ms(lane: Lane) -> float:
    return percentile(lane.samples["B2"] + lane.samples["B3"], 99) * 1e3


def report(lane: Lane, floor: Lane, commit_ms: float) -> None:
    c1 = lane.samples["B2"] + lane.samples["B3"]
    c6 = lane.samples["B4"]
    fl = floor.samples["B2"] + floor.samples["B3"] + floor.samples["B4"]
    for name, values in (("c1", c1), ("c6", c6), ("floor", fl)):
        emit(f"{name}_p50_ms", percentile(values, 50) * 1e3, "ms", commit_ms)
        emit(f"{name}_p99_ms", percentile(values, 99) * 1e3, "ms", commit_ms)
    emit("cpu_ms_per_tx", lane.cpu_s * 1e3 / lane.measured, "ms", commit_ms)
    emit("transactions", lane.measured, "transactions", commit_ms)


def compare(runs: dict[float, Lane]) -> None:
    """C1 p99 of each slow-commit run next to the normal journal's, when both ran."""
    normal = runs.get(0.0)
    if normal is None:
        return
    for commit_ms, lane in runs.items():
        if commit_ms > 0:
            emit("c1_p99_ms_slow_journal", c1_p99_ms(lane), "ms", commit_ms, c1_p99_ms=c1_p99_ms(normal))


# -- the run ------------------------------------------------------------------------------

async def start_daemon(folder: Path, emu: RsuEmulator, args: argparse.Namespace,
                       commit_ms: float) -> asyncio.subprocess.Process:
    config = write_config(folder, emu.path, args.log_level, args.redetect_window_s)
    if commit_ms > 0:  # laned run, with the delay passed on to the journal writer
        command = [__file__, "--serve-laned", str(config), "--journal-commit-ms", str(commit_ms)]
    else:
        command = ["-m", "laned.cli", "run", "--config", str(config)]
    # The child writes its log there; the file is opened off the loop (the emulator runs on it).
    log = await asyncio.to_thread((folder / "laned.log").open, "wb")
    with log:
        proc = await asyncio.create_subprocess_exec(sys.executable, *command,
                                                    stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        await emu.wait_for(lambda: emu.state is RsuState.SEARCHING or proc.returncode is not None,
                           timeout=STARTUP_TIMEOUT_S, what="laned to initialise the RSU (C0, C1)")
    except TimeoutError:
        await stop_child(proc)
        raise
    if proc.returncode is not None:
        raise RuntimeError(f"laned exited with {proc.returncode}:\n{(folder / 'laned.log').read_text()[-2000:]}")
    return proc


async def start_floor(emu: RsuEmulator) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(sys.executable, __file__, "--serve-floor", emu.path,
                                                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), STARTUP_TIMEOUT_S)
    if line.strip() != b"ready":
        raise RuntimeError(f"the floor responder did not start: {line!r}")
    return proc


def check_commit_delay(lane: Lane, commit_ms: float) -> None:
    """Every C6 waits for its intent's commit: with the delay really on the commit path, none is faster."""
    fastest = min(lane.samples["B4"]) * 1e3
    if fastest < commit_ms:
        raise RuntimeError(f"journal commits delayed by {commit_ms:g} ms, but a C6 came {fastest:.2f} ms after its "
                           "B4: the delay did not reach the journal's commits")


async def measure(args: argparse.Namespace, commit_ms: float) -> tuple[Lane, Lane]:
    # No heartbeats (they would interleave with the frames measured); no OBU is ever seen again.
    quiet = dict(heartbeat_interval=None, redetect_interval=3600.0)
    with tempfile.TemporaryDirectory(prefix="turnaround-bench-") as tmp:
        async with RsuEmulator(profile="national", settings=EmulatorSettings(**quiet), name="rsu-laned") as lane_emu, \
                RsuEmulator(profile="national", settings=EmulatorSettings(require_init=False, **quiet),
                            name="rsu-floor") as floor_emu:
            daemon = await start_daemon(Path(tmp), lane_emu, args, commit_ms)
            lane = Lane("laned", lane_emu, lane_obu, pid=daemon.pid)
            floor: Lane | None = None
            responder: asyncio.subprocess.Process | None = None
            try:
                responder = await start_floor(floor_emu)
                floor = Lane("floor", floor_emu, floor_obu)
                await run_block(floor, args.warmup, measure=False)
                await run_block(lane, args.warmup, measure=False)
                left = args.transactions
                while left:
                    n = min(args.block, left)
                    await run_block(floor, n, measure=True)
                    # Trailing work: the last B5 result's commit (and room for one more).
                    await run_block(lane, n, measure=True, settle_s=SETTLE_S + 2 * commit_ms / 1e3)
                    left -= n
            finally:
                await stop_child(daemon)
                if responder is not None:
                    assert responder.stdin is not None
                    responder.stdin.close()
                    await stop_child(responder)
    assert floor is not None
    return lane, floor


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--transactions", type=int, default=2000, help="measured transactions of each (default 2000)")
    ap.add_argument("--block", type=int, default=100, help="transactions per turn, laned and floor alternating "
                    "(default 100)")
    ap.add_argument("--warmup", type=int, default=20, help="transactions run first and not counted (default 20)")
    ap.add_argument("--log-level", default="info", help="laned's log level (default info, as in production)")
    ap.add_argument("--redetect-window-s", type=float, default=300.0,
                    help="laned's re-detection window (default 300, laned's default); every vehicle paid within "
                    "it is kept, and this run packs far more vehicles into it than a real lane does")
    ap.add_argument("--journal-commit-ms", type=float, nargs="+", default=JOURNAL_COMMIT_MS, metavar="MS",
                    help="one run per value, each journal commit that much slower (0: the normal journal); "
                    "default 0 200: the normal journal, then a 200 ms slow-commit one")
    ap.add_argument("--serve-floor", metavar="PTY", help=argparse.SUPPRESS)
    ap.add_argument("--serve-laned", metavar="CONFIG", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_floor:
        asyncio.run(serve_floor(args.serve_floor))
        return 0
    if args.serve_laned:
        return serve_laned(args.serve_laned, args.journal_commit_ms[0])
    if args.transactions < 1 or args.block < 1 or args.warmup < 0:
        ap.error("--transactions and --block must be at least 1, --warmup at least 0")
    if any(ms < 0 for ms in args.journal_commit_ms) or len(set(args.journal_commit_ms)) != len(args.journal_commit_ms):
        ap.error("--journal-commit-ms values must be at least 0 and different")
    runs: dict[float, Lane] = {}
    for commit_ms in args.journal_commit_ms:
        lane, floor = asyncio.run(measure(args, commit_ms))
        if commit_ms > 0:
            check_commit_delay(lane, commit_ms)
        report(lane, floor, commit_ms)
        runs[commit_ms] = lane
    compare(runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
