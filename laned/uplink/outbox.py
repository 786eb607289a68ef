"""The uplink's publishing window over the journal's outbox (sans-IO: no asyncio, no clock).

The journal is the outbox (``laned.journal.outbox``): a row waits there until the centre's
``tx/ack`` names it. This module decides *what to publish next*, for one stream over one
broker connection; it never marks anything delivered — only the journal does, when the
driver hands it an ack. One :class:`OutboxWindow` per stream: :func:`transaction_window`
(topic ``tx``, rows :class:`~laned.journal.records.JournalEntry`) and
:func:`reconcile_window` (topic ``reconcile/result``, rows
:class:`~laned.journal.records.ReconcileRecord`). Times are monotonic seconds, passed in.

How the driver uses it, for each stream::

    on connect:        w.connected()
    on disconnect:     w.disconnected()
    a row journalled,  w.live(row)            # a new final row, an intent resolved, an unknown settled:
    or changed:                               # it goes out before the backlog
    to publish:        rows = journal.outbox_after(w.next_scan_after(), w.room())
                       for row in w.take(rows, now): publish(row)   # QoS 1; the PUBACK changes nothing
    on tx/ack:         sent = w.acked(ack.first_seq, ack.last_seq)
                       journal.outbox_ack(ack.first_seq, ack.last_seq, wall_now, sent=sent)
    every few seconds: for row in w.overdue(now, ack_timeout_s): publish(row)

The rules it keeps:

* at most ``size`` rows are in flight (published, not acked) at once: :meth:`~OutboxWindow.room`;
* live rows go first, then the backlog from the journal's scan in seq order, from the
  cursor: the highest position the scan has handed out in this connection;
* a row is never published twice in one connection while the same version of it is in
  flight (the version is what changes when a row changes: a transaction's state, a
  result's own seq). A changed row goes out again, but only once the copy in flight is
  acked: an ack names a seq, not a version, so an ack arriving while both copies were out
  could not say which one the centre stored. The ack of the old copy marks nothing in the
  journal (``outbox_ack(…, sent=…)`` compares the version), then the new copy goes;
* on a new connection nothing is assumed delivered: in-flight rows are forgotten and the
  cursor goes back to 0, so the scan starts from the oldest unacked row (the broker may
  have lost everything; the centre de-duplicates on ``(lane_id, seq)``);
* a row in flight too long without an ack is published again (:meth:`~OutboxWindow.overdue`),
  counted in :attr:`~OutboxWindow.retransmissions`;
* an ack for a seq not in flight is harmless: nothing to free, :meth:`~OutboxWindow.acked`
  does not return it, so the journal marks nothing for it (the row goes up again and is
  acked then);
* an ack names seqs, and nothing of a previous connection is remembered: an ack the
  broker queued for the lane while it was away (the centre acked a copy sent before the
  outage) arrives after the reconnect. The one row that can change in between is an
  unknown outcome (settled by a C8 re-fetch during the outage), so the centre's ack names
  the seqs it holds as unknown (``TxAck.unknown_seqs``): a settled copy in flight named
  there is not the one acked and stays in flight (``acked(…, held=…)``) until the ack of
  the settled copy (docs/uplink.md, "Acks");
* a row that cannot be encoded for the centre (:meth:`~OutboxWindow.quarantine`) is not
  published again in this process, whatever the connection, until it changes.

:func:`backlog_level` turns the journal's backlog count into the ``uplink_backlog_50/80/95``
alarm levels; raising them is the health layer's job.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Generic, TypeVar

from laned.journal.records import JournalEntry, ReconcileRecord

R = TypeVar("R")

# Live rows waiting for room. The lane journals a few rows a second; a queue this long
# means the window has been full for minutes. A row dropped from it is not lost: the cursor
# moves back below it, so the scan finds it in the journal.
LIVE_LIMIT = 1024

# The uplink_backlog_* alarm thresholds (laned.health.alarms), percent of uplink.backlog_capacity.
BACKLOG_LEVELS = (50, 80, 95)
# A level is left only when the fill drops this many percentage points below it, so a
# backlog hovering at a threshold (the centre acking as fast as the lane journals) does not
# raise and clear the alarm with every row.
BACKLOG_HYSTERESIS_PCT = 2.0


@dataclasses.dataclass
class _Flight(Generic[R]):
    row: R
    version: str
    sent_at: float


class OutboxWindow(Generic[R]):
    """What to publish next on one stream, and what is in flight. See the module docstring.

    ``key`` is the seq the centre acks (a transaction's seq); ``position`` the order the
    journal scans in (``outbox_after``/``reconcile_after`` take it); ``version`` what
    changes when a row changes.
    """

    def __init__(self, size: int, *, key: Callable[[R], int], position: Callable[[R], int],
                 version: Callable[[R], str], live_limit: int = LIVE_LIMIT) -> None:
        if not isinstance(size, int) or isinstance(size, bool) or size < 1:
            raise ValueError(f"the window size is {size!r}, expected 1 or more rows in flight")
        self.size = size
        self._key, self._position, self._version = key, position, version
        self._live_limit = live_limit
        self._connected = False
        self._cursor = 0
        self._in_flight: dict[int, _Flight[R]] = {}
        self._live: dict[int, R] = {}  # by key, oldest first; a newer row for a key replaces the older
        # Acked, not yet marked in the journal (key -> version acked): a scan that finds such
        # a row still waiting there must not send it again (settled() ends this).
        self._settling: dict[int, str] = {}
        # Rows that cannot be encoded (key -> version): never sent again by this process,
        # over every connection; a new version of the row gets its chance.
        self._quarantined: dict[int, str] = {}
        self.published = 0  # rows handed out to publish, retransmissions included
        self.retransmissions = 0  # rows published again because their ack was overdue

    # -- the connection --------------------------------------------------------------------------
    def connected(self) -> None:
        """A new broker connection: nothing is assumed delivered, the scan starts from the oldest row."""
        self._connected = True
        self._reset()

    def disconnected(self) -> None:
        """The connection is gone: nothing is published until the next one."""
        self._connected = False
        self._reset()

    def _reset(self) -> None:
        self._in_flight.clear()
        self._live.clear()  # still in the journal: the scan from 0 finds them, in order
        self._settling.clear()
        self._cursor = 0

    def rescan(self, after: int) -> None:
        """Scan the journal again from positions above ``after`` (the centre asked for rows
        again, ``resend_from``): what is in flight stays; the scan skips nothing that waits —
        not even a row whose ack's mark is still on its way (the centre asks for it now)."""
        self._cursor = min(self._cursor, after)
        self._settling.clear()

    @property
    def is_connected(self) -> bool:
        return self._connected

    # -- what goes out -------------------------------------------------------------------------------
    def live(self, row: R) -> None:
        """A row was just journalled or changed: it goes out before the backlog."""
        if not self._connected:
            return  # the scan of the next connection finds it
        key = self._key(row)
        flight = self._in_flight.get(key)
        if flight is not None and flight.version == self._version(row):
            return
        self._live.pop(key, None)
        self._live[key] = row
        if len(self._live) > self._live_limit:
            dropped = self._live.pop(next(iter(self._live)))
            self._cursor = min(self._cursor, self._position(dropped) - 1)

    def room(self) -> int:
        """How many rows may be published now: 0 while disconnected."""
        if not self._connected:
            return 0
        return max(0, self.size - len(self._in_flight))

    def position(self, row: R) -> int:
        """Where ``row`` lies in the journal's scan order (what a scan continues after)."""
        return self._position(row)

    def next_scan_after(self) -> int:
        """Where the journal's scan continues: rows with a position above this."""
        return self._cursor

    def take(self, scanned: Iterable[R], now: float) -> list[R]:
        """The rows to publish now, in order: live rows first, then ``scanned`` (the journal's
        scan from :meth:`next_scan_after`, in position order), at most :meth:`room`.

        They are in flight from ``now``. Scanned rows beyond the room are left for the next
        scan (the cursor does not pass them).
        """
        out: list[R] = []
        budget = self.room()
        for key in list(self._live):
            if not budget:
                break
            row = self._live[key]
            if key in self._in_flight and self._in_flight[key].version != self._version(row):
                continue  # a newer version waits for the ack of the copy in flight
            del self._live[key]
            if self._send(row, now):
                out.append(row)
                budget -= 1
        for row in scanned:
            if not budget:
                break
            self._cursor = max(self._cursor, self._position(row))
            key = self._key(row)
            if key in self._in_flight and self._in_flight[key].version != self._version(row):
                self.live(row)  # changed since it went out: it goes after the ack of that copy
            elif self._send(row, now):
                out.append(row)
                budget -= 1
        return out

    def _send(self, row: R, now: float) -> bool:
        key, version = self._key(row), self._version(row)
        flight = self._in_flight.get(key)
        if flight is not None and flight.version == version:
            return False  # already in flight in this connection
        if self._settling.get(key) == version:
            return False  # acked: the journal's mark is on its way
        if self._quarantined.get(key) == version:
            return False  # cannot be encoded: it waits in the journal
        self._in_flight.pop(key, None)  # a changed row goes to the end: the dict stays in sending order
        self._in_flight[key] = _Flight(row, version, now)
        self.published += 1
        return True

    # -- what comes back -----------------------------------------------------------------------------
    def acked(self, first_seq: int, last_seq: int, *, held: Mapping[int, str] | None = None) -> dict[int, str]:
        """The centre acked ``first_seq`` … ``last_seq``: free the window.

        Returns the keys that were in flight in the range with the version published (for
        the journal's ``outbox_ack(…, sent=…)``); keys not in flight are not returned.
        ``held``: for keys of the range, the version the centre says it holds. A copy in
        flight of another version is not the one the ack is for (it is an older copy's,
        queued by the broker across a reconnect): it stays in flight, waiting for its own.
        """
        if last_seq - first_seq < len(self._in_flight):  # a run of a 500-row commit, or less
            keys: Iterable[int] = (k for k in range(first_seq, last_seq + 1) if k in self._in_flight)
        else:  # a wide range (a centre acking everything up to here): walk what is in flight
            keys = sorted(k for k in self._in_flight if first_seq <= k <= last_seq)
        if held:
            keys = [k for k in keys if held.get(k, self._in_flight[k].version) == self._in_flight[k].version]
        done = {key: self._in_flight.pop(key).version for key in list(keys)}
        self._settling.update(done)
        return done

    def version_in_flight(self, key: int) -> str | None:
        """The version of ``key``'s copy in flight, if one is."""
        flight = self._in_flight.get(key)
        return None if flight is None else flight.version

    def quarantine(self, row: R) -> None:
        """``row`` cannot be encoded for the centre: take it out of the window and never
        hand this version of it out again (it stays waiting in the journal)."""
        key = self._key(row)
        self._quarantined[key] = self._version(row)
        if self._in_flight.pop(key, None) is not None:
            self.published -= 1  # handed out, never published
        self._live.pop(key, None)

    @property
    def quarantined(self) -> list[int]:
        """The keys that cannot be encoded, ascending."""
        return sorted(self._quarantined)

    def settled(self, keys: Iterable[int]) -> None:
        """The journal has marked these acked keys (or failed to: then a later scan sends them again)."""
        for key in keys:
            self._settling.pop(key, None)

    def overdue(self, now: float, ack_timeout_s: float) -> list[R]:
        """In-flight rows with no ack after ``ack_timeout_s``: publish them again (the centre
        may have missed them while the lane stayed connected). Their clock restarts."""
        if ack_timeout_s <= 0:
            raise ValueError(f"ack_timeout_s is {ack_timeout_s!r}, expected more than 0 s")
        # The in-flight dict is in sending order (a row sent again moves to its end), so the
        # late rows are at its start: a window of thousands is not walked on every pump.
        late: list[int] = []
        for key, flight in self._in_flight.items():
            if now - flight.sent_at < ack_timeout_s:
                break
            late.append(key)
        late.sort()
        rows = []
        for key in late:
            flight = self._in_flight.pop(key)
            flight.sent_at = now
            self._in_flight[key] = flight
            rows.append(flight.row)
        self.retransmissions += len(late)
        self.published += len(late)
        return rows

    @property
    def in_flight(self) -> list[int]:
        """The keys published and not acked, ascending."""
        return sorted(self._in_flight)

    @property
    def live_waiting(self) -> int:
        return len(self._live)


def transaction_window(size: int) -> OutboxWindow[JournalEntry]:
    """The window of topic ``tx``: keyed and scanned by the row's seq; a row's state is its version."""
    return OutboxWindow(size, key=lambda e: e.seq, position=lambda e: e.seq, version=lambda e: str(e.state))


def reconcile_window(size: int) -> OutboxWindow[ReconcileRecord]:
    """The window of topic ``reconcile/result``: acked by the transaction's seq (the wire's
    ``seq``), scanned by the result's own seq, which is also its version."""
    return OutboxWindow(size, key=lambda r: r.tx_seq, position=lambda r: r.seq, version=lambda r: str(r.seq))


def backlog_level(count: int, capacity: int, previous: int | None = None) -> int | None:
    """The highest of :data:`BACKLOG_LEVELS` (percent) that ``count`` rows of ``capacity`` reach; None below 50 %.

    With the ``previous`` level, a level is kept until the fill is
    :data:`BACKLOG_HYSTERESIS_PCT` points below it (rising is immediate).
    """
    if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
        raise ValueError(f"the backlog capacity is {capacity!r}, expected 1 or more rows")
    if count < 0:
        raise ValueError(f"the backlog count is {count!r}, expected 0 or more rows")
    pct = 100.0 * count / capacity
    level = max((t for t in BACKLOG_LEVELS if pct >= t), default=None)
    if previous is not None and (level is None or level < previous) and pct > previous - BACKLOG_HYSTERESIS_PCT:
        # Falling, but not far enough below the previous level to leave it.
        return previous
    return level
