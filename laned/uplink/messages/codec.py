"""The codec the messages share: :class:`UplinkMessage`, the base of every message class
(to and from the contract's JSON), the field metadata (:data:`LANE_TIME`, :data:`BASE64`,
:data:`NOT_JSON`) and :func:`canonical_json`, the form a signature covers.

The helpers with a leading underscore are the package's own: the message modules use them,
nothing outside :mod:`laned.uplink.messages` should.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import enum
import json
import math
import types
import typing
import uuid
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Final, Self

from laned.strict_json import reject_constant
from laned.uplink.contract import ContractError, validate

# -- the codec --------------------------------------------------------------------------------------
# Field metadata: LANE_TIME marks a naive lane time; BASE64 bytes travel as base64, not hex;
# NOT_JSON fields are kept on the value but never sent.

LANE_TIME: Mapping[str, Any] = types.MappingProxyType({"lane_time": True})
BASE64: Mapping[str, Any] = types.MappingProxyType({"base64": True})
NOT_JSON: Mapping[str, Any] = types.MappingProxyType({"json": False})


class _Invalid(Exception):
    def __init__(self, path: str, reason: str) -> None:
        super().__init__(reason)
        self.path, self.reason = path, reason


def _encode(value: Any, meta: Mapping[str, Any], path: str) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Invalid(path, f"{value!r} is not a finite number")
        return value
    if isinstance(value, (str, int)):
        return value
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii") if meta.get("base64") else value.hex()
    if isinstance(value, dt.datetime):
        naive = value.tzinfo is None or value.utcoffset() is None
        if naive != bool(meta.get("lane_time")):
            raise _Invalid(path, "a lane time must be naive (no offset)" if meta.get("lane_time")
                           else "an absolute time needs a time zone (an aware datetime)")
        return _iso(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if isinstance(value, tuple):
        return [_encode(v, meta, f"{path}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _encode_fields(value, path)
    raise _Invalid(path, f"cannot encode {type(value).__name__}")


def _iso(value: dt.datetime) -> str:
    """RFC 3339 with as many fraction digits as the value needs: none, 3 or 6."""
    spec = ("seconds" if value.microsecond == 0 else "milliseconds" if value.microsecond % 1000 == 0
            else "microseconds")
    return value.isoformat(timespec=spec)


_JSON_FIELDS: dict[type, tuple[tuple[str, Mapping[str, Any]], ...]] = {}


def _json_fields(cls: type) -> tuple[tuple[str, Mapping[str, Any]], ...]:
    """The (name, metadata) of the fields a class sends, looked up once per class: the
    outbox encodes thousands of transactions a second while a backlog drains."""
    found = _JSON_FIELDS.get(cls)
    if found is None:
        found = _JSON_FIELDS[cls] = tuple((f.name, f.metadata) for f in dataclasses.fields(cls)
                                          if f.metadata.get("json") is not False)
    return found


def _encode_fields(value: Any, path: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, meta in _json_fields(type(value)):
        item = getattr(value, name)
        if item is None:
            continue
        kind = type(item)
        # Most members are plain text and numbers: taken as they are (an enum, a bool or
        # a subclass goes the long way).
        out[name] = item if kind is str or kind is int else _encode(item, meta, f"{path}.{name}")
    return out


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    found = _HINTS.get(cls)
    if found is None:
        found = _HINTS[cls] = typing.get_type_hints(cls)
    return found


def _decode(tp: Any, value: Any, meta: Mapping[str, Any], path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is types.UnionType or origin is typing.Union:
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(options) != 1:
            raise TypeError(f"{path}: a union of {options} needs its own decoder")
        return _decode(options[0], value, meta, path)
    if origin is tuple:
        (item,) = (a for a in typing.get_args(tp) if a is not Ellipsis)
        return tuple(_decode(item, v, meta, f"{path}[{i}]") for i, v in enumerate(value))
    try:
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            return tp(value)
        if tp is float:
            return float(value)
        if tp is int:  # JSON Schema counts 3.0 as an integer: keep it one here too
            return int(value)
        if tp in (str, bool):
            return value
        if tp is bytes:
            return base64.b64decode(value, validate=True) if meta.get("base64") else bytes.fromhex(value)
        if tp is dt.datetime:
            return dt.datetime.fromisoformat(value)
        if tp is dt.date:
            return dt.date.fromisoformat(value)
    except (ValueError, binascii.Error) as err:
        raise _Invalid(path, f"{value!r}: {err}") from None
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _decode_fields(tp, value, path)
    raise TypeError(f"{path}: no decoder for {tp!r}")


# -- decode plans ------------------------------------------------------------------------------------
# _decode works out what a declared type needs on every value; a backlog draining after an
# outage decodes thousands of messages a second, so each class's fields get their converter
# chosen once (a "plan"). A converter must do exactly what _decode does for that type: the
# same value, the same exception, the same path. Types the plan does not specialise fall
# back to _decode itself.

_Convert = Callable[[Any, Mapping[str, Any], str], Any]
# (field name, converter): None takes the value as it is (text and flags need nothing).
_Step = tuple[str, _Convert | None]

_PLANS: dict[type, tuple[_Step, ...]] = {}


def _plan(cls: type) -> tuple[_Step, ...]:
    found = _PLANS.get(cls)
    if found is None:
        hints = _hints(cls)
        custom: Mapping[str, _Convert] = getattr(cls, "_DECODERS", {})
        found = _PLANS[cls] = tuple((f.name, custom.get(f.name) or _converter(hints[f.name], f.metadata))
                                    for f in dataclasses.fields(cls) if f.metadata.get("json") is not False)
    return found


def _converter(tp: Any, meta: Mapping[str, Any]) -> _Convert | None:
    """What _decode(tp, …, meta, …) does, as one function; None when it returns the value."""
    origin = typing.get_origin(tp)
    if origin is types.UnionType or origin is typing.Union:
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        return _converter(options[0], meta) if len(options) == 1 else _fallback(tp, meta)
    if origin is tuple:
        items = [a for a in typing.get_args(tp) if a is not Ellipsis]
        return _items(_converter(items[0], meta)) if len(items) == 1 else _fallback(tp, meta)
    if tp in (str, bool):
        return None
    parse = _parser(tp, meta)
    if parse is not None:
        return _guarded(parse)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _nested(tp)
    return _fallback(tp, meta)


def _parser(tp: Any, meta: Mapping[str, Any]) -> Callable[[Any], Any] | None:
    """The one-argument parse _decode applies to a scalar of type ``tp`` (None: not a scalar)."""
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp
    if tp is float:
        return float
    if tp is int:  # JSON Schema counts 3.0 as an integer: keep it one here too
        return int
    if tp is bytes:
        return _b64decode if meta.get("base64") else bytes.fromhex
    if tp is dt.datetime:
        return dt.datetime.fromisoformat
    if tp is dt.date:
        return dt.date.fromisoformat
    return None


def _b64decode(value: Any) -> bytes:
    return base64.b64decode(value, validate=True)


def _guarded(parse: Callable[[Any], Any]) -> _Convert:
    def convert(value: Any, data: Mapping[str, Any], where: str) -> Any:
        try:
            return parse(value)
        except (ValueError, binascii.Error) as err:
            raise _Invalid(where, f"{value!r}: {err}") from None
    return convert


def _items(item: _Convert | None) -> _Convert:
    def convert(value: Any, data: Mapping[str, Any], where: str) -> Any:
        if item is None:
            return tuple(value)
        return tuple(item(v, data, f"{where}[{i}]") for i, v in enumerate(value))
    return convert


def _nested(cls: type) -> _Convert:
    # The nested class's plan is looked up when a value comes, not now: as _decode, a class
    # whose hints cannot be resolved fails only when one of its values is decoded.
    def convert(value: Any, data: Mapping[str, Any], where: str) -> Any:
        return _decode_fields(cls, value, where)
    return convert


def _fallback(tp: Any, meta: Mapping[str, Any]) -> _Convert:
    def convert(value: Any, data: Mapping[str, Any], where: str) -> Any:
        return _decode(tp, value, meta, where)
    return convert


def _decode_fields(cls: type, data: Mapping[str, Any], path: str) -> Any:
    kwargs: dict[str, Any] = {}
    for name, convert in _plan(cls):
        if name in data:
            value = data[name]
            kwargs[name] = value if convert is None else convert(value, data, f"{path}.{name}")
    return cls(**kwargs)


def compact_json(payload: Any) -> str:
    """A payload as laned publishes it: compact, UTF-8 kept, members in their order. The
    centre keeps each transaction in this form too, however it came."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


