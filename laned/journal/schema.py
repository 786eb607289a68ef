"""The journal's SQLite schema, its migrations, and how values go to and come from a row."""

from __future__ import annotations

import datetime as dt
import enum
import functools
import operator
import sys
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from laned.journal.errors import JournalError
from laned.journal.records import (
    B5_FIELDS, U32_MAX, B5Result, JournalEntry, ReconcileOutcome, ReconcileStatus, SettledBy, TxState,
)

SCHEMA_VERSION = 2

_BYTES = frozenset({"obu_id", "issuer", "obu_serial", "obu_status", "tac", "psam_no"})
_DATES = frozenset({"contract_start", "contract_expiry"})
_DATETIMES = frozenset({"purchase_time", "trans_time"})


def to_db(name: str, value: Any) -> Any:
    if value is None:
        return None
    if name in _BYTES:
        return bytes(value).hex()
    if name in _DATES or name in _DATETIMES:
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    return value


# How a stored value comes back, by column; the other columns are stored as they are.
_PARSERS: Mapping[str, Callable[[Any], Any]] = types.MappingProxyType({
    **dict.fromkeys(_BYTES, bytes.fromhex),
    **dict.fromkeys(_DATES, dt.date.fromisoformat),
    **dict.fromkeys(_DATETIMES, dt.datetime.fromisoformat),
    "state": TxState,
    "reconciled": bool,
})


def from_db(name: str, value: Any) -> Any:
    if value is None:
        return None
    parse = _PARSERS.get(name)
    return value if parse is None else parse(value)


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

# Version 2 (issue 10): the outbox to the centre, the reconciliation results, the command ledger.
# The outbox is the transactions table itself: a final row (state != 'intent') whose
# acked_unix is NULL waits for the centre's tx/ack. Rows of a v1 file all start unacked, so
# after the upgrade everything goes up once more (the centre de-duplicates on (lane_id, seq)).
# The partial index holds only what waits, so a scan or a count of the backlog reads the
# backlog, not the whole history; queries must spell its condition literally (state !=
# 'intent', not a parameter) for SQLite to use it.
_SCHEMA_V2 = f"""
ALTER TABLE transactions ADD COLUMN acked_unix REAL;
CREATE INDEX transactions_outbox ON transactions (lane_id, seq)
    WHERE acked_unix IS NULL AND state != 'intent';
-- Reconciliation results (topic reconcile/result). On the wire a result's seq is its
-- transaction's (the centre keys and acks them by it); the journal numbers them too (seq
-- here, per lane, never reused: lane_counter.last_reconcile_seq) to keep their order and
-- to tell two results of one transaction apart.
ALTER TABLE lane_counter ADD COLUMN last_reconcile_seq INTEGER NOT NULL DEFAULT 0;
CREATE TABLE reconcile_results (
    lane_id TEXT NOT NULL,
    seq INTEGER NOT NULL CHECK (seq > 0),
    tx_seq INTEGER NOT NULL,
    tx_uuid TEXT NOT NULL,
    outcome TEXT NOT NULL CHECK (outcome IN ({", ".join(repr(s.value) for s in ReconcileOutcome)})),
    settled_by TEXT NOT NULL CHECK (settled_by IN ({", ".join(repr(s.value) for s in SettledBy)})),
    result TEXT NOT NULL CHECK (result IN ({", ".join(repr(s.value) for s in ReconcileStatus)})),
    at_iso TEXT NOT NULL, at_unix REAL NOT NULL,
    answer_id TEXT UNIQUE,
    tac TEXT,
    detail TEXT,
    acked_unix REAL,
    -- A newer result for the same transaction replaces this one at the centre (it keys
    -- results by the transaction's seq): it no longer needs to go up.
    superseded_by INTEGER,
    PRIMARY KEY (lane_id, seq)
);
CREATE INDEX reconcile_results_tx ON reconcile_results (lane_id, tx_seq);
CREATE INDEX reconcile_results_outbox ON reconcile_results (lane_id, seq)
    WHERE acked_unix IS NULL AND superseded_by IS NULL;
-- The executed-command ledger (laned.uplink.commands.CommandLedger): written in the same
-- SQLite transaction as the action's own journal record, so a crash leaves both or neither.
CREATE TABLE commands (
    lane_id TEXT NOT NULL,
    command_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    command TEXT NOT NULL,
    result_json TEXT NOT NULL,
    executed_iso TEXT NOT NULL, executed_unix REAL NOT NULL,
    PRIMARY KEY (lane_id, command_id)
);
CREATE INDEX commands_seq ON commands (lane_id, seq);
"""

