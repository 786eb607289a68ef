"""Status lists and fee tables from the centre, on the running daemon: the asyncio glue
between the uplink and the sans-IO download (:mod:`laned.lane.list_update`) and the apply
(:mod:`laned.uplink.list_apply`). docs/lists.md has the flow and the refusals.

:class:`ListService` is owned by the uplink service (:mod:`laned.uplink.service`), which
calls it in four places:

* :meth:`ListService.run` — a task of the uplink's own for as long as the daemon runs:
  the freshness of the status list in use, every second, connected or not (a link that is
  blocked on purpose is exactly the *freeze attack* it looks for), and the task group the
  applies run in;
* :meth:`ListService.serve` — a task of each session: ``list/versions`` on connect, then
  every second the requests for chunks that stopped coming (:meth:`ListDownloads.due`);
* :meth:`ListService.on_message` — a ``list/manifest`` or ``list/chunk`` payload as
  received: a new download's ``list/request``; a complete one's apply, started in a task
  (``list-apply-<kind>``); when a late chunk joins many already in (chunk 0 asked for
  again), the SHA-256 over them is caught up in a task too (``list-verify-<kind>``), a
  bounded step per loop turn; the signed manifest of the version in use, for a list kept
  without one, saved beside it (``list-apply-manifest-status_list``);
* nothing else: the lane's references are swapped by the ``install`` callbacks the daemon
  gives (laned.app), synchronously, so a lookup never sees a mix of versions.

Every refusal — of a manifest, a download or an apply — is the ``list_update_refused``
alarm (an event: the detail says which kind, which version and why) and a log line; the
version in use is never touched by one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from laned.cancellation import stop_if_cancelled
from laned.lane.events import ClearAlarm, Device, DeviceStatus, RaiseAlarm
from laned.lane.fee_table import FeeSchedule
from laned.lane.list_update import (
    Accepted,
    ChunkDropped,
    ChunkOutcome,
    Complete,
    DownloadLimits,
    Freshness,
    Ignore,
    Ignored,
    KeepManifest,
    ListAge,
    ListDownloads,
    Refused,
    StalePolicy,
    Started,
    VerifiedContent,
)
from laned.lane.status_list import StatusList
from laned.uplink.link import Incoming, LinkDown
from laned.uplink.list_apply import (
    ListApplyError,
    StatusListInUse,
    apply_fee_table,
    apply_status_list,
    keep_status_manifest,
    list_versions,
)
from laned.uplink.messages import ListKind, ListManifest, ListRequest, UplinkMessage

if TYPE_CHECKING:
    from laned.config import ListsSection

log = logging.getLogger("laned.uplink.lists")

TICK_S = 1.0  # freshness and overdue chunks are looked at this often; both are counted in seconds


class Publisher(Protocol):
    """What the service needs of a session (laned.uplink.link.Session)."""

    async def publish(self, msg: UplinkMessage) -> None: ...


@dataclass(frozen=True, kw_only=True)
class ListSettings:
    """``[lists]`` of laned.toml (and the paths and the age limit it works with)."""

    status_list_max_bytes: int = 1024 << 20
    status_list_max_expanded_bytes: int = 2048 << 20
    fee_table_max_bytes: int = 4096 << 10
    chunk_timeout_s: float = 30.0
    max_requests: int = 5
    clock_skew_s: float = 300.0
    on_stale: StalePolicy = StalePolicy.ALARM
    status_list_path: Path | None = None  # None: a status list is used, not kept over a restart
    fee_table_dir: Path | None = None  # None: a fee table is used, not kept over a restart
    status_list_max_age_s: float = 48 * 3600.0  # health.status_list_max_age_h

    def limits(self, kind: ListKind) -> DownloadLimits:
        max_bytes = self.status_list_max_bytes if kind is ListKind.STATUS_LIST else self.fee_table_max_bytes
        return DownloadLimits(max_bytes=max_bytes, clock_skew_s=self.clock_skew_s,
                              chunk_timeout_s=self.chunk_timeout_s, max_requests=self.max_requests)


@dataclass(frozen=True, kw_only=True)
class Installers:
    """How a new version reaches the lane: each replaces every reference to the version in
    use (the lane machine's, the health monitor's) synchronously — no ``await`` in it."""

    status_list: Callable[[StatusListInUse], None]
    fee_table: Callable[[FeeSchedule], None]


class ListService:
    """The downloads and applies of one lane (see the module docstring). ``status`` and
    ``fees`` are the versions in use at start (:func:`~laned.uplink.list_apply.load_status_list`,
    :func:`~laned.uplink.list_apply.load_fee_tables`); None: none."""

    def __init__(self, *, lane_id: str, keys: Mapping[str, Ed25519PublicKey], settings: ListSettings,
                 status: StatusListInUse | None, fees: FeeSchedule | None, install: Installers,
                 wall: Callable[[], dt.datetime], tz: dt.tzinfo | None,
                 alarm: Callable[[RaiseAlarm | ClearAlarm], None] = lambda action: None,
                 post: Callable[[DeviceStatus], None] = lambda event: None, tick_s: float = TICK_S) -> None:
        self.lane_id = lane_id
        self.tick_s = tick_s
        self.settings = settings
        self.status = status
        self.fees = fees
        self._install = install
        self.wall = wall
        self.tz = tz
        self._alarm = alarm
        self._post = post
        fee_in_use = None
        if fees is not None:
            fee_in_use = max(fees.current.version, fees.pending.version if fees.pending is not None else 0)
        self.downloads = ListDownloads(
            lane_id=lane_id, keys=keys, status_list=settings.limits(ListKind.STATUS_LIST),
            fee_table=settings.limits(ListKind.FEE_TABLE),
            status_list_in_use=status.version if status is not None and _announced(status) else None,
            fee_table_in_use=fee_in_use)
        # A list kept without its manifest (a crash between the two saves): the centre's
        # signed manifest of that version is kept when it comes (KeepManifest).
        self.downloads.status_list.in_use_manifest_kept = status is None or not _announced(status) or \
            status.manifest is not None
        self.refusals: list[Refused] = []  # every refusal since start (laned status, tests)
        self.installed: list[tuple[ListKind, int]] = []  # every version installed since start
        self.freshness: Freshness | None = None  # of the status list in use, at the last tick
        self._session: Publisher | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._locks = {kind: asyncio.Lock() for kind in ListKind}  # one apply at a time per kind
        self._verifying: dict[ListKind, asyncio.Task[None]] = {}  # the SHA-256 catching up, per kind
        self._closing_etc = False

    # -- the daemon-long task ------------------------------------------------------------------
    async def run(self) -> None:
        """Until cancelled: the freshness check every second; the applies run in here."""
        async with asyncio.TaskGroup() as tg:
            self._tasks = tg
            try:
                while True:
                    self.check_freshness(self.wall())
                    await asyncio.sleep(self.tick_s)  # the freshness is counted in hours; a second is plenty
            finally:
                self._tasks = None

    def check_freshness(self, now: dt.datetime) -> Freshness | None:
        """``status_list_old`` raised or cleared as the list in use ages, is replaced or
        expires; with ``on_stale = "close_etc"`` ETC closed while it is not fresh."""
        status = self.status
        if status is None:
            return None  # no list at all: status_list_missing (the health checks) says so
        fresh = status.freshness(self.settings.status_list_max_age_s, now)
        was = self.freshness
        self.freshness = fresh
        stale = fresh.state is not ListAge.OK
        if was is None or (was.state is not ListAge.OK) != stale or (stale and was.state is not fresh.state):
            if stale:
                log.warning("status list: version %d is %s (%s): refusals rest on old data. Check the centre link "
                            "and the centre's list publication%s", status.version, fresh.state, fresh.text,
                            "; ETC closed until a fresh list is in use (lists.on_stale = close_etc)"
                            if fresh.closes_etc(self.settings.on_stale) else "")
                self._alarm(RaiseAlarm("status_list_old", f"version {status.version}: {fresh.text}"))
            elif was is not None:
                log.info("status list: version %d is fresh again (%s)", status.version, fresh.text)
                self._alarm(ClearAlarm("status_list_old", f"version {status.version}: {fresh.text}"))
        closing = fresh.closes_etc(self.settings.on_stale)
        if closing != self._closing_etc:
            self._closing_etc = closing
            self._post(DeviceStatus(Device.STATUS_LIST, not closing,
                                    f"status list version {status.version} {fresh.state}: {fresh.text}"
                                    if closing else ""))
        return fresh

    # -- each session --------------------------------------------------------------------------
    async def serve(self, session: Publisher) -> None:
        """While connected: ``list/versions`` now, then every second the requests due."""
        self._session = session
        try:
            await session.publish(self.versions())
            while True:
                stop_if_cancelled()  # a publish's wait_for may have dropped it (laned.cancellation)
                for item in self.downloads.due(self.wall()):
                    if isinstance(item, ListRequest):
                        log.info("%s version %d: %s; asking the centre again (list/request)", item.kind,
                                 item.version, item.reason)
                        await session.publish(item)
                    else:
                        self._refused(item)
                await asyncio.sleep(self.tick_s)  # chunk_timeout_s is tens of seconds
        finally:
            self._session = None

    async def fetch(self, kind: ListKind, version: int, *,
                    commit: Callable[[str], Awaitable[bool]] | None = None) -> str:
        """The centre's ``fetch_list`` command: ask it for ``version`` of ``kind`` (every
        chunk; the centre sends the manifest first). What was done, for the result.

        ``commit`` (the command's journal transaction) is given that text first and awaited:
        nothing is asked unless it returns True. LinkDown, nothing asked or committed, when
        the link is down (laned.uplink.command_exec.ListFetch)."""
        download = self.downloads.of(kind)
        if download.in_use == version:
            text = f"{kind} version {version} is already in use; nothing requested"
            if commit is not None:
                await commit(text)
            return text
        session = self._session
        if session is None:
            # The command came over the link, which dropped since. Not an answer to record:
            # the centre's re-send of the same command must still fetch.
            raise LinkDown(f"the link to the centre dropped meanwhile: {kind} version {version} cannot be "
                           "requested")
        text = (f"{kind} version {version} requested from the centre (list/request); it is applied once its signed "
                "manifest and chunks check out (list/versions then names it)")
        if commit is not None and not await commit(text):
            return f"{kind} version {version} not requested: the command was not recorded"
        await session.publish(ListRequest(lane_id=self.lane_id, kind=kind, version=version, at=self.wall(),
                                          reason="fetch_list command from the centre"))
        log.info("%s version %d requested from the centre (fetch_list command)", kind, version)
        return (f"{kind} version {version} requested from the centre (list/request); it is applied once its signed "
                "manifest and chunks check out (list/versions then names it)")

    def versions(self) -> UplinkMessage:
        return list_versions(self.lane_id, self.wall(), self.status, self.fees, self.tz)

    # -- what the centre sends -----------------------------------------------------------------
    async def on_message(self, item: Incoming, session: Publisher) -> None:
        """A ``list/manifest`` or ``list/chunk`` payload as received."""
        now = self.wall()
        if item.channel == "listManifest":
            outcome = self.downloads.on_manifest(item.payload, now)
            if isinstance(outcome, Started):
                m = outcome.manifest
                log.info("%s version %d announced (%s, %d bytes in %d chunks, valid from %s)%s: downloading",
                         m.kind, m.version, f"delta on {m.base_version}" if m.is_delta else "full", m.size,
                         m.chunk_count, m.valid_from.isoformat(),
                         f"; the unfinished download of version {outcome.superseded} is dropped"
                         if outcome.superseded is not None else "")
                if item.retained:
                    # The centre published this manifest and its chunks while the lane was
                    # away: the chunks are gone (not retained), ask for them. A manifest
                    # published now is followed by its chunks; asking would send every chunk
                    # twice (missing ones are asked for after chunk_timeout_s).
                    await session.publish(outcome.request)
            elif isinstance(outcome, KeepManifest):
                m = outcome.manifest
                log.info("status list: the centre's signed manifest of version %d, the version in use, which was kept "
                         "without one (validity unknown, counted as old); keeping it beside the list", m.version)
                self._start_keep(m)
            elif isinstance(outcome, Ignored):
                if outcome.code is Ignore.APPLY_QUEUE_FULL:
                    log.info("list manifest not taken now (%s): %s", outcome.code, outcome.text)
                else:
                    log.debug("list manifest ignored (%s): %s", outcome.code, outcome.text)
            else:
                self._refused(outcome)
            return
        self._chunk_outcome(self.downloads.on_chunk(item.payload, now))
        for kind in ListKind:
            if self.downloads.of(kind).hashing_due:
                self._start_verify(kind)

    def _chunk_outcome(self, chunk: ChunkOutcome) -> None:
        if isinstance(chunk, Complete):
            m = chunk.content.manifest
            log.info("%s version %d: all %d chunks in, SHA-256 verified; applying", m.kind, m.version,
                     m.chunk_count)
            self._start_apply(chunk.content)
        elif isinstance(chunk, Refused):
            self._refused(chunk)
        elif isinstance(chunk, ChunkDropped):
            log.debug("list chunk dropped (%s): %s", chunk.code, chunk.text)
        elif isinstance(chunk, Accepted) and not chunk.missing:
            log.info("list chunk %d was the last one missing; the SHA-256 catches up over the chunks that came before "
                     "it, a step per loop turn", chunk.index)
        elif isinstance(chunk, Accepted) and chunk.index % 256 == 0:
            log.debug("list chunk %d taken, %d to go", chunk.index, chunk.missing)

    # -- verifying -----------------------------------------------------------------------------
    def _start_verify(self, kind: ListKind) -> None:
        running = self._verifying.get(kind)
        if running is not None and not running.done():
            return  # the task under way takes the new chunks too
        tasks = self._tasks
        if tasks is None:
            download = self.downloads.of(kind)
            log.warning("%s version %s not verified: the list service is not running (laned is stopping)", kind,
                        download.collecting.version if download.collecting else "?")
            download.abandon()
            return
        self._verifying[kind] = tasks.create_task(self._verify(kind), name=f"list-verify-{kind}")

    async def _verify(self, kind: ListKind) -> None:
        """The running SHA-256 over the chunks in, ``hash_step_bytes`` per loop turn (a late
        chunk 0 of a national list leaves ~800 MB to hash: ~0.8 s, never in one go)."""
        download = self.downloads.of(kind)
        while download.hashing_due:
            await asyncio.sleep(0)  # the lane's tasks run between two steps
            outcome = download.hash_step()
            if outcome is not None:
                self._chunk_outcome(outcome)

    # -- applying ------------------------------------------------------------------------------
    def _start_apply(self, content: VerifiedContent) -> None:
        tasks = self._tasks
        if tasks is None:
            # Only before run() started or after it ended (stopping): the centre announces
            # again, and the retained manifest comes back on the next connect.
            log.warning("%s version %d not applied: the list service is not running (laned is stopping)",
                        content.manifest.kind, content.manifest.version)
            download = self.downloads.of(content.manifest.kind)
            download.abandon()
            download.apply_ended(content.manifest.version)
            return
        tasks.create_task(self.apply(content), name=f"list-apply-{content.manifest.kind}")

    async def apply(self, content: VerifiedContent) -> bool:
        """Apply a verified version (after any apply of the same kind under way); True if
        it is now in use. A refusal is an alarm, never an exception. Until it ends, the
        download counts the version as being applied (ListDownload.applying)."""
        m = content.manifest
        try:
            return await self._apply(content)
        finally:
            self.downloads.of(m.kind).apply_ended(m.version)

    async def _apply(self, content: VerifiedContent) -> bool:
        m = content.manifest
        async with self._locks[m.kind]:
            now = self.wall()  # after any apply it waited for: the expiry is checked at this time
            try:
                if m.kind is ListKind.STATUS_LIST:
                    store = self.status.store if self.status is not None else StatusList()
                    made = await apply_status_list(
                        content, store, path=self.settings.status_list_path, now=now,
                        install=self._use_status, max_expanded_bytes=self.settings.status_list_max_expanded_bytes)
                    log.info("status list: version %d in use (%d entries)%s", made.version, len(made.store),
                             f", saved to {self.settings.status_list_path}" if self.settings.status_list_path
                             else "; no status_list.path configured, so it is lost at a restart")
                else:
                    schedule = await apply_fee_table(
                        content, self.fees, directory=self.settings.fee_table_dir, now=now, tz=self.tz,
                        install=self._use_fees, max_expanded_bytes=self.settings.fee_table_max_bytes)
                    pending = schedule.pending is not None and schedule.pending.version == m.version
                    log.info("fee table: version %d %s", m.version,
                             f"held pending until {schedule.pending.valid_from.isoformat()}"
                             if pending and schedule.pending is not None else "in force")
            except ListApplyError as err:
                self._refused(err.refusal())
                return False
        await self._publish_versions()
        return True

    def _start_keep(self, manifest: ListManifest) -> None:
        tasks = self._tasks
        if tasks is None:
            return  # stopping: the retained manifest comes again on the next connect
        tasks.create_task(self.keep_manifest(manifest), name=f"list-apply-manifest-{manifest.kind}")

    async def keep_manifest(self, manifest: ListManifest) -> bool:
        """The signed manifest of the status list version in use, kept without one: saved
        beside the list and used (its validity known again). True if it was."""
        async with self._locks[ListKind.STATUS_LIST]:
            status = self.status
            if status is None or status.manifest is not None or status.version != manifest.version:
                return False  # an apply under way came first and brought its own
            try:
                made = await keep_status_manifest(status, manifest, path=self.settings.status_list_path,
                                                  install=self._use_kept_manifest)
            except ListApplyError as err:
                self._refused(err.refusal())
                return False
        log.info("status list: version %d's manifest kept%s; valid from %s to %s", made.version,
                 f" beside {self.settings.status_list_path}" if self.settings.status_list_path else "",
                 manifest.valid_from.isoformat(), manifest.expires_at.isoformat())
        return True

    def _use_kept_manifest(self, made: StatusListInUse) -> None:
        if self.status is made:
            return
        self._install.status_list(made)  # the same store: the health monitor takes its valid_from
        self.status = made
        self.downloads.of(ListKind.STATUS_LIST).manifest_kept()
        self.check_freshness(self.wall())

    def _use_status(self, made: StatusListInUse) -> None:
        # Called synchronously by apply_status_list (possibly a second time if a cancellation
        # came while the file was written: the same object, so idempotent).
        if self.status is made:
            return
        self._install.status_list(made)
        self.status = made
        self.downloads.of(ListKind.STATUS_LIST).installed(made.version)
        self.installed.append((ListKind.STATUS_LIST, made.version))
        self.check_freshness(self.wall())

    def _use_fees(self, schedule: FeeSchedule) -> None:
        if self.fees is schedule:
            return
        self._install.fee_table(schedule)
        self.fees = schedule
        newest = max(schedule.current.version, schedule.pending.version if schedule.pending is not None else 0)
        self.downloads.of(ListKind.FEE_TABLE).installed(newest)
        self.installed.append((ListKind.FEE_TABLE, newest))

    async def _publish_versions(self) -> None:
        session = self._session
        if session is None:
            return  # published on the next connect
        try:
            await session.publish(self.versions())
        except LinkDown as err:
            # The session's own tasks see the link go down and reconnect; list/versions
            # goes up again on connect.
            log.debug("list/versions not published (%s); it is on the next connect", err.reason)

    def _refused(self, refused: Refused) -> None:
        self.refusals.append(refused)
        del self.refusals[:-100]  # bounded: the alarm history has the rest
        log.warning("%s; the version in use stays (%s). Tell the centre: lane %s", refused, self._in_use_text(
            refused.kind), self.lane_id)
        self._alarm(RaiseAlarm("list_update_refused", str(refused)))

    def _in_use_text(self, kind: ListKind | None) -> str:
        if kind is ListKind.FEE_TABLE:
            return f"fee table version {self.fees.version}" if self.fees is not None else "no fee table"
        if kind is ListKind.STATUS_LIST:
            return f"status list version {self.status.version}" if self.status is not None else "no status list"
        return "nothing changed"


def _announced(status: StatusListInUse) -> bool:
    """A list of version 0 and empty is no list (nothing was ever installed)."""
    return status.manifest is not None or bool(status.version) or bool(len(status.store))


def settings_from_config(lists: ListsSection, *, status_list_path: Path | None, max_age_s: float) -> ListSettings:
    """:class:`ListSettings` from ``[lists]`` (and ``status_list.path``, ``health.status_list_max_age_h``)."""
    return ListSettings(
        status_list_max_bytes=lists.status_list_max_mb << 20,
        status_list_max_expanded_bytes=lists.status_list_max_expanded_mb << 20,
        fee_table_max_bytes=lists.fee_table_max_kb << 10, chunk_timeout_s=lists.chunk_timeout_s,
        max_requests=lists.max_requests, clock_skew_s=lists.clock_skew_s, on_stale=StalePolicy(lists.on_stale),
        status_list_path=status_list_path, fee_table_dir=lists.fee_table_dir, status_list_max_age_s=max_age_s)


__all__ = ["Installers", "ListService", "ListSettings", "Publisher", "settings_from_config"]
