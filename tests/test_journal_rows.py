"""How a journal row comes back (laned.journal.schema.entry_from_row): its precomputed reader
gives what reading value by value with from_db gave — the same entry, the same field types,
the same errors — for every kind of row and for column lists of any shape."""

from __future__ import annotations

import dataclasses
import datetime as dt
import sqlite3
from collections.abc import Sequence
from typing import Any

import pytest

from laned.journal import B5Result, Journal, Observed, TransactionIntent, TxKind, TxState
from laned.journal.records import B5_FIELDS, JournalEntry
from laned.journal.schema import entry_from_row, from_db, row_reader

LANE = "G0001-0201-03"
T0 = dt.datetime(2026, 11, 22, 10, 0, 0, tzinfo=dt.UTC)
FACTS = dict(obu_id=bytes.fromhex("a1fe33ff"), issuer=bytes.fromhex("c9bdb6ab37010001"), obu_serial=bytes(range(1, 9)),
             contract_start=dt.date(2023, 1, 1), contract_expiry=dt.date(2033, 1, 1), obu_status=b"\x00\x00",
             plate="鲁A12345", plate_colour=0, vehicle_class=1, card_network="3701", card_number="2301000012345678",
             card_type=0x16, balance_before=123456, entry_station="3701-0102", fee=3500, fee_table_version=7,
             status_list_version=42)
B5 = B5Result(tac=bytes.fromhex("fe12ff34"), psam_no=bytes.fromhex("370100000001"), psam_trans_serial=2,
              icc_pay_serial=1, trans_type=9, balance_after=119956, trans_time=dt.datetime(2026, 11, 22, 10, 0, 1))


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def reference(names: Sequence[str], row: Sequence[Any]) -> JournalEntry:
    """entry_from_row as it was: every value through from_db, then the B5 columns popped."""
    values = {n: from_db(n, v) for n, v in zip(names, row)}
    result = {n: values.pop(n) for n in B5_FIELDS}
    return JournalEntry(**values, b5=B5Result(**result) if result["tac"] is not None else None)


