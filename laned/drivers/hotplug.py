"""Watch udev for the RSU's USB-serial adapter coming and going.

USB-serial adapters get unplugged (a cleaner in the booth, a loose connector, a power
dip that resets the hub). When that happens the RSU driver must close its port and
re-open it when the adapter is back, possibly under a different ``/dev/ttyUSBn``. This
module turns udev's tty uevents into two typed events for exactly the configured
adapter: :class:`DeviceAdded` and :class:`DeviceRemoved`.

No thread: the udev monitor's netlink socket is watched with ``loop.add_reader`` and
drained in the loop. The monitor is behind the tiny :class:`UeventSource` protocol (a
file descriptor plus a non-blocking ``poll``), so tests feed it simulated uevents through
a real pipe; :func:`pyudev_source` is the production implementation.

The adapter is matched by udev properties from the config: ``ID_SERIAL`` (best: unique
per adapter), ``ID_VENDOR_ID``/``ID_MODEL_ID``, or the ``/dev/laned-rsu`` symlink that
``systemd/99-laned-rsu.rules`` creates (a ``DEVLINKS`` entry).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from laned.drivers.fanout import Fanout
from laned.drivers.lane_io import DeviceHealth

log = logging.getLogger(__name__)

# Events handled per wake-up of the reader: a storm of uevents (a hub with many ports
# re-enumerating) must not starve the RSU link sharing the loop.
MAX_EVENTS_PER_WAKEUP: Final = 64
# poll() failing this many times in a row means the socket is broken, not one bad event.
MAX_CONSECUTIVE_ERRORS: Final = 10
REOPEN_INTERVAL_S: Final = 5.0
SUBSCRIBER_QUEUE_SIZE: Final = 256

_PROPERTY_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")


# -- the source of uevents ----------------------------------------------------------


class Uevent(Protocol):
    """What a source yields; :class:`pyudev.Device` has exactly these attributes."""

    @property
    def action(self) -> str | None: ...

    @property
    def device_node(self) -> str | None: ...

    @property
    def properties(self) -> Mapping[str, str]: ...


@runtime_checkable
class UeventSource(Protocol):
    """A readable file descriptor and a non-blocking read of the next uevent."""

    def fileno(self) -> int: ...

    def poll(self, timeout: float | None = None) -> Uevent | None:
        """The next uevent, or ``None`` if none is ready (called with ``timeout=0``)."""
        ...


def pyudev_source(subsystem: str = "tty") -> UeventSource:
    """A started udev (not kernel) netlink monitor for one subsystem."""
    import pyudev  # imported here: only lanes with hotplug need libudev

    monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source="udev")
    monitor.filter_by(subsystem)
    monitor.start()
    source: UeventSource = monitor  # pyudev.Monitor has fileno() and poll(timeout); pyudev is untyped
    return source


def pyudev_present(subsystem: str = "tty") -> list[Uevent]:
    """The devices of ``subsystem`` present now (``action`` is ``None`` for these)."""
    import pyudev

    return list(pyudev.Context().list_devices(subsystem=subsystem))


# -- what to match ------------------------------------------------------------------


class UdevMatch(BaseModel):
    """Which tty is the RSU adapter. Every given criterion must hold.

    ``properties`` are udev properties as ``udevadm info /dev/ttyUSB0`` prints them
    (``E: ID_SERIAL=FTDI_FT232R_USB_UART_A10KXYZ1``); ``devlink`` is one of the device's
    symlinks (``S: laned-rsu`` there, i.e. ``/dev/laned-rsu``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    subsystem: str = "tty"
    properties: dict[str, str] = {}
    devlink: str | None = None

    @field_validator("properties")
    @classmethod
    def _check_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _PROPERTY_NAME.match(name):
                raise ValueError(
                    f"{name!r} is not a udev property name (upper case, like ID_SERIAL; "
                    "see `udevadm info /dev/ttyUSB0`)"
                )
        return value

    @field_validator("devlink")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/dev/"):
            raise ValueError(f"devlink must be a path under /dev/, got {value!r}")
        return value

    @model_validator(mode="after")
    def _something_to_match(self) -> UdevMatch:
        if not self.properties and self.devlink is None:
            raise ValueError("give at least one of properties (e.g. ID_SERIAL) or devlink")
        return self

    def matches(self, properties: Mapping[str, str]) -> bool:
        subsystem = properties.get("SUBSYSTEM")
        if subsystem is not None and subsystem != self.subsystem:
            return False  # e.g. the USB device itself, which carries the same ID_SERIAL
        for name, wanted in self.properties.items():
            if properties.get(name) != wanted:
                return False
        if self.devlink is not None:
            return self.devlink in properties.get("DEVLINKS", "").split()
        return True


# -- events -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceAdded:
    devnode: str  # /dev/ttyUSB0 — open this (or the devlink, which points at it)
    properties: Mapping[str, str] = field(hash=False)

    @property
    def devlinks(self) -> tuple[str, ...]:
        return tuple(self.properties.get("DEVLINKS", "").split())


@dataclass(frozen=True, slots=True)
class DeviceRemoved:
    devnode: str


HotplugEvent = DeviceAdded | DeviceRemoved


# -- the watcher ----------------------------------------------------------------------


class HotplugWatcher:
    """Emits DeviceAdded/DeviceRemoved for the tty that ``match`` describes.

    Use as ``async with HotplugWatcher(match) as watcher: async for ev in watcher.events()``
    or register callbacks with :meth:`on_event`. On start, an adapter that is already
    plugged in is reported as a :class:`DeviceAdded` (``coldplug``), so the RSU driver
    needs no separate "is it there now?" path.
    """

    def __init__(
        self,
        match: UdevMatch,
        *,
        name: str = "udev",
        source_factory: Callable[[], UeventSource] | None = None,
        present: Callable[[], Iterable[Uevent]] | None = None,
        reopen_interval: float = REOPEN_INTERVAL_S,
    ) -> None:
        self.name = name
        self.match = match
        self._source_factory = source_factory or (lambda: pyudev_source(match.subsystem))
        if present is None and source_factory is None:
            present = lambda: pyudev_present(match.subsystem)  # noqa: E731
        self._present = present
        self._reopen_interval = reopen_interval
        self._loop: asyncio.AbstractEventLoop | None = None
        self._source: UeventSource | None = None
        self._fd: int | None = None
        self._fanout: Fanout[HotplugEvent] = Fanout(name, SUBSCRIBER_QUEUE_SIZE)
        self._callbacks: list[Callable[[HotplugEvent], None]] = []
        # Matching devices plugged in now (devnode -> properties), as udev told us.
        self._known: dict[str, Mapping[str, str]] = {}
        self._consecutive_errors = 0
        self._errors = 0
        self._detail = "not started"
        self._last_ok_at: float | None = None
        self._reopen: asyncio.TimerHandle | None = None
        self._closed = False

    # -- lifetime -------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._closed = False
        self._open()

    async def close(self) -> None:
        self._closed = True
        if self._reopen is not None:
            self._reopen.cancel()
            self._reopen = None
        self._detach()
        self._detail = "closed"
        self._fanout.close()

    async def __aenter__(self) -> HotplugWatcher:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- consumers ------------------------------------------------------------------

    def events(self) -> AsyncIterator[HotplugEvent]:
        """Matching add/remove events (its own queue per call).

        Starts with a DeviceAdded for each matching device already present, so a reader
        that subscribes after start() still learns where the adapter is.
        """
        return self._fanout.subscribe(initial=[DeviceAdded(n, p) for n, p in self._known.items()])

    def on_event(self, callback: Callable[[HotplugEvent], None]) -> None:
        """Call ``callback`` in the loop thread for every event (exceptions are logged)."""
        self._callbacks.append(callback)

    @property
    def present(self) -> frozenset[str]:
        """Devnodes of matching devices currently plugged in, as far as udev told us."""
        return frozenset(self._known)

    def health(self) -> DeviceHealth:
        return DeviceHealth(
            device=self.name,
            online=self._fd is not None,
            detail=self._detail,
            errors=self._errors,
            last_ok_at=self._last_ok_at,
        )

    # -- the monitor ----------------------------------------------------------------

    def _open(self) -> None:
        self._reopen = None
        if self._closed:
            return
        assert self._loop is not None
        try:
            source = self._source_factory()
            fd = source.fileno()
            self._loop.add_reader(fd, self._on_readable)
        except Exception as exc:  # noqa: BLE001 — libudev missing, netlink refused, …
            self._errors += 1
            self._detail = f"cannot watch udev: {exc}"
            log.error(
                "%s: %s; an unplugged RSU adapter will not be re-opened automatically "
                "until this works; retrying every %.0f s",
                self.name, self._detail, self._reopen_interval,
            )
            self._reopen = self._loop.call_later(self._reopen_interval, self._open)
            return
        self._source, self._fd = source, fd
        self._consecutive_errors = 0
        self._detail = "watching"
        self._last_ok_at = time.monotonic()
        log.info("%s: watching %s uevents for %s", self.name, self.match.subsystem, self._describe_match())
        self._coldplug()

    def _detach(self) -> None:
        if self._fd is not None and self._loop is not None:
            self._loop.remove_reader(self._fd)
        close = getattr(self._source, "close", None)
        if callable(close):
            try:
                close()
            except OSError as exc:
                log.debug("%s: closing the uevent source failed: %s", self.name, exc)
        self._source, self._fd = None, None

    def _coldplug(self) -> None:
        """Report adapters plugged in before we started (or while we were blind)."""
        if self._present is None:
            return
        try:
            devices = list(self._present())
        except Exception as exc:  # noqa: BLE001
            self._errors += 1
            log.error("%s: listing present %s devices failed: %s", self.name, self.match.subsystem, exc)
            return
        seen: set[str] = set()
        for device in devices:
            parsed = self._parse(device)
            if parsed is None:
                continue
            _, node, props = parsed
            if node is not None and self.match.matches(props):
                seen.add(node)
                if node not in self._known:
                    self._emit_added(node, props)
        # Something we believed present that is gone: its remove event was lost.
        for node in sorted(self._known.keys() - seen):
            self._emit_removed(node)

    def _on_readable(self) -> None:
        source = self._source
        if source is None:
            return
        for _ in range(MAX_EVENTS_PER_WAKEUP):
            try:
                event = source.poll(0)
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    # The kernel dropped uevents because we were slow: resynchronise.
                    log.warning("%s: udev event buffer overflowed, events were lost; rescanning", self.name)
                    self._errors += 1
                    self._coldplug()
                    continue
                self._poll_failed(exc)
                return
            except Exception as exc:  # noqa: BLE001 — a malformed message must not kill the watcher
                self._poll_failed(exc)
                return
            if event is None:
                return
            self._consecutive_errors = 0
            self._last_ok_at = time.monotonic()
            self._handle(event)

    def _poll_failed(self, exc: Exception) -> None:
        self._errors += 1
        self._consecutive_errors += 1
        log.warning("%s: reading a uevent failed (%s: %s); skipped", self.name, type(exc).__name__, exc)
        if self._consecutive_errors >= MAX_CONSECUTIVE_ERRORS:
            self._detail = f"udev monitor keeps failing: {exc}"
            log.error(
                "%s: %s; reopening it in %.0f s (adapter plug events are missed until then)",
                self.name, self._detail, self._reopen_interval,
            )
            self._detach()
            assert self._loop is not None
            self._reopen = self._loop.call_later(self._reopen_interval, self._open)

    # -- events ---------------------------------------------------------------------

    def _parse(self, event: object) -> tuple[str | None, str | None, Mapping[str, str]] | None:
        try:
            action = getattr(event, "action", None)
            node = getattr(event, "device_node", None)
            raw = getattr(event, "properties", None)
            props = {str(k): str(v) for k, v in dict(raw or {}).items()}
        except Exception as exc:  # noqa: BLE001 — a half-formed device object
            self._errors += 1
            log.warning("%s: ignored a malformed uevent: %s", self.name, exc)
            return None
        if action is not None and not isinstance(action, str):
            log.warning("%s: ignored a uevent with action %r", self.name, action)
            return None
        if node is not None and not isinstance(node, str):
            log.warning("%s: ignored a uevent with device node %r", self.name, node)
            return None
        return action, node or props.get("DEVNAME") or None, MappingProxyType(props)

    def _handle(self, event: object) -> None:
        parsed = self._parse(event)
        if parsed is None:
            return
        action, node, props = parsed
        if node is None:
            log.debug("%s: %s uevent without a device node ignored", self.name, action)
            return
        if action == "add":
            if self.match.matches(props):
                self._emit_added(node, props)
            else:
                log.debug("%s: %s added, not the RSU adapter", self.name, node)
        elif action == "remove":
            # Match the remembered node too: a remove uevent may lack the ID_* properties.
            if node in self._known or self.match.matches(props):
                self._emit_removed(node)
        else:
            log.debug("%s: %s uevent for %s ignored", self.name, action, node)

    def _emit_added(self, node: str, props: Mapping[str, str]) -> None:
        self._known[node] = props
        log.info("%s: RSU adapter present at %s (serial %s)", self.name, node, props.get("ID_SERIAL", "unknown"))
        self._dispatch(DeviceAdded(node, props))

    def _emit_removed(self, node: str) -> None:
        self._known.pop(node, None)
        log.warning("%s: RSU adapter at %s was removed; the RSU link is down until it is back", self.name, node)
        self._dispatch(DeviceRemoved(node))

    def _dispatch(self, event: HotplugEvent) -> None:
        self._fanout.publish(event)
        for callback in list(self._callbacks):
            try:
                callback(event)
            except Exception:  # a consumer's bug must not blind the watcher
                log.exception("%s: hotplug callback %r failed", self.name, callback)

    def _describe_match(self) -> str:
        parts = [f"{k}={v}" for k, v in self.match.properties.items()]
        if self.match.devlink:
            parts.append(f"devlink {self.match.devlink}")
        return ", ".join(parts)
