"""The uplink contract (docs/asyncapi.yaml) and the typed messages that conform to it.

The document is checked as an AsyncAPI 3.0.0 document (against the AsyncAPI project's own
JSON Schema, tests/data/asyncapi/), every payload schema as a JSON Schema, every example
against its schema; every message class round-trips and what it builds — from real
journal rows, a real alarm registry — conforms. Bad payloads are refused with an error
that names the member.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import datetime as dt
import hashlib
import json
import pathlib
import re
from typing import Any

import pytest
import yaml
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from jsonschema import Draft7Validator, Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7, DRAFT202012

from laned.health.alarms import CATALOGUE, AlarmKind, AlarmRegistry, Change, Severity
from laned.health.checks import CheckResult, CheckStatus
from laned.journal import B5Result, Journal, Observed, TransactionIntent, TxKind, TxState
from laned.lane.events import Device
from laned.uplink import contract as contract_mod
from laned.uplink import messages as m
from laned.uplink.contract import CONTRACT_FILE, Contract, ContractError, Direction

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC_FILE = ROOT / "docs" / "asyncapi.yaml"
ASYNCAPI_SCHEMA = ROOT / "tests" / "data" / "asyncapi" / "asyncapi-3.0.0.schema.json"
LANE = "G0001-0201-03"
T0 = dt.datetime(2024, 11, 22, 9, 30, 12, tzinfo=dt.timezone(dt.timedelta(hours=8)))
EXAMPLE_KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"laned asyncapi example key").digest())


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    with DOC_FILE.open(encoding="utf-8") as f:
        loaded: dict[str, Any] = yaml.safe_load(f)
    return loaded


@pytest.fixture(scope="module")
def contract() -> Contract:
    return Contract.load(DOC_FILE)


def _examples() -> list[tuple[str, str, dict[str, Any]]]:
    loaded = yaml.safe_load(DOC_FILE.read_text(encoding="utf-8"))
    return [(name, ex["name"], ex["payload"]) for name, spec in loaded["components"]["messages"].items()
            for ex in spec.get("examples", [])]


EXAMPLES = _examples()


def example(message: str, name: str | None = None) -> dict[str, Any]:
    return copy.deepcopy(next(p for msg, n, p in EXAMPLES if msg == message and (name is None or n == name)))


def _walk(node: Any, path: str = "$"):
    yield path, node
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]")


def _registry(doc: dict[str, Any], spec) -> Registry:
    return Registry().with_resource("urn:test:doc", Resource.from_contents(doc, default_specification=spec))


# -- the document ---------------------------------------------------------------------------------

def test_the_document_is_a_valid_asyncapi_3_0_0_document(doc):
    """Against the AsyncAPI project's own schema of 3.0.0 documents (bindings included)."""
    assert doc["asyncapi"] == "3.0.0"
    schema = json.loads(ASYNCAPI_SCHEMA.read_text(encoding="utf-8"))
    errors = [f"{e.json_path}: {e.message[:200]}" for e in Draft7Validator(schema).iter_errors(doc)]
    assert not errors, "\n".join(errors)


def test_the_asyncapi_schema_check_would_see_a_broken_binding(doc):
    schema = json.loads(ASYNCAPI_SCHEMA.read_text(encoding="utf-8"))
    broken = copy.deepcopy(doc)
    broken["operations"]["sendTransaction"]["bindings"]["mqtt"]["qos"] = 3
    broken["operations"]["receiveTxAck"]["action"] = "subscribe"
    assert len(list(Draft7Validator(schema).iter_errors(broken))) == 2


def test_the_packaged_contract_is_a_byte_for_byte_copy_of_docs_asyncapi_yaml():
    assert CONTRACT_FILE.read_bytes() == DOC_FILE.read_bytes(), (
        "laned/uplink/asyncapi.yaml differs from docs/asyncapi.yaml: cp docs/asyncapi.yaml laned/uplink/")


def test_the_document_holds_only_json_values_no_yaml_dates_or_octals(doc):
    """PyYAML reads an unquoted 2024-11-22 as a date and 0102 as a number: quote them."""
    odd = [f"{path}: {type(v).__name__}" for path, v in _walk(doc)
           if not isinstance(v, (dict, list, str, int, float, bool, type(None)))]
    assert not odd


def test_every_channel_sits_under_the_per_lane_prefix_with_the_lane_id_parameter(doc):
    for name, channel in doc["channels"].items():
        assert channel["address"].startswith("etc/v1/{lane_id}/"), name
        assert set(re.findall(r"\{(\w+)\}", channel["address"])) == {"lane_id"}, name
        assert channel["parameters"] == {"lane_id": {"$ref": "#/components/parameters/lane_id"}}, name
    assert re.fullmatch(doc["components"]["parameters"]["lane_id"]["x-pattern"], LANE)


