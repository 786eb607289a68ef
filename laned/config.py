"""The daemon's configuration: one TOML file, validated into typed models at start.

A bad file stops the start with a :class:`ConfigError` naming the key (dotted path), the
value and what was expected — a field engineer fixes it from the message alone::

    /etc/laned/laned.toml: rsu.baud = 12345: expected one of 9600, 19200, 38400, 57600, 115200
    /etc/laned/laned.toml: barrier.hold_of_s is not a known setting (value 1.0); did you mean hold_off_s?
    /etc/laned/laned.toml, line 7, column 10: not valid TOML: Invalid value

Unknown keys are refused, so a typo never silently falls back to a default. Device register
maps are data here ("device profiles", validated by ``laned.drivers.device_profiles`` and
``laned.drivers.gpio_profile``), because real lanes mix vendors. Relative paths are relative
to the config file. Secrets are paths to files that must not be readable by others.

The simulator's configuration ships in the package: :func:`load_sim_config`.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import stat
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import (
    AfterValidator, BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator,
)
from pydantic_core import PydanticCustomError

from laned.drivers.device_profiles import (
    DEFAULT_FEE_DISPLAY_PROFILE, DEFAULT_IO_MODULE_PROFILE, FeeDisplayProfile, IoModuleProfile,
)
from laned.drivers.gpio_profile import GpioPinMap
from laned.drivers.hotplug import UdevMatch
from laned.drivers.modbus_bus import BusSettings, RtuLink, TcpLink
from laned.lane.barrier import InterlockSettings
from laned.lane.dialect import Dialect, RsuInit
from laned.lane.machine import Direction, LaneSettings, MissingEntryPolicy
from laned.lane.modes import DisplayPolicy
from laned.lane.signals import Signal
from laned.health.checks import HealthSettings
from laned.protocol.profiles import PROFILES, get_profile
from laned.uplink.tls import TlsConfigError, certificate_identity, check_private_key_file

DEFAULT_PATH = Path("/etc/laned/laned.toml")
SIM_CONFIG = Path(__file__).parent / "data" / "sim.toml"  # package data
SERIAL_BAUDS = (9600, 19200, 38400, 57600, 115200)  # RSU_PROTOCOL.md: 9600–115200 must all work
# The lane's time zone (``[lane] timezone``) unless the file names another: the daemon's
# civil clock runs in it, whatever the host's own time zone is.
DEFAULT_TIMEZONE = "Asia/Shanghai"


class ConfigError(ValueError):
    """The configuration cannot be used; the message says where and why."""


# -- value types ------------------------------------------------------------------------------

def _key_error(key: str, message: str) -> PydanticCustomError:
    """An error about ``key`` inside the model being validated (see :func:`_format`)."""
    return PydanticCustomError("config_key", "{message}", {"key": key, "message": message})


def _hex_bytes(size: int, what: str) -> AfterValidator:
    def check(value: str) -> str:
        if len(value) != 2 * size or not all(c in "0123456789abcdefABCDEF" for c in value):
            raise ValueError(f"expected {what}: {2 * size} hex digits")
        return value.lower()
    return AfterValidator(check)


def _digits(n: int, what: str) -> AfterValidator:
    def check(value: str) -> str:
        if len(value) != n or not value.isdigit():
            raise ValueError(f"expected {what}: {n} digits")
        return value
    return AfterValidator(check)


def _config_path(value: Path, info: ValidationInfo) -> Path:
    """Relative paths are relative to the config file's folder."""
    base = (info.context or {}).get("base")
    return value if value.is_absolute() or base is None else Path(base) / value


def _secret(value: Path) -> Path:
    try:
        mode = value.stat().st_mode
    except FileNotFoundError:
        return value  # checked when it is opened; a missing file is not a leak
    except OSError as err:
        raise ValueError(f"cannot check the file's mode: {err.strerror}") from None
    if mode & stat.S_IRWXO:
        raise ValueError(f"{value} is accessible by others (mode {stat.S_IMODE(mode):04o}); chmod 600 it")
    return value


def _readable_file(value: Path) -> Path:
    if not value.is_file():
        raise ValueError(f"{value} does not exist or is not a file")
    if not os.access(value, os.R_OK):
        raise ValueError(f"{value} cannot be read by the user laned runs as")
    return value


def _private_key(value: Path) -> Path:
    """The uplink's private key: mode 0600/0400, owned by laned's user (laned.uplink.tls)."""
    try:
        return check_private_key_file(value)
    except TlsConfigError as err:
        raise ValueError(str(err)) from None


