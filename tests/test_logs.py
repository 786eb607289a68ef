"""``[log] level`` and ``[log] format``: text lines or one JSON object per line, and
``laned run`` sets them up from the config."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging

import pytest
from typer.testing import CliRunner

from laned.cli import app
from laned.logs import setup_logging
from tests.test_config import example, write


@pytest.fixture(autouse=True)
def restore_root_logger():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def test_text_is_one_line_per_record_at_the_level_asked():
    out = io.StringIO()
    setup_logging("warning", "text", stream=out)
    log = logging.getLogger("laned.drivers.rsu")
    log.info("not shown")
    log.warning("rsu: cannot open %s", "/dev/laned-rsu")
    [line] = out.getvalue().splitlines()
    assert line.endswith(" WARNING laned.drivers.rsu: rsu: cannot open /dev/laned-rsu")


def test_json_is_one_object_per_line_with_time_level_logger_message_and_extras():
    out = io.StringIO()
    setup_logging("debug", "json", stream=out)
    log = logging.getLogger("laned.lane")
    log.debug("tx %s refused", "t-1", extra={"obu_id": b"\xa1\xfe\x33\xff", "fee_fen": 3500, "device": "rsu"})
    try:
        raise OSError(5, "Input/output error")
    except OSError:
        log.exception("io module: read failed\non two lines")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert {k: first[k] for k in ("level", "logger", "message")} == \
        {"level": "DEBUG", "logger": "laned.lane", "message": "tx t-1 refused"}
    assert (first["obu_id"], first["fee_fen"], first["device"]) == ("a1fe33ff", 3500, "rsu")
    when = dt.datetime.fromisoformat(first["time"])
    assert when.tzinfo is not None and abs((dt.datetime.now(dt.UTC) - when).total_seconds()) < 60
    assert second["level"] == "ERROR" and second["message"] == "io module: read failed\non two lines"
    assert "OSError" in second["exception"]


def test_a_second_setup_replaces_the_first():
    first, second = io.StringIO(), io.StringIO()
    setup_logging("info", "text", stream=first)
    setup_logging("info", "json", stream=second)
    logging.getLogger("laned").info("once")
    assert first.getvalue() == "" and json.loads(second.getvalue())["message"] == "once"


def test_laned_run_sets_up_logging_from_the_config(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("laned.logs.setup_logging", lambda level, fmt: calls.append((level, fmt)))

    async def no_lane(cfg):
        calls.append("run_lane")

    monkeypatch.setattr("laned.app.run_lane", no_lane)
    path = write(tmp_path, example('level = "info"', 'level = "debug"').replace('format = "text"', 'format = "json"'))
    result = CliRunner().invoke(app, ["run", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert calls == [("debug", "json"), "run_lane"]

