"""Signed commands (issue 10, item 4): laned/uplink/commands.py.

Every refusal leaves the ledger as it was and answers with the contract's reason; every
command of the contract is accepted into its own action; a QoS 1 redelivery is executed
once; nothing can lower the barrier. Keys are generated here; the contract's example key
is used only to check its signed examples.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import datetime as dt
import hashlib
import json
import typing
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from laned.uplink import commands as c
from laned.uplink import messages as m
from laned.uplink.contract import CONTRACT_FILE, contract

LANE = "G0001-0201-03"
KEY_ID = "centre-2024"
KEY = Ed25519PrivateKey.generate()
OTHER_KEY = Ed25519PrivateKey.generate()
KEYS = c.CentreKeys({KEY_ID: KEY.public_key()})
CST = dt.timezone(dt.timedelta(hours=8))
NOW = dt.datetime(2024, 11, 22, 10, 0, 0, tzinfo=CST)
CMD_ID = "2b7d9f1e-3a5c-4e7b-9d1f-6a8c0e2b4d6f"
OLD_ID = "0d9a3b52-7c61-4f0e-b8a2-5c7d9e1f3a60"
HIGHEST = 56  # seq of the last command the lane executed (OLD_ID)


def ts(t: dt.datetime) -> str:
    return t.isoformat()


def payload(command: str = "close_etc", args: dict[str, Any] | None = None, **over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "lane_id": LANE, "command_id": CMD_ID, "seq": HIGHEST + 1,
        "issued_at": ts(NOW - dt.timedelta(seconds=5)), "expires_at": ts(NOW + dt.timedelta(minutes=5)),
        "command": command, "args": {"reason": "RSU maintenance"} if args is None else args,
    }
    body.update(over)
    return body


def signed(body: dict[str, Any] | None = None, *, key: Ed25519PrivateKey = KEY, key_id: str = KEY_ID) -> bytes:
    return c.sign(payload() if body is None else body, key, key_id)


def ledger() -> c.MemoryLedger:
    return c.MemoryLedger({OLD_ID: HIGHEST})


def check(raw: bytes, book: c.CommandLedger | None = None, **kw: Any) -> c.Outcome:
    kw.setdefault("now", NOW)
    return c.verify(raw, lane_id=LANE, keys=KEYS, ledger=ledger() if book is None else book, **kw)


def refused(raw: bytes, code: c.RefusalCode, reason: m.RefusalReason, **kw: Any) -> c.Refusal:
    """Refused with ``code``/``reason``, the ledger unchanged, the answer a conforming result."""
    book = ledger()
    before = book.snapshot()
    outcome = check(raw, book, **kw)
    assert isinstance(outcome, c.Refusal), outcome
    assert (outcome.code, outcome.reason) == (code, reason), outcome.text
    assert book.snapshot() == before and book.highest_seq() == HIGHEST
    assert outcome.detail.startswith(f"{code}: ")
    result = outcome.result(NOW)
    if result is not None:
        contract().validate("CommandResult", result.to_dict())
        assert result.outcome is m.CommandOutcome.REFUSED and result.reason is reason
        assert result.lane_id == LANE and result.detail == outcome.detail
    return outcome


def accepted(raw: bytes, book: c.MemoryLedger | None = None, **kw: Any) -> c.Verified:
    book = ledger() if book is None else book
    before = book.snapshot()
    outcome = check(raw, book, **kw)
    assert isinstance(outcome, c.Verified), outcome
    assert book.snapshot() == before  # verify only reads the ledger
    return outcome


def tampered(raw: bytes, change: typing.Callable[[dict[str, Any]], None]) -> bytes:
    body = json.loads(raw)
    change(body)
    return json.dumps(body, ensure_ascii=False).encode()


# -- a valid command of each kind is accepted into its action ------------------------------------------

@pytest.mark.parametrize(("command", "args", "action"), [
    ("close_etc", {"reason": "RSU maintenance 10:00–11:00"}, c.CloseEtc(reason="RSU maintenance 10:00–11:00")),
    ("open_etc", {}, c.OpenEtc()),
    ("open_etc", {"reason": "maintenance done"}, c.OpenEtc(reason="maintenance done")),
    ("show_message", {"line1": "ETC暂停", "line2": "请走人工车道", "duration_s": 60},
     c.ShowMessage(line1="ETC暂停", line2="请走人工车道", duration_s=60)),
    ("show_message", {"line1": "ETC closed", "duration_s": 5}, c.ShowMessage(line1="ETC closed", line2="", duration_s=5)),
    ("resend_from", {"seq": 1500}, c.ResendFrom(seq=1500)),
    ("publish_health", {}, c.PublishHealth()),
    ("fetch_list", {"kind": "status_list", "version": 42}, c.FetchList(kind=m.ListKind.STATUS_LIST, version=42)),
    ("fetch_list", {"kind": "fee_table", "version": 0}, c.FetchList(kind=m.ListKind.FEE_TABLE, version=0)),
    ("raise_barrier", {"operator": "op-0231", "reason": "OBU battery broken, paid at the booth"},
     c.RaiseBarrier(operator="op-0231", reason="OBU battery broken, paid at the booth")),
])
def test_a_valid_command_of_each_kind_is_accepted_into_its_action(command, args, action):
    raw = signed(payload(command, args))
    verified = accepted(raw)
    assert verified.action == action and type(verified.action) is type(action)
    assert verified.action.COMMAND == command
    assert (verified.command_id, verified.seq) == (CMD_ID, HIGHEST + 1)
    result = verified.result(NOW)
    contract().validate("CommandResult", result.to_dict())
    assert (result.outcome, result.command, result.command_id, result.seq) == (
        m.CommandOutcome.EXECUTED, m.CommandName(command), CMD_ID, HIGHEST + 1)


def test_the_first_command_a_lane_ever_gets_is_accepted_on_an_empty_ledger():
    assert isinstance(accepted(signed(payload(seq=1)), c.MemoryLedger()).action, c.CloseEtc)


def test_what_is_verified_is_what_the_contract_says_the_signature_covers():
    raw = signed(payload("show_message", {"line1": "余额不足", "line2": "请走人工车道", "duration_s": 30}))
    received = m.CommandRequest.from_json(raw)
    KEY.public_key().verify(received.signature, received.signed_bytes())
    assert accepted(raw).request == received


def test_the_contracts_signed_examples_verify_with_the_documented_example_key():
    doc = yaml.safe_load(CONTRACT_FILE.read_text(encoding="utf-8"))
    seed = hashlib.sha256(b"laned asyncapi example key").digest()
    public = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    keys = c.CentreKeys.from_texts({"example-1": base64.b64encode(public).decode()})
    for example in doc["components"]["messages"]["CommandRequest"]["examples"]:
        body = example["payload"]
        at = dt.datetime.fromisoformat(body["issued_at"]) + dt.timedelta(seconds=1)
        outcome = c.verify(json.dumps(body).encode(), lane_id=LANE, keys=keys, ledger=c.MemoryLedger(), now=at)
        assert isinstance(outcome, c.Verified), (example["name"], outcome)
        assert outcome.action.COMMAND == body["command"]


# -- refusals, one per case; nothing applied -------------------------------------------------------------

@pytest.mark.parametrize("raw", [
    b"{", b"[1, 2]", b"null", b'"close_etc"', b"\xff\xfe{}", b'{"seq": NaN}', b"",
    b'{"seq": 57, "seq": 58}',  # a member twice: parsers disagree on which one counts
    b"[" * 100_000, b'{"a":' * 20 + b"1" + b"}" * 20, b"[" * 60_000,  # too big / nested too deep
], ids=["truncated", "array", "null", "string", "not_utf8", "nan", "empty", "duplicate_member", "huge", "deep",
        "deeper_than_the_parser"])
def test_a_payload_that_is_not_a_json_command_object_is_refused_as_bad_request(raw):
    refusal = refused(raw, c.RefusalCode.BAD_REQUEST, m.RefusalReason.MALFORMED)
    assert refusal.path == "$" and refusal.result(NOW) is None  # no command id to answer to


@pytest.mark.parametrize(("change", "path"), [
    ({"seq": 0}, "$.seq"),
    ({"seq": "57"}, "$.seq"),
    ({"command_id": "not-a-uuid"}, "$.command_id"),
    ({"issued_at": "2024-11-22T10:00:00"}, "$.issued_at"),  # no offset
    ({"expires_at": "2024-02-30T10:00:00+08:00"}, "$.expires_at"),  # fits the pattern, no such day
    ({"expires_at": ts(NOW - dt.timedelta(minutes=1))}, "$.expires_at"),  # before issued_at
    ({"force": True}, "$.force"),  # a member the contract does not name
])
def test_a_signed_command_whose_envelope_breaks_the_contract_is_refused_as_bad_request_naming_the_member(change, path):
    refusal = refused(signed({**payload(), **change}), c.RefusalCode.BAD_REQUEST, m.RefusalReason.MALFORMED)
    assert refusal.path == path and path in refusal.text


def test_a_payload_with_no_canonical_form_is_refused_as_bad_request_before_any_signature_check():
    """A lone surrogate (\\ud800) parses but has no UTF-8 form: there are no bytes to verify."""
    raw = signed()[:-1] + b',"note":"\\ud800"}'
    refused(raw, c.RefusalCode.BAD_REQUEST, m.RefusalReason.MALFORMED)


def test_a_command_whose_seq_is_beyond_what_rfc_8785_writes_exactly_is_refused_and_never_signed():
    """JCS writes a number as an IEEE double: a centre signing seq 2**53 + 1 with a JCS library
    signs other bytes than the lane verifies. Such a payload is refused, not half-verified."""
    body = payload(seq=2**53 + 1)
    with pytest.raises(ValueError, match="beyond the integers a signature can cover"):
        signed(body)
    text = json.dumps({**body, "key_id": KEY_ID}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    signature = base64.b64encode(KEY.sign(text.encode())).decode()
    raw = json.dumps({**body, "key_id": KEY_ID, "signature": signature}).encode()
    refusal = refused(raw, c.RefusalCode.BAD_REQUEST, m.RefusalReason.MALFORMED)
    assert "seq" in refusal.detail
    accepted(signed(payload(seq=2**53 - 1)))  # the largest it covers


def test_a_command_without_a_lane_id_is_refused_as_bad_request():
    body = payload()
    del body["lane_id"]
    assert refused(signed(body), c.RefusalCode.BAD_REQUEST, m.RefusalReason.MALFORMED).path == "$.lane_id"


def test_a_command_without_a_signature_is_refused_missing_signature():
    raw = tampered(signed(), lambda b: b.pop("signature"))
    refusal = refused(raw, c.RefusalCode.MISSING_SIGNATURE, m.RefusalReason.BAD_SIGNATURE)
    assert refusal.result(NOW).command_id == CMD_ID  # the centre can still correlate the answer


@pytest.mark.parametrize("signature", ["", "AAAA", 42, None, "x" * 88, base64.b64encode(bytes(63)).decode()])
def test_a_signature_that_is_not_a_base64_ed25519_signature_is_refused_bad_signature(signature):
    refused(tampered(signed(), lambda b: b.update(signature=signature)), c.RefusalCode.BAD_SIGNATURE,
            m.RefusalReason.BAD_SIGNATURE)


def test_a_command_signed_by_another_key_under_the_trusted_key_id_is_refused_bad_signature():
    refusal = refused(signed(key=OTHER_KEY), c.RefusalCode.BAD_SIGNATURE, m.RefusalReason.BAD_SIGNATURE)
    assert "does not verify" in refusal.text and refusal.path == "$.signature"


def test_an_all_zero_signature_is_refused_bad_signature():
    raw = tampered(signed(), lambda b: b.update(signature=base64.b64encode(bytes(64)).decode()))
    refused(raw, c.RefusalCode.BAD_SIGNATURE, m.RefusalReason.BAD_SIGNATURE)


@pytest.mark.parametrize(("member", "value"), [
    ("args", {"reason": "changed after signing"}),
    ("seq", HIGHEST + 1000),
    ("expires_at", ts(NOW + dt.timedelta(days=1))),
    ("lane_id", "G0001-0201-04"),
    ("command", "open_etc"),
])
def test_a_command_changed_after_signing_is_refused_bad_signature(member, value):
    refused(tampered(signed(), lambda b: b.update({member: value})), c.RefusalCode.BAD_SIGNATURE,
            m.RefusalReason.BAD_SIGNATURE)


def test_an_argument_added_after_signing_is_refused_bad_signature():
    raw = tampered(signed(payload("raise_barrier", {"operator": "op-1", "reason": "paid at booth"})),
                   lambda b: b["args"].update(reason="paid at booth", extra="x"))
    refused(raw, c.RefusalCode.BAD_SIGNATURE, m.RefusalReason.BAD_SIGNATURE)


def test_a_command_signed_with_a_key_id_the_lane_does_not_trust_is_refused_unknown_key():
    refusal = refused(signed(key=OTHER_KEY, key_id="centre-2019"), c.RefusalCode.UNKNOWN_KEY,
                      m.RefusalReason.UNKNOWN_KEY)
    assert "centre-2019" in refusal.text and KEY_ID in refusal.text and refusal.path == "$.key_id"


def test_a_command_that_names_no_key_id_is_refused_unknown_key():
    body = payload()
    signature = base64.b64encode(c.signature_of(body, KEY)).decode()
    refused(json.dumps({**body, "signature": signature}).encode(), c.RefusalCode.UNKNOWN_KEY,
            m.RefusalReason.UNKNOWN_KEY)


def test_a_lane_with_no_trusted_key_refuses_every_command():
    outcome = c.verify(signed(), lane_id=LANE, keys=c.CentreKeys(), ledger=ledger(), now=NOW)
    assert isinstance(outcome, c.Refusal) and outcome.code is c.RefusalCode.UNKNOWN_KEY


def test_a_command_for_another_lane_is_refused_wrong_lane_and_answered_under_this_lanes_id():
    refusal = refused(signed(payload(lane_id="G0001-0201-04")), c.RefusalCode.WRONG_LANE, m.RefusalReason.WRONG_LANE)
    assert "G0001-0201-04" in refusal.text and refusal.result(NOW).lane_id == LANE


def test_a_command_issued_beyond_the_clock_tolerance_is_refused_not_yet_valid():
    body = payload(issued_at=ts(NOW + dt.timedelta(seconds=31)), expires_at=ts(NOW + dt.timedelta(minutes=5)))
    refusal = refused(signed(body), c.RefusalCode.NOT_YET_VALID, m.RefusalReason.NOT_YET_VALID)
    assert refusal.path == "$.issued_at" and "31 s ahead" in refusal.text


def test_an_expired_command_is_refused_expired():
    body = payload(issued_at=ts(NOW - dt.timedelta(minutes=10)), expires_at=ts(NOW - dt.timedelta(minutes=5)))
    assert refused(signed(body), c.RefusalCode.EXPIRED, m.RefusalReason.EXPIRED).path == "$.expires_at"


@pytest.mark.parametrize("seq", [HIGHEST, HIGHEST - 1, 1])
def test_a_new_command_whose_seq_is_not_above_the_highest_executed_is_refused_replayed(seq):
    refusal = refused(signed(payload(seq=seq)), c.RefusalCode.SEQ_NOT_ABOVE, m.RefusalReason.REPLAYED)
    assert refusal.text == f"command seq {seq} is not above the last executed seq {HIGHEST}"


@pytest.mark.parametrize("command", ["lower_barrier", "close_barrier", "barrier_down", "firmware_update", ""])
def test_an_unknown_command_is_refused_even_when_correctly_signed(command):
    refusal = refused(signed(payload(command, {})), c.RefusalCode.UNKNOWN_COMMAND, m.RefusalReason.MALFORMED)
    assert refusal.path == "$.command" and refusal.command is None
    assert refusal.result(NOW).command is None  # the contract: absent when no known command was named


def test_a_command_that_names_no_command_is_refused_unknown_command():
    body = payload()
    del body["command"], body["args"]
    refused(signed(body), c.RefusalCode.UNKNOWN_COMMAND, m.RefusalReason.MALFORMED)


@pytest.mark.parametrize(("command", "args", "path"), [
    ("resend_from", {"seq": 0}, "$.args.seq"),
    ("resend_from", {}, "$.args.seq"),
    ("resend_from", {"seq": -5}, "$.args.seq"),
    ("fetch_list", {"kind": "firmware", "version": 3}, "$.args.kind"),
    ("fetch_list", {"kind": "status_list"}, "$.args.version"),
    ("fetch_list", {"kind": "fee_table", "version": -1}, "$.args.version"),
    ("raise_barrier", {"reason": "paid at booth"}, "$.args.operator"),
    ("raise_barrier", {"operator": "op 1", "reason": "paid at booth"}, "$.args.operator"),
    ("raise_barrier", {"operator": "op-1"}, "$.args.reason"),
    ("raise_barrier", {"operator": "op-1", "reason": ""}, "$.args.reason"),
    ("raise_barrier", {"operator": "op-1", "reason": "   "}, "$.args.reason"),
    ("close_etc", {"reason": " "}, "$.args.reason"),
    ("close_etc", {}, "$.args.reason"),
    ("show_message", {"line1": "x", "duration_s": 0}, "$.args.duration_s"),
    ("show_message", {"line1": "x", "duration_s": 3601}, "$.args.duration_s"),
    ("show_message", {"line1": "", "duration_s": 5}, "$.args.line1"),
    ("show_message", {"line1": "x" * 33, "duration_s": 5}, "$.args.line1"),
    ("show_message", {"line1": "a", "line2": "b", "line3": "c", "duration_s": 5}, "$.args.line3"),
    ("publish_health", {"now": True}, "$.args.now"),
    ("open_etc", [], "$.args"),
])
def test_arguments_that_do_not_fit_the_command_are_refused_bad_arguments_naming_the_argument(command, args, path):
    refusal = refused(signed(payload(command, args)), c.RefusalCode.BAD_ARGUMENTS, m.RefusalReason.MALFORMED)
    assert refusal.path == path and refusal.text.startswith(path)
    assert refusal.result(NOW).command == command


@pytest.mark.parametrize(("line1", "line2", "path"), [
    ("请" * 17, None, "$.args.line1"),  # 34 bytes in GBK: 17 full-width characters on a 16-character line
    ("ETC暂停", "请走人工车道请走人工车道请走人工车", "$.args.line2"),  # 17 full-width in line 2
    ("请" * 16 + "!", None, "$.args.line1"),  # 33 bytes
    ("欢迎 🚗", None, "$.args.line1"),  # no GBK code
    ("ETC暂停\n请走人工车道", None, "$.args.line1"),  # a line break inside a line
    ("ETC\u200b暂停", None, "$.args.line1"),  # a format character
])
def test_a_message_the_fee_display_cannot_show_is_refused_not_displayable(line1, line2, path):
    args = {"line1": line1, "duration_s": 10, **({} if line2 is None else {"line2": line2})}
    refusal = refused(signed(payload("show_message", args)), c.RefusalCode.NOT_DISPLAYABLE,
                      m.RefusalReason.NOT_POSSIBLE)
    assert refusal.path == path


@pytest.mark.parametrize("line", ["请" * 16, "x" * 32, "请" * 15 + "ab", "余额不足　请走人工车道", "ETC 暂停 - 请走人工"])
def test_a_message_that_fills_a_display_line_exactly_is_accepted(line):
    verified = accepted(signed(payload("show_message", {"line1": line, "line2": line, "duration_s": 10})))
    assert verified.action == c.ShowMessage(line1=line, line2=line, duration_s=10)


def test_a_display_with_wider_lines_is_passed_its_width():
    raw = signed(payload("show_message", {"line1": "请" * 20, "duration_s": 10}))
    refused(raw, c.RefusalCode.NOT_DISPLAYABLE, m.RefusalReason.NOT_POSSIBLE)
    assert isinstance(check(raw, display_line_bytes=40), c.Verified)


# -- result details fit the contract ---------------------------------------------------------------------

LONG = "the centre's closure is lifted, but ETC stays closed by: " + "io: the IO module does not answer; " * 60

RESULTS: list[tuple[str, typing.Callable[[m.CommandRequest], m.CommandResult | None]]] = [
    ("executed", lambda req: m.CommandResult.executed(req, NOW, LONG)),
    ("not_possible", lambda req: m.CommandResult.refused(req, m.RefusalReason.NOT_POSSIBLE, NOW,
                                                         f"not_possible: the journal could not record it ({LONG})")),
    ("a refusal", lambda req: c.Refusal(code=c.RefusalCode.BAD_ARGUMENTS, text=LONG, lane_id=LANE,
                                        command_id=req.command_id).result(NOW)),
    ("built directly", lambda req: m.CommandResult(lane_id=LANE, command_id=req.command_id,
                                                   outcome=m.CommandOutcome.EXECUTED, at=NOW, detail=LONG)),
]


@pytest.mark.parametrize("make", [r[1] for r in RESULTS], ids=[r[0] for r in RESULTS])
def test_a_result_detail_too_long_for_the_contract_is_cut_to_fit_and_says_so(make):
    result = make(accepted(signed()).request)
    assert result is not None
    contract().validate("CommandResult", result.to_dict())  # what the centre checks
    assert len(result.detail) == m.CommandResult.MAX_DETAIL and result.detail.endswith(m.CommandResult.DETAIL_CUT)
    assert LONG[:100] in result.detail  # the beginning, where the detail says what happened, is kept
    assert m.CommandResult.from_json(result.to_json()) == result  # and reads back from the ledger as sent


def test_a_result_detail_at_the_contracts_limit_is_kept_whole():
    text = "x" * m.CommandResult.MAX_DETAIL
    assert m.CommandResult.executed(accepted(signed()).request, NOW, text).detail == text
    doc = yaml.safe_load(CONTRACT_FILE.read_text(encoding="utf-8"))
    assert doc["components"]["schemas"]["Text"]["maxLength"] == m.CommandResult.MAX_DETAIL


# -- the order of the checks ----------------------------------------------------------------------------

def test_nothing_but_the_signature_and_key_id_is_read_before_the_signature_verifies(monkeypatch):
    """The contract validator (and every check after it) never sees an unverified payload."""
    def boom() -> Any:
        raise AssertionError("the contract was consulted before the signature verified")
    monkeypatch.setattr(c, "contract", boom)
    body = payload("lower_barrier", {"force": True}, lane_id="other", seq=1, extra=1,
                   expires_at=ts(NOW - dt.timedelta(minutes=1)), issued_at=ts(NOW - dt.timedelta(minutes=2)))
    for raw, code in [(signed(body, key=OTHER_KEY), c.RefusalCode.BAD_SIGNATURE),
                      (signed(body, key=OTHER_KEY, key_id="nobody"), c.RefusalCode.UNKNOWN_KEY),
                      (tampered(signed(body), lambda b: b.pop("signature")), c.RefusalCode.MISSING_SIGNATURE)]:
        outcome = check(raw)
        assert isinstance(outcome, c.Refusal) and outcome.code is code


@pytest.mark.parametrize(("body", "code"), [
    (payload(lane_id="L2", expires_at=ts(NOW - dt.timedelta(seconds=1)), issued_at=ts(NOW - dt.timedelta(minutes=1)),
             seq=1, command="lower_barrier"), c.RefusalCode.WRONG_LANE),
    (payload(issued_at=ts(NOW + dt.timedelta(hours=1)), expires_at=ts(NOW + dt.timedelta(hours=2)), seq=1,
             command="lower_barrier"), c.RefusalCode.NOT_YET_VALID),
    (payload(expires_at=ts(NOW), seq=1, command="lower_barrier"), c.RefusalCode.EXPIRED),
    (payload("lower_barrier", {}, seq=HIGHEST), c.RefusalCode.SEQ_NOT_ABOVE),
    (payload("resend_from", {"seq": 0}, seq=HIGHEST), c.RefusalCode.SEQ_NOT_ABOVE),
    (payload("lower_barrier", {"seq": 0}), c.RefusalCode.UNKNOWN_COMMAND),
], ids=["lane_before_time_seq_command", "not_yet_valid_before_seq", "expired_before_seq", "seq_before_command",
        "seq_before_arguments", "command_before_arguments"])
def test_the_first_failing_check_decides(body, code):
    outcome = check(signed(body))
    assert isinstance(outcome, c.Refusal) and outcome.code is code, outcome


# -- redelivery: executed once ---------------------------------------------------------------------------

class Lane:
    """A stand-in for the uplink's command handler: execute, record, answer; replay the answer."""

    def __init__(self) -> None:
        self.ledger = ledger()
        self.executed: list[c.CommandAction] = []
        self.results: dict[str, m.CommandResult] = {}

    def receive(self, raw: bytes, now: dt.datetime) -> m.CommandResult | None:
        outcome = c.verify(raw, lane_id=LANE, keys=KEYS, ledger=self.ledger, now=now)
        if isinstance(outcome, c.Verified):
            self.executed.append(outcome.action)
            self.ledger.record(outcome.command_id, outcome.seq)
            result = self.results[outcome.command_id] = outcome.result(now)
            return result
        if isinstance(outcome, c.Replay):
            return outcome.result(now, self.results.get(outcome.command_id))
        return outcome.result(now)


