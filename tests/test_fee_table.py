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


def test_every_problem_of_a_bad_table_is_listed_at_once():
    with pytest.raises(FeeTableError) as err:
        table(version=-1, stations={"3701-0102": {"1": -3, "7": 100, "12": 9000}, "3701-0A02": {"1": 1},
                                    "3701-0a02": {"2": 2}})
    text = str(err.value)
    for fragment in ("version is -1", "class 1 fee is -3", "class '7' is not a vehicle class",
                     "station '3701-0a02' is listed twice (also as '3701-0A02')"):
        assert fragment in text


def test_station_keys_match_the_0019_record_whatever_the_case():
    t = table(stations={"3701-0A02": {"1": 4100}})
    assert t.fee("3701-0a02", 1) == 4100 and t.fee("3701-0A02", 1) == 4100  # StationRecord.station_key is lower


def test_a_json_table_reads_like_the_toml_one(tmp_path):
    p = tmp_path / "fees.json"
    p.write_text('{"version": 8, "valid_from": "2026-12-01T00:00:00", "stations": {"3701-0102": {"1": 3600}}}')
    t = FeeTable.load(p)
    assert (t.version, t.valid_from, t.fee("3701-0102", 1)) == (8, dt.datetime(2026, 12, 1), 3600)
    p.write_text('{"version": 8,')
    with pytest.raises(FeeTableError, match=r"not valid JSON: .*line 1"):
        FeeTable.load(p)


def test_a_valid_from_with_an_offset_is_taken_in_local_time():
    aware = dt.datetime(2026, 12, 1, tzinfo=dt.timezone(dt.timedelta(hours=8)))
    t = table(version=2, valid_from=aware)
    assert t.valid_from.tzinfo is None and t.valid_from == aware.astimezone().replace(tzinfo=None)
    sched = FeeSchedule(table())
    sched.offer(t, now=aware - dt.timedelta(seconds=1))  # an aware clock compares fine
    assert sched.version == 1 and sched.tick(aware)


def test_at_start_up_the_newest_valid_table_is_in_force_and_a_later_one_waits():
    v1, v2 = table(version=1), table(version=2, valid_from="2026-06-01T00:00:00")
    v3 = table(version=3, valid_from="2026-12-01T00:00:00", stations={"3701-0102": {"1": 4000}})
    sched = FeeSchedule.from_tables([v3, v1, v2], now=dt.datetime(2026, 11, 22))
    assert sched.version == 2 and sched.pending is v3
    with pytest.raises(FeeTableError, match="no fee table is valid at 2025-01-01T00:00:00 .*version 1 from 2026"):
        FeeSchedule.from_tables([v1], now=dt.datetime(2025, 1, 1))


def test_a_pending_table_is_replaced_only_by_a_newer_one():
    sched = FeeSchedule(table(version=1))
    now = dt.datetime(2026, 11, 22)
    sched.offer(table(version=3, valid_from="2026-12-01T00:00:00"), now)
    with pytest.raises(FeeTableError, match="not newer than 3, the one pending"):
        sched.offer(table(version=2, valid_from="2026-12-15T00:00:00"), now)
    sched.offer(table(version=2, stations={"3701-0102": {"1": 3700}}), now)  # valid now, older than the pending
    assert sched.fee("3701-0102", 1) == 3700 and sched.pending.version == 3
    assert not sched.tick(dt.datetime(2026, 11, 30)) and sched.tick(dt.datetime(2026, 12, 1))
    assert sched.version == 3 and sched.pending is None


def test_the_maximum_fee_of_a_class_is_over_every_station():
    t = table(stations={"3701-0102": {"1": 3500, "12": 9000}, "3701-0103": {"1": 5600}})
    assert (t.max_fee(1), t.max_fee(12), t.max_fee(2)) == (5600, 9000, None)


def test_the_sim_table_prices_every_class_from_every_station():
    t = FeeTable.load(SIM_TABLE)
    classes = [*range(1, 5), *range(11, 17), *range(21, 27)]
    assert len(t.stations) >= 3
    assert all(t.fee(station, k) is not None for station in t.stations for k in classes)


def test_a_table_past_its_valid_until_is_expired_and_says_since_when():
    table = FeeTable.from_mapping({"version": 3, "valid_from": "2026-01-01T00:00:00",
                                   "valid_until": "2026-12-01T00:00:00", "stations": {"3701-0102": {"1": 100}}})
    schedule = FeeSchedule(table)
    assert schedule.expired(dt.datetime(2026, 11, 30, 23, 59)) is None
    assert schedule.expired(dt.datetime(2026, 12, 1, 0, 0)) == \
        "fee table version 3 expired at 2026-12-01T00:00:00"


def test_a_valid_until_before_valid_from_is_refused_naming_both():
    with pytest.raises(FeeTableError, match="valid_until 2025-01-01T00:00:00 is not after valid_from"):
        FeeTable.from_mapping({"version": 3, "valid_from": "2026-01-01T00:00:00",
                               "valid_until": "2025-01-01T00:00:00", "stations": {"3701-0102": {"1": 100}}})
