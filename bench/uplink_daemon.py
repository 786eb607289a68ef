"""The daemon side of ``uplink_bench.py``: ``laned run --config CONFIG`` with the bench's probes.

Run by the bench as a child process (``python bench/uplink_daemon.py CONFIG TICKS``), it
adds to the daemon a ticker task on its event loop that records every wake-up later than
1 ms, with the loop thread's own CPU in that gap, and every garbage collection pass over
1 ms; both go to the file ``TICKS`` (JSON) when the daemon stops. For diagnosis, by
environment: ``UPLINK_BENCH_C6=FILE`` times laned's B4-to-C6 path (:func:`time_c6_path`,
which the bench pairs with :func:`c6_stages`), ``UPLINK_BENCH_SLOW=FILE`` lists the event
loop's slowest callbacks, ``UPLINK_BENCH_PROFILE=FILE`` profiles the loop thread,
``UPLINK_BENCH_STALLS=FILE`` samples the loop thread's stack whenever the loop is more than
5 ms late (:class:`StallSampler`).
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import cProfile
import gc
import json
import os
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

from laned.journal.store import Journal

TICK_S = 0.001  # the daemon's ticker
LANE_CPUS_ENV = "UPLINK_BENCH_LANE_CPUS"  # the CPUs laned runs on, set by ``uplink_bench.py --lane-cpus``
LATE_S = 0.001  # a tick later than this is recorded (none: the loop was never blocked longer)


def serve_laned(config: str, ticks: str) -> int:
    """``laned run --config CONFIG``, with a ticker on its loop; the late ticks go to ``ticks`` at the end."""
    from laned.app import run_lane
    from laned.config import load_config
    from laned.logs import setup_logging

    cfg = load_config(config)
    setup_logging(cfg.log.level, cfg.log.format)
    late: list[tuple[float, float, float]] = []
    gc_passes: list[tuple[float, float, int]] = []  # (end, seconds, generation) of each gc pass over 1 ms
    gc_started = [0.0]

    def gc_watch(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_started[0] = time.monotonic()
        else:
            took = time.monotonic() - gc_started[0]
            if took > 0.001:
                gc_passes.append((time.monotonic(), took, info["generation"]))

    gc.callbacks.append(gc_watch)

    stalls_to = os.environ.get("UPLINK_BENCH_STALLS")  # what the loop thread runs when it is late, for diagnosis
    stalls = StallSampler() if stalls_to else None

    async def ticker() -> None:
        last, last_cpu = time.monotonic(), time.thread_time()
        if stalls is not None:
            stalls.start(threading.get_ident())
        while True:
            await asyncio.sleep(TICK_S)
            now, cpu = time.monotonic(), time.thread_time()
            if stalls is not None:
                stalls.ticked = now
            if now - last - TICK_S > LATE_S:
                # CLOCK_MONOTONIC: the bench reads the same clock. The loop thread's own CPU
                # in the gap tells code that held the loop from a thread that was not running
                # (the GIL held by another thread, or no core free).
                late.append((now, now - last - TICK_S, cpu - last_cpu))
            last, last_cpu = now, cpu

    slow_to = os.environ.get("UPLINK_BENCH_SLOW")  # the loop's slowest callbacks, for diagnosis
    slow: list[tuple[float, float, str]] = []
    if slow_to:
        run_handle = asyncio.events.Handle._run

        def timed_run(handle: asyncio.events.Handle) -> None:
            start, cpu = time.monotonic(), time.thread_time()
            run_handle(handle)
            took = time.monotonic() - start
            if took > 0.005:
                owner = getattr(getattr(handle, "_callback", None), "__self__", None)
                what = (f"task {owner.get_name()} {owner.get_coro()!r}" if isinstance(owner, asyncio.Task)
                        else repr(handle))
                slow.append((took, time.thread_time() - cpu, f"@{start:.3f} {what}"[:300]))

        asyncio.events.Handle._run = timed_run  # type: ignore[method-assign, assignment]

    c6_written = record_c6_writes()
    c6_to = os.environ.get("UPLINK_BENCH_C6")  # where laned's own B4-to-C6 times go, for diagnosis
    c6_path = time_c6_path(c6_written) if c6_to else None

    async def main() -> None:
        task = asyncio.create_task(ticker())
        try:
            await run_lane(cfg)
        finally:
            task.cancel()
            if stalls is not None:
                stalls.stop()  # the loop no longer ticks: from here on it would always look late

    profile_to = os.environ.get("UPLINK_BENCH_PROFILE")  # where the loop thread goes (cProfile), for diagnosis
    profiler = cProfile.Profile() if profile_to else None
    if profiler is not None:
        profiler.enable()
    try:
        asyncio.run(main())
    finally:
        if profiler is not None and profile_to:
            profiler.disable()
            profiler.dump_stats(profile_to)
        # After the loop: the daemon has stopped.
        Path(ticks).write_text(json.dumps({"late": late, "gc": gc_passes, "c6_written": c6_written}))
        if c6_to and c6_path is not None:
            Path(c6_to).write_text(json.dumps(c6_path))
        if stalls is not None and stalls_to:
            Path(stalls_to).write_text(stalls.report())
        if slow_to:
            Path(slow_to).write_text("\n".join(f"{took * 1e3:7.2f} ms (cpu {cpu * 1e3:6.2f}) {what}"
                                               for took, cpu, what in sorted(slow, reverse=True)))
    return 0


class StallSampler:
    """While the loop is later than ``STALL_S`` for its ticker, sample the loop thread's stack
    every millisecond from a thread of its own (diagnosis only, ``UPLINK_BENCH_STALLS``).

    A sample shows what the loop thread was running, or the call it was waiting in (for the
    GIL or a core) when the sampler got the GIL, with the thread's kernel state (``R``:
    running or waiting for a core; ``S``: asleep, e.g. waiting for the GIL) and where the
    daemon's other threads were; :meth:`report` counts the samples by all of that.
    """

    STALL_S = 0.005
    DEPTH = 10  # innermost frames kept per sample

    def __init__(self) -> None:
        self.ticked = time.monotonic()  # the ticker's last wake-up (set on the loop)
        self.samples: collections.Counter[str] = collections.Counter()
        self.stalled_s: collections.Counter[str] = collections.Counter()  # how late the loop was, summed
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, loop_thread: int) -> None:
        self._thread = threading.Thread(target=self._run, args=(loop_thread, threading.get_native_id()),
                                        name="stall-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self, loop_thread: int, loop_tid: int) -> None:
        while not self._stopped.wait(0.001):
            late = time.monotonic() - self.ticked - TICK_S
            if late <= self.STALL_S:
                continue
            frames = sys._current_frames()  # noqa: SLF001 - the standard way to sample a thread
            frame = frames.get(loop_thread)
            if frame is None:
                return
            # R: running or waiting for a core; S: asleep (in a wait, e.g. for the GIL).
            with open(f"/proc/self/task/{loop_tid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
            others = "; ".join(f"{t.name}: {_top(frames[t.ident])}" for t in threading.enumerate()
                               if t.ident in frames and t.ident not in (loop_thread, threading.get_ident()))
            stack = "\n".join(f"  {f.filename.rsplit('/', 2)[-1]}:{f.lineno} {f.name}"
                              for f in traceback.extract_stack(frame)[-self.DEPTH:])
            key = f"loop thread {state}; others: {others}\n{stack}"
            self.samples[key] += 1
            self.stalled_s[key] += late

    def report(self) -> str:
        return "\n\n".join(f"{n} samples (loop late {self.stalled_s[stack] * 1e3 / n:.1f} ms on average):\n{stack}"
                            for stack, n in self.samples.most_common(40))


def _top(frame: Any) -> str:
    """A thread's innermost two frames, in one line."""
    return " < ".join(f"{f.filename.rsplit('/', 1)[-1]}:{f.lineno} {f.name}"
                      for f in reversed(traceback.extract_stack(frame)[-2:]))


