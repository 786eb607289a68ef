"""The configuration's value types and checks, shared by every section: dotted-key errors,
hex and digit strings, paths relative to the file, secret files, the lane id, time zones."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationInfo
from pydantic_core import PydanticCustomError

from laned.uplink.tls import TlsConfigError, check_private_key_file

# The lane's time zone (``[lane] timezone``) unless the file names another: the daemon's
# civil clock runs in it, whatever the host's own time zone is.
DEFAULT_TIMEZONE = "Asia/Shanghai"


class ConfigError(ValueError):
    """The configuration cannot be used; the message says where and why."""


# -- value types ------------------------------------------------------------------------------

def key_error(key: str, message: str) -> PydanticCustomError:
    """An error about ``key`` inside the model being validated (see :func:`_format`)."""
    return PydanticCustomError("config_key", "{message}", {"key": key, "message": message})


def hex_bytes(size: int, what: str) -> AfterValidator:
    def check(value: str) -> str:
        if len(value) != 2 * size or not all(c in "0123456789abcdefABCDEF" for c in value):
            raise ValueError(f"expected {what}: {2 * size} hex digits")
        return value.lower()
    return AfterValidator(check)


def digits(n: int, what: str) -> AfterValidator:
    def check(value: str) -> str:
        if len(value) != n or not value.isdigit():
            raise ValueError(f"expected {what}: {n} digits")
        return value
    return AfterValidator(check)


def check_config_path(value: Path, info: ValidationInfo) -> Path:
    """Relative paths are relative to the config file's folder."""
    base = (info.context or {}).get("base")
    return value if value.is_absolute() or base is None else Path(base) / value


def check_readable_file(value: Path) -> Path:
    if not value.is_file():
        raise ValueError(f"{value} does not exist or is not a file")
    if not os.access(value, os.R_OK):
        raise ValueError(f"{value} cannot be read by the user laned runs as")
    return value


def check_private_key(value: Path) -> Path:
    """The uplink's private key: mode 0600/0400, owned by laned's user (laned.uplink.tls)."""
    try:
        return check_private_key_file(value)
    except TlsConfigError as err:
        raise ValueError(str(err)) from None


def check_lane_id(value: str) -> str:
    if not 1 <= len(value) <= 32 or not re.fullmatch(r"[A-Za-z0-9_.-]+", value):
        raise ValueError("expected 1–32 letters, digits, '-', '_' or '.' (e.g. G0001-0201-03)")
    return value


def check_timezone(value: str) -> str:
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


IssuerId = Annotated[str, hex_bytes(8, "an 8-byte issuer id")]
DivFactor = Annotated[str, hex_bytes(8, "an 8-byte diversification factor")]
ConfigPath = Annotated[Path, AfterValidator(check_config_path)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