def test_every_channel_carries_one_message_and_has_one_operation_of_laned(doc):
    used = {}
    for op_name, op in doc["operations"].items():
        channel = op["channel"]["$ref"].removeprefix("#/channels/")
        assert channel not in used, f"{channel}: {used.get(channel)} and {op_name}"
        used[channel] = op_name
        assert op["action"] in ("send", "receive")
        assert op["bindings"]["mqtt"]["qos"] in (0, 1, 2)
        assert isinstance(op["bindings"]["mqtt"]["retain"], bool)
        assert op["messages"] == [{"$ref": f"#/channels/{channel}/messages/{m}"} for m in doc["channels"][channel]["messages"]]
    assert set(used) == set(doc["channels"])
    for name, channel in doc["channels"].items():
        assert len(channel["messages"]) == 1, name


def test_every_ref_in_the_document_resolves(doc):
    for path, node in _walk(doc):
        if isinstance(node, dict) and "$ref" in node:
            target: Any = doc
            for part in node["$ref"].removeprefix("#/").split("/"):
                assert isinstance(target, dict) and part in target, f"{path}: {node['$ref']} does not resolve"
                target = target[part]


def test_a_ref_has_nothing_beside_it_but_a_description(doc):
    """Draft 7 (the AsyncAPI schema format) ignores what stands beside $ref, 2020-12 applies it:
    with only a description beside it, both read the schema the same."""
    for path, node in _walk(doc["components"]["schemas"], "$.components.schemas"):
        if isinstance(node, dict) and "$ref" in node:
            assert set(node) <= {"$ref", "description"}, path


@pytest.mark.parametrize("name", sorted(yaml.safe_load(DOC_FILE.read_text(encoding="utf-8"))["components"]["schemas"]))
def test_every_schema_is_a_valid_json_schema_in_draft_2020_12_and_draft_7(doc, name):
    schema = doc["components"]["schemas"][name]
    Draft202012Validator.check_schema(schema)
    Draft7Validator.check_schema(schema)


def test_every_message_has_a_json_payload_schema_and_examples(doc):
    for name, message in doc["components"]["messages"].items():
        assert message["payload"] == {"$ref": f"#/components/schemas/{name}"}, name
        assert message["traits"] == [{"$ref": "#/components/messageTraits/json"}], name
        assert message.get("examples"), f"{name} has no example"
        schema = doc["components"]["schemas"][name]
        assert schema["type"] == "object" and schema["additionalProperties"] is False, name


@pytest.mark.parametrize(("message", "name", "payload"), EXAMPLES, ids=[f"{m}-{n}" for m, n, _ in EXAMPLES])
def test_every_example_in_the_document_conforms_to_its_schema_in_both_drafts(doc, contract, message, name, payload):
    contract.validate(message, payload)
    for cls, spec in ((Draft202012Validator, DRAFT202012), (Draft7Validator, DRAFT7)):
        validator = cls({"$ref": f"urn:test:doc#/components/schemas/{message}"}, registry=_registry(doc, spec))
        assert not [e.message for e in validator.iter_errors(payload)], cls.__name__


def test_the_topic_table(contract):
    """What laned publishes and subscribes to: topic, direction, QoS, retained."""
    table = {contract.topic(ch, LANE).removeprefix(f"etc/v1/{LANE}/"): (str(d.direction), d.qos, d.retain)
             for ch in contract.channels for d in [contract.delivery(ch)]}
    assert table == {
        "tx": ("send", 1, False),
        "tx/batch": ("send", 1, False),
        "tx/ack": ("receive", 1, False),
        "reconcile": ("receive", 1, False),
        "reconcile/result": ("send", 1, False),
        "state": ("send", 1, True),
        "health": ("send", 0, False),
        "alarm": ("send", 1, False),
        "cmd": ("receive", 1, False),
        "cmd/result": ("send", 1, False),
        "list/manifest": ("receive", 1, True),
        "list/chunk": ("receive", 1, False),
        "list/request": ("send", 1, False),
        "list/versions": ("send", 1, True),
    }


def test_the_table_in_the_description_says_what_the_operations_say(doc, contract):
    rows = re.findall(r"^\| `([a-z/]+)` \| (\w+)[^|]* \| (\d) \| \**(yes|no)\**[^|]* \| ([^|]+) \|$",
                      doc["info"]["description"], re.M)
    assert {r[0] for r in rows} == {contract.topic(ch, "L").removeprefix("etc/v1/L/") for ch in contract.channels}
    for suffix, direction, qos, retained, expiry in rows:
        channel, _ = contract.route(f"etc/v1/L/{suffix}")
        d = contract.delivery(channel)
        assert (direction, int(qos), retained == "yes") == (str(d.direction), d.qos, d.retain), suffix
        if d.expiry_s is not None:
            assert expiry.strip() == f"{d.expiry_s} s", suffix
        elif "messageExpiryInterval" not in doc["operations"][next(
                k for k, o in doc["operations"].items() if o["channel"]["$ref"] == f"#/channels/{channel}")]["bindings"]["mqtt"]:
            assert expiry.startswith("none"), suffix


