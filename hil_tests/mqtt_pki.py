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
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from laned.provisioning.certificates import CENTRE as CENTRE
from laned.provisioning.certificates import (
    BACKDATE, Authority, ca_certificate, end_entity, subject_name, write_credentials,
)
from laned.provisioning.certificates import Credentials as Credentials

VALIDITY = dt.timedelta(days=2)


@dataclass(frozen=True)
class _Authority:
    signer: Authority  # the key stays in memory: nothing outside this process issues certificates
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
        cert = end_entity(authority.signer, _name(name), key.public_key(),
                          not_before or now - BACKDATE, not_after or now + VALIDITY, ExtendedKeyUsageOID.CLIENT_AUTH)
        stem = file_stem or f"client-{name}"
        return write_credentials(self.folder, stem, name, cert, key)


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
    server_cert = end_entity(ca.signer, _name("localhost"), server_key.public_key(),
                             now - BACKDATE, now + VALIDITY, ExtendedKeyUsageOID.SERVER_AUTH,
                             san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))])
    pki = Pki(folder=folder, ca=ca, foreign_ca=foreign_ca,
              server=write_credentials(folder, "server", "localhost", server_cert, server_key))
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
    return subject_name(common_name, "laned tests")


def _authority(folder: Path, common_name: str, stem: str) -> _Authority:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = ca_certificate(key, _name(common_name), now, validity=VALIDITY, backdate=BACKDATE)
    path = folder / f"{stem}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return _Authority(signer=Authority(key, cert), path=path)