def test_a_redelivered_valid_command_gives_replay_and_is_executed_once():
    lane = Lane()
    raw = signed(payload("raise_barrier", {"operator": "op-0231", "reason": "paid at the booth"}))
    first = lane.receive(raw, NOW)
    again = [lane.receive(raw, NOW + dt.timedelta(seconds=s)) for s in (1, 2, 30)]
    assert lane.executed == [c.RaiseBarrier(operator="op-0231", reason="paid at the booth")]
    assert first is not None and first.outcome is m.CommandOutcome.EXECUTED
    assert again == [first, first, first]  # the original answer, not a second execution
    outcome = check(raw, lane.ledger)
    assert isinstance(outcome, c.Replay) and outcome.reason is m.RefusalReason.REPLAYED
    assert (outcome.command_id, outcome.seq, outcome.command) == (CMD_ID, HIGHEST + 1, m.CommandName.RAISE_BARRIER)


def test_a_replay_without_the_original_result_at_hand_answers_already_executed():
    book = ledger()
    book.record(CMD_ID, HIGHEST + 1)
    before = book.snapshot()
    outcome = check(signed(), book)
    assert isinstance(outcome, c.Replay) and book.snapshot() == before
    result = outcome.result(NOW)
    contract().validate("CommandResult", result.to_dict())
    assert result.outcome is m.CommandOutcome.REFUSED and result.reason is m.RefusalReason.REPLAYED
    assert "already executed" in result.detail and result.command_id == CMD_ID


