"""A throw-away PKI for the MQTT security tests, generated with ``cryptography`` at run
time: no key is ever committed.

What :func:`make_pki` writes into a folder (PEM; every private key mode 0600, created so
by ``os.open`` and never readable by others, not even for a moment):

- the lanes' CA (``ca.pem``) and the broker's certificate for 127.0.0.1 / localhost
  (SAN IP and DNS), signed by it;
- one client certificate per lane id, its subject CN the lane id (Mosquitto's
  ``use_identity_as_username`` makes the CN the MQTT username the ACL names), and one
  for the centre (CN ``centre``);
- an *expired* certificate for a lane (valid yesterday, not today), issued by the same CA;
- a *foreign* CA and a certificate it issued for a lane (right CN, wrong issuer).

Keys are EC P-256: generated in microseconds, which keeps the fixture far below the
tests' budget (RSA-2048 would take tens of milliseconds each).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from laned.provisioning.certificates import ca_certificate

CENTRE = "centre"  # the centre's client identity (its certificate's CN)
KEY_MODE = 0o600
VALIDITY = dt.timedelta(days=2)
# A clock skew allowance: a certificate issued "now" is valid from a minute ago, so a
# broker whose clock is a little behind the test's still accepts it.
BACKDATE = dt.timedelta(minutes=1)


@dataclass(frozen=True)
class Credentials:
    """One TLS identity on disk: its certificate and its private key (mode 0600)."""

    name: str  # the subject CN
    cert: Path
    key: Path


@dataclass(frozen=True)
class _Authority:
    name: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    path: Path  # the CA certificate, PEM


@dataclass
class Pki:
    """The files of one test PKI (see the module docstring), and issuing of more."""

    folder: Path
    ca: _Authority
    foreign_ca: _Authority
    server: Credentials
    clients: dict[str, Credentials] = field(default_factory=dict)
    expired: Credentials | None = None  # lanes[0]'s id, expired, issued by the real CA
    foreign: Credentials | None = None  # lanes[0]'s id, issued by the foreign CA

    @property
    def ca_cert(self) -> Path:
        return self.ca.path

    @property
    def foreign_ca_cert(self) -> Path:
        return self.foreign_ca.path

    def client(self, name: str) -> Credentials:
        """The credentials of a lane (or the centre), issued on first use by the real CA."""
        if name not in self.clients:
            self.clients[name] = self.issue(name)
        return self.clients[name]

    def issue(self, name: str, *, file_stem: str | None = None, by_foreign_ca: bool = False,
              not_before: dt.datetime | None = None, not_after: dt.datetime | None = None) -> Credentials:
        """A client certificate with subject CN ``name`` (not remembered in ``clients``)."""
        authority = self.foreign_ca if by_foreign_ca else self.ca
        now = _now()
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(
            subject=_name(name), public_key=key.public_key(), issuer=authority,
            not_before=not_before or now - BACKDATE, not_after=not_after or now + VALIDITY,
            extended_usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        )
        stem = file_stem or f"client-{name}"
        return _write_credentials(self.folder, stem, name, cert, key)


def make_pki(folder: Path, lanes: tuple[str, ...] = ("G0001-01", "G0001-02")) -> Pki:
    """Generate the PKI into ``folder`` (created 0700 if missing); ``lanes[0]`` is the lane
    the expired and the foreign certificates are made out to."""
    if not lanes:
        raise ValueError("make_pki needs at least one lane id")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca = _authority(folder, "laned test CA", "ca")
    foreign_ca = _authority(folder, "someone else's CA", "foreign-ca")
    now = _now()
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = _certificate(
        subject=_name("localhost"), public_key=server_key.public_key(), issuer=ca,
        not_before=now - BACKDATE, not_after=now + VALIDITY,
        extended_usage=ExtendedKeyUsageOID.SERVER_AUTH,
        san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))],
    )
    pki = Pki(folder=folder, ca=ca, foreign_ca=foreign_ca,
              server=_write_credentials(folder, "server", "localhost", server_cert, server_key))
    for name in (*lanes, CENTRE):
        pki.client(name)
    pki.expired = pki.issue(lanes[0], file_stem=f"expired-{lanes[0]}",
                            not_before=now - dt.timedelta(days=30), not_after=now - dt.timedelta(days=1))
    pki.foreign = pki.issue(lanes[0], file_stem=f"foreign-{lanes[0]}", by_foreign_ca=True)
    return pki


# -- building blocks ------------------------------------------------------------------------------

def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "laned tests"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _authority(folder: Path, common_name: str, stem: str) -> _Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = ca_certificate(key, _name(common_name), now, validity=VALIDITY, backdate=BACKDATE)
    path = folder / f"{stem}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    # The CA's key stays in memory: nothing outside this process issues certificates.
    return _Authority(name=common_name, key=key, cert=cert, path=path)


def _certificate(*, subject: x509.Name, public_key: ec.EllipticCurvePublicKey, issuer: _Authority,
                 not_before: dt.datetime, not_after: dt.datetime, extended_usage: x509.ObjectIdentifier,
                 san: list[x509.GeneralName] | None = None) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False,
                                     crl_sign=False, content_commitment=False, data_encipherment=False,
                                     key_agreement=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([extended_usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer.key, hashes.SHA256())


def _write_credentials(folder: Path, stem: str, name: str, cert: x509.Certificate,
                       key: ec.EllipticCurvePrivateKey) -> Credentials:
    cert_path = folder / f"{stem}.pem"
    key_path = folder / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_private_key(key_path, key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption(),
    ))
    return Credentials(name=name, cert=cert_path, key=key_path)


def write_private_key(path: Path, data: bytes) -> None:
    """Write a key file created with mode 0600 (the umask can only narrow it), replacing none."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_MODE)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