# The integers on which Python's JSON and RFC 8785 agree: JCS writes a number as ECMAScript
# does (an IEEE double), so 2**53 + 1 would be signed as one text and verified as another.
JCS_SAFE_INT: Final = 2**53 - 1


def canonical_json(payload: Mapping[str, Any]) -> bytes:
    """RFC 8785 (JCS) form of a payload without floats: sorted keys, no white space, UTF-8.

    ValueError for an integer beyond ±:data:`JCS_SAFE_INT` (or a float): there JCS and this
    form differ, and a centre signing with a JCS library would not be verified."""
    _check_jcs_numbers(payload, "$")
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def _check_jcs_numbers(value: Any, path: str) -> None:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return
    if isinstance(value, int):
        if not -JCS_SAFE_INT <= value <= JCS_SAFE_INT:
            raise ValueError(f"{path} is {value}, beyond the integers a signature can cover (±{JCS_SAFE_INT}, "
                             "RFC 8785)")
    elif isinstance(value, float):
        raise ValueError(f"{path} is a number with a fraction, which a signed payload does not carry")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _check_jcs_numbers(item, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_jcs_numbers(item, f"{path}[{i}]")


class UplinkMessage:
    """Base of the message classes: the conversions to and from the contract's JSON."""

    MESSAGE: ClassVar[str]  # the contract's message name (components.messages)

    def to_dict(self) -> dict[str, Any]:
        try:
            return _encode_fields(self, "$")
        except _Invalid as err:
            raise ContractError(self.MESSAGE, [(err.path, err.reason)]) from None

    def to_json(self) -> str:
        """Compact UTF-8 JSON text, as published."""
        return compact_json(self.to_dict())

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        """Check ``data`` against the contract, then build the value (ContractError if either fails)."""
        validate(cls.MESSAGE, data)
        try:
            made: Self = _decode_fields(cls, data, "$")
            made._check()
        except _Invalid as err:
            raise ContractError(cls.MESSAGE, [(err.path, err.reason)]) from None
        return made

    @classmethod
    def from_json(cls, raw: str | bytes | bytearray) -> Self:
        """Parse a received payload (UTF-8 JSON text) and build the value; see :meth:`from_dict`."""
        try:
            data = json.loads(raw, parse_constant=reject_constant)
        except (ValueError, UnicodeDecodeError) as err:
            raise ContractError(cls.MESSAGE, [("$", f"not JSON: {err}")]) from None
        return cls.from_dict(data)

    def _check(self) -> None:
        """Rules that span members (JSON Schema cannot say them); raise _Invalid."""

    def rows(self) -> int:
        """The outbox rows the message carries (a batch of transactions carries several)."""
        return 1


# -- checks and signatures the message modules share -----------------------------------------------

def _check_uuid(value: str, path: str) -> None:
    try:
        uuid.UUID(value)
    except ValueError:
        raise _Invalid(path, f"{value!r} is not a UUID") from None


def _signed_bytes(msg: UplinkMessage, raw: Mapping[str, Any] | None) -> bytes:
    payload = dict(raw) if raw is not None else msg.to_dict()
    payload.pop("signature", None)
    return canonical_json(payload)
