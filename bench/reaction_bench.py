"""Barrier reaction: safety loop occupied at the IO module → the raise (reverse) command there.

Rule 1 of laned: the barrier never moves down onto a vehicle. While the arm moves down, a
vehicle entering the safety loop must reverse it. This measures how long that takes, end
to end through the real daemon stack, in one process on one event loop:

* ``laned.app.run_lane`` (what ``laned run`` runs): the executor, the lane machine, the
  SQLite journal on its writer thread in a temporary folder, the health monitor, and the
  Modbus IO driver (``ModbusLaneIO``: it polls the safety loop at
  ``poll.safety_loop_hz``, publishes changes, and writes each barrier command as coil
  writes, each read back: raise = "lower" coil off, read back, "raise" coil on, read back);
* the emulated RSU on a pty (``RsuEmulator``), initialised by the lane, with no vehicle;
* the emulated IO module (``laned.sim.modbus_devices.EmulatedIoModule``, default 8DI/8DO
  profile with the poll rate under test) on a pymodbus Modbus TCP server on 127.0.0.1.

Each run: the lane lowers the arm by itself when the loop is clear (``hold_off_s`` after
the last vehicle left). When the "lower" coil goes on at the module, the bench waits a
random time, 10 ms plus a uniform draw over one poll interval (so the moment falls at a
random phase of the input poll), then sets the safety-loop input occupied on the module
(stamped ``time.monotonic()`` just before) and waits for the "raise" coil to go on (the
module's write listener, ``EmulatedDevice.listeners``, stamps each applied write with
``time.monotonic()``: the same clock). reaction = raise written − loop occupied. It
includes the wait for the next poll, the poll's round trip, the lane machine's step, the
IO worker's queue and the "lower off" write and read-back before the "raise on" write;
the emulator's work is on the same loop. Then the loop is cleared and the next run waits
for the next lower.

On the way: the lane sees a vehicle on the loop under a lowering arm with no payment
waiting (a follow-car) and raises in that same step (``LaneMachine._unpaid``; the
interlock's own reverse, ``BarrierInterlock.tick``, would give the same raise in the same
step if it had not). The limit switches are played simply: the up switch closes when the
"raise" coil goes on and opens when "lower" goes on; the down switch never closes (the
arm is reversed on its way down). A raise that does not come within 5 s stops the bench
with an error: that is a broken Rule 1, not a slow figure.

The lane runs with ``[barrier] hold_off_s = 0.2`` (the least allowed) and
``release_after_s = 0.5`` to keep a run short, and ``chatter_window_s = 0.5``: the bench
toggles the loop about every 0.35 s, which the default 6 changes in 1 s would take for a
chattering loop (a latched interlock fault, with nothing lowered until it is released);
none of these is on the measured path. Everything else is the default configuration.

Prints one JSON object: ``{"bench": "barrier_reaction", "runs", "p50_ms", "p90_ms",
"p99_ms", "max_ms", "min_ms", "mean_ms", "poll_ms", "safety_loop_hz",
"reaction_limit_ms", "over_limit", "decide_p50_ms", "decide_max_ms", "write_p50_ms",
"write_max_ms", …}``: ``reaction_limit_ms`` is the configured bound (``[barrier]
reaction_limit_ms``, default 400) and ``over_limit`` how many runs exceeded it;
``decide_*`` is loop occupied → the lane's raise decision (the executor's observation of
the MoveBarrier), ``write_*`` that decision → the raise coil written. Percentiles
interpolate linearly between the closest ranks.

    .venv/bin/python bench/reaction_bench.py [--runs 200] [--poll-ms 50] [--reaction-limit-ms 400] [--seed 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from laned.app import run_lane
from laned.config import parse_config
from laned.drivers.device_profiles import DEFAULT_IO_MODULE_PROFILE, MIN_SAFETY_LOOP_HZ
from laned.drivers.lane_io import Output, Signal
from laned.drivers.modbus_bus import TcpLink
from laned.observation import Observation
from laned.sim.modbus_devices import EmulatedIoModule, ModbusDeviceServer, WriteRecord
from laned.sim.rsu_emulator import EmulatorSettings, RsuEmulator

FEE_TABLE = str(resources.files("laned") / "data" / "fee_table_sim.toml")
IO_SLAVE = 2
DEFAULT_RUNS = 200
DEFAULT_POLL_MS = 1000 / MIN_SAFETY_LOOP_HZ  # the default profile's 20 Hz
SETTLE_S = 0.010  # after the lower coil went on, before the random phase starts
STEP_TIMEOUT_S = 5.0  # a lower or a raise not seen by then is an error
START_TIMEOUT_S = 20.0  # the daemon up and its first lower (a loaded 2-core box)
BARRIER = {"hold_off_s": 0.2, "release_after_s": 0.5, "chatter_window_s": 0.5}


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0–100, in steps of 0.1), linear interpolation between the
    closest ranks."""
    if len(values) < 2:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[round(q * 10) - 1]