def test_transactions_never_expire_and_telemetry_does(contract):
    assert contract.delivery("tx").expiry_s is None and contract.delivery("reconcileResult").expiry_s is None
    assert contract.delivery("health").expiry_s == 120
    assert contract.delivery("cmd").expiry_s is None  # set per command by the centre (a schema in the doc)


def test_the_last_will_in_the_server_binding_is_the_offline_lane_state(doc, contract):
    will = doc["servers"]["centre"]["bindings"]["mqtt"]["lastWill"]
    assert will["topic"].replace("{lane_id}", LANE) == contract.topic("state", LANE)
    assert will["retain"] is True and will["qos"] == 1
    text = will["message"].replace("{lane_id}", LANE)
    assert text == m.LaneState.last_will(LANE).to_json()
    contract.validate("LaneState", json.loads(text))


# -- the enumerations mirror the code ----------------------------------------------------------

def _enum(doc, *path: str) -> set[str]:
    node = doc["components"]["schemas"]
    for part in path:
        node = node[part]
    return set(node["enum"])


@pytest.mark.parametrize(("path", "values"), [
    (("Transaction", "properties", "state"), {s.value for s in TxState} - {TxState.INTENT.value}),
    (("AlarmCode",), set(CATALOGUE)),
    (("Severity",), {s.value for s in Severity}),
    (("CheckStatus",), {s.value for s in CheckStatus}),
    (("Device",), {d.value for d in Device}),
    (("Alarm", "properties", "kind"), {k.value for k in AlarmKind}),
    (("Alarm", "properties", "change"), {c.value for c in Change}),
    (("CommandName",), {c.value for c in m.CommandName}),
    (("CommandResult", "properties", "reason"), {r.value for r in m.RefusalReason}),
    (("ListKind",), {k.value for k in m.ListKind}),
    (("ListManifest", "properties", "format"), {f.value for f in m.ListFormat}),
    (("ListManifest", "properties", "compression"), {c.value for c in m.Compression}),
    (("LaneState", "properties", "state"), {s.value for s in m.LaneStatus}),
    (("TxAck", "properties", "stream"), {s.value for s in m.AckStream}),
    (("ReconcileResult", "properties", "result"), {s.value for s in m.ReconcileStatus}),
    (("ReconcileResult", "properties", "settled_by"), {s.value for s in m.SettledBy}),
    (("ReconcileAnswer", "properties", "outcome"), {s.value for s in m.ReconcileOutcome}),
], ids=lambda v: ".".join(v) if isinstance(v, tuple) else "")
def test_every_code_list_in_the_contract_is_the_one_in_the_code(doc, path, values):
    assert _enum(doc, *path) == values


def test_there_is_no_command_that_lowers_the_barrier(doc):
    assert not [c for c in m.CommandName if "lower" in c or "close_barrier" in c]
    assert set(m.COMMAND_ARGS) == set(m.CommandName)
    for command in m.CommandName:  # each command has its own args schema
        assert any(branch["if"]["properties"]["command"]["const"] == command
                   for branch in doc["components"]["schemas"]["CommandRequest"]["allOf"])


# -- topics ----------------------------------------------------------------------------------------

def test_a_topic_is_built_from_the_channel_address_by_channel_or_message_name():
    assert contract_mod.topic("txAck", LANE) == f"etc/v1/{LANE}/tx/ack"
    assert contract_mod.topic("CommandResult", LANE) == f"etc/v1/{LANE}/cmd/result"
    assert contract_mod.topic("Transaction", "L1") == "etc/v1/L1/tx"


@pytest.mark.parametrize("lane_id", ["", "a/b", "a+b", "a#", "x" * 33, "车道1", "lane 1"])
def test_a_lane_id_that_would_break_the_topic_is_refused(lane_id):
    with pytest.raises(ContractError) as err:
        contract_mod.topic("tx", lane_id)
    assert err.value.path == "lane_id"


def test_an_unknown_channel_name_is_refused_with_the_known_ones():
    with pytest.raises(ContractError, match="txAck"):
        contract_mod.topic("acks", LANE)


def test_every_topic_routes_back_to_its_channel_and_lane(contract):
    for channel in contract.channels:
        assert contract.route(contract.topic(channel, LANE)) == (channel, LANE)
    assert contract.route("etc/v1/L1/cmd/result") == ("cmdResult", "L1")
    assert contract.route("etc/v1/L1/firmware") is None
    assert contract.route("etc/v2/L1/tx") is None
    assert contract.route("etc/v1/a/b/tx") is None


def test_laned_subscribes_to_exactly_the_centres_topics_each_named_without_a_wildcard(contract):
    subs = contract.subscriptions(LANE)
    assert [t.removeprefix(f"etc/v1/{LANE}/") for t, _ in subs] == [
        "tx/ack", "reconcile", "cmd", "list/manifest", "list/chunk"]
    assert all("+" not in t and "#" not in t and q == 1 for t, q in subs)
    assert contract.delivery("CommandRequest").direction is Direction.RECEIVE


# -- the messages round-trip -------------------------------------------------------------------------

