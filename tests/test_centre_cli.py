"""``laned centre``'s exit status as docs/centre.md promises it: 2 for bad input — found
before any connection, said in one line naming the argument or file — and 1 only for the
other end (the lane, the broker). The centre's own key files get fix advice for the user it
runs as, not the lane's service user. And ``ledger`` on a lane the database never heard of
says so instead of printing an empty table."""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import pwd
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from laned.centre import BrokerSettings, CentreError, Ledger
from laned.centre.commissioning import CommissioningPki, make_pki
from laned.centre.keys import generate, load_private_key
from laned.cli import app
from laned.sim.broker import free_port
from laned.uplink.contract import contract
from laned.uplink.messages import LaneState, TransactionMsg
from laned.uplink.tls import TlsConfigError, check_private_key_file

LANE = "G0001-0201-03"
KEY_ID = "centre-test-1"
ME = pwd.getpwuid(os.geteuid()).pw_name


def example(name: str, message: str) -> dict[str, Any]:
    for ex in contract().messages[message]["examples"]:
        if ex["name"] == name:
            return copy.deepcopy(dict(ex["payload"]))
    raise KeyError(name)


def invoke(*args: str) -> tuple[int, str]:
    done = CliRunner(env={"COLUMNS": "240"}).invoke(app, ["centre", *args])
    # A traceback is never the answer to bad input: only typer's Exit/SystemExit end a command.
    assert done.exception is None or isinstance(done.exception, SystemExit), repr(done.exception)
    return done.exit_code, done.output


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> CommissioningPki:
    return make_pki(tmp_path_factory.mktemp("centre-cli") / "pki", [LANE])


@pytest.fixture(scope="module")
def signing_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("keys"), KEY_ID).private_path


def tls(pki: CommissioningPki, *, key: Path | None = None, port: int | None = None) -> list[str]:
    """The centre's TLS options, on a port where nobody listens: a command that connected
    would end in exit 1 (no broker), which these tests tell apart from exit 2."""
    return ["--host", "127.0.0.1", "--port", str(port or free_port()), "--ca", str(pki.ca_cert),
            "--cert", str(pki.centre.cert), "--key", str(key or pki.centre.key)]


