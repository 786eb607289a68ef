"""Commissioning a lane from a laptop: ``laned centre pki`` and ``laned centre broker-config``
write the files a field engineer copies to the broker, the centre and each lane; nothing
already there is written over. (That the files make a working broker is
hil_tests/test_centre.py, with a real Mosquitto.)"""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from typer.testing import CliRunner

from laned.cli import app
from laned.provisioning.broker_access import lane_topics
from laned.uplink.contract import Direction
from laned.uplink.tls import check_client_certificate, client_tls_context

LANES = ("G0001-0201-03", "G0001-0201-04")


def invoke(*args: str) -> tuple[int, str]:
    done = CliRunner().invoke(app, ["centre", *args])
    assert done.exception is None or isinstance(done.exception, SystemExit), done.exception
    return done.exit_code, done.output


def make(tmp_path: Path, *extra: str) -> Path:
    out = tmp_path / "pki"
    code, output = invoke("pki", "--out", str(out), *(a for lane in LANES for a in ("--lane", lane)), *extra)
    assert code == 0, output
    return out


def cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def cn(path: Path) -> str:
    return str(cert(path).subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- laned centre pki --------------------------------------------------------------------------------

def test_pki_writes_the_ca_the_broker_the_centre_and_each_lane_with_keys_0600(tmp_path: Path) -> None:
    out = make(tmp_path, "--broker-host", "192.168.10.5", "--broker-host", "laptop.local")
    assert cn(out / "centre.pem") == "centre"
    for lane in LANES:
        folder = out / "lanes" / lane
        assert sorted(p.name for p in folder.iterdir()) == ["centre-ca.pem", "lane.key", "lane.pem"]
        assert cn(folder / "lane.pem") == lane
        assert (folder / "centre-ca.pem").read_bytes() == (out / "ca.pem").read_bytes()
        # What the lane checks at start, and the context it connects with, take the files as they are.
        check_client_certificate(folder / "lane.pem", identity=lane, now=dt.datetime.now(dt.UTC))
        client_tls_context(folder / "centre-ca.pem", folder / "lane.pem", folder / "lane.key")
    keys = sorted(out.rglob("*.key"))
    assert [k.relative_to(out).as_posix() for k in keys] == [
        "broker.key", "centre.key", *(f"lanes/{lane}/lane.key" for lane in LANES)]
    assert all(mode(k) == 0o600 for k in keys)
    assert mode(out) == 0o700 and mode(out / "lanes") == 0o700
    names = cert(out / "broker.pem").extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["laptop.local", "localhost"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("192.168.10.5"),
                                                         ipaddress.ip_address("127.0.0.1")]
    valid_for = cert(out / "lanes" / LANES[0] / "lane.pem").not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=89) < valid_for <= dt.timedelta(days=90)


