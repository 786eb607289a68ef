"""The journal as the uplink's outbox, its reconciliation results and its command ledger.

Schema version 2 (issue 10). :class:`JournalOutbox` is a mixin :class:`~laned.journal.store.Journal`
inherits; like the store it is synchronous, reads no clock (``now`` is passed in) and runs
on the journal writer's thread.

**The outbox is the journal.** A final row (any state but ``intent``) waits for the centre
until a ``tx/ack`` names its seq (:meth:`JournalOutbox.outbox_ack`); a PUBACK never marks
anything. Nothing is deleted: an acked row only gets ``acked_unix``, so the backlog
survives restarts and is bounded by the disk, not by a queue (7 days of a busy lane,
140,000 rows, is a few tens of MB). An intent is skipped, not a barrier: it goes up once it
resolves, after rows with higher seqs perhaps (the centre de-duplicates on
``(lane_id, seq)`` and does not need the order).

**A row that changes goes up again.** The only change a final row can see is an unknown
outcome being settled (C8 TAC, the centre's answer). Every update of a row clears its
``acked_unix`` (``Journal._update``, the one place), so the centre receives the row again —
same seq and uuid, new state. An ack of the *old* copy that arrives after the change must
not mark the new one delivered: :meth:`~JournalOutbox.outbox_ack` takes what the uplink
sent (seq → state published) and marks only rows still in that state.

**Reconciliation results** (topic ``reconcile/result``) are a second stream. On the wire
(asyncapi.yaml, and the reference centre in ``laned.centre``) a result's ``seq`` is its
*transaction's* seq: the centre keeps one result per transaction (the newest) and acks them
on ``tx/ack`` with ``stream: reconcile`` by that seq. The journal also numbers the results
(:attr:`ReconcileRecord.seq`: 1, 2, … per lane, never reused) to scan them in order and to
tell two results of one transaction apart; when a second result of a transaction is
recorded, an earlier one not yet acked is *superseded* (it will not go up: the centre would
replace it anyway), so at most one result per transaction waits at a time.

* :meth:`~JournalOutbox.settle_from_centre` applies the centre's answer on an unknown row
  and records the result in the same SQLite transaction; the answer id makes it idempotent
  (a redelivered answer returns the first result and records nothing);
* when the lane settles an unknown row itself (``resolve_unknown`` after C8,
  ``resolve_not_charged``), a result ``settled_by=lane`` is recorded — but only if the
  centre had acked the row as unknown. Before that ack the centre may not hold the row at
  all; it receives the settled row (``reconciled``) in its place, which says everything. This
  also keeps the lane's own "B5 error: never debited" path (intent → unknown → refused in one
  transaction, never sent as unknown) from producing results for nothing.

**Acks naming seqs the lane never journalled** (beyond the last seq, or a gap) mark what
exists and return how many rows were newly marked; they are not refused: refusing would
only make the centre repeat the ack. The caller compares the count with the range and logs.

**The command ledger** (:class:`laned.uplink.commands.CommandLedger`): :meth:`record_command`
inside :meth:`~laned.journal.connection.JournalConnection.batch`, beside the action's own
record, makes both durable in one commit or neither.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Mapping
from typing import Any

from laned.journal.connection import JournalConnection
from laned.journal.errors import JournalError
from laned.journal.records import (
    B5Result, Backlog, JournalEntry, ReconcileOutcome, ReconcileRecord, ReconcileStatus, SettledBy, TxState,
)
from laned.journal.schema import stamp

# What waits for an ack, spelt exactly as the partial index transactions_outbox is (schema v2):
# SQLite uses a partial index only when the query's WHERE contains its terms literally.
WAITING = "acked_unix IS NULL AND state != 'intent'"
BACKLOG_SQL = f"SELECT COUNT(*), MIN(seq) FROM transactions WHERE lane_id = ? AND {WAITING}"
# Spelt as the partial index reconcile_results_outbox is.
RECONCILE_WAITING = "acked_unix IS NULL AND superseded_by IS NULL"
RECONCILE_BACKLOG_SQL = f"SELECT COUNT(*) FROM reconcile_results WHERE lane_id = ? AND {RECONCILE_WAITING}"
_RECONCILE_COLUMNS = ("lane_id", "seq", "tx_seq", "tx_uuid", "outcome", "settled_by", "result", "at_iso",
                      "at_unix", "answer_id", "tac", "detail")
_SETTLED = (TxState.CHARGED, TxState.ENTRY_WRITTEN)


def _check_range(first_seq: int, last_seq: int) -> None:
    for name, value in (("first_seq", first_seq), ("last_seq", last_seq)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise JournalError(f"{name} is {value!r}, expected a seq (1 or more)")
    if last_seq < first_seq:
        raise JournalError(f"ack range {first_seq}…{last_seq}: last_seq is below first_seq")


def _check_scan(after_seq: int, limit: int) -> None:
    if not isinstance(after_seq, int) or isinstance(after_seq, bool) or after_seq < 0:
        raise JournalError(f"after_seq is {after_seq!r}, expected 0 or a seq")
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise JournalError(f"limit is {limit!r}, expected a count (0 or more)")


def _record_from_row(row: tuple[Any, ...]) -> ReconcileRecord:
    v = dict(zip(_RECONCILE_COLUMNS, row))
    return ReconcileRecord(
        lane_id=v["lane_id"], seq=v["seq"], tx_seq=v["tx_seq"], tx_uuid=v["tx_uuid"],
        outcome=ReconcileOutcome(v["outcome"]), settled_by=SettledBy(v["settled_by"]),
        result=ReconcileStatus(v["result"]), at_iso=v["at_iso"], at_unix=v["at_unix"], answer_id=v["answer_id"],
        tac=None if v["tac"] is None else bytes.fromhex(v["tac"]), detail=v["detail"])


class JournalOutbox(JournalConnection):
    """Outbox, reconciliation and command-ledger methods of :class:`~laned.journal.store.Journal`."""

    lane_id: str

    # -- provided by Journal (store.py) --------------------------------------------------------
    def _select(self, con: sqlite3.Connection, where: str, args: tuple[Any, ...],
                tail: str = "") -> list[JournalEntry]:
        raise NotImplementedError

    def _complete(self, seq: int, b5: B5Result, now: dt.datetime, from_state: TxState, *,
                  message: str | None, detail: str | None, lane_settles: bool = False) -> JournalEntry:
        raise NotImplementedError

    def _not_charged(self, con: sqlite3.Connection, seq: int, reason: str, now: dt.datetime) -> None:
        raise NotImplementedError

    # -- the transaction stream (topic tx) ----------------------------------------------------------
    def outbox_after(self, after_seq: int, limit: int) -> list[JournalEntry]:
        """Final rows not acked with seq above ``after_seq``, in seq order, at most ``limit``."""
        _check_scan(after_seq, limit)
        with self._reading(f"reading the outbox after seq {after_seq}") as con:
            return self._select(con, f"{WAITING} AND seq > ?", (after_seq,), f"ORDER BY seq LIMIT {limit}")

    def outbox_ack(self, first_seq: int, last_seq: int, now: dt.datetime, *,
                   sent: Mapping[int, str] | None = None) -> int:
        """The centre stored ``first_seq`` … ``last_seq``: mark them delivered; how many were newly marked.

        ``sent`` is what the uplink published in this range (seq → the state it carried,
        ``OutboxWindow.acked``): only rows still in that state are marked, so an ack of a
        copy sent before the row changed leaves the new state in the outbox. Without
        ``sent``, every waiting row in the range is marked. Marking is once: an ack
        repeated changes nothing and counts 0. Seqs the lane never journalled are
        ignored (see the module docstring); intents are never marked.
        """
        _check_range(first_seq, last_seq)
        _, unix = stamp(now)
        with self._writing(f"marking seqs {first_seq}…{last_seq} delivered") as con:
            base = f"UPDATE transactions SET acked_unix = ? WHERE lane_id = ? AND {WAITING}"
            if sent is None:
                cur = con.execute(f"{base} AND seq BETWEEN ? AND ?", (unix, self.lane_id, first_seq, last_seq))
                return cur.rowcount
            # One statement for the whole ack (rowcount sums every row's changes).
            cur = con.executemany(f"{base} AND seq = ? AND state = ?",
                                  [(unix, self.lane_id, seq, str(state)) for seq, state in sorted(sent.items())
                                   if first_seq <= seq <= last_seq])
            return max(cur.rowcount, 0)

    def outbox_resend_from(self, seq: int) -> int:
        """The centre asks for the rows from ``seq`` on again (``resend_from``): clear their
        acks so they wait again; how many had been acknowledged. Intents still go up only
        once they are final."""
        _check_scan(seq, 0)
        with self._writing(f"queueing the rows from seq {seq} again for the centre") as con:
            return con.execute("UPDATE transactions SET acked_unix = NULL WHERE lane_id = ? AND seq >= ? "
                               "AND acked_unix IS NOT NULL AND state != 'intent'", (self.lane_id, seq)).rowcount

    def outbox_backlog(self) -> Backlog:
        """How much waits for the centre, on both streams (an index count, fast at 140,000 rows)."""
        with self._reading("counting the outbox") as con:
            count, oldest = con.execute(BACKLOG_SQL, (self.lane_id,)).fetchone()
            oldest_unix = None
            if oldest is not None:
                oldest_unix = con.execute("SELECT created_unix FROM transactions WHERE lane_id = ? AND seq = ?",
                                          (self.lane_id, oldest)).fetchone()[0]
            reconcile = con.execute(RECONCILE_BACKLOG_SQL, (self.lane_id,)).fetchone()[0]
        return Backlog(count=int(count), oldest_seq=oldest, oldest_unix=oldest_unix, reconcile_count=int(reconcile))

    # -- the reconciliation stream (topic reconcile/result) ---------------------------------------
    def reconcile_after(self, after_seq: int, limit: int) -> list[ReconcileRecord]:
        """Waiting reconciliation results whose own seq is above ``after_seq``, in that order."""
        _check_scan(after_seq, limit)
        with self._reading(f"reading reconciliation results after seq {after_seq}") as con:
            rows = con.execute(f"SELECT {', '.join(_RECONCILE_COLUMNS)} FROM reconcile_results WHERE lane_id = ? "
                               f"AND {RECONCILE_WAITING} AND seq > ? ORDER BY seq LIMIT {limit}",
                               (self.lane_id, after_seq)).fetchall()
        return [_record_from_row(r) for r in rows]

    def reconcile_ack(self, first_seq: int, last_seq: int, now: dt.datetime, *,
                      sent: Mapping[int, str] | None = None) -> int:
        """The centre stored the results of transactions ``first_seq`` … ``last_seq``; how many were newly marked.

        The range names *transaction* seqs, as the wire does. ``sent`` (transaction seq →
        the result's own seq as text, what ``OutboxWindow.acked`` returns) marks only the
        results published; without it every waiting result of those transactions is marked.
        """
        _check_range(first_seq, last_seq)
        _, unix = stamp(now)
        with self._writing(f"marking reconciliation results of seqs {first_seq}…{last_seq} delivered") as con:
            base = f"UPDATE reconcile_results SET acked_unix = ? WHERE lane_id = ? AND {RECONCILE_WAITING}"
            if sent is None:
                return con.execute(f"{base} AND tx_seq BETWEEN ? AND ?",
                                   (unix, self.lane_id, first_seq, last_seq)).rowcount
            marked = 0
            for tx_seq, own in sorted(sent.items()):
                if first_seq <= tx_seq <= last_seq and str(own).isdigit():
                    marked += con.execute(f"{base} AND tx_seq = ? AND seq = ?",
                                          (unix, self.lane_id, tx_seq, int(own))).rowcount
            return marked

    def reconcile_results(self, tx_seq: int) -> list[ReconcileRecord]:
        """Every result recorded for one transaction, oldest first (status, tests)."""
        with self._reading(f"reading the reconciliation results of seq {tx_seq}") as con:
            rows = con.execute(f"SELECT {', '.join(_RECONCILE_COLUMNS)} FROM reconcile_results WHERE lane_id = ? "
                               "AND tx_seq = ? ORDER BY seq", (self.lane_id, tx_seq)).fetchall()
        return [_record_from_row(r) for r in rows]

    def settle_from_centre(self, *, seq: int, tx_uuid: str, outcome: ReconcileOutcome, answer_id: str,
                           b5: B5Result | None, now: dt.datetime) -> ReconcileRecord:
        """Apply the centre's answer on an unknown outcome and record the result, in one transaction.

        ``charged`` completes the row with ``b5`` (the TAC from the clearing record);
        ``not_charged`` makes it refused. Both are reconciled and go up again. The result is
        ``applied``; ``already_settled`` if the row was settled the same way before;
        ``conflict`` if the answer contradicts the journal (another TAC, a TAC held against
        ``not_charged``, a refusal against ``charged``, a row that is no charge or still an
        intent) — the row is left as it is and a person must look; ``unknown_seq`` if there
        is no such row or its uuid differs. An answer id seen before returns its first
        result and records nothing.
        """
        outcome = ReconcileOutcome(outcome)
        if (outcome is ReconcileOutcome.CHARGED) != (b5 is not None):
            raise JournalError(f"answer {answer_id} on seq {seq}: {outcome} comes with the TAC evidence "
                               "exactly when it is charged")
        if not isinstance(answer_id, str) or not answer_id:
            raise JournalError(f"answer_id is {answer_id!r}, expected the centre's answer id")
        with self._writing(f"settling seq {seq} by the centre's answer {answer_id}") as con:
            held = con.execute(f"SELECT {', '.join(_RECONCILE_COLUMNS)} FROM reconcile_results "
                               "WHERE answer_id = ?", (answer_id,)).fetchone()
            if held is not None:
                return _record_from_row(held)  # the centre repeated its answer: nothing new happened
            return self._settle(con, seq, tx_uuid, outcome, answer_id, b5, now)

    def _settle(self, con: sqlite3.Connection, seq: int, tx_uuid: str, outcome: ReconcileOutcome,
                answer_id: str, b5: B5Result | None, now: dt.datetime) -> ReconcileRecord:
        def result(status: ReconcileStatus, held: ReconcileOutcome, by: SettledBy, tac: bytes | None,
                   detail: str | None) -> ReconcileRecord:
            return self._append_result(con, tx_seq=seq, tx_uuid=tx_uuid, outcome=held, settled_by=by,
                                       result=status, now=now, answer_id=answer_id, tac=tac, detail=detail)

        offered = b5.tac if b5 is not None else None
        rows = self._select(con, "seq = ?", (seq,))
        if not rows or rows[0].uuid != tx_uuid:
            why = (f"no transaction seq {seq} on lane {self.lane_id}" if not rows
                   else f"seq {seq} is transaction {rows[0].uuid}, not {tx_uuid}")
            return result(ReconcileStatus.UNKNOWN_SEQ, outcome, SettledBy.CENTRE, offered, why)
        entry = rows[0]
        evidence = self._evidence(con, entry)
        charged, not_charged = ReconcileOutcome.CHARGED, ReconcileOutcome.NOT_CHARGED
        if entry.state is TxState.UNKNOWN:
            if evidence is not None and (b5 is None or evidence != b5.tac):
                return result(ReconcileStatus.CONFLICT, charged, SettledBy.LANE, evidence,
                              f"the journal holds a B5 result with TAC {evidence.hex()}; the answer was not applied")
            if b5 is not None:
                self._complete(seq, b5, now, TxState.UNKNOWN, message=None,
                               detail=f"reconciled by the centre (answer {answer_id}) with TAC {b5.tac.hex()}")
            else:
                self._not_charged(con, seq, f"the centre found no debit (answer {answer_id})", now)
            return result(ReconcileStatus.APPLIED, outcome, SettledBy.CENTRE, offered, None)
        if entry.state in _SETTLED and evidence is not None:
            if b5 is not None and evidence == b5.tac:
                return result(ReconcileStatus.ALREADY_SETTLED, charged, self._settled_by(con, seq), evidence, None)
            return result(ReconcileStatus.CONFLICT, charged, SettledBy.LANE, evidence,
                          f"the journal holds seq {seq} as {entry.state} with TAC {evidence.hex()}; "
                          "the answer was not applied")
        if entry.state is TxState.REFUSED:
            if outcome is not_charged:
                return result(ReconcileStatus.ALREADY_SETTLED, not_charged, self._settled_by(con, seq), None, None)
            return result(ReconcileStatus.CONFLICT, not_charged, SettledBy.LANE, None,
                          f"the journal holds seq {seq} as refused (never debited); the centre's TAC "
                          f"{offered.hex() if offered else None} was not applied")
        # An intent (its C6 still awaits B5: it was never sent) or a row that is no charge.
        return result(ReconcileStatus.CONFLICT, outcome, SettledBy.LANE, evidence,
                      f"seq {seq} is {entry.state} ({entry.kind}), not an unknown outcome; the answer was not applied")

    def _evidence(self, con: sqlite3.Connection, entry: JournalEntry) -> bytes | None:
        """The TAC the lane holds for a row: its completed result or a kept B5 (``record_b5``)."""
        if entry.b5 is not None:
            return entry.b5.tac
        held = con.execute("SELECT tac FROM b5_results WHERE lane_id = ? AND seq = ?",
                           (self.lane_id, entry.seq)).fetchone()
        return None if held is None else bytes.fromhex(held[0])

    def _settled_by(self, con: sqlite3.Connection, tx_seq: int) -> SettledBy:
        """Who settled a row before: the centre if an answer of its was applied, else the lane."""
        row = con.execute("SELECT 1 FROM reconcile_results WHERE lane_id = ? AND tx_seq = ? AND result = ? "
                          "AND settled_by = ? LIMIT 1", (self.lane_id, tx_seq, ReconcileStatus.APPLIED.value,
                                                         SettledBy.CENTRE.value)).fetchone()
        return SettledBy.CENTRE if row is not None else SettledBy.LANE

    def _record_lane_settlement(self, con: sqlite3.Connection, before: JournalEntry, outcome: ReconcileOutcome,
                                tac: bytes | None, now: dt.datetime) -> ReconcileRecord | None:
        """The lane settled an unknown row itself (C8): tell the centre, if it acked the row as unknown.

        Called by ``Journal.resolve_unknown`` and ``Journal.resolve_not_charged`` inside their
        transaction, so callers need not do anything. ``before`` is the row as it was.
        """
        if before.state is not TxState.UNKNOWN or before.acked_unix is None:
            return None
        return self._append_result(con, tx_seq=before.seq, tx_uuid=before.uuid, outcome=outcome,
                                   settled_by=SettledBy.LANE, result=ReconcileStatus.APPLIED, now=now, tac=tac,
                                   detail="settled on the lane (C8 TAC re-fetch)")

    def _append_result(self, con: sqlite3.Connection, *, tx_seq: int, tx_uuid: str, outcome: ReconcileOutcome,
                       settled_by: SettledBy, result: ReconcileStatus, now: dt.datetime, answer_id: str | None = None,
                       tac: bytes | None = None, detail: str | None = None) -> ReconcileRecord:
        iso, unix = stamp(now)
        con.execute("UPDATE lane_counter SET last_reconcile_seq = last_reconcile_seq + 1 WHERE lane_id = ?",
                    (self.lane_id,))
        seq = int(con.execute("SELECT last_reconcile_seq FROM lane_counter WHERE lane_id = ?",
                              (self.lane_id,)).fetchone()[0])
        # The centre keeps the newest result per transaction: an older one still waiting need not go up.
        con.execute(f"UPDATE reconcile_results SET superseded_by = ? WHERE lane_id = ? AND tx_seq = ? "
                    f"AND {RECONCILE_WAITING}", (seq, self.lane_id, tx_seq))
        record = ReconcileRecord(lane_id=self.lane_id, seq=seq, tx_seq=tx_seq, tx_uuid=tx_uuid, outcome=outcome,
                                 settled_by=settled_by, result=result, at_iso=iso, at_unix=unix, answer_id=answer_id,
                                 tac=tac, detail=detail)
        values = [getattr(record, n) for n in _RECONCILE_COLUMNS]
        values[_RECONCILE_COLUMNS.index("tac")] = None if tac is None else tac.hex()
        values = [v.value if isinstance(v, (ReconcileOutcome, SettledBy, ReconcileStatus)) else v for v in values]
        con.execute(f"INSERT INTO reconcile_results ({', '.join(_RECONCILE_COLUMNS)}) "
                    f"VALUES ({', '.join('?' for _ in _RECONCILE_COLUMNS)})", values)
        return record

    # -- the command ledger (laned.uplink.commands.CommandLedger) ------------------------------------
    def executed(self, command_id: str) -> bool:
        """Whether the command with this id was executed on this lane."""
        with self._reading(f"looking up command {command_id}") as con:
            return con.execute("SELECT 1 FROM commands WHERE lane_id = ? AND command_id = ?",
                               (self.lane_id, command_id)).fetchone() is not None

    def highest_seq(self) -> int | None:
        """The highest seq of an executed command; None before the first."""
        with self._reading("reading the highest command seq") as con:
            value = con.execute("SELECT MAX(seq) FROM commands WHERE lane_id = ?", (self.lane_id,)).fetchone()[0]
        return None if value is None else int(value)

    def command_result(self, command_id: str) -> str | None:
        """The result (JSON text) a command got when it ran, for the answer to a redelivery."""
        with self._reading(f"looking up the result of command {command_id}") as con:
            row = con.execute("SELECT result_json FROM commands WHERE lane_id = ? AND command_id = ?",
                              (self.lane_id, command_id)).fetchone()
        return None if row is None else str(row[0])

    def last_command_of(self, commands: tuple[str, ...]) -> tuple[str, str, str] | None:
        """Of the executed commands named ``commands``, the one with the highest seq:
        (command, command_id, result JSON); None if none ran (e.g. close_etc/open_etc at start)."""
        marks = ", ".join("?" for _ in commands)
        with self._reading(f"looking up the last of {', '.join(commands)}") as con:
            row = con.execute(f"SELECT command, command_id, result_json FROM commands WHERE lane_id = ? AND command "
                              f"IN ({marks}) ORDER BY seq DESC LIMIT 1", (self.lane_id, *commands)).fetchone()
        return None if row is None else (str(row[0]), str(row[1]), str(row[2]))

    def record_command(self, command_id: str, seq: int, command: str, result_json: str, now: dt.datetime) -> None:
        """Note an executed command. Call it inside ``batch()`` with the action's own record:
        one commit, both or neither. A second record of one id is refused (at most once)."""
        if not isinstance(command_id, str) or not command_id:
            raise JournalError(f"command_id is {command_id!r}, expected the command's id")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise JournalError(f"command {command_id}: seq is {seq!r}, expected a whole number")
        try:
            json.loads(result_json)
        except (TypeError, ValueError):
            raise JournalError(f"command {command_id}: the result is not JSON text: {result_json!r:.80}") from None
        iso, unix = stamp(now)
        with self._writing(f"recording command {command_id} (seq {seq}) as executed") as con:
            if con.execute("SELECT 1 FROM commands WHERE lane_id = ? AND command_id = ?",
                           (self.lane_id, command_id)).fetchone() is not None:
                raise JournalError(f"journal {self.path}: command {command_id} is already recorded as executed")
            con.execute("INSERT INTO commands (lane_id, command_id, seq, command, result_json, executed_iso, "
                        "executed_unix) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (self.lane_id, command_id, seq, str(command), result_json, iso, unix))
