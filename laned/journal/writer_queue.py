"""The order the journal writer runs operations in (``laned.journal.writer``).

Operations run in submission order; grouped ones queued back to back share a transaction
(at most ``max_group``); an ungrouped one always runs on its own. A *background* operation
(the uplink's outbox scans, ack marks and counts) runs only when nothing else is queued:
it may be overtaken by operations submitted after it, never by another background one.
The stop that :meth:`JournalWriter.close` queues comes after everything submitted before
it, background operations included.

:meth:`WriterQueue.put` is called from any thread; everything else from the writer thread.
"""

from __future__ import annotations

import collections
import concurrent.futures
import queue
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


class WriterQueue:
    """The writer's queue (see the module docstring)."""

    def __init__(self, max_group: int) -> None:
        self._max_group = max_group
        self._queue: queue.SimpleQueue[Item[Any] | Stop] = queue.SimpleQueue()
        self._deferred: collections.deque[Item[Any]] = collections.deque()  # background, waiting
        self._held: Item[Any] | Stop | None = None  # taken while grouping, runs next

    def put(self, entry: Item[Any] | Stop) -> None:
        self._queue.put(entry)

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
                    return self._deferred.popleft()
            else:
                item = self._queue.get()
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
