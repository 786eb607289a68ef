"""``laned centre publish-list`` signs only what the lane will take: the file is read with
the lane's own parsers and checked as the lane checks it against the manifest (version,
base, a fee table's validity start); anything else is exit 2, named, and nothing is signed
or published."""

from __future__ import annotations

import datetime as dt
import json
from importlib import resources
from pathlib import Path

import pytest
from typer.testing import CliRunner

from laned.centre import CentreError
from laned.centre.commissioning import make_pki
from laned.centre.keys import generate
from laned.centre.lists import check_content
from laned.cli import app
from laned.lane.fee_table import FeeTable
from laned.uplink.messages import ListKind

LANE = "G0001-0201-03"
KEY_ID = "centre-test-1"
CST = dt.timezone(dt.timedelta(hours=8))
SIM_TABLE = (resources.files("laned") / "data" / "fee_table_sim.toml").read_text(encoding="utf-8")


def fee_table(version: int = 8, valid_from: str = "2026-01-01T00:00:00") -> bytes:
    return SIM_TABLE.replace("version = 1\n", f"version = {version}\n").replace(
        "valid_from = 2026-01-01T00:00:00\n", f"valid_from = {valid_from}\n").encode()


def status(doc: object) -> bytes:
    return json.dumps(doc).encode()


# -- status lists -------------------------------------------------------------------------------------------

def test_a_status_list_the_lane_reads_with_the_announced_version_passes() -> None:
    full = status({"version": 42, "add": [{"obu": "0a0b0c0d", "reason": 3}]})
    checked = check_content(ListKind.STATUS_LIST, full, version=42, base_version=None, valid_from=None)
    assert checked.description == "status list full list (+1 −0)" and checked.valid_from is None
    delta = status({"version": 43, "base": 42, "add": [], "remove": [{"obu": "0a0b0c0d"}]})
    assert check_content(ListKind.STATUS_LIST, delta, version=43, base_version=42,
                         valid_from=None).description == "status list delta 42→43 (+0 −1)"


@pytest.mark.parametrize(("data", "version", "base", "message"), [
    (b"{}", 42, None, "not a status list the lane can read (laned-status-json-1): status list version is None"),
    (b"not json", 42, None, "not a status list the lane can read"),
    (status({"version": 41, "entries": []}), 42, None, "the status list says version 41, not 42 (--version)"),
    (status({"version": 43, "base": 42, "add": []}), 43, None, "a delta on version 42: give --base-version 42"),
    (status({"version": 43, "base": 42, "add": []}), 43, 41, "a delta on version 42, not on 41 (--base-version)"),
    (status({"version": 43, "entries": []}), 43, 42, "a full list (no base), but --base-version 42"),
    (status({"version": 42, "add": [{"card": "3701-12"}]}), 42, None, "not a status list the lane can read"),
])
def test_a_status_list_the_lane_would_refuse_is_refused(data: bytes, version: int, base: int | None,
                                                        message: str) -> None:
    with pytest.raises(CentreError) as caught:
        check_content(ListKind.STATUS_LIST, data, version=version, base_version=base, valid_from=None)
    assert message in str(caught.value)


# -- fee tables ---------------------------------------------------------------------------------------------

def test_a_fee_table_with_its_version_and_start_passes_compared_in_the_offset_given() -> None:
    start = dt.datetime(2026, 1, 1, tzinfo=CST)
    checked = check_content(ListKind.FEE_TABLE, fee_table(), version=8, base_version=None, valid_from=start)
    assert checked.valid_from == start
    assert checked.description.startswith("fee table version 8 (") and "valid from 2026-01-01T00:00:00+08:00" in \
        checked.description
    # The same instant written in UTC is the same start for the lane.
    utc = check_content(ListKind.FEE_TABLE, fee_table(valid_from="2025-12-31T16:00:00Z"), version=8,
                        base_version=None, valid_from=start)
    assert utc.valid_from == start


def test_a_fee_table_whose_start_carries_an_offset_gives_the_manifest_its_start() -> None:
    checked = check_content(ListKind.FEE_TABLE, fee_table(valid_from="2026-01-01T00:00:00+08:00"), version=8,
                            base_version=None, valid_from=None)
    assert checked.valid_from == dt.datetime(2026, 1, 1, tzinfo=CST)


