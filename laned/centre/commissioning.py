"""Commissioning a lane from a laptop: the certificates and the Mosquitto configuration
(``laned centre pki``, ``laned centre broker-config``; docs/centre.md, "Commissioning a
lane from a laptop").

:func:`make_pki` writes, into one folder (created 0700; PEM; EC P-256 keys created mode
0600, never readable by others, not even for a moment):

* ``ca.pem`` — the CA. Its key stays in memory and is gone when the command ends: nothing
  else issues certificates (another lane later: run it again with every lane, ``--force``);
* ``broker.pem`` / ``broker.key`` — the broker's server certificate, for ``localhost``,
  ``127.0.0.1`` and the names given (the laptop's address on the lane's network: the lane
  checks the name it connects to against it);
* ``centre.pem`` / ``centre.key`` — ``laned centre``'s client certificate, CN ``centre``
  (the identity the ACL lets read and write every lane's topics);
* ``lanes/<lane id>/`` — what goes to each lane: ``centre-ca.pem`` (the CA again),
  ``lane.pem`` (CN the lane id: Mosquitto's ``use_identity_as_username`` makes it the
  username the ACL names, and laned refuses a certificate made out to another lane) and
  ``lane.key``.

:func:`write_broker_config` writes a ``mosquitto.conf`` beside its ACL and an empty
password file, with the same rules as the simulator's broker (laned/provisioning/broker_access.py): one
TLS listener requiring a certificate from the CA, the CN as the username, no anonymous
and no password logins; and an ACL naming each lane, which may write only its lane→centre
topics and read only its centre→lane topics, read from the uplink contract so that the two
cannot drift apart.

Files already there are never written over unless ``force``: a key in use is not lost by a
repeated command.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import pwd
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from laned.centre.errors import CentreError
from laned.provisioning.broker_access import lane_acl_text, tls_listener
from laned.provisioning.certificates import CENTRE, Authority, Credentials, ca_certificate, issue, subject_name

LANE_ID = re.compile(r"[A-Za-z0-9_.-]{1,32}")  # the contract's LaneId (docs/asyncapi.yaml)
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOST_NAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")  # RFC 1123 host name
DEFAULT_VALID_DAYS = 90  # a commissioning campaign; the lane gets the real centre's certificate afterwards
MAX_VALID_DAYS = 3650
LOCAL_NAMES = ("localhost", "127.0.0.1")  # always in the broker's certificate: the centre on the laptop
ORGANISATION = "laned commissioning"
DEFAULT_PORT = 8883  # MQTT over TLS (IANA)
DEFAULT_BIND = "0.0.0.0"  # the lane reaches the laptop over the lane's network
# What laned centre run's persistent session may have queued while it is stopped; Mosquitto's
# default is 1000 messages (docs/centre.md, "The broker, for the centre").
MAX_QUEUED_MESSAGES = 1_000_000

CA_FILE = "ca.pem"
BROKER_STEM, CENTRE_STEM, LANE_STEM = "broker", "centre", "lane"
LANE_CA_FILE = "centre-ca.pem"  # as laned.example.toml names it on the lane
LANES_DIR = "lanes"


@dataclass(frozen=True, slots=True)
class LaneFiles:
    """What goes to one lane (its ``[uplink]`` ``ca``, ``cert``, ``key``)."""

    lane_id: str
    folder: Path
    ca_cert: Path
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class CommissioningPki:
    folder: Path
    ca_cert: Path
    broker: Credentials
    broker_names: tuple[str, ...]
    centre: Credentials
    lanes: tuple[LaneFiles, ...]
    not_after: dt.datetime


@dataclass(frozen=True, slots=True)
class BrokerFiles:
    conf: Path
    acl: Path
    passwords: Path
    lanes: tuple[str, ...]


def check_lane_ids(lanes: Sequence[str]) -> tuple[str, ...]:
    """The lane ids, each once, each a contract LaneId that can name a folder and an MQTT user."""
    if not lanes:
        raise CentreError("--lane: give at least one lane id (repeat --lane for more)")
    seen: list[str] = []
    for lane_id in lanes:
        if not LANE_ID.fullmatch(lane_id) or lane_id in (".", ".."):
            raise CentreError(f"--lane {lane_id!r}: a lane id is 1-32 letters, digits, '-', '_' or '.' "
                              "(the contract's LaneId, e.g. G0001-0201-03)")
        if lane_id == CENTRE:
            raise CentreError(f"--lane {lane_id!r}: that is the centre's own identity, not a lane id")
        if lane_id in seen:
            raise CentreError(f"--lane {lane_id!r} is given twice")
        seen.append(lane_id)
    return tuple(seen)


def _general_names(names: Sequence[str]) -> tuple[tuple[str, ...], list[x509.GeneralName]]:
    wanted: list[str] = []
    for given in (*names, *LOCAL_NAMES):
        if given not in wanted:
            wanted.append(given)
    general: list[x509.GeneralName] = []
    for value in wanted:
        try:
            general.append(x509.IPAddress(ipaddress.ip_address(value)))
        except ValueError:
            if not _HOST_NAME.fullmatch(value):
                raise CentreError(f"--broker-host {value!r} is neither an IP address nor a host name") from None
            general.append(x509.DNSName(value))
    return tuple(wanted), general


def pki_files(folder: Path, lanes: Sequence[str]) -> list[Path]:
    """Every file :func:`make_pki` writes into ``folder`` for ``lanes``."""
    files = [folder / CA_FILE]
    for stem in (BROKER_STEM, CENTRE_STEM):
        files += [folder / f"{stem}.pem", folder / f"{stem}.key"]
    for lane_id in lanes:
        lane_dir = folder / LANES_DIR / lane_id
        files += [lane_dir / LANE_CA_FILE, lane_dir / f"{LANE_STEM}.pem", lane_dir / f"{LANE_STEM}.key"]
    return files


def _refuse_or_clear(files: Sequence[Path], force: bool, what: str) -> None:
    """Nothing written over unless ``force``; checked for every file before the first is written."""
    existing = [f for f in files if f.exists() or f.is_symlink()]
    if not existing:
        return
    if not force:
        shown = ", ".join(str(f) for f in existing[:4]) + (f" (+{len(existing) - 4} more)" if len(existing) > 4 else "")
        raise CentreError(f"{shown} exist{'s' if len(existing) == 1 else ''}: {what} never written over (choose "
                          "another --out, or --force to replace them)")
    for f in existing:
        if f.is_dir() and not f.is_symlink():
            raise CentreError(f"{f} is a folder, where a file is to be written")
        f.unlink()


def make_pki(folder: Path, lanes: Sequence[str], *, broker_names: Sequence[str] = (),
             valid_days: int = DEFAULT_VALID_DAYS, force: bool = False,
             now: dt.datetime | None = None) -> CommissioningPki:
    """Generate the commissioning PKI (see the module docstring) into ``folder``."""
    lane_ids = check_lane_ids(lanes)
    if not 1 <= valid_days <= MAX_VALID_DAYS:
        raise CentreError(f"--valid-days {valid_days}: expected 1 to {MAX_VALID_DAYS} days")
    names, san = _general_names(broker_names)
    now = now or dt.datetime.now(dt.UTC)
    validity = dt.timedelta(days=valid_days)
    try:
        _refuse_or_clear(pki_files(folder, lane_ids), force, "certificates and keys are")
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        (folder / LANES_DIR).mkdir(mode=0o700, exist_ok=True)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_cert = ca_certificate(ca_key, subject_name("laned commissioning CA", ORGANISATION), now, validity=validity)
        ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
        ca_path = folder / CA_FILE
        ca_path.write_bytes(ca_pem)
        ca = Authority(ca_key, ca_cert)
        broker = issue(folder, ca, BROKER_STEM, names[0], now, ExtendedKeyUsageOID.SERVER_AUTH, san=san,
                       validity=validity, organisation=ORGANISATION)
        centre = issue(folder, ca, CENTRE_STEM, CENTRE, now, ExtendedKeyUsageOID.CLIENT_AUTH, validity=validity,
                       organisation=ORGANISATION)
        made: list[LaneFiles] = []
        for lane_id in lane_ids:
            lane_dir = folder / LANES_DIR / lane_id
            lane_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            (lane_dir / LANE_CA_FILE).write_bytes(ca_pem)
            lane = issue(lane_dir, ca, LANE_STEM, lane_id, now, ExtendedKeyUsageOID.CLIENT_AUTH, validity=validity,
                         organisation=ORGANISATION)
            made.append(LaneFiles(lane_id=lane_id, folder=lane_dir, ca_cert=lane_dir / LANE_CA_FILE, cert=lane.cert,
                                  key=lane.key))
    except OSError as err:
        raise CentreError(f"--out {folder}: cannot write the PKI: {err}") from None
    return CommissioningPki(folder=folder, ca_cert=ca_path, broker=broker, broker_names=names, centre=centre,
                            lanes=tuple(made), not_after=now + validity)


# -- the broker ------------------------------------------------------------------------------------


def pki_lanes(folder: Path) -> tuple[str, ...]:
    """The lanes :func:`make_pki` made certificates for in ``folder`` (sorted)."""
    lanes_dir = folder / LANES_DIR
    if not lanes_dir.is_dir():
        return ()
    return tuple(sorted(d.name for d in lanes_dir.iterdir() if (d / f"{LANE_STEM}.pem").is_file()))


def broker_config_text(*, port: int, bind: str, ca_cert: Path, cert: Path, key: Path, acl: Path,
                       passwords: Path, user: str) -> str:
    return "\n".join([
        "# Written by laned centre broker-config (laned/centre/commissioning.py): a broker for",
        "# commissioning lanes from a laptop. Start it with: mosquitto -c <this file>",
        # Run as root, mosquitto would switch to the 'mosquitto' user, who cannot read the
        # 0600 broker key: it stays the user who made the PKI.
        f"user {user}",
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {passwords}",  # empty: no username/password login exists
        f"acl_file {acl}",
        "persistence false",  # the lanes' journals are the outbox: they send again what was not acknowledged
        f"max_queued_messages {MAX_QUEUED_MESSAGES}",  # for laned centre run's session while it is stopped
        "log_dest stderr",
        "log_type error",
        "log_type warning",
        "log_type notice",
        "log_type information",
        "log_type subscribe",
        "connection_messages true",
        "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        "",
        *tls_listener(port, bind, ca_cert, cert, key),
        "",
    ])


def broker_files(out: Path) -> tuple[Path, Path, Path]:
    """The configuration and, beside it, its ACL and (empty) password file."""
    return out, out.with_suffix(".acl"), out.with_suffix(".passwords")


def write_broker_config(out: Path, pki_folder: Path, lanes: Sequence[str] = (), *, port: int = DEFAULT_PORT,
                        bind: str = DEFAULT_BIND, force: bool = False) -> BrokerFiles:
    """Write the Mosquitto configuration for the PKI in ``pki_folder`` (``lanes``: all of its
    lanes when none are given)."""
    if not 1 <= port <= 65535:
        raise CentreError(f"--port {port}: expected 1 to 65535")
    try:
        ipaddress.ip_address(bind)
    except ValueError:
        raise CentreError(f"--bind {bind!r}: expected an IP address of this machine (0.0.0.0: every one)") from None
    folder = pki_folder.resolve()
    needed = [folder / CA_FILE, folder / f"{BROKER_STEM}.pem", folder / f"{BROKER_STEM}.key"]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise CentreError(f"--pki {pki_folder}: {', '.join(missing)} missing (laned centre pki --out "
                          f"{pki_folder} --lane ... makes them)")
    present = pki_lanes(folder)
    chosen = check_lane_ids(lanes) if lanes else present
    if not chosen:
        raise CentreError(f"--pki {pki_folder}: no lane certificates in {folder / LANES_DIR}; give --lane")
    unknown = [lane_id for lane_id in chosen if lane_id not in present]
    if unknown:
        raise CentreError(f"--lane {', '.join(unknown)}: no certificate in {folder / LANES_DIR} (lanes there: "
                          f"{', '.join(present) or 'none'}); laned centre pki --lane makes one")
    conf, acl, passwords = broker_files(out.absolute())
    if len({conf, acl, passwords}) < 3:
        raise CentreError(f"--out {out}: name the configuration file itself (e.g. mosquitto.conf); its ACL and "
                          "password file are written beside it")
    try:
        _refuse_or_clear([conf, acl, passwords], force, "broker files are")
        conf.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        acl.write_text(lane_acl_text(chosen))
        fd = os.open(passwords, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # mosquitto warns about a readable one
        os.close(fd)
        conf.write_text(broker_config_text(port=port, bind=bind, ca_cert=needed[0], cert=needed[1], key=needed[2],
                                           acl=acl, passwords=passwords, user=pwd.getpwuid(os.geteuid()).pw_name))
    except OSError as err:
        raise CentreError(f"--out {out}: cannot write the broker configuration: {err}") from None
    return BrokerFiles(conf=conf, acl=acl, passwords=passwords, lanes=chosen)


def find_mosquitto() -> str | None:
    """The mosquitto executable, if installed (Debian puts it in /usr/sbin, often not on PATH)."""
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
