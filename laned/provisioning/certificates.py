"""The building blocks of a lane deployment's PKI: a CA held in memory and the end-entity
certificates it issues, every private key written mode 0600 by ``os.open`` (never readable
by others, not even for a moment) and never over an existing key.

Keys are EC P-256: generated in microseconds. Every certificate is backdated a minute, so a
broker whose clock is a little behind still accepts it. The validity and the organisation
are the caller's: two days for a simulated run, years for a commissioned lane.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CENTRE = "centre"  # the centre's client identity (its certificate's CN), as every ACL names it
KEY_MODE = 0o600
BACKDATE = dt.timedelta(minutes=1)  # clock skew allowance between the issuer and the broker


@dataclass(frozen=True, slots=True)
class Credentials:
    """One TLS identity on disk: its certificate and its private key (mode 0600)."""

    name: str  # the subject CN
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class Authority:
    """A CA held in memory: its key signs the certificates :func:`issue` makes."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate


def ca_certificate(key: ec.EllipticCurvePrivateKey, subject: x509.Name, now: dt.datetime, *,
                   validity: dt.timedelta, backdate: dt.timedelta = BACKDATE) -> x509.Certificate:
    """A self-signed CA certificate for ``key``: it issues end-entity certificates only
    (path length 0)."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - backdate)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def subject_name(common_name: str, organisation: str) -> x509.Name:
    """A subject name: the organisation and the CN (the identity the broker knows)."""
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def issue(folder: Path, ca: Authority, stem: str, common_name: str, now: dt.datetime,
          usage: x509.ObjectIdentifier, *, validity: dt.timedelta, organisation: str,
          san: list[x509.GeneralName] | None = None) -> Credentials:
    """An end-entity certificate for a new EC P-256 key, signed by ``ca``: written as
    ``<stem>.pem`` and ``<stem>.key`` (mode 0600, never over an existing key) in ``folder``.
    ``usage`` is server or client authentication; ``san`` the broker's names."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = end_entity(ca, subject_name(common_name, organisation), key.public_key(), now - BACKDATE, now + validity,
                      usage, san=san)
    return write_credentials(folder, stem, common_name, cert, key)


def end_entity(ca: Authority, subject: x509.Name, public_key: ec.EllipticCurvePublicKey, not_before: dt.datetime,
               not_after: dt.datetime, usage: x509.ObjectIdentifier, *,
               san: list[x509.GeneralName] | None = None) -> x509.Certificate:
    """A certificate for ``public_key`` signed by ``ca``, not a CA itself, valid from
    ``not_before`` to ``not_after`` (the tests make expired ones) for ``usage``."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, key_cert_sign=False,
                                     crl_sign=False, content_commitment=False, data_encipherment=False,
                                     key_agreement=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(ca.key, hashes.SHA256())


def write_credentials(folder: Path, stem: str, name: str, cert: x509.Certificate,
                      key: ec.EllipticCurvePrivateKey) -> Credentials:
    """``cert`` and ``key`` as ``<stem>.pem`` and ``<stem>.key`` (mode 0600, never over an
    existing key) in ``folder``."""
    cert_path, key_path = folder / f"{stem}.pem", folder / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_private_key(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return Credentials(name=name, cert=cert_path, key=key_path)


def write_private_key(path: Path, data: bytes) -> None:
    """Write a key file created with mode 0600 (the umask can only narrow it), replacing none."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_MODE)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
