"""A private Mosquitto for one ``laned sim`` run: its own configuration, ACL, free port and
log, all in the run's state folder.

``async with SimBroker(folder, pki) as broker`` writes ``mosquitto.conf``, ``acl`` and an
empty ``passwords`` into ``folder``, starts ``mosquitto -c mosquitto.conf`` in its own
session (a Ctrl-C at the terminal reaches laned, which stops the broker itself, not the
broker directly), waits until the port accepts connections and stops it on the way out,
on every path: a clean end, an error, a cancellation.

The broker enforces what a toll centre deploys for laned (the same rules as the test
broker of ``hil_tests/mosquitto_broker.py``): one TLS listener on 127.0.0.1, a client
certificate from the run's CA required, its CN used as the username; no anonymous and no
password logins; an ACL confining each lane to its own topics per direction, read from the
uplink contract so that the two cannot drift apart, and the centre (CN ``centre``) on every
lane's topics.

Where mosquitto is: ``$LANED_SIM_MOSQUITTO`` when set (a path; also how a test plays a
machine without it), else ``mosquitto`` on ``PATH``, else Debian's ``/usr/sbin``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from laned.provisioning.broker_access import acl_text, tls_listener
from laned.provisioning.certificates import CENTRE
from laned.sim.pki import SimPki

log = logging.getLogger("laned.sim.broker")

MOSQUITTO_ENV = "LANED_SIM_MOSQUITTO"
START_TIMEOUT_S = 5.0  # mosquitto listens within ~50 ms; 5 s covers a loaded 2-core box
STOP_TIMEOUT_S = 5.0  # a clean shutdown without persistence takes milliseconds
POLL_S = 0.02
LOG_TAIL_LINES = 20


class BrokerError(RuntimeError):
    """The simulator's broker did not start or stop; the message says why (and its log's tail)."""


class MosquittoMissing(BrokerError):
    """No mosquitto executable: the simulated centre cannot run."""


def find_mosquitto() -> str:
    """The mosquitto executable, or :class:`MosquittoMissing` with what to do about it."""
    wanted = os.environ.get(MOSQUITTO_ENV)
    if wanted:
        if os.path.isfile(wanted) and os.access(wanted, os.X_OK):
            return wanted
        raise MosquittoMissing(f"mosquitto not found at {wanted} ({MOSQUITTO_ENV}); the simulated centre needs "
                               "it: run ./dev sim (it installs mosquitto), or laned sim --no-centre")
    found = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise MosquittoMissing("mosquitto is not installed; the simulated centre needs it: run ./dev sim "
                               "(it installs mosquitto), or laned sim --no-centre")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now (a Mosquitto on 1883/8883 is never used)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def write_access_files(acl_path: Path, password_path: Path, centre: str = CENTRE) -> None:
    """The ACL (:func:`acl_text`) and an empty password file (certificates authenticate)."""
    acl_path.write_text(acl_text(centre))
    password_path.write_text("")
    password_path.chmod(0o600)  # mosquitto >= 2.0.14 warns about a readable password file


class SimBroker:
    """One Mosquitto subprocess for one simulated run (see the module docstring)."""

    def __init__(self, folder: Path, pki: SimPki, *, binary: str | None = None) -> None:
        self.folder = folder
        self.pki = pki
        self.binary = binary or find_mosquitto()
        self.host = "127.0.0.1"
        self.port = free_port()
        self.conf_path = folder / "mosquitto.conf"
        self.acl_path = folder / "acl"
        self.password_path = folder / "passwords"
        self.log_path = folder / "mosquitto.log"
        self._process: asyncio.subprocess.Process | None = None

    def config_text(self) -> str:
        user = pwd.getpwuid(os.geteuid()).pw_name
        return "\n".join([
            "# Written by laned sim (laned/sim/broker.py) for one run; stopped at its end.",
            # Run as root, mosquitto would switch to the 'mosquitto' user, who cannot read the
            # run's 0600 keys: stay the user who started laned sim.
            f"user {user}",
            "per_listener_settings false",
            "allow_anonymous false",
            f"password_file {self.password_path}",  # empty: no username/password login exists
            f"acl_file {self.acl_path}",
            "persistence false",  # the lane's journal is the outbox; the broker keeps nothing
            "log_dest stderr",  # into mosquitto.log (config errors are printed before logging starts)
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            "",
            *tls_listener(self.port, self.host, self.pki.ca_cert, self.pki.server.cert, self.pki.server.key),
            "",
        ])

    def _write_files(self) -> None:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_access_files(self.acl_path, self.password_path)
        self.conf_path.write_text(self.config_text())

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def start(self) -> None:
        """Start mosquitto and wait until it accepts connections."""
        if self.running:
            raise BrokerError(f"the simulator's broker on port {self.port} is already running")
        self._write_files()
        with self.log_path.open("ab") as out:
            self._process = await asyncio.create_subprocess_exec(
                self.binary, "-c", str(self.conf_path), stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, cwd=self.folder, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not await self._accepts():
            if self._process.returncode is not None:
                code, self._process = self._process.returncode, None
                raise BrokerError(f"mosquitto ({self.binary}) exited with status {code} at start; "
                                  f"{self.log_tail()}")
            if time.monotonic() > deadline:
                await self.stop()
                raise BrokerError(f"mosquitto did not listen on {self.host}:{self.port} within {START_TIMEOUT_S} s; "
                                  f"{self.log_tail()}")
            await asyncio.sleep(POLL_S)
        log.info("sim broker: mosquitto (pid %d) listening on %s:%d with TLS and the ACL in %s",
                 self._process.pid, self.host, self.port, self.acl_path)

    async def stop(self) -> None:
        """SIGTERM (SIGKILL after STOP_TIMEOUT_S). Safe to call twice, and while being cancelled:
        the broker is stopped either way."""
        process, self._process = self._process, None
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(process.wait()), STOP_TIMEOUT_S)
        except TimeoutError:
            log.warning("sim broker: mosquitto (pid %d) did not exit within %.0f s of SIGTERM; killed",
                        process.pid, STOP_TIMEOUT_S)
            process.kill()
            await process.wait()
        except asyncio.CancelledError:
            # Cancelled while waiting (a second Ctrl-C): do not leave the broker behind, then
            # go on being cancelled.
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            raise

    async def _accepts(self) -> bool:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), timeout=0.5)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return f"(no log at {self.log_path})"
        tail = " | ".join(line for line in text.splitlines()[-lines:] if line.strip())
        return f"last lines of {self.log_path}: {tail}"

    async def __aenter__(self) -> SimBroker:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()
