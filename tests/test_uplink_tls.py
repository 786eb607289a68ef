"""The centre link's TLS files, checked at start (laned/uplink/tls.py): a private key others
can read or change is refused with the path, the mode and the fix; the client context is
TLS 1.2+ with the server's name verified against the centre's CA only.

The certificates are generated here (hil_tests/mqtt_pki.py), never committed.
"""

from __future__ import annotations

import datetime as dt
import os
import ssl
from pathlib import Path

import pytest

from hil_tests.mqtt_pki import Pki, make_pki
from laned.provisioning.certificates import write_private_key
from laned.uplink.tls import (
    TlsConfigError,
    certificate_identity,
    check_client_certificate,
    check_private_key_file,
    client_tls_context,
)

LANE = "G0001-01"


def key_file(tmp_path: Path, mode: int, name: str = "lane.key") -> Path:
    path = tmp_path / name
    write_private_key(path, b"-----BEGIN PRIVATE KEY-----\n...\n-----END PRIVATE KEY-----\n")
    path.chmod(mode)
    return path


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki", lanes=(LANE,))


# -- the key file's mode ---------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_a_key_only_its_owner_can_access_is_accepted(tmp_path: Path, mode: int) -> None:
    path = key_file(tmp_path, mode)
    assert check_private_key_file(path) == path
    assert check_private_key_file(str(path)) == path


@pytest.mark.parametrize(("mode", "who"), [
    (0o640, "group"),
    (0o644, "group and others"),
    (0o604, "others"),
    (0o620, "group"),  # group may swap the key
    (0o602, "others"),
    (0o610, "group"),
    (0o666, "group and others"),
])
def test_a_key_group_or_others_can_access_is_refused_naming_path_mode_and_fix(
        tmp_path: Path, mode: int, who: str) -> None:
    path = key_file(tmp_path, mode)
    with pytest.raises(TlsConfigError) as refused:
        check_private_key_file(path)
    message = str(refused.value)
    assert str(path) in message
    assert f"mode {mode:04o}" in message
    assert f"accessible by {who} " in message
    assert f"chmod 600 {path}" in message and f"chown laned {path}" in message
    assert refused.value.path == path
    assert isinstance(refused.value, ValueError)


def test_a_missing_key_file_is_refused_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "lane.key"
    with pytest.raises(TlsConfigError, match=f"private key file {path} does not exist"):
        check_private_key_file(path)


