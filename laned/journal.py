"""The durable transaction journal: SQLite in WAL mode with ``synchronous=FULL``.

Rule 2 of ARCHITECTURE.md — no charged transaction is lost, none is charged twice — rests
on this module:

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
the caller: the journal reads no clock.

The API is synchronous: writes are a few hundred bytes and the lane must not send C6
before the intent is durable, so there is nothing to overlap. One :class:`Journal` per
lane and per process: :meth:`Journal.open` takes an exclusive lock next to the database,
because crash recovery would otherwise mark another live process's intent unknown.

Card numbers and plates are stored in full (the centre needs them); ``repr`` and
:meth:`JournalEntry.masked` show them masked (``laned.masking``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import enum
import fcntl
import logging
import os
import re
import sqlite3
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping

from laned.lane.machine import Paid
from laned.lane.outcomes import OUTCOMES, Reason
from laned.masking import mask_card, mask_plate

log = logging.getLogger("laned.journal")

SCHEMA_VERSION = 1
BATCH = 500  # rows per query when iterating
U32_MAX = 0xFFFF_FFFF  # money is unsigned 32-bit fen on the wire (RSU_PROTOCOL.md)


# -- errors -----------------------------------------------------------------------------------

class JournalError(Exception):
    """The journal could not do what was asked; the message names the file, the row and why."""


class JournalTransitionError(JournalError):
    """A state change the row's state does not allow (e.g. a second, different TAC)."""


# -- codes --------------------------------------------------------------------------------------

class TxKind(enum.StrEnum):
    EXIT_CHARGE = "exit_charge"  # C6 debits the card
    ENTRY_WRITE = "entry_write"  # C6 writes the entry record (no toll)
    REFUSAL = "refusal"  # the vehicle was sent to the manual lane
    FOLLOW_CAR = "follow_car"  # a vehicle passed without a transaction (跟车)
    PAID_ON_RECORD = "paid_on_record"  # seen again after paying, let through on its record
    ALARM = "alarm"


CHARGE_KINDS = frozenset({TxKind.EXIT_CHARGE, TxKind.ENTRY_WRITE})


class TxState(enum.StrEnum):
    INTENT = "intent"  # C6 may have gone out; no result yet
    CHARGED = "charged"
    ENTRY_WRITTEN = "entry_written"
    REFUSED = "refused"
    UNKNOWN = "unknown"  # the card may have been debited: reconciliation
    EVENT = "event"  # a lane event, not a charge


_DONE = {TxKind.EXIT_CHARGE: TxState.CHARGED, TxKind.ENTRY_WRITE: TxState.ENTRY_WRITTEN}
# States in which the vehicle has, or may have, paid: the re-detection window covers them.
_MAY_HAVE_PAID = (TxState.INTENT, TxState.CHARGED, TxState.ENTRY_WRITTEN, TxState.UNKNOWN)
_EVENT_KIND = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


# -- what goes in ---------------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    """JSON-friendly: bytes as hex, times ISO, enums by value, results as dicts."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    return value