def test_every_contract_message_has_a_class_and_every_class_a_message(contract):
    assert set(m.MESSAGE_CLASSES) == set(contract.messages)


@pytest.mark.parametrize(("message", "name", "payload"), EXAMPLES, ids=[f"{m}-{n}" for m, n, _ in EXAMPLES])
def test_every_example_reads_into_its_class_and_writes_back_the_same_payload(message, name, payload):
    cls = m.MESSAGE_CLASSES[message]
    value = cls.from_dict(payload)
    assert value.to_dict() == payload
    assert cls.from_json(value.to_json()) == value
    assert cls.from_json(value.to_json().encode()) == value


def _journal_rows(tmp_path) -> list:
    obs = dict(obu_id=bytes.fromhex("a1fe0033"), issuer=bytes.fromhex("c9bdb6ab37010001"),
               obu_serial=bytes(range(1, 9)), contract_start=dt.date(2023, 1, 1), contract_expiry=dt.date(2033, 1, 1),
               obu_status=b"\x00\x00", plate="鲁A12345", plate_colour=0, vehicle_class=1, card_network="3701",
               card_number="2301000012345678", card_type=0x16, balance_before=100000, entry_station="3701-0102",
               fee=3500, fee_table_version=7, status_list_version=41)
    b5 = B5Result(tac=bytes.fromhex("674030a0"), psam_no=bytes.fromhex("370101020367"), psam_trans_serial=4690,
                  icc_pay_serial=18, trans_type=9, balance_after=96500, trans_time=dt.datetime(2024, 11, 22, 9, 30, 12))
    purchase = dt.datetime(2024, 11, 22, 9, 30, 12)
    rows = []
    with Journal.open(tmp_path / "journal.db", LANE, now=T0) as j:
        seq = j.record_intent(TransactionIntent(**obs, amount=3500, purchase_time=purchase), T0).seq
        rows.append(j.complete_charge(seq, b5, T0 + dt.timedelta(seconds=0.167), message="欢迎通行 一路顺风"))
        seq = j.record_intent(TransactionIntent(**obs, kind=TxKind.ENTRY_WRITE, amount=0, purchase_time=purchase), T0).seq
        rows.append(j.complete_charge(seq, dataclasses.replace(b5, tac=bytes.fromhex("01020304")), T0))
        seq = j.record_intent(TransactionIntent(**{**obs, "obu_id": b"\x01\x02\x03\x04"}, amount=1500,
                                                purchase_time=purchase), T0).seq
        rows.append(j.mark_unknown(seq, "no B5 within 1.1 s", T0))
        seq = j.record_intent(TransactionIntent(**{**obs, "obu_id": b"\x05\x06\x07\x08"}, amount=1500,
                                                purchase_time=purchase), T0).seq
        j.mark_unknown(seq, "no B5", T0)
        rows.append(j.resolve_not_charged(seq, "C8: no such transaction", T0))
        rows.append(j.record_refusal(Observed(obu_id=b"\x09\x09\x09\x09", plate="鲁B54321"), "insufficient_balance", T0,
                                     message="余额不足 请走人工车道"))
        rows.append(j.record_event(TxKind.FOLLOW_CAR, T0))
        rows.append(j.record_event("alarm", T0, reason="rsu_offline", detail="serial port closed"))
    return rows


def test_every_kind_of_journal_row_goes_up_as_a_conforming_transaction(tmp_path, contract):
    rows = _journal_rows(tmp_path)
    assert {r.state for r in rows} == set(TxState) - {TxState.INTENT}
    for row in rows:
        msg = m.TransactionMsg.from_entry(row)
        payload = msg.to_dict()
        contract.validate("Transaction", payload)
        assert m.TransactionMsg.from_json(msg.to_json()) == msg
        assert (payload["seq"], payload["tx_uuid"], payload["lane_id"]) == (row.seq, row.uuid, LANE)
        assert payload["reconcile_required"] is (row.state is TxState.UNKNOWN)
    charged = m.TransactionMsg.from_entry(rows[0]).to_dict()
    assert charged["plate"] == "鲁A12345" and charged["card_number"] == "2301000012345678"  # in full, for billing
    assert charged["tac"] == "674030a0" and charged["amount"] == 3500
    assert charged["created_at"] == "2024-11-22T09:30:12+08:00" and charged["purchase_time"] == "2024-11-22T09:30:12"


def test_an_intent_is_not_sent_until_its_outcome_is_known(tmp_path):
    with Journal.open(tmp_path / "j.db", LANE, now=T0) as j:
        row = j.record_intent(TransactionIntent(obu_id=b"\x01\x02\x03\x04", amount=1, purchase_time=T0.replace(tzinfo=None)),
                              T0)
    with pytest.raises(ContractError) as err:
        m.TransactionMsg.from_entry(row)
    assert err.value.path == "$.state"


