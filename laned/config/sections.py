"""The sections of laned.toml for the lane and its devices: ``[lane]``, ``[rsu]``,
``[devices]``, ``[barrier]``, ``[hotplug]``, ``[log]``, ``[health]`` and the paths."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field, ValidationInfo, field_validator, model_validator

from laned.drivers.device_profiles import (
    DEFAULT_FEE_DISPLAY_PROFILE, DEFAULT_IO_MODULE_PROFILE, FeeDisplayProfile, IoModuleProfile,
)
from laned.drivers.gpio_profile import GpioPinMap
from laned.drivers.hotplug import UdevMatch
from laned.drivers.modbus_bus import BusSettings, RtuLink, TcpLink
from laned.lane.barrier import InterlockSettings
from laned.health.checks import HealthSettings
from laned.protocol.profiles import PROFILES
from laned.config.values import (
    ConfigPath, DEFAULT_TIMEZONE, DivFactor, IssuerId, Model, check_lane_id, check_timezone, digits, hex_bytes,
    key_error,
)

SERIAL_BAUDS = (9600, 19200, 38400, 57600, 115200)  # RSU_PROTOCOL.md: 9600–115200 must all work


# -- [lane] -------------------------------------------------------------------------------------

class LaneSection(Model):
    lane_id: Annotated[str, AfterValidator(check_lane_id)]
    network: Annotated[str, digits(4, "the station network")]
    station: Annotated[str, hex_bytes(2, "the station code")]
    lane_number: int = Field(ge=0, le=255)
    direction: Literal["entry", "exit"]
    # The lane's civil time: contract and card dates, the C6 purchase time, the C0 clock and
    # the fee table's validity are judged in it (not in the host's time zone).
    timezone: Annotated[str, AfterValidator(check_timezone)] = DEFAULT_TIMEZONE
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
            raise key_error("transaction_timeout_s", f"{self.transaction_timeout_s:g} s is not longer than "
                             f"b5_timeout_s = {self.b5_timeout_s:g} s; the whole exchange includes the B5 wait")
        return self

    @property
    def station_key(self) -> str:
        """The fee table's key of this station ("3701-0201")."""
        return f"{self.network}-{self.station}"


# -- [rsu] ----------------------------------------------------------------------------------------

class RsuSection(Model):
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
            raise key_error("port", "missing: transport 'serial' needs port (e.g. /dev/laned-rsu)")
        if self.transport == "tcp" and not self.host:
            raise key_error("host", "missing: transport 'tcp' needs host and tcp_port")
        if self.transport == "tcp" and not self.tcp_port:
            raise key_error("tcp_port", "missing: transport 'tcp' needs host and tcp_port")
        if self.profile == "network2019" and self.tx_power > 15:
            raise key_error("tx_power", "expected 0–15 with profile network2019")
        return self


# -- [devices] ------------------------------------------------------------------------------------

class _DeviceLink(Model):
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
            raise key_error("host", "missing: kind 'modbus_tcp' needs host (and port, default 502)")
        if kind == "modbus_rtu" and not self.serial_port:
            raise key_error("serial_port", "missing: kind 'modbus_rtu' needs serial_port (e.g. /dev/ttyUSB0)")
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


class DevicesSection(Model):
    fee_display: FeeDisplaySection = FeeDisplaySection()
    io: IoSection = IoSection()


# -- the rest ------------------------------------------------------------------------------------

class PathSection(Model):
    path: ConfigPath


class BarrierSection(Model):
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


class HotplugSection(Model):
    """Re-open the RSU's serial adapter when it comes back after an unplug."""

    enabled: bool = False
    match: UdevMatch | None = None

    @model_validator(mode="after")
    def _needs_match(self) -> HotplugSection:
        if self.enabled and self.match is None:
            raise key_error("match", "missing: enabled hotplug needs [hotplug.match] with properties "
                             "(e.g. ID_SERIAL) or devlink")
        return self


class LogSection(Model):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class HealthSection(Model):
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