def test_a_replay_refuses_to_answer_with_another_commands_result():
    book = ledger()
    book.record(CMD_ID, HIGHEST + 1)
    outcome = check(signed(), book)
    assert isinstance(outcome, c.Replay)
    other = m.CommandResult(lane_id=LANE, command_id=OLD_ID, outcome=m.CommandOutcome.EXECUTED, at=NOW)
    with pytest.raises(ValueError, match=OLD_ID):
        outcome.result(NOW, other)


def test_a_redelivery_after_the_command_expired_still_gets_its_original_answer():
    lane = Lane()
    raw = signed(payload(expires_at=ts(NOW + dt.timedelta(seconds=30))))
    first = lane.receive(raw, NOW)
    late = lane.receive(raw, NOW + dt.timedelta(hours=1))  # broker redelivery after a long outage
    assert late == first and len(lane.executed) == 1


def test_a_replayed_command_id_from_an_unverified_payload_is_not_a_replay():
    book = ledger()
    book.record(CMD_ID, HIGHEST + 1)
    outcome = check(signed(key=OTHER_KEY), book)
    assert isinstance(outcome, c.Refusal) and outcome.code is c.RefusalCode.BAD_SIGNATURE


def test_a_second_command_with_a_higher_seq_is_executed_after_the_first():
    lane = Lane()
    lane.receive(signed(payload(seq=60)), NOW)
    second = payload("open_etc", {}, seq=61, command_id="8c0e2b4d-6f8a-4c1e-9b3d-5f7a9c1e3b5d")
    lane.receive(signed(second), NOW)
    stale = payload("publish_health", {}, seq=59, command_id="4d6f8a0c-2e4b-4d6f-8a0c-2e4b6d8f0a1c")
    answer = lane.receive(signed(stale), NOW)
    assert lane.executed == [c.CloseEtc(reason="RSU maintenance"), c.OpenEtc()]
    assert answer is not None and answer.reason is m.RefusalReason.REPLAYED and "seq_not_above" in answer.detail


