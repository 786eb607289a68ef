"""The decode plans (laned.uplink.messages.codec._plan) decode what the value-by-value
decoder (_decode for every member) decoded: the same values of the same types, the same
errors naming the same paths — on every example of the contract and on broken copies."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import yaml

from laned.uplink import messages as m
from laned.uplink.contract import CONTRACT_FILE, ContractError, contract
from laned.uplink.messages.codec import _decode, _decode_fields, _hints, _Invalid


def reference(cls: type, data: Mapping[str, Any], path: str) -> Any:
    """_decode_fields as it was: the type of every member worked out on every value."""
    hints = _hints(cls)
    custom = getattr(cls, "_DECODERS", {})
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data or f.metadata.get("json") is False:
            continue
        where = f"{path}.{f.name}"
        decoder = custom.get(f.name)
        kwargs[f.name] = (decoder(data[f.name], data, where) if decoder
                          else _decode(hints[f.name], data[f.name], f.metadata, where))
    return cls(**kwargs)


def typed(value: Any) -> Any:
    """A value with the type of every part spelled out (1 == 1.0 == True would hide a change)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        # What is not sent (a request's raw payload) is not decoded either.
        return type(value), [(f.name, typed(getattr(value, f.name))) for f in dataclasses.fields(value)
                             if f.metadata.get("json") is not False]
    if isinstance(value, tuple):
        return tuple, [typed(v) for v in value]
    return type(value), value


def outcome(decode: Any, cls: type, data: Any) -> Any:
    try:
        return typed(decode(cls, data, "$"))
    except _Invalid as err:
        return _Invalid, err.path, err.reason
    except Exception as err:  # noqa: BLE001 — the error itself is what is compared
        return type(err), str(err)


def examples() -> list[tuple[str, dict[str, Any]]]:
    loaded = yaml.safe_load(CONTRACT_FILE.read_text(encoding="utf-8"))
    return [(name, ex["payload"]) for name, spec in loaded["components"]["messages"].items()
            for ex in spec.get("examples", []) if name in m.MESSAGE_CLASSES]


EXAMPLES = examples()
BROKEN = ["zz", "not a time", "2024-13-01", "bogus", "@@@", "3.5", 3.5, 3.0, None, True, -1, "", [], {}, ["zz"]]


