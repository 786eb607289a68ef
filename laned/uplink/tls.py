"""TLS of the centre link: the lane's private key file checked before it is used, and the
client ``ssl.SSLContext`` laned connects to the broker with.

The broker (see hil_tests/mosquitto_broker.py for the configuration a centre deploys)
requires a client certificate from the lanes' CA and takes its subject CN as the MQTT
username its ACL confines to ``etc/v1/<CN>/...``. So a lane's certificate must name its
lane: one made out to another name connects, but every publish of the lane would be
dropped by the ACL without a word (MQTT 3.1.1) — :func:`check_client_certificate` says so
at start instead.

No asyncio and no clock here: ``now`` is passed in. Every refusal is a
:class:`TlsConfigError` naming the file, what is wrong with it and how to fix it.
"""

from __future__ import annotations

import datetime as dt
import os
import ssl
import stat
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import NameOID

# Group and others get nothing: no read (the key leaks), no write (the key is swapped), no
# execute (a sign the mode was set carelessly). 0600 and 0400 pass.
FORBIDDEN_KEY_BITS = stat.S_IRWXG | stat.S_IRWXO
SERVICE_USER = "laned"  # the systemd unit's User= (systemd/laned.service)


class TlsConfigError(ValueError):
    """A TLS file (key, certificate, CA) cannot be used; ``path`` names it."""

    def __init__(self, path: Path, message: str) -> None:
        self.path = path
        super().__init__(message)


def check_private_key_file(path: Path | str, *, owner: str | None = SERVICE_USER) -> Path:
    """Refuse a private key file that others could read or change; return its path.

    It must exist, be a regular file (a symlink to one is followed), grant nothing to group
    or others (0600 or 0400), be owned by the user laned runs as (or by root) and be
    readable by it.

    ``owner`` is the user the fix advice hands the file to (``chown``): the lane's service
    user by default; the reference centre on a laptop passes the user it runs as. None:
    the advice is ``chmod`` alone.
    """
    path = Path(path)
    fix = f"chmod 600 {path}" + (f" && chown {owner} {path}" if owner else "")
    try:
        st = path.stat()
    except FileNotFoundError:
        raise TlsConfigError(path, f"private key file {path} does not exist") from None
    except OSError as err:
        raise TlsConfigError(path, f"private key file {path}: cannot check it: {err.strerror}") from None
    mode = stat.S_IMODE(st.st_mode)
    if not stat.S_ISREG(st.st_mode):
        raise TlsConfigError(path, f"private key file {path} is not a regular file ({_file_kind(st.st_mode)})")
    if mode & FORBIDDEN_KEY_BITS:
        who = " and ".join(w for w, bits in (("group", stat.S_IRWXG), ("others", stat.S_IRWXO)) if mode & bits)
        raise TlsConfigError(
            path, f"private key file {path} is accessible by {who} (mode {mode:04o}); "
                  f"a key must be mode 0600 or 0400: {fix}")
    euid = os.geteuid()
    if st.st_uid not in (euid, 0):
        raise TlsConfigError(
            path, f"private key file {path} is owned by uid {st.st_uid}, not by the user laned runs as "
                  f"(uid {euid}) or root (mode {mode:04o}): {fix}")
    if not os.access(path, os.R_OK):
        raise TlsConfigError(
            path, f"private key file {path} cannot be read by the user laned runs as (uid {euid}, "
                  f"mode {mode:04o}): {fix}")
    return path


def client_tls_context(ca: Path | str, cert: Path | str, key: Path | str) -> ssl.SSLContext:
    """The context laned connects to the broker with: TLS 1.2 at least, the broker's
    certificate verified against ``ca`` only (not the system's CAs) and its name checked
    against the host connected to, the lane's certificate and key presented.

    The key file is checked first (:func:`check_private_key_file`).
    """
    ca, cert, key = Path(ca), Path(cert), Path(key)
    check_private_key_file(key)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname, CERT_REQUIRED
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_verify_locations(cafile=ca)
    except FileNotFoundError:
        raise TlsConfigError(ca, f"CA certificate file {ca} does not exist") from None
    except (OSError, ssl.SSLError) as err:
        raise TlsConfigError(ca, f"CA certificate file {ca} cannot be used: {_reason(err)}") from None
    try:
        context.load_cert_chain(certfile=cert, keyfile=key)
    except FileNotFoundError:
        raise TlsConfigError(cert, f"client certificate file {cert} does not exist") from None
    except (OSError, ssl.SSLError) as err:
        raise TlsConfigError(
            cert, f"client certificate {cert} with key {key} cannot be used "
                  f"(not PEM, or the key does not belong to the certificate): {_reason(err)}") from None
    return context


def certificate_identity(cert: Path | str) -> str:
    """The subject CN of a PEM certificate: the name the broker knows the client by."""
    cert = Path(cert)
    certificate = _load_certificate(cert)
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        raise TlsConfigError(cert, f"certificate {cert} has no subject CN; the broker needs the lane id there")
    value = names[0].value
    return value if isinstance(value, str) else value.decode()


def check_client_certificate(cert: Path | str, *, identity: str, now: dt.datetime) -> None:
    """Refuse a client certificate that is not made out to ``identity`` (the lane id) or is
    not valid at ``now`` (timezone-aware): the broker would refuse or silence the lane."""
    cert = Path(cert)
    certificate = _load_certificate(cert)
    name = certificate_identity(cert)
    if name != identity:
        raise TlsConfigError(
            cert, f"certificate {cert} is made out to {name!r}, not to this lane {identity!r}: the broker "
                  f"would confine the lane to etc/v1/{name}/ and drop everything it publishes")
    if now < certificate.not_valid_before_utc:
        raise TlsConfigError(
            cert, f"certificate {cert} is not valid before {certificate.not_valid_before_utc:%Y-%m-%d %H:%M:%S} "
                  f"UTC (now {now.astimezone(dt.UTC):%Y-%m-%d %H:%M:%S} UTC): check the clock")
    if now > certificate.not_valid_after_utc:
        raise TlsConfigError(
            cert, f"certificate {cert} expired {certificate.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC: "
                  f"install the renewed certificate")


def _load_certificate(cert: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(cert.read_bytes())
    except FileNotFoundError:
        raise TlsConfigError(cert, f"certificate file {cert} does not exist") from None
    except OSError as err:
        raise TlsConfigError(cert, f"certificate file {cert} cannot be read: {err.strerror}") from None
    except ValueError as err:
        raise TlsConfigError(cert, f"certificate file {cert} is not a PEM certificate: {err}") from None


def _file_kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return f"file type {stat.S_IFMT(mode):o}"


def _reason(err: OSError | ssl.SSLError) -> str:
    if isinstance(err, ssl.SSLError):
        return err.reason or str(err)
    return err.strerror or str(err)
