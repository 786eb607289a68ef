"""Fee tables: the right fee per entry station and class, and bad tables refused clearly."""

from __future__ import annotations

import datetime as dt
from importlib import resources

import pytest

from laned.lane.fee_table import FeeSchedule, FeeTable, FeeTableError

SIM_TABLE = resources.files("laned") / "data" / "fee_table_sim.toml"


def table(version=1, valid_from="2026-01-01T00:00:00", stations=None):
    return FeeTable.from_mapping({"version": version, "valid_from": valid_from,
                                  "stations": stations or {"3701-0102": {"1": 3500, "12": 9000}}})


def test_the_fee_depends_on_entry_station_and_class():
    t = FeeTable.load(SIM_TABLE)
    assert t.fee("3701-0102", 1) == 3500 and t.fee("3701-0103", 12) == 14400
    assert t.fee("3701-0999", 1) is None
    assert t.max_fee(1) == 5600


@pytest.mark.parametrize("stations,fragment", [
    ({"37010102": {"1": 1}}, "NNNN-SSSS"),
    ({"3701-0102": {"5": 100}}, "class '5'"),
    ({"3701-0102": {"1": -3}}, "fee is -3"),
    ({"3701-0102": {"1": 12.5}}, "fee is 12.5"),
])
def test_a_bad_entry_names_station_class_and_value(stations, fragment):
    with pytest.raises(FeeTableError, match=fragment):
        table(stations=stations)


def test_a_table_not_yet_valid_waits_and_then_takes_over():
    sched = FeeSchedule(table())
    nxt = table(version=2, valid_from="2026-12-01T00:00:00", stations={"3701-0102": {"1": 4000}})
    sched.offer(nxt, now=dt.datetime(2026, 11, 22))
    assert sched.fee("3701-0102", 1) == 3500 and sched.version == 1
    assert sched.tick(dt.datetime(2026, 12, 1, 0, 0, 1))
    assert sched.fee("3701-0102", 1) == 4000 and sched.version == 2


def test_an_older_table_is_refused():
    sched = FeeSchedule(table(version=3))
    with pytest.raises(FeeTableError, match="not newer"):
        sched.offer(table(version=3), now=dt.datetime(2026, 11, 22))


def test_an_unreadable_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "f.toml"
    bad.write_text("version = [")
    with pytest.raises(FeeTableError, match="not valid TOML"):
        FeeTable.load(bad)