def test_the_memory_ledger_records_each_command_once():
    book = c.MemoryLedger()
    assert book.highest_seq() is None and not book.executed(CMD_ID)
    book.record(CMD_ID, 5)
    assert book.executed(CMD_ID) and book.highest_seq() == 5
    with pytest.raises(ValueError, match="already recorded"):
        book.record(CMD_ID, 6)
    assert isinstance(book, c.CommandLedger)


# -- clock skew edges -------------------------------------------------------------------------------------

def _timed(issued: dt.timedelta, lifetime: dt.timedelta = dt.timedelta(minutes=5)) -> bytes:
    return signed(payload(issued_at=ts(NOW + issued), expires_at=ts(NOW + issued + lifetime)))


@pytest.mark.parametrize(("ahead", "skew", "ok"), [
    (dt.timedelta(seconds=30), 30, True),
    (dt.timedelta(seconds=30, microseconds=1), 30, False),
    (dt.timedelta(seconds=29, microseconds=999_999), 30, True),
    (dt.timedelta(0), 0, True),
    (dt.timedelta(milliseconds=1), 0, False),
    (dt.timedelta(seconds=90), 120, True),
    (dt.timedelta(seconds=-3600), 30, True),  # issued an hour ago, still within its lifetime below
])
def test_issued_at_may_be_ahead_of_the_lane_clock_by_the_tolerance_and_no_more(ahead, skew, ok):
    outcome = check(_timed(ahead, dt.timedelta(hours=2)), clock_skew_s=skew)
    assert isinstance(outcome, c.Verified) is ok, outcome
    if not ok:
        assert isinstance(outcome, c.Refusal) and outcome.code is c.RefusalCode.NOT_YET_VALID


