"""``laned sim``: the real daemon against emulated devices, with a live view and a verdict.

Exit status: 0 when the lane kept both rules and every vehicle got what it should;
1 on any safety violation or double charge (nothing else: 1 means a rule was broken);
3 when some vehicle got another outcome, reason, fee or way than expected (including a
paid vehicle that did not pass and a vehicle that passed unpaid); 2 for bad input
(scenario file, arguments, a state folder holding a previous run without ``resume``,
no mosquitto for the centre), always as one line, checked before anything starts; 130 when stopped by Ctrl-C /
SIGTERM (the summary covers what ran).
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
from laned.sim.broker import MosquittoMissing, find_mosquitto
from laned.sim.lane_sim import LaneSim, SimError, SimSummary, previous_run
from laned.sim.scenario import Scenario, ScenarioError, check_timezone, read_scenario
from laned.sim.traffic import traffic_mix
from laned.sim.vehicle import DEFAULT_TIMEZONE

EXIT_OK, EXIT_RULE_BROKEN, EXIT_BAD_INPUT, EXIT_UNEXPECTED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
LIVE_REFRESH_S = 0.2


class InputError(ValueError):
    """Bad arguments or a bad scenario file: one line for the person who typed them."""


def traffic(vehicles: int, seed: int, scenario: str | None, timezone: str | None = None) -> Scenario:
    """The run's vehicles, the lane's time zone (``--timezone`` over the scenario's own) and
    how the RSU reads them (the scenario's ``rsu``; the seeded mix: the defaults)."""
    try:
        if scenario is not None:
            return read_scenario(scenario, timezone=timezone)
        tz = check_timezone(timezone, "--timezone") if timezone else DEFAULT_TIMEZONE
    except ScenarioError as err:
        raise InputError(str(err)) from None
    if vehicles < 1:
        raise InputError(f"--vehicles must be at least 1, got {vehicles}")
    return Scenario(traffic_mix(vehicles, seed), tz)


def check_state_dir(state_dir: str | None, resume: bool) -> None:
    """A folder holding a previous run's journal is reused only on purpose (``resume``):
    otherwise the daemon would restore that run's payments into this run's vehicles."""
    if resume and state_dir is None:
        raise InputError("--resume needs --state-dir (the folder of the run to go on with)")
    if state_dir is not None and not resume and (old := previous_run(state_dir)) is not None:
        raise InputError(f"--state-dir {state_dir} holds a previous run's journal ({old.name}); its payments "
                         "would be restored into this run's vehicles: use an empty folder, or --resume to go on "
                         "with that journal on purpose")


def check_centre(centre: bool) -> None:
    """The simulated centre needs mosquitto: said before anything starts, with the way out."""
    if not centre:
        return
    try:
        find_mosquitto()
    except MosquittoMissing as err:
        raise InputError(str(err)) from None


def exit_status(summary: SimSummary) -> int:
    if not summary.ok:
        return EXIT_RULE_BROKEN
    if summary.interrupted:
        return EXIT_INTERRUPTED
    if summary.unexpected:
        return EXIT_UNEXPECTED
    return EXIT_OK


def main(*, vehicles: int, seed: int, scenario: str | None, as_json: bool, state_dir: str | None,
         keep_state: bool, live: bool, show_plates: bool, resume: bool = False, timezone: str | None = None,
         centre: bool = True) -> int:
    plan = traffic(vehicles, seed, scenario, timezone)
    check_state_dir(state_dir, resume)
    check_centre(centre)
    temporary = state_dir is None
    state = Path(state_dir) if state_dir else Path(tempfile.mkdtemp(prefix="laned-sim-"))
    state.mkdir(parents=True, exist_ok=True)
    log_file = state / "laned.log"
    logging.basicConfig(level=logging.INFO, filename=log_file, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    console = Console()
    sim = LaneSim(plan.vehicles, state, seed=seed, show_plates=show_plates, timezone=plan.timezone, resume=resume,
                  rsu=plan.rsu, centre=centre)
    try:
        if as_json:
            summary = asyncio.run(sim.run())
        elif live and console.is_terminal:
            summary = _run_live(sim, console)
        else:
            summary = _run_plain(sim, console)
    except SimError:
        raise
    except Exception as err:
        # Not a verdict: the simulation itself failed. Exit 1 means a broken rule, so this
        # is reported as one line (exit 2), the traceback goes to the daemon log.
        logging.getLogger("laned.sim").exception("the simulation failed")
        raise SimError(f"{type(err).__name__}: {err} (traceback in {log_file})") from None
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
        console.print(verdict_line(summary), highlight=False, soft_wrap=True)
        if (line := centre_line(summary)) is not None:
            console.print(line, highlight=False, soft_wrap=True)
        if keep:
            console.print(f"journal, status list and daemon log kept in {state} (laned.log)")
    return code


def verdict_line(summary: SimSummary) -> str:
    """The verdict's counts of vehicles whose way does not match their payment."""
    line = (f"paid but not passed: {summary.paid_not_passed}   passed unpaid: {summary.passed_unpaid}   "
            f"unexpected: {summary.unexpected} of {summary.vehicles}")
    wrong = [f"vehicle {o['vehicle']}: {', '.join(o['unexpected'])}" for o in summary.outcomes if o["unexpected"]]
    return "\n".join([line, *wrong[:20]])


def centre_line(summary: SimSummary) -> str | None:
    """What the centre received (None: the run had no centre, ``--no-centre``)."""
    if summary.centre_received is None:
        return None
    line = (f"centre: {summary.centre_received} transactions received, {summary.centre_duplicates_dropped} "
            f"duplicates dropped, backlog {summary.outbox_backlog}")
    if summary.centre_gaps:
        line += f"; seqs missing at the centre: {', '.join(summary.centre_gaps)}"
    if summary.centre_pending_reconciliations:
        line += f"; {summary.centre_pending_reconciliations} unknown outcome(s) pending reconciliation"
    return line


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
