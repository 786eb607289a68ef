"""The durable transaction journal: SQLite in WAL mode with ``synchronous=FULL``.

Rule 2 of ARCHITECTURE.md — no charged transaction is lost, none is charged twice — rests
on this package:

* a charge is journalled as an **intent** before C6 goes out; :meth:`Journal.record_intent`
  returns only after the commit is on disk (WAL, ``synchronous=FULL``: the WAL is fsynced
  at every commit);
* the B5 result **completes** it (:meth:`Journal.complete_charge`); a lost or failed B5
  makes it **unknown** (:meth:`Journal.mark_unknown`) for reconciliation, resolved later
  by a re-fetched TAC (C8, :meth:`Journal.resolve_unknown`) or by the centre's verdict
  (:meth:`Journal.resolve_not_charged`);
* after a crash, :meth:`Journal.open` recovers: an intent whose B5 result was already
  journalled is completed, every other intent is marked unknown. Nothing is dropped and
  nothing is completed twice;
* an OBU or card that completed (or may have completed) a charge inside the re-detection
  window is found by :meth:`Journal.charged_within`, so the lane lets it through on its
  record instead of charging again.

States and the transitions the journal allows (anything else raises
:class:`JournalTransitionError`; repeating a transition with the same data is a no-op)::

    intent ──B5──► charged | entry_written        (by kind: exit_charge | entry_write)
    intent ──────► unknown ──C8 TAC──► charged | entry_written   (reconciled)
                           └─verdict─► refused                    (reconciled)
    refusal rows are born refused; follow-car, paid-on-record and alarm rows are born event

Every row has a per-lane ``seq`` that is never reused (the counter lives in the database,
so it survives restarts and deleted rows), a UUID (the lane machine's transaction id), and
the wall-clock time of creation and of the last change, ISO and unix — both passed in by
the caller: the journal reads no clock. The daemon passes its lane clock (aware, in
``lane.timezone``), so ``*_iso`` is the lane's civil time with its UTC offset
(``2026-03-02T01:00:00.123456+08:00``) and ``*_unix`` the instant; every query uses
``*_unix``. Rows written before the lane had its own time zone carry a naive ``*_iso`` (the
host's local time then); a naive ``now`` (tests) is still taken as the host's local time.
``purchase_time`` is the C6's PurchaseTime as sent: the lane's civil time, naive.

The store is synchronous and bound to the thread that opened it. The daemon never commits
on the event loop: a commit is an fsync, 5–30 ms on a lane PC's eMMC. It runs the journal
on a :class:`JournalWriter` thread and gets the confirmations back on the loop.

The modules:

* ``records`` — kind and state codes, :class:`Observed`, :class:`TransactionIntent`,
  :class:`B5Result`, :class:`JournalEntry`, :class:`Recovery`, the reconciliation codes,
  :class:`ReconcileRecord`, :class:`Backlog`;
* ``schema`` — the SQLite schema, migrations, row conversion;
* ``connection`` — the SQLite file: lock, WAL + FULL, transactions, savepoints, :meth:`Journal.batch`;
* ``store`` — :class:`Journal`: opening, migration, recovery, guarded transitions, reads;
* ``outbox`` — :class:`JournalOutbox`, mixed into :class:`Journal`: the outbox to the centre
  (acked only by the centre's ``tx/ack``), reconciliation results, the command ledger;
* ``machine_port`` — :class:`MachineJournal`, the lane executor's port;
* ``writer`` — :class:`JournalWriter`, the thread every commit runs on;
* ``writer_health`` — :class:`WriterHealth`, what the writer tells the health checks;
* ``testing`` — slow and failing commits for tests and benchmarks (not imported here).
"""

from laned.journal.errors import (
    JournalError, JournalStorageError, JournalTransitionError, JournalWriterClosed, JournalWriterDead,
)
from laned.journal.machine_port import MachineJournal
from laned.journal.records import (
    CHARGE_KINDS, U32_MAX, B5Result, Backlog, JournalEntry, Observed, ReconcileOutcome, ReconcileRecord,
    ReconcileStatus, Recovery, SettledBy, TransactionIntent, TxKind, TxState,
)
from laned.journal.schema import MIGRATIONS, SCHEMA_VERSION
from laned.journal.store import BATCH, Journal
from laned.journal.writer import JournalWriter
from laned.journal.writer_health import WriterHealth

__all__ = [
    "BATCH", "CHARGE_KINDS", "MIGRATIONS", "SCHEMA_VERSION", "U32_MAX",
    "B5Result", "Backlog", "Journal", "JournalEntry", "JournalError", "JournalStorageError", "JournalTransitionError",
    "JournalWriter", "JournalWriterClosed", "JournalWriterDead", "MachineJournal", "Observed", "ReconcileOutcome",
    "ReconcileRecord", "ReconcileStatus", "Recovery", "SettledBy", "TransactionIntent", "TxKind", "TxState",
    "WriterHealth",
]