@pytest.mark.parametrize(("now", "ok"), [
    (NOW + dt.timedelta(minutes=5) - dt.timedelta(microseconds=1), True),
    (NOW + dt.timedelta(minutes=5), False),  # expires_at itself is too late
    (NOW + dt.timedelta(minutes=5, seconds=1), False),  # no tolerance on expiry
])
def test_a_command_is_valid_until_just_before_its_expires_at(now, ok):
    outcome = check(_timed(dt.timedelta(0)), now=now)
    assert isinstance(outcome, c.Verified) is ok, outcome
    if not ok:
        assert isinstance(outcome, c.Refusal) and outcome.code is c.RefusalCode.EXPIRED


def test_times_in_other_offsets_compare_as_instants():
    utc_now = NOW.astimezone(dt.UTC)
    body = payload(issued_at="2024-11-22T01:59:50Z", expires_at="2024-11-22T02:00:10.500Z")
    assert isinstance(check(signed(body), now=utc_now), c.Verified)
    assert isinstance(check(signed(body), now=utc_now + dt.timedelta(seconds=10, milliseconds=500)), c.Refusal)


def test_a_naive_clock_or_a_negative_tolerance_is_a_programming_error():
    with pytest.raises(ValueError, match="aware"):
        check(signed(), now=NOW.replace(tzinfo=None))
    with pytest.raises(ValueError, match="negative"):
        check(signed(), clock_skew_s=-1)