def test_a_journal_row_stamped_without_a_zone_goes_up_in_utc(tmp_path):
    with Journal.open(tmp_path / "j.db", LANE, now=T0) as j:
        row = j.record_event(TxKind.FOLLOW_CAR, dt.datetime(2024, 11, 22, 9, 0, 0))
    payload = m.TransactionMsg.from_entry(row).to_dict()
    contract_mod.validate("Transaction", payload)
    assert payload["created_at"].endswith("+00:00")


def test_the_repr_of_a_transaction_masks_the_plate_and_the_card():
    msg = m.TransactionMsg.from_dict(example("Transaction", "exit_charge"))
    assert "鲁A12345" not in repr(msg) and "2301000012345678" not in repr(msg)
    assert "鲁A*****" in repr(msg)


def test_a_centre_answer_of_charged_completes_the_unknown_row_in_the_journal(tmp_path, contract):
    with Journal.open(tmp_path / "j.db", LANE, now=T0) as j:
        seq = j.record_intent(TransactionIntent(obu_id=b"\x01\x02\x03\x04", amount=1500,
                                                purchase_time=dt.datetime(2024, 11, 22, 9, 41, 3)), T0).seq
        row = j.mark_unknown(seq, "no B5", T0)
        answer = m.ReconcileAnswer.from_dict({**example("ReconcileAnswer", "charged"), "seq": seq, "tx_uuid": row.uuid})
        done = j.resolve_unknown(answer.seq, answer.to_b5(), T0)
    assert done.state is TxState.CHARGED and done.reconciled and done.b5.tac == answer.tac
    result = m.ReconcileResult(lane_id=LANE, seq=seq, tx_uuid=row.uuid, outcome=m.ReconcileOutcome.CHARGED,
                               settled_by=m.SettledBy.CENTRE, result=m.ReconcileStatus.APPLIED, at=T0,
                               answer_id=answer.answer_id, tac=answer.tac)
    contract.validate("ReconcileResult", result.to_dict())


def test_alarm_changes_from_the_registry_go_up_as_conforming_alarms(contract):
    registry = AlarmRegistry()
    changes = registry.event("follow_car", 10.0, T0, "a second vehicle behind a paid one")
    changes += registry.event("outcome_unknown", 11.0, T0, "")
    assert changes
    for change in changes:
        msg = m.AlarmMsg.from_change(change, LANE)
        contract.validate("Alarm", msg.to_dict())
        assert m.AlarmMsg.from_json(msg.to_json()) == msg
    active = tuple(m.ActiveAlarm.from_alarm(a) for a in registry.active())
    snapshot = m.HealthSnapshot(
        lane_id=LANE, at=T0, overall=CheckStatus.FAILED, etc_open=False,
        checks=(m.Check.from_result(CheckResult("rsu.link", CheckStatus.FAILED, "down 20 s", "rsu_offline", 20)),
                m.Check.from_result(CheckResult("clock.jump", CheckStatus.OK, "first reading", "clock_jump"))),
        alarms=active, closed_by=(m.ClosedBy(device=Device.RSU, reason="link lost"),),
        outbox=m.OutboxState(pending=0, last_acked_seq=0), software_version="0.1.0", uptime_s=5)
    contract.validate("HealthSnapshot", snapshot.to_dict())
    assert m.HealthSnapshot.from_json(snapshot.to_json()) == snapshot


def test_built_lane_state_list_and_command_messages_conform(contract):
    built: list[m.UplinkMessage] = [
        m.LaneState(lane_id=LANE, state=m.LaneStatus.DEGRADED, reason="journal: disk full", at=T0, etc_open=False,
                    closed_by=(m.ClosedBy(device=Device.JOURNAL, reason="disk full"),), software_version="0.1.0"),
        m.LaneState.last_will(LANE),
        m.TxAck(lane_id=LANE, stream=m.AckStream.TX, first_seq=5, last_seq=5),
        m.ListRequest(lane_id=LANE, kind=m.ListKind.STATUS_LIST, version=42, at=T0, chunks=(0, 3)),
        m.ListVersions(lane_id=LANE, at=T0, status_list=m.StatusListVersion(version=42, entries=10),
                       fee_table=m.FeeTableVersion(version=7, valid_from=T0)),
        m.ListChunk(kind=m.ListKind.FEE_TABLE, version=8, index=0, data=b"version = 8\n",
                    sha256=hashlib.sha256(b"version = 8\n").digest()),
    ]
    request = _command(m.CommandName.SHOW_MESSAGE, m.ShowMessageArgs(line1="ETC暂停", line2="请走人工车道", duration_s=60))
    built += [request, m.CommandResult.executed(request, T0),
              m.CommandResult.refused(request, m.RefusalReason.WRONG_LANE, T0, "for another lane", lane_id="L2")]
    for command, args in [(m.CommandName.CLOSE_ETC, m.CloseEtcArgs(reason="maintenance")),
                          (m.CommandName.OPEN_ETC, m.OpenEtcArgs()),
                          (m.CommandName.RESEND_FROM, m.ResendFromArgs(seq=1)),
                          (m.CommandName.PUBLISH_HEALTH, m.PublishHealthArgs()),
                          (m.CommandName.FETCH_LIST, m.FetchListArgs(kind=m.ListKind.FEE_TABLE, version=8)),
                          (m.CommandName.RAISE_BARRIER, m.RaiseBarrierArgs(operator="op-1", reason="paid at booth"))]:
        built.append(_command(command, args))
    for msg in built:
        contract.validate(msg.MESSAGE, msg.to_dict())
        assert type(msg).from_json(msg.to_json()) == msg


