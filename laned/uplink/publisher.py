"""Publishing the journal's outbox over one broker connection: the two streams' pumps, the
centre's acks freeing their windows, and the journal's delivery marks.

:class:`OutboxPublisher` is the part of the uplink task (``laned.uplink.service``) that
moves rows: for each stream (``tx`` with ``tx/batch``, ``reconcile/result``) a pump reads
what the window has room for from the journal, in the writer's background, and publishes
it — several transaction rows per message where several are ready; a ``tx/ack`` frees the
window at once, and the rows are marked delivered in the journal after, in one commit per
burst of acks. It gives way to a vehicle's transaction (``LaneView.vehicle_busy``), so a
C6 never waits behind a batch being read and encoded. A row that cannot be encoded is set
aside for the life of the process (``uplink_row_unsendable``), never published, never
deleted: the rest go on, and a restart does not fail on it either.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from laned.cancellation import stop_if_cancelled
from laned.journal.errors import JournalStorageError
from laned.journal.records import JournalEntry, TxState
from laned.journal.writer_queue import HOLD_MAX_S, BoundedHold
from laned.lane.events import ClearAlarm, RaiseAlarm
from laned.uplink.contract import ContractError
from laned.uplink.link import Session
from laned.uplink.messages import AckStream, TxAck
from laned.uplink.reporting import LaneView
from laned.uplink.streams import OutboxStream, reconcile_stream, tx_stream

log = logging.getLogger("laned.uplink")

R = TypeVar("R")

MAX_PUMP_WAIT_S = 5.0  # the outbox pump wakes at least this often to look for overdue rows
LIVE_BATCH = 64  # new rows fetched per wake-up, ahead of the backlog
# Backlog rows read per journal operation: the writer runs one background operation at a
# time, and a vehicle's intent waits for the one running (32 rows: ~0.4 ms, 64: ~0.8 ms, on
# an idle machine; under a drain's load several times that). Short operations also delayed
# the event loop less in the measurements. Measured in the uplink bench (docs/benchmarks.md,
# "Uplink drain"): with 64-row reads and 256-row marks the bench's 1 ms ticker on the loop
# was late by over 10 ms in most runs; 16 and 32 helped as much as these, but cost the lane
# more CPU per row (a round trip to the writer per operation) and the drain ~10 %.
SCAN_BATCH = 32
# Acked rows marked delivered per journal operation, for the same reasons (64 rows: ~0.3 ms,
# 256: ~1.3 ms, 2048: ~9 ms).
MARK_ROWS = 64
# The outbox waits for a vehicle's transaction (LaneView.vehicle_busy) at most this long: a
# B2-to-B5 exchange takes tens of milliseconds. The lane says when the vehicle has gone
# (vehicle_gone); the outbox's own look every GIVE_WAY_POLL_S is only a backstop. (It used
# to look every 2 ms: those wake-ups of the loop competed with the vehicle's for the cores.)
GIVE_WAY_MAX_S = HOLD_MAX_S  # one bound for both: the journal writer holds its background work as long
GIVE_WAY_POLL_S = 0.02


@dataclass(frozen=True, slots=True)
class PublishSettings:
    """The outbox's knobs of ``[uplink]``."""

    window: int = 2048
    batch_max: int = 64
    ack_timeout_s: float = 30.0


# An ack whose window is freed and whose rows wait to be marked: (stream, first, last, sent, at).
_Mark = tuple[OutboxStream[Any], int, int, dict[int, str], dt.datetime]