@pytest.mark.parametrize(("data", "version", "start", "base", "message"), [
    (b"{}", 8, dt.datetime(2026, 1, 1, tzinfo=CST), None, "not a fee table the lane can read (laned-fee-toml-1)"),
    (b"version = 8\n", 8, dt.datetime(2026, 1, 1, tzinfo=CST), None, "[stations] is missing or empty"),
    (fee_table(version=7), 8, dt.datetime(2026, 1, 1, tzinfo=CST), None,
     "the fee table says version 7, not 8 (--version)"),
    (fee_table(), 8, dt.datetime(2026, 1, 2, tzinfo=CST), None,
     "the fee table is valid from 2026-01-01T00:00:00, --valid-from says 2026-01-02T00:00:00"),
    (fee_table(valid_from="2026-01-01T00:00:00+08:00"), 8, dt.datetime(2026, 1, 1, tzinfo=dt.UTC), None,
     "the fee table is valid from 2025-12-31T16:00:00, --valid-from says 2026-01-01T00:00:00"),
    (fee_table(), 8, None, None, "is the lane's local time (no UTC offset): give --valid-from"),
    (fee_table(), 8, dt.datetime(2026, 1, 1, tzinfo=CST), 7, "a fee table is always sent whole"),
])
def test_a_fee_table_the_lane_would_refuse_is_refused(data: bytes, version: int, start: dt.datetime | None,
                                                      base: int | None, message: str) -> None:
    with pytest.raises(CentreError) as caught:
        check_content(ListKind.FEE_TABLE, data, version=version, base_version=base, valid_from=start)
    assert message in str(caught.value)


def test_the_check_agrees_with_the_lanes_parser_on_the_start() -> None:
    """What the lane compares (laned.uplink.list_apply.apply_fee_table): the table's start in
    the lane's zone with the manifest's valid_from in the lane's zone."""
    start = dt.datetime(2026, 1, 1, tzinfo=CST)
    lane_zone = CST  # a lane in China
    table = FeeTable.from_toml_bytes(fee_table(), tz=lane_zone)
    assert table.valid_from == start.astimezone(lane_zone).replace(tzinfo=None)
    check_content(ListKind.FEE_TABLE, fee_table(), version=8, base_version=None, valid_from=start)


# -- the command line ----------------------------------------------------------------------------------------

def test_publish_list_refuses_a_file_the_lane_would_refuse_before_signing_or_connecting(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki", [LANE])
    key = generate(tmp_path / "keys", KEY_ID).private_path
    db = tmp_path / "centre.db"

    def publish(kind: str, data: bytes, version: str, *extra: str) -> tuple[int, str]:
        file = tmp_path / ("list.json" if kind == "status_list" else "fee_table.toml")
        file.write_bytes(data)
        done = CliRunner().invoke(app, [
            "centre", "publish-list", "--port", "1", "--ca", str(pki.ca_cert), "--cert", str(pki.centre.cert),
            "--key", str(pki.centre.key), "--db", str(db), "--kind", kind, "--file", str(file), "--version", version,
            "--lane", LANE, "--signing-key", str(key), "--key-id", KEY_ID, *extra])
        return done.exit_code, done.output

    code, output = publish("status_list", b"{}", "42")
    assert code == 2 and output.startswith(f"laned centre: --file {tmp_path / 'list.json'}: not a status list"), output
    code, output = publish("fee_table", b"{}", "8", "--valid-from", "2026-01-01T00:00:00+08:00")
    assert code == 2 and "not a fee table the lane can read" in output, output
    code, output = publish("fee_table", fee_table(version=7), "8", "--valid-from", "2026-01-01T00:00:00+08:00")
    assert code == 2 and "the fee table says version 7, not 8 (--version)" in output, output
    code, output = publish("fee_table", fee_table(), "8")
    assert code == 2 and "give --valid-from with the lane's offset, e.g. 2026-01-01T00:00:00+08:00" in output, output
    assert not db.exists()  # nothing stored, signed or sent
    # The same table with its start given passes every check and goes on to connect (port 1: exit 1).
    code, output = publish("fee_table", fee_table(), "8", "--valid-from", "2026-01-01T00:00:00+08:00",
                           "--valid-days", "36500")
    assert code == 1 and "broker 127.0.0.1:1" in output, output
