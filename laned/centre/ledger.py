"""The reference centre's ledger: what it received from every lane, in SQLite (sans-IO).

* transactions, unique on ``(lane_id, seq)``. Storing one says what it was
  (:class:`StoreOutcome`): ``new``; ``updated`` (same seq and ``tx_uuid``, a newer row —
  an unknown outcome that became charged or refused — replaces the stored one); a
  ``duplicate`` (the same row again: the lane re-sends until it has our ack, counted as
  ``duplicates_dropped``); a ``conflict`` (same seq, another ``tx_uuid``: a lane that
  reused a seq — kept aside in ``conflicts``, never overwriting the stored row);
* reconciliation results by ``(lane_id, seq)`` (the reconcile stream's seq is the
  transaction's), the answers the centre gave, the commands it sent and their results;
* the last state, health snapshot, list versions and alarm per code of every lane;
* per lane counters and a gap detector: the seqs missing below the highest seen, as
  ranges, kept in memory (:class:`~laned.centre.seqranges.SeqSet`) and rebuilt from SQL
  ("gaps and islands") when the ledger opens — cheap for any number of rows.

Every write is one SQLite transaction committed (WAL, ``synchronous=FULL``) before the
method returns: what a method says is stored is on disk, so it may be acknowledged.

No asyncio and no clock: times are passed in. The service calls it from one database
thread; a lock lets the caller read counts and gaps from another thread meanwhile.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

from laned.centre import schema
from laned.centre.errors import CentreStorageError
from laned.centre.seqranges import SeqRange, SeqSet
from laned.journal.records import TxState
from laned.masking import mask_card, mask_plate
from laned.uplink.messages import (
    AlarmMsg,
    CommandResult,
    HealthSnapshot,
    LaneState,
    ListVersions,
    ReconcileAnswer,
    ReconcileResult,
    ReconcileStatus,
    TransactionMsg,
)

T = TypeVar("T")


class StoreOutcome(enum.StrEnum):
    NEW = "new"
    UPDATED = "updated"  # same seq and uuid, a newer state: replaced
    DUPLICATE = "duplicate"  # the same row again: dropped (and acknowledged again)
    CONFLICT = "conflict"  # same seq, another uuid: kept aside, the stored row untouched


@dataclass(frozen=True, slots=True)
class LaneCounts:
    lane_id: str
    received: int  # transaction messages received (every copy)
    stored: int  # distinct seqs held
    updated: int
    duplicates_dropped: int
    conflicts: int
    reconcile_received: int
    invalid: int  # payloads dropped because they broke the contract
    highest_seq: int | None
    gaps: tuple[SeqRange, ...]
    pending_reconciliations: int
    state: str | None
    last_seen: str | None

    @property
    def missing(self) -> int:
        return sum(len(r) for r in self.gaps)


@dataclass(frozen=True, slots=True)
class StoredTransaction:
    lane_id: str
    seq: int
    tx_uuid: str
    kind: str
    state: str
    reconciled: bool
    amount: int | None
    plate: str | None
    card_number: str | None
    updated_at: str
    received_at: str
    settled: str | None  # "charged by centre" etc., from the lane's reconciliation result

    def masked(self) -> StoredTransaction:
        """The same row with plate and card number masked, as anything a person reads by default."""
        return dataclasses.replace(
            self, plate=None if self.plate is None else mask_plate(self.plate),
            card_number=None if self.card_number is None else mask_card(self.card_number))


@dataclass(frozen=True, slots=True)
class PendingReconciliation:
    """A transaction sent as unknown whose settlement the lane has not reported yet."""

    lane_id: str
    seq: int
    tx_uuid: str
    amount: int | None
    purchase_time: str | None
    answered: str | None  # the outcome the centre answered, if it did
    payload: str  # the Transaction message (JSON), for a policy that needs more


@dataclass(frozen=True, slots=True)
class DueAnswer:
    lane_id: str
    seq: int
    answer_id: str
    payload: str


def _iso(at: dt.datetime) -> str:
    return at.isoformat(timespec="milliseconds")


class Ledger:
    """The centre's SQLite ledger (see the module docstring). ``Ledger(":memory:")`` for tests."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self._con = schema.connect(path)
        self._lock = threading.RLock()
        self._seqs: dict[str, SeqSet] = {}

    def close(self) -> None:
        with self._lock:
            self._con.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------------------

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE … COMMIT``; a SQLite failure rolls back and is a CentreStorageError."""
        with self._lock:
            try:
                self._con.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as err:
                raise CentreStorageError(f"centre database {self.path}: cannot begin a write: {err}") from None
            try:
                yield self._con
                self._con.execute("COMMIT")
            except sqlite3.Error as err:
                self._con.execute("ROLLBACK")
                raise CentreStorageError(f"centre database {self.path}: write failed and was rolled back: "
                                         f"{err}") from None
            except BaseException:
                self._con.execute("ROLLBACK")
                raise

    def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            try:
                return fn(self._con)
            except sqlite3.Error as err:
                raise CentreStorageError(f"centre database {self.path}: read failed: {err}") from None

    def _seqset(self, lane_id: str) -> SeqSet:
        found = self._seqs.get(lane_id)
        if found is None:
            # Gaps and islands: seq - row_number() is constant along a run of consecutive seqs.
            rows = self._con.execute(
                "SELECT MIN(seq), MAX(seq) FROM (SELECT seq, seq - ROW_NUMBER() OVER (ORDER BY seq) AS run "
                "FROM transactions WHERE lane_id = ?) GROUP BY run ORDER BY 1", (lane_id,)).fetchall()
            found = self._seqs[lane_id] = SeqSet(SeqRange(a, b) for a, b in rows)
        return found

    @staticmethod
    def _touch(con: sqlite3.Connection, lane_id: str, seen: str, **increments: int) -> None:
        con.execute("INSERT INTO lanes (lane_id, last_seen) VALUES (?, ?) "
                    "ON CONFLICT (lane_id) DO UPDATE SET last_seen = excluded.last_seen", (lane_id, seen))
        for column, by in increments.items():
            if by:
                # Column names come from this module's own keywords, never from a payload.
                con.execute(f"UPDATE lanes SET {column} = {column} + ? WHERE lane_id = ?", (by, lane_id))

    # -- transactions -----------------------------------------------------------------------------

    def store_transactions(self, messages: Sequence[TransactionMsg], received_at: dt.datetime,
                           payloads: Sequence[str] | None = None) -> list[StoreOutcome]:
        """Store a batch in one committed transaction; one outcome per message, in order.

        ``payloads``: the messages' JSON as received, kept as is (re-encoding each message
        would cost two thirds of the time a backlog takes to store); by default re-encoded.
        """
        return self.store_transactions_held(messages, received_at, payloads)[0]

    def store_transactions_held(self, messages: Sequence[TransactionMsg], received_at: dt.datetime,
                                payloads: Sequence[str] | None = None
                                ) -> tuple[list[StoreOutcome], dict[str, set[int]]]:
        """:meth:`store_transactions`, and per lane the seqs of the batch the ledger holds
        as unknown outcomes once it is stored — a late copy of an unknown row does not undo
        its settled one — for the ack to name (``TxAck.unknown_seqs``)."""
        seen = _iso(received_at)
        outcomes: list[StoreOutcome] = []
        unknown: dict[str, set[int]] = {}
        counts: dict[str, dict[str, int]] = {}
        texts = payloads if payloads is not None else [m.to_json() for m in messages]
        if len(texts) != len(messages):
            raise ValueError(f"{len(messages)} messages but {len(texts)} payloads")
        with self._write() as con:
            for msg, text in zip(messages, texts):
                outcome, held = self._store_one(con, msg, text, seen)
                outcomes.append(outcome)
                if held == TxState.UNKNOWN:
                    unknown.setdefault(msg.lane_id, set()).add(msg.seq)
                else:  # the batch may hold an unknown copy, then the settled one
                    unknown.get(msg.lane_id, set()).discard(msg.seq)
                c = counts.setdefault(msg.lane_id, {"received": 0, "stored": 0, "updated": 0,
                                                    "duplicates_dropped": 0, "conflicts": 0})
                c["received"] += 1
                c[{StoreOutcome.NEW: "stored", StoreOutcome.UPDATED: "updated",
                   StoreOutcome.DUPLICATE: "duplicates_dropped", StoreOutcome.CONFLICT: "conflicts"}[outcome]] += 1
            for lane_id, c in counts.items():
                self._touch(con, lane_id, seen, **c)
        with self._lock:  # committed: now the gap detector may count them
            for msg, outcome in zip(messages, outcomes):
                if outcome is StoreOutcome.NEW:
                    self._seqset(msg.lane_id).add(msg.seq)
        return outcomes, {lane_id: seqs for lane_id, seqs in unknown.items() if seqs}

    def store_transaction(self, msg: TransactionMsg, received_at: dt.datetime) -> StoreOutcome:
        return self.store_transactions([msg], received_at)[0]

    def _store_one(self, con: sqlite3.Connection, msg: TransactionMsg, payload: str,
                   seen: str) -> tuple[StoreOutcome, str]:
        """How ``msg`` was taken, and the state the ledger holds for its seq now."""
        row = con.execute("SELECT tx_uuid, state, reconciled, updated_unix, payload FROM transactions "
                          "WHERE lane_id = ? AND seq = ?", (msg.lane_id, msg.seq)).fetchone()
        values = (str(msg.state), int(msg.reconcile_required), int(msg.reconciled), _iso(msg.created_at),
                  _iso(msg.updated_at), msg.updated_at.timestamp(), msg.amount, msg.plate,
                  None if msg.card_number is None else (msg.card_network or "") + msg.card_number, payload, seen)
        if row is None:
            con.execute("INSERT INTO transactions (lane_id, seq, tx_uuid, kind, state, reconcile_required, "
                        "reconciled, created_at, updated_at, updated_unix, amount, plate, card_number, payload, "
                        "received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (msg.lane_id, msg.seq, msg.tx_uuid, msg.kind, *values))
            return StoreOutcome.NEW, str(msg.state)
        stored_uuid, state, reconciled, updated_unix, stored_payload = row
        if stored_uuid != msg.tx_uuid:
            con.execute("INSERT INTO conflicts (lane_id, seq, tx_uuid, stored_uuid, payload, received_at) "
                        "VALUES (?, ?, ?, ?, ?, ?)", (msg.lane_id, msg.seq, msg.tx_uuid, stored_uuid, payload, seen))
            return StoreOutcome.CONFLICT, str(state)
        newer = msg.updated_at.timestamp() > updated_unix
        changed = (str(msg.state), int(msg.reconciled)) != (state, reconciled) or payload != stored_payload
        # A copy older than what is held is a late duplicate: the newer row stays.
        if changed and (newer or msg.updated_at.timestamp() == updated_unix):
            con.execute("UPDATE transactions SET state = ?, reconcile_required = ?, reconciled = ?, created_at = ?, "
                        "updated_at = ?, updated_unix = ?, amount = ?, plate = ?, card_number = ?, payload = ?, "
                        "received_at = ?, updates = updates + 1 WHERE lane_id = ? AND seq = ?",
                        (*values, msg.lane_id, msg.seq))
            return StoreOutcome.UPDATED, str(msg.state)
        return StoreOutcome.DUPLICATE, str(state)

    def gaps(self, lane_id: str) -> list[SeqRange]:
        """The seqs missing from 1 to the highest held for the lane, as ranges."""
        return self._read(lambda con: self._seqset(lane_id).gaps())

    def highest_seq(self, lane_id: str) -> int | None:
        return self._read(lambda con: self._seqset(lane_id).highest)

    def transaction(self, lane_id: str, seq: int) -> TransactionMsg | None:
        row = self._read(lambda con: con.execute("SELECT payload FROM transactions WHERE lane_id = ? AND seq = ?",
                                                 (lane_id, seq)).fetchone())
        return None if row is None else TransactionMsg.from_json(row[0])

    def transactions(self, lane_id: str, *, from_seq: int = 1, limit: int = 100) -> list[StoredTransaction]:
        rows = self._read(lambda con: con.execute(
            "SELECT t.lane_id, t.seq, t.tx_uuid, t.kind, t.state, t.reconciled, t.amount, t.plate, t.card_number, "
            "t.updated_at, t.received_at, r.outcome, r.settled_by, r.result FROM transactions t "
            "LEFT JOIN reconcile_results r ON r.lane_id = t.lane_id AND r.seq = t.seq "
            "WHERE t.lane_id = ? AND t.seq >= ? ORDER BY t.seq LIMIT ?", (lane_id, from_seq, limit)).fetchall())
        return [StoredTransaction(lane_id=r[0], seq=r[1], tx_uuid=r[2], kind=r[3], state=r[4], reconciled=bool(r[5]),
                                  amount=r[6], plate=r[7], card_number=r[8], updated_at=r[9], received_at=r[10],
                                  settled=None if r[11] is None else f"{r[11]} by {r[12]} ({r[13]})")
                for r in rows]

    def conflicts(self, lane_id: str) -> list[tuple[int, str, str]]:
        """(seq, tx_uuid received, tx_uuid held) of every conflict of the lane."""
        return self._read(lambda con: con.execute(
            "SELECT seq, tx_uuid, stored_uuid FROM conflicts WHERE lane_id = ? ORDER BY id", (lane_id,)).fetchall())

    # -- reconciliation ------------------------------------------------------------------------------

    def store_reconcile_results(self, results: Sequence[ReconcileResult],
                                received_at: dt.datetime) -> list[StoreOutcome]:
        """Store the lane's reports of settled unknown outcomes (one committed transaction)."""
        seen = _iso(received_at)
        outcomes: list[StoreOutcome] = []
        with self._write() as con:
            for result in results:
                payload = result.to_json()
                row = con.execute("SELECT payload FROM reconcile_results WHERE lane_id = ? AND seq = ?",
                                  (result.lane_id, result.seq)).fetchone()
                if row is not None and row[0] == payload:
                    outcomes.append(StoreOutcome.DUPLICATE)
                else:
                    con.execute(
                        "INSERT OR REPLACE INTO reconcile_results (lane_id, seq, tx_uuid, outcome, settled_by, result, "
                        "answer_id, at, payload, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (result.lane_id, result.seq, result.tx_uuid, str(result.outcome), str(result.settled_by),
                         str(result.result), result.answer_id, _iso(result.at), payload, seen))
                    outcomes.append(StoreOutcome.NEW if row is None else StoreOutcome.UPDATED)
                self._touch(con, result.lane_id, seen, reconcile_received=1)
        return outcomes

    def pending_reconciliations(self, lane_id: str | None = None) -> list[PendingReconciliation]:
        """Transactions held as unknown that no result of the lane has settled yet (an
        ``unknown_seq`` result settles nothing: the answer named a row the lane does not have)."""
        where, args = ("AND t.lane_id = ?", (lane_id,)) if lane_id is not None else ("", ())
        rows = self._read(lambda con: con.execute(
            "SELECT t.lane_id, t.seq, t.tx_uuid, t.amount, t.payload, a.outcome FROM transactions t "
            "LEFT JOIN reconcile_results r ON r.lane_id = t.lane_id AND r.seq = t.seq AND r.result != ? "
            "LEFT JOIN reconcile_answers a ON a.lane_id = t.lane_id AND a.seq = t.seq "
            f"WHERE t.state = 'unknown' AND r.seq IS NULL {where} ORDER BY t.lane_id, t.seq",
            (str(ReconcileStatus.UNKNOWN_SEQ), *args)).fetchall())
        return [PendingReconciliation(lane_id=r[0], seq=r[1], tx_uuid=r[2], amount=r[3],
                                      purchase_time=json.loads(r[4]).get("purchase_time"), answered=r[5], payload=r[4])
                for r in rows]

    def record_answer(self, answer: ReconcileAnswer, decided_by: str) -> bool:
        """Keep the centre's answer until the lane reports the result; False if the seq was
        answered before (the first answer stands: the lane may have applied it already)."""
        with self._write() as con:
            cur = con.execute("INSERT OR IGNORE INTO reconcile_answers (lane_id, seq, answer_id, tx_uuid, outcome, "
                              "decided_by, payload) VALUES (?, ?, ?, ?, ?, ?, ?)",
                              (answer.lane_id, answer.seq, answer.answer_id, answer.tx_uuid, str(answer.outcome),
                               decided_by, answer.to_json()))
            return cur.rowcount == 1

    def answers_due(self, now_unix: float, repeat_after_s: float) -> list[DueAnswer]:
        """Answers never sent, or sent ``repeat_after_s`` ago with no result from the lane yet."""
        rows = self._read(lambda con: con.execute(
            "SELECT a.lane_id, a.seq, a.answer_id, a.payload FROM reconcile_answers a "
            "LEFT JOIN reconcile_results r ON r.lane_id = a.lane_id AND r.seq = a.seq "
            "WHERE r.seq IS NULL AND (a.last_sent_unix IS NULL OR a.last_sent_unix <= ?) ORDER BY a.lane_id, a.seq",
            (now_unix - repeat_after_s,)).fetchall())
        return [DueAnswer(lane_id=r[0], seq=r[1], answer_id=r[2], payload=r[3]) for r in rows]

    def mark_answer_sent(self, answer_id: str, now_unix: float) -> None:
        with self._write() as con:
            con.execute("UPDATE reconcile_answers SET sent_count = sent_count + 1, last_sent_unix = ? "
                        "WHERE answer_id = ?", (now_unix, answer_id))

    # -- lane state, health, alarms, list versions ----------------------------------------------------

    def note_lane_state(self, msg: LaneState, received_at: dt.datetime) -> None:
        seen = _iso(received_at)
        with self._write() as con:
            self._touch(con, msg.lane_id, seen)
            con.execute("UPDATE lanes SET state = ?, state_payload = ?, state_seen = ? WHERE lane_id = ?",
                        (str(msg.state), msg.to_json(), seen, msg.lane_id))

    def note_health(self, msg: HealthSnapshot, received_at: dt.datetime) -> None:
        seen = _iso(received_at)
        with self._write() as con:
            self._touch(con, msg.lane_id, seen)
            con.execute("UPDATE lanes SET health_payload = ?, health_seen = ? WHERE lane_id = ?",
                        (msg.to_json(), seen, msg.lane_id))

    def note_list_versions(self, msg: ListVersions, received_at: dt.datetime) -> None:
        seen = _iso(received_at)
        with self._write() as con:
            self._touch(con, msg.lane_id, seen)
            con.execute("UPDATE lanes SET versions_payload = ?, versions_seen = ? WHERE lane_id = ?",
                        (msg.to_json(), seen, msg.lane_id))

    def note_alarm(self, msg: AlarmMsg, received_at: dt.datetime) -> None:
        seen = _iso(received_at)
        with self._write() as con:
            self._touch(con, msg.lane_id, seen)
            con.execute("INSERT OR REPLACE INTO alarms (lane_id, code, change, severity, at, payload) "
                        "VALUES (?, ?, ?, ?, ?, ?)", (msg.lane_id, str(msg.code), str(msg.change), str(msg.severity),
                                                      _iso(msg.at), msg.to_json()))

    def note_invalid(self, lane_id: str, received_at: dt.datetime) -> None:
        with self._write() as con:
            self._touch(con, lane_id, _iso(received_at), invalid=1)

    def alarms(self, lane_id: str) -> list[tuple[str, str, str, str]]:
        """(code, change, severity, at) of the last raise or clear of each alarm code."""
        return self._read(lambda con: con.execute(
            "SELECT code, change, severity, at FROM alarms WHERE lane_id = ? ORDER BY at", (lane_id,)).fetchall())

    def last_payload(self, lane_id: str, what: str) -> dict[str, Any] | None:
        """The last ``state``, ``health`` or ``versions`` message of the lane, as received."""
        column = {"state": "state_payload", "health": "health_payload", "versions": "versions_payload"}[what]
        row = self._read(lambda con: con.execute(f"SELECT {column} FROM lanes WHERE lane_id = ?",
                                                 (lane_id,)).fetchone())
        return None if row is None or row[0] is None else dict(json.loads(row[0]))

    # -- counts --------------------------------------------------------------------------------------

    def lanes(self) -> list[str]:
        return [r[0] for r in self._read(lambda con: con.execute("SELECT lane_id FROM lanes ORDER BY lane_id")
                                         .fetchall())]

    def counts(self, lane_id: str) -> LaneCounts:
        def read(con: sqlite3.Connection) -> LaneCounts:
            row = con.execute("SELECT received, stored, updated, duplicates_dropped, conflicts, reconcile_received, "
                              "invalid, state, last_seen FROM lanes WHERE lane_id = ?", (lane_id,)).fetchone()
            row = row or (0, 0, 0, 0, 0, 0, 0, None, None)
            seqs = self._seqset(lane_id)
            return LaneCounts(lane_id=lane_id, received=row[0], stored=row[1], updated=row[2],
                              duplicates_dropped=row[3], conflicts=row[4], reconcile_received=row[5], invalid=row[6],
                              highest_seq=seqs.highest, gaps=tuple(seqs.gaps()),
                              pending_reconciliations=len(self.pending_reconciliations(lane_id)), state=row[7],
                              last_seen=row[8])
        return self._read(read)

    # -- commands ------------------------------------------------------------------------------------

    def next_command_seq(self, lane_id: str, at_least: int = 1) -> int:
        """The centre's next command seq for the lane (kept here so it only goes up), never below ``at_least``."""
        with self._write() as con:
            row = con.execute("SELECT last_seq FROM command_seqs WHERE lane_id = ?", (lane_id,)).fetchone()
            seq = max(at_least, (row[0] if row else 0) + 1)
            con.execute("INSERT OR REPLACE INTO command_seqs (lane_id, last_seq) VALUES (?, ?)", (lane_id, seq))
            return seq

    def record_command(self, payload: dict[str, Any]) -> None:
        """A command as sent (signed payload)."""
        with self._write() as con:
            con.execute("INSERT INTO commands (command_id, lane_id, seq, command, issued_at, expires_at, payload) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (payload["command_id"], payload["lane_id"], payload["seq"], payload["command"],
                         payload["issued_at"], payload["expires_at"], json.dumps(payload, ensure_ascii=False)))

    def record_command_result(self, result: CommandResult) -> bool:
        """Note the lane's answer; False when it answers no command of this centre's."""
        with self._write() as con:
            cur = con.execute("UPDATE commands SET outcome = ?, result_payload = ? WHERE command_id = ?",
                              (str(result.outcome), result.to_json(), result.command_id))
            return cur.rowcount == 1

    def command_result(self, command_id: str) -> CommandResult | None:
        row = self._read(lambda con: con.execute("SELECT result_payload FROM commands WHERE command_id = ?",
                                                 (command_id,)).fetchone())
        return None if row is None or row[0] is None else CommandResult.from_json(row[0])

    # -- lists ---------------------------------------------------------------------------------------

    def store_list(self, kind: str, version: int, manifest: dict[str, Any], data: bytes) -> None:
        with self._write() as con:
            con.execute("INSERT OR REPLACE INTO lists (kind, version, manifest, data) VALUES (?, ?, ?, ?)",
                        (kind, version, json.dumps(manifest, ensure_ascii=False), data))

    def list_version(self, kind: str, version: int) -> tuple[dict[str, Any], bytes] | None:
        row = self._read(lambda con: con.execute("SELECT manifest, data FROM lists WHERE kind = ? AND version = ?",
                                                 (kind, version)).fetchone())
        return None if row is None else (dict(json.loads(row[0])), bytes(row[1]))

    def list_manifests(self) -> list[dict[str, Any]]:
        """The signed manifest of every version held, both kinds (without their data: a
        national status list is hundreds of MB)."""
        rows = self._read(lambda con: con.execute("SELECT manifest FROM lists ORDER BY kind, version").fetchall())
        return [dict(json.loads(r[0])) for r in rows]
