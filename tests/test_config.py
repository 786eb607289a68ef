"""The configuration: a good file loads; a bad one names the key, the value and what was expected."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest

from pydantic import ValidationError

from laned.config import Config, ConfigError, load_config, load_sim_config
from laned.drivers.device_profiles import DEFAULT_IO_MODULE_PROFILE, IoModuleProfile
from laned.drivers.gpio_profile import GpioPinMap
from laned.drivers.modbus_bus import RtuLink, TcpLink
from laned.journal import Journal
from laned.lane.fee_table import FeeTable
from laned.lane.machine import Direction, MissingEntryPolicy

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "laned.example.toml"

GPIO_IO = """
[devices.io]
kind = "gpio"
[devices.io.profile.inputs]
entry_loop = { pin = "GPIO5" }
safety_loop = { pin = "GPIO6", contact = "NC" }
barrier_up = { pin = "GPIO13" }
barrier_down = { pin = "GPIO19" }
[devices.io.profile.outputs]
barrier_raise = { pin = "GPIO20" }
barrier_lower = { pin = "GPIO21" }
"""


def write(tmp_path, text):
    p = tmp_path / "laned.toml"
    p.write_text(text)
    return p


def example(old="", new=""):
    text = EXAMPLE.read_text()
    if old:
        assert old in text, old
    return text.replace(old, new, 1)


def error_of(tmp_path, text) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    return str(err.value)


# -- good files -----------------------------------------------------------------------------------

def test_the_documented_example_loads_with_defaults_filled_in():
    cfg = load_config(EXAMPLE)
    assert cfg.lane.direction == "exit" and cfg.rsu.port == "/dev/laned-rsu" and cfg.devices.io.kind == "modbus_tcp"
    assert cfg.devices.io.profile == DEFAULT_IO_MODULE_PROFILE  # no profile given: the generic module's
    assert cfg.devices.io.link() == TcpLink(host="192.0.2.10", port=502)
    assert cfg.devices.fee_display.kind == "none" and cfg.devices.fee_display.profile is None
    assert (cfg.log.level, cfg.log.format) == ("info", "text")


def test_the_simulator_config_ships_with_the_package_and_keeps_its_state_outside(tmp_path):
    cfg = load_sim_config(tmp_path, overrides={"rsu.port": "/dev/pts/7"})
    assert cfg.journal.path == tmp_path / "journal.db" and cfg.rsu.port == "/dev/pts/7"
    table = FeeTable.load(cfg.fee_table.path)  # the shipped sim table, priced for every class
    assert table.fee("3701-0102", 1) == 3500
    settings = cfg.lane_settings()
    assert (settings.direction, settings.station, settings.missing_entry_policy) == \
        (Direction.EXIT, b"\x02\x01", MissingEntryPolicy.MAX_FEE)
    assert settings.interlock.hold_off == cfg.barrier.hold_off_s
    assert (cfg.devices.fee_display.slave, cfg.devices.io.slave) == (1, 2)  # laned.sim.modbus_devices' ids
    with Journal.open(cfg.journal.path, cfg.lane.lane_id, now=dt.datetime(2026, 11, 22)) as j:
        assert j.last_seq() == 0


def test_a_gpio_lane_gets_its_pin_map_validated_and_typed(tmp_path):
    cfg = load_config(write(tmp_path, example('[devices.io]\nkind = "modbus_tcp"\nhost = "192.0.2.10"\nport = 502\n'
                                              'slave = 1\n', GPIO_IO)))
    assert isinstance(cfg.devices.io.profile, GpioPinMap) and cfg.devices.io.link() is None
    assert cfg.devices.io.profile.inputs["safety_loop"].pin == "GPIO6"


def test_a_modbus_rtu_display_with_its_own_register_map(tmp_path):
    text = example() + """
