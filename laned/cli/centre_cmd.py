"""``laned centre``: the reference toll centre (laned/centre, docs/centre.md).

For tests, the simulator and commissioning a lane from a laptop; not a clearing system.
Exit status: 0 done (``run``: stopped by SIGTERM); 1 the lane refused a command or did not
answer, the broker could not be reached, or ``run`` stopped on an error (its database
failed); 2 bad input (a file, a key, an argument, a lane the database has never heard
of), always as one line; 130 interrupted (Ctrl-C).

Everything a command can check by itself — its arguments, its files, its keys and TLS
context — is checked before it connects, so that exit 1 always means the other end.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:  # imported where used: the centre's imports (aiomqtt, the contract) cost ~0.4 s per `laned` call
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from laned.centre.broker import BrokerSettings
    from laned.centre.ledger import Ledger
    from laned.centre.service import Centre

EXIT_OK, EXIT_REFUSED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
EXIT_FAILED = 1
DB_HELP = "The centre's SQLite file (created 0600 if missing)."

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="The reference toll centre: store, acknowledge, reconcile, command (docs/centre.md).")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> typer.Exit:
    typer.echo(f"laned centre: {message}", err=True)
    return typer.Exit(code)


def _choice(values: tuple[str, ...]) -> Callable[[str | None], str | None]:
    def check(value: str | None) -> str | None:
        if value is not None and value not in values:
            raise typer.BadParameter(f"{value!r}: expected one of {', '.join(values)}")
        return value
    return check


# The contract's codes, spelt out so that the CLI needs no import to offer them; the
# commands convert them to the enums (a drift fails there, loudly).
AUTO_RECONCILE = ("off", "not_charged", "charged")
LOG_LEVELS = ("debug", "info", "warning", "error")  # laned.logs.LEVELS
COMMANDS = ("close_etc", "open_etc", "show_message", "resend_from", "publish_health", "fetch_list", "raise_barrier")
OUTCOMES = ("charged", "not_charged")
KINDS = ("status_list", "fee_table")


def _broker(host: str, port: int, ca: Path, cert: Path, key: Path, client_id: str | None = None) -> BrokerSettings:
    from laned.centre.broker import CENTRE_CLIENT_ID, BrokerSettings

    return BrokerSettings(host=host, port=port, ca=ca, cert=cert, key=key, client_id=client_id or CENTRE_CLIENT_ID)


HOST = typer.Option("127.0.0.1", "--host", help="The broker's host (as in its certificate).")
PORT = typer.Option(8883, "--port", help="The broker's TLS port.")
CA = typer.Option(..., "--ca", help="CA certificate the broker's certificate is checked against.")
CERT = typer.Option(..., "--cert", help="The centre's client certificate (CN = the broker's centre identity).")
KEY = typer.Option(..., "--key", help="The centre's TLS private key (mode 0600).")


@app.command()
def run(
    host: str = HOST, port: int = PORT, ca: Path = CA, cert: Path = CERT, key: Path = KEY,
    db: Path = typer.Option(..., "--db", help=DB_HELP),
    auto_reconcile: str = typer.Option("off", "--auto-reconcile", callback=_choice(AUTO_RECONCILE),
                                       help="off, not_charged or charged: answer unknown outcomes at once (tests and "
                                            "the simulator only; a real centre asks the card issuer's clearing data)."),
    client_id: str = typer.Option("laned-centre", "--client-id", help="MQTT client id of the persistent session."),
    log_level: str = typer.Option("info", "--log-level", callback=_choice(LOG_LEVELS),
                                  help="debug, info, warning or error."),
) -> None:
    """Subscribe to every lane; store, acknowledge, answer; until Ctrl-C."""
    from laned.centre.errors import CentreError
    from laned.centre.reconcile import AutoReconcile
    from laned.centre.service import Centre, CentreSettings
    from laned.logs import setup_logging

    setup_logging(log_level)
    try:
        centre = Centre(CentreSettings(broker=_broker(host, port, ca, cert, key, client_id), db=db,
                                       auto_reconcile=AutoReconcile(auto_reconcile)))
        centre.settings.broker.tls_context()  # a bad certificate or key is refused now, in one line
    except CentreError as err:
        raise _fail(str(err)) from None
    try:
        asyncio.run(_run(centre))
    except KeyboardInterrupt:
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except BaseExceptionGroup as group:  # the TaskGroup's: a CentreError is the operator's business
        failed, rest = group.split(CentreError)
        if rest is not None or failed is None:
            raise
        raise _fail(f"stopped: {failed.exceptions[0]}", EXIT_FAILED) from None


async def _run(centre: Centre) -> None:
    # SIGTERM (systemd, kill) is a clean stop: the MQTT session closed with a DISCONNECT, exit 0.
    # Ctrl-C cancels everything (asyncio.run) and exits 130.
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    try:
        async with asyncio.TaskGroup() as tasks:
            runner = tasks.create_task(centre.run(), name="centre")
            stopping = tasks.create_task(stop.wait(), name="centre-sigterm")
            await asyncio.wait({runner, stopping}, return_when=asyncio.FIRST_COMPLETED)
            runner.cancel()
            stopping.cancel()
    finally:
        centre.close()


@app.command()
def status(db: Path = typer.Option(..., "--db", help=DB_HELP)) -> None:
    """Per lane: state, counts, gaps and pending reconciliations."""
    from rich.console import Console
    from rich.table import Table

    ledger = _ledger(db, create=False)
    with ledger:
        lanes = Table(title=f"lanes in {db}")
        for column in ("lane", "state", "last seen", "received", "stored", "updated", "duplicates", "conflicts",
                       "invalid", "highest seq", "gaps", "pending", "alarms raised"):
            lanes.add_column(column, overflow="fold")  # wrapped, never cut: a uuid or gap list is read whole
        for lane_id in ledger.lanes():
            c = ledger.counts(lane_id)
            gaps = ", ".join(str(g) for g in c.gaps[:5]) + (f" (+{len(c.gaps) - 5} more)" if len(c.gaps) > 5 else "")
            lanes.add_row(lane_id, c.state or "-", c.last_seen or "-", str(c.received), str(c.stored), str(c.updated),
                          str(c.duplicates_dropped), str(c.conflicts), str(c.invalid),
                          "-" if c.highest_seq is None else str(c.highest_seq),
                          f"{gaps} ({c.missing} missing)" if c.gaps else "none", str(c.pending_reconciliations),
                          ", ".join(code for code, change, _, _ in ledger.alarms(lane_id) if change == "raised")
                          or "none")
        console = Console()
        console.print(lanes)
        pending = ledger.pending_reconciliations()
        if pending:
            table = Table(title="unknown outcomes waiting for reconciliation (laned centre answer)")
            for column in ("lane", "seq", "tx_uuid", "amount (fen)", "purchase time", "answered"):
                table.add_column(column, overflow="fold")  # wrapped, never cut: a uuid or gap list is read whole
            for p in pending:
                table.add_row(p.lane_id, str(p.seq), p.tx_uuid, "-" if p.amount is None else str(p.amount),
                              p.purchase_time or "-", p.answered or "no")
            console.print(table)


@app.command()
def ledger(
    db: Path = typer.Option(..., "--db", help=DB_HELP),
    lane: str = typer.Option(..., "--lane", help="The lane id."),
    from_seq: int = typer.Option(1, "--from-seq", help="First seq listed."),
    limit: int = typer.Option(100, "--limit", help="How many rows."),
    full: bool = typer.Option(False, "--full", help="Plates and card numbers in full (masked by default)."),
) -> None:
    """The transactions stored for a lane."""
    from rich.console import Console
    from rich.table import Table

    with _ledger(db, create=False) as opened:
        known = opened.lanes()
        if lane not in known:  # a mistyped lane id must not look like a lane without transactions
            raise _fail(f"no transactions from lane {lane} in {db}; lanes present: {', '.join(known) or 'none'}")
        rows = opened.transactions(lane, from_seq=from_seq, limit=limit)
        conflicts = opened.conflicts(lane)
        counts = opened.counts(lane)
    table = Table(title=f"lane {lane}: transactions from seq {from_seq}")
    for column in ("seq", "kind", "state", "amount", "plate", "card", "updated at", "settled", "tx_uuid"):
        table.add_column(column, overflow="fold")  # wrapped, never cut: a uuid or gap list is read whole
    for row in rows:
        shown = row if full else row.masked()
        table.add_row(str(shown.seq), shown.kind, shown.state, "-" if shown.amount is None else str(shown.amount),
                      shown.plate or "-", shown.card_number or "-", shown.updated_at, shown.settled or "-",
                      shown.tx_uuid)
    console = Console()
    console.print(table)
    if counts.stored == 0:
        console.print(f"lane {lane} has sent no transactions yet (last seen {counts.last_seen or '-'}, "
                      f"state {counts.state or '-'})")
    for seq, received, held in conflicts:
        console.print(f"[red]conflict[/red]: seq {seq} arrived as {received}, the centre holds {held}")


@app.command()
def answer(
    db: Path = typer.Option(..., "--db", help=DB_HELP),
    lane: str = typer.Option(..., "--lane"),
    seq: int = typer.Option(..., "--seq", help="The unknown transaction's seq."),
    outcome: str = typer.Option(..., "--outcome", callback=_choice(OUTCOMES), help="charged or not_charged."),
    tac: str | None = typer.Option(None, "--tac", help="charged: the cleared debit's TAC (8 hex digits)."),
    balance_after: int | None = typer.Option(None, "--balance-after", help="charged: the card balance after (fen)."),
    detail: str | None = typer.Option(None, "--detail", help="Why (the clearing record, a phone call)."),
) -> None:
    """Answer an unknown outcome; the running centre sends it and repeats it until the lane reports."""
    from laned.centre.errors import CentreError
    from laned.centre.reconcile import answer as build_answer
    from laned.uplink.messages import ReconcileOutcome

    with _ledger(db, create=False) as opened:
        tx = opened.transaction(lane, seq)
        if tx is None:
            raise _fail(f"lane {lane} seq {seq} is not in {db}")
        try:
            evidence = bytes.fromhex(tac) if tac else None
            reply = build_answer(tx, ReconcileOutcome(outcome), _now(), tac=evidence, balance_after=balance_after, detail=detail)
        except (ValueError, CentreError) as err:
            raise _fail(str(err)) from None
        if not opened.record_answer(reply, "operator"):
            raise _fail(f"lane {lane} seq {seq} was answered before; the first answer stands (the lane may have "
                        "applied it)")
    typer.echo(f"answer {reply.answer_id} ({outcome}) recorded; the running centre sends it within a second")


@app.command("send-command")
def send_command(
    host: str = HOST, port: int = PORT, ca: Path = CA, cert: Path = CERT, key: Path = KEY,
    db: Path = typer.Option(..., "--db", help=DB_HELP + " Holds the per-lane command seq."),
    lane: str = typer.Option(..., "--lane"),
    command: str = typer.Option(..., "--command", callback=_choice(COMMANDS), help=", ".join(COMMANDS) + "."),
    args: str = typer.Option("{}", "--args", help='The arguments as JSON, e.g. \'{"reason": "maintenance"}\'.'),
    signing_key: Path = typer.Option(..., "--signing-key", help="The centre's Ed25519 key (laned centre keygen)."),
    key_id: str = typer.Option(..., "--key-id", help="The key id the lane trusts it under."),
    lifetime: float = typer.Option(300.0, "--lifetime", help="Seconds the command stays valid."),
    wait: float = typer.Option(10.0, "--wait", help="Seconds to wait for the lane's result."),
    min_seq: int = typer.Option(1, "--min-seq", help="Send a seq at least this (a lane that executed higher "
                                                     "seqs from another centre)."),
) -> None:
    """Sign a command, send it, print the lane's result. Exit 1 when refused or unanswered."""
    import aiomqtt

    from laned.centre.commanding import MAX_LIFETIME_S, build_command
    from laned.centre.commissioning import check_lane_ids
    from laned.centre.errors import CentreError
    from laned.centre.outbound import send_command_once

    # Bad input is exit 2, found before connecting: exit 1 is the lane's (or the broker's) answer.
    try:
        parsed = json.loads(args)
        if not isinstance(parsed, dict):
            raise ValueError("not a JSON object")
    except ValueError as err:
        raise _fail(f"--args: {err}") from None
    try:
        check_lane_ids([lane])
        if not 1 <= lifetime <= MAX_LIFETIME_S:
            raise CentreError(f"--lifetime {lifetime:g}: expected 1 to {MAX_LIFETIME_S:g} seconds")
        if not wait > 0:
            raise CentreError(f"--wait {wait:g}: expected seconds > 0")
        if min_seq < 1:
            raise CentreError(f"--min-seq {min_seq}: expected 1 or more")
        _check_key_id(key_id)
        private_key = _signing_key(signing_key)
        # Built once without sending: the command, its arguments and the key id as the lane checks them.
        build_command(lane_id=lane, command=command, args=parsed, seq=min_seq, now=_now(), private_key=private_key,
                      key_id=key_id, lifetime_s=lifetime)
        broker = _broker(host, port, ca, cert, key)
        broker.tls_context()
    except CentreError as err:
        raise _fail(str(err)) from None
    try:
        with _ledger(db) as opened:
            result = asyncio.run(send_command_once(broker, opened, lane_id=lane, command=command, args=parsed,
                                                   private_key=private_key, key_id=key_id, clock=_now,
                                                   lifetime_s=lifetime, wait_s=wait, min_seq=min_seq))
    except CentreError as err:
        raise _fail(str(err), EXIT_REFUSED) from None
    except aiomqtt.MqttError as err:
        raise _fail(f"broker {host}:{port}: {err}", EXIT_REFUSED) from None
    typer.echo(result.to_json())
    raise typer.Exit(EXIT_OK if result.outcome == "executed" else EXIT_REFUSED)


