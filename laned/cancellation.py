"""A task's pending cancellation, honoured where Python 3.11 can lose it: the uplink's and
the reference centre's connection loops, which must stop when asked, not reconnect forever."""

from __future__ import annotations

import asyncio


def stop_if_cancelled(err: BaseException | None = None) -> None:
    """Raise CancelledError if this task is being cancelled. Python 3.11 can lose a
    cancellation: TaskGroup raises a child's error instead of it, and asyncio.wait_for
    (which aiomqtt awaits every PUBACK with) returns a result that came at the same moment.
    The count stays, so each loop looks at it: a stopping daemon must not reconnect forever.
    Only in tasks whose own TaskGroups end them when a child fails (the count is raised
    then too, see UplinkService._connect_loop)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from err