# -- nothing can lower the barrier -------------------------------------------------------------------------

def test_the_actions_are_a_closed_set_one_per_contract_command_and_none_lowers_the_barrier():
    assert set(typing.get_args(c.CommandAction)) == set(c.ACTION_TYPES)
    assert len(c.ACTION_TYPES) == len(set(m.CommandName)) == 7
    assert {a.COMMAND for a in c.ACTION_TYPES} == set(m.CommandName)
    words = ("lower", "down", "close_barrier", "descend")
    for action in c.ACTION_TYPES:
        names = [action.__name__.lower(), str(action.COMMAND), *(f.name for f in dataclasses.fields(action))]
        assert not [n for n in names if any(w in n for w in words)], action
    raise_fields = {f.name for f in dataclasses.fields(c.RaiseBarrier)}
    assert raise_fields == {"operator", "reason"}  # no direction, position or override to set


def test_a_signed_lower_barrier_command_is_refused_as_unknown_and_applies_nothing():
    lane = Lane()
    for i, command in enumerate(["lower_barrier", "close_barrier"]):
        body = payload(command, {"operator": "op-1", "reason": "x"}, seq=HIGHEST + 1 + i,
                       command_id=f"2b7d9f1e-3a5c-4e7b-9d1f-6a8c0e2b4d6{i}")
        answer = lane.receive(signed(body), NOW)
        assert answer is not None and answer.reason is m.RefusalReason.MALFORMED
        assert answer.detail.startswith("unknown_command:")
    assert lane.executed == [] and lane.ledger.highest_seq() == HIGHEST