@app.command()
def keygen(
    out: Path = typer.Option(..., "--out", help="Folder for <key-id>.key (0600) and <key-id>.pub."),
    key_id: str = typer.Option(..., "--key-id"),
) -> None:
    """Make a command signing key; print the public key line a lane's trust store needs."""
    from laned.centre.errors import CentreError
    from laned.centre.keys import generate

    try:
        made = generate(out, key_id)
    except CentreError as err:
        raise _fail(str(err)) from None
    typer.echo(f"private key: {made.private_path} (mode 0600: keep it on the centre only)")
    typer.echo(f"public key:  {made.public_path}")
    typer.echo("for the lane's trusted centre keys:")
    typer.echo(made.config_line)


@app.command()
def pki(
    out: Path = typer.Option(..., "--out", help="Folder for the CA and the broker's, the centre's and each lane's "
                                                "certificate and key (created 0700)."),
    lanes: list[str] = typer.Option(..., "--lane", help="A lane id, its certificate's CN (repeat for more)."),
    broker_hosts: list[str] | None = typer.Option(
        None, "--broker-host", help="A name or IP address the lanes reach the broker by, e.g. this laptop's address "
                                    "on the lane's network (repeat for more); localhost and 127.0.0.1 are always in."),
    valid_days: int = typer.Option(90, "--valid-days", help="Days the certificates are valid."),
    force: bool = typer.Option(False, "--force", help="Replace files already there (then copy the new ones to the "
                                                      "broker and to every lane: the CA is new)."),
) -> None:
    """Make the certificates to commission lanes from a laptop: CA, broker, centre, one per lane."""
    from laned.centre.commissioning import make_pki
    from laned.centre.errors import CentreError

    try:
        made = make_pki(out, lanes, broker_names=broker_hosts or (), valid_days=valid_days, force=force)
    except CentreError as err:
        raise _fail(str(err)) from None
    d = made.folder
    typer.echo(f"wrote into {d} (keys mode 0600; certificates valid until {made.not_after:%Y-%m-%d %H:%M} UTC):")
    typer.echo(f"  the broker, on this laptop:       {made.ca_cert}, {made.broker.cert}, {made.broker.key}")
    typer.echo(f"    made out to {', '.join(made.broker_names)}: a lane's [uplink] host must be one of them")
    typer.echo(f"  laned centre, on this laptop:     --ca {made.ca_cert} --cert {made.centre.cert} "
               f"--key {made.centre.key}")
    for lane in made.lanes:
        typer.echo(f"  lane {lane.lane_id}, to its /etc/laned/tls/: {lane.ca_cert.name}, {lane.cert.name}, "
                   f"{lane.key.name} (from {lane.folder}; [uplink] ca, cert, key; lane.key owned by laned, 0600)")
    typer.echo("the CA's key was not kept: for another lane, run this again with every lane and --force, and copy "
               "the new files to the broker and every lane")
    typer.echo(f"next: laned centre broker-config --pki {d} --out {d / 'mosquitto.conf'}")


