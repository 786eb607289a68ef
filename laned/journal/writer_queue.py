"""The order the journal writer runs operations in (``laned.journal.writer``).

Operations run in submission order; grouped ones queued back to back share a transaction
(at most ``max_group``); an ungrouped one always runs on its own. A *background* operation
(the uplink's outbox scans, ack marks and counts) runs only when nothing else is queued:
it may be overtaken by operations submitted after it, never by another background one.
The stop that :meth:`JournalWriter.close` queues comes after everything submitted before
it, background operations included.

A background operation also waits while the lane says a vehicle's transaction is under way
(:meth:`WriterQueue.hold_background`), for at most ``HOLD_MAX_S`` at a time: one started
between the vehicle's B2 and its B4 runs on the writer when the intent arrives, and the C6
waits for it (measured in the uplink bench: of the intents delayed by an uplink operation,
most were delayed by one started after the B2). Deciding here, when the writer picks its
next operation, closes the gap the uplink's own ``give_way`` leaves: it looks before it
submits, and the operation may start later.

:meth:`WriterQueue.put` is called from any thread; everything else from the writer thread.
"""

from __future__ import annotations

import collections
import concurrent.futures
import queue
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Item(Generic[T]):
    """One submitted operation and the future that gets its result."""

    __slots__ = ("op", "group", "background", "future")

    def __init__(self, op: Callable[[Any], T], group: bool, future: concurrent.futures.Future[T], *,
                 background: bool = False) -> None:
        self.op = op
        self.group = group and not background  # a background operation commits on its own
        self.background = background
        self.future = future


class Stop:
    """Queued by close(): the writer stops once everything before it has run."""


STOP = Stop()

# A vehicle's transaction holds background operations back for at most this long at a time,
# so that a lane with a queue of vehicles still drains its backlog. The uplink's give_way uses it too.
HOLD_MAX_S = 0.2
# The lane nudges the writer when its vehicle has gone (:meth:`WriterQueue.nudge`); without
# a nudge it looks again this often, so a lost one only delays the uplink a little.
HOLD_POLL_S = 0.02


class BoundedHold:
    """Work held back while the lane's vehicle is under way, for at most ``max_s`` at a time:
    the writer's background operations here, the uplink's publishing in its ``give_way``."""

    def __init__(self) -> None:
        self._since: float | None = None

    def wait(self, busy: bool, now: float, max_s: float, poll_s: float) -> float:
        """How long to wait before looking again; 0: go ahead now (the next look may hold again)."""
        if not busy:
            self._since = None
            return 0.0
        if self._since is None:
            self._since = now
        elif now - self._since >= max_s:
            self._since = None
            return 0.0
        return min(poll_s, max_s - (now - self._since))


class Nudge:
    """Queued by :meth:`WriterQueue.nudge`: look again whether background work may run."""


NUDGE = Nudge()


class WriterQueue:
    """The writer's queue (see the module docstring)."""

    def __init__(self, max_group: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_group = max_group
        self._clock = clock
        self._queue: queue.SimpleQueue[Item[Any] | Stop | Nudge] = queue.SimpleQueue()
        self._deferred: collections.deque[Item[Any]] = collections.deque()  # background, waiting
        self._held: Item[Any] | Stop | None = None  # taken while grouping, runs next
        self._vehicle_busy: Callable[[], bool] = lambda: False
        self._hold = BoundedHold()

    def hold_background(self, vehicle_busy: Callable[[], bool]) -> None:
        """Hold background operations back while ``vehicle_busy()`` (called on the writer
        thread: it must only read a flag), at most HOLD_MAX_S at a time."""
        self._vehicle_busy = vehicle_busy

    def put(self, entry: Item[Any] | Stop) -> None:
        self._queue.put(entry)

    def nudge(self) -> None:
        """The lane's vehicle has gone: background work held back may run now (any thread)."""
        self._queue.put(NUDGE)

    def next_batch(self) -> list[Item[Any]] | None:
        """Block until there is work: the operations to run next, in one transaction if
        several (a group); None once the stop is reached."""
        item = self._take()
        if isinstance(item, Stop):
            return None
        batch = [item]
        while item.group and len(batch) < self._max_group:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(nxt, Nudge):
                continue
            if isinstance(nxt, Item) and nxt.background:
                self._deferred.append(nxt)
                continue
            if isinstance(nxt, Stop) or not nxt.group:
                self._held = nxt  # runs next, on its own: a group never takes in an ungrouped op
                break
            batch.append(nxt)
        return batch

    def _take(self) -> Item[Any] | Stop:
        if self._held is not None:
            held, self._held = self._held, None
            if not isinstance(held, Stop) or not self._deferred:
                return held
            self._queue.put(held)  # the stop: after the background operations still waiting
        while True:
            if self._deferred:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    wait = self._hold.wait(self._vehicle_busy(), self._clock(), HOLD_MAX_S, HOLD_POLL_S)
                    if wait <= 0:
                        return self._deferred.popleft()
                    try:
                        item = self._queue.get(timeout=wait)
                    except queue.Empty:
                        continue
            else:
                item = self._queue.get()
            if isinstance(item, Nudge):
                continue  # look again
            if isinstance(item, Item) and item.background:
                self._deferred.append(item)
            elif isinstance(item, Stop) and self._deferred:
                self._queue.put(item)  # closing finishes everything submitted: the background first
                return self._deferred.popleft()
            else:
                return item

    def pending(self) -> list[Item[Any]]:
        """Take every operation not run yet (the writer died: each gets its failure)."""
        items: list[Item[Any]] = [self._held] if isinstance(self._held, Item) else []
        self._held = None
        items += self._deferred
        self._deferred.clear()
        while True:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                return items
            if isinstance(nxt, Item):
                items.append(nxt)