class OutboxPublisher:
    """The outbox streams and how they are published (see the module docstring).

    ``journal`` runs an operation in the journal writer's background; ``storage_trouble``
    reports a journal failure once (the rows wait in the journal, nothing is lost);
    ``alarm`` raises the lane's alarms (None: none).
    """

    def __init__(self, settings: PublishSettings, *, journal: Callable[[Callable[[Any], Any]], asyncio.Future[Any]],
                 lane: LaneView, wall: Callable[[], dt.datetime], monotonic: Callable[[], float],
                 storage_trouble: Callable[[str, JournalStorageError], None],
                 alarm: Callable[[RaiseAlarm | ClearAlarm], None] | None = None) -> None:
        self.settings = settings
        self._journal = journal
        self.lane = lane
        self.wall = wall
        self.monotonic = monotonic
        self._storage_trouble = storage_trouble
        self._alarm = alarm
        self.tx = tx_stream(settings.window, settings.batch_max)
        self.reconcile = reconcile_stream(settings.window)
        self._newest = 0  # the highest tx seq fetched as new (live) in this connection
        self._live_due = True  # a lane operation finished since the last look for new rows
        # The centre's acks, their window already freed, on their way to the journal's marks
        # (mark_acked): a mark's commit never holds up the next ack or the next publish.
        self._marks: asyncio.Queue[_Mark] = asyncio.Queue()
        self._vehicle_gone = asyncio.Event()

    @property
    def streams(self) -> tuple[OutboxStream[Any], OutboxStream[Any]]:
        return self.tx, self.reconcile

    def stream(self, name: AckStream) -> OutboxStream[Any]:
        return self.tx if name is AckStream.TX else self.reconcile

    def notify(self) -> None:
        """A lane journal operation finished: look for new rows now."""
        self._live_due = True
        for stream in self.streams:
            stream.wake.set()

    @property
    def newest(self) -> int:
        """The highest tx seq fetched as new (live) so far."""
        return self._newest

    def connected(self, newest: int) -> None:
        """A new connection: nothing is assumed delivered; rows above ``newest`` (the
        journal's last seq, read in the writer's order) go up live, the rest with the backlog."""
        for stream in self.streams:
            stream.window.connected()
            stream.wake.set()
        self._newest = newest
        self._live_due = True

    def disconnected(self) -> None:
        for stream in self.streams:
            stream.window.disconnected()

    def resend_from(self, seq: int) -> None:
        """Rows from ``seq`` on wait again (the journal's acks were cleared): scan from there now."""
        self.tx.window.rescan(seq - 1)
        self.tx.wake.set()

    # -- publishing ----------------------------------------------------------------------------------
    async def pump(self, session: Session, stream: OutboxStream[Any]) -> None:
        """Publish ``stream`` over ``session`` until cancelled or the link drops."""
        # Overdue rows are looked for at least this often: half the ack timeout, so a late
        # row goes up again at most 1.5 timeouts after it was sent.
        wait_s = min(self.settings.ack_timeout_s / 2, MAX_PUMP_WAIT_S)
        last_sweep = self.monotonic()
        while True:
            stop_if_cancelled()
            await self.give_way()
            stream.wake.clear()
            try:
                last_sweep = await self._pump_once(session, stream, last_sweep)
            except JournalStorageError as err:
                # The disk or SQLite failed (journal_not_writable says so): nothing is lost,
                # the rows wait in the journal; try again after the wait below.
                self._storage_trouble(f"reading the {stream.name} outbox", err)
            else:
                if stream.more:
                    continue  # more backlog waits and there is room: go on at once
            try:
                async with asyncio.timeout(wait_s):
                    await stream.wake.wait()
            except TimeoutError:
                pass  # time to look at overdue rows

    def vehicle_gone(self) -> None:
        """The lane's vehicle has gone (called on the loop): stop giving way now."""
        self._vehicle_gone.set()

    async def give_way(self) -> None:
        """While a vehicle's transaction is under way (B2 to its end), publish nothing new: its
        C6 must not wait behind a batch being read and encoded. For at most GIVE_WAY_MAX_S at
        a time, so that a lane with a queue of vehicles still drains its backlog."""
        hold = BoundedHold()
        while True:
            self._vehicle_gone.clear()  # on the loop, as vehicle_gone: nothing sets it in between
            wait = hold.wait(self.lane.vehicle_busy(), self.monotonic(), GIVE_WAY_MAX_S, GIVE_WAY_POLL_S)
            if wait <= 0:
                return
            try:
                async with asyncio.timeout(wait):
                    await self._vehicle_gone.wait()
            except TimeoutError:
                pass  # look again: vehicle_gone is a shortcut, vehicle_busy decides

    async def _pump_once(self, session: Session, stream: OutboxStream[Any], last_sweep: float) -> float:
        """Publish what the window has room for, and what is overdue; returns the last sweep's time."""
        w = stream.window
        if stream is self.tx and w.room() and self._live_due:
            self._live_due = False
            await self._fetch_live()
        # Scan until a whole batch is in hand (each scan a journal operation of its own, so
        # a vehicle's intent can slip in between), the room is used or the backlog ends.
        rows: list[Any] = []
        want = min(w.room(), stream.batch_max)
        limit = 0
        scanned: list[Any] = []
        while len(rows) < want:
            limit = min(w.room(), SCAN_BATCH)
            if not limit:
                break
            if rows:
                await self.give_way()
            scanned = await self._journal(stream.reader(w.next_scan_after(), limit))
            rows += w.take(scanned, self.monotonic())
            if len(scanned) < limit:
                break
        now = self.monotonic()
        if now - last_sweep >= self.settings.ack_timeout_s and w.room():
            # Rows that changed after the scan passed them (an unknown row settled by a
            # C8 re-fetch) sit below the cursor: look from the oldest unacked row again.
            # What is in flight in the same state is skipped by the window.
            last_sweep = now
            rows += await self._look_back(stream, now)
        late = w.overdue(now, self.settings.ack_timeout_s)
        if late:
            log.info("centre link: no %s ack for seqs %s within %g s; publishing them again (the centre "
                     "de-duplicates)", stream.name, _seqs([stream.seq(r) for r in late]),
                     self.settings.ack_timeout_s)
        if rows or late:
            await self.give_way()
            await self._publish(session, stream, rows + late)
        stream.more = bool(limit) and len(scanned) == limit and w.room() > 0
        return last_sweep

    async def _publish(self, session: Session, stream: OutboxStream[Any], rows: list[Any]) -> None:
        try:
            await session.publish_all(stream.messages(rows))
        except ContractError:
            # A row the contract's message cannot carry (a laned bug, a damaged row). Left
            # in the window, it would fail this pump again on every wake-up; raised, it
            # would end the daemon, and the restart would read the row again and fail the
            # same way. So: find it, one row per message, and publish the others (the
            # centre de-duplicates any that went up before the failure).
            for row in rows:
                try:
                    await session.publish_all(stream.messages([row]))
                except ContractError as err:
                    self._quarantine(stream, row, err)
                await asyncio.sleep(0)  # a message alone does not yield in publish_all; a window is 2,048

    def _quarantine(self, stream: OutboxStream[Any], row: Any, err: ContractError) -> None:
        seq = stream.seq(row)
        stream.window.quarantine(row)
        log.error("centre link: %s seq %d cannot be encoded for the centre (%s). It stays in the journal, waiting, "
                  "and is not sent again until laned restarts; the other rows go on. A laned bug or a damaged row: "
                  "report the lane id and the seq (uplink_row_unsendable)", stream.name, seq, err)
        if self._alarm is not None:
            self._alarm(RaiseAlarm("uplink_row_unsendable", f"{stream.name} seq {seq}: {err}"))

    async def _look_back(self, stream: OutboxStream[Any], now: float) -> list[Any]:
        """What waits from the oldest unacked row on, up to the window's size: SCAN_BATCH rows
        per journal operation (2048 in one took ~30 ms, and a vehicle's intent waits for the
        operation running), giving way to a vehicle between them."""
        w = stream.window
        rows: list[Any] = []
        after = read = 0
        while read < w.size and w.room():
            if read:
                await self.give_way()
            limit = min(SCAN_BATCH, w.size - read)
            part = await self._journal(stream.reader(after, limit))
            rows += w.take(part, now)
            read += len(part)
            if len(part) < limit:
                break  # the end of what waits
            after = w.position(part[-1])
        return rows

    async def _fetch_live(self) -> None:
        """New final rows (above the highest seen) go into the window ahead of the backlog."""
        after = self._newest
        rows: list[JournalEntry] = await self._journal(
            lambda mj: mj.journal.outbox_after(after, LIVE_BATCH))
        for row in rows:
            self.tx.window.live(row)
            self._newest = max(self._newest, row.seq)

    # -- acks ----------------------------------------------------------------------------------------
    def on_ack(self, ack: TxAck) -> None:
        stream = self.stream(ack.stream)
        held = dict.fromkeys(ack.unknown_seqs, str(TxState.UNKNOWN)) if ack.unknown_seqs else None
        sent = stream.window.acked(ack.first_seq, ack.last_seq, held=held)
        if held:
            older = [seq for seq in held if stream.window.version_in_flight(seq) is not None]
            if older:
                log.info("centre link: %s ack %d…%d is for the unknown copy of seqs %s, which the lane has settled "
                         "since (an ack queued across a reconnect): their settled copies stay in flight until the "
                         "centre acks them", ack.stream, ack.first_seq, ack.last_seq, older)
                if not sent:
                    return
        if not sent:
            log.info("centre link: %s ack for seqs %d…%d names nothing in flight (a repeat, or a copy sent "
                     "before a reconnect); nothing marked, such rows go up again", ack.stream, ack.first_seq,
                     ack.last_seq)
            return
        # The window has room again: publish on while the journal marks the rows.
        stream.wake.set()
        self._marks.put_nowait((stream, ack.first_seq, ack.last_seq, sent, self.wall()))

    async def mark_acked(self) -> None:
        """Mark acked rows delivered in the journal, in ack order, every ack waiting at that
        moment in a few journal operations of at most MARK_ROWS rows (each one commit,
        without an fsync). An ack not marked when the session ends is marked in the next;
        one whose mark fails leaves its rows waiting: they go up again (the look-back from
        the oldest waiting row finds them) and the centre's next ack marks them."""
        while True:
            acks = [await self._marks.get()]
            await self.give_way()  # a vehicle's intent goes first; the acks waiting meanwhile share the commits
            while not self._marks.empty():
                acks.append(self._marks.get_nowait())
            pieces = mark_pieces(acks, MARK_ROWS)
            for i, piece in enumerate(pieces):
                if i:
                    await self.give_way()
                if not await self._mark(piece):
                    for rest in pieces[i + 1:]:  # the journal failed: these wait too, as after any failure
                        for stream, _, _, sent, _ in rest:
                            stream.window.settled(sent)
                    break

    async def _mark(self, piece: list[_Mark]) -> bool:
        """One journal operation marking ``piece``; False (reported) when the journal failed."""
        def mark(mj: Any) -> list[int]:
            # Not fsynced: a mark lost in a power cut only sends its rows once more.
            with mj.journal.batch("marking acked rows delivered", durable=False):
                return [stream.mark(mj.journal, first, last, sent, now) for stream, first, last, sent, now in piece]

        try:
            marked = await self._journal(mark)
        except JournalStorageError as err:
            self._storage_trouble(f"marking {len(piece)} acked ranges delivered (the first {piece[0][0].name} "
                                  f"seqs {piece[0][1]}…{piece[0][2]})", err)
            marked = None
        for stream, _, _, sent, _ in piece:
            stream.window.settled(sent)  # unmarked after a failure: the look-back sends them again
        if marked is None:
            return False
        for (stream, first, last, sent, _), count in zip(piece, marked):
            top = max(sent)
            stream.last_acked = top if stream.last_acked is None else max(stream.last_acked, top)
            log.debug("centre link: %s ack %d…%d: %d rows delivered", stream.name, first, last, count)
        return True


def mark_pieces(acks: list[_Mark], limit: int) -> list[list[_Mark]]:
    """``acks`` (in order) as journal operations of at most ``limit`` rows each: an ack of
    more rows is cut into consecutive parts, each naming only the seqs it marks."""
    pieces: list[list[_Mark]] = [[]]
    room = limit
    for stream, _, _, sent, now in acks:
        seqs = sorted(sent)
        while seqs:
            if not room:
                pieces.append([])
                room = limit
            part, seqs = seqs[:room], seqs[room:]
            pieces[-1].append((stream, part[0], part[-1], {seq: sent[seq] for seq in part}, now))
            room -= len(part)
    return [p for p in pieces if p]


def _seqs(seqs: list[int], limit: int = 10) -> str:
    shown = ", ".join(map(str, seqs[:limit]))
    return shown + (f" (+{len(seqs) - limit} more)" if len(seqs) > limit else "")
