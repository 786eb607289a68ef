"""The reference centre's SQLite file: its tables, and how it is opened.

One file per centre (``laned centre run --db``). WAL mode with ``synchronous=FULL``: a
commit is on disk before the centre acknowledges anything it holds (``tx/ack`` tells the
lane it may forget the row, so an ack for a row the centre could still lose would lose it
for good). The file holds plates and card numbers in full, so it is created 0600.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from laned.centre.errors import CentreStorageError

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 5.0  # the CLI (status, answer, send-command) reads and writes beside a running centre

SCHEMA = """
CREATE TABLE IF NOT EXISTS transactions (
    lane_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    tx_uuid TEXT NOT NULL,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    reconcile_required INTEGER NOT NULL,
    reconciled INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    updated_unix REAL NOT NULL,
    amount INTEGER,
    plate TEXT,
    card_number TEXT,
    payload TEXT NOT NULL,          -- the Transaction message as received (JSON)
    received_at TEXT NOT NULL,
    updates INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (lane_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS transactions_unknown ON transactions (lane_id, seq) WHERE state = 'unknown';

-- Same (lane_id, seq), another tx_uuid: never overwrites the stored row, kept here for a person.
CREATE TABLE IF NOT EXISTS conflicts (
    id INTEGER PRIMARY KEY,
    lane_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    tx_uuid TEXT NOT NULL,
    stored_uuid TEXT NOT NULL,
    payload TEXT NOT NULL,
    received_at TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS reconcile_results (
    lane_id TEXT NOT NULL,
    seq INTEGER NOT NULL,           -- the transaction's seq: the reconcile stream's seq
    tx_uuid TEXT NOT NULL,
    outcome TEXT NOT NULL,
    settled_by TEXT NOT NULL,
    result TEXT NOT NULL,
    answer_id TEXT,
    at TEXT NOT NULL,
    payload TEXT NOT NULL,
    received_at TEXT NOT NULL,
    PRIMARY KEY (lane_id, seq)
) WITHOUT ROWID;

-- The centre's answers on unknown outcomes, repeated until the lane's result is here.
CREATE TABLE IF NOT EXISTS reconcile_answers (
    lane_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    answer_id TEXT NOT NULL UNIQUE,
    tx_uuid TEXT NOT NULL,
    outcome TEXT NOT NULL,
    decided_by TEXT NOT NULL,       -- auto:<policy> or operator
    payload TEXT NOT NULL,
    sent_count INTEGER NOT NULL DEFAULT 0,
    last_sent_unix REAL,
    PRIMARY KEY (lane_id, seq)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS lanes (
    lane_id TEXT PRIMARY KEY,
    received INTEGER NOT NULL DEFAULT 0,
    stored INTEGER NOT NULL DEFAULT 0,
    updated INTEGER NOT NULL DEFAULT 0,
    duplicates_dropped INTEGER NOT NULL DEFAULT 0,
    conflicts INTEGER NOT NULL DEFAULT 0,
    reconcile_received INTEGER NOT NULL DEFAULT 0,
    invalid INTEGER NOT NULL DEFAULT 0,
    state TEXT,
    state_payload TEXT,
    state_seen TEXT,
    health_payload TEXT,
    health_seen TEXT,
    versions_payload TEXT,
    versions_seen TEXT,
    last_seen TEXT
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS alarms (
    lane_id TEXT NOT NULL,
    code TEXT NOT NULL,
    change TEXT NOT NULL,
    severity TEXT NOT NULL,
    at TEXT NOT NULL,
    payload TEXT NOT NULL,
    PRIMARY KEY (lane_id, code)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS command_seqs (
    lane_id TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS commands (
    command_id TEXT PRIMARY KEY,
    lane_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    command TEXT NOT NULL,
    issued_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    payload TEXT NOT NULL,
    outcome TEXT,
    result_payload TEXT
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS lists (
    kind TEXT NOT NULL,
    version INTEGER NOT NULL,
    manifest TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (kind, version)
) WITHOUT ROWID;
"""


def connect(path: Path | str) -> sqlite3.Connection:
    """Open (or create, 0600) the centre's database with its schema; autocommit mode, so
    every write is an explicit ``BEGIN IMMEDIATE … COMMIT``."""
    where = str(path)
    try:
        if where != ":memory:":
            os.close(os.open(where, os.O_WRONLY | os.O_CREAT, 0o600))
        # The service reaches the connection from its one database thread and the caller's
        # (guarded by the ledger's lock), hence check_same_thread=False.
        con = sqlite3.connect(where, isolation_level=None, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
        version = con.execute("PRAGMA user_version").fetchone()[0]
        if version not in (0, SCHEMA_VERSION):
            con.close()
            raise CentreStorageError(f"centre database {where} has schema version {version}; this laned "
                                     f"knows version {SCHEMA_VERSION}: use a database made by this version")
        con.executescript(SCHEMA)
        con.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except (OSError, sqlite3.Error) as err:
        raise CentreStorageError(f"cannot open the centre database {where}: {err}") from None
    return con