def _command(command: m.CommandName, args: Any, **more: Any) -> m.CommandRequest:
    unsigned = m.CommandRequest(lane_id=LANE, command_id="2b7d9f1e-3a5c-4e7b-9d1f-6a8c0e2b4d6f", seq=60,
                                issued_at=T0, expires_at=T0 + dt.timedelta(minutes=5), command=command, args=args,
                                key_id="example-1", **more)
    return unsigned.signed(EXAMPLE_KEY.sign(unsigned.signed_bytes()))


# -- signatures ---------------------------------------------------------------------------------------

def _example_public_key(doc) -> Ed25519PublicKey:
    found = re.search(r"public key\s+`([0-9a-f]{64})`", doc["info"]["description"])
    assert found, "the info description names the example key's public key"
    public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(found.group(1)))
    assert public.public_bytes_raw() == EXAMPLE_KEY.public_key().public_bytes_raw()
    return public


@pytest.mark.parametrize(("message", "name"), [(msg, n) for msg, n, _ in EXAMPLES
                                               if msg in ("CommandRequest", "ListManifest")])
def test_the_signed_examples_verify_with_the_documented_example_key(doc, message, name):
    value = m.MESSAGE_CLASSES[message].from_dict(example(message, name))
    assert isinstance(value, (m.CommandRequest, m.ListManifest))
    _example_public_key(doc).verify(value.signature, value.signed_bytes())


def test_a_command_whose_arguments_were_changed_after_signing_no_longer_verifies(doc):
    payload = example("CommandRequest", "resend_from")
    payload["args"]["seq"] = 1
    value = m.CommandRequest.from_dict(payload)
    with pytest.raises(InvalidSignature):
        _example_public_key(doc).verify(value.signature, value.signed_bytes())


def test_the_signed_bytes_are_the_payload_as_received_not_a_re_encoding():
    """``10:00:00.000+08:00`` and ``10:00:00+08:00`` are one time but not the same bytes."""
    payload = m.CommandRequest.from_dict(example("CommandRequest", "close_etc")).to_dict()
    payload["issued_at"] = "2024-11-22T10:00:00.000+08:00"
    value = m.CommandRequest.from_dict(payload)
    assert b'"issued_at":"2024-11-22T10:00:00.000+08:00"' in value.signed_bytes()
    assert b'"signature"' not in value.signed_bytes()
    assert value.signed_bytes().startswith(b'{"args":{"reason":') and b" " not in value.signed_bytes().split(b'"reason"')[0]


def test_a_command_built_here_signs_and_verifies_with_its_own_key():
    request = _command(m.CommandName.RAISE_BARRIER, m.RaiseBarrierArgs(operator="op-1", reason="paid at booth"))
    received = m.CommandRequest.from_json(request.to_json())
    EXAMPLE_KEY.public_key().verify(received.signature, received.signed_bytes())
    assert received.args == m.RaiseBarrierArgs(operator="op-1", reason="paid at booth")


# -- bad payloads are refused, naming the member -------------------------------------------------------

def _refused(message: str, payload: Any) -> ContractError:
    with pytest.raises(ContractError) as err:
        m.MESSAGE_CLASSES[message].from_dict(payload)
    assert err.value.message == message
    assert str(err.value).startswith(f"{message}: ")
    return err.value


def _paths(err: ContractError) -> list[str]:
    return [path for path, _ in err.problems]


def test_a_transaction_without_its_seq_is_refused_naming_seq():
    payload = example("Transaction", "exit_charge")
    del payload["seq"]
    err = _refused("Transaction", payload)
    assert err.path == "$.seq" and "missing" in err.reason


def test_a_negative_amount_is_refused_naming_amount():
    err = _refused("Transaction", {**example("Transaction", "exit_charge"), "amount": -1})
    assert err.path == "$.amount" and "minimum" in err.reason


def test_an_amount_beyond_32_bits_is_refused():
    assert _refused("Transaction", {**example("Transaction", "exit_charge"), "amount": 2**32}).path == "$.amount"


@pytest.mark.parametrize("lane_id", ["a/b", "", "G1 ", "x" * 33, 17])
def test_a_lane_id_that_breaks_the_pattern_is_refused_naming_lane_id(lane_id):
    err = _refused("TxAck", {**example("TxAck", "range"), "lane_id": lane_id})
    assert err.path == "$.lane_id"


def test_an_unknown_command_is_refused_naming_command_and_listing_the_known_ones():
    err = _refused("CommandRequest", {**example("CommandRequest", "close_etc"), "command": "lower_barrier"})
    assert err.path == "$.command" and "'lower_barrier'" in err.reason and "raise_barrier" in err.reason


