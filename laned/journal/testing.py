"""Journal knobs for tests and benchmarks: slow commits and failing commits. Not for production.

A slow journal (every commit that writes takes 200 ms longer, on the committing thread)::

    Journal.open(path, lane_id, now=now, commit_delay_s=0.2)
    JournalWriter.open(path, lane_id, commit_delay_s=0.2)

A journal whose disk fills up and empties again::

    faults = CommitFaults()
    writer = JournalWriter.open(path, lane_id, commit_hook=faults)
    faults.fail_next(1)   # the next commit raises sqlite3.OperationalError("database or disk is full")
"""

from __future__ import annotations

import sqlite3
import threading
import time


class CommitFaults:
    """A ``commit_hook`` for :meth:`laned.journal.Journal.open`: delay, count and fail commits.

    Called on the committing thread just before ``COMMIT``, inside the transaction: an
    error raised here rolls the transaction back exactly as a failing ``COMMIT`` would.
    """

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.calls = 0  # commits attempted (that wrote something)
        self._lock = threading.Lock()
        self._fail = 0
        self._error: Exception | None = None

    def fail_next(self, n: int = 1, error: Exception | None = None) -> None:
        """Make the next ``n`` commits raise ``error`` (default: the disk is full)."""
        with self._lock:
            self._fail = n
            self._error = error

    def __call__(self, what: str) -> None:
        with self._lock:
            self.calls += 1
            failing = self._fail > 0
            if failing:
                self._fail -= 1
            error = self._error
        if self.delay_s > 0:
            time.sleep(self.delay_s)
        if failing:
            raise error if error is not None else sqlite3.OperationalError("database or disk is full")