@app.command("broker-config")
def broker_config(
    pki_dir: Path = typer.Option(..., "--pki", help="The folder laned centre pki wrote."),
    out: Path = typer.Option(..., "--out", help="The mosquitto.conf to write; its ACL (.acl) and an empty password "
                                                "file (.passwords) go beside it."),
    lanes: list[str] | None = typer.Option(None, "--lane", help="A lane the ACL lets in (repeat for more; "
                                                                "default: every lane of --pki)."),
    port: int = typer.Option(8883, "--port", help="The TLS listener's port."),
    bind: str = typer.Option("0.0.0.0", "--bind", help="The address it listens on (0.0.0.0: every interface, "
                                                       "so that the lane reaches it)."),
    force: bool = typer.Option(False, "--force", help="Replace the files if they exist."),
) -> None:
    """Write a Mosquitto configuration for the PKI: TLS with client certificates, the per-lane ACL."""
    from laned.centre.commissioning import find_mosquitto, write_broker_config
    from laned.centre.errors import CentreError

    try:
        made = write_broker_config(out, pki_dir, lanes or (), port=port, bind=bind, force=force)
    except CentreError as err:
        raise _fail(str(err)) from None
    folder = pki_dir.resolve()
    typer.echo(f"wrote {made.conf} (TLS listener {bind}:{port}, client certificates of {folder / 'ca.pem'}), "
               f"{made.acl} (lanes {', '.join(made.lanes)} and the centre) and {made.passwords} (empty)")
    typer.echo(f"start the broker:  {find_mosquitto() or 'mosquitto'} -c {made.conf}"
               + ("" if find_mosquitto() else "   (not installed here: apt-get install mosquitto)"))
    typer.echo(f"then the centre:   laned centre run --host 127.0.0.1 --port {port} --ca {folder / 'ca.pem'} "
               f"--cert {folder / 'centre.pem'} --key {folder / 'centre.key'} --db centre.db")


