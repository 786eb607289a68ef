"""What the journal writer tells the health checks: writable or not, commit times, alive.

The writer thread computes a new immutable :class:`CommitStats` after every operation and
swaps it in with one assignment; the loop thread reads whichever is current. No lock.
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass

from laned.journal.connection import DATA_ERRORS, JournalConnection
from laned.journal.errors import JournalError, JournalStorageError


@dataclass(frozen=True)
class WriterHealth:
    """The journal writer's health, for the health checks and ``laned status``."""

    alive: bool  # the thread runs and is not stuck in one operation for longer than stall_s
    writable: bool  # False after a write failed on SQLite or the disk, until a later write commits
    queue_depth: int  # submitted, not finished
    commits: int  # commits that wrote something, since the journal was opened (start-up recovery included)
    last_commit_s: float | None  # how long the last commit took (the fsync)
    max_commit_s: float | None  # the slowest commit after number ``since_commit`` (of the last COMMIT_HISTORY)
    p99_commit_s: float | None  # of the last COMMIT_HISTORY commits
    last_error: str | None  # the storage failure that made it not writable; None while writable
    errors: int  # storage failures since start
    busy_s: float | None  # how long the current operation has been running; None when idle


@dataclass(frozen=True)
class CommitStats:
    """The writer's figures after its latest operation (immutable: published by swapping)."""

    writable: bool = True
    commits: int = 0
    last_commit_s: float | None = None
    max_commit_s: float | None = None
    p99_commit_s: float | None = None
    last_error: str | None = None
    errors: int = 0
    durations: tuple[float, ...] = ()  # the last COMMIT_HISTORY commit durations, oldest first

    def after(self, journal: JournalConnection, err: BaseException | None, commits_before: int) -> CommitStats:
        """The figures after an operation that failed with ``err`` (or not) and may have committed.

        A storage failure makes the journal not writable; a commit that went through makes
        it writable again. A refused transition or bad data changes neither.
        """
        writable, last_error, errors = self.writable, self.last_error, self.errors
        if err is not None and storage_failure(err):
            writable, last_error, errors = False, str(err), errors + 1
        elif journal.commits > commits_before:
            writable, last_error = True, None
        if journal.commits == self.commits and self.durations:
            durations, slowest, p99 = self.durations, self.max_commit_s, self.p99_commit_s
        else:
            durations = tuple(journal.commit_durations)
            ranked = sorted(durations)
            slowest = ranked[-1] if ranked else None
            p99 = ranked[math.ceil(0.99 * len(ranked)) - 1] if ranked else None
        return CommitStats(writable=writable, commits=journal.commits, last_commit_s=journal.last_commit_s,
                           max_commit_s=slowest, p99_commit_s=p99, last_error=last_error, errors=errors,
                           durations=durations)

    def slowest_since(self, since_commit: int) -> float | None:
        """The slowest commit numbered after ``since_commit``, as far back as ``durations`` reach."""
        newer = min(max(self.commits - since_commit, 0), len(self.durations))
        window = self.durations[len(self.durations) - newer:]
        return max(window) if window else None


def storage_failure(err: BaseException) -> bool:
    """A failure of SQLite or the disk, as opposed to one of the data or the transition."""
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (JournalStorageError, OSError)):
            return True
        if isinstance(e, JournalError):
            return False
        if isinstance(e, sqlite3.Error):
            return not isinstance(e, DATA_ERRORS)
        e = e.__cause__ or e.__context__
    return False