def status_list(tmp_path: Path, doc: Any, name: str = "status_list.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(doc) if not isinstance(doc, str) else doc)
    return path


def publish(pki: CommissioningPki, signing_key: Path, tmp_path: Path, *extra: str,
            file: Path | None = None, kind: str = "status_list", version: str = "42") -> tuple[int, str]:
    file = file or status_list(tmp_path, {"version": 42, "entries": []})
    return invoke("publish-list", *tls(pki), "--db", str(tmp_path / "centre.db"), "--kind", kind, "--file", str(file),
                  "--version", version, "--lane", LANE, "--signing-key", str(signing_key), "--key-id", KEY_ID, *extra)


def send(pki: CommissioningPki, signing_key: Path, tmp_path: Path, *extra: str,
         key: Path | None = None) -> tuple[int, str]:
    return invoke("send-command", *tls(pki, key=key), "--db", str(tmp_path / "centre.db"), "--lane", LANE,
                  "--command", "close_etc", "--args", '{"reason": "test"}', "--signing-key", str(signing_key),
                  "--key-id", KEY_ID, "--wait", "1", *extra)


def one_line(output: str) -> str:
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    return lines[0]


# -- exit 2: bad input, before connecting ----------------------------------------------------------------

def test_a_signing_key_that_is_not_a_key_is_exit_2_naming_the_option(pki: CommissioningPki, tmp_path: Path) -> None:
    fake = tmp_path / "fake.key"
    fake.write_text("not a key\n")
    fake.chmod(0o600)
    for command in (send, publish):
        code, output = command(pki, fake, tmp_path)
        assert code == 2, output
        assert one_line(output).startswith(f"laned centre: --signing-key: signing key {fake} cannot be read")
    assert not (tmp_path / "centre.db").exists()  # refused before the database, let alone the broker


def test_a_missing_signing_key_or_tls_key_is_exit_2(pki: CommissioningPki, signing_key: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.key"
    code, output = publish(pki, missing, tmp_path)
    assert code == 2 and f"--signing-key: private key file {missing} does not exist" in one_line(output)
    code, output = send(pki, signing_key, tmp_path, key=missing)
    assert code == 2 and f"centre TLS: private key file {missing} does not exist" in one_line(output)
    code, output = invoke("run", *tls(pki, key=missing), "--db", str(tmp_path / "centre.db"))
    assert code == 2 and f"private key file {missing} does not exist" in one_line(output)


@pytest.mark.parametrize(("extra", "message"), [
    (["--version", "-3"], "--file"),  # the file says 42: named first
    (["--valid-days", "-1"], "--valid-days -1: expected days > 0"),
    (["--valid-from", "2025-01-01T00:00:00"], "--valid-from 2025-01-01T00:00:00: needs a UTC offset"),
    (["--valid-from", "yesterday"], "--valid-from 'yesterday': expected RFC 3339"),
    (["--valid-from", "2020-01-01T00:00:00+08:00"], "already past: nothing to publish"),
    (["--lane", "G0001/#"], "--lane 'G0001/#': a lane id is"),
])
def test_publish_list_arguments_out_of_range_are_exit_2(pki: CommissioningPki, signing_key: Path, tmp_path: Path,
                                                        extra: list[str], message: str) -> None:
    args = [a for a in extra if a != "--version" and a != "-3"]
    version = "-3" if "--version" in extra else "42"
    code, output = publish(pki, signing_key, tmp_path, *args, version=version)
    assert code == 2 and message in one_line(output), output


def test_a_negative_version_in_the_file_and_on_the_command_line_is_exit_2(
        pki: CommissioningPki, signing_key: Path, tmp_path: Path) -> None:
    # The lane's parser refuses the file's version -3 first; no manifest is ever built.
    file = status_list(tmp_path, {"version": -3, "entries": []})
    code, output = publish(pki, signing_key, tmp_path, file=file, version="-3")
    assert code == 2 and "status list version is -3" in one_line(output), output


@pytest.mark.parametrize(("extra", "message"), [
    (["--lifetime", "-3"], "--lifetime -3: expected 1 to 86400 seconds"),
    (["--wait", "0"], "--wait 0: expected seconds > 0"),
    (["--min-seq", "0"], "--min-seq 0: expected 1 or more"),
    (["--key-id", "bad key id!"], "--key-id 'bad key id!': expected"),
    (["--args", "[1]"], "--args: not a JSON object"),
    (["--args", '{"reason": 7}'], "$.args"),
])
def test_send_command_arguments_the_lane_would_refuse_are_exit_2(pki: CommissioningPki, signing_key: Path,
                                                                 tmp_path: Path, extra: list[str],
                                                                 message: str) -> None:
    code, output = send(pki, signing_key, tmp_path, *extra)
    assert code == 2 and message in one_line(output), output
    assert not (tmp_path / "centre.db").exists()


def test_an_unknown_log_level_is_exit_2_not_a_traceback(pki: CommissioningPki, tmp_path: Path) -> None:
    code, output = invoke("run", *tls(pki), "--db", str(tmp_path / "centre.db"), "--log-level", "verbose")
    assert code == 2 and "'verbose': expected one of debug, info, warning, error" in output, output
    assert "Traceback" not in output


# -- exit 1: the other end ----------------------------------------------------------------------------------

def test_a_broker_that_cannot_be_reached_is_exit_1_in_one_line(pki: CommissioningPki, signing_key: Path,
                                                               tmp_path: Path) -> None:
    code, output = send(pki, signing_key, tmp_path)
    assert code == 1 and one_line(output).startswith("laned centre: broker 127.0.0.1:"), output
    code, output = publish(pki, signing_key, tmp_path)
    assert code == 1 and one_line(output).startswith("laned centre: broker 127.0.0.1:"), output


# -- fix advice for the centre's own keys -------------------------------------------------------------------

def test_the_centres_keys_get_fix_advice_for_the_user_it_runs_as(pki: CommissioningPki, tmp_path: Path) -> None:
    signing = generate(tmp_path, "readable").private_path
    signing.chmod(0o644)
    with pytest.raises(CentreError) as caught:
        load_private_key(signing)
    assert f"chmod 600 {signing} && chown {ME} {signing}" in str(caught.value)
    assert "chown laned" not in str(caught.value)

    tls_key = tmp_path / "centre.key"
    tls_key.write_bytes(pki.centre.key.read_bytes())
    tls_key.chmod(0o640)
    broker = BrokerSettings(host="127.0.0.1", port=1, ca=pki.ca_cert, cert=pki.centre.cert, key=tls_key)
    with pytest.raises(CentreError) as caught:
        broker.tls_context()
    assert f"chmod 600 {tls_key} && chown {ME} {tls_key}" in str(caught.value)
    code, output = invoke("run", *tls(pki, key=tls_key), "--db", str(tmp_path / "centre.db"))
    assert code == 2 and f"chown {ME} {tls_key}" in one_line(output) and "chown laned" not in output


def test_the_lanes_key_advice_still_names_its_service_user(tmp_path: Path) -> None:
    key = tmp_path / "lane.key"
    key.write_text("key\n")
    key.chmod(0o644)
    with pytest.raises(TlsConfigError) as caught:
        check_private_key_file(key)
    assert str(caught.value).endswith(f"a key must be mode 0600 or 0400: chmod 600 {key} && chown laned {key}")
    with pytest.raises(TlsConfigError) as caught:
        check_private_key_file(key, owner=None)
    assert str(caught.value).endswith(f"a key must be mode 0600 or 0400: chmod 600 {key}")


# -- laned centre ledger --lane -------------------------------------------------------------------------------

def test_ledger_of_a_lane_the_database_never_heard_of_is_exit_2_naming_the_lanes_it_has(tmp_path: Path) -> None:
    db = tmp_path / "centre.db"
    now = dt.datetime.now(dt.UTC)
    with Ledger(db) as ledger:
        ledger.store_transaction(TransactionMsg.from_dict(example("exit_charge", "Transaction") | {"lane_id": LANE}),
                                 now)
        ledger.note_lane_state(LaneState.from_dict(example("online", "LaneState") | {"lane_id": "G0001-0201-04"}),
                               now)
    code, output = invoke("ledger", "--db", str(db), "--lane", "G0001-0201-3")
    assert code == 2
    assert one_line(output) == (f"laned centre: no transactions from lane G0001-0201-3 in {db}; lanes present: "
                                f"{LANE}, G0001-0201-04")
    code, output = invoke("ledger", "--db", str(db), "--lane", LANE)
    assert code == 0 and "has sent no transactions" not in output
    # A lane that is there but sent no transaction yet: the empty table, and a line saying so.
    code, output = invoke("ledger", "--db", str(db), "--lane", "G0001-0201-04")
    assert code == 0 and "lane G0001-0201-04 has sent no transactions yet" in output and "state online" in output


def test_ledger_of_an_empty_database_says_no_lane_is_present(tmp_path: Path) -> None:
    db = tmp_path / "centre.db"
    Ledger(db).close()
    code, output = invoke("ledger", "--db", str(db), "--lane", LANE)
    assert code == 2 and "lanes present: none" in one_line(output)


def test_the_centre_refuses_to_sign_a_seq_or_version_the_lane_could_not_verify() -> None:
    """Past 2**53 - 1 an RFC 8785 signer and the lane disagree on the signed text (asyncapi.yaml,
    "Signatures"): the centre says so instead of sending what the lane must refuse."""
    import datetime as dt

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from laned.centre.commanding import build_command
    from laned.centre.errors import CentreError
    from laned.centre.lists import build_list
    from laned.uplink.messages import ListKind

    key, now = Ed25519PrivateKey.generate(), dt.datetime.now(dt.UTC)
    with pytest.raises(CentreError, match=r"cannot be signed: \$\.seq is 9007199254740993"):
        build_command(lane_id="L1", command="close_etc", args={"reason": "RSU maintenance"}, seq=2**53 + 1, now=now,
                      private_key=key, key_id="k1")
    with pytest.raises(CentreError, match=r"cannot be signed: \$\.version is 9007199254740993"):
        build_list(kind=ListKind.FEE_TABLE, version=2**53 + 1, data=b"x", now=now, valid_from=now,
                   expires_at=now + dt.timedelta(days=1), private_key=key, key_id="k1")