def record_c6_writes() -> list[float]:
    """The CLOCK_MONOTONIC time each C6 had been written to the RSU's port, as laned's send
    returned (one list append per C6). The emulated RSU stamps the B4's last byte written on
    the same clock, so the bench can tell laned's share of a C6's turnaround from the
    emulator's own wake-up to read it (``c6_lane_*``)."""
    from laned.executor import LaneExecutor

    written: list[float] = []
    send = LaneExecutor._send

    def noting_send(self: Any, action: Any, now: float) -> None:
        send(self, action, now)
        if action.message.type_name == "C6":
            written.append(time.monotonic())

    LaneExecutor._send = noting_send  # type: ignore[method-assign]
    return written


def time_c6_path(c6_written: list[float]) -> dict[str, list[Any]]:
    """Times along laned's B4-to-C6 path, recorded by wrapping its methods (diagnosis only,
    ``UPLINK_BENCH_C6``): each B4's arrival, each intent's submission to the journal
    writer, the start and end of its ``record_intent`` (INSERT and the commit with its
    fsync, and how long of it the writer thread waited for a core) and its result back, and
    each C6 written (``c6_written``, :func:`record_c6_writes`). :func:`c6_stages` pairs them."""
    from laned.drivers.rsu import RsuLink
    from laned.executor import LaneExecutor

    times: dict[str, list[Any]] = {"b4": [], "c6": c6_written, "intents": [], "ops": []}

    def run_queue_wait() -> float:
        """Seconds this thread has spent runnable but waiting for a core (the kernel's schedstat)."""
        with open("/proc/thread-self/schedstat") as f:
            return int(f.read().split()[1]) / 1e9

    deliver = RsuLink._deliver
    journal_intent, record_intent = LaneExecutor._journal_intent, Journal.record_intent

    def timed_deliver(self: Any, item: Any, arrived_at: float) -> None:
        if getattr(getattr(item, "message", None), "type_name", "") == "B4":
            times["b4"].append(arrived_at)
        deliver(self, item, arrived_at)

    def timed_journal_intent(self: Any, a: Any) -> None:
        submitted, answer = time.monotonic(), self._answer

        def timed_answer(fut: Any, done: Any) -> None:
            fut.add_done_callback(lambda f: times["intents"].append((submitted, time.monotonic())))
            answer(fut, done)
        self._answer = timed_answer
        try:
            journal_intent(self, a)
        finally:
            del self._answer

    def timed_record_intent(self: Any, *args: Any, **kwargs: Any) -> Any:
        started, waited, cpu = time.monotonic(), run_queue_wait(), time.thread_time()
        try:
            return record_intent(self, *args, **kwargs)
        finally:
            times["ops"].append((started, time.monotonic(), run_queue_wait() - waited, time.thread_time() - cpu))

    RsuLink._deliver = timed_deliver  # type: ignore[method-assign]
    LaneExecutor._journal_intent = timed_journal_intent  # type: ignore[method-assign]
    Journal.record_intent = timed_record_intent  # type: ignore[method-assign]
    return times