def _lane_id(value: str) -> str:
    if not 1 <= len(value) <= 32 or not re.fullmatch(r"[A-Za-z0-9_.-]+", value):
        raise ValueError("expected 1–32 letters, digits, '-', '_' or '.' (e.g. G0001-0201-03)")
    return value


def _timezone(value: str) -> str:
    """An IANA time zone name the host's time zone database knows."""
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        known = available_timezones()
        if not known:
            raise ValueError("no time zone database on this machine (install the tzdata package)") from None
        close = [name for name in known if name.lower() == value.strip().lower()]
        hint = f"; did you mean {close[0]}?" if close else ""
        raise ValueError(f"expected an IANA time zone name such as {DEFAULT_TIMEZONE}{hint}") from None
    return value


IssuerId = Annotated[str, _hex_bytes(8, "an 8-byte issuer id")]
DivFactor = Annotated[str, _hex_bytes(8, "an 8-byte diversification factor")]
ConfigPath = Annotated[Path, AfterValidator(_config_path)]
SecretPath = Annotated[Path, AfterValidator(_config_path), AfterValidator(_secret)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- [lane] -------------------------------------------------------------------------------------

class LaneSection(_Model):
    lane_id: Annotated[str, AfterValidator(_lane_id)]
    network: Annotated[str, _digits(4, "the station network")]
    station: Annotated[str, _hex_bytes(2, "the station code")]
    lane_number: int = Field(ge=0, le=255)
    direction: Literal["entry", "exit"]
    # The lane's civil time: contract and card dates, the C6 purchase time, the C0 clock and
    # the fee table's validity are judged in it (not in the host's time zone).
    timezone: Annotated[str, AfterValidator(_timezone)] = DEFAULT_TIMEZONE
    redetect_window_s: float = Field(300.0, gt=0, le=3600)
    # B2 to B5, the whole exchange: one not at the charge by then is given up (the next OBU is
    # served); from the intent on, b5_timeout_s governs (a charge is never abandoned blind).
    transaction_timeout_s: float = Field(3.0, gt=0, le=30)
    b5_timeout_s: float = Field(1.0, gt=0, le=1.1)
    passage_timeout_s: float = Field(60.0, ge=5, le=600)  # a paid vehicle that never reaches the loop
    # A paid OBU the RSU reported again after paying and then not for this long has left the
    # zone (passed the arm unseen, close behind another vehicle): its payment no longer holds
    # the arm open. 0: never judge by the RSU's silence (an RSU that does not re-report).
    left_zone_after_s: float = Field(5.0, ge=0, le=120)
    missing_entry_policy: Literal["max_fee", "refuse"] = "max_fee"
    credit_card_policy: Literal["allow", "refuse"] = "allow"
    accepted_issuers: list[IssuerId] = Field(default_factory=list)  # empty: every issuer
    obu_div_factor: DivFactor = "0000000000000000"  # for issuers without their own
    obu_div_factors: dict[IssuerId, DivFactor] = Field(default_factory=dict)  # issuer -> factor (C1, national)

    @model_validator(mode="after")
    def _timeouts(self) -> LaneSection:
        if self.transaction_timeout_s <= self.b5_timeout_s:
            raise _key_error("transaction_timeout_s", f"{self.transaction_timeout_s:g} s is not longer than "
                             f"b5_timeout_s = {self.b5_timeout_s:g} s; the whole exchange includes the B5 wait")
        return self

    @property
    def station_key(self) -> str:
        """The fee table's key of this station ("3701-0201")."""
        return f"{self.network}-{self.station}"


# -- [rsu] ----------------------------------------------------------------------------------------

class RsuSection(_Model):
    profile: str = "national"
    transport: Literal["serial", "tcp"] = "serial"
    port: str | None = None  # serial device, e.g. /dev/laned-rsu
    baud: int = 115200
    host: str | None = None
    tcp_port: int | None = Field(None, ge=1, le=65535)
    silence_timeout_s: float = Field(70.0, gt=0, le=600)  # heartbeats come every 3–60 s
    # C0 initialisation (RSU_PROTOCOL.md, C0 of each profile); LaneMode follows lane.direction.
    tx_power: int = Field(10, ge=0, le=31)
    pll_channel: int = Field(0, ge=0, le=1)
    wait_time: int = Field(2, ge=0, le=255)  # national: minimum re-read interval for one OBU
    trans_mode: int = Field(2, ge=0, le=255)  # national
    bst_interval: int = Field(10, ge=0, le=255)  # network2019

    @field_validator("profile")
    @classmethod
    def _profile(cls, v: str) -> str:
        if v not in PROFILES:
            raise ValueError(f"expected one of {', '.join(PROFILES)}")
        return v

    @field_validator("baud")
    @classmethod
    def _baud(cls, v: int) -> int:
        if v not in SERIAL_BAUDS:
            raise ValueError(f"expected one of {', '.join(map(str, SERIAL_BAUDS))}")
        return v

    @model_validator(mode="after")
    def _transport(self) -> RsuSection:
        if self.transport == "serial" and not self.port:
            raise _key_error("port", "missing: transport 'serial' needs port (e.g. /dev/laned-rsu)")
        if self.transport == "tcp" and not self.host:
            raise _key_error("host", "missing: transport 'tcp' needs host and tcp_port")
        if self.transport == "tcp" and not self.tcp_port:
            raise _key_error("tcp_port", "missing: transport 'tcp' needs host and tcp_port")
        if self.profile == "network2019" and self.tx_power > 15:
            raise _key_error("tx_power", "expected 0–15 with profile network2019")
        return self


# -- [devices] ------------------------------------------------------------------------------------

class _DeviceLink(_Model):
    """Where a Modbus device is: TCP host/port, or an RS-485 port; and its slave id."""

    host: str | None = None
    port: int = Field(502, ge=1, le=65535)
    serial_port: str | None = None  # /dev/ttyUSB0, or a udev name
    baud: int = Field(9600, ge=1200, le=115200)
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    slave: int = Field(1, ge=1, le=247)
    bus: BusSettings = BusSettings()

    @model_validator(mode="after")
    def _where(self) -> _DeviceLink:
        kind = getattr(self, "kind")  # noqa: B009 - each subclass declares its own kind (a Literal); this base has none
        if kind == "modbus_tcp" and not self.host:
            raise _key_error("host", "missing: kind 'modbus_tcp' needs host (and port, default 502)")
        if kind == "modbus_rtu" and not self.serial_port:
            raise _key_error("serial_port", "missing: kind 'modbus_rtu' needs serial_port (e.g. /dev/ttyUSB0)")
        return self

    def link(self) -> TcpLink | RtuLink | None:
        """The Modbus link for ``laned.drivers.modbus_bus.ModbusBus``; None if not a Modbus device."""
        kind = getattr(self, "kind")  # noqa: B009 - as in _where
        if kind == "modbus_tcp":
            assert self.host is not None
            return TcpLink(host=self.host, port=self.port)
        if kind == "modbus_rtu":
            assert self.serial_port is not None
            return RtuLink(port=self.serial_port, baudrate=self.baud, parity=self.parity, stopbits=self.stopbits)
        return None


def _profile_for(value: Any, info: ValidationInfo,
                 models: Mapping[str, tuple[type[BaseModel], BaseModel | None, str]]) -> Any:
    """Validate ``profile`` with the model its device's ``kind`` needs."""
    kind = info.data.get("kind")
    if kind is None or kind == "none":
        return None  # no device (or the kind is wrong, which is reported already)
    model, default, what = models[kind]
    if value is None:
        if default is None:
            raise ValueError(f"missing: kind {kind!r} needs a profile, {what}")
        return default
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a table ({what}), found {value!r}")
    return model.model_validate(dict(value))


class FeeDisplaySection(_DeviceLink):
    kind: Literal["modbus_tcp", "modbus_rtu", "none"] = "none"
    # When the display stops answering: keep taking payments with an alarm, or close ETC
    # (drivers can no longer see fee and balance).
    on_offline: Literal["continue", "close"] = "continue"
    # Register map; the reference display's when left out.
    profile: FeeDisplayProfile | None = Field(None, validate_default=True)

    @field_validator("profile", mode="before")
    @classmethod
    def _typed(cls, value: Any, info: ValidationInfo) -> Any:
        modbus = (FeeDisplayProfile, DEFAULT_FEE_DISPLAY_PROFILE, "the display's register map")
        return _profile_for(value, info, {"modbus_tcp": modbus, "modbus_rtu": modbus})


class IoSection(_DeviceLink):
    kind: Literal["modbus_tcp", "modbus_rtu", "gpio", "none"] = "none"
    # Modbus: coil and input map (a generic 8DI/8DO module's when left out). GPIO: the pin map.
    profile: IoModuleProfile | GpioPinMap | None = Field(None, validate_default=True)

    @field_validator("profile", mode="before")
    @classmethod
    def _typed(cls, value: Any, info: ValidationInfo) -> Any:
        modbus = (IoModuleProfile, DEFAULT_IO_MODULE_PROFILE, "the module's coil and input map")
        gpio = (GpioPinMap, None, "the pin map: [devices.io.profile.inputs] and [devices.io.profile.outputs]")
        return _profile_for(value, info, {"modbus_tcp": modbus, "modbus_rtu": modbus, "gpio": gpio})

    def input_interval(self) -> tuple[float, str, float] | None:
        """How often the safety loop is read: (interval in s, the key that sets it, its value);
        None without an IO device. Modbus polls at ``poll.safety_loop_hz``; GPIO pushes edges
        and re-reads every input at ``sample_hz`` (which also catches a missed edge)."""
        profile = self.profile
        if isinstance(profile, IoModuleProfile):
            hz = profile.poll.safety_loop_hz
            return 1.0 / hz, "devices.io.profile.poll.safety_loop_hz", hz
        if isinstance(profile, GpioPinMap):
            return 1.0 / profile.sample_hz, "devices.io.profile.sample_hz", profile.sample_hz
        return None


class DevicesSection(_Model):
    fee_display: FeeDisplaySection = FeeDisplaySection()
    io: IoSection = IoSection()


# -- the rest ------------------------------------------------------------------------------------

class PathSection(_Model):
    path: ConfigPath


class BarrierSection(_Model):
    hold_off_s: float = Field(1.0, ge=0.2, le=10)  # clear this long after the vehicle left before lowering
    staleness_s: float = Field(0.25, gt=0, le=2)  # an input sample older than this counts as occupied
    release_after_s: float = Field(3.0, ge=0.5, le=60)  # sustained clear that releases a latched fault
    chatter_changes: int = Field(6, ge=3, le=100)  # this many changes …
    chatter_window_s: float = Field(1.0, gt=0, le=10)  # … within this long is chatter (a fault)
    disagree_after_s: float = Field(0.5, gt=0, le=10)  # presence inputs may disagree this long
    raise_travel_timeout_s: float = Field(6.0, gt=0, le=60)  # up limit switch not reached by then: alarm
    # Safety loop occupied at the IO module -> the raise (reverse) command there, at most this
    # long while the arm moves down (bench/reaction_bench.py measures it; the simulator's lane
    # model takes down motion on an occupied loop for longer than this as a violation).
    reaction_limit_ms: int = Field(400, ge=50, le=2000)
    # With an approach loop in the IO profile: lowering waits this long after it cleared.
    approach_hold_off_s: float = Field(1.0, ge=0, le=10)
    # Without one, the hold-off is at least the time the slowest vehicle takes from the stop
    # line to the safety loop (the light turns red when the hold-off starts): a driver who
    # crossed the stop line on green is on the loop before the arm may start down.
    stop_line_to_loop_m: float = Field(0.5, ge=0, le=20)
    slowest_speed_mps: float = Field(0.5, gt=0, le=10)

    def interlock(self) -> InterlockSettings:
        return InterlockSettings(staleness=self.staleness_s, hold_off=self.hold_off_s,
                                 release_after=self.release_after_s, chatter_changes=self.chatter_changes,
                                 chatter_window=self.chatter_window_s, disagree_after=self.disagree_after_s,
                                 raise_travel_timeout=self.raise_travel_timeout_s,
                                 reaction_limit=self.reaction_limit_ms / 1000)

    def reaction_problem(self, io: IoSection) -> str | None:
        """Why ``reaction_limit_ms`` cannot be met with ``io``'s input reads, or None.

        A vehicle entering the safety loop is seen by the first read after it arrived (one
        read interval, plus the answer); when that read is lost or late, the last clear
        sample turns stale ``staleness_s`` after it was taken, which the lane notices on its
        next check (the executor's tick, ``laned.executor.TICK_S``). So it can go unseen for
        up to ``staleness_s`` + the longer of the read interval and the tick; the raise
        command's own writes come on top, so that sum must stay below the limit.
        """
        from laned.executor import TICK_S  # the lane's check interval (not a setting)

        read = io.input_interval()
        if read is None:
            return None  # no IO device: no barrier to reverse
        interval, key, hz = read
        unseen_ms = round(1000 * (self.staleness_s + max(interval, TICK_S)), 3)
        if unseen_ms < self.reaction_limit_ms:
            return None
        return (f"{self.reaction_limit_ms} ms cannot be met: a vehicle on the safety loop can go unseen for up to "
                f"{unseen_ms:g} ms (barrier.staleness_s = {self.staleness_s:g} s until a sample counts as stale, "
                f"plus {1000 * max(interval, TICK_S):g} ms: the safety loop is read every {1000 * interval:g} ms "
                f"({key} = {hz:g}) and the lane checks its inputs every {1000 * TICK_S:g} ms), and the raise "
                f"command needs time on top; set barrier.reaction_limit_ms above {unseen_ms:g}"
                + (f", or lower barrier.staleness_s or raise {key}" if interval > TICK_S else
                   ", or lower barrier.staleness_s"))


class HotplugSection(_Model):
    """Re-open the RSU's serial adapter when it comes back after an unplug."""

    enabled: bool = False
    match: UdevMatch | None = None

    @model_validator(mode="after")
    def _needs_match(self) -> HotplugSection:
        if self.enabled and self.match is None:
            raise _key_error("match", "missing: enabled hotplug needs [hotplug.match] with properties "
                             "(e.g. ID_SERIAL) or devlink")
        return self


class LogSection(_Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class HealthSection(_Model):
    """Thresholds of the health checks (docs/alarms.md)."""

    # Below this much free space under the journal, no C6 goes out (disk_low, ETC closed).
    disk_min_free_mb: int = Field(256, ge=16, le=1 << 20)
    disk_min_free_pct: float = Field(5.0, ge=0, lt=100)
    journal_slow_commit_ms: int = Field(200, ge=10, le=10_000)  # a commit slower than this: journal_slow
    status_list_max_age_h: float = Field(48.0, gt=0, le=24 * 30)  # older: status_list_old
    clock_jump_s: float = Field(2.0, gt=0, le=3600)  # a wall-clock step larger than this: clock_jump

    def settings(self, barrier: BarrierSection, rsu: RsuSection) -> HealthSettings:
        return HealthSettings(disk_min_free_bytes=self.disk_min_free_mb << 20, disk_min_free_pct=self.disk_min_free_pct,
                              journal_slow_commit_s=self.journal_slow_commit_ms / 1000,
                              status_list_max_age_s=self.status_list_max_age_h * 3600, clock_jump_s=self.clock_jump_s,
                              input_staleness_s=barrier.staleness_s,
                              raise_travel_timeout_s=barrier.raise_travel_timeout_s,
                              # Silent this long is reported; the link itself is reopened at the
                              # silence timeout, so the report never comes later than that.
                              rsu_heartbeat_limit_s=min(65.0, rsu.silence_timeout_s))


class UplinkSection(_Model):
    """The centre link (MQTT 5 over TLS, docs/uplink.md). Absent: the lane works alone and
    its journal keeps every row until a link is configured."""

    host: str = Field(min_length=1)
    port: int = Field(8883, ge=1, le=65535)
    # The CA that issued the broker's certificate (the system CAs are not trusted).
    ca: Annotated[Path, AfterValidator(_config_path), AfterValidator(_readable_file)]
    cert: ConfigPath  # the lane's client certificate; its subject CN must be lane.lane_id
    key: Annotated[Path, AfterValidator(_config_path), AfterValidator(_private_key)]
    keepalive_s: int = Field(30, ge=5, le=600)  # the contract's server binding says 30
    # Transactions published and not yet acknowledged by the centre (tx/ack) at once. Rows,
    # not messages: 2048 rows in batches of 64 are 32 messages in the broker's queue for the
    # centre, and two of the centre's 500-row commits in flight, so acks keep the window open.
    window: int = Field(2048, ge=1, le=10_000)
    # Rows per message when several are ready at once (a backlog): on tx/batch, each acked
    # by its seq as on tx. 1: every row alone on tx (a centre that does not read tx/batch).
    batch_max: int = Field(64, ge=1, le=256)
    # A row in flight this long without a tx/ack is published again (the centre de-duplicates).
    ack_timeout_s: float = Field(30.0, gt=0, le=3600)
    reconnect_min_s: float = Field(1.0, gt=0, le=600)  # back-off after a failed connection, doubling …
    reconnect_max_s: float = Field(30.0, gt=0, le=3600)  # … up to this (never past it), each with ±20 % jitter
    # centre_link_down is raised once the link has been down this long (short outages are normal).
    link_down_alarm_s: float = Field(120.0, ge=0, le=86_400)
    # Unacknowledged rows the journal is sized for: 7 days x 20,000 transactions. The
    # uplink_backlog_50/80/95 alarms are raised at those percentages of it.
    backlog_capacity: int = Field(140_000, ge=100, le=100_000_000)
    health_interval_s: float = Field(60.0, ge=1, le=3600)  # a health snapshot at least this often
    # How long the broker keeps the lane's session (subscriptions, queued QoS 1 messages)
    # while it is away; the contract's server binding says one day.
    session_expiry_s: int = Field(86_400, ge=0, le=0xFFFF_FFFF)
    # The centre's Ed25519 public keys the lane trusts, by key id (``laned centre keygen``
    # prints the line): they sign the list manifests (docs/lists.md). None: nothing signed
    # by the centre is taken.
    centre_keys: dict[str, str] = Field(default_factory=dict)
    # The keys trusted for signed commands (cmd: close/open ETC, raise the barrier …), in the
    # same form; absent: centre_keys. A site that keeps its command key apart from its list
    # key gives it here. Empty: every command is refused unknown_key.
    command_keys: dict[str, str] | None = None
    # How far a command's issued_at may be ahead of the lane clock (its expires_at has no tolerance).
    command_clock_skew_s: float = Field(30.0, ge=0, le=3600)

    @field_validator("centre_keys", "command_keys")
    @classmethod
    def _centre_keys(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        from laned.uplink.commands import CentreKeys, CommandKeyError

        try:
            CentreKeys.from_texts(value or {})
        except CommandKeyError as err:
            raise ValueError(str(err)) from None
        return value

    @model_validator(mode="after")
    def _backoff(self) -> UplinkSection:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise _key_error("reconnect_max_s", f"{self.reconnect_max_s:g} s is below reconnect_min_s = "
                             f"{self.reconnect_min_s:g} s")
        return self


class ListsSection(_Model):
    """Status lists and fee tables downloaded from the centre (docs/lists.md)."""

    # A manifest announcing more bytes (as transferred) is refused too_large; a gzip list
    # expanding beyond the second is refused bad_content. A national list is ~800 MB of JSON.
    status_list_max_mb: int = Field(1024, ge=1, le=16_384)
    status_list_max_expanded_mb: int = Field(2048, ge=1, le=32_768)
    fee_table_max_kb: int = Field(4096, ge=1, le=1 << 20)  # transferred and expanded
    chunk_timeout_s: float = Field(30.0, gt=0, le=3600)  # no new chunk this long: list/request the missing
    max_requests: int = Field(5, ge=1, le=100)  # requests without progress before giving up (interrupted)
    clock_skew_s: float = Field(300.0, ge=0, le=86_400)  # a status list's valid_from this far ahead is taken
    on_stale: Literal["alarm", "close_etc"] = "alarm"  # an old or expired status list: alarm only, or close ETC
    fee_table_dir: ConfigPath = Path("/var/lib/laned/fee_tables")  # the fee tables the centre sent


class Config(_Model):
    lane: LaneSection
    rsu: RsuSection
    journal: PathSection
    fee_table: PathSection
    status_list: PathSection | None = None  # no list: nothing is listed
    devices: DevicesSection = DevicesSection()
    barrier: BarrierSection = BarrierSection()
    hotplug: HotplugSection = HotplugSection()
    log: LogSection = LogSection()
    health: HealthSection = HealthSection()
    uplink: UplinkSection | None = None  # no [uplink]: no centre link, the lane works alone
    lists: ListsSection = ListsSection()  # downloads from the centre: only with [uplink]

    @model_validator(mode="before")
    @classmethod
    def _legacy_log_level(cls, data: Any) -> Any:
        """Early files set a top-level ``log_level``; it means ``[log] level``."""
        if isinstance(data, Mapping) and "log_level" in data:
            data = dict(data)
            level = data.pop("log_level")
            log = dict(data.get("log") or {})
            if "level" in log:
                raise _key_error("log_level", "given twice: keep [log] level and drop log_level")
            data["log"] = {**log, "level": level}
        return data

    @model_validator(mode="after")
    def _uplink_identity(self) -> Config:
        """The lane's client certificate must be made out to this lane: the broker's ACL
        confines a client to the topics of its certificate's CN, so a certificate of
        another lane would connect and have everything it publishes dropped."""
        up = self.uplink
        if up is None:
            return self
        try:
            name = certificate_identity(up.cert)
        except TlsConfigError as err:
            raise _key_error("uplink.cert", str(err)) from None
        if name != self.lane.lane_id:
            raise _key_error("uplink.cert", f"the certificate {up.cert} is made out to {name!r}, not to this lane "
                             f"{self.lane.lane_id!r} (lane.lane_id): the broker would drop everything the lane "
                             f"publishes; install the lane's own certificate")
        return self

    @model_validator(mode="after")
    def _reaction_limit(self) -> Config:
        """``[barrier] reaction_limit_ms`` against how often the IO device's inputs are read."""
        problem = self.barrier.reaction_problem(self.devices.io)
        if problem is not None:
            raise _key_error("barrier.reaction_limit_ms", problem)
        return self

    def has_approach_loop(self) -> bool:
        """Whether the IO profile wires an approach (entry) loop."""
        profile = self.devices.io.profile
        return profile is not None and Signal.ENTRY_LOOP in profile.inputs

    def interlock(self) -> InterlockSettings:
        """The barrier interlock's settings, with the approach loop where the IO profile has
        one, and otherwise a hold-off no shorter than the slowest vehicle's way from the stop
        line to the safety loop (docs/lane_sensors.md)."""
        b = self.barrier
        if self.has_approach_loop():
            return dataclasses.replace(b.interlock(), approach=(Signal.ENTRY_LOOP,),
                                       approach_hold_off=b.approach_hold_off_s)
        derived = b.stop_line_to_loop_m / b.slowest_speed_mps
        return dataclasses.replace(b.interlock(), hold_off=max(b.hold_off_s, derived))

    def lane_settings(self) -> LaneSettings:
        """The lane machine's settings."""
        lane = self.lane
        return LaneSettings(
            lane_id=lane.lane_id, direction=Direction(lane.direction), network=lane.network,
            station=bytes.fromhex(lane.station), lane_number=lane.lane_number,
            accepted_issuers=frozenset(bytes.fromhex(i) for i in lane.accepted_issuers),
            redetect_window=lane.redetect_window_s, b5_timeout=lane.b5_timeout_s,
            transaction_timeout=lane.transaction_timeout_s, passage_timeout=lane.passage_timeout_s,
            left_zone_after=lane.left_zone_after_s,
            missing_entry_policy=MissingEntryPolicy(lane.missing_entry_policy),
            allow_credit_cards=lane.credit_card_policy == "allow", tx_power=self.rsu.tx_power,
            pll_channel=self.rsu.pll_channel, interlock=self.interlock(),
            display_policy=DisplayPolicy(self.devices.fee_display.on_offline))

    def dialect(self) -> Dialect:
        """How the lane reads and builds RSU frames: the profile, the C0 settings and the OBU
        diversification factor of each issuer (C1)."""
        lane, rsu = self.lane, self.rsu
        return Dialect(get_profile(rsu.profile),
                       div_factors={bytes.fromhex(i): bytes.fromhex(f) for i, f in lane.obu_div_factors.items()},
                       default_div_factor=bytes.fromhex(lane.obu_div_factor),
                       rsu_init=RsuInit(wait_time=rsu.wait_time, trans_mode=rsu.trans_mode,
                                        bst_interval=rsu.bst_interval))

    def summary(self) -> str:
        """One line for the start-up log: which lane, which RSU, which devices (by the
        ``vendor`` their profile names)."""
        lane, rsu = self.lane, self.rsu
        where = rsu.port if rsu.transport == "serial" else f"{rsu.host}:{rsu.tcp_port}"
        parts = [f"lane {lane.lane_id} ({lane.direction}, station {lane.station_key}, lane time {lane.timezone})",
                 f"RSU profile {rsu.profile} on {where}"]
        for what, dev in (("IO", self.devices.io), ("fee display", self.devices.fee_display)):
            profile = dev.profile
            if dev.kind == "none" or profile is None:
                parts.append(f"no {what}")
            elif isinstance(profile, GpioPinMap):
                parts.append(f"{what} on GPIO")
            else:
                at = f"{dev.host}:{dev.port}" if dev.kind == "modbus_tcp" else dev.serial_port
                parts.append(f"{what} {profile.vendor!r} ({dev.kind} {at}, slave {dev.slave})")
        return "; ".join(parts)


# -- errors --------------------------------------------------------------------------------------

def _unwrap(annotation: Any) -> type[BaseModel] | None:
    """The model class inside ``X | None`` / ``Annotated[X, …]``, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType, Annotated):
        for arg in typing.get_args(annotation):
            found = _unwrap(arg)
            if found is not None:
                return found
    return None


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    """The setting names valid where ``loc`` points (for "did you mean")."""
    model: type[BaseModel] = Config
    for part in loc:
        field = model.model_fields.get(str(part))
        inner = _unwrap(field.annotation) if field is not None else None
        if inner is None:
            return []
        model = inner
    return list(model.model_fields)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _format(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(str(p) for p in e["loc"])
        is_key = loc[-1:] == ("[key]",)  # a table's key, not its value, is wrong
        if is_key:
            loc = loc[:-2]
        value = e.get("input")
        msg = e["msg"].removeprefix("Value error, ").replace("Input should be", "expected")
        if e["type"] == "config_key":
            ctx = e.get("ctx") or {}
            key_path = tuple(str(ctx.get("key", "")).split("."))
            loc += key_path
            for part in key_path:
                value = value.get(part) if isinstance(value, Mapping) else None
        key = ".".join(loc) or "(file)"
        if e["type"] == "missing":
            lines.append(f"{source}: {key} is missing")
        elif msg.startswith("missing: "):
            lines.append(f"{source}: {key} is missing: {msg.removeprefix('missing: ')}")
        elif e["type"] == "extra_forbidden":
            close = difflib.get_close_matches(loc[-1], _known_keys(loc[:-1]), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            lines.append(f"{source}: {key} is not a known setting (value {_shown(value)}){hint}")
        elif is_key:
            lines.append(f"{source}: {key} has the key {_shown(value)}: {msg}")
        elif isinstance(value, (Mapping, list)) or value is None:
            lines.append(f"{source}: {key}: {msg}")
        else:
            lines.append(f"{source}: {key} = {_shown(value)}: {msg}")
    return "\n".join(lines)


# -- loading -------------------------------------------------------------------------------------

def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {part} is a value, not a table")
        node = child
    node[parts[-1]] = value


def parse_config(data: Mapping[str, Any], *, source: str = "config", base: Path | None = None,
                 overrides: Mapping[str, Any] | None = None) -> Config:
    """Validate parsed TOML. ``overrides`` set dotted keys first (``{"rsu.port": "/dev/pts/3"}``)."""
    merged = dict(data)
    for key, value in (overrides or {}).items():
        _set_dotted(merged, key, value)
    try:
        return Config.model_validate(merged, context={"base": base})
    except ValidationError as err:
        raise ConfigError(_format(err, source)) from None


_TOML_WHERE = re.compile(r"^(?P<msg>.*?) \(at line (?P<line>\d+), column (?P<col>\d+)\)$")


def read_toml(path: Path, what: str = "config") -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read {what} {path}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        m = _TOML_WHERE.match(str(err))
        if m is None:
            raise ConfigError(f"{path}: not valid TOML: {err}") from None
        raise ConfigError(f"{path}, line {m['line']}, column {m['col']}: not valid TOML: {m['msg']}") from None


def load_config(path: str | os.PathLike[str] = DEFAULT_PATH, *,
                overrides: Mapping[str, Any] | None = None) -> Config:
    p = Path(path)
    return parse_config(read_toml(p), source=str(p), base=p.parent, overrides=overrides)


def load_sim_config(state_dir: str | os.PathLike[str], *, overrides: Mapping[str, Any] | None = None) -> Config:
    """The simulator's configuration (``laned/data/sim.toml``), with its state in ``state_dir``.

    The fee table comes from the package; the journal (and the status list) live in
    ``state_dir``, never inside the installed package. ``overrides`` set dotted keys,
    e.g. the pseudo-terminal the emulated RSU opened: ``{"rsu.port": "/dev/pts/4"}``.
    """
    state = Path(state_dir)
    data = read_toml(SIM_CONFIG)
    fee_table = SIM_CONFIG.parent / data["fee_table"]["path"]
    settings: dict[str, Any] = {"journal.path": str(state / "journal.db"), "fee_table.path": str(fee_table)}
    if "status_list" in data:
        settings["status_list.path"] = str(state / "status_list.bin")
    settings.update(overrides or {})
    return parse_config(data, source="laned/data/sim.toml", base=state, overrides=settings)