@app.command("publish-list")
def publish_list(
    host: str = HOST, port: int = PORT, ca: Path = CA, cert: Path = CERT, key: Path = KEY,
    db: Path = typer.Option(..., "--db", help=DB_HELP + " Keeps the version for chunk requests."),
    kind: str = typer.Option(..., "--kind", callback=_choice(KINDS), help="status_list or fee_table."),
    file: Path = typer.Option(..., "--file", help="The status list (JSON) or fee table (TOML), sent as is."),
    version: int = typer.Option(..., "--version"),
    lanes: list[str] = typer.Option(..., "--lane", help="A lane to publish to (repeat for more)."),
    signing_key: Path = typer.Option(..., "--signing-key"),
    key_id: str = typer.Option(..., "--key-id"),
    valid_from: str | None = typer.Option(None, "--valid-from", help="RFC 3339 with offset (default: now)."),
    valid_days: float = typer.Option(7.0, "--valid-days", help="Days from valid-from until it expires."),
    base_version: int | None = typer.Option(None, "--base-version", help="A status list delta's base version."),
) -> None:
    """Sign a status list or fee table manifest and publish it with its chunks.

    The file is read first with the lane's own parser: one the lane would refuse (not a
    status list or fee table, another version, base or validity start) is not signed."""
    import aiomqtt

    from laned.centre.commissioning import check_lane_ids
    from laned.centre.errors import CentreError
    from laned.centre.lists import build_list, check_content
    from laned.centre.outbound import publish_list_once
    from laned.uplink.messages import ListKind

    # Bad input is exit 2, found before connecting: exit 1 is the broker's.
    now = _now()
    try:
        check_lane_ids(lanes)
        _check_key_id(key_id)
        if not valid_days > 0:
            raise CentreError(f"--valid-days {valid_days:g}: expected days > 0")
        start = _valid_from(valid_from)
        try:
            data = file.read_bytes()
        except OSError as err:
            raise CentreError(f"--file {file}: cannot read it: {err.strerror or err}") from None
        try:
            checked = check_content(ListKind(kind), data, version=version, base_version=base_version,
                                    valid_from=start)
        except CentreError as err:
            raise CentreError(f"--file {file}: {err}") from None
        start = checked.valid_from or now
        expires = start + dt.timedelta(days=valid_days)
        if expires <= now + dt.timedelta(minutes=1):
            raise CentreError(f"--valid-from {start.isoformat()} and --valid-days {valid_days:g}: it expires at "
                              f"{expires.isoformat()}, already past: nothing to publish")
        built = build_list(kind=ListKind(kind), version=version, data=data, now=now, valid_from=start,
                           expires_at=expires, private_key=_signing_key(signing_key), key_id=key_id,
                           base_version=base_version)
        broker = _broker(host, port, ca, cert, key)
        broker.tls_context()
    except CentreError as err:
        raise _fail(str(err)) from None
    try:
        with _ledger(db) as opened:
            asyncio.run(publish_list_once(broker, opened, built, lanes, _now))
    except CentreError as err:
        raise _fail(str(err), EXIT_REFUSED) from None
    except aiomqtt.MqttError as err:
        raise _fail(f"broker {host}:{port}: {err}", EXIT_REFUSED) from None
    typer.echo(f"{checked.description}: {len(data)} bytes in {built.chunk_count} chunk(s), sha256 "
               f"{built.manifest['sha256']}, valid {start.isoformat()} to {expires.isoformat()}, published to "
               f"{', '.join(lanes)}")


