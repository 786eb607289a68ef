"""A real Mosquitto for one test: its own configuration, ACL, port, log and (optionally)
persistence database, all under the test's tmp folder.

``MosquittoBroker(tmp_path, pki)`` writes ``mosquitto.conf`` and ``acl`` and, used as an
async context manager, starts ``mosquitto -c mosquitto.conf``, waits until the port
accepts connections and stops the broker on the way out. ``stop()`` (SIGTERM: a clean
shutdown, the persistence database written), ``kill()`` (SIGKILL: a crash, nothing
written) and ``start()`` again on the same port are there for the failure tests.

The security the broker enforces is the one a toll centre deploys for laned:

- one TLS listener on 127.0.0.1, TLS 1.2 at least, a client certificate from the lanes' CA
  required (``require_certificate``), the certificate's CN used as the MQTT username
  (``use_identity_as_username``: a lane cannot claim another name in CONNECT);
- no anonymous clients and no password logins: an empty ``password_file`` refuses every
  username/password, on every listener (this matters for the optional plaintext listener);
- an ACL (``acl_file``) that confines each lane to its own topics, per direction: it
  *writes* only its lane→centre topics and *reads* only its centre→lane topics, each named
  exactly; the centre (CN ``centre``) reads and writes every lane's topics. Mosquitto 2.0's
  ``acl_file`` grants every SUBACK and checks read access per message at delivery, so a
  lane subscribed to ``#`` (or ``etc/v1/<lane>/#``) receives its centre→lane topics only.

A Mosquitto may already run on 127.0.0.1:1883 on this machine: it is never used; every
broker here takes a free port.

Nothing waits a fixed time: start-up polls the port (20 ms steps) under a deadline, and
every timeout raises :class:`BrokerError` with the tail of the broker's log
(``mosquitto.log``: the broker's stderr, restarts appended, each marked; the port probe
shows there as one "Client connection ... failed" line per start).
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType

from mqtt_pki import Pki

from laned.provisioning.broker_access import TOPIC_ROOT as TOPIC_ROOT
from laned.provisioning.broker_access import lane_topics, tls_listener
from laned.sim.broker import write_access_files
from laned.sim.broker import free_port as free_port
from laned.uplink.contract import Direction


class BrokerError(RuntimeError):
    """The test broker did not start or stop; the message carries the tail of its log."""


# What a lane publishes (lane -> centre) and what it subscribes to (centre -> lane), below
# etc/v1/<lane_id>/, read from the uplink contract (laned.uplink.contract) so that the ACL and
# the contract cannot drift apart. Each is granted to the lane whose certificate CN is
# <lane_id>, and to nobody else but the centre.
LANE_PUBLISHES = lane_topics(Direction.SEND)
LANE_SUBSCRIBES = lane_topics(Direction.RECEIVE)

START_TIMEOUT = 5.0  # mosquitto is listening within ~50 ms; 5 s covers a loaded CI box
STOP_TIMEOUT = 5.0  # a clean shutdown (SIGTERM) writing a small persistence database
POLL = 0.02
LOG_TAIL_LINES = 30


def mosquitto_binary() -> str:
    """Path of the mosquitto executable (Debian puts it in /usr/sbin, often not on PATH)."""
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise BrokerError("mosquitto is not installed: run ./dev setup (or apt-get install mosquitto)")
    return found


class MosquittoBroker:
    """One Mosquitto subprocess for one test (see the module docstring)."""

    def __init__(self, tmp_path: Path, pki: Pki, *, persistence: bool = False, tls: bool = True,
                 plain_listener: bool = False, autosave_interval: int | None = None) -> None:
        if not tls and not plain_listener:
            raise ValueError("a broker needs a listener: tls=True or plain_listener=True")
        self.folder = tmp_path / "mosquitto"
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.pki = pki
        self.persistence = persistence
        self.tls = tls
        self.host = "127.0.0.1"
        self.port = free_port() if tls else 0  # the TLS listener
        self.plain_port = free_port() if plain_listener else None
        self.conf_path = self.folder / "mosquitto.conf"
        self.acl_path = self.folder / "acl"
        self.password_path = self.folder / "passwords"
        self.data_path = self.folder / "data"  # persistence_location
        self.log_path = self.folder / "mosquitto.log"
        self._autosave_interval = autosave_interval
        self._process: asyncio.subprocess.Process | None = None
        self._write_files()

    # -- files ------------------------------------------------------------------------------

    def config_text(self) -> str:
        user = pwd.getpwuid(os.geteuid()).pw_name
        lines = [
            "# Written by hil_tests/mosquitto_broker.py for one test run.",
            # Run as root, mosquitto would switch to the 'mosquitto' user, who cannot read the
            # test's 0600 keys nor write its tmp folder: stay the user who started it.
            f"user {user}",
            "per_listener_settings false",
            "allow_anonymous false",
            # Empty: no username/password login exists. Mosquitto 2.0 already refuses a bare
            # username when nothing authenticates it; this keeps it so if a plugin is added.
            f"password_file {self.password_path}",
            f"acl_file {self.acl_path}",
            "log_dest stderr",  # stderr goes to mosquitto.log, with config errors printed before logging starts
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_type subscribe",
            "log_type unsubscribe",
            "connection_messages true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
        ]
        if self.persistence:
            lines += ["persistence true", f"persistence_location {self.data_path}/"]
            if self._autosave_interval is not None:
                lines.append(f"autosave_interval {self._autosave_interval}")
        else:
            lines.append("persistence false")
        if self.tls:
            lines += ["", *tls_listener(self.port, self.host, self.pki.ca_cert, self.pki.server.cert,
                                        self.pki.server.key)]
        if self.plain_port is not None:
            lines += ["", f"listener {self.plain_port} {self.host}"]
        return "\n".join(lines) + "\n"

    def _write_files(self) -> None:
        write_access_files(self.acl_path, self.password_path)
        if self.persistence:
            self.data_path.mkdir(mode=0o700, exist_ok=True)
        self.conf_path.write_text(self.config_text())

    # -- process ----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None and self.running else None

    async def start(self) -> None:
        """Start mosquitto (again, on the same ports) and wait until it accepts connections."""
        if self.running:
            raise BrokerError(f"the broker on port {self.port} is already running")
        with self.log_path.open("ab") as log:
            log.write(f"---- hil_tests: starting mosquitto at {time.strftime('%H:%M:%S')} ----\n".encode())
            log.flush()
            process = await asyncio.create_subprocess_exec(
                mosquitto_binary(), "-c", str(self.conf_path),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.folder,
                start_new_session=True,  # a Ctrl-C of pytest is not delivered to the broker too
            )
        self._process = process
        deadline = time.monotonic() + START_TIMEOUT
        ports = [p for p in (self.port if self.tls else None, self.plain_port) if p is not None]
        for port in ports:
            while not await self._accepts(port):
                if process.returncode is not None:
                    self._process = None
                    raise BrokerError(f"mosquitto exited with status {process.returncode} at start\n"
                                      f"{self.log_tail()}")
                if time.monotonic() > deadline:
                    await self.kill()
                    raise BrokerError(f"mosquitto did not listen on {self.host}:{port} within "
                                      f"{START_TIMEOUT} s\n{self.log_tail()}")
                await asyncio.sleep(POLL)

    async def stop(self) -> None:
        """SIGTERM, as systemd stops it: clients disconnected, persistence written."""
        await self._signal(signal.SIGTERM)

    async def kill(self) -> None:
        """SIGKILL: the broker crashes; nothing since the last autosave is persisted."""
        await self._signal(signal.SIGKILL)

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def _signal(self, signum: signal.Signals) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.returncode is None:
            process.send_signal(signum)
        try:
            await asyncio.wait_for(process.wait(), STOP_TIMEOUT)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise BrokerError(f"mosquitto did not exit within {STOP_TIMEOUT} s of {signum.name}; "
                              f"killed\n{self.log_tail()}") from None

    async def _accepts(self, port: int) -> bool:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(self.host, port), timeout=0.5)
        except (OSError, TimeoutError):
            return False
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
        return True

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return f"(no log at {self.log_path})"
        tail = text.splitlines()[-lines:]
        return f"-- last {len(tail)} lines of {self.log_path} --\n" + "\n".join(tail)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- context manager --------------------------------------------------------------------

    async def __aenter__(self) -> MosquittoBroker:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._process is not None:
            try:
                await self.stop()
            except BrokerError:
                if exc is None:
                    raise
