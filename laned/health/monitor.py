"""The daemon side of health: snapshots from the drivers, checks, alarms, STATUS=.

Once a second :class:`HealthMonitor` reads every device and resource (RSU link, IO
module or GPIO, fee display, journal writer and the disk under it, the clock, the fee
table and the status list) into a :class:`~laned.health.checks.LaneSnapshot`, runs the
sans-IO checks and feeds the results into the alarm registry, together with the alarms
the lane machine raises and clears itself. Every alarm change is logged once, with its
Chinese and English text. Two resources the lane cannot take a payment without are
turned into degraded-mode events here: the disk under the journal running low and the
fee table expiring.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import logging
import shutil
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from laned.health.alarms import AlarmChange, AlarmRegistry, UnknownAlarm, status_line
from laned.health.checks import (
    CheckStatus, DisplaySnapshot, HealthChecker, HealthSettings, InputReading, IoBackend, IoSnapshot, JournalSnapshot,
    LaneSnapshot, RsuSnapshot, TablesSnapshot, apply,
)
from laned.lane.events import ClearAlarm, Device, DeviceStatus, RaiseAlarm
from laned.observation import Observation

log = logging.getLogger("laned.health")

CHECK_INTERVAL_S = 1.0  # the checks' cadence; degraded modes themselves are events, not polled
CHANGES_KEPT = 10_000  # alarm changes kept in memory (HealthMonitor.changes); a lane makes a few an hour
# (how many of them go up one by one after an outage is the uplink's: ALARM_REPLAY_MAX, docs/alarms.md)


class HealthMonitor:
    def __init__(self, *, registry: AlarmRegistry, settings: HealthSettings, post: Callable[[Any], None],
                 rsu: Any = None, io: Any = None, display: Any = None, writer: Any = None,
                 journal_path: Path | None = None, fees: Any = None, status_list: Any = None,
                 status_list_loaded_at: dt.datetime | None = None, fee_table_required: bool = True,
                 status_list_required: bool = False, rsu_ready: Callable[[], bool] = lambda: True,
                 monotonic: Callable[[], float] = time.monotonic,
                 wall: Callable[[], dt.datetime] = lambda: dt.datetime.now().astimezone(),
                 observe: Callable[[Any], None] | None = None) -> None:
        self.registry = registry
        self.checker = HealthChecker(settings)
        self.settings = settings
        self.post = post
        self.rsu, self.io, self.display, self.writer = rsu, io, display, writer
        self.journal_path = journal_path
        self.fees = fees
        self.status_list = status_list
        self.status_list_loaded_at = status_list_loaded_at
        self.fee_table_required = fee_table_required
        self.status_list_required = status_list_required
        self.rsu_ready = rsu_ready
        self.monotonic = monotonic
        self.wall = wall
        # The latest changes, for the uplink (which publishes them in order, also those made
        # while the link was down) and tests. Bounded: a daemon runs for months and a
        # flapping device makes thousands a day.
        self.changes: deque[AlarmChange] = deque(maxlen=CHANGES_KEPT)
        self.changes_total = 0  # every change since start, kept or not: the number of the next one
        self.observe = observe
        self._disk_low: bool | None = None
        self._fees_expired: str | None = None
        self._commits_seen = 0

    # -- alarms from the lane machine ------------------------------------------------------------
    def lane_alarm(self, action: RaiseAlarm | ClearAlarm) -> None:
        now, wall = self.monotonic(), self.wall()
        try:
            if isinstance(action, RaiseAlarm):
                changes = self.registry.raise_alarm(action.code, now, wall, action.detail)
            else:
                changes = self.registry.clear_alarm(action.code, now, wall, action.detail)
        except UnknownAlarm as err:
            # A code without texts is a bug the catalogue test catches; at the lane it must
            # not stop the lane, so it is logged with what the machine said instead.
            log.error("alarm %s (no catalogue entry: %s): %s", action.code, err, getattr(action, "detail", ""))
            return
        self._report(changes)

    # -- snapshots -------------------------------------------------------------------------------
    def snapshot(self, now: float, wall: dt.datetime) -> LaneSnapshot:
        return LaneSnapshot(rsu=self._rsu(), io=self._io(), display=self._display(),
                            journal=self._journal(), tables=self._tables())

    def _rsu(self) -> RsuSnapshot | None:
        r = self.rsu
        if r is None:
            return None
        if not r.connected:
            return RsuSnapshot(connected=False, reason=r.status.reason, description=r.description, name=r.name)
        return RsuSnapshot(connected=True, connected_at=r.connected_at, initialised=self.rsu_ready(),
                           last_seen=r.last_seen, description=r.description, name=r.name)

    def _io(self) -> tuple[IoSnapshot, ...]:
        io = self.io
        if io is None:
            return ()
        h = io.health()
        backend = IoBackend.GPIO if type(io).__name__.startswith("Gpio") else IoBackend.MODBUS
        inputs = []
        for sig in self.settings.presence_inputs:
            smp = io.sample(sig)
            inputs.append(InputReading(sig, smp.active if smp else None, smp.at if smp else None))
        return (IoSnapshot(name=io.name, online=h.online, detail=h.detail, backend=backend,
                           readback_problems=tuple(getattr(io, "readback_problems", ())), inputs=tuple(inputs)),)

    def _display(self) -> DisplaySnapshot | None:
        d = self.display
        if d is None:
            return None
        h = d.health()
        return DisplaySnapshot(name=d.name, online=h.online, detail=h.detail)

    def _journal(self) -> JournalSnapshot | None:
        if self.writer is None and self.journal_path is None:
            return None
        free = total = None
        path = self.journal_path
        if path is not None:
            try:
                usage = shutil.disk_usage(path.parent)
                free, total = usage.free, usage.total
            except OSError as err:
                log.warning("journal: cannot read the free space of %s: %s", path.parent, err)
        if self.writer is None:
            return JournalSnapshot(writable=None, disk_free_bytes=free, disk_total_bytes=total, path=str(path or ""))
        h = self.writer.health(since_commit=self._commits_seen)
        self._commits_seen = h.commits
        return JournalSnapshot(writable=h.writable, detail=h.last_error or "", writer_alive=h.alive,
                               disk_free_bytes=free, disk_total_bytes=total, last_commit_s=h.last_commit_s,
                               max_commit_s=h.max_commit_s, path=str(path or ""))

    def _tables(self) -> TablesSnapshot:
        fees = self.fees
        table = fees.current if fees is not None else None
        sl = self.status_list
        return TablesSnapshot(
            fee_table_version=table.version if table is not None else None,
            fee_table_valid_from=table.valid_from if table is not None else None,
            fee_table_valid_until=table.valid_until if table is not None else None,
            # An empty list of version 0 is the placeholder of a lane that has none yet.
            status_list_version=sl.version if sl is not None and (self.status_list_loaded_at is not None
                                                                  or sl.version or len(sl)) else None,
            status_list_updated_at=self.status_list_loaded_at,
            fee_table_required=self.fee_table_required, status_list_required=self.status_list_required)

    # -- one round ---------------------------------------------------------------------------------
    def check(self) -> list[AlarmChange]:
        now, wall = self.monotonic(), self.wall()
        self._degraded_inputs(wall)
        results = self.checker.run(self.snapshot(now, wall), now, wall)
        self._disk(results)
        changes = apply(results, self.registry, now, wall)
        self._report(changes)
        return changes

    def _degraded_inputs(self, wall: dt.datetime) -> None:
        """The fee table switching or expiring is a degraded-mode event for the lane."""
        fees = self.fees
        if fees is None:
            return
        if fees.tick(wall.replace(tzinfo=None)):
            log.warning("fee table: version %d in force from now on", fees.version)
        expired = fees.expired(wall.replace(tzinfo=None))
        if expired != self._fees_expired:
            self._fees_expired = expired
            if expired:
                log.error("%s; ETC closed until a valid table is in force", expired)
            else:
                log.warning("fee table: version %d valid; ETC reopens if nothing else keeps it closed", fees.version)
            self.post(DeviceStatus(Device.FEES, expired is None, expired or ""))

    def _disk(self, results: list[Any]) -> None:
        for r in results:
            if r.alarm != "disk_low" or r.status is CheckStatus.UNKNOWN:
                continue
            low = r.status is not CheckStatus.OK
            if low != self._disk_low:
                if low or self._disk_low is not None:
                    self.post(DeviceStatus(Device.DISK, not low, r.detail if low else ""))
                self._disk_low = low

    def changes_since(self, number: int) -> tuple[list[AlarmChange], int]:
        """The changes from the ``number``-th since start (0: the first) on, in order, and how
        many of those are no longer kept (:data:`CHANGES_KEPT`)."""
        first_kept = self.changes_total - len(self.changes)
        lost = max(0, first_kept - number)
        return list(itertools.islice(self.changes, max(number, first_kept) - first_kept, None)), lost

    def _report(self, changes: list[AlarmChange]) -> None:
        for c in changes:
            self.changes.append(c)
            self.changes_total += 1
            if self.observe is not None:
                self.observe(Observation(c.at, f"alarm_{c.change}", {"code": c.code, "detail": c.alarm.detail}))
            if c.raised:
                log.warning("%s", c.message())
            else:
                log.info("%s", c.message())

    def status_line(self) -> str:
        return status_line(self.registry.active())

    async def run(self, interval: float = CHECK_INTERVAL_S, after: Callable[[], object] = lambda: None) -> None:
        """Check every ``interval`` until cancelled; ``after`` runs after each round
        (the daemon updates systemd's STATUS= line there)."""
        while True:
            self.check()
            after()
            await asyncio.sleep(interval)  # the checks' cadence
