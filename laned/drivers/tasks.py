"""Stopping a driver's background tasks, and watching them while they run."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

log = logging.getLogger("laned")


class TaskDied(Exception):
    """A long-running task of a driver ended on its own (a bug): laned must restart."""


async def cancel_and_wait(*tasks: asyncio.Task[object] | None) -> None:
    """Cancel every task given (None and finished ones are skipped) and wait until each
    has unwound, so a driver's close() returns with nothing of it still running.

    The tasks' own cancellation is expected and absorbed; a cancellation of the task
    *calling* this (laned shutting down around it) is passed on, never swallowed."""
    running = [t for t in tasks if t is not None and not t.done()]
    for task in running:
        task.cancel()
    for task in running:
        try:
            await task
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise


async def watch(owner: str, tasks: Iterable[asyncio.Task[object] | None]) -> None:
    """Wait on a driver's background tasks and fail loudly if one ends: with its own
    exception if it raised one, with :class:`TaskDied` if it returned. A driver's tasks
    run until the driver is closed, so any end while watched is unexpected.

    Cancelling the watcher leaves the tasks running (the driver's close() stops them)."""
    running = {t for t in tasks if t is not None}
    if not running:
        return
    done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
    task = done.pop()
    if task.cancelled():
        raise TaskDied(f"{owner}: task {task.get_name()} was cancelled while the driver was open")
    err = task.exception()
    if err is not None:
        raise err
    raise TaskDied(f"{owner}: task {task.get_name()} ended while the driver was open")