def test_arguments_that_do_not_fit_the_command_are_refused_naming_the_argument():
    payload = example("CommandRequest", "resend_from")
    payload["args"] = {"seq": 0}
    assert _refused("CommandRequest", payload).path == "$.args.seq"
    payload["args"] = {"reason": "x"}
    assert _paths(_refused("CommandRequest", payload)) == ["$.args.reason", "$.args.seq"]


@pytest.mark.parametrize(("message", "where", "extra"), [
    ("Transaction", [], "speed"),
    ("CommandRequest", ["args"], "force"),
    ("HealthSnapshot", ["checks", 0], "colour"),
    ("ListManifest", [], "url"),
    ("LaneState", [], "secret"),
])
def test_a_member_the_contract_does_not_name_is_refused_naming_it(message, where, extra):
    payload = example(message)
    target = payload
    for part in where:
        target = target[part]
    target[extra] = 1
    expected = "$" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in [*where, extra])
    err = _refused(message, payload)
    assert err.path == expected and "not in the contract" in err.reason


def test_an_unknown_outcome_must_be_flagged_for_reconciliation():
    err = _refused("Transaction", {**example("Transaction", "unknown_outcome"), "reconcile_required": False})
    assert err.path == "$.reconcile_required"


def test_a_charge_without_its_tac_is_refused():
    payload = example("Transaction", "exit_charge")
    del payload["tac"]
    assert _refused("Transaction", payload).path == "$.tac"


def test_a_charged_answer_needs_the_tac_and_a_not_charged_answer_has_none():
    charged = example("ReconcileAnswer", "charged")
    del charged["tac"]
    assert _refused("ReconcileAnswer", charged).path == "$.tac"
    not_charged = {**example("ReconcileAnswer", "not_charged"), "tac": "01020304"}
    err = _refused("ReconcileAnswer", not_charged)
    assert err.path == "$.tac" and "not allowed" in err.reason


def test_a_refusal_without_a_reason_and_an_execution_with_one_are_refused():
    refused = example("CommandResult", "refused_replay")
    del refused["reason"]
    assert _refused("CommandResult", refused).path == "$.reason"
    assert _refused("CommandResult", {**example("CommandResult", "executed"), "reason": "expired"}).path == "$.reason"


def test_an_ack_whose_range_runs_backwards_is_refused_naming_last_seq():
    err = _refused("TxAck", {**example("TxAck", "range"), "first_seq": 9, "last_seq": 8})
    assert err.path == "$.last_seq"


def test_an_ack_naming_an_unknown_seq_outside_its_range_is_refused_naming_it():
    ack = example("TxAck", "range_with_an_unknown_outcome")
    assert m.TxAck.from_dict(ack).unknown_seqs == (1843,)
    err = _refused("TxAck", {**ack, "unknown_seqs": [1841, 1845]})
    assert err.path == "$.unknown_seqs[1]" and "outside the acked range 1840…1844" in err.reason


def test_an_ack_of_reconciliation_results_names_no_unknown_seqs():
    err = _refused("TxAck", {**example("TxAck", "one_reconciliation"), "unknown_seqs": [1843]})
    assert err.path == "$.unknown_seqs" and "stream tx" in err.reason


def test_a_manifest_whose_chunk_count_does_not_fit_its_size_is_refused():
    err = _refused("ListManifest", {**example("ListManifest", "status_list_delta"), "chunk_count": 5})
    assert err.path == "$.chunk_count" and "make 4" in err.reason


def test_a_fee_table_is_never_a_delta():
    err = _refused("ListManifest", {**example("ListManifest", "fee_table"), "base_version": 7})
    assert err.path == "$.base_version"


def test_a_delta_must_apply_on_an_older_version():
    err = _refused("ListManifest", {**example("ListManifest", "status_list_delta"), "base_version": 42})
    assert err.path == "$.base_version"


def test_a_chunk_whose_data_is_not_base64_is_refused_naming_data():
    assert _refused("ListChunk", {**example("ListChunk"), "data": "not base64!"}).path == "$.data"
    assert _refused("ListChunk", {**example("ListChunk"), "data": "abc"}).path == "$.data"  # bad padding


def test_an_impossible_date_that_fits_the_pattern_is_refused_naming_it():
    err = _refused("Transaction", {**example("Transaction", "exit_charge"), "contract_start": "2024-02-30"})
    assert err.path == "$.contract_start"


def test_a_time_without_an_offset_is_refused_where_an_absolute_time_is_needed():
    assert _refused("TxAck", {**example("TxAck", "range"), "acked_at": "2024-11-22T09:42:11"}).path == "$.acked_at"


def test_a_command_that_expires_before_it_is_issued_is_refused():
    payload = {**example("CommandRequest", "close_etc"), "expires_at": "2024-11-22T09:00:00+08:00"}
    assert _refused("CommandRequest", payload).path == "$.expires_at"


