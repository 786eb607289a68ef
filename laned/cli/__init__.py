"""The ``laned`` command line."""

from __future__ import annotations

import enum

import typer

from laned.cli import centre_cmd
from laned.protocol.profiles import PROFILES

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="laned — the lane controller of an ETC toll lane.")


class SenderChoice(enum.StrEnum):
    auto = "auto"
    rsu = "rsu"
    pc = "pc"


app.add_typer(centre_cmd.app, name="centre")


@app.callback()
def _root() -> None:
    """laned — the lane controller of an ETC toll lane."""


def _check_profile(value: str) -> str:
    if value not in PROFILES:
        raise typer.BadParameter(f"{value!r} is not a profile; expected one of {', '.join(PROFILES)}")
    return value


@app.command()
def decode(
    hex_data: list[str] | None = typer.Argument(None, metavar="[HEX]...",
                                                help="Hex bytes (spaces, 0x prefixes and log text allowed)."),
    file: str | None = typer.Option(None, "--file", "-f", help="Read hex from this file ('-' for stdin)."),
    profile: str = typer.Option("national", "--profile", "-p", callback=_check_profile,
                                help=f"RSU profile: {', '.join(PROFILES)}."),
    sender: SenderChoice = typer.Option(SenderChoice.auto, "--sender", help="Expect frames from rsu, pc, or auto."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per frame, one per line."),
) -> None:
    """Decode captured RSU bytes into readable frames. Exit status 2 if any bytes were bad."""
    from laned.cli import decode_cmd as tool

    try:
        code = tool.main(hex_data or [], file, profile, sender.value, as_json)
    except tool.InputError as err:
        typer.echo(f"laned decode: {err}", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(code)


# EX_SOFTWARE (sysexits.h): an internal error; systemd's Restart=on-failure restarts laned.
EXIT_TASK_FAILED = 70


@app.command()
def run(
    config: str = typer.Option("/etc/laned/laned.toml", "--config", "-c", help="The lane's TOML configuration."),
) -> None:
    """Run the lane daemon with real drivers."""
    import asyncio
    import logging

    from laned.config import ConfigError, load_config

    try:
        cfg = load_config(config)
    except ConfigError as err:
        typer.echo(f"laned run: configuration refused:\n{err}", err=True)
        raise typer.Exit(2) from None
    from laned.logs import setup_logging

    setup_logging(cfg.log.level, cfg.log.format)
    logging.getLogger("laned").info("configuration %s: %s", config, cfg.summary())
    from laned.app import run_lane
    from laned.journal import JournalError
    from laned.lane.fee_table import FeeTableError
    from laned.lane.status_list import StatusListError

    from laned.app import LaneTaskFailed

    try:
        asyncio.run(run_lane(cfg))
    except (FeeTableError, StatusListError, JournalError) as err:
        typer.echo(f"laned run: cannot start: {err}", err=True)
        raise typer.Exit(2) from None
    except LaneTaskFailed as err:
        # One line for the operator; the traceback goes to the debug log for the developer.
        logging.getLogger("laned").debug("task %s failed", err.task, exc_info=err.error)
        logging.getLogger("laned").critical("laned: %s; exiting with status %d so that systemd restarts it "
                                            "(the journal's crash recovery runs at start)", err, EXIT_TASK_FAILED)
        raise typer.Exit(EXIT_TASK_FAILED) from None


@app.command()
def sim(
    vehicles: int = typer.Option(24, "--vehicles", "-n", help="How many vehicles of the seeded traffic mix."),
    seed: int = typer.Option(1, "--seed", help="Seed of the traffic mix: the same seed, the same traffic."),
    scenario: str | None = typer.Option(None, "--scenario", help="A JSON list of vehicles instead of the mix "
                                        "(schema: docs/sim.md)."),
    as_json: bool = typer.Option(False, "--json", help="Print only the summary, as one JSON object."),
    state_dir: str | None = typer.Option(None, "--state-dir", help="Keep the journal, status list and daemon "
                                         "log here (default: a temporary folder, removed after a clean run)."),
    keep_state: bool = typer.Option(False, "--keep-state", help="Keep the temporary state folder."),
    live: bool = typer.Option(True, "--live/--no-live", help="Live view on a terminal; one line per event otherwise."),
    show_plates: bool = typer.Option(False, "--show-plates", help="Show plates in full (masked by default)."),
    resume: bool = typer.Option(False, "--resume", help="Go on with the journal a previous run left in "
                                "--state-dir (refused otherwise)."),
    timezone: str | None = typer.Option(None, "--timezone", help="The lane's time zone for relative dates and "
                                        "the daemon's clock (default: the scenario's, else Asia/Shanghai)."),
    no_centre: bool = typer.Option(False, "--no-centre", help="Run the lane alone: no private Mosquitto, no "
                                   "reference centre, no uplink."),
) -> None:
    """Run the lane against emulated RSU, fee display, IO module and traffic — no hardware —
    with a private Mosquitto and the reference centre receiving its transactions (unless --no-centre).

    Exit status 0: both rules held and every vehicle got what it should; 1: a safety
    violation or a double charge; 3: some vehicle got another outcome than expected;
    2: bad input; 130: interrupted.
    """
    from laned.cli import sim_cmd as tool
    from laned.config import ConfigError
    from laned.sim.lane_sim import SimError

    try:
        code = tool.main(vehicles=vehicles, seed=seed, scenario=scenario, as_json=as_json, state_dir=state_dir,
                         keep_state=keep_state, live=live, show_plates=show_plates, resume=resume,
                         timezone=timezone, centre=not no_centre)
    except tool.InputError as err:
        typer.echo(f"laned sim: {err}", err=True)
        raise typer.Exit(tool.EXIT_BAD_INPUT) from None
    except (SimError, ConfigError) as err:
        typer.echo(f"laned sim: could not run the simulation: {err}", err=True)
        raise typer.Exit(tool.EXIT_BAD_INPUT) from None
    raise typer.Exit(code)


def main() -> None:
    app(prog_name="laned")


if __name__ == "__main__":  # pragma: no cover
    main()