[devices.fee_display]
kind = "modbus_rtu"
serial_port = "/dev/ttyUSB1"
baud = 19200
parity = "E"
[devices.fee_display.profile]
vendor = "acme"
plate = { address = 0, registers = 6 }
vehicle_class = { address = 6 }
fee = { address = 7 }
balance = { address = 9 }
line1 = { address = 16, registers = 16 }
line2 = { address = 32, registers = 16 }
"""
    cfg = load_config(write(tmp_path, text))
    assert cfg.devices.fee_display.profile.vendor == "acme"
    assert cfg.devices.fee_display.link() == RtuLink(port="/dev/ttyUSB1", baudrate=19200, parity="E")


def test_per_issuer_div_factors_and_the_default(tmp_path):
    text = example('accepted_issuers = []', 'accepted_issuers = ["C9BDB6AB37010001"]')
    text = text.replace('obu_div_factors = {}', 'obu_div_factors = { "c9bdb6ab37010001" = "0102030405060708" }')
    cfg = load_config(write(tmp_path, text))
    lane, dialect = cfg.lane, cfg.dialect()
    assert lane.accepted_issuers == ["c9bdb6ab37010001"]
    assert dialect.div_factor_for(bytes.fromhex("c9bdb6ab37010001")) == bytes.fromhex("0102030405060708")
    assert dialect.div_factor_for(bytes(8)) == bytes(8) and lane.station_key == "3701-0201"


def test_a_bad_table_key_is_named_as_a_key(tmp_path):
    msg = error_of(tmp_path, example('obu_div_factors = {}', 'obu_div_factors = { "zz" = "0102030405060708" }'))
    assert "lane.obu_div_factors has the key 'zz': expected an 8-byte issuer id: 16 hex digits" in msg


def test_overrides_set_dotted_keys_and_are_validated_like_the_file():
    assert load_config(EXAMPLE, overrides={"barrier.hold_off_s": 2.5}).barrier.hold_off_s == 2.5
    with pytest.raises(ConfigError, match=r"rsu.baud = 300: expected one of 9600"):
        load_config(EXAMPLE, overrides={"rsu.baud": 300})


def test_relative_paths_are_relative_to_the_config_file(tmp_path):
    text = example('"/var/lib/laned/journal.db"', '"journal.db"')
    assert load_config(write(tmp_path, text)).journal.path == tmp_path / "journal.db"


# -- bad files: every kind of mistake names key, value and expectation ---------------------------------

@pytest.mark.parametrize("old,new,fragment", [
    # a value outside a fixed set
    ('baud = 115200', 'baud = 12345', "rsu.baud = 12345: expected one of 9600, 19200, 38400, 57600, 115200"),
    ('profile = "national"', 'profile = "wanji"', "rsu.profile = 'wanji': expected one of national"),
    ('direction = "exit"', 'direction = "out"', "lane.direction = 'out': expected 'entry' or 'exit'"),
    # a number out of range, a wrong type
    ('hold_off_s = 1.0', 'hold_off_s = 60', "barrier.hold_off_s = 60: expected less than or equal to 10"),
    ('lane_number = 3', 'lane_number = "three"', "lane.lane_number = 'three': expected a valid integer"),
    # a malformed code
    ('station = "0201"', 'station = "02011"', "lane.station = '02011': expected the station code: 4 hex digits"),
    ('network = "3701"', 'network = "37A1"', "lane.network = '37A1': expected the station network: 4 digits"),
    ('lane_id = "G0001-0201-03"', 'lane_id = "lane 3"', "lane.lane_id = 'lane 3': expected 1–32 letters"),
    ('accepted_issuers = []', 'accepted_issuers = ["c9bdb6ab37010001", "c9bd"]',
     "lane.accepted_issuers.1 = 'c9bd': expected an 8-byte issuer id: 16 hex digits"),
    # an unknown key (a typo), with a suggestion
    ('hold_off_s = 1.0', 'hold_of_s = 1.0', "barrier.hold_of_s is not a known setting (value 1.0); did you mean "
                                            "hold_off_s?"),
    # settings that only make sense together
    ('port = "/dev/laned-rsu"', '', "rsu.port is missing: transport 'serial' needs port"),
    ('transport = "serial"', 'transport = "tcp"', "rsu.host is missing: transport 'tcp' needs host and tcp_port"),
    ('tx_power = 10', 'tx_power = 32', "rsu.tx_power = 32: expected less than or equal to 31"),
    ('transaction_timeout_s = 3.0', 'transaction_timeout_s = 0.5',
     "lane.transaction_timeout_s = 0.5: 0.5 s is not longer than b5_timeout_s = 1 s"),
    ('format = "text"', 'format = "xml"', "log.format = 'xml': expected 'text' or 'json'"),
    ('host = "192.0.2.10"', '', "devices.io.host is missing: kind 'modbus_tcp' needs host"),
    ('kind = "modbus_tcp"', 'kind = "gpio"', "devices.io.profile is missing: kind 'gpio' needs a profile"),
    ('kind = "modbus_tcp"', 'kind = "serial"', "devices.io.kind = 'serial': expected 'modbus_tcp', 'modbus_rtu', "
                                               "'gpio' or 'none'"),
])
def test_a_bad_value_names_key_value_and_expectation(tmp_path, old, new, fragment):
    assert fragment in error_of(tmp_path, example(old, new))


def test_network2019_has_a_smaller_tx_power_range(tmp_path):
    text = example('profile = "national"', 'profile = "network2019"').replace('tx_power = 10', 'tx_power = 20')
    assert "rsu.tx_power = 20: expected 0–15 with profile network2019" in error_of(tmp_path, text)


def test_a_mistake_deep_in_a_device_profile_is_named_by_its_full_key(tmp_path):
    text = example() + '\n[devices.io.profile.inputs]\nsafety_loop = { address = -1 }\n'
    msg = error_of(tmp_path, text)
    assert "devices.io.profile.inputs.safety_loop.address = -1: expected greater than or equal to 0" in msg
    assert "devices.io.profile.outputs is missing" in msg


def test_a_fee_display_is_never_a_gpio_device(tmp_path):
    msg = error_of(tmp_path, example() + '\n[devices.fee_display]\nkind = "gpio"\n')
    assert "devices.fee_display.kind = 'gpio': expected 'modbus_tcp', 'modbus_rtu' or 'none'" in msg


def test_enabled_hotplug_needs_something_to_match(tmp_path):
    assert "hotplug.match is missing: enabled hotplug needs [hotplug.match]" in \
        error_of(tmp_path, example() + "\n[hotplug]\nenabled = true\n")
    bad = example() + '\n[hotplug]\nenabled = true\n[hotplug.match]\nproperties = { id_serial = "FTDI_X" }\n'
    assert "hotplug.match.properties: 'id_serial' is not a udev property name" in error_of(tmp_path, bad)
    good = example() + '\n[hotplug]\nenabled = true\n[hotplug.match]\nproperties = { ID_SERIAL = "FTDI_X" }\n'
    assert load_config(write(tmp_path, good)).hotplug.match.properties == {"ID_SERIAL": "FTDI_X"}


def test_every_mistake_is_listed_at_once(tmp_path):
    msg = error_of(tmp_path, example('baud = 115200', 'baud = 1').replace('direction = "exit"', 'direction = "x"'))
    assert "rsu.baud = 1" in msg and "lane.direction = 'x'" in msg


def test_a_missing_section_or_key_is_named(tmp_path):
    assert "journal is missing" in error_of(tmp_path, example('[journal]\npath = "/var/lib/laned/journal.db"\n'))
    assert "lane.lane_number is missing" in error_of(tmp_path, example('lane_number = 3\n'))


def test_a_syntax_error_gives_the_line_and_column(tmp_path):
    msg = error_of(tmp_path, "[lane]\nlane_id = \n")
    assert "laned.toml, line 2, column 11: not valid TOML" in msg


def test_the_log_level_is_given_once(tmp_path):
    msg = error_of(tmp_path, 'log_level = "debug"\n' + example())
    assert "log_level" in msg and "given twice" in msg
    # Early files set a top-level log_level; it still means [log] level.
    cfg = load_config(write(tmp_path, 'log_level = "debug"\n' + example('level = "info"', '')))
    assert cfg.log.level == "debug"


def test_a_section_nothing_reads_yet_is_refused_like_a_typo(tmp_path):
    # [tls] was validated and then ignored; it comes back with the MQTT uplink that uses it.
    msg = error_of(tmp_path, example() + '\n[tls]\nca_file = "ca.pem"\n')
    assert "tls is not a known setting" in msg


def test_a_config_is_immutable_once_loaded():
    cfg: Config = load_config(EXAMPLE)
    with pytest.raises(ValidationError, match="frozen"):
        cfg.lane.direction = "entry"  # type: ignore[misc]
    assert isinstance(cfg.devices.io.profile, IoModuleProfile)


# -- [uplink]: the centre link ------------------------------------------------------------------------

def _lane_certificate(folder: Path, common_name: str) -> tuple[Path, Path]:
    """A self-signed certificate made out to ``common_name`` and its key (mode 0600)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_path, key_path = folder / f"{common_name}.pem", folder / f"{common_name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return cert_path, key_path


