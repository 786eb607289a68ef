"""``[barrier] reaction_limit_ms``: the bound on "safety loop occupied at the IO module → raise
command there" is validated against how often the inputs are read, and reaches the lane."""

from __future__ import annotations

from pathlib import Path

import pytest

from laned.config import ConfigError, load_config, load_sim_config
from laned.lane.barrier import InterlockSettings

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "laned.example.toml"

GPIO_IO = """
[devices.io]
kind = "gpio"
[devices.io.profile]
sample_hz = {hz}
[devices.io.profile.inputs]
entry_loop = {{ pin = "GPIO5" }}
safety_loop = {{ pin = "GPIO6", contact = "NC" }}
barrier_up = {{ pin = "GPIO13" }}
barrier_down = {{ pin = "GPIO19" }}
[devices.io.profile.outputs]
barrier_raise = {{ pin = "GPIO20" }}
barrier_lower = {{ pin = "GPIO21" }}
"""
MODBUS_IO = '[devices.io]\nkind = "modbus_tcp"\nhost = "192.0.2.10"\nport = 502\nslave = 1\n'


def config_with(tmp_path: Path, text: str, **overrides: object):
    path = tmp_path / "laned.toml"
    path.write_text(text)
    return load_config(path, overrides=overrides)


def error_with(tmp_path: Path, text: str, **overrides: object) -> str:
    with pytest.raises(ConfigError) as err:
        config_with(tmp_path, text, **overrides)
    return str(err.value)


def gpio_example(hz: float) -> str:
    text = EXAMPLE.read_text()
    assert MODBUS_IO in text
    return text.replace(MODBUS_IO, GPIO_IO.format(hz=hz))


def test_the_defaults_are_accepted_and_the_limit_reaches_the_interlock(tmp_path):
    cfg = load_config(EXAMPLE)  # staleness 0.25 s, the default module's 20 Hz poll
    assert cfg.barrier.reaction_limit_ms == 400
    assert cfg.barrier.interlock().reaction_limit == 0.4 == cfg.lane_settings().interlock.reaction_limit
    assert load_sim_config(tmp_path, overrides={"rsu.port": "/dev/pts/7"}).barrier.reaction_limit_ms == 400
    assert InterlockSettings().reaction_limit == 0.4  # the lane's own default is the config's


def test_a_configured_limit_reaches_the_lane_in_seconds():
    cfg = load_config(EXAMPLE, overrides={"barrier.reaction_limit_ms": 650})
    assert cfg.lane_settings().interlock.reaction_limit == 0.65


def test_a_limit_the_staleness_and_poll_cannot_meet_is_refused_naming_the_keys(tmp_path):
    # 0.25 s until a sample is stale + 50 ms between reads (20 Hz) = 300 ms unseen: nothing
    # left for the raise command itself.
    msg = error_with(tmp_path, EXAMPLE.read_text(), **{"barrier.reaction_limit_ms": 300})
    assert "barrier.reaction_limit_ms = 300: 300 ms cannot be met" in msg
    assert "unseen for up to 300 ms" in msg and "barrier.staleness_s = 0.25 s" in msg
    assert "devices.io.profile.poll.safety_loop_hz = 20" in msg and "above 300" in msg
    # The same limit with samples allowed to be only 0.1 s old: 150 ms unseen.
    assert config_with(tmp_path, EXAMPLE.read_text(), **{"barrier.reaction_limit_ms": 300,
                                                         "barrier.staleness_s": 0.1}).barrier.reaction_limit_ms == 300


def test_a_longer_staleness_alone_is_refused_against_the_default_limit(tmp_path):
    text = EXAMPLE.read_text().replace("reaction_limit_ms = 400\n", "")  # the key left to its default
    assert "\nreaction_limit_ms" not in text
    msg = error_with(tmp_path, text, **{"barrier.staleness_s": 0.5})
    assert "barrier.reaction_limit_ms: 400 ms cannot be met" in msg and "unseen for up to 550 ms" in msg
    assert "barrier.staleness_s = 0.5 s" in msg


def test_an_input_read_interval_that_cannot_meet_the_limit_is_refused_naming_it(tmp_path):
    # GPIO re-reads its inputs at sample_hz: 5 Hz is a read every 200 ms.
    msg = error_with(tmp_path, gpio_example(5))
    assert "barrier.reaction_limit_ms = 400: 400 ms cannot be met" in msg and "unseen for up to 450 ms" in msg
    assert "devices.io.profile.sample_hz = 5" in msg and "raise devices.io.profile.sample_hz" in msg
    assert config_with(tmp_path, gpio_example(20)).barrier.reaction_limit_ms == 400


def test_a_faster_modbus_poll_does_not_beat_the_lanes_own_check_interval(tmp_path):
    # A stale sample is noticed on the lane's 50 ms tick however fast the module is polled.
    text = EXAMPLE.read_text() + FAST_MODULE
    msg = error_with(tmp_path, text, **{"barrier.reaction_limit_ms": 300})
    assert "read every 5 ms (devices.io.profile.poll.safety_loop_hz = 200)" in msg and "unseen for up to 300 ms" in msg
    assert config_with(tmp_path, text, **{"barrier.reaction_limit_ms": 301}).barrier.reaction_limit_ms == 301


# The default module's map, polled at 200 Hz.
FAST_MODULE = """
[devices.io.profile]
poll = { safety_loop_hz = 200 }
[devices.io.profile.inputs]
entry_loop = { address = 0 }
safety_loop = { address = 1, polarity = "NC" }
barrier_up = { address = 2 }
barrier_down = { address = 3 }
[devices.io.profile.outputs]
barrier_raise = { coil = 0 }
barrier_lower = { coil = 1 }
"""


def test_the_limit_has_a_range(tmp_path):
    msg = error_with(tmp_path, EXAMPLE.read_text(), **{"barrier.reaction_limit_ms": 10})
    assert "barrier.reaction_limit_ms = 10: expected greater than or equal to 50" in msg


def test_without_an_io_device_there_is_no_input_read_to_check(tmp_path):
    text = EXAMPLE.read_text().replace(MODBUS_IO, '[devices.io]\nkind = "none"\n')
    assert config_with(tmp_path, text, **{"barrier.reaction_limit_ms": 50}).barrier.reaction_limit_ms == 50