class ArmWatch:
    """The emulated module's coil writes: when "raise" and "lower" went on; plays the limit
    switches (up closes on raise, opens on lower; down never closes)."""

    def __init__(self, io: EmulatedIoModule) -> None:
        self.io = io
        self.on = {Output.BARRIER_RAISE: False, Output.BARRIER_LOWER: False}
        self.went_on: dict[Output, list[float]] = {Output.BARRIER_RAISE: [], Output.BARRIER_LOWER: []}
        self.changed = asyncio.Event()
        io.listeners.append(self.written)

    def written(self, record: WriteRecord) -> None:
        if record.table != "coils":
            return
        for output, times in self.went_on.items():
            now_on = self.io.output_active(output)
            if now_on and not self.on[output]:
                times.append(record.at)
                if output is Output.BARRIER_RAISE:
                    self.io.set_input(Signal.BARRIER_DOWN, False)
                    self.io.set_input(Signal.BARRIER_UP, True)
                else:
                    self.io.set_input(Signal.BARRIER_UP, False)
            self.on[output] = now_on
        self.changed.set()

    async def went_on_after(self, output: Output, after: float, timeout: float,
                            check: Callable[[], None] = lambda: None) -> float:
        """The time ``output`` went on at or after ``after`` (waiting for it)."""
        deadline = time.monotonic() + timeout
        while True:
            found = next((t for t in self.went_on[output] if t >= after), None)
            if found is not None:
                return found
            check()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the {output} coil did not go on within {timeout:g} s")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except TimeoutError:
                pass  # looked at once more, then reported


def config_data(folder: Path, rsu_port: str, modbus_port: int, safety_loop_hz: float,
                reaction_limit_ms: int | None) -> dict[str, Any]:
    profile = DEFAULT_IO_MODULE_PROFILE.model_dump(mode="json")
    profile["poll"]["safety_loop_hz"] = safety_loop_hz
    barrier: dict[str, Any] = dict(BARRIER)
    if reaction_limit_ms is not None:
        barrier["reaction_limit_ms"] = reaction_limit_ms
    return {
        "lane": {"lane_id": "G0001-0201-03", "network": "3701", "station": "0201", "lane_number": 3,
                 "direction": "exit"},
        "rsu": {"profile": "national", "transport": "serial", "port": rsu_port, "baud": 115200},
        "journal": {"path": str(folder / "journal.db")},
        "fee_table": {"path": FEE_TABLE},
        "devices": {"io": {"kind": "modbus_tcp", "host": "127.0.0.1", "port": modbus_port, "slave": IO_SLAVE,
                           "profile": profile}},
        "barrier": barrier,
    }


