"""The daemon's configuration: one TOML file, validated into typed models at start.

A bad file stops the start with a :class:`ConfigError` naming the key (dotted path), the
value and what was expected — a field engineer fixes it from the message alone.
Device register maps are data here ("device profiles"), because real lanes mix vendors.
Secrets are paths to files that must not be world-readable.
"""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from laned.protocol.profiles import PROFILES


class ConfigError(ValueError):
    """The configuration cannot be used; the message says where and why."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LaneSection(_Model):
    lane_id: str = Field(min_length=1, max_length=32)
    network: str = Field(pattern=r"^\d{4}$", description="station network, 4 digits")
    station: str = Field(pattern=r"^[0-9a-fA-F]{4}$", description="station code, 4 hex digits")
    lane_number: int = Field(ge=0, le=255)
    direction: Literal["entry", "exit"]
    redetect_window_s: float = Field(300.0, gt=0, le=3600)
    b5_timeout_s: float = Field(1.0, gt=0, le=1.1)
    missing_entry_policy: Literal["max_fee", "refuse"] = "max_fee"
    credit_card_policy: Literal["allow", "refuse"] = "allow"
    accepted_issuers: list[str] = Field(default_factory=list, description="8-byte issuer ids, hex")
    obu_div_factor: str = Field("0000000000000000", pattern=r"^[0-9a-fA-F]{16}$")

    @field_validator("accepted_issuers")
    @classmethod
    def _issuers(cls, v: list[str]) -> list[str]:
        for item in v:
            if len(item) != 16 or any(c not in "0123456789abcdefABCDEF" for c in item):
                raise ValueError(f"issuer {item!r} is not 16 hex digits")
        return v


class RsuSection(_Model):
    profile: str = "national"
    transport: Literal["serial", "tcp"] = "serial"
    port: str | None = Field(None, description="serial device, e.g. /dev/laned-rsu")
    baud: int = 115200
    host: str | None = None
    tcp_port: int | None = Field(None, ge=1, le=65535)
    silence_timeout_s: float = Field(70.0, gt=0)
    tx_power: int = Field(10, ge=0, le=31)
    pll_channel: int = Field(0, ge=0, le=1)

    @field_validator("profile")
    @classmethod
    def _profile(cls, v: str) -> str:
        if v not in PROFILES:
            raise ValueError(f"expected one of {', '.join(PROFILES)}")
        return v

    @field_validator("baud")
    @classmethod
    def _baud(cls, v: int) -> int:
        if v not in (9600, 19200, 38400, 57600, 115200):
            raise ValueError("expected one of 9600, 19200, 38400, 57600, 115200")
        return v

    @model_validator(mode="after")
    def _transport(self) -> "RsuSection":
        if self.transport == "serial" and not self.port:
            raise ValueError("transport 'serial' needs port (e.g. /dev/laned-rsu)")
        if self.transport == "tcp" and (not self.host or not self.tcp_port):
            raise ValueError("transport 'tcp' needs host and tcp_port")
        return self


class PathSection(_Model):
    path: Path


class DeviceSection(_Model):
    kind: Literal["modbus_tcp", "modbus_rtu", "gpio", "none"] = "none"
    host: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    serial_port: str | None = None
    baud: int = 9600
    slave: int = Field(1, ge=1, le=247)
    profile: dict[str, Any] = Field(default_factory=dict, description="device profile (register map)")


class DevicesSection(_Model):
    fee_display: DeviceSection = DeviceSection()
    io: DeviceSection = DeviceSection()


class BarrierSection(_Model):
    hold_off_s: float = Field(1.0, ge=0.2, le=10)
    staleness_s: float = Field(0.25, gt=0, le=2)
    release_after_s: float = Field(3.0, ge=0.5, le=60)
    chatter_changes: int = Field(6, ge=3)


class HotplugSection(_Model):
    enabled: bool = False
    match: dict[str, str] = Field(default_factory=dict, description="udev properties, e.g. ID_SERIAL")
    devlink: str | None = None


class TlsSection(_Model):
    ca_file: Path | None = None
    key_file: Path | None = None

    @field_validator("key_file")
    @classmethod
    def _private(cls, v: Path | None) -> Path | None:
        if v is not None and v.exists() and v.stat().st_mode & (stat.S_IRWXO | stat.S_IRWXG):
            raise ValueError(f"{v} is readable by group or others; chmod 600 it")
        return v


class Config(_Model):
    lane: LaneSection
    rsu: RsuSection
    journal: PathSection
    fee_table: PathSection
    status_list: PathSection | None = None
    devices: DevicesSection = DevicesSection()
    barrier: BarrierSection = BarrierSection()
    hotplug: HotplugSection = HotplugSection()
    tls: TlsSection = TlsSection()
    log_level: Literal["debug", "info", "warning", "error"] = "info"


def _format(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(file)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "missing":
            lines.append(f"{source}: {key} is missing")
        elif e["type"] == "extra_forbidden":
            lines.append(f"{source}: {key} is not a known setting (value {e.get('input')!r})")
        else:
            lines.append(f"{source}: {key} = {e.get('input')!r}: {msg}")
    return "\n".join(lines)


def parse_config(data: dict[str, Any], *, source: str = "config", base: Path | None = None) -> Config:
    try:
        cfg = Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format(err, source)) from None
    if base is not None:  # relative paths are relative to the config file
        def rel(p: Path) -> Path:
            return p if p.is_absolute() else base / p
        upd: dict[str, Any] = {"journal": PathSection(path=rel(cfg.journal.path)),
                               "fee_table": PathSection(path=rel(cfg.fee_table.path))}
        if cfg.status_list is not None:
            upd["status_list"] = PathSection(path=rel(cfg.status_list.path))
        cfg = cfg.model_copy(update=upd)
    return cfg


def load_config(path: str | os.PathLike[str]) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read config {p}: {err.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{p}: not valid TOML: {err}") from None
    return parse_config(data, source=str(p), base=p.parent)