@dataclass(frozen=True, kw_only=True, repr=False)
class Observed:
    """What B2–B4 said about the OBU, the vehicle and the card, and how the lane priced it."""

    obu_id: bytes | None = None
    issuer: bytes | None = None
    obu_serial: bytes | None = None
    contract_start: dt.date | None = None
    contract_expiry: dt.date | None = None
    obu_status: bytes | None = None
    plate: str | None = None
    plate_colour: int | None = None
    vehicle_class: int | None = None
    card_network: str | None = None
    card_number: str | None = None
    card_type: int | None = None
    balance_before: int | None = None
    entry_station: str | None = None  # "3701-0102", StationRecord.station_key
    fee: int | None = None
    fee_table_version: int | None = None
    status_list_version: int | None = None

    @property
    def card_key(self) -> str | None:
        """Network + card number, as status lists and the re-detection window name a card."""
        if self.card_network is None or self.card_number is None:
            return None
        return self.card_network + self.card_number

    def as_dict(self) -> dict[str, Any]:
        """Every field in full, JSON-friendly (bytes as hex, times ISO) — for the uplink."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def masked(self) -> dict[str, Any]:
        """Every field for people: as :meth:`as_dict`, the card number and plate masked."""
        out = self.as_dict()
        network, number = out.pop("card_network"), out.pop("card_number")
        out["card"] = None if number is None else mask_card((network or "") + number)
        out["plate"] = None if self.plate is None else mask_plate(self.plate)
        return out

    _REPR_FIRST: ClassVar[tuple[str, ...]] = ()

    def __repr__(self) -> str:
        shown = self.masked()
        first = [(k, shown.pop(k)) for k in self._REPR_FIRST]
        rest = [(k, v) for k, v in shown.items() if v is not None]
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in first + rest)})"


@dataclass(frozen=True, kw_only=True, repr=False)
class TransactionIntent(Observed):
    """A C6 about to be sent: journalled durably first."""

    kind: TxKind = TxKind.EXIT_CHARGE
    amount: int  # ConsumeMoney in the C6, fen
    purchase_time: dt.datetime  # PurchaseTime in the C6 (the card's TAC covers it)
    tx_id: str | None = None  # the lane machine's transaction id; a new UUID if None


@dataclass(frozen=True, kw_only=True)
class B5Result:
    """A successful B5 (or the B5 answering a C8 TAC re-fetch)."""

    tac: bytes
    psam_no: bytes | None = None
    psam_trans_serial: int | None = None
    icc_pay_serial: int | None = None
    trans_type: int | None = None
    balance_after: int | None = None
    trans_time: dt.datetime | None = None


@dataclass(frozen=True, kw_only=True, repr=False)
class JournalEntry(Observed):
    """One row of the journal, as stored."""

    seq: int
    uuid: str
    lane_id: str
    kind: str  # a TxKind value; events may carry other kinds
    state: TxState
    reconciled: bool
    created_iso: str
    created_unix: float
    updated_iso: str
    updated_unix: float
    amount: int | None = None
    purchase_time: dt.datetime | None = None
    b5: B5Result | None = None  # the result that completed it
    reason: str | None = None  # outcome code (laned.lane.outcomes.Reason values)
    message: str | None = None  # what the fee display showed
    detail: str | None = None  # why it is unknown, what reconciled it, …

    _REPR_FIRST = ("seq", "lane_id", "kind", "state")


@dataclass(frozen=True)
class Recovery:
    """What :meth:`Journal.open` found left over from a crash."""

    completed: tuple[int, ...] = ()  # intents/unknowns whose B5 result was journalled
    unknown: tuple[int, ...] = ()  # intents with no result: now unknown, to reconcile (C8)


# -- storage ------------------------------------------------------------------------------------------

_BYTES = frozenset({"obu_id", "issuer", "obu_serial", "obu_status", "tac", "psam_no"})
_DATES = frozenset({"contract_start", "contract_expiry"})
_DATETIMES = frozenset({"purchase_time", "trans_time"})
_OBSERVED = tuple(f.name for f in dataclasses.fields(Observed))
_B5 = tuple(f.name for f in dataclasses.fields(B5Result))


def _to_db(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name in _BYTES:
        return bytes(value).hex()
    if name in _DATES or name in _DATETIMES:
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    return value


def _from_db(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name in _BYTES:
        return bytes.fromhex(value)
    if name in _DATES:
        return dt.date.fromisoformat(value)
    if name in _DATETIMES:
        return dt.datetime.fromisoformat(value)
    if name == "state":
        return TxState(value)
    if name == "reconciled":
        return bool(value)
    return value


_SCHEMA_V1 = f"""
CREATE TABLE lane_counter (
    lane_id TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL CHECK (last_seq >= 0)
);
CREATE TABLE transactions (
    lane_id TEXT NOT NULL,
    seq INTEGER NOT NULL CHECK (seq > 0),
    uuid TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ({", ".join(repr(s.value) for s in TxState)})),
    reconciled INTEGER NOT NULL DEFAULT 0 CHECK (reconciled IN (0, 1)),
    created_iso TEXT NOT NULL, created_unix REAL NOT NULL,
    updated_iso TEXT NOT NULL, updated_unix REAL NOT NULL,
    obu_id TEXT, issuer TEXT, obu_serial TEXT, contract_start TEXT, contract_expiry TEXT, obu_status TEXT,
    plate TEXT, plate_colour INTEGER, vehicle_class INTEGER,
    card_network TEXT, card_number TEXT, card_type INTEGER, balance_before INTEGER,
    entry_station TEXT, fee INTEGER, amount INTEGER CHECK (amount BETWEEN 0 AND {U32_MAX}), purchase_time TEXT,
    tac TEXT, psam_no TEXT, psam_trans_serial INTEGER, icc_pay_serial INTEGER, trans_type INTEGER,
    balance_after INTEGER, trans_time TEXT,
    fee_table_version INTEGER, status_list_version INTEGER,
    reason TEXT, message TEXT, detail TEXT,
    PRIMARY KEY (lane_id, seq)
);
CREATE INDEX transactions_state ON transactions (lane_id, state);
CREATE INDEX transactions_obu ON transactions (lane_id, obu_id, created_unix);
CREATE INDEX transactions_card ON transactions (lane_id, card_network, card_number, created_unix);
-- What the RSU answered, kept apart from the state so a result is never lost even when the
-- state change could not follow (Journal.record_b5). open() applies any it finds pending.
CREATE TABLE b5_results (
    lane_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    tac TEXT NOT NULL,
    psam_no TEXT, psam_trans_serial INTEGER, icc_pay_serial INTEGER, trans_type INTEGER,
    balance_after INTEGER, trans_time TEXT,
    received_iso TEXT NOT NULL, received_unix REAL NOT NULL,
    PRIMARY KEY (lane_id, seq),
    FOREIGN KEY (lane_id, seq) REFERENCES transactions (lane_id, seq)
);
"""

# MIGRATIONS[n] takes a database at user_version n to n + 1. Append, never edit.
MIGRATIONS: tuple[str, ...] = (_SCHEMA_V1,)
assert len(MIGRATIONS) == SCHEMA_VERSION


def _entry(names: list[str], row: tuple[Any, ...]) -> JournalEntry:
    values = {n: _from_db(n, v) for n, v in zip(names, row)}
    result = {n: values.pop(n) for n in _B5}
    return JournalEntry(**values, b5=B5Result(**result) if result["tac"] is not None else None)


def _stamp(now: dt.datetime) -> tuple[str, float]:
    if not isinstance(now, dt.datetime):
        raise JournalError(f"now must be a datetime, got {now!r}")
    return now.isoformat(), now.timestamp()


def _check_money(what: str, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= U32_MAX):
        raise JournalError(f"{what} is {value!r}, expected whole fen 0–{U32_MAX}")


# -- the journal --------------------------------------------------------------------------------------

class Journal:
    """The transaction journal of one lane. Open with :meth:`open`; use as a context manager."""

    def __init__(self, con: sqlite3.Connection, path: Path, lane_id: str, lock_fd: int) -> None:
        self._con = con
        self.path = path
        self.lane_id = lane_id
        self._lock_fd: int | None = lock_fd
        self.recovery = Recovery()

    # -- lifetime --------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike[str], lane_id: str, *, now: dt.datetime) -> "Journal":
        """Open (creating or migrating) the journal and recover what a crash left.

        ``now`` stamps the rows recovery changes. :attr:`recovery` says what was found.
        """
        if not isinstance(lane_id, str) or not lane_id.strip():
            raise JournalError(f"lane_id is {lane_id!r}, expected a non-empty name")
        p = Path(path)
        lock_fd = cls._lock(p)
        try:
            # Card numbers and plates in full: the file (and the -wal/-shm SQLite derives from
            # it) is for laned alone.
            os.close(os.open(p, os.O_WRONLY | os.O_CREAT, 0o600))
            con = sqlite3.connect(p, isolation_level=None, timeout=5.0)
        except (OSError, sqlite3.Error) as err:
            os.close(lock_fd)
            raise JournalError(f"journal {p}: cannot open: {err}") from err
        journal = cls(con, p, lane_id, lock_fd)
        try:
            journal._configure()
            journal._migrate()
            journal._init_counter()
            journal.recovery = journal._recover(now)
        except BaseException:
            journal.close()
            raise
        return journal

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

    def close(self) -> None:
        if self._lock_fd is None:
            return
        try:
            self._con.close()
        finally:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _writing(self, what: str) -> Iterator[sqlite3.Connection]:
        """One write transaction; durable when the block ends without an exception."""
        if self._lock_fd is None:
            raise JournalError(f"journal {self.path}: {what}: the journal is closed")
        con = self._con
        try:
            con.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as err:
            raise JournalError(f"journal {self.path}: {what} failed: {err}") from err
        try:
            yield con
            con.execute("COMMIT")
        except BaseException as err:
            with contextlib.suppress(sqlite3.Error):
                con.execute("ROLLBACK")
            if isinstance(err, sqlite3.Error):
                raise JournalError(f"journal {self.path}: {what} failed: {err}") from err
            raise

    @contextlib.contextmanager
    def _reading(self, what: str) -> Iterator[sqlite3.Connection]:
        if self._lock_fd is None:
            raise JournalError(f"journal {self.path}: {what}: the journal is closed")
        try:
            yield self._con
        except sqlite3.Error as err:
            raise JournalError(f"journal {self.path}: {what} failed: {err}") from err

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
        sets = ", ".join(f"{k} = ?" for k in values)
        con.execute(f"UPDATE transactions SET {sets} WHERE lane_id = ? AND seq = ?",
                    (*values.values(), self.lane_id, seq))

    def _select(self, con: sqlite3.Connection, where: str, args: tuple[Any, ...], tail: str = "") -> list[JournalEntry]:
        cur = con.execute(f"SELECT * FROM transactions WHERE lane_id = ? AND ({where}) {tail}", (self.lane_id, *args))
        names = [d[0] for d in cur.description]
        return [_entry(names, row) for row in cur.fetchall()]

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
            _check_money(what, getattr(facts, what))
        return {n: _to_db(n, getattr(facts, n)) for n in _OBSERVED}

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
        _check_money("amount", intent.amount)
        if not isinstance(intent.purchase_time, dt.datetime):
            raise JournalError(f"purchase_time is {intent.purchase_time!r}, expected a datetime")
        iso, unix = _stamp(now)
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
                              detail=f"reconciled with TAC {b5.tac.hex()}")

    def _complete(self, seq: int, b5: B5Result, now: dt.datetime, from_state: TxState, *,
                  message: str | None, detail: str | None) -> JournalEntry:
        if not isinstance(b5.tac, bytes) or len(b5.tac) != 4:
            raise JournalError(f"seq {seq}: the TAC is {b5.tac!r}, expected 4 bytes")
        _check_money("balance_after", b5.balance_after)
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
        iso, unix = _stamp(now)
        values = {n: _to_db(n, getattr(b5, n)) for n in _B5}
        values.update(lane_id=self.lane_id, seq=seq, received_iso=iso, received_unix=unix)
        con.execute(f"INSERT INTO b5_results ({', '.join(values)}) VALUES ({', '.join('?' for _ in values)})",
                    tuple(values.values()))

    def _apply_b5(self, con: sqlite3.Connection, entry: JournalEntry, b5: B5Result, now: dt.datetime, *,
                  message: str | None, detail: str | None) -> None:
        try:
            done = _DONE[TxKind(entry.kind)]
        except (KeyError, ValueError):
            raise JournalTransitionError(f"journal {self.path}: seq {entry.seq} is a {entry.kind}, "
                                         "not a charge; it takes no B5 result") from None
        iso, unix = _stamp(now)
        values: dict[str, Any] = {n: _to_db(n, getattr(b5, n)) for n in _B5}
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
        iso, unix = _stamp(now)
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
            iso, unix = _stamp(now)
            self._update(con, seq, {"state": TxState.REFUSED.value, "reconciled": 1, "reason": "charge_failed",
                                    "detail": reason, "updated_iso": iso, "updated_unix": unix})
            return self._row(con, seq)

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
        if kind in (TxKind.EXIT_CHARGE, TxKind.ENTRY_WRITE, TxKind.REFUSAL) or not _EVENT_KIND.match(kind):
            raise JournalError(f"event kind {kind!r}: expected a lower-case code like 'follow_car' "
                               "(charges and refusals have their own calls)")
        return self._record(kind, TxState.EVENT, facts, reason or kind, now, message=message, detail=detail,
                            tx_id=tx_id)

    def _record(self, kind: str, state: TxState, facts: Observed | None, reason: str, now: dt.datetime, *,
                message: str | None, tx_id: str | None, detail: str | None = None) -> JournalEntry:
        iso, unix = _stamp(now)
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
                f"SELECT seq, {', '.join(_B5)} FROM b5_results WHERE lane_id = ?", (self.lane_id,))}
            for entry in left:
                held = results.get(entry.seq)
                if held is not None:
                    b5 = B5Result(**{n: _from_db(n, v) for n, v in zip(_B5, held)})
                    detail = f"completed at start-up from the journalled B5 (TAC {b5.tac.hex()})"
                    self._apply_b5(con, entry, b5, now, message=None, detail=detail)
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
        _, since_unix = _stamp(since)
        clauses, args = [], []
        if obu_id is not None:
            clauses.append("obu_id = ?")
            args.append(obu_id.hex())
        if card_key is not None:
            clauses.append("(card_network = ? AND card_number = ?)")
            args += [card_key[:4], card_key[4:]]
        states = ", ".join("?" for _ in _MAY_HAVE_PAID)
        with self._reading("looking up a recent charge") as con:
            rows = self._select(con, f"({' OR '.join(clauses)}) AND state IN ({states}) AND created_unix >= ?",
                                (*args, *(s.value for s in _MAY_HAVE_PAID), since_unix), "ORDER BY seq DESC LIMIT 1")
        return rows[0] if rows else None

    def paid_since(self, since: dt.datetime) -> list[JournalEntry]:
        """Every charge (or write) that paid or may have paid since ``since``, oldest first."""
        _, since_unix = _stamp(since)
        states = ", ".join("?" for _ in _MAY_HAVE_PAID)
        with self._reading("listing recent charges") as con:
            return self._select(con, f"state IN ({states}) AND created_unix >= ?",
                                (*(s.value for s in _MAY_HAVE_PAID), since_unix), "ORDER BY seq")

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


# -- the executor's port -------------------------------------------------------------------------

_RECORD_FIELDS = frozenset(_OBSERVED)


def _observed_from(record: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k in _RECORD_FIELDS}


class MachineJournal:
    """The journal as the lane executor wants it (``laned.executor.JournalPort``).

    Takes the lane machine's record dicts (``LaneMachine._record``) and its B5 result
    dicts, and writes them through a :class:`Journal`; display messages come from the
    outcome table.
    """

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def _check_lane(self, record: Mapping[str, Any]) -> None:
        lane = record.get("lane_id")
        if lane is not None and lane != self.journal.lane_id:
            raise JournalError(f"a record of lane {lane!r} offered to the journal of lane {self.journal.lane_id!r}")

    def record_intent(self, record: dict[str, Any], now: dt.datetime) -> int:
        self._check_lane(record)
        kind = TxKind.ENTRY_WRITE if record.get("direction") == "entry" else TxKind.EXIT_CHARGE
        intent = TransactionIntent(**_observed_from(record), kind=kind, amount=record.get("fee") or 0,
                                   purchase_time=record["purchase_time"], tx_id=record.get("tx_id"))
        return self.journal.record_intent(intent, now).seq

    def complete(self, seq: int, result: dict[str, Any], now: dt.datetime, *, entry: bool) -> None:
        kind = self.journal.get(seq).kind
        if (kind == TxKind.ENTRY_WRITE) != entry:
            raise JournalError(f"seq {seq} is a {kind}, but the lane completed it as "
                               f"{'an entry write' if entry else 'a charge'}")
        b5 = B5Result(**{k: result.get(k) for k in _B5})
        self.journal.complete_charge(seq, b5, now, message=_message("entry_written" if entry else "charged"))

    def mark_unknown(self, seq: int, reason: str, now: dt.datetime) -> None:
        self.journal.mark_unknown(seq, reason, now, message=_message("outcome_unknown"))

    def not_charged(self, seq: int, reason: str, now: dt.datetime) -> None:
        """The RSU's B5 error says the card was never asked to debit: refused, reconciled."""
        self.journal.mark_unknown(seq, reason, now, message=_message("charge_failed"))
        self.journal.resolve_not_charged(seq, reason, now)

    def record_refusal(self, record: dict[str, Any], now: dt.datetime) -> None:
        self._check_lane(record)
        reason = str(record["reason"])
        self.journal.record_refusal(Observed(**_observed_from(record)), reason, now, message=_message(reason),
                                    tx_id=record.get("tx_id"))

    def record_event(self, kind: str, record: dict[str, Any], now: dt.datetime) -> None:
        self._check_lane(record)
        reason = str(record.get("reason") or kind)
        self.journal.record_event(kind, now, facts=Observed(**_observed_from(record)), reason=reason,
                                  message=_message(reason), tx_id=record.get("tx_id"))

    def recent_paid(self, window_s: float, wall: dt.datetime, monotonic: float) -> list[Paid]:
        """The machine's re-detection list after a restart (``LaneMachine(recent=…)``).

        Journal rows carry wall-clock times, the machine counts in monotonic seconds: each
        row's age on the wall clock is carried over to the monotonic clock.
        """
        since = wall - dt.timedelta(seconds=window_s)
        now_unix = wall.timestamp()
        return [Paid(e.obu_id or b"", e.card_key, monotonic - max(0.0, now_unix - e.created_unix), e.seq,
                     settled=e.state in (TxState.CHARGED, TxState.ENTRY_WRITTEN))
                for e in self.journal.paid_since(since)]


def _message(reason: str) -> str | None:
    try:
        outcome = OUTCOMES[Reason(reason)]
    except ValueError:
        return None
    return f"{outcome.line1} {outcome.line2}"