def test_a_directory_is_not_a_key_file(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    folder.mkdir(mode=0o700)
    with pytest.raises(TlsConfigError, match="is not a regular file \\(a directory\\)"):
        check_private_key_file(folder)


def test_a_named_pipe_is_not_a_key_file(tmp_path: Path) -> None:
    fifo = tmp_path / "lane.key"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(TlsConfigError, match="is not a regular file \\(a named pipe\\)"):
        check_private_key_file(fifo)


def test_a_symlink_is_judged_by_the_file_it_points_to(tmp_path: Path) -> None:
    private = key_file(tmp_path, 0o600, "private.key")
    public = key_file(tmp_path, 0o644, "public.key")
    (tmp_path / "ok.key").symlink_to(private)
    (tmp_path / "leaky.key").symlink_to(public)
    check_private_key_file(tmp_path / "ok.key")
    with pytest.raises(TlsConfigError, match="mode 0644"):
        check_private_key_file(tmp_path / "leaky.key")
    (tmp_path / "dangling.key").symlink_to(tmp_path / "gone.key")
    with pytest.raises(TlsConfigError, match="does not exist"):
        check_private_key_file(tmp_path / "dangling.key")


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can give a file away")
def test_a_key_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    path = key_file(tmp_path, 0o600)
    os.chown(path, 65534, 65534)  # nobody
    with pytest.raises(TlsConfigError, match="is owned by uid 65534"):
        check_private_key_file(path)


def test_a_key_its_owner_cannot_read_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = key_file(tmp_path, 0o200)
    if os.geteuid() == 0:
        # Root reads any file, so the kernel cannot refuse it here (CI runs as root): the
        # answer the kernel gives the service user is given instead.
        real_access = os.access
        monkeypatch.setattr("laned.uplink.tls.os.access",
                            lambda p, mode, **kw: False if Path(p) == path else real_access(p, mode, **kw))
    with pytest.raises(TlsConfigError, match="cannot be read"):
        check_private_key_file(path)


def test_the_generated_keys_are_0600(pki: Pki) -> None:
    keys = sorted(pki.folder.glob("*.key"))
    assert len(keys) == 5  # the server, the lane, the centre, the expired one, the foreign one
    assert {oct(p.stat().st_mode & 0o777) for p in keys} == {"0o600"}
    assert not list(pki.folder.glob("ca*.key"))  # the CAs' keys never touch the disk


# -- the client context ---------------------------------------------------------------------------

def test_the_client_context_verifies_the_broker_and_speaks_tls_1_2_at_least(pki: Pki) -> None:
    lane = pki.client(LANE)
    context = client_tls_context(pki.ca_cert, lane.cert, lane.key)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    # only the centre's CA is trusted, not the system's
    assert [ca["subject"] for ca in context.get_ca_certs()] == [
        ((("organizationName", "laned tests"),), (("commonName", "laned test CA"),))]


def test_the_client_context_checks_the_key_file_first(pki: Pki) -> None:
    lane = pki.client(LANE)
    lane.key.chmod(0o640)
    with pytest.raises(TlsConfigError, match="mode 0640"):
        client_tls_context(pki.ca_cert, lane.cert, lane.key)


def test_a_key_that_is_not_the_certificates_is_refused(pki: Pki) -> None:
    lane = pki.client(LANE)
    other = pki.client("centre")
    with pytest.raises(TlsConfigError, match="the key does not belong to the certificate"):
        client_tls_context(pki.ca_cert, lane.cert, other.key)


def test_missing_ca_or_certificate_files_are_named(pki: Pki, tmp_path: Path) -> None:
    lane = pki.client(LANE)
    with pytest.raises(TlsConfigError, match=f"CA certificate file {tmp_path / 'no-ca.pem'} does not exist"):
        client_tls_context(tmp_path / "no-ca.pem", lane.cert, lane.key)
    with pytest.raises(TlsConfigError, match=f"client certificate file {tmp_path / 'no.pem'} does not exist"):
        client_tls_context(pki.ca_cert, tmp_path / "no.pem", lane.key)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(TlsConfigError, match="CA certificate file .* cannot be used"):
        client_tls_context(garbage, lane.cert, lane.key)


def _handshake(client: ssl.SSLContext, server: ssl.SSLContext, host: str) -> dict[str, object]:
    """A TLS handshake between two contexts over memory BIOs; the server's view of the client
    certificate (``getpeercert``)."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_side = client.wrap_bio(to_client, to_server, server_hostname=host)
    server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_side = server.wrap_bio(server_in, server_out, server_side=True)
    for _ in range(10):  # a TLS 1.3 handshake takes 2 round trips; the rest is margin
        done = 0
        for side in (client_side, server_side):
            try:
                side.do_handshake()
                done += 1
            except ssl.SSLWantReadError:
                pass
        server_in.write(to_server.read())
        to_client.write(server_out.read())
        if done == 2:
            break
    peer = server_side.getpeercert()
    assert peer, "the handshake did not complete"
    return dict(peer)


def _server(pki: Pki) -> ssl.SSLContext:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pki.server.cert, pki.server.key)
    server.load_verify_locations(pki.ca_cert)
    server.verify_mode = ssl.CERT_REQUIRED
    return server


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_the_client_context_accepts_the_centres_server_by_its_names(pki: Pki, host: str) -> None:
    """In process, no socket: the broker's certificate is accepted for its SANs, and the
    server sees the lane's CN."""
    lane = pki.client(LANE)
    peer = _handshake(client_tls_context(pki.ca_cert, lane.cert, lane.key), _server(pki), host)
    assert (("commonName", LANE),) in peer["subject"]  # type: ignore[operator]


def test_the_client_context_refuses_a_server_certificate_for_another_name(pki: Pki) -> None:
    lane = pki.client(LANE)
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        _handshake(client_tls_context(pki.ca_cert, lane.cert, lane.key), _server(pki), "centre.example")


# -- the client certificate names the lane -------------------------------------------------------

def test_the_certificate_names_its_lane(pki: Pki) -> None:
    lane = pki.client(LANE)
    assert certificate_identity(lane.cert) == LANE
    check_client_certificate(lane.cert, identity=LANE, now=dt.datetime.now(dt.UTC))


def test_a_certificate_made_out_to_another_lane_is_refused(pki: Pki) -> None:
    other = pki.client("G0001-02")
    with pytest.raises(TlsConfigError, match="made out to 'G0001-02', not to this lane 'G0001-01'"):
        check_client_certificate(other.cert, identity=LANE, now=dt.datetime.now(dt.UTC))


def test_an_expired_or_not_yet_valid_certificate_is_refused(pki: Pki) -> None:
    assert pki.expired is not None
    now = dt.datetime.now(dt.UTC)
    with pytest.raises(TlsConfigError, match="expired"):
        check_client_certificate(pki.expired.cert, identity=LANE, now=now)
    with pytest.raises(TlsConfigError, match="not valid before .* check the clock"):
        check_client_certificate(pki.client(LANE).cert, identity=LANE, now=now - dt.timedelta(days=365))


def test_a_file_that_is_not_a_certificate_is_named(tmp_path: Path) -> None:
    path = tmp_path / "lane.pem"
    path.write_text("hello\n")
    with pytest.raises(TlsConfigError, match=f"certificate file {path} is not a PEM certificate"):
        certificate_identity(path)