@pytest.mark.parametrize("raw", [b"{", b"\xff\xfe", b"[1, 2]", b"null", b'{"amount": NaN}', "42"])
def test_a_payload_that_is_not_a_json_object_is_refused(raw):
    with pytest.raises(ContractError) as err:
        m.TxAck.from_json(raw)
    assert err.value.message == "TxAck" and err.value.path == "$"


def test_every_problem_is_listed_not_only_the_first():
    err = _refused("TxAck", {"lane_id": "a/b", "first_seq": 0, "stream": "x", "extra": 1})
    assert set(_paths(err)) == {"$.extra", "$.last_seq", "$.first_seq", "$.lane_id", "$.stream"}


def test_validating_an_unknown_message_names_the_known_ones():
    with pytest.raises(ContractError, match="CommandRequest"):
        contract_mod.validate("Firmware", {})


# -- building a message the contract would refuse fails at once -------------------------------------------

def test_building_a_message_with_a_naive_absolute_time_fails_naming_the_member():
    ack = m.TxAck(lane_id=LANE, stream=m.AckStream.TX, first_seq=1, last_seq=1, acked_at=dt.datetime(2024, 1, 1))
    with pytest.raises(ContractError) as err:
        ack.to_json()
    assert err.value.path == "$.acked_at"


def test_building_a_transaction_with_an_aware_lane_time_fails_naming_the_member():
    msg = dataclasses.replace(m.TransactionMsg.from_dict(example("Transaction", "exit_charge")), purchase_time=T0)
    with pytest.raises(ContractError) as err:
        msg.to_dict()
    assert err.value.path == "$.purchase_time"


def test_a_command_with_the_arguments_of_another_command_cannot_be_built():
    with pytest.raises(ContractError) as err:
        _command(m.CommandName.RAISE_BARRIER, m.CloseEtcArgs(reason="x"))
    assert err.value.path == "$.args"


def test_an_unsigned_command_does_not_conform():
    unsigned = m.CommandRequest(lane_id=LANE, command_id="2b7d9f1e-3a5c-4e7b-9d1f-6a8c0e2b4d6f", seq=1, issued_at=T0,
                                expires_at=T0 + dt.timedelta(minutes=1), command=m.CommandName.OPEN_ETC,
                                args=m.OpenEtcArgs(), key_id="example-1")
    with pytest.raises(ContractError) as err:
        contract_mod.validate("CommandRequest", unsigned.to_dict())
    assert err.value.path == "$.signature"


def test_a_non_finite_health_value_cannot_be_sent():
    snap = m.HealthSnapshot(lane_id=LANE, at=T0, overall=CheckStatus.OK, etc_open=True,
                            checks=(m.Check(name="clock.jump", status=CheckStatus.OK, detail="", value=float("nan")),))
    with pytest.raises(ContractError) as err:
        snap.to_json()
    assert err.value.path == "$.checks[0].value"


def test_a_chunk_carries_its_bytes_in_base64_and_a_manifest_its_digest_in_hex():
    chunk = m.ListChunk.from_dict(example("ListChunk"))
    assert chunk.to_dict()["data"] == base64.b64encode(chunk.data).decode()
    assert hashlib.sha256(chunk.data).digest() == chunk.sha256
    manifest = m.ListManifest.from_dict(example("ListManifest", "status_list_delta"))
    assert [manifest.chunk_length(i) for i in range(manifest.chunk_count)] == [262144] * 4
    assert manifest.is_delta and len(manifest.sha256) == 32


def test_a_whole_number_written_with_a_fraction_is_read_as_an_integer():
    ack = m.TxAck.from_dict({**example("TxAck", "range"), "first_seq": 1840.0})
    assert ack.first_seq == 1840 and type(ack.first_seq) is int and ack.covers(1842) and not ack.covers(1845)
    assert _refused("TxAck", {**example("TxAck", "range"), "first_seq": 1840.5}).path == "$.first_seq"


def test_what_a_signature_covers_does_not_change_when_the_callers_dict_does(doc):
    payload = example("CommandRequest", "close_etc")
    value = m.CommandRequest.from_dict(payload)
    payload["args"]["reason"] = "changed afterwards"
    _example_public_key(doc).verify(value.signature, value.signed_bytes())


@pytest.mark.parametrize(("message", "member"), [("TxAck", "lane_id"), ("Transaction", "tx_uuid"),
                                                 ("Transaction", "card_network")])
def test_a_value_with_a_trailing_newline_is_refused_as_json_schema_patterns_mean(contract, message, member):
    """JSON Schema patterns are ECMA-262: "$" is the end of the string. Python's "$" also
    matches before a final newline, which would let "G0001-01\\n" through as a lane id."""
    payload = dict(next(example for name, _, example in EXAMPLES if name == message and member in example))
    payload[member] = str(payload[member]) + "\n"
    with pytest.raises(ContractError) as err:
        contract.validate(message, payload)
    assert err.value.path == f"$.{member}"
    payload[member] = payload[member][:-1]
    contract.validate(message, payload)