# MIGRATIONS[n] takes a database at user_version n to n + 1. Append, never edit.
MIGRATIONS: tuple[str, ...] = (_SCHEMA_V1, _SCHEMA_V2)
assert len(MIGRATIONS) == SCHEMA_VERSION


RowReader = Callable[[Sequence[Any]], JournalEntry]


def entry_from_row(names: Sequence[str], row: Sequence[Any]) -> JournalEntry:
    return row_reader(names)(row)


def row_reader(names: Sequence[str]) -> RowReader:
    """What turns a row with these columns into a :class:`JournalEntry`, as :func:`from_db`
    reads each value. Which columns need parsing and where the B5 result lies are worked out
    once per column list, not on every row of an outbox scan."""
    return _row_reader(tuple(names))


@functools.lru_cache(maxsize=16)
def _row_reader(columns: tuple[str, ...]) -> RowReader:
    # Interned, the names are the very objects a class's __init__ names its parameters with:
    # Python matches keywords by identity first and otherwise compares the text with every
    # parameter's (SQLite's column names are new strings each query).
    names = tuple(sys.intern(n) for n in columns)
    if len(set(names)) != len(names) or not set(B5_FIELDS) <= set(names) or "b5" in names:
        return functools.partial(_entry_from_cells, names)
    width = len(names)
    parsed = tuple((i, _PARSERS[n]) for i, n in enumerate(names) if n in _PARSERS)
    tac = names.index("tac")
    make_b5 = _maker(B5Result, names, B5_FIELDS)
    # The entry is made from the row's cells with the B5 result appended as a last cell.
    with_b5 = (*names, "b5")
    make_entry = _maker(JournalEntry, with_b5, tuple(n for n in with_b5 if n not in B5_FIELDS))

    def read(row: Sequence[Any]) -> JournalEntry:
        if len(row) != width:
            return _entry_from_cells(names, row)
        cells = list(row)
        for i, parse in parsed:  # in column order, as from_db: the first bad value is the one named
            if cells[i] is not None:
                cells[i] = parse(cells[i])
        cells.append(None if cells[tac] is None else make_b5(cells))
        entry: JournalEntry = make_entry(cells)
        return entry
    return read


def _maker(cls: type, names: tuple[str, ...], keys: tuple[str, ...]) -> Callable[[list[Any]], Any]:
    """``cls(**{k: cells[names.index(k)] for k in keys})`` as one precomputed step."""
    pick = _picker(tuple(names.index(k) for k in keys))
    return lambda cells: cls(**dict(zip(keys, pick(cells))))


def _picker(indexes: tuple[int, ...]) -> Callable[[list[Any]], tuple[Any, ...]]:
    if len(indexes) == 1:  # itemgetter of one index gives the item, not a 1-tuple
        (only,) = indexes
        return lambda cells: (cells[only],)
    return operator.itemgetter(*indexes)


def _entry_from_cells(names: Sequence[str], row: Sequence[Any]) -> JournalEntry:
    """Any shape of row (a column twice, a B5 column missing, a short row): value by value."""
    values = {n: from_db(n, v) for n, v in zip(names, row)}
    result = {n: values.pop(n) for n in B5_FIELDS}
    return JournalEntry(**values, b5=B5Result(**result) if result["tac"] is not None else None)


def stamp(now: dt.datetime) -> tuple[str, float]:
    if not isinstance(now, dt.datetime):
        raise JournalError(f"now must be a datetime, got {now!r}")
    return now.isoformat(), now.timestamp()


def check_money(what: str, value: int | None) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= U32_MAX):
        raise JournalError(f"{what} is {value!r}, expected whole fen 0–{U32_MAX}")