def _valid_from(value: str | None) -> dt.datetime | None:
    from laned.centre.errors import CentreError

    if value is None:
        return None
    try:
        start = dt.datetime.fromisoformat(value)
    except ValueError:
        raise CentreError(f"--valid-from {value!r}: expected RFC 3339 with an offset, e.g. "
                          "2025-01-01T00:00:00+08:00") from None
    if start.tzinfo is None:
        raise CentreError(f"--valid-from {value}: needs a UTC offset (e.g. +08:00)")
    return start


def _check_key_id(key_id: str) -> None:
    from laned.centre.errors import CentreError
    from laned.uplink.commands import KEY_ID

    if not KEY_ID.fullmatch(key_id):
        raise CentreError(f"--key-id {key_id!r}: expected {KEY_ID.pattern} (the contract's KeyId)")


def _signing_key(path: Path) -> Ed25519PrivateKey:
    from laned.centre.errors import CentreError
    from laned.centre.keys import load_private_key

    try:
        return load_private_key(path)
    except CentreError as err:
        raise CentreError(f"--signing-key: {err}") from None


def _ledger(db: Path, *, create: bool = True) -> Ledger:
    from laned.centre.errors import CentreError
    from laned.centre.ledger import Ledger

    if not create and not db.exists():  # a mistyped --db must not look like an empty centre
        raise _fail(f"no centre database at {db} (laned centre run --db creates it)")
    try:
        return Ledger(db)
    except CentreError as err:
        raise _fail(str(err)) from None
