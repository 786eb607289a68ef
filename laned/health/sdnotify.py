"""systemd notification — READY / STATUS / WATCHDOG / STOPPING — without libsystemd.

The sd_notify(3) protocol is one datagram per notification on the Unix socket named by
``$NOTIFY_SOCKET`` (a leading ``@`` means the abstract namespace): newline-separated
``KEY=value`` lines. Outside systemd (no ``NOTIFY_SOCKET``) everything here is a no-op.

Two rules shape this module:

* **Notifying never takes the daemon down.** A send failure (socket gone, PID 1
  re-executing, queue full) is logged once at WARNING — again only after a send has
  succeeded in between — and the call returns ``False``. The socket is non-blocking: a
  notification PID 1 cannot take right now is dropped rather than stalling the event
  loop that answers the RSU.
* **The watchdog is fed only by a responsive, healthy daemon.** :class:`Watchdog` runs
  as one long-lived task *on the event loop it vouches for*. It sends ``WATCHDOG=1``
  every half ``WatchdogSec`` only while ``healthy()`` returns ``None`` (the journal
  writer alive, the executor running, …). Responsiveness needs no extra test: while the
  loop is blocked (a synchronous call that hangs on a dead USB adapter, a CPU-bound
  loop, a deadlock) this task cannot run, so no ping goes out, and once ``WatchdogSec``
  passes systemd kills the daemon (SIGABRT) and ``Restart=on-failure`` starts it again.
  What the task *can* do is notice afterwards that it woke up late — the loop's
  lateness — and log how long the loop was blocked, which is how shorter stalls (too
  short for the watchdog to fire) show up in the logs.

Wiring (the composition root)::

    notifier = Notifier.from_env()
    ...
    notifier.ready("in service")          # or notifier.ready("degraded: RSU link down")
    tg.create_task(watchdog_loop(notifier, health_reason), name="watchdog")
    ...
    notifier.stopping("stopping: SIGTERM")
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import NoReturn

__all__ = ["HealthCheck", "Notifier", "Watchdog", "watchdog_loop"]

log = logging.getLogger("laned.health.sdnotify")

HealthCheck = Callable[[], "str | None"]
"""Returns ``None`` when healthy, else a one-line reason ("journal writer not alive")."""

_STATUS_MAX = 400  # systemctl shows one line; a long exception text is cut, not sent whole


def _one_line(value: object) -> str:
    """A notification value on one line: line breaks collapse into single spaces."""
    if value is True:
        return "1"
    if value is False:
        return "0"
    text = str(value).replace("\0", "")
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _socket_address(spec: str) -> str | bytes | None:
    if spec.startswith("@"):
        return b"\0" + os.fsencode(spec[1:])
    if spec.startswith("/"):
        return spec
    return None


class Notifier:
    """Sends sd_notify messages to systemd; a no-op without ``NOTIFY_SOCKET``.

    Every sending method returns ``True`` when a datagram went out and ``False``
    otherwise (not under systemd, unchanged status, send failure) — and never raises
    for a send failure. Thread-safe.
    """

    def __init__(self, address: str | None = None, *, watchdog_usec: int | None = None) -> None:
        self.address = address or None
        self._addr = _socket_address(address) if address else None
        if address and self._addr is None:
            log.warning("sd_notify: NOTIFY_SOCKET=%r is neither a path nor @abstract; not notifying", address)
            self.address = None
        self.watchdog_usec = watchdog_usec if (watchdog_usec and watchdog_usec > 0 and self.enabled) else None
        #: Seconds between watchdog pings (half of WATCHDOG_USEC), or None: no watchdog to feed.
        self.watchdog_interval: float | None = (self.watchdog_usec / 2e6) if self.watchdog_usec else None
        self.sent = 0
        self.failures = 0
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._failing = False
        self._app_status: str | None = None
        self._fault: str | None = None
        self._last_status: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ, *, pid: int | None = None) -> Notifier:
        """Build from ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``.

        The watchdog is ours only if ``WATCHDOG_PID`` is unset or equals our pid
        (``pid``, default ``os.getpid()``), as in sd_watchdog_enabled(3).
        """
        usec: int | None = None
        try:
            usec = int(environ.get("WATCHDOG_USEC", "") or 0) or None
            wpid = environ.get("WATCHDOG_PID")
            if wpid is not None and wpid != "" and int(wpid) != (os.getpid() if pid is None else pid):
                usec = None
        except ValueError:
            log.warning("sd_notify: unreadable WATCHDOG_USEC/WATCHDOG_PID; not feeding a watchdog")
            usec = None
        return cls(environ.get("NOTIFY_SOCKET") or None, watchdog_usec=usec)

    @property
    def enabled(self) -> bool:
        """True when running under systemd with a notification socket."""
        return self._addr is not None

    @property
    def last_status(self) -> str | None:
        """The STATUS= text systemd last received from us."""
        return self._last_status

    # -- the messages -----------------------------------------------------------------

    def notify(self, **fields: object) -> bool:
        """Send one datagram of ``KEY=value`` lines, e.g. ``notify(READY=1, STATUS="in service")``.

        Values go on one line (``True`` → ``1``). A ``STATUS`` field sets the
        application status, shown behind an active fault (see :meth:`set_fault`).
        """
        lines = []
        for key, value in fields.items():
            if not key.isidentifier() or not key.isupper():
                raise ValueError(f"sd_notify field names are upper case, like READY or STATUS: {key!r}")
            if key == "STATUS":
                self._app_status = _one_line(value)
                value = self._effective_status()
            lines.append(f"{key}={_one_line(value)}")
        if not lines:
            return False
        ok = self._send("\n".join(lines) + "\n")
        if ok and "STATUS" in fields:
            self._last_status = self._effective_status()
        return ok

    def ready(self, status: str | None = None) -> bool:
        """READY=1: the lane is in service (or in a degraded mode it has announced)."""
        return self.notify(READY=1) if status is None else self.notify(READY=1, STATUS=status)

    def status(self, text: str) -> bool:
        """STATUS=: one line for ``systemctl status``; an unchanged status is not resent."""
        self._app_status = _one_line(text)
        return self._send_status()

    def set_fault(self, reason: str | None) -> bool:
        """Show (or, with ``None``, stop showing) a health fault in front of the status."""
        self._fault = _one_line(reason) if reason else None
        return self._send_status()

    def watchdog(self) -> bool:
        """WATCHDOG=1: one keep-alive ping."""
        return self._send("WATCHDOG=1\n")

    def stopping(self, status: str | None = None) -> bool:
        """STOPPING=1: a clean shutdown has begun."""
        return self.notify(STOPPING=1) if status is None else self.notify(STOPPING=1, STATUS=status)

    def extend_timeout(self, seconds: float) -> bool:
        """EXTEND_TIMEOUT_USEC=: ask for more start/stop time (e.g. while loading a big status list)."""
        return self.notify(EXTEND_TIMEOUT_USEC=max(1, int(seconds * 1e6)))

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
            self._addr = None

    # -- plumbing -------------------------------------------------------------------

    def _effective_status(self) -> str:
        app = self._app_status or ""
        if self._fault:
            text = f"UNHEALTHY: {self._fault} | {app}" if app else f"UNHEALTHY: {self._fault}"
        else:
            text = app
        return text if len(text) <= _STATUS_MAX else text[: _STATUS_MAX - 1] + "…"

    def _send_status(self) -> bool:
        text = self._effective_status()
        if text == self._last_status:
            return False
        if self._send(f"STATUS={text}\n"):
            self._last_status = text
            return True
        return False

    def _send(self, message: str) -> bool:
        with self._lock:
            if self._addr is None:
                return False
            try:
                if self._sock is None:
                    self._sock = socket.socket(
                        socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
                self._sock.sendto(message.encode("utf-8"), self._addr)
            except OSError as exc:
                self.failures += 1
                if not self._failing:
                    self._failing = True
                    log.warning("sd_notify: cannot notify systemd at %s (%s); carrying on — further "
                                "failures are logged at DEBUG until a notification gets through",
                                self.address, exc)
                else:
                    log.debug("sd_notify: still cannot notify systemd at %s (%s)", self.address, exc)
                return False
            self.sent += 1
            if self._failing:
                self._failing = False
                log.warning("sd_notify: notifying systemd at %s again", self.address)
            return True


class Watchdog:
    """Feeds the systemd watchdog from the event loop, only while ``healthy()`` is ``None``.

    Every ``interval`` seconds (default: the notifier's, i.e. half ``WatchdogSec``; when
    there is no watchdog, ``check_interval`` and no pings) it

    * measures how late it woke up (``clock`` minus the planned wake-up time). A loop
      blocked for B seconds makes a wake-up up to B seconds late; lateness above
      ``block_threshold`` (default ``min(1 s, interval)``) is logged — at ERROR when a
      whole interval was missed — at most once a minute, with a count. Lateness does not
      withhold the next ping: the loop is responsive again *now*. Being blocked is
      caught by the ping not happening during the block; if that lasts ``WatchdogSec``
      systemd kills the daemon;
    * calls ``healthy()``; a reason (or an exception from it) is logged at ERROR once per
      change, shown in STATUS= (``UNHEALTHY: reason | status``) and withholds the ping;
      ``None`` again clears the fault and pings resume;
    * sends WATCHDOG=1 when healthy.

    The attributes ``pings``, ``reason``, ``blocks``, ``longest_block`` and
    ``last_lateness`` are there for ``laned status``.
    """

    LOG_EVERY = 60.0

    def __init__(self, notifier: Notifier, healthy: HealthCheck, *, interval: float | None = None,
                 clock: Callable[[], float] = time.monotonic, check_interval: float = 5.0,
                 block_threshold: float | None = None) -> None:
        self._notifier = notifier
        self._healthy = healthy
        self._clock = clock
        chosen = interval if interval is not None else notifier.watchdog_interval
        self.feeding = chosen is not None and notifier.enabled
        self.interval: float = chosen if chosen is not None else check_interval
        if self.interval <= 0:
            raise ValueError(f"watchdog interval must be positive, not {self.interval}")
        self.block_threshold = block_threshold if block_threshold is not None else min(1.0, self.interval)
        self.pings = 0
        self.reason: str | None = None
        self.blocks = 0
        self.longest_block = 0.0
        self.last_lateness = 0.0
        self._last_block_log: float | None = None
        self._unlogged_blocks = 0

    async def run(self) -> NoReturn:
        """Run until cancelled; cancellation propagates (it is never swallowed)."""
        if self.feeding:
            log.info("watchdog: pinging systemd every %.1f s while healthy", self.interval)
        deadline = self._clock()
        while True:
            now = self._clock()
            self._tick(now, max(0.0, now - deadline))
            deadline += self.interval
            if deadline <= now:  # blocked for more than an interval: resume the cadence, no burst
                deadline = now + self.interval
            await asyncio.sleep(max(0.0, deadline - self._clock()))

    def _tick(self, now: float, lateness: float) -> None:
        self.last_lateness = lateness
        if lateness > self.block_threshold:
            self._loop_was_blocked(now, lateness)
        try:
            reason = self._healthy()
        except Exception as exc:  # noqa: BLE001 — a broken check is itself a reason not to ping
            reason = f"health check failed: {type(exc).__name__}: {exc}"
        if reason is not None:
            reason = _one_line(reason) or "unhealthy (no reason given)"
        if reason != self.reason:
            if reason is None:
                log.warning("health: healthy again (was: %s)%s", self.reason,
                            "; watchdog pings resume" if self.feeding else "")
            else:
                log.error("health: %s%s", reason,
                          "; watchdog pings withheld — systemd restarts laned if this lasts WatchdogSec"
                          if self.feeding else "")
            self.reason = reason
            self._notifier.set_fault(reason)
        if reason is None and self.feeding and self._notifier.watchdog():
            self.pings += 1

    def _loop_was_blocked(self, now: float, lateness: float) -> None:
        self.blocks += 1
        self.longest_block = max(self.longest_block, lateness)
        if self._last_block_log is not None and now - self._last_block_log < self.LOG_EVERY:
            self._unlogged_blocks += 1
            return
        more = f" ({self._unlogged_blocks} more since the last report)" if self._unlogged_blocks else ""
        level = logging.ERROR if lateness >= self.interval else logging.WARNING
        log.log(level, "event loop was blocked: the watchdog task woke %.2f s late (interval %.2f s, "
                "longest so far %.2f s)%s", lateness, self.interval, self.longest_block, more)
        self._last_block_log = now
        self._unlogged_blocks = 0


async def watchdog_loop(notifier: Notifier, healthy: HealthCheck, *,
                        clock: Callable[[], float] = time.monotonic,
                        interval: float | None = None) -> NoReturn:
    """Run a :class:`Watchdog` until cancelled — meant as a long-lived named task."""
    await Watchdog(notifier, healthy, clock=clock, interval=interval).run()
