"""The journal store: one lane's transactions in SQLite, WAL mode, ``synchronous=FULL``.

Every write is one transaction that is durable when the call returns (the WAL is fsynced at
every commit). :meth:`Journal.batch` puts several writes in one transaction — one commit,
one fsync — without weakening either: inside a batch each write runs in its own savepoint,
so a write that fails (a refused transition, a constraint) leaves no trace and the others
stand; the batch is durable when its block ends. The file, the lock and the transaction
machinery live in ``laned.journal.connection``; this module is what the rows mean.

The API is synchronous and the object is bound to the thread that opened it (SQLite's
``check_same_thread``): the daemon opens it on the :class:`~laned.journal.writer.JournalWriter`
thread, never on the event loop. One :class:`Journal` per lane and per process:
:meth:`Journal.open` takes an exclusive lock next to the database, because crash recovery
would otherwise mark another live process's intent unknown.

Test and benchmark knobs: ``commit_delay_s`` makes every commit that wrote something take
that much longer (the sleep happens on the committing thread, just before ``COMMIT``), and
``commit_hook`` is called there too (``laned.journal.testing.CommitFaults`` injects errors).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from laned.journal.errors import JournalError, JournalTransitionError
from laned.journal.outbox import JournalOutbox
from laned.journal.records import (
    B5_FIELDS, CHARGE_KINDS, DONE, EVENT_KIND, MAY_HAVE_PAID, OBSERVED_FIELDS, B5Result, JournalEntry, Observed,
    ReconcileOutcome, Recovery, TransactionIntent, TxKind, TxState,
)
from laned.journal.schema import (
    MIGRATIONS, SCHEMA_VERSION, check_money, entry_from_row, from_db, stamp, to_db,
)

log = logging.getLogger("laned.journal")

BATCH = 500  # rows per query when iterating


class Journal(JournalOutbox):
    """The transaction journal of one lane. Open with :meth:`open`; use as a context manager.

    The file, the lock, transactions and :meth:`batch` come from :class:`JournalConnection`;
    the outbox, reconciliation results and command ledger from :class:`JournalOutbox`.
    """

    def __init__(self, con: sqlite3.Connection, path: Path, lane_id: str, lock_fd: int) -> None:
        super().__init__(con, path, lock_fd)
        self.lane_id = lane_id
        self.recovery = Recovery()

    # -- lifetime --------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str], lane_id: str, *, now: dt.datetime, commit_delay_s: float = 0.0,
             commit_hook: Callable[[str], None] | None = None) -> Journal:
        """Open (creating or migrating) the journal and recover what a crash left.

        ``now`` stamps the rows recovery changes. :attr:`recovery` says what was found.

        ``commit_delay_s`` and ``commit_hook`` are for tests and benchmarks only: every
        commit that wrote something first sleeps ``commit_delay_s`` and then calls
        ``commit_hook(what)`` (which may raise, e.g. ``sqlite3.OperationalError``, to act
        as a failing disk), on the thread doing the commit, inside the transaction.
        They apply from the first commit on, start-up recovery included.
        """
        if not isinstance(lane_id, str) or not lane_id.strip():
            raise JournalError(f"lane_id is {lane_id!r}, expected a non-empty name")
        p = Path(path)
        con, lock_fd = cls._connect(p)
        journal = cls(con, p, lane_id, lock_fd)
        journal.commit_delay_s = float(commit_delay_s)
        journal.commit_hook = commit_hook
        try:
            journal._configure()
            journal._migrate()
            journal._init_counter()
            journal.recovery = journal._recover(now)
        except BaseException:
            journal.close()
            raise
        return journal

    def _migrate(self) -> None:
        with self._reading("reading the schema version"):
            version = self._con.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise JournalError(f"journal {self.path} has schema version {version}, newer than this laned "
                               f"understands ({SCHEMA_VERSION}); run the laned release that wrote it")
        for step in range(version, SCHEMA_VERSION):
            with self._writing(f"migrating the schema from version {step} to {step + 1}") as con:
                for statement in MIGRATIONS[step].split(";\n"):  # statements end a line
                    if statement.strip():
                        con.execute(statement)
                con.execute(f"PRAGMA user_version = {step + 1}")
            log.info("journal %s: schema migrated to version %d", self.path, step + 1)

    def _init_counter(self) -> None:
        # The counter never goes below the highest seq on file: a seq is never handed out twice.
        with self._writing("initialising the sequence counter") as con:
            con.execute("INSERT OR IGNORE INTO lane_counter (lane_id, last_seq) VALUES (?, 0)", (self.lane_id,))
            con.execute("UPDATE lane_counter SET last_seq = MAX(last_seq, "
                        "(SELECT COALESCE(MAX(seq), 0) FROM transactions WHERE lane_id = ?)) WHERE lane_id = ?",
                        (self.lane_id, self.lane_id))

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------------------------
    def _next_seq(self, con: sqlite3.Connection) -> int:
        con.execute("UPDATE lane_counter SET last_seq = last_seq + 1 WHERE lane_id = ?", (self.lane_id,))
        return int(con.execute("SELECT last_seq FROM lane_counter WHERE lane_id = ?", (self.lane_id,)).fetchone()[0])

    def _insert(self, con: sqlite3.Connection, values: Mapping[str, Any]) -> int:
        seq = self._next_seq(con)
        row = {"lane_id": self.lane_id, "seq": seq, **values}
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        con.execute(f"INSERT INTO transactions ({cols}) VALUES ({marks})", tuple(row.values()))
        return seq

    def _update(self, con: sqlite3.Connection, seq: int, values: Mapping[str, Any]) -> None:
        # A row that changes goes up to the centre again (same seq and uuid, the new state):
        # the one place an ack is undone (laned.journal.outbox).
        sets = ", ".join([*(f"{k} = ?" for k in values), "acked_unix = NULL"])
        con.execute(f"UPDATE transactions SET {sets} WHERE lane_id = ? AND seq = ?",
                    (*values.values(), self.lane_id, seq))

    def _select(self, con: sqlite3.Connection, where: str, args: tuple[Any, ...], tail: str = "") -> list[JournalEntry]:
        cur = con.execute(f"SELECT * FROM transactions WHERE lane_id = ? AND ({where}) {tail}", (self.lane_id, *args))
        names = [d[0] for d in cur.description]
        return [entry_from_row(names, row) for row in cur.fetchall()]

    def _row(self, con: sqlite3.Connection, seq: int) -> JournalEntry:
        rows = self._select(con, "seq = ?", (seq,))
        if not rows:
            raise JournalError(f"journal {self.path}: lane {self.lane_id} has no transaction seq {seq}")
        return rows[0]

    @staticmethod
    def _observed(facts: Observed | None) -> dict[str, Any]:
        if facts is None:
            return {}
        for what in ("balance_before", "fee"):
            check_money(what, getattr(facts, what))
        return {n: to_db(n, getattr(facts, n)) for n in OBSERVED_FIELDS}

    @staticmethod
    def _tx_uuid(tx_id: str | None) -> str:
        if tx_id is None:
            return str(uuid.uuid4())
        try:
            return str(uuid.UUID(tx_id))
        except (ValueError, TypeError, AttributeError):
            raise JournalError(f"tx_id {tx_id!r} is not a UUID") from None

    # -- writing ------------------------------------------------------------------------------------
    def record_intent(self, intent: TransactionIntent, now: dt.datetime) -> JournalEntry:
        """Journal a C6 about to be sent. Returns once the row is durable; C6 may go out then."""
        if intent.kind not in CHARGE_KINDS:
            raise JournalError(f"an intent is an exit_charge or an entry_write, not {str(intent.kind)!r}")
        if not isinstance(intent.obu_id, bytes) or not intent.obu_id:
            raise JournalError(f"an intent needs the OBU id, got {intent.obu_id!r}")
        check_money("amount", intent.amount)
        if not isinstance(intent.purchase_time, dt.datetime):
            raise JournalError(f"purchase_time is {intent.purchase_time!r}, expected a datetime")
        iso, unix = stamp(now)
        values = {
            "uuid": self._tx_uuid(intent.tx_id), "kind": TxKind(intent.kind).value, "state": TxState.INTENT.value,
            "created_iso": iso, "created_unix": unix, "updated_iso": iso, "updated_unix": unix,
            **self._observed(intent), "amount": intent.amount, "purchase_time": intent.purchase_time.isoformat(),
        }
        with self._writing(f"writing the intent for OBU {intent.obu_id.hex()}") as con:
            seq = self._insert(con, values)
            return self._row(con, seq)

    def record_b5(self, seq: int, b5: B5Result, now: dt.datetime) -> None:
        """Keep a B5 result as evidence without changing the state.

        For a result that arrives where its state change cannot be made yet; the next
        :meth:`complete_charge`, :meth:`resolve_unknown` or :meth:`open` applies it.
        The same result again is a no-op; a different TAC for the same seq is refused.
        """
        with self._writing(f"keeping the B5 result of seq {seq}") as con:
            entry = self._row(con, seq)
            if entry.state in (TxState.CHARGED, TxState.ENTRY_WRITTEN):
                self._same_tac(entry, b5)
                return
            if entry.state not in (TxState.INTENT, TxState.UNKNOWN):
                raise JournalTransitionError(f"journal {self.path}: seq {seq} is {entry.state}, "
                                             f"no B5 result belongs to it (TAC {b5.tac.hex()})")
            self._store_b5(con, seq, b5, now)

    def complete_charge(self, seq: int, b5: B5Result, now: dt.datetime, *,
                        message: str | None = None) -> JournalEntry:
        """B5 success for an intent: charged (exit) or entry_written (entry), durably.

        Idempotent with the same TAC; a different TAC for a completed seq raises.
        """
        return self._complete(seq, b5, now, TxState.INTENT, message=message, detail=None)

    def resolve_unknown(self, seq: int, b5: B5Result, now: dt.datetime, *,
                        message: str | None = None) -> JournalEntry:
        """A re-fetched TAC (C8) proves the unknown transaction was charged: reconciled."""
        return self._complete(seq, b5, now, TxState.UNKNOWN, message=message,
                              detail=f"reconciled with TAC {b5.tac.hex()}", lane_settles=True)

    def _complete(self, seq: int, b5: B5Result, now: dt.datetime, from_state: TxState, *,
                  message: str | None, detail: str | None, lane_settles: bool = False) -> JournalEntry:
        if not isinstance(b5.tac, bytes) or len(b5.tac) != 4:
            raise JournalError(f"seq {seq}: the TAC is {b5.tac!r}, expected 4 bytes")
        check_money("balance_after", b5.balance_after)
        with self._writing(f"completing seq {seq} with TAC {b5.tac.hex()}") as con:
            entry = self._row(con, seq)
            if entry.state in (TxState.CHARGED, TxState.ENTRY_WRITTEN):
                self._same_tac(entry, b5)
                return entry
            if entry.state is not from_state:
                hint = {TxState.UNKNOWN: "; it awaits reconciliation: use resolve_unknown",
                        TxState.INTENT: "; it is not unknown yet: use complete_charge"}.get(entry.state, "")
                raise JournalTransitionError(f"journal {self.path}: seq {seq} is {entry.state}, cannot complete "
                                             f"it from {from_state}{hint}")
            self._store_b5(con, seq, b5, now)
            self._apply_b5(con, entry, b5, now, message=message, detail=detail)
            if lane_settles:
                self._record_lane_settlement(con, entry, ReconcileOutcome.CHARGED, b5.tac, now)
            return self._row(con, seq)

    def _same_tac(self, entry: JournalEntry, b5: B5Result) -> None:
        held = entry.b5.tac if entry.b5 else None
        if held != b5.tac:
            raise JournalTransitionError(
                f"journal {self.path}: seq {entry.seq} is already {entry.state} with TAC "
                f"{held.hex() if held else None}; a result with TAC {b5.tac.hex()} would charge it twice")

    def _store_b5(self, con: sqlite3.Connection, seq: int, b5: B5Result, now: dt.datetime) -> None:
        held = con.execute("SELECT tac FROM b5_results WHERE lane_id = ? AND seq = ?", (self.lane_id, seq)).fetchone()
        if held is not None:
            if held[0] != b5.tac.hex():
                raise JournalTransitionError(f"journal {self.path}: seq {seq} already has a B5 result with TAC "
                                             f"{held[0]}; refusing a second one with TAC {b5.tac.hex()}")
            return
        iso, unix = stamp(now)
        values = {n: to_db(n, getattr(b5, n)) for n in B5_FIELDS}
        values.update(lane_id=self.lane_id, seq=seq, received_iso=iso, received_unix=unix)
        con.execute(f"INSERT INTO b5_results ({', '.join(values)}) VALUES ({', '.join('?' for _ in values)})",
                    tuple(values.values()))

    def _apply_b5(self, con: sqlite3.Connection, entry: JournalEntry, b5: B5Result, now: dt.datetime, *,
                  message: str | None, detail: str | None) -> None:
        try:
            done = DONE[TxKind(entry.kind)]
        except (KeyError, ValueError):
            raise JournalTransitionError(f"journal {self.path}: seq {entry.seq} is a {entry.kind}, "
                                         "not a charge; it takes no B5 result") from None
        iso, unix = stamp(now)
        values: dict[str, Any] = {n: to_db(n, getattr(b5, n)) for n in B5_FIELDS}
        values.update(state=done.value, reason=done.value, updated_iso=iso, updated_unix=unix)
        if entry.state is TxState.UNKNOWN:
            values["reconciled"] = 1
        if message is not None:
            values["message"] = message
        if detail is not None:
            values["detail"] = detail
        self._update(con, entry.seq, values)

    def mark_unknown(self, seq: int, reason: str, now: dt.datetime, *, message: str | None = None) -> JournalEntry:
        """No B5 (or a B5 error after which the card may have paid): reconcile later.

        Marking an unknown row again is a no-op; a completed or refused row cannot become unknown.
        """
        with self._writing(f"marking seq {seq} unknown") as con:
            entry = self._row(con, seq)
            if entry.state is TxState.UNKNOWN:
                return entry
            if entry.state is not TxState.INTENT:
                raise JournalTransitionError(f"journal {self.path}: seq {seq} is {entry.state}; only an intent "
                                             f"can become unknown ({reason})")
            self._mark_unknown(con, seq, reason, now, message)
            return self._row(con, seq)

    def _mark_unknown(self, con: sqlite3.Connection, seq: int, why: str, now: dt.datetime,
                      message: str | None) -> None:
        iso, unix = stamp(now)
        values: dict[str, Any] = {"state": TxState.UNKNOWN.value, "reason": "outcome_unknown", "detail": why,
                                  "updated_iso": iso, "updated_unix": unix}
        if message is not None:
            values["message"] = message
        self._update(con, seq, values)

    def resolve_not_charged(self, seq: int, reason: str, now: dt.datetime) -> JournalEntry:
        """Reconciliation found the card was not debited (e.g. C8 answered 'no such transaction')."""
        with self._writing(f"resolving seq {seq} as not charged") as con:
            entry = self._row(con, seq)
            if entry.state is TxState.REFUSED and entry.reconciled:
                return entry
            if entry.state is not TxState.UNKNOWN:
                raise JournalTransitionError(f"journal {self.path}: seq {seq} is {entry.state}; only an unknown "
                                             "transaction can be resolved as not charged")
            held = con.execute("SELECT tac FROM b5_results WHERE lane_id = ? AND seq = ?", (self.lane_id, seq)).fetchone()
            if held is not None:
                raise JournalTransitionError(f"journal {self.path}: seq {seq} has a B5 result with TAC {held[0]}: "
                                             "it was charged, resolve it with resolve_unknown")
            self._not_charged(con, seq, reason, now)
            self._record_lane_settlement(con, entry, ReconcileOutcome.NOT_CHARGED, None, now)
            return self._row(con, seq)

    def _not_charged(self, con: sqlite3.Connection, seq: int, reason: str, now: dt.datetime) -> None:
        iso, unix = stamp(now)
        self._update(con, seq, {"state": TxState.REFUSED.value, "reconciled": 1, "reason": "charge_failed",
                                "detail": reason, "updated_iso": iso, "updated_unix": unix})

    def record_refusal(self, facts: Observed, reason: str, now: dt.datetime, *, message: str | None = None,
                       tx_id: str | None = None) -> JournalEntry:
        """The vehicle was refused (to the manual lane) before any C6."""
        if not reason:
            raise JournalError("a refusal needs a reason code")
        return self._record(TxKind.REFUSAL, TxState.REFUSED, facts, reason, now, message=message, tx_id=tx_id)

    def record_event(self, kind: str, now: dt.datetime, *, facts: Observed | None = None,
                     reason: str | None = None, message: str | None = None, detail: str | None = None,
                     tx_id: str | None = None) -> JournalEntry:
        """A lane event: follow-car violation, a vehicle passed on its record, an alarm…"""
        kind = str(kind)
        if kind in (TxKind.EXIT_CHARGE, TxKind.ENTRY_WRITE, TxKind.REFUSAL) or not EVENT_KIND.match(kind):
            raise JournalError(f"event kind {kind!r}: expected a lower-case code like 'follow_car' "
                               "(charges and refusals have their own calls)")
        return self._record(kind, TxState.EVENT, facts, reason or kind, now, message=message, detail=detail,
                            tx_id=tx_id)

    def _record(self, kind: str, state: TxState, facts: Observed | None, reason: str, now: dt.datetime, *,
                message: str | None, tx_id: str | None, detail: str | None = None) -> JournalEntry:
        iso, unix = stamp(now)
        values = {"uuid": self._tx_uuid(tx_id), "kind": str(kind), "state": state.value, "created_iso": iso,
                  "created_unix": unix, "updated_iso": iso, "updated_unix": unix, **self._observed(facts),
                  "reason": str(reason), "message": message, "detail": detail}
        with self._writing(f"recording a {kind} ({reason})") as con:
            seq = self._insert(con, values)
            return self._row(con, seq)

    # -- crash recovery -------------------------------------------------------------------------
    def _recover(self, now: dt.datetime) -> Recovery:
        completed: list[int] = []
        unknown: list[int] = []
        with self._writing("recovering intents left by a crash") as con:
            left = self._select(con, "state IN (?, ?)", (TxState.INTENT.value, TxState.UNKNOWN.value), "ORDER BY seq")
            results = {row[0]: row[1:] for row in con.execute(
                f"SELECT seq, {', '.join(B5_FIELDS)} FROM b5_results WHERE lane_id = ?", (self.lane_id,))}
            for entry in left:
                held = results.get(entry.seq)
                if held is not None:
                    b5 = B5Result(**{n: from_db(n, v) for n, v in zip(B5_FIELDS, held)})
                    detail = f"completed at start-up from the journalled B5 (TAC {b5.tac.hex()})"
                    self._apply_b5(con, entry, b5, now, message=None, detail=detail)
                    self._record_lane_settlement(con, entry, ReconcileOutcome.CHARGED, b5.tac, now)
                    completed.append(entry.seq)
                elif entry.state is TxState.INTENT:
                    self._mark_unknown(con, entry.seq, "laned stopped between C6 and B5 (found at start-up)",
                                       now, None)
                    unknown.append(entry.seq)
        for seq in completed:
            log.warning("journal: seq %d completed at start-up from its journalled B5 result", seq)
        for entry in left:
            if entry.seq in unknown:
                log.warning("journal: seq %d (OBU %s, card %s, %s fen) had no B5 result when laned stopped; "
                            "marked unknown for reconciliation (re-fetch the TAC with C8)", entry.seq,
                            entry.obu_id.hex() if entry.obu_id else "?", entry.masked()["card"], entry.amount)
        return Recovery(tuple(completed), tuple(unknown))

    # -- reading -----------------------------------------------------------------------------------
    def get(self, seq: int) -> JournalEntry:
        with self._reading(f"reading seq {seq}") as con:
            return self._row(con, seq)

    def pending_intents(self) -> list[JournalEntry]:
        """Intents with no result yet (C6 in flight)."""
        with self._reading("listing pending intents") as con:
            return self._select(con, "state = ?", (TxState.INTENT.value,), "ORDER BY seq")

    def unresolved(self) -> list[JournalEntry]:
        """Unknown transactions awaiting reconciliation."""
        with self._reading("listing unknown transactions") as con:
            return self._select(con, "state = ?", (TxState.UNKNOWN.value,), "ORDER BY seq")

    def charged_within(self, *, since: dt.datetime, obu_id: bytes | None = None,
                       card_key: str | None = None) -> JournalEntry | None:
        """The latest charge (or write) of this OBU or card created at or after ``since``.

        Counts rows that paid or may have paid (intent, unknown): a second C6 for those
        could charge twice. Refusals and events never count.
        """
        if obu_id is None and card_key is None:
            raise JournalError("charged_within needs an OBU id or a card key")
        _, since_unix = stamp(since)
        clauses, args = [], []
        if obu_id is not None:
            clauses.append("obu_id = ?")
            args.append(obu_id.hex())
        if card_key is not None:
            clauses.append("(card_network = ? AND card_number = ?)")
            args += [card_key[:4], card_key[4:]]
        states = ", ".join("?" for _ in MAY_HAVE_PAID)
        with self._reading("looking up a recent charge") as con:
            rows = self._select(con, f"({' OR '.join(clauses)}) AND state IN ({states}) AND created_unix >= ?",
                                (*args, *(s.value for s in MAY_HAVE_PAID), since_unix), "ORDER BY seq DESC LIMIT 1")
        return rows[0] if rows else None

    def paid_since(self, since: dt.datetime) -> list[JournalEntry]:
        """Every charge (or write) that paid or may have paid since ``since``, oldest first."""
        _, since_unix = stamp(since)
        states = ", ".join("?" for _ in MAY_HAVE_PAID)
        with self._reading("listing recent charges") as con:
            return self._select(con, f"state IN ({states}) AND created_unix >= ?",
                                (*(s.value for s in MAY_HAVE_PAID), since_unix), "ORDER BY seq")

    def iter_since(self, seq: int) -> Iterator[JournalEntry]:
        """Every row after ``seq``, in order (the uplink's read position)."""
        last = seq
        while True:
            with self._reading(f"reading rows after seq {last}") as con:
                batch = self._select(con, "seq > ?", (last,), f"ORDER BY seq LIMIT {BATCH}")
            yield from batch
            if len(batch) < BATCH:
                return
            last = batch[-1].seq

    def probe(self) -> None:
        """A write that changes nothing, committed like any other (fsync included): after a
        failure, the lane learns from it that the journal takes writes again."""
        with self._writing("probing that the journal takes writes") as con:
            con.execute("UPDATE lane_counter SET last_seq = last_seq WHERE lane_id = ?", (self.lane_id,))

    def last_seq(self) -> int:
        with self._reading("reading the sequence counter") as con:
            return int(con.execute("SELECT last_seq FROM lane_counter WHERE lane_id = ?",
                                   (self.lane_id,)).fetchone()[0])

    def counters(self) -> dict[str, int]:
        """Rows per state, reconciled rows, charged fen and the last seq — for `laned status`."""
        out = {s.value: 0 for s in TxState}
        with self._reading("counting") as con:
            for state, n in con.execute("SELECT state, COUNT(*) FROM transactions WHERE lane_id = ? GROUP BY state",
                                        (self.lane_id,)):
                out[state] = n
            reconciled, fen = con.execute(
                "SELECT COALESCE(SUM(reconciled), 0), COALESCE(SUM(CASE WHEN state = ? THEN amount END), 0) "
                "FROM transactions WHERE lane_id = ?", (TxState.CHARGED.value, self.lane_id)).fetchone()
        out["reconciled"] = int(reconciled)
        out["charged_fen"] = int(fen)
        out["last_seq"] = self.last_seq()
        return out

