"""The journal writer: every journal commit runs on one dedicated thread, never on the event loop.

A commit is an fsync (``synchronous=FULL``); on a lane PC's eMMC that is 5–30 ms, more as
the flash wears. On the event loop that would stall every frame answer and let the safety
loop's samples go stale. So the daemon keeps the :class:`~laned.journal.store.Journal` on
a thread of its own and hands it work::

    writer = JournalWriter.open(path, lane_id).start()        # opens and recovers on the thread
    seq = await writer.submit_async(lambda mj: mj.record_intent(record, now))
    writer.submit(lambda mj: mj.record_refusal(record, now), group=True)
    writer.close()                                             # drains, then closes the file

* Operations run one at a time, in submission order, on the thread named
  ``"<name>-writer"``. Each gets the :class:`~laned.journal.machine_port.MachineJournal`
  (``mj.journal`` is the store). Its result or exception goes to the returned future.
* ``group=True`` (refusals, events, unknown marks: nothing waits on them) lets the writer
  put the grouped operations that are queued back to back into one transaction: one
  fsync for a burst. Each runs in its own savepoint, so one that fails is undone alone
  and gets its own exception; if the group's transaction fails as a whole (the commit,
  the disk), each operation is retried on its own. An operation submitted without
  ``group`` (an intent, a charge completion) always commits on its own, the moment it is
  its turn: a group never swallows it, and no operation overtakes another — except:
* ``background=True`` (the uplink's outbox scans, acks and counts; the queue is
  :mod:`laned.journal.writer_queue`) runs only when no other
  operation is queued: a vehicle's intent never waits behind the uplink's work, only
  behind the one background operation already running (a few ms at most); and none
  starts while the lane has a vehicle under way (:meth:`JournalWriter.hold_background`,
  at most 0.2 s at a time). Background
  operations keep their order among themselves and are never grouped; one submitted
  before a lane operation may run after it (the uplink reads whatever is committed when
  its turn comes, and marks rows by the state it sent).
* Nothing is written on the caller's thread. The connection is opened *by the writer
  thread* (the constructor takes a factory, not a Journal) and SQLite's
  ``check_same_thread`` stays on: a stray use of the store from the loop raises at once
  instead of racing the writer.
* Reads go through :meth:`JournalWriter.submit` too (``group=False``), on the same
  connection: they see every earlier write and never block the loop.
* If the thread dies of a bug (an exception that is not an ``Exception``, or one in the
  writer itself), every pending and later submission fails at once with
  :class:`JournalWriterDead` and :attr:`JournalWriter.alive` turns False: the daemon must
  stop. A failing SQLite write is not that: it fails its own future, marks the journal
  not :attr:`~JournalWriter.writable` until a later write commits, and the writer goes on.
* Health (:meth:`JournalWriter.health` and the properties) is published by the writer
  thread as immutable snapshots: reading it from the loop takes no lock that the writer
  holds across I/O.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from laned.journal.errors import JournalError, JournalWriterClosed, JournalWriterDead
from laned.journal.machine_port import MachineJournal
from laned.journal.records import Recovery
from laned.journal.store import Journal
from laned.journal.writer_health import CommitStats, WriterHealth
from laned.journal.writer_queue import STOP, Item, WriterQueue

log = logging.getLogger("laned.journal")

T = TypeVar("T")
Op = Callable[[MachineJournal], T]

MAX_GROUP = 64  # grouped operations per transaction
STALL_S = 10.0  # one operation running longer than this: the writer counts as wedged


class _GroupLost(Exception):
    """SQLite abandoned the group's transaction after an operation's error."""


def _relay(source: concurrent.futures.Future[T], target: asyncio.Future[T]) -> None:
    if target.cancelled():
        return
    err = source.exception()
    if err is not None:
        target.set_exception(err)
    else:
        target.set_result(source.result())


class JournalWriter:
    """Owns the journal on one thread and runs submitted operations there, in order.

    ``journal_factory`` opens the :class:`Journal` (``lambda: Journal.open(...)``); it is
    called on the writer thread by :meth:`start`. :meth:`open` builds one from a path.
    """

    def __init__(self, journal_factory: Callable[[], Journal], *, name: str = "journal",
                 clock: Callable[[], float] = time.monotonic, max_group: int = MAX_GROUP,
                 stall_s: float = STALL_S) -> None:
        if isinstance(journal_factory, Journal) or not callable(journal_factory):
            raise TypeError("JournalWriter takes a factory that opens the journal (lambda: Journal.open(...)), "
                            "so that the connection is made on the writer thread")
        if max_group < 1:
            raise ValueError(f"max_group is {max_group}, expected at least 1")
        self.name = name
        self._factory = journal_factory
        self._clock = clock
        self._max_group = max_group
        self._stall_s = stall_s
        self._queue = WriterQueue(max_group, clock=clock)
        self._lock = threading.Lock()  # guards _state and the queue against a dying writer; never held over I/O
        self._state = "new"  # new → running → closing → closed; or → dead
        self._thread: threading.Thread | None = None
        self._opened = threading.Event()
        self._open_error: BaseException | None = None
        self._death: BaseException | None = None
        self._death_callbacks: list[Callable[[BaseException], None]] = []
        self._submitted = 0  # under _lock
        self._finished = 0  # by the writer thread only
        self._busy_since: float | None = None
        self._stats = CommitStats()
        self._current: list[Item[Any]] = []  # taken off the queue, not finished (writer thread)
        self._journal: Journal | None = None
        self._port: MachineJournal | None = None
        # Known once start() returned:
        self.recovery: Recovery | None = None
        self.lane_id: str | None = None
        self.path: Path | None = None

    @classmethod
    def open(cls, path: str | os.PathLike[str], lane_id: str, *, now: dt.datetime | None = None,
             commit_delay_s: float = 0.0, commit_hook: Callable[[str], None] | None = None,
             **kwargs: Any) -> JournalWriter:
        """A writer for :meth:`Journal.open` of ``path`` (not started yet).

        ``now`` stamps the rows start-up recovery changes (default: the wall clock when the
        thread opens it). ``commit_delay_s`` / ``commit_hook``: test and benchmark knobs,
        see :meth:`Journal.open`. Other keywords go to the constructor.
        """
        def factory() -> Journal:
            return Journal.open(path, lane_id, now=now or dt.datetime.now(), commit_delay_s=commit_delay_s,
                                commit_hook=commit_hook)
        return cls(factory, **kwargs)

    # -- lifetime --------------------------------------------------------------------------
    def start(self) -> JournalWriter:
        """Start the thread and wait until it has opened the journal (recovery included).

        Raises what opening raised (a :class:`JournalError` naming the file). Blocks for as
        long as opening takes: from a running loop use :meth:`astart`.
        """
        with self._lock:
            if self._state != "new":
                raise JournalError(f"journal writer {self.name} was already started")
            self._state = "starting"
            self._thread = threading.Thread(target=self._run, name=f"{self.name}-writer", daemon=True)
        self._thread.start()
        self._opened.wait()
        if self._open_error is not None:
            raise self._open_error
        return self

    async def astart(self) -> JournalWriter:
        """:meth:`start` without blocking the loop."""
        return await asyncio.to_thread(self.start)

    def close(self, timeout: float | None = None) -> None:
        """Finish every operation submitted so far, stop the thread, close the journal. Idempotent.

        Later submissions fail with :class:`JournalWriterClosed`. Blocks while draining: from
        a running loop use :meth:`aclose`. Raises :class:`JournalError` if the thread is still
        busy after ``timeout`` seconds.
        """
        with self._lock:
            if self._state in ("starting", "running"):
                self._state = "closing"
                self._queue.put(STOP)
            elif self._state == "new":
                self._state = "closed"
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                raise JournalError(f"journal writer {self.name}: still busy after {timeout} s "
                                   f"({self.queue_depth} operations pending)")
        with self._lock:
            if self._state == "closing":
                self._state = "closed"

    async def aclose(self, timeout: float | None = None) -> None:
        """:meth:`close` without blocking the loop."""
        await asyncio.to_thread(self.close, timeout)

    def __enter__(self) -> JournalWriter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> JournalWriter:
        return await self.astart()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def on_death(self, callback: Callable[[BaseException], None]) -> None:
        """Call ``callback(cause)`` if the writer thread dies (on that thread; at once if it is dead).

        From the loop: ``writer.on_death(lambda e: loop.call_soon_threadsafe(stop.set))``.
        """
        with self._lock:
            death = self._death
            if death is None:
                self._death_callbacks.append(callback)
        if death is not None:
            callback(death)

    def hold_background(self, vehicle_busy: Callable[[], bool]) -> None:
        """Start no background operation while ``vehicle_busy()`` (the lane's vehicle between
        B2 and the end of its transaction), for at most ``writer_queue.HOLD_MAX_S`` at a
        time. ``vehicle_busy`` is called on the writer thread: it must only read a flag."""
        self._queue.hold_background(vehicle_busy)

    def vehicle_gone(self) -> None:
        """The lane's vehicle has gone: what :meth:`hold_background` holds may run now (any thread)."""
        self._queue.nudge()

    # -- submitting --------------------------------------------------------------------------
    def submit(self, op: Op[T], *, group: bool = False, background: bool = False) -> concurrent.futures.Future[T]:
        """Run ``op(machine_journal)`` on the writer thread after everything submitted before it
        (``background``: when nothing else waits, see the module docstring).

        Returns at once, from any thread. The future gets ``op``'s result or exception once
        its transaction has committed (for a grouped op: once its group has). It cannot be
        cancelled: a submitted write is written. On a writer that is not running the future
        is already failed: :class:`JournalWriterDead` (``__cause__``: what killed it) or
        :class:`JournalWriterClosed` (not started, closing, closed); ``submit`` itself never
        raises for that.
        """
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        future.set_running_or_notify_cancel()  # from here on cancel() is refused
        with self._lock:
            if self._state in ("starting", "running"):
                self._submitted += 1
                self._queue.put(Item(op, group, future, background=background))
                return future
            error = self._refusal()
        future.set_exception(error)
        return future

    def submit_async(self, op: Op[T], *, group: bool = False, background: bool = False) -> asyncio.Future[T]:
        """:meth:`submit`, answered on the running event loop (call it from the loop thread).

        The asyncio future is resolved on the loop (``call_soon_threadsafe``), so its done
        callbacks run on the loop thread, in the order the operations finished, which is
        submission order (a background operation's aside). Cancelling it only stops the
        caller waiting: the write still happens.
        """
        loop = asyncio.get_running_loop()
        target: asyncio.Future[T] = loop.create_future()

        def done(source: concurrent.futures.Future[T]) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(_relay, source, target)

        self.submit(op, group=group, background=background).add_done_callback(done)
        return target

    def call(self, op: Op[T], *, group: bool = False, timeout: float | None = None) -> T:
        """:meth:`submit` and wait for the result, blocking (start-up code, tools, tests; not the loop)."""
        return self.submit(op, group=group).result(timeout)

    def _refusal(self) -> JournalError:
        if self._state == "dead":
            error: JournalError = JournalWriterDead(f"journal writer {self.name} is dead ({self._death!r}); "
                                                    "nothing more is written")
            error.__cause__ = self._death
            return error
        if self._state == "new":
            return JournalWriterClosed(f"journal writer {self.name} is not started")
        return JournalWriterClosed(f"journal writer {self.name} is closed")

    # -- health ------------------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        thread = self._thread
        if thread is None or not thread.is_alive() or self._state not in ("starting", "running", "closing"):
            return False
        since = self._busy_since
        return since is None or self._clock() - since < self._stall_s

    @property
    def dead(self) -> bool:
        """The thread died of a bug: see :attr:`death`. (A clean close is not death.)"""
        return self._death is not None

    @property
    def death(self) -> BaseException | None:
        return self._death

    @property
    def writable(self) -> bool:
        return self._stats.writable

    @property
    def queue_depth(self) -> int:
        return max(0, self._submitted - self._finished)

    @property
    def commits(self) -> int:
        return self._stats.commits

    @property
    def last_commit_s(self) -> float | None:
        return self._stats.last_commit_s

    @property
    def max_commit_s(self) -> float | None:
        return self._stats.max_commit_s

    @property
    def p99_commit_s(self) -> float | None:
        return self._stats.p99_commit_s

    @property
    def last_error(self) -> str | None:
        return self._stats.last_error

    def health(self, since_commit: int = 0) -> WriterHealth:
        """One consistent snapshot. ``max_commit_s`` is the slowest commit numbered after
        ``since_commit``: pass the previous snapshot's ``commits`` to get the slowest since
        then (as far back as the last COMMIT_HISTORY commits reach); 0, the slowest of those."""
        s = self._stats
        since = self._busy_since
        return WriterHealth(alive=self.alive, writable=s.writable, queue_depth=self.queue_depth, commits=s.commits,
                            last_commit_s=s.last_commit_s, max_commit_s=s.slowest_since(since_commit),
                            p99_commit_s=s.p99_commit_s, last_error=s.last_error, errors=s.errors,
                            busy_s=None if since is None else max(0.0, self._clock() - since))

    # -- the thread --------------------------------------------------------------------------
    def _run(self) -> None:
        self._busy_since = self._clock()
        try:
            journal = self._factory()
        except BaseException as err:
            self._busy_since = None
            self._open_error = err
            self._die(err, opening=True)
            self._opened.set()
            return
        self._busy_since = None
        self._journal = journal
        self._port = MachineJournal(journal)
        self.recovery, self.lane_id, self.path = journal.recovery, journal.lane_id, journal.path
        self._note(None, journal.commits)
        with self._lock:
            if self._state == "starting":
                self._state = "running"
        self._opened.set()
        try:
            self._serve()
        except BaseException as err:
            self._die(err)
        finally:
            try:
                journal.close()
            except Exception as err:  # pragma: no cover - closing SQLite hardly fails
                log.error("journal %s: closing failed: %s", journal.path, err)

    def _serve(self) -> None:
        while True:
            batch = self._queue.next_batch()
            if batch is None:
                return
            self._current = batch
            if len(batch) == 1:
                self._run_one(batch[0])
            else:
                self._run_group(batch)
            self._current = []

    def _run_one(self, item: Item[Any]) -> None:
        assert self._journal is not None and self._port is not None
        before = self._journal.commits
        self._busy_since = self._clock()
        try:
            result = item.op(self._port)
        except Exception as err:
            self._busy_since = None
            self._note(err, before)
            self._finish(item, False, err)
        else:
            self._busy_since = None
            self._note(None, before)
            self._finish(item, True, result)

    def _run_group(self, batch: list[Item[Any]]) -> None:
        journal, port = self._journal, self._port
        assert journal is not None and port is not None
        before = journal.commits
        outcomes: list[tuple[bool, Any]] = []
        self._busy_since = self._clock()
        try:
            try:
                with journal.batch(f"writing a group of {len(batch)} records"):
                    for item in batch:
                        try:
                            with journal.batch("one record of a group"):  # a savepoint: all of it or nothing
                                outcomes.append((True, item.op(port)))
                        except Exception as err:
                            if not journal.in_transaction:
                                raise _GroupLost(str(err)) from err
                            outcomes.append((False, err))
            finally:
                self._busy_since = None
        except Exception as err:
            cause = err.__cause__ if isinstance(err, _GroupLost) and err.__cause__ is not None else err
            self._note(cause, journal.commits)
            log.warning("journal writer %s: a group of %d records could not be committed (%s); writing each on its own",
                        self.name, len(batch), cause)
            for item in batch:
                self._run_one(item)
            return
        for ok, value in outcomes:
            if not ok:
                self._note(value, journal.commits)
        self._note(None, before)
        for item, (ok, value) in zip(batch, outcomes):
            self._finish(item, ok, value)

    def _finish(self, item: Item[Any], ok: bool, value: Any) -> None:
        self._finished += 1
        if ok:
            item.future.set_result(value)
        else:
            item.future.set_exception(value)

    def _note(self, err: BaseException | None, commits_before: int) -> None:
        """Publish the health after an operation: a storage failure, or a commit that went through."""
        assert self._journal is not None
        old = self._stats
        new = self._stats = old.after(self._journal, err, commits_before)
        if old.writable and not new.writable:
            log.error("journal writer %s: the journal is not writable: %s", self.name, new.last_error)
        elif new.writable and not old.writable:
            log.warning("journal writer %s: the journal is writable again (the last failure was: %s)", self.name,
                        old.last_error)

    def _die(self, err: BaseException, *, opening: bool = False) -> None:
        with self._lock:
            self._state = "dead"
            self._death = err
            callbacks, self._death_callbacks = self._death_callbacks, []
            items = [i for i in self._current if not i.future.done()] + self._queue.pending()
            self._current = []
        if opening:
            log.error("journal writer %s: the journal could not be opened: %s", self.name, err)
        else:
            log.critical("journal writer %s died (%r); %d pending operations failed, nothing more is written",
                         self.name, err, len(items), exc_info=err)
        for item in items:
            self._finished += 1
            error = self._refusal()
            if not item.future.done():
                item.future.set_exception(error)
        for callback in callbacks:
            try:
                callback(err)
            except Exception:  # pragma: no cover - a callback's own bug
                log.exception("journal writer %s: a death callback failed", self.name)
