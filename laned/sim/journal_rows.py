"""What the simulator reads of the daemon's journal: read-only, beside the daemon's writer.

The simulated lane (:mod:`laned.sim.lane_sim`) reads the journal file the daemon writes
(WAL mode: a reader never blocks the writer) to learn what the lane decided about each
vehicle; a state folder holding a journal is a previous run (``--resume``).
"""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

log = logging.getLogger("laned.sim")

JOURNAL_NAME = "journal.db"


def previous_run(state_dir: str | Path) -> Path | None:
    """The journal a previous run left in ``state_dir``, if any."""
    journal = Path(state_dir) / JOURNAL_NAME
    return journal if journal.exists() else None


def last_seq(journal: Path) -> int:
    """The highest transaction seq in a previous run's journal (0: none, or unreadable)."""
    try:
        db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=1.0)
        try:
            row = db.execute("SELECT MAX(seq) FROM transactions").fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        return 0
    return int(row[0] or 0) if row else 0


def transaction_rows(journal: Path, after_seq: int) -> list[dict[str, Any]] | None:
    """The journal's rows above ``after_seq`` in seq order (state, reason, obu_id, amount,
    fee, kind); None while the file is not there or not readable yet (the daemon creating it)."""
    if not journal.exists():
        return None
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=1.0)
    try:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT state, reason, obu_id, amount, fee, kind FROM transactions "
                                            "WHERE seq > ? ORDER BY seq", (after_seq,))]
    except sqlite3.Error as err:
        log.debug("simulation: journal not readable yet (%s)", err)
        return None
    finally:
        db.close()