# -- keys ----------------------------------------------------------------------------------------------------

def _pem(key: Any) -> str:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def test_centre_keys_load_from_pem_or_raw_base64_and_both_verify():
    public = KEY.public_key()
    keys = c.CentreKeys.from_texts({"pem": _pem(public),
                                    "raw": base64.b64encode(public.public_bytes_raw()).decode() + "\n"})
    assert sorted(keys) == ["pem", "raw"] and len(keys) == 2 and "pem" in keys
    for key_id in keys:
        outcome = c.verify(signed(key_id=key_id), lane_id=LANE, keys=keys, ledger=ledger(), now=NOW)
        assert isinstance(outcome, c.Verified)
    assert "pem" in repr(keys) and "BEGIN" not in repr(keys)


@pytest.mark.parametrize(("text", "says"), [
    ("", "no key text"),
    ("not a key!", "neither PEM nor base64"),
    (base64.b64encode(bytes(31)).decode(), "31 bytes"),
    (KEY.public_key().public_bytes_raw().hex(), "looks like hex"),
    (KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                       serialization.NoEncryption()).decode(), "private key"),
    (_pem(ec.generate_private_key(ec.SECP256R1()).public_key()), "not Ed25519"),
    ("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "not a PEM public key"),
])
def test_a_bad_centre_key_is_refused_with_an_error_naming_the_key_id(text, says):
    with pytest.raises(c.CommandKeyError, match=says) as err:
        c.CentreKeys.from_texts({"centre-7": text})
    assert err.value.key_id == "centre-7" and "'centre-7'" in str(err.value)


@pytest.mark.parametrize("key_id", ["", "a/b", "x" * 65, "centre 1"])
def test_a_key_id_the_contract_could_not_carry_is_refused(key_id):
    with pytest.raises(c.CommandKeyError, match="key id"):
        c.CentreKeys.from_texts({key_id: base64.b64encode(KEY.public_key().public_bytes_raw()).decode()})
    with pytest.raises(c.CommandKeyError, match="key id"):
        c.CentreKeys({key_id: KEY.public_key()})


# -- signing -------------------------------------------------------------------------------------------------

def test_sign_sets_the_key_id_replaces_any_signature_and_signs_the_canonical_form():
    body = {**payload("show_message", {"line1": "ETC暂停", "duration_s": 30}), "key_id": "old",
            "signature": "stale"}
    raw = c.sign(copy.deepcopy(body), KEY, KEY_ID)
    sent = json.loads(raw)
    assert sent["key_id"] == KEY_ID and sent["signature"] != "stale"
    assert "ETC暂停".encode() in raw  # UTF-8, not \\u escapes
    received = m.CommandRequest.from_json(raw)
    assert base64.b64decode(sent["signature"]) == KEY.sign(received.signed_bytes())
    assert c.signature_of(sent, KEY) == received.signature