def test_pki_prints_which_file_goes_to_which_machine(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    code, output = invoke("pki", "--out", str(out), "--lane", LANES[0], "--broker-host", "192.168.10.5")
    assert code == 0, output
    assert f"the broker, on this laptop:       {out / 'ca.pem'}, {out / 'broker.pem'}, {out / 'broker.key'}" in output
    assert "192.168.10.5, localhost, 127.0.0.1: a lane's [uplink] host must be one of them" in output
    assert f"--ca {out / 'ca.pem'} --cert {out / 'centre.pem'} --key {out / 'centre.key'}" in output
    assert f"lane {LANES[0]}, to its /etc/laned/tls/: centre-ca.pem, lane.pem, lane.key" in output
    assert f"laned centre broker-config --pki {out}" in output


def test_pki_never_writes_over_existing_files_unless_forced(tmp_path: Path) -> None:
    out = make(tmp_path)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code, output = invoke("pki", "--out", str(out), "--lane", LANES[0])
    assert code == 2 and "never written over" in output and str(out / "ca.pem") in output
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    code, output = invoke("pki", "--out", str(out), "--lane", LANES[0], "--force")
    assert code == 0, output
    assert (out / "ca.pem").read_bytes() != before[out / "ca.pem"]  # a new CA
    assert mode(out / "lanes" / LANES[0] / "lane.key") == 0o600


@pytest.mark.parametrize(("args", "message"), [
    (["--lane", ".."], "--lane '..': a lane id is 1-32 letters"),
    (["--lane", "G1/../x"], "--lane 'G1/../x': a lane id is 1-32 letters"),
    (["--lane", "G1", "--lane", "G1"], "--lane 'G1' is given twice"),
    (["--lane", "centre"], "the centre's own identity"),
    (["--lane", "G1", "--broker-host", "-laptop"], "--broker-host '-laptop' is neither an IP address nor a host"),
    (["--lane", "G1", "--valid-days", "0"], "--valid-days 0: expected 1 to 3650 days"),
])
def test_pki_refuses_bad_input_with_exit_2_and_writes_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    code, output = invoke("pki", "--out", str(tmp_path / "pki"), *args)
    assert code == 2 and message in output, output
    assert len(output.strip().splitlines()) == 1  # one line
    assert not (tmp_path / "pki").exists()


# -- laned centre broker-config ---------------------------------------------------------------------

def test_broker_config_writes_the_tls_listener_and_the_per_lane_acl_from_the_contract(tmp_path: Path) -> None:
    pki = make(tmp_path)
    conf = tmp_path / "broker" / "mosquitto.conf"
    code, output = invoke("broker-config", "--pki", str(pki), "--out", str(conf), "--port", "18883",
                          "--bind", "127.0.0.1")
    assert code == 0, output
    text = conf.read_text().splitlines()
    for line in ("allow_anonymous false", f"acl_file {conf.with_suffix('.acl')}",
                 f"password_file {conf.with_suffix('.passwords')}", "listener 18883 127.0.0.1",
                 f"cafile {pki / 'ca.pem'}", f"certfile {pki / 'broker.pem'}", f"keyfile {pki / 'broker.key'}",
                 "require_certificate true", "use_identity_as_username true", "tls_version tlsv1.2"):
        assert line in text, line
    acl = [line for line in conf.with_suffix(".acl").read_text().splitlines() if line and not line.startswith("#")]
    expected: list[str] = []
    for lane in LANES:  # every lane of the PKI when no --lane is given
        expected += [f"user {lane}", *(f"topic write etc/v1/{lane}/{t}" for t in lane_topics(Direction.SEND)),
                     *(f"topic read etc/v1/{lane}/{t}" for t in lane_topics(Direction.RECEIVE))]
    assert acl == [*expected, "user centre", "topic readwrite etc/v1/#"]
    assert "topic write etc/v1/G0001-0201-03/tx" in acl and "topic read etc/v1/G0001-0201-03/cmd" in acl
    passwords = conf.with_suffix(".passwords")
    assert passwords.read_text() == "" and mode(passwords) == 0o600
    assert f"-c {conf}" in output


def test_broker_config_lets_in_only_the_lanes_named(tmp_path: Path) -> None:
    pki = make(tmp_path)
    conf = tmp_path / "mosquitto.conf"
    code, output = invoke("broker-config", "--pki", str(pki), "--out", str(conf), "--lane", LANES[1])
    assert code == 0, output
    acl = conf.with_suffix(".acl").read_text()
    assert f"user {LANES[1]}" in acl and LANES[0] not in acl


def test_broker_config_refuses_a_missing_pki_an_unknown_lane_and_existing_files(tmp_path: Path) -> None:
    conf = tmp_path / "mosquitto.conf"
    code, output = invoke("broker-config", "--pki", str(tmp_path / "nothing"), "--out", str(conf))
    assert code == 2 and "ca.pem" in output and "laned centre pki" in output, output
    pki = make(tmp_path)
    code, output = invoke("broker-config", "--pki", str(pki), "--out", str(conf), "--lane", "G0001-0201-3")
    assert code == 2 and "--lane G0001-0201-3: no certificate" in output and LANES[0] in output, output
    assert not conf.exists()
    assert invoke("broker-config", "--pki", str(pki), "--out", str(conf))[0] == 0
    code, output = invoke("broker-config", "--pki", str(pki), "--out", str(conf), "--port", "9999")
    assert code == 2 and "never written over" in output
    assert "listener 8883 " in conf.read_text()
    assert invoke("broker-config", "--pki", str(pki), "--out", str(conf), "--port", "9999", "--force")[0] == 0
    assert "listener 9999 " in conf.read_text()
