"""``laned sim``: the real daemon against emulated devices, with a live view and a verdict.

Exit status: 0 when the lane kept both rules and every vehicle got what it should;
1 on any safety violation or double charge; 3 when some vehicle got another outcome
than its kind calls for; 2 for bad input (scenario file, arguments); 130 when stopped
by Ctrl-C / SIGTERM (the summary covers what ran).
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.live import Live

from laned.sim import sim_view
from laned.sim.lane_sim import LaneSim, SimSummary
from laned.sim.traffic import ScenarioError, SimVehicle, load_scenario, traffic_mix

EXIT_OK, EXIT_RULE_BROKEN, EXIT_BAD_INPUT, EXIT_UNEXPECTED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
LIVE_REFRESH_S = 0.2


class InputError(ValueError):
    """Bad arguments or a bad scenario file: one line for the person who typed them."""


def traffic(vehicles: int, seed: int, scenario: str | None) -> list[SimVehicle]:
    if scenario is not None:
        try:
            return load_scenario(scenario)
        except ScenarioError as err:
            raise InputError(str(err)) from None
    if vehicles < 1:
        raise InputError(f"--vehicles must be at least 1, got {vehicles}")
    return traffic_mix(vehicles, seed)


def exit_status(summary: SimSummary) -> int:
    if not summary.ok:
        return EXIT_RULE_BROKEN
    if summary.interrupted:
        return EXIT_INTERRUPTED
    if summary.unexpected:
        return EXIT_UNEXPECTED
    return EXIT_OK


def main(*, vehicles: int, seed: int, scenario: str | None, as_json: bool, state_dir: str | None,
         keep_state: bool, live: bool, show_plates: bool) -> int:
    cars = traffic(vehicles, seed, scenario)
    temporary = state_dir is None
    state = Path(state_dir) if state_dir else Path(tempfile.mkdtemp(prefix="laned-sim-"))
    state.mkdir(parents=True, exist_ok=True)
    log_file = state / "laned.log"
    logging.basicConfig(level=logging.INFO, filename=log_file, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    console = Console()
    sim = LaneSim(cars, state, seed=seed, show_plates=show_plates)
    if as_json:
        summary = asyncio.run(sim.run())
    elif live and console.is_terminal:
        summary = _run_live(sim, console)
    else:
        summary = _run_plain(sim, console)
    code = exit_status(summary)
    # A clean run in a temporary folder leaves nothing behind; anything else is kept for
    # whoever has to find out what happened.
    keep = keep_state or not temporary or code != EXIT_OK
    if not keep:
        shutil.rmtree(state, ignore_errors=True)
        summary.state_dir = None
    if as_json:
        print(json.dumps(summary.as_json(), ensure_ascii=False))
    else:
        console.print(sim_view.summary_table(summary))
        if keep:
            console.print(f"journal, status list and daemon log kept in {state} (laned.log)")
    return code


def _run_live(sim: LaneSim, console: Console) -> SimSummary:
    # Redrawn from the event loop (not rich's refresh thread), so it never reads the
    # simulation half-way through a step.
    with Live(console=console, auto_refresh=False, transient=False) as view:
        last = 0.0

        def redraw(s: LaneSim) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last >= LIVE_REFRESH_S:
                last = now
                view.update(sim_view.live(s), refresh=True)

        sim.on_change = redraw
        summary = asyncio.run(sim.run())
        view.update(sim_view.live(sim), refresh=True)
    return summary


def _run_plain(sim: LaneSim, console: Console) -> SimSummary:
    """One line per thing that happens to a vehicle: for logs, pipes and CI."""
    printed = 0

    def report(s: LaneSim) -> None:
        nonlocal printed
        for at, number, what in s.events[printed:]:
            run = s.runs[number - 1]
            console.print(f"{at:7.2f} s  vehicle {number:3d} {sim_view.plate(run, s.show_plates)} "
                          f"({run.vehicle.kind}): {what}", highlight=False, soft_wrap=True)
        printed = len(s.events)

    sim.on_change = report
    return asyncio.run(sim.run())