def typed(value: Any) -> Any:
    """A value with the type of every part spelled out (1 == 1.0 == True would hide a change)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return type(value), [(f.name, typed(getattr(value, f.name))) for f in dataclasses.fields(value)]
    return type(value), value


@pytest.fixture
def db(tmp_path):
    path = tmp_path / "journal.db"
    with Journal.open(path, LANE, now=T0) as j:
        charge = j.record_intent(TransactionIntent(**FACTS, amount=3500, purchase_time=dt.datetime(2026, 11, 22, 10)),
                                 at(0))
        j.complete_charge(charge.seq, B5, at(0.3), message="欢迎通行 一路顺风")
        j.record_event("follow_car", at(1), reason="follow_car")
        j.record_refusal(Observed(obu_id=FACTS["obu_id"], plate="鲁B54321"), "blacklisted", at(2), message="请走人工车道")
        unknown = j.record_intent(TransactionIntent(obu_id=b"\x01", amount=0, kind=TxKind.ENTRY_WRITE,
                                                    purchase_time=dt.datetime(2026, 11, 22, 10, 0, 3)), at(3))
        j.mark_unknown(unknown.seq, "no B5", at(3.5))
        j.record_intent(TransactionIntent(**FACTS, amount=100, purchase_time=dt.datetime(2026, 11, 22, 10, 0, 4)),
                        at(4))  # stays an intent: never in the outbox
        j.outbox_ack(2, 2, at(5))  # the event: acked_unix set
    return path


def raw_rows(path: Any) -> tuple[list[str], list[tuple[Any, ...]]]:
    con = sqlite3.connect(path)
    try:
        cur = con.execute("SELECT * FROM transactions WHERE lane_id = ? ORDER BY seq", (LANE,))
        return [d[0] for d in cur.description], cur.fetchall()
    finally:
        con.close()


def test_every_row_comes_back_as_reading_value_by_value_gave(db):
    names, rows = raw_rows(db)
    assert len(rows) == 5
    for row in rows:
        got, expected = entry_from_row(names, row), reference(names, row)
        assert got == expected
        assert typed(got) == typed(expected)  # the type of every value too


def test_the_outbox_reads_charges_with_their_b5_and_events_without(db):
    with Journal.open(db, LANE, now=at(10)) as j:
        waiting = j.outbox_after(0, 64)
        everything = list(j.iter_since(0))
    # Reopening marked the intent left over (seq 5) unknown.
    assert [(e.seq, e.state) for e in waiting] == [(1, TxState.CHARGED), (3, TxState.REFUSED), (4, TxState.UNKNOWN),
                                                   (5, TxState.UNKNOWN)]
    charge, refusal, unknown, _ = waiting
    assert charge.b5 == B5 and type(charge.b5.tac) is bytes and type(charge.b5.trans_time) is dt.datetime
    assert (charge.obu_id, charge.contract_start, charge.purchase_time) == \
        (FACTS["obu_id"], dt.date(2023, 1, 1), dt.datetime(2026, 11, 22, 10))
    assert type(charge.reconciled) is bool and type(charge.state) is TxState
    assert refusal.b5 is None and unknown.b5 is None and refusal.plate == "鲁B54321"
    assert everything[1].acked_unix == at(5).timestamp() and everything[1].b5 is None
    names, rows = raw_rows(db)
    assert [typed(e) for e in everything] == [typed(reference(names, row)) for row in rows]


@pytest.mark.parametrize("change", ["bad hex", "bad date", "bad datetime", "bad state", "two bad"])
def test_a_bad_value_raises_what_from_db_raised(db, change):
    names, rows = raw_rows(db)
    row = list(rows[0])
    if change in ("bad hex", "two bad"):
        row[names.index("tac")] = "zz"
    if change in ("bad date", "two bad"):
        row[names.index("contract_start")] = "2023-13-01"  # comes before tac: named first
    if change == "bad datetime":
        row[names.index("trans_time")] = "yesterday"
    if change == "bad state":
        row[names.index("state")] = "lost"
    with pytest.raises(ValueError) as expected:
        reference(names, row)
    with pytest.raises(type(expected.value)) as got:
        entry_from_row(names, tuple(row))
    assert str(got.value) == str(expected.value)


def shapes(names: list[str], row: tuple[Any, ...]) -> list[tuple[list[str], tuple[Any, ...]]]:
    i = names.index("psam_no")
    return [
        (names, row[:-1]),  # a short row: acked_unix left at its default
        (names, row[:5]),  # too short for a JournalEntry
        (names, (*row, "extra")),  # a long row: zip stops at the names
        ([*names, "b5"], (*row, "x")),  # a column named like the entry's own b5
        ([*names, "speed"], (*row, 3)),  # a column the entry has no field for
        (names[:i] + names[i + 1:], row[:i] + row[i + 1:]),  # a B5 column missing
        ([*names[:-1], "plate"], (*row[:-1], "鲁C00000")),  # a column twice: the last one wins
        ([*names[:-1], "tac"], (*row[:-1], "zz")),  # twice, the second one bad
        ([n for n in names if n != "acked_unix"], row[:-1]),  # no acked_unix column at all
    ]


def test_rows_of_any_shape_come_back_or_fail_as_before(db):
    names, rows = raw_rows(db)
    for row in rows:
        for shape_names, shape_row in shapes(names, row):
            try:
                expected: Any = typed(reference(shape_names, shape_row))
            except Exception as err:  # noqa: BLE001 — the error itself is what is compared
                expected = (type(err), str(err))
            try:
                got: Any = typed(entry_from_row(shape_names, shape_row))
            except Exception as err:  # noqa: BLE001
                got = (type(err), str(err))
            assert got == expected, (shape_names[-1], len(shape_row))


def test_one_reader_per_column_list():
    names = ["lane_id", "seq"]
    assert row_reader(names) is row_reader(tuple(names)) is row_reader([n + "" for n in names])
