"""One bounded asyncio queue per subscriber, for a driver's ``async for`` streams.

A driver publishes from the event-loop thread only (gpiozero and udev threads hand over
with ``call_soon_threadsafe`` or ``add_reader`` first). A subscriber that stops reading
must not grow memory without bound while an input chatters, so a full queue drops its
*oldest* item: the newest one says what the device is doing now.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Iterable
from typing import Final, Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class _End:
    """Queued when the driver closes, so the subscriber's ``async for`` ends."""


_END: Final = _End()


class Subscription(Generic[T]):
    def __init__(self, device: str, maxsize: int) -> None:
        self._device = device
        self._queue: asyncio.Queue[T | _End] = asyncio.Queue(maxsize)
        self._dropped = 0
        self._ended = False

    def __aiter__(self) -> Subscription[T]:
        return self

    async def __anext__(self) -> T:
        if self._ended and self._queue.empty():
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, _End):
            self._ended = True
            raise StopAsyncIteration
        return item

    def push(self, item: T | _End) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 1000 == 0:
                log.warning(
                    "%s: a reader is not keeping up; dropped %d old items (the newest is kept)",
                    self._device, self._dropped,
                )
        self._queue.put_nowait(item)


class Fanout(Generic[T]):
    """Every live subscription gets every published item.

    Subscriptions are held weakly: a consumer that drops its iterator unsubscribes.
    """

    def __init__(self, device: str, maxsize: int) -> None:
        self._device = device
        self._maxsize = maxsize
        self._subscriptions: weakref.WeakSet[Subscription[T]] = weakref.WeakSet()

    def subscribe(self, initial: Iterable[T] = ()) -> Subscription[T]:
        sub: Subscription[T] = Subscription(self._device, self._maxsize)
        for item in initial:
            sub.push(item)
        self._subscriptions.add(sub)
        return sub

    def publish(self, item: T) -> None:
        for sub in list(self._subscriptions):
            sub.push(item)

    def close(self) -> None:
        for sub in list(self._subscriptions):
            sub.push(_END)