async def measure(runs: int = DEFAULT_RUNS, poll_ms: float = DEFAULT_POLL_MS, *, seed: int = 1,
                  reaction_limit_ms: int | None = None) -> dict[str, Any]:
    """Run the daemon against the emulated IO module and time ``runs`` reversals."""
    rng = random.Random(seed)
    poll_s = poll_ms / 1000
    io = EmulatedIoModule(IO_SLAVE)
    watch = ArmWatch(io)
    raise_decided: list[float] = []

    def observe(o: Observation) -> None:
        if o.kind == "barrier" and o.detail.get("command") == "raise":
            raise_decided.append(o.at)

    reactions: list[float] = []
    decide: list[float] = []
    write: list[float] = []
    with tempfile.TemporaryDirectory(prefix="reaction-bench-") as tmp:
        quiet = EmulatorSettings(heartbeat_interval=None, redetect_interval=3600.0)
        async with RsuEmulator(profile="national", settings=quiet, name="rsu") as emu, \
                ModbusDeviceServer([io], transport="tcp") as server:
            link = server.link
            assert isinstance(link, TcpLink)
            cfg = parse_config(config_data(Path(tmp), emu.path, link.port, 1 / poll_s, reaction_limit_ms),
                               source="reaction bench")
            stop = asyncio.Event()
            daemon = asyncio.create_task(run_lane(cfg, stop=stop, observe=observe), name="laned")

            def alive() -> None:
                if daemon.done():
                    daemon.result()  # what stopped the daemon
                    raise RuntimeError("the daemon stopped")

            try:
                last_clear = 0.0
                timeout = START_TIMEOUT_S
                for _ in range(runs):
                    lowered = await watch.went_on_after(Output.BARRIER_LOWER, last_clear, timeout, alive)
                    timeout = STEP_TIMEOUT_S
                    # A random phase of the input poll: the poll runs on its own schedule.
                    await asyncio.sleep(max(0.0, lowered + SETTLE_S + rng.uniform(0, poll_s) - time.monotonic()))
                    if not io.output_active(Output.BARRIER_LOWER) or io.input_active(Signal.BARRIER_DOWN):
                        raise RuntimeError("the arm is not moving down when the vehicle comes")
                    occupied_at = time.monotonic()
                    io.set_input(Signal.SAFETY_LOOP, True)
                    raised = await watch.went_on_after(Output.BARRIER_RAISE, occupied_at, STEP_TIMEOUT_S, alive)
                    decided = next((t for t in raise_decided if t >= occupied_at), None)
                    if decided is None:
                        raise RuntimeError("the raise reached the module but the lane did not report deciding it")
                    reactions.append(raised - occupied_at)
                    decide.append(decided - occupied_at)
                    write.append(raised - decided)
                    io.set_input(Signal.SAFETY_LOOP, False)
                    last_clear = time.monotonic()
            finally:
                stop.set()
                await asyncio.wait_for(daemon, 15)
    limit_ms = cfg.barrier.reaction_limit_ms

    def ms(value: float) -> float:
        return round(value * 1e3, 2)

    return {
        "bench": "barrier_reaction", "runs": len(reactions), "transport": "tcp",
        "p50_ms": ms(percentile(reactions, 50)), "p90_ms": ms(percentile(reactions, 90)),
        "p99_ms": ms(percentile(reactions, 99)), "max_ms": ms(max(reactions)), "min_ms": ms(min(reactions)),
        "mean_ms": ms(statistics.fmean(reactions)),
        "poll_ms": round(poll_ms, 3), "safety_loop_hz": round(1 / poll_s, 3),
        "reaction_limit_ms": limit_ms, "over_limit": sum(1 for r in reactions if r * 1e3 > limit_ms),
        "decide_p50_ms": ms(percentile(decide, 50)), "decide_max_ms": ms(max(decide)),
        "write_p50_ms": ms(percentile(write, 50)), "write_max_ms": ms(max(write)),
        "hold_off_s": BARRIER["hold_off_s"], "seed": seed,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--runs", type=int, default=DEFAULT_RUNS, help="reversals timed (default %(default)s)")
    ap.add_argument("--poll-ms", type=float, default=DEFAULT_POLL_MS,
                    help="the IO module's safety-loop poll interval, [devices.io.profile.poll] safety_loop_hz = "
                    "1000 / poll-ms; 5–50 (default %(default)g: the default 20 Hz)")
    ap.add_argument("--reaction-limit-ms", type=int, default=None,
                    help="[barrier] reaction_limit_ms (default: the configuration's default)")
    ap.add_argument("--seed", type=int, default=1, help="of the random phases (default %(default)s)")
    ap.add_argument("--log-level", default="error", help="laned's log level on stderr (default %(default)s: "
                    "every run raises a follow-car alarm, logged as a warning)")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    if not 5 <= args.poll_ms <= 50:
        ap.error("--poll-ms must be 5–50 (safety_loop_hz 20–200)")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = asyncio.run(measure(args.runs, args.poll_ms, seed=args.seed, reaction_limit_ms=args.reaction_limit_ms))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