def _uplink(tmp_path: Path, common_name: str = "G0001-0201-03", extra: str = "") -> str:
    cert, key = _lane_certificate(tmp_path, common_name)
    (tmp_path / "ca.pem").write_bytes(cert.read_bytes())  # any certificate will do for loading
    return (f'\n[uplink]\nhost = "mqtt.toll-centre.example"\nca = "ca.pem"\ncert = "{cert.name}"\n'
            f'key = "{key.name}"\n{extra}')


def test_without_an_uplink_section_the_lane_has_no_centre_link():
    assert load_config(EXAMPLE).uplink is None


def test_the_documented_uplink_section_loads_with_the_lanes_certificate(tmp_path):
    text = EXAMPLE.read_text()
    block = text[text.index("# [uplink]"):]
    uncommented = "\n".join(line.removeprefix("# ") for line in block.splitlines())
    cert, key = _lane_certificate(tmp_path, "G0001-0201-03")
    uncommented = (uncommented.replace("/etc/laned/tls/lane.pem", str(cert))
                   .replace("/etc/laned/tls/lane.key", str(key)).replace("/etc/laned/tls/centre-ca.pem", str(cert)))
    cfg = load_config(write(tmp_path, text[:text.index("# [uplink]")] + uncommented))
    up = cfg.uplink
    assert up is not None and (up.host, up.port, up.cert, up.key) == ("mqtt.toll-centre.example", 8883, cert, key)
    assert (up.window, up.batch_max, up.ack_timeout_s, up.backlog_capacity, up.session_expiry_s) == (2048, 64, 30, 140_000,
                                                                                                86_400)


