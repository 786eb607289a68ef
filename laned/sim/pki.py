"""A throw-away PKI for the simulated centre link, generated at run time: no key is ever
committed, and every run of ``laned sim`` makes its own.

:func:`make_sim_pki` writes into a folder (created 0700; PEM; every private key created
mode 0600 by ``os.open``, never readable by others, not even for a moment):

- a CA (``ca.pem``; its key stays in memory: nothing else issues certificates);
- the broker's certificate for 127.0.0.1 and ``localhost`` (SAN IP and DNS);
- the lane's client certificate, subject CN the lane id: Mosquitto's
  ``use_identity_as_username`` makes the CN the username its ACL confines to that lane's
  topics, and laned refuses a certificate made out to another lane;
- the centre's client certificate (CN ``centre``, which the ACL lets read and write
  every lane's topics).

Its building blocks (laned/provisioning/certificates.py) also make the PKI of ``laned
centre pki`` for commissioning a lane from a laptop.

Keys are EC P-256: generated in microseconds, so the run starts at once. The certificates
are valid for two days from a minute ago (a broker whose clock is a little behind still
accepts them), which outlasts any simulated run.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from laned.provisioning.certificates import CENTRE, Authority, Credentials, ca_certificate, issue, subject_name

VALIDITY = dt.timedelta(days=2)
ORGANISATION = "laned sim"


@dataclass(frozen=True, slots=True)
class SimPki:
    """The files of one run's PKI (see the module docstring)."""

    folder: Path
    ca_cert: Path
    server: Credentials
    lane: Credentials
    centre: Credentials


def make_sim_pki(folder: Path, lane_id: str) -> SimPki:
    """Generate the PKI into ``folder``, which must not hold one already (keys are never
    written over: a second run gets its own folder)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = ca_certificate(ca_key, subject_name("laned sim CA", ORGANISATION), now, validity=VALIDITY)
    ca_path = folder / "ca.pem"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    ca = Authority(ca_key, ca_cert)

    def client(stem: str, name: str) -> Credentials:
        return issue(folder, ca, stem, name, now, ExtendedKeyUsageOID.CLIENT_AUTH, validity=VALIDITY,
                     organisation=ORGANISATION)

    server = issue(folder, ca, "server", "localhost", now, ExtendedKeyUsageOID.SERVER_AUTH, validity=VALIDITY,
                   organisation=ORGANISATION,
                   san=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))])
    return SimPki(folder=folder, ca_cert=ca_path, server=server, lane=client("lane", lane_id),
                  centre=client("centre", CENTRE))
