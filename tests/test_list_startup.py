"""A status list file that cannot be loaded at start never keeps the lane down (issue 10, item 5).

It used to stop the start (exit 2); systemd restarted laned every 2 s, and the lane never
ran long enough to take the centre's replacement. Now the file and its manifest are moved
aside (``<path>.corrupt``, for the field engineer), the log says which file, what was wrong
and what laned did, and the lane starts with no list — the ``status_list_missing`` path —
until the centre's retained manifest brings one (hil_tests/test_uplink_lists.py runs that
with the real daemon and broker).
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import pytest

from laned.app import load_status, status_valid_from
from laned.config import Config, parse_config
from laned.health.alarms import AlarmRegistry
from laned.health.checks import HealthSettings
from laned.health.monitor import HealthMonitor
from laned.lane.status_list import StatusList
from laned.uplink.list_apply import META_SUFFIX, load_status_list
from tests.test_list_update import CST, NOW

LANE = "G0001-0201-03"


def config(tmp_path: Path) -> Config:
    return parse_config({
        "lane": {"lane_id": LANE, "network": "3701", "station": "0201", "lane_number": 3, "direction": "exit"},
        "rsu": {"port": "/dev/null"}, "journal": {"path": str(tmp_path / "journal.db")},
        "fee_table": {"path": str(tmp_path / "fees.toml")},
        "status_list": {"path": str(tmp_path / "status_list.bin")},
    })


def saved_list(path: Path, version: int = 42) -> None:
    store = StatusList()
    store.load_full(version, [])
    store.save(path)


def test_a_corrupt_status_list_at_start_is_moved_aside_logged_and_the_lane_starts_with_none(tmp_path, caplog):
    cfg = config(tmp_path)
    path = tmp_path / "status_list.bin"
    saved_list(path)
    damaged = bytearray(path.read_bytes())
    damaged[-1] ^= 0xFF  # a bit flipped on the disk: the checksum no longer holds
    path.write_bytes(bytes(damaged))
    meta = path.with_name(path.name + META_SUFFIX)
    meta.write_text('{"manifest": {}, "applied_at": null}')

    with caplog.at_level(logging.ERROR, logger="laned"):
        status = load_status(cfg)

    assert status is None
    assert not path.exists() and not meta.exists()
    assert (tmp_path / "status_list.bin.corrupt").read_bytes() == bytes(damaged)  # kept as it was
    assert (tmp_path / ("status_list.bin" + META_SUFFIX + ".corrupt")).exists()
    [line] = [r.getMessage() for r in caplog.records]
    assert f"status list file {path}: corrupt (checksum mismatch)" in line  # which file, what was wrong
    assert "Moved aside for inspection: " + str(tmp_path / "status_list.bin.corrupt") in line  # what laned did
    assert "starts with no status list (alarm status_list_missing" in line


def test_the_lane_then_raises_status_list_missing_as_with_no_file_at_all(tmp_path):
    cfg = config(tmp_path)
    (tmp_path / "status_list.bin").write_bytes(b"LNDSTAT1 but nothing after")
    status = load_status(cfg)
    # What run_lane builds from it: an empty placeholder list, of unknown age, required.
    monitor = HealthMonitor(registry=AlarmRegistry(), settings=HealthSettings(), post=lambda ev: None,
                            status_list=StatusList(), status_list_loaded_at=status_valid_from(cfg, status, CST),
                            status_list_required=True, fee_table_required=False,
                            wall=lambda: NOW + dt.timedelta(seconds=1))
    monitor.check()
    assert monitor.registry.is_active("status_list_missing")
    assert not monitor.registry.is_active("status_list_old")


def test_a_second_corrupt_file_replaces_the_first_one_set_aside(tmp_path):
    cfg = config(tmp_path)
    path = tmp_path / "status_list.bin"
    path.write_bytes(b"first")
    assert load_status(cfg) is None
    path.write_bytes(b"second")
    assert load_status(cfg) is None
    assert [p.name for p in tmp_path.iterdir()] == ["status_list.bin.corrupt"]
    assert (tmp_path / "status_list.bin.corrupt").read_bytes() == b"second"


def test_a_good_file_is_loaded_as_before_and_nothing_is_moved(tmp_path):
    cfg = config(tmp_path)
    saved_list(tmp_path / "status_list.bin", 7)
    status = load_status(cfg)
    assert status is not None and status.version == 7
    assert load_status_list(tmp_path / "status_list.bin").version == 7
    assert [p.name for p in tmp_path.iterdir()] == ["status_list.bin"]


def test_a_good_file_the_system_will_not_read_stops_the_start_and_stays_where_it_is(tmp_path, monkeypatch):
    # A permission error says nothing about the list's bytes: setting it aside would throw
    # away a good list for a fault that is the file owner's. laned run turns it into exit 2.
    from laned.lane.status_list import StatusListError, StatusListUnreadable
    from laned.lane.status_list import file as list_file

    cfg = config(tmp_path)
    path = tmp_path / "status_list.bin"
    saved_list(path, 9)
    good = path.read_bytes()

    def denied(file, mode="r", *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(file))

    monkeypatch.setattr(list_file, "open", denied, raising=False)
    with pytest.raises(StatusListUnreadable) as caught:
        load_status(cfg)
    assert isinstance(caught.value, StatusListError)  # what `laned run` reports as "cannot start", exit 2
    assert str(caught.value) == f"status list file {path}: cannot be read (Permission denied); not loaded"
    assert path.read_bytes() == good and [p.name for p in tmp_path.iterdir()] == ["status_list.bin"]
    monkeypatch.undo()
    status = load_status(cfg)  # the owner put right: the same file loads on the next start
    assert status is not None and status.version == 9


def test_a_folder_where_the_file_should_be_stops_the_start_and_is_left_alone(tmp_path):
    from laned.lane.status_list import StatusListUnreadable

    cfg = config(tmp_path)
    (tmp_path / "status_list.bin").mkdir()
    with pytest.raises(StatusListUnreadable, match="cannot be read"):
        load_status(cfg)
    assert (tmp_path / "status_list.bin").is_dir()
    assert not (tmp_path / "status_list.bin.corrupt").exists()


def test_laned_run_with_an_unreadable_status_list_exits_2_with_one_line(tmp_path):
    from importlib import resources

    from typer.testing import CliRunner

    from laned.cli import app

    fees = tmp_path / "fees.toml"
    fees.write_text((resources.files("laned") / "data" / "fee_table_sim.toml").read_text(encoding="utf-8"))
    (tmp_path / "status_list.bin").mkdir()
    conf = tmp_path / "laned.toml"
    conf.write_text(f"""
[lane]
lane_id = "{LANE}"
network = "3701"
station = "0201"
lane_number = 3
direction = "exit"
[rsu]
port = "/dev/null"
[journal]
path = "{tmp_path / 'journal.db'}"
[fee_table]
path = "{fees}"
[status_list]
path = "{tmp_path / 'status_list.bin'}"
""")
    done = CliRunner().invoke(app, ["run", "--config", str(conf)])
    assert done.exit_code == 2, done.output
    assert f"cannot start: status list file {tmp_path / 'status_list.bin'}: cannot be read" in done.output
    assert not (tmp_path / "journal.db").exists()  # refused before anything was opened