def c6_stages(times: dict[str, list[Any]], since: float, until: float) -> dict[str, list[float]]:
    """Seconds per stage for each B4 answered: B4 to C6 in all, and of it the lane machine
    (B4 to the intent's submission), the wait in the journal writer's queue, the INSERT
    with its commit (fsync) and, of that, the writer thread's wait for a core
    (``insert_commit_runq``), its own CPU (``insert_commit_cpu``) and the rest, asleep in the
    fsync or waiting for the GIL (``insert_commit_asleep``), and the way back to the C6 written."""
    c6 = sorted(times["c6"])
    intents = sorted(times["intents"])
    ops = sorted(times["ops"])
    submits, starts = [s for s, _ in intents], [op[0] for op in ops]
    out: dict[str, list[float]] = {k: [] for k in ("total", "machine", "queue", "insert_commit",
                                                   "insert_commit_runq", "insert_commit_cpu", "insert_commit_asleep", "back")}
    for b4 in (t for t in times["b4"] if since <= t <= until):
        i, j = bisect.bisect_left(c6, b4), bisect.bisect_left(submits, b4)
        if i == len(c6) or j == len(intents):
            continue
        submitted, done = intents[j]
        k = bisect.bisect_left(starts, submitted)
        if k == len(ops) or ops[k][1] > done:
            continue
        started, ended, runq, cpu = ops[k]
        for key, value in (("total", c6[i] - b4), ("machine", submitted - b4), ("queue", started - submitted),
                           ("insert_commit", ended - started), ("insert_commit_runq", runq),
                           ("insert_commit_cpu", cpu), ("insert_commit_asleep", ended - started - runq - cpu),
                           ("back", c6[i] - ended)):
            out[key].append(value)
    return out


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: uplink_daemon.py CONFIG TICKS (started by uplink_bench.py)")
    if cpus := os.environ.get(LANE_CPUS_ENV):  # before any thread starts: every thread inherits it
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
    sys.exit(serve_laned(sys.argv[1], sys.argv[2]))
