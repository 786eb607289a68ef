"""The journal's SQLite file and its transaction discipline, apart from what the rows mean.

* the file: created ``0600`` (card numbers and plates in full), an exclusive ``flock`` on
  ``<file>.lock`` (one lane, one process), WAL mode, ``synchronous=FULL`` (the WAL is
  fsynced at every commit but a ``batch(durable=False)``'s), foreign keys on;
* writes: one ``BEGIN IMMEDIATE … COMMIT`` per write, or one per :meth:`batch` with a
  savepoint per write inside; SQLite errors become :class:`JournalStorageError` (the disk)
  or :class:`JournalError` (the data);
* commit accounting for the health checks (``commits``, ``last_commit_s``,
  ``commit_durations``) and the test/bench knobs ``commit_delay_s`` and ``commit_hook``.

The connection keeps SQLite's ``check_same_thread``: it is used on the thread that opened it.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Self

from laned.journal.errors import JournalError, JournalStorageError

COMMIT_HISTORY = 256  # commit durations kept for the health figures
# SQLite errors about the statement or the data (a constraint, a misuse), not the disk.
DATA_ERRORS = (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.DataError, sqlite3.NotSupportedError,
               sqlite3.InterfaceError)


class JournalConnection:
    """One SQLite connection to a journal file, with its lock, transactions and commit figures."""

    def __init__(self, con: sqlite3.Connection, path: Path, lock_fd: int) -> None:
        self._con = con
        self.path = path
        self._lock_fd: int | None = lock_fd
        self._depth = 0  # nesting of _writing: 0 outside a transaction, 1 in one, >1 in savepoints
        # Test/bench knobs, both run on the committing thread just before a COMMIT that wrote.
        self.commit_delay_s = 0.0
        self.commit_hook: Callable[[str], None] | None = None
        # Commits that wrote something, and how long each took (hook and delay included).
        self.commits = 0
        self.last_commit_s: float | None = None
        self.commit_durations: collections.deque[float] = collections.deque(maxlen=COMMIT_HISTORY)

    @classmethod
    def _connect(cls, p: Path) -> tuple[sqlite3.Connection, int]:
        """Lock the file for this process, create it private if new, connect (autocommit mode)."""
        lock_fd = cls._lock(p)
        try:
            # Card numbers and plates in full: the file (and the -wal/-shm SQLite derives from
            # it) is for laned alone.
            os.close(os.open(p, os.O_WRONLY | os.O_CREAT, 0o600))
            con = sqlite3.connect(p, isolation_level=None, timeout=5.0)
        except (OSError, sqlite3.Error) as err:
            os.close(lock_fd)
            raise JournalStorageError(f"journal {p}: cannot open: {err}") from err
        return con, lock_fd

    @staticmethod
    def _lock(p: Path) -> int:
        lock_path = p.with_name(p.name + ".lock")
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as err:
            raise JournalError(f"journal {p}: cannot create lock file {lock_path}: {err.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise JournalError(f"journal {p} is in use by another laned process (lock {lock_path}); "
                               "one lane, one process") from None
        return fd

    def _configure(self) -> None:
        with self._reading("setting up"):
            mode = self._con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise JournalError(f"journal {self.path}: the file system does not support WAL mode "
                                   f"(SQLite chose {mode!r}); put the journal on a local disk")
            self._con.execute("PRAGMA synchronous=FULL")
            self._con.execute("PRAGMA foreign_keys=ON")

    def close(self) -> None:
        if self._lock_fd is None:
            return
        try:
            self._con.close()
        finally:
            os.close(self._lock_fd)
            self._lock_fd = None

    @property
    def in_transaction(self) -> bool:
        """A transaction is open on the connection (inside :meth:`batch` or a write)."""
        return self._lock_fd is not None and self._con.in_transaction

    @contextlib.contextmanager
    def batch(self, what: str = "writing a batch", *, durable: bool = True) -> Iterator[Self]:
        """Several writes in one transaction: one commit, one fsync, durable when the block ends.

        ``durable=False``: committed without an fsync (``synchronous=NORMAL`` for this one
        transaction; WAL mode keeps the file consistent), for writes whose loss in a power
        cut costs nothing but repeating work — the uplink's delivery marks: a row whose mark
        is lost goes up once more and the centre de-duplicates it. The next durable commit
        (a vehicle's intent) fsyncs the WAL, this transaction with it. A vehicle's intent
        queued behind such a commit no longer waits for a second fsync (5–30 ms on eMMC).
        Inside another batch it is part of that batch, durable or not as the outer one.

        Every write method called inside runs in its own savepoint: one that raises (a
        refused transition, a bad value) is undone alone and the block may carry on; an
        exception that leaves the block undoes all of it. Batches nest (the inner one is
        a savepoint). If SQLite itself abandons the transaction after an error (disk full,
        I/O error), every later write in the block and the block's end raise
        :class:`JournalStorageError`: nothing of the block is on disk then.
        """
        with self._writing(what, durable=durable):
            yield self

    @contextlib.contextmanager
    def _writing(self, what: str, *, durable: bool = True) -> Iterator[sqlite3.Connection]:
        """One write transaction, durable when the outermost block ends without an exception.

        Nested inside another (:meth:`batch`), it is a savepoint of that transaction.
        """
        if self._lock_fd is None:
            raise JournalError(f"journal {self.path}: {what}: the journal is closed")
        if self._depth:
            with self._savepoint(what) as con:
                yield con
            return
        con = self._con
        try:
            if not durable:  # outside a transaction: SQLite takes the setting at the next commit
                con.execute("PRAGMA synchronous=NORMAL")
            con.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as err:
            self._restore_sync(durable, what)
            raise self._failed(what, err) from err
        self._depth = 1
        try:
            changes = con.total_changes
            yield con
            if not con.in_transaction:
                raise JournalStorageError(f"journal {self.path}: {what} failed: SQLite rolled the transaction "
                                          "back after an earlier error; nothing of it was written")
            if con.total_changes == changes:
                con.execute("COMMIT")  # nothing written: nothing to fsync, nothing to count
            else:
                self._commit(con, what, durable=durable)
        except BaseException as err:
            with contextlib.suppress(sqlite3.Error):
                if con.in_transaction:
                    con.execute("ROLLBACK")
            if isinstance(err, sqlite3.Error):
                raise self._failed(what, err) from err
            raise
        finally:
            self._depth = 0
            self._restore_sync(durable, what)

    def _restore_sync(self, durable: bool, what: str) -> None:
        """Every later commit fsyncs again; if that cannot be set, no write may follow."""
        if durable:
            return
        try:
            self._con.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error as err:
            raise JournalStorageError(f"journal {self.path}: after {what}: could not set synchronous=FULL "
                                      f"again: {err}") from err

    def _failed(self, what: str, err: sqlite3.Error) -> JournalError:
        """A SQLite error as a JournalError: a storage failure unless the data was at fault."""
        message = f"journal {self.path}: {what} failed: {err}"
        if isinstance(err, DATA_ERRORS):
            return JournalError(message)
        return JournalStorageError(message)

    def _commit(self, con: sqlite3.Connection, what: str, *, durable: bool = True) -> None:
        started = time.perf_counter()
        if self.commit_delay_s > 0 and durable:  # the knob stands for a slow fsync: none here
            time.sleep(self.commit_delay_s)
        if self.commit_hook is not None:
            self.commit_hook(what)
        con.execute("COMMIT")
        took = time.perf_counter() - started
        self.commits += 1
        self.last_commit_s = took
        self.commit_durations.append(took)

    @contextlib.contextmanager
    def _savepoint(self, what: str) -> Iterator[sqlite3.Connection]:
        con = self._con
        if not con.in_transaction:  # SQLite gave up the batch's transaction: do not autocommit
            raise JournalStorageError(f"journal {self.path}: {what} failed: SQLite rolled the batch's transaction "
                                      "back after an earlier error; nothing of it was written")
        name = f"laned_sp{self._depth}"
        try:
            con.execute(f"SAVEPOINT {name}")
        except sqlite3.Error as err:
            raise self._failed(what, err) from err
        self._depth += 1
        try:
            yield con
        except BaseException as err:
            with contextlib.suppress(sqlite3.Error):
                if con.in_transaction:
                    con.execute(f"ROLLBACK TO {name}")
                    con.execute(f"RELEASE {name}")
            if isinstance(err, sqlite3.Error):
                raise self._failed(what, err) from err
            raise
        else:
            try:
                con.execute(f"RELEASE {name}")
            except sqlite3.Error as err:
                raise self._failed(what, err) from err
        finally:
            self._depth -= 1

    @contextlib.contextmanager
    def _reading(self, what: str) -> Iterator[sqlite3.Connection]:
        if self._lock_fd is None:
            raise JournalError(f"journal {self.path}: {what}: the journal is closed")
        try:
            yield self._con
        except sqlite3.Error as err:
            raise self._failed(what, err) from err
