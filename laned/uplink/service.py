"""The uplink task: the journal's outbox to the centre, and what the centre sends back.

:class:`UplinkService` runs as the daemon's ``uplink`` task (``laned.app``). It keeps a
:class:`~laned.uplink.link.CentreLink` session up (reconnecting with back-off) and, while
connected:

* publishes the journal's final rows (topics ``tx`` and ``tx/batch``) through its
  :class:`~laned.uplink.publisher.OutboxPublisher`: at most ``window`` rows in flight, new
  rows first, then the backlog in seq order from the oldest unacknowledged row; rows whose
  ack is overdue (``ack_timeout_s``) go up again. A row is marked delivered **only** when
  the centre's ``tx/ack`` names it — a PUBACK only says the broker has it;
* applies the centre's reconciliation answers (``reconcile``) to the journal
  (``settle_from_centre``) and publishes the results (``reconcile/result``), a second
  stream acked by ``tx/ack`` with ``stream: reconcile``;
* publishes the retained lane state (on connect and on change), health snapshots with the
  uplink's counters (every ``health_interval_s`` and on every alarm change) and each alarm
  raise/clear — those made while the link was down after the next connect, in order
  (bounded, and within the alarm topic's expiry: :func:`~laned.uplink.reporting.alarm_replay`);
* raises ``uplink_publish_refused`` while the broker refuses a topic it publishes on (its
  PUBACKs, :class:`~laned.uplink.link.PublishRefusals`);
* hands commands (``cmd``) to a hook: executing them is not this module's business.

The journal is read only through :meth:`JournalWriter.submit_async`, so the event loop
never waits on SQLite. While the link is down the lane keeps charging: the journal is the
outbox; ``centre_link_down`` is raised after ``[uplink] link_down_alarm_s`` and the
``uplink_backlog_50/80/95`` alarms follow the backlog. A link failure is handled here, and
so is a journal that fails to read or write (``JournalStorageError``: reported once, tried
again later, nothing lost — the disk's own alarm is ``journal_not_writable``); anything
else that goes wrong ends the task, and with it the daemon (a bug, loudly).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from laned.cancellation import stop_if_cancelled
from laned.journal.errors import JournalError, JournalStorageError
from laned.journal.records import Backlog, JournalEntry, ReconcileRecord, ReconcileStatus, TxState
from laned.lane.events import ClearAlarm, RaiseAlarm
from laned.uplink.contract import ContractError, contract, validate
from laned.uplink.link import Backoff, CentreLink, Incoming, LinkDown, LinkSettings, LinkState, Session
from laned.uplink.messages import (
    AlarmMsg, AckStream, HealthCounters, HealthSnapshot, LaneState, OutboxState, ReconcileAnswer, ReconcileOutcome,
    TxAck, UplinkMessage,
)
from laned.uplink.outbox import backlog_level
from laned.uplink.publisher import OutboxPublisher, PublishSettings
from laned.uplink.reporting import (
    LaneView, alarm_counts, alarm_replay, backlog_alarms, health_snapshot, lane_counts, lane_state,
)

if TYPE_CHECKING:
    from laned.config import UplinkSection
    from laned.uplink.list_service import ListService

log = logging.getLogger("laned.uplink")

R = TypeVar("R")
# What the daemon does with a command (topic cmd, the payload as received): verify, execute,
# answer on cmd/result over the session (laned.uplink.command_exec.CommandExecutor).
CommandHook = Callable[[Incoming, Session], Awaitable[None]]

WATCH_S = 1.0  # lane state, alarm changes and health: looked at this often (the health cycle's pace)
BACKLOG_CHECK_S = 5.0  # the backlog count (an index count) for the uplink_backlog_* alarms
# Alarm changes published one by one after an outage, at most: each waits for its PUBACK (a
# round trip to the broker), and the health snapshot that follows lists the active alarms
# anyway. A lane makes a few changes an hour; 200 is a day of a flapping device. Beyond it,
# the latest change of each code goes up (laned.uplink.reporting.alarm_replay).
ALARM_REPLAY_MAX = 200


@dataclass(frozen=True, slots=True)
class UplinkSettings:
    """The delivery knobs of ``[uplink]`` (laned.config.UplinkSection)."""

    window: int = 2048
    batch_max: int = 64
    ack_timeout_s: float = 30.0
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    backlog_capacity: int = 140_000
    health_interval_s: float = 60.0


class UplinkService:
    """The uplink task (see the module docstring). ``monitor`` is the daemon's
    :class:`~laned.health.monitor.HealthMonitor` (alarms in and out, checks); None runs
    without alarms and with an empty health snapshot (tests)."""

    def __init__(self, link: CentreLink, writer: Any, settings: UplinkSettings, *, monitor: Any, lane: LaneView,
                 wall: Callable[[], dt.datetime], monotonic: Callable[[], float] = time.monotonic,
                 on_command: CommandHook | None = None) -> None:
        self.link = link
        self.lane_id = link.settings.lane_id
        self.writer = writer
        self.settings = settings
        self.monitor = monitor
        self.lane = lane
        self.wall = wall
        self.monotonic = monotonic
        self.on_command = on_command or self._command_not_executed
        self.outbox = OutboxPublisher(
            PublishSettings(window=settings.window, batch_max=settings.batch_max, ack_timeout_s=settings.ack_timeout_s),
            journal=self._journal, lane=lane, wall=wall, monotonic=monotonic, storage_trouble=self._storage_trouble,
            alarm=self._alarm)
        link.refusals.on_change = self._refusals_changed
        self._backoff = Backoff(settings.reconnect_min_s, settings.reconnect_max_s)
        self._backlog_level: int | None = None
        self._backlog: tuple[int, int | None] = (0, None)  # count, oldest seq
        # How many of the monitor's changes (every change since start, in order) are
        # published: kept over reconnects, so that what changed while the link was down
        # goes up after the next connect.
        self._alarm_index = 0
        self._published_state: LaneState | None = None
        self._down_since: float | None = None
        self._down_reason = ""
        self._started = monotonic()
        self._unconforming: set[str] = set()
        self._storage_errors: set[str] = set()
        # Status lists and fee tables from the centre (laned.uplink.list_service); None:
        # their manifests and chunks are ignored.
        self.lists: ListService | None = None

    @classmethod
    def build(cls, link: LinkSettings, settings: UplinkSettings, *, writer: Any, monitor: Any, lane: LaneView,
              wall: Callable[[], dt.datetime], monotonic: Callable[[], float] = time.monotonic,
              on_command: CommandHook | None = None) -> UplinkService:
        """The service and its link (which publishes the service's lane state on connect)."""
        service: UplinkService
        centre = CentreLink(link, lane_state=lambda: service.lane_state(), wall=wall)
        service = cls(centre, writer, settings, monitor=monitor, lane=lane, wall=wall, monotonic=monotonic,
                      on_command=on_command)
        return service

    @classmethod
    def from_config(cls, uplink: UplinkSection, lane_id: str, *, writer: Any, monitor: Any, lane: LaneView,
                    wall: Callable[[], dt.datetime]) -> UplinkService:
        """From ``[uplink]`` (``link_down_alarm_s`` is the alarm registry's, in laned.app)."""
        link = LinkSettings(lane_id=lane_id, host=uplink.host, port=uplink.port, ca=uplink.ca, cert=uplink.cert,
                            key=uplink.key, keepalive_s=uplink.keepalive_s,
                            session_expiry_s=uplink.session_expiry_s, max_inflight=uplink.window)
        settings = UplinkSettings(window=uplink.window, batch_max=uplink.batch_max, ack_timeout_s=uplink.ack_timeout_s,
                                  reconnect_min_s=uplink.reconnect_min_s, reconnect_max_s=uplink.reconnect_max_s,
                                  backlog_capacity=uplink.backlog_capacity,
                                  health_interval_s=uplink.health_interval_s)
        return cls.build(link, settings, writer=writer, monitor=monitor, lane=lane, wall=wall)

    # -- for the daemon and tests ----------------------------------------------------------------
    @property
    def connected(self) -> bool:
        return self.link.state is LinkState.UP

    @property
    def dropped(self) -> int:
        """Received payloads dropped because they did not conform to the contract."""
        return self.link.stats.dropped

    def in_flight(self, stream: AckStream = AckStream.TX) -> list[int]:
        """Seqs published on ``stream`` and not acknowledged yet."""
        return self.outbox.stream(stream).window.in_flight

    def notify(self) -> None:
        """A journal operation finished (a row may have become final, or the lane may have
        settled an unknown row and recorded a result): look for new rows now."""
        self.outbox.notify()

    def vehicle_gone(self) -> None:
        """The lane's vehicle has gone (on the loop): the outbox stops giving way now."""
        self.outbox.vehicle_gone()

    def lane_state(self) -> LaneState:
        return lane_state(self.lane_id, self.lane, self.wall())

    # -- the task --------------------------------------------------------------------------------
    async def run(self) -> None:
        """Until cancelled: keep the link up and serve it; count the backlog meanwhile."""
        # Pending from the start: a centre never reached raises centre_link_down too.
        self._down_since = self.monotonic()
        self._alarm(RaiseAlarm("centre_link_down", "not connected yet"))
        log.info("centre link: connecting to %s as %s", self.link.settings.where(), self.link.settings.client_id)
        async with asyncio.TaskGroup() as tg:
            if self.lists is not None:
                tg.create_task(self.lists.run(), name="uplink-lists")
            tg.create_task(self._backlog_watch(), name="uplink-backlog")
            tg.create_task(self._connect_loop(), name="uplink-link")

    async def _connect_loop(self) -> None:
        while True:
            stop_if_cancelled()
            try:
                async with self.link.session() as session:
                    stop_if_cancelled()  # a stop that came during the connect
                    # Served in a task of its own: Python 3.11's TaskGroup leaves its parent's
                    # cancel count raised after a child failed, which would read as a stop here.
                    await asyncio.create_task(self._serve(session), name="uplink-session")
            except LinkDown as err:
                stop_if_cancelled(err)
                await self._link_down(err.reason)
            delay = self._backoff.next()
            log.debug("centre link: next attempt in %.1f s", delay)
            await asyncio.sleep(delay)  # the back-off, so that a broker that refuses is not hammered

    async def _link_down(self, reason: str) -> None:
        if reason != self._down_reason:  # each new reason once, not every attempt
            await self._recount_backlog()
            count, oldest = self._backlog
            log.warning("centre link %s: %s. The lane keeps charging; %d rows wait in the journal%s and go up when "
                        "the link is back; retrying with back-off (%g–%g s)", self.link.settings.where(), reason,
                        count, f" from seq {oldest}" if oldest else "", self.settings.reconnect_min_s,
                        self.settings.reconnect_max_s)
        self._down_reason = reason
        if self._down_since is None:
            self._down_since = self.monotonic()
        self._alarm(RaiseAlarm("centre_link_down", reason))

    async def _link_up(self) -> None:
        down = 0.0 if self._down_since is None else self.monotonic() - self._down_since
        self._down_since, self._down_reason = None, ""
        self._backoff.reset()
        await self._recount_backlog()
        count, oldest = self._backlog
        log.info("centre link: connected to %s as %s after %.1f s; %d unacknowledged rows go up%s",
                 self.link.settings.where(), self.link.settings.client_id, down, count,
                 f" from seq {oldest}" if oldest else "")
        self._alarm(ClearAlarm("centre_link_down", "connected"))

    async def _serve(self, session: Session) -> None:
        # In the writer's order, not its background: a row journalled after this read goes up
        # live, ahead of the backlog; every row before it with the backlog, in seq order.
        try:
            newest: int = await self.writer.submit_async(lambda mj: mj.journal.last_seq())
        except JournalStorageError as err:
            # Without it, rows above the newest fetched so far go up as new, the rest with the
            # backlog: every row all the same, some perhaps ahead of older ones (the centre
            # does not need the order).
            self._storage_trouble("reading the journal's last seq at connect", err)
            newest = self.outbox.newest
        self.outbox.connected(newest)
        self._published_state = None
        await self._link_up()
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._receive(session), name="uplink-receive")
                tg.create_task(self.outbox.mark_acked(), name="uplink-marks")
                tg.create_task(self.outbox.pump(session, self.outbox.tx), name="uplink-tx")
                tg.create_task(self.outbox.pump(session, self.outbox.reconcile), name="uplink-reconcile")
                tg.create_task(self._watch(session), name="uplink-watch")
                if self.lists is not None:
                    tg.create_task(self.lists.serve(session), name="uplink-list-requests")
        except* LinkDown as group:
            raise group.exceptions[0] from None
        finally:
            self.outbox.disconnected()

    def _journal(self, op: Callable[[Any], R]) -> asyncio.Future[R]:
        """A journal operation of the uplink's: in the writer's background, so that a
        vehicle's intent or charge never waits behind an outbox scan or an ack's marks."""
        future: asyncio.Future[R] = self.writer.submit_async(op, background=True)
        return future

    # -- what the centre sends ---------------------------------------------------------------------
    async def _receive(self, session: Session) -> None:
        async for item in session.incoming():
            msg = item.message
            if isinstance(msg, TxAck):
                self.outbox.on_ack(msg)
            elif isinstance(msg, ReconcileAnswer):
                await self._on_answer(msg)
            elif item.channel == "cmd":  # handed over as received: the hook answers even a malformed one
                await self.on_command(item, session)
            elif msg is None and self.lists is not None:  # list/manifest, list/chunk: checked there
                await self.lists.on_message(item, session)
            else:
                log.debug("centre link: %s on %s ignored: no list downloads on this lane", item.channel, item.topic)
            # A command's result or a list request was published above: its PUBACK's wait_for
            # may have dropped a stop that came meanwhile (laned.cancellation).
            stop_if_cancelled()

    async def _on_answer(self, answer: ReconcileAnswer) -> None:
        b5 = answer.to_b5() if answer.outcome is ReconcileOutcome.CHARGED else None
        now = self.wall()
        try:
            record: ReconcileRecord = await self._journal(lambda mj: mj.journal.settle_from_centre(
                seq=answer.seq, tx_uuid=answer.tx_uuid, outcome=answer.outcome, answer_id=answer.answer_id,
                b5=b5, now=now))
        except JournalError as err:
            # The centre repeats its answer until it has the result: nothing is lost.
            log.error("reconcile: the centre's answer %s on seq %d could not be journalled (%s); it is taken "
                      "when the centre repeats it", answer.answer_id, answer.seq, err)
            return
        log.info("reconcile: the centre's answer %s on seq %d (%s): %s%s", answer.answer_id, answer.seq,
                 answer.outcome, record.result, f" — {record.detail}" if record.detail else "")
        if record.result is ReconcileStatus.APPLIED:
            try:
                entry: JournalEntry = await self._journal(lambda mj: mj.journal.get(answer.seq))
            except JournalStorageError as err:
                self._storage_trouble(f"reading seq {answer.seq} after applying the centre's answer", err)
                # Its ack was cleared with the answer: a scan from its seq finds it waiting.
                self.outbox.resend_from(answer.seq)
            else:
                if entry.state is not TxState.INTENT:
                    self.outbox.tx.window.live(entry)  # the settled row goes up again (its ack was cleared)
            self.outbox.tx.wake.set()
        self.outbox.reconcile.window.live(record)
        self.outbox.reconcile.wake.set()

    async def _command_not_executed(self, item: Incoming, session: Session) -> None:
        log.info("centre link: a command on %s received and not executed: this lane has no command execution "
                 "wired (laned.uplink.command_exec); no result is sent", item.topic)

    # -- for command execution (laned.uplink.command_exec) ------------------------------------------
    def resend_from(self, seq: int) -> None:
        """Rows from ``seq`` on wait again (the journal's acks were cleared): scan from there now."""
        self.outbox.resend_from(seq)

    async def publish_health(self, session: Session) -> None:
        """A health snapshot now (the centre's ``publish_health``)."""
        await self._publish_checked(session, self._health())

    # -- state, health and alarms ------------------------------------------------------------------
    async def _watch(self, session: Session) -> None:
        next_health = self.monotonic()
        while True:
            stop_if_cancelled()
            state = self.lane_state()
            if self._published_state is None or dataclasses.replace(state, at=None) != dataclasses.replace(
                    self._published_state, at=None):
                if self._published_state is not None:  # the connect published it already
                    await self._publish_checked(session, state)
                self._published_state = state
            changed = await self._publish_alarm_changes(session)
            now = self.monotonic()
            if changed or now >= next_health:
                # Counted from before the publish: however long it waits for the broker, the
                # next snapshot is not pushed later.
                next_health = now + self.settings.health_interval_s
                await self._publish_checked(session, self._health())
            await asyncio.sleep(WATCH_S)  # the health cycle's pace; nothing here is urgent

    async def _publish_alarm_changes(self, session: Session) -> bool:
        """Publish the alarm changes not published yet, oldest first: those of the last
        watch, or after a connect every change made while the link was down (bounded,
        within the alarm topic's expiry). True if there were any. Counted as published once
        all have gone: a link lost half-way sends them all again after the next connect."""
        if self.monitor is None:
            return False
        changes, lost = self.monitor.changes_since(self._alarm_index)
        if lost:
            log.warning("centre link: %d alarm changes made while the link was down are no longer kept in memory and "
                        "do not go up (the log has them); the active alarms are in the health snapshot", lost)
        if not changes:
            self._alarm_index += lost
            return bool(lost)
        expiry_s = contract().delivery(AlarmMsg.MESSAGE).expiry_s
        replay = alarm_replay(changes, self.monotonic(), expiry_s=expiry_s, limit=ALARM_REPLAY_MAX)
        if replay.expired or replay.collapsed:
            log.warning("centre link: %d alarm changes waited to be published; %d go up now. Left out: %d older than "
                        "the alarm topic's expiry (%s s), %d as too many (of each alarm, its latest change goes up, "
                        "saying how many it stands for). The active alarms are in the health snapshot",
                        len(changes), len(replay.send), replay.expired, expiry_s, replay.collapsed)
        for item in replay.send:
            await self._publish_checked(session, AlarmMsg.from_change(item.change, self.lane_id, note=item.note),
                                        expiry_s=item.expiry_s)
            # A stop that came while its PUBACK was awaited may have been dropped there
            # (laned.cancellation): after an outage there can be many of them to send.
            stop_if_cancelled()
        self._alarm_index += lost + len(changes)
        return True

    async def _publish_checked(self, session: Session, msg: UplinkMessage, *, expiry_s: int | None = None) -> None:
        """State, health and alarms are few: check them against the contract before they go,
        so a message the centre would reject is reported here, once, instead. ``expiry_s``:
        what is left of the channel's expiry for a message that waited (None: the contract's)."""
        try:
            validate(msg.MESSAGE, msg.to_dict())
        except ContractError as err:
            if str(err) not in self._unconforming:
                self._unconforming.add(str(err))
                log.error("centre link: not publishing a %s that does not conform to the contract (%s); "
                          "this is a laned bug, report it", msg.MESSAGE, err)
            return
        await session.publish(msg, expiry_s=expiry_s)

    def _health(self) -> HealthSnapshot:
        count, oldest = self._backlog
        return health_snapshot(self.lane_id, self.monitor, self.lane, self.wall(),
                               OutboxState(pending=count, oldest_pending_seq=oldest,
                                           last_acked_seq=self.outbox.tx.last_acked),
                               uptime_s=int(self.monotonic() - self._started), counters=self.counters())

    def counters(self) -> HealthCounters:
        """What the uplink has counted since start (the health snapshot's ``counters``)."""
        stats = self.link.stats
        tx, results = self.outbox.tx.window, self.outbox.reconcile.window
        outcomes, events = lane_counts(self.lane.counters())
        return HealthCounters(tx_published=tx.published, tx_retransmissions=tx.retransmissions,
                              results_published=results.published, link_sessions=stats.sessions,
                              link_lost=stats.lost, received_dropped=stats.dropped, publish_refused=stats.refused,
                              alarms=alarm_counts(self.monitor), outcomes=outcomes, lane_events=events)

    async def _backlog_watch(self) -> None:
        """The backlog, connected or not: the uplink_backlog_* alarms and the health snapshot."""
        while True:
            stop_if_cancelled()
            try:
                backlog = await self._count_backlog()
            except JournalStorageError as err:
                self._storage_trouble("counting the outbox backlog", err)
                await asyncio.sleep(BACKLOG_CHECK_S)
                continue
            level = backlog_level(backlog.count, self.settings.backlog_capacity, self._backlog_level)
            if level != self._backlog_level:
                detail = (f"{backlog.count} of {self.settings.backlog_capacity} rows unacknowledged, the oldest "
                          f"seq {backlog.oldest_seq}")
                log.log(logging.WARNING if level else logging.INFO, "centre link: outbox backlog %s (%s)",
                        f"at {level} %" if level else "below 50 %", detail)
                for action in backlog_alarms(level, detail):
                    self._alarm(action)
                self._backlog_level = level
            await asyncio.sleep(BACKLOG_CHECK_S)  # a count of an index; the backlog moves slowly

    async def _count_backlog(self) -> Backlog:
        backlog: Backlog = await self._journal(lambda mj: mj.journal.outbox_backlog())
        self._backlog = (backlog.count, backlog.oldest_seq)
        return backlog

    async def _recount_backlog(self) -> None:
        """The backlog for a log line: a journal that fails leaves the last count known."""
        try:
            await self._count_backlog()
        except JournalStorageError as err:
            self._storage_trouble("counting the outbox backlog", err)

    def _refusals_changed(self, refused: Mapping[str, str]) -> None:
        """The broker started or stopped refusing a topic (laned.uplink.link.PublishRefusals)."""
        if refused:
            self._alarm(RaiseAlarm("uplink_publish_refused",
                                   "; ".join(f"{topic}: {reason}" for topic, reason in sorted(refused.items()))))
        else:
            self._alarm(ClearAlarm("uplink_publish_refused", "the broker takes the lane's publishes again"))

    def _storage_trouble(self, what: str, err: JournalStorageError) -> None:
        key = f"{what}: {err}"
        if key not in self._storage_errors:  # once per distinct failure, not on every retry
            self._storage_errors.add(key)
            log.error("centre link: the journal failed while %s (%s); nothing is lost, the rows wait in the "
                      "journal and laned tries again (see journal_not_writable)", what, err)

    def _alarm(self, action: RaiseAlarm | ClearAlarm) -> None:
        if self.monitor is not None:
            self.monitor.lane_alarm(action)
