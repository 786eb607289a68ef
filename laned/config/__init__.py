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
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ValidationError, model_validator

from laned.drivers.gpio_profile import GpioPinMap
from laned.lane.barrier import InterlockSettings
from laned.lane.dialect import Dialect, RsuInit
from laned.lane.machine import Direction, LaneSettings, MissingEntryPolicy
from laned.lane.modes import DisplayPolicy
from laned.lane.signals import Signal
from laned.protocol.profiles import get_profile
from laned.uplink.tls import TlsConfigError, certificate_identity
from laned.config.values import (
    ConfigError, ConfigPath, DEFAULT_TIMEZONE, DivFactor, IssuerId, Model, key_error,
)
from laned.config.sections import (
    SERIAL_BAUDS, LaneSection, RsuSection, FeeDisplaySection, IoSection, DevicesSection, PathSection,
    BarrierSection, HotplugSection, LogSection, HealthSection,
)
from laned.config.uplink import ListsSection, UplinkSection

__all__ = [
    "DEFAULT_PATH", "DEFAULT_TIMEZONE", "SERIAL_BAUDS", "SIM_CONFIG", "BarrierSection", "Config", "ConfigError",
    "ConfigPath", "DevicesSection", "DivFactor", "FeeDisplaySection", "HealthSection", "HotplugSection", "IoSection",
    "IssuerId", "LaneSection", "ListsSection", "LogSection", "PathSection", "RsuSection",
    "UplinkSection", "load_config", "load_sim_config", "parse_config", "read_toml",
]

DEFAULT_PATH = Path("/etc/laned/laned.toml")
SIM_CONFIG = Path(__file__).parent.parent / "data" / "sim.toml"  # package data


class Config(Model):
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
                raise key_error("log_level", "given twice: keep [log] level and drop log_level")
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
            raise key_error("uplink.cert", str(err)) from None
        if name != self.lane.lane_id:
            raise key_error("uplink.cert", f"the certificate {up.cert} is made out to {name!r}, not to this lane "
                             f"{self.lane.lane_id!r} (lane.lane_id): the broker would drop everything the lane "
                             f"publishes; install the lane's own certificate")
        return self

    @model_validator(mode="after")
    def _reaction_limit(self) -> Config:
        """``[barrier] reaction_limit_ms`` against how often the IO device's inputs are read."""
        problem = self.barrier.reaction_problem(self.devices.io)
        if problem is not None:
            raise key_error("barrier.reaction_limit_ms", problem)
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
