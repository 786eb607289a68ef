"""Content the parsers cannot take is a refusal, never a crash (issue 10, item 5).

The bytes of a version are the centre's (or of whoever holds its key): JSON or TOML nested
thousands deep makes Python's parsers raise RecursionError, an integer of 5,000 digits a
ValueError, a date in year 1 with an offset an OverflowError. Escaping the apply, any of
them took the uplink's task group and the daemon down (exit 70); systemd restarted it, the
broker's retained manifest brought the same version back, and it crashed again. Each is
now ``bad_content``: the alarm ``list_update_refused`` naming what was wrong, the version
in use untouched, the daemon running on.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest

from laned.lane import list_update as lu
from laned.lane.fee_table import FeeSchedule, FeeTable, FeeTableError
from laned.lane.status_list import StatusList
from laned.uplink import list_apply as la
from laned.uplink.list_apply import load_status_list
from laned.uplink.messages import ListKind
from tests.test_list_apply import verified
from tests.test_list_service import OLD_FEES, Lane, full_list
from tests.test_list_update import CST, FEE_TOML, NOW, Centre

DEEP = 100_000  # far beyond the ~1,000 levels json's and tomllib's recursion reach


def nested_json(version: int, where: str) -> bytes:
    deep = "[" * DEEP + "]" * DEEP
    if where == "member":
        return f'{{"version": {version}, "add": [], "note": {deep}}}'.encode()
    return f'{{"version": {version}, "add": [{{"obu": "a1b2c3d4"}}, {deep}]}}'.encode()


def nested_toml(depth: int = DEEP) -> bytes:
    return FEE_TOML.replace(b"version = 8\n", b"version = 8\nnote = " + b"[" * depth + b"]" * depth + b"\n")


def fee_centre(data: bytes) -> Centre:
    return Centre(ListKind.FEE_TABLE, 8, data, valid_from=NOW - dt.timedelta(hours=10),
                  expires_at=NOW + dt.timedelta(days=400))


def old_fees() -> FeeSchedule:
    return FeeSchedule(FeeTable.from_toml_bytes(OLD_FEES, source="test", tz=CST), tz=CST)


@pytest.mark.parametrize("where", ["member", "entry"])
def test_a_status_list_nested_too_deeply_is_refused_bad_content(where):
    content = verified(Centre(ListKind.STATUS_LIST, 42, nested_json(42, where)), 41)
    installs: list[object] = []
    with pytest.raises(la.ListApplyError) as err:
        asyncio.run(la.apply_status_list(content, StatusList(), path=None, now=NOW, install=installs.append))
    assert err.value.reason is lu.ListRefusal.BAD_CONTENT and "nested too deeply" in err.value.text
    assert installs == []


def test_a_status_list_with_a_number_beyond_pythons_digit_limit_is_refused_bad_content():
    content = verified(Centre(ListKind.STATUS_LIST, 42, b'{"version": 42, "add": [], "note": ' + b"7" * 5000 + b"}"))
    with pytest.raises(la.ListApplyError) as err:
        asyncio.run(la.apply_status_list(content, StatusList(), path=None, now=NOW, install=lambda made: None))
    assert err.value.reason is lu.ListRefusal.BAD_CONTENT and "4300 digits" in err.value.text


@pytest.mark.parametrize(("what", "data", "said"), [
    ("nested", nested_toml(), "nested too deeply"),
    ("a 5,000-digit fee", FEE_TOML.replace(b"1 = 3500", b"1 = " + b"9" * 5000), "4300 digits"),
    ("a class that is a digit to str.isdigit only", FEE_TOML.replace(b"1 = 3500", '"²" = 3500'.encode()),
     "is not a vehicle class"),
    ("a valid_from out of range in the lane's time zone",
     FEE_TOML.replace(b"2024-11-22T00:00:00+08:00", b"0001-01-01T00:00:00+14:00"), "valid_from is"),
])
def test_a_fee_table_the_parser_cannot_take_is_refused_bad_content(tmp_path, what, data, said):
    installs: list[object] = []
    with pytest.raises(la.ListApplyError) as err:
        asyncio.run(la.apply_fee_table(verified(fee_centre(data), 7), old_fees(), directory=tmp_path, now=NOW, tz=CST,
                                       install=installs.append))
    assert err.value.reason is lu.ListRefusal.BAD_CONTENT, what
    assert said in err.value.text, (what, err.value.text)
    assert installs == [] and not list(tmp_path.iterdir())


def test_a_fee_table_file_nested_too_deeply_at_start_is_a_problem_named_not_a_crash(tmp_path):
    (tmp_path / "fee_table-v8.toml").write_bytes(nested_toml())
    schedule, problems = la.load_fee_tables(tmp_path, None, NOW, CST)
    assert schedule is None and len(problems) == 1 and "nested too deeply" in problems[0]
    with pytest.raises(FeeTableError, match="nested too deeply"):
        FeeTable.from_toml_bytes(nested_toml(600), source="test")


def test_on_the_daemon_deeply_nested_json_and_toml_raise_the_alarm_and_the_lane_runs_on(tmp_path: Path):
    lane = Lane(tmp_path, fees=old_fees())

    async def scenario() -> None:
        await lane.publish(full_list(42, range(10)))
        await lane.publish(Centre(ListKind.STATUS_LIST, 43, nested_json(43, "member")))
        await lane.publish(fee_centre(nested_toml()))
        # The service's task is still running: a refusal, not a failure of its task group.
        await lane.publish(full_list(44, range(20)))

    asyncio.run(lane.running(scenario))
    refusals = lane.raised("list_update_refused")
    assert len(refusals) == 2
    assert "status_list version 43 refused (bad_content)" in refusals[0] and "nested too deeply" in refusals[0]
    assert "fee_table version 8 refused (bad_content)" in refusals[1] and "nested too deeply" in refusals[1]
    assert lane.fees is not None and lane.fees.version == 7
    assert (lane.status.version, len(lane.status)) == (44, 20) and load_status_list(lane.path).version == 44