def members(value: Any, path: tuple[str | int, ...] = ()) -> Iterator[tuple[str | int, ...]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield (*path, k)
            yield from members(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield (*path, i)
            yield from members(v, (*path, i))


def replaced(payload: Any, path: tuple[str | int, ...], new: Any) -> Any:
    if not path:
        return new
    head, *rest = path
    copy: Any = dict(payload) if isinstance(payload, dict) else list(payload)
    copy[head] = replaced(payload[head], tuple(rest), new)
    return copy


def test_every_message_class_has_an_example():
    assert {name for name, _ in EXAMPLES} == set(m.MESSAGE_CLASSES)


@pytest.mark.parametrize(("name", "payload"), EXAMPLES, ids=[name for name, _ in EXAMPLES])
def test_an_example_decodes_as_before_and_round_trips(name, payload):
    cls = m.MESSAGE_CLASSES[name]
    made = cls.from_dict(payload)
    assert typed(made) == typed(reference(cls, payload, "$"))
    assert typed(cls.from_dict(made.to_dict())) == typed(made)


@pytest.mark.parametrize(("name", "payload"), EXAMPLES, ids=[name for name, _ in EXAMPLES])
def test_every_broken_member_fails_or_decodes_as_before(name, payload):
    """Past the schema (which would refuse most of these): the decoders alone."""
    cls = m.MESSAGE_CLASSES[name]
    for path in members(payload):
        for new in BROKEN:
            broken = replaced(payload, path, new)
            assert outcome(_decode_fields, cls, broken) == outcome(reference, cls, broken), (path, new)


def decode_error(cls: type, data: Mapping[str, Any]) -> tuple[str, str]:
    with pytest.raises(_Invalid) as err:
        _decode_fields(cls, data, "$")
    return err.value.path, err.value.reason


def example(name: str) -> dict[str, Any]:
    return next(p for n, p in EXAMPLES if n == name)


def test_bad_values_are_named_by_their_path():
    tx = example("Transaction")
    assert decode_error(m.TransactionMsg, {**tx, "obu_id": "zz"}) == \
        ("$.obu_id", "'zz': non-hexadecimal number found in fromhex() arg at position 0")
    assert decode_error(m.TransactionMsg, {**tx, "created_at": "soon"}) == \
        ("$.created_at", "'soon': Invalid isoformat string: 'soon'")
    assert decode_error(m.TransactionMsg, {**tx, "contract_start": "2024-13-01"}) == \
        ("$.contract_start", "'2024-13-01': month must be in 1..12")
    assert decode_error(m.TransactionMsg, {**tx, "state": "lost"}) == \
        ("$.state", "'lost': 'lost' is not a valid TxState")
    # the first bad member in field order is the one named
    assert decode_error(m.TransactionMsg, {**tx, "tac": "zz", "state": "lost"})[0] == "$.state"
    assert decode_error(m.TransactionMsg, {**tx, "seq": "x"}) == \
        ("$.seq", "'x': invalid literal for int() with base 10: 'x'")

    chunk = example("ListChunk")
    assert decode_error(m.ListChunk, {**chunk, "data": "@@@"}) == \
        ("$.data", "'@@@': Only base64 data is allowed")

    versions = example("ListVersions")
    status_list = {"version": 1, "entries": 2, "updated_at": "later"}
    assert decode_error(m.ListVersions, {**versions, "status_list": status_list}) == \
        ("$.status_list.updated_at", "'later': Invalid isoformat string: 'later'")

    health = example("HealthSnapshot")
    checks = [{"name": "rsu", "status": "ok", "detail": "fine"}, {"name": "io", "status": "meh", "detail": "?"}]
    assert decode_error(m.HealthSnapshot, {**health, "checks": checks})[0] == "$.checks[1].status"

    request = example("CommandRequest")
    fetch = {**request, "command": "fetch_list", "args": {"kind": "menu", "version": 1}}
    assert decode_error(m.CommandRequest, fetch)[0] == "$.args.kind"  # through the class's own decoder

    request_chunks = {**example("ListRequest"), "chunks": [1, "x"]}
    assert decode_error(m.ListRequest, request_chunks) == \
        ("$.chunks[1]", "'x': invalid literal for int() with base 10: 'x'")


def test_from_dict_reports_the_decoders_path():
    tx = {**example("Transaction"), "created_at": "2024-11-22T09:30:12+08:00"}
    contract().validate("Transaction", tx)
    original = m.TransactionMsg.from_dict(tx)
    with pytest.raises(ContractError) as err:
        m.TransactionMsg.from_dict({**tx, "tx_uuid": "2b7d9f1e-3a5c-4e7b-9d1f-6a8c0e2b4d6z"})
    assert "$.tx_uuid" in str(err.value)
    assert original.created_at == dt.datetime(2024, 11, 22, 9, 30, 12, tzinfo=dt.timezone(dt.timedelta(hours=8)))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Odd:
    """Members the plans do not specialise: they decode (or fail) through _decode."""

    either: int | str | None = None
    many: list[int] | None = None
    pair: tuple[int, str] | None = None
    nested: tuple[tuple[bytes, ...], ...] | None = None
    hidden: int = dataclasses.field(default=0, metadata={"json": False})
    ratio: float | None = None
    day: dt.date | None = None
    flag: bool | None = None


@pytest.mark.parametrize("data", [
    {},
    {"either": 1}, {"many": [1, 2]}, {"pair": [1, "a"]},
    {"nested": [["00ff", "10"], []]}, {"nested": [["00ff", "1"]]},
    {"hidden": 5}, {"ratio": 2}, {"ratio": "x"}, {"day": "2024-01-02"}, {"flag": 0},
    {"flag": True, "ratio": 1.5, "day": "2024-02-30"},
])
def test_members_the_plan_does_not_specialise_fail_or_decode_as_before(data):
    assert outcome(_decode_fields, Odd, data) == outcome(reference, Odd, data)
