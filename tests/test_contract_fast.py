"""The contract's fast check (fastjsonschema) gives jsonschema's verdict, on every message.

:meth:`Contract.validate` accepts what the compiled fast check accepts and asks jsonschema
about the rest, for the report. These scenarios take valid payloads of every message — the
document's examples, messages built from journal rows and in code — break them in every way
a generator can think of (a member removed, replaced by a value of a wrong type, a string
that breaks its pattern or enum, a whole number written as 3.0, a bool for an integer, an
extra member, nested objects broken…) and hold the fast verdict to jsonschema's each time.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
from collections.abc import Iterator
from typing import Any

import fastjsonschema
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from laned.uplink import messages as m
from laned.uplink.contract import CONTRACT_FILE, Contract, ContractError
from tests.test_uplink_contract import _journal_rows

LANE = "G0001-0201-03"
T0 = dt.datetime(2024, 11, 22, 9, 30, 12, tzinfo=dt.timezone(dt.timedelta(hours=8)))
KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"fast contract test key").digest())


@pytest.fixture(scope="module")
def contract() -> Contract:
    return Contract.load(CONTRACT_FILE)


@pytest.fixture(scope="module")
def reference() -> Contract:
    """The same contract checked by jsonschema alone (as laned did before the fast check)."""
    c = Contract.load(CONTRACT_FILE)
    c._fast.update(dict.fromkeys(c.messages))  # no fast check for any message
    return c


def _examples() -> list[tuple[str, dict[str, Any]]]:
    loaded = yaml.safe_load(CONTRACT_FILE.read_text(encoding="utf-8"))
    return [(name, ex["payload"]) for name, spec in loaded["components"]["messages"].items()
            for ex in spec.get("examples", [])]


def _journal_transactions(tmp_path: Any) -> list[dict[str, Any]]:
    """Every kind of journal row as the outbox publishes it (the contract tests' rows)."""
    return [m.TransactionMsg.from_entry(row).to_dict() for row in _journal_rows(tmp_path)]


def _command(command: m.CommandName, args: Any) -> m.CommandRequest:
    unsigned = m.CommandRequest(lane_id=LANE, command_id="2b7d9f1e-3a5c-4e7b-9d1f-6a8c0e2b4d6f", seq=60, issued_at=T0,
                                expires_at=T0 + dt.timedelta(minutes=5), command=command, args=args, key_id="k-1")
    return unsigned.signed(KEY.sign(unsigned.signed_bytes()))


def _built() -> list[tuple[str, dict[str, Any]]]:
    request = _command(m.CommandName.SHOW_MESSAGE, m.ShowMessageArgs(line1="ETC暂停", line2="请走人工车道", duration_s=60))
    built: list[m.UplinkMessage] = [
        m.LaneState.last_will(LANE),
        m.TxAck(lane_id=LANE, stream=m.AckStream.TX, first_seq=5, last_seq=9),
        m.ListRequest(lane_id=LANE, kind=m.ListKind.STATUS_LIST, version=42, at=T0, chunks=(0, 3)),
        m.ListVersions(lane_id=LANE, at=T0, status_list=m.StatusListVersion(version=42, entries=10),
                       fee_table=m.FeeTableVersion(version=7, valid_from=T0)),
        m.ListChunk(kind=m.ListKind.FEE_TABLE, version=8, index=0, data=b"version = 8\n",
                    sha256=hashlib.sha256(b"version = 8\n").digest()),
        request, m.CommandResult.executed(request, T0),
        m.CommandResult.refused(request, m.RefusalReason.WRONG_LANE, T0, "for another lane", lane_id="L2"),
        _command(m.CommandName.FETCH_LIST, m.FetchListArgs(kind=m.ListKind.FEE_TABLE, version=8)),
        _command(m.CommandName.RAISE_BARRIER, m.RaiseBarrierArgs(operator="op-1", reason="paid at booth")),
    ]
    return [(msg.MESSAGE, msg.to_dict()) for msg in built]


# -- the mutation generator ------------------------------------------------------------------------

Path = tuple[str | int, ...]
WRONG_VALUES: list[Any] = [None, True, False, 0, 1, -1, 3.0, 2.5, 2**32, 2**63, -(2**63) - 1, float("nan"), "", "x",
                           "x\n", "車" * 70, [], [1], [1, 1], {}, {"a": 1}]


def _nodes(value: Any, path: Path = ()) -> Iterator[tuple[Path, Any]]:
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _nodes(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _nodes(v, (*path, i))


def _replaced(payload: Any, path: Path, new: Any) -> Any:
    if not path:
        return new
    out = copy.deepcopy(payload)
    target = out
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = new
    return out


def _strings_of(schema: Any) -> list[str]:
    """Every string a const or enum of the schema names (switches if/then branches, enums)."""
    found: list[str] = []
    if isinstance(schema, dict):
        for key, value in schema.items():
            if key == "const" and isinstance(value, str):
                found.append(value)
            elif key == "enum":
                found += [v for v in value if isinstance(v, str)]
            elif key not in ("required", "pattern", "type"):
                found += _strings_of(value)
    elif isinstance(schema, list):
        for item in schema:
            found += _strings_of(item)
    return list(dict.fromkeys(found))


def _like(value: Any) -> list[Any]:
    """Values close to ``value``: what breaks a pattern, a range, a type by a hair."""
    if isinstance(value, bool):
        return [not value, int(value), float(value), str(value).lower()]
    if isinstance(value, int):
        return [float(value), value + 0.5, -value - 1, value + 1, value * 2**32, str(value), bool(value)]
    if isinstance(value, float):
        return [int(value), -value, value * 1e30]
    if isinstance(value, str):
        return [value + "\n", value + "!", value[:-1], value.upper(), " " + value, value * 8, value[::-1],
                value.replace("+08:00", "Z"), value.replace("T", " "), value[:10]]
    if isinstance(value, list):
        return [value + value, value[:1] * 2, [*value, None], value[1:]]
    if isinstance(value, dict):
        return [{k: v for k, v in value.items() if k != key} for key in value] + [{**value, "zz_extra": 1}]
    return []


def mutations(payload: dict[str, Any], strings: list[str]) -> Iterator[Any]:
    """Every single-step break of ``payload``, at every depth (and the payload itself)."""
    yield payload
    for path, value in _nodes(payload):
        if isinstance(value, dict):
            for key in value:  # each member removed
                yield _replaced(payload, path, {k: v for k, v in value.items() if k != key})
            yield _replaced(payload, path, {**value, "zz_extra": 1})
        for new in [*WRONG_VALUES, *_like(value), *(strings if path else ())]:
            yield _replaced(payload, path, new)


VALID = _examples() + _built()


# -- scenarios -----------------------------------------------------------------------------------

def test_every_message_of_the_contract_has_a_fast_check(contract):
    """Today's schemas use only keywords that read alike in draft-07 and 2020-12."""
    assert {name for name in contract.messages if contract.fast_check(name) is None} == set()


def test_every_message_has_a_valid_payload_here(contract):
    assert {name for name, _ in VALID} == set(contract.messages)


@pytest.mark.parametrize(("message", "payload"), VALID, ids=[f"{name}-{i}" for i, (name, _) in enumerate(VALID)])
def test_the_fast_check_agrees_with_jsonschema_on_every_mutation(contract, reference, message, payload):
    strings = _strings_of(contract.validator(message).schema)
    accepted = refused = 0
    for mutated in mutations(payload, strings):
        fast = contract.fast_accepts(message, mutated)
        problems = contract.problems(message, mutated)
        assert fast is not None
        assert fast == (problems == []), (message, mutated, problems)
        if fast:
            accepted += 1
            contract.validate(message, mutated)
            continue
        refused += 1
        with pytest.raises(ContractError) as fast_err:
            contract.validate(message, mutated)
        with pytest.raises(ContractError) as ref_err:
            reference.validate(message, mutated)
        assert (str(fast_err.value), fast_err.value.problems) == (str(ref_err.value), ref_err.value.problems)
    assert accepted >= 1 and refused >= 20  # the generator does break payloads, and not all of them


def test_transactions_from_journal_rows_and_their_mutations_agree(contract, tmp_path):
    strings = _strings_of(contract.validator("Transaction").schema)
    for payload in _journal_transactions(tmp_path):
        assert contract.fast_accepts("Transaction", payload) is True
        for mutated in mutations(payload, strings):
            assert contract.fast_accepts("Transaction", mutated) == (contract.problems("Transaction", mutated) == [])


@pytest.mark.parametrize("payload", [None, [], "x", 1, 1.0, True, [{}], ""])
def test_a_payload_that_is_not_an_object_is_refused_by_both(contract, payload):
    for message in contract.messages:
        assert contract.fast_accepts(message, payload) is False
        assert contract.problems(message, payload)


@pytest.mark.parametrize(("member", "value", "conforms"), [
    ("seq", 1840.0, True),  # 2020-12: a whole number is an integer, whatever its spelling
    ("seq", 1840.5, False),
    ("seq", True, False),  # a bool is no integer
    ("reconcile_required", 1, False),  # nor an integer a bool
    ("lane_id", f"{LANE}\n", False),  # ECMA-262: "$" is the end of the string, not before a final newline
    ("lane_id", f"{LANE}\n\n", False),
    ("contract_start", "2024-02-30", True),  # format is not asserted (no FormatChecker); the class checks dates
    ("state", "intent", False),
])
def test_the_edge_cases_read_as_jsonschema_reads_them(contract, member, value, conforms):
    payload = {**dict(_examples())["Transaction"], member: value}
    assert (contract.problems("Transaction", payload) == []) is conforms
    assert contract.fast_accepts("Transaction", payload) is conforms


def test_data_that_is_not_base64_is_no_concern_of_the_schema_in_2020_12(contract):
    """contentEncoding only annotates in 2020-12; draft-07 fastjsonschema would decode it."""
    chunk = next(p for name, p in _examples() if name == "ListChunk")
    payload = {**chunk, "data": "abc"}  # fits the pattern, bad padding
    assert contract.fast_accepts("ListChunk", payload) is True and contract.problems("ListChunk", payload) == []


def test_a_tuple_is_no_json_array_and_the_fast_check_leaves_it_to_jsonschema(contract, reference):
    payload = m.ListRequest(lane_id=LANE, kind=m.ListKind.STATUS_LIST, version=42, at=T0, chunks=(0, 3)).to_dict()
    payload["chunks"] = tuple(payload["chunks"])
    assert contract.fast_accepts("ListRequest", payload) is None
    with pytest.raises(ContractError) as err:
        contract.validate("ListRequest", payload)
    assert err.value.path == "$.chunks" and err.value.reason == "(0, 3) is not of type array"
    with pytest.raises(ContractError) as ref_err:
        reference.validate("ListRequest", payload)
    assert str(err.value) == str(ref_err.value)


def test_a_refused_transaction_reads_as_before_naming_path_and_reason(contract, reference):
    payload = {**dict(_examples())["Transaction"], "amount": -1, "speed": 3}
    del payload["seq"]
    with pytest.raises(ContractError) as err:
        contract.validate("Transaction", payload)
    assert str(err.value) == ("Transaction: $.speed: member not in the contract (unexpected); $.seq: required member "
                              "is missing; $.amount: -1 is less than the minimum of 0")
    assert (err.value.path, err.value.reason) == ("$.speed", "member not in the contract (unexpected)")
    with pytest.raises(ContractError) as ref_err:
        reference.validate("Transaction", payload)
    assert err.value.problems == ref_err.value.problems and str(err.value) == str(ref_err.value)


def test_a_payload_the_fast_check_refuses_but_jsonschema_accepts_is_still_refused():
    """A disagreement is a bug in the fast check; it must never let anything through."""
    c = Contract.load(CONTRACT_FILE)
    valid = dict(_examples())["Transaction"]

    def refuses_everything(payload: Any) -> Any:
        raise fastjsonschema.JsonSchemaValueException("refused")

    c._fast["Transaction"] = refuses_everything
    assert c.problems("Transaction", valid) == []
    with pytest.raises(ContractError) as err:
        c.validate("Transaction", valid)
    assert err.value.path == "$" and "fast check" in err.value.reason


def test_a_fast_check_that_crashes_leaves_the_verdict_to_jsonschema():
    c = Contract.load(CONTRACT_FILE)
    c._fast["Transaction"] = lambda payload: 1 / 0
    valid = dict(_examples())["Transaction"]
    assert c.fast_accepts("Transaction", valid) is None
    c.validate("Transaction", valid)
    with pytest.raises(ContractError, match=r"\$\.seq"):
        c.validate("Transaction", {**valid, "seq": 0})


def _one_message_contract(schema: dict[str, Any]) -> Contract:
    return Contract({"asyncapi": "3.0.0", "channels": {},
                     "components": {"messages": {"M": {"payload": {"$ref": "#/components/schemas/M"}}},
                                    "schemas": {"M": schema, "Node": {
                                        "type": "object", "properties": {"next": {"$ref": "#/components/schemas/Node"}}}}}})


@pytest.mark.parametrize(("schema", "valid", "invalid"), [
    ({"type": "array", "prefixItems": [{"type": "integer"}]}, [1, "x"], ["x"]),
    ({"type": "object", "dependentRequired": {"a": ["b"]}}, {"b": 1}, {"a": 1}),
    ({"type": "object", "properties": {"a": {"type": "integer"}}, "unevaluatedProperties": False}, {"a": 1}, {"b": 1}),
    ({"type": "object", "properties": {"node": {"$ref": "#/components/schemas/Node"}}},
     {"node": {"next": {}}}, {"node": {"next": 1}}),  # a recursive $ref stays a $ref
    ({"type": "object", "dependencies": {"a": ["b"]}}, {"a": 1}, []),  # not a 2020-12 keyword: ignored
    ({"type": "number", "multipleOf": 0.5}, 1.5, 1.2),  # float arithmetic differs between the two
    ({"type": "object", "properties": {"a-b": {"type": "integer"}}}, {"a-b": 1}, {"a-b": "x"}),
    ({"const": 1, "enum": [1, 2]}, 1, 2),  # const is compiled as an enum: not beside another
])
def test_a_schema_the_fast_check_cannot_read_as_2020_12_is_left_to_jsonschema(schema, valid, invalid):
    c = _one_message_contract(schema)
    assert c.fast_check("M") is None and c.fast_accepts("M", valid) is None
    c.validate("M", valid)
    with pytest.raises(ContractError):
        c.validate("M", invalid)


@pytest.mark.parametrize(("pattern", "compiled"), [
    (r"^a\$$", True),  # an escaped "$" and an end anchor
    ("^[$a]+$", False),  # fastjsonschema rewrites the "$" in the set too, to a bad escape: jsonschema alone
])
def test_a_pattern_is_searched_as_written_whatever_its_dollars(pattern, compiled):
    c = _one_message_contract({"type": "string", "pattern": pattern})
    assert (c.fast_check("M") is not None) is compiled
    for value in ("a$", "a$\n", "$a", "a$\n\n", "b", "$", "a"):
        verdict = c.fast_accepts("M", value)
        assert verdict is (c.problems("M", value) == []) if compiled else verdict is None, value


def test_the_fast_check_does_not_touch_the_payload(contract):
    for message, payload in VALID:
        before = copy.deepcopy(payload)
        assert contract.fast_accepts(message, payload) is True
        assert payload == before



ODD_VALUES: list[Any] = [None, True, False, 0, 1, 1.0, 2.5, 5, 10, -1, "", "ab", "abc", "ab\n", [], [1], [1, 1], [1, True],
                         [1, 1.0], [0, False], ["a", None], [{"k": [1]}], [{"k": [True]}], [{"k": [1]}, {"k": [1.0]}], {},
                         {"a": 1}, {"a": True}, {"b": True}, {"a": [1, True]}, {"a": [1, 1]}, {"a": [True, 1]},
                         {"a": 1, "b": 2, "c": 3}, {"s": "x"}, {"s": "x", "n": 1}, {"s": "y", "n": 1}, {"n": 0},
                         {"n": False}]


@pytest.mark.parametrize("schema", [
    {"type": "object", "minProperties": 1, "maxProperties": 2},
    {"type": ["integer", "null"], "exclusiveMinimum": 0, "exclusiveMaximum": 10},
    {"anyOf": [{"type": "string", "maxLength": 2}, {"type": "integer", "minimum": 5}]},
    {"oneOf": [{"type": "integer"}, {"type": "number", "maximum": 3}]},
    {"type": "array", "items": {"enum": [1, "a", None, True, {"k": [1]}]}, "uniqueItems": True, "minItems": 1},
    {"type": "array", "uniqueItems": True, "maxItems": 2},
    {"not": {"required": ["a"]}, "additionalProperties": {"type": "boolean"}},
    {"const": {"a": [1, True]}},
    {"const": True},
    {"const": 1},
    {"const": None},
    {"type": "object", "properties": {"s": {"const": "x"}, "n": {"type": "integer"}},
     "if": {"properties": {"s": {"const": "x"}}, "required": ["s"]}, "then": {"required": ["n"]},
     "else": {"properties": {"n": {"const": 0}}}},
    {"enum": [0, False, "", [], {}]},
    {"if": {"type": "integer"}, "then": {"minimum": 2}, "else": {"type": "array"}},
    {"type": "number", "minimum": 1, "maximum": 5},
    {"minimum": 1},  # no type: a bool is no number, so not held to it
], ids=lambda s: str(s)[:60])
def test_the_other_keywords_the_fast_check_compiles_agree_with_jsonschema(schema):
    c = _one_message_contract(schema)
    assert c.fast_check("M") is not None
    for value in ODD_VALUES:
        assert c.fast_accepts("M", value) is (c.problems("M", value) == []), value


def test_warming_the_contract_builds_every_check_once_so_none_compiles_later():
    c = Contract.load(CONTRACT_FILE).warm()
    built = {m: (c.validator(m), c.fast_check(m)) for m in c.messages}
    assert all(fast is not None for _, fast in built.values())  # every message of today's contract has one
    assert all(c.validator(m) is v and c.fast_check(m) is f for m, (v, f) in built.items())
