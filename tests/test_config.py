"""The configuration: a good file loads; a bad one names the key, the value and what was expected."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from laned.config import ConfigError, load_config

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "laned.example.toml"


def write(tmp_path, text):
    p = tmp_path / "laned.toml"
    p.write_text(text)
    return p


def test_the_documented_example_loads():
    cfg = load_config(EXAMPLE)
    assert cfg.lane.direction == "exit" and cfg.rsu.port == "/dev/laned-rsu" and cfg.devices.io.kind == "modbus_tcp"


@pytest.mark.parametrize("old,new,fragment", [
    ('baud = 115200', 'baud = 12345', "rsu.baud = 12345: expected one of 9600"),
    ('profile = "national"', 'profile = "wanji"', "rsu.profile = 'wanji': expected one of national"),
    ('direction = "exit"', 'direction = "out"', "lane.direction = 'out'"),
    ('station = "0201"', 'station = "02011"', "lane.station = '02011'"),
    ('hold_off_s = 1.0', 'hold_of_s = 1.0', "barrier.hold_of_s is not a known setting"),
    ('port = "/dev/laned-rsu"', '', "transport 'serial' needs port"),
])
def test_a_bad_value_names_key_value_and_expectation(tmp_path, old, new, fragment):
    text = EXAMPLE.read_text().replace(old, new, 1)
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert fragment in str(err.value)


def test_a_missing_section_is_named(tmp_path):
    text = EXAMPLE.read_text().replace("[journal]\npath = \"/var/lib/laned/journal.db\"\n", "")
    with pytest.raises(ConfigError, match="journal is missing"):
        load_config(write(tmp_path, text))


def test_a_syntax_error_gives_the_line(tmp_path):
    with pytest.raises(ConfigError, match="line 2"):
        load_config(write(tmp_path, "[lane]\nlane_id = \n"))


def test_a_world_readable_key_file_is_refused(tmp_path):
    key = tmp_path / "lane.key"
    key.write_text("secret")
    os.chmod(key, 0o644)
    text = EXAMPLE.read_text() + f'\n[tls]\nkey_file = "{key}"\n'
    with pytest.raises(ConfigError, match="chmod 600"):
        load_config(write(tmp_path, text))
    os.chmod(key, 0o600)
    assert load_config(write(tmp_path, text)).tls.key_file == key


def test_relative_paths_are_relative_to_the_config_file(tmp_path):
    text = EXAMPLE.read_text().replace('"/var/lib/laned/journal.db"', '"journal.db"')
    assert load_config(write(tmp_path, text)).journal.path == tmp_path / "journal.db"