def test_uplink_defaults_and_relative_paths(tmp_path):
    cfg = load_config(write(tmp_path, example() + _uplink(tmp_path)))
    up = cfg.uplink
    assert up is not None and up.ca == tmp_path / "ca.pem" and up.key == tmp_path / "G0001-0201-03.key"
    assert (up.port, up.keepalive_s, up.reconnect_min_s, up.reconnect_max_s) == (8883, 30, 1.0, 30.0)
    assert (up.link_down_alarm_s, up.health_interval_s) == (120.0, 60.0)


def test_an_uplink_key_others_can_read_is_refused_at_start(tmp_path):
    text = example() + _uplink(tmp_path)
    os.chmod(tmp_path / "G0001-0201-03.key", 0o644)
    msg = error_of(tmp_path, text)
    assert "uplink.key" in msg and "accessible by group and others (mode 0644)" in msg and "chmod 600" in msg


def test_a_missing_ca_file_is_named(tmp_path):
    msg = error_of(tmp_path, example() + _uplink(tmp_path).replace('ca = "ca.pem"', 'ca = "nothing.pem"'))
    assert "uplink.ca" in msg and "nothing.pem does not exist" in msg


def test_a_missing_uplink_key_is_named(tmp_path):
    msg = error_of(tmp_path, example() + _uplink(tmp_path).replace("G0001-0201-03.key", "nowhere.key"))
    assert "uplink.key" in msg and "nowhere.key does not exist" in msg


def test_a_certificate_made_out_to_another_lane_is_refused(tmp_path):
    msg = error_of(tmp_path, example() + _uplink(tmp_path, "G0001-0201-04"))
    assert "uplink.cert" in msg and "'G0001-0201-04', not to this lane 'G0001-0201-03'" in msg


@pytest.mark.parametrize(("extra", "fragment"), [
    ("reconnect_min_s = 10\nreconnect_max_s = 5\n", "uplink.reconnect_max_s = 5: 5 s is below reconnect_min_s"),
    ("window = 0\n", "uplink.window = 0"),
    ("batch_max = 0\n", "uplink.batch_max = 0"),
    ("batch_max = 257\n", "uplink.batch_max = 257"),  # past the contract's maxItems
    ("ack_timeout_s = 0\n", "uplink.ack_timeout_s = 0"),
    ("port = 70000\n", "uplink.port = 70000"),
    ("backlog = 5\n", "uplink.backlog is not a known setting"),
])
def test_a_bad_uplink_value_is_named(tmp_path, extra, fragment):
    assert fragment in error_of(tmp_path, example() + _uplink(tmp_path, extra=extra))
