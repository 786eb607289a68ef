"""Signed commands from the centre: verified, then turned into a typed action (issue 10, item 4).

The centre signs each command (topic ``cmd``, :class:`~laned.uplink.messages.CommandRequest`)
with Ed25519 over its JSON object without ``signature``, in RFC 8785 canonical form
(``CommandRequest.signed_bytes()``, docs/asyncapi.yaml "Signatures"). :func:`verify` takes
the payload as received and returns one of three outcomes:

* :class:`Verified` — execute its :class:`CommandAction`, record the command id and seq in
  the ledger (the journal: in the same transaction as the action's own record), answer
  :meth:`Verified.result`;
* :class:`Refusal` — apply nothing, answer :meth:`Refusal.result` (a stable
  :class:`RefusalCode`, the contract's :class:`~laned.uplink.messages.RefusalReason` and a
  text that says why);
* :class:`Replay` — the command id was executed before (a QoS 1 redelivery): execute
  nothing, answer with the original result (:meth:`Replay.result`).

Checks, in this order; the first that fails decides:

1. the payload is a JSON object at all (``bad_request``: not UTF-8 JSON, an array, too big,
   nested too deep, a member twice);
2. ``signature`` present (``missing_signature``) and a base64 Ed25519 signature
   (``bad_signature``); ``key_id`` names a trusted centre key (``unknown_key``); the
   signature verifies over the canonical bytes (``bad_signature``). Nothing but
   ``signature`` and ``key_id`` is looked at before this (apart from copying a well-formed
   ``command_id``/``seq``/``command`` onto the refusal so the centre can correlate it);
3. the envelope conforms to the contract (``bad_request``, naming the member);
4. ``lane_id`` is this lane's (``wrong_lane``);
5. the command id was not executed before (else :class:`Replay`). This comes before the
   time checks on purpose: a QoS 1 redelivery of an executed command that arrives after
   its ``expires_at`` still gets its original answer, not an "expired" contradicting it;
6. ``issued_at`` is not ahead of the lane clock by more than ``clock_skew_s``
   (``not_yet_valid``); the lane clock is before ``expires_at`` (``expired``; no tolerance:
   a late command is refused, never stretched);
7. ``seq`` is above the highest executed seq (``seq_not_above``);
8. ``command`` is one the lane knows (``unknown_command``) — there is no command that
   lowers the barrier, so ``lower_barrier`` ends here;
9. the arguments conform (``bad_arguments``, naming the argument), and a ``show_message``
   fits the fee display: GBK, at most ``display_line_bytes`` bytes a line (16 full-width
   characters by default), no control characters (``not_displayable``).

Sans-IO: no clock (``now`` is passed in), no socket, no event loop; :func:`verify` reads
the ledger and changes nothing.

The keys and the ledger are in :mod:`laned.uplink.command_keys`, the actions and outcomes in
:mod:`laned.uplink.command_actions`; every name is importable from here.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from laned.strict_json import loads_strict
from laned.uplink.command_actions import (
    ACTION_TYPES,
    MAX_DETAIL,
    CloseEtc,
    CommandAction,
    FetchList,
    OpenEtc,
    Outcome,
    PublishHealth,
    RaiseBarrier,
    Refusal,
    RefusalCode,
    Replay,
    ResendFrom,
    ShowMessage,
    Verified,
)
from laned.uplink.command_keys import (
    KEY_ID,
    CentreKeys,
    CommandKeyError,
    CommandLedger,
    MemoryLedger,
    load_public_key,
)
from laned.uplink.contract import ContractError, contract
from laned.uplink.messages import (
    CloseEtcArgs,
    CommandName,
    CommandRequest,
    FetchListArgs,
    OpenEtcArgs,
    PublishHealthArgs,
    RaiseBarrierArgs,
    ResendFromArgs,
    ShowMessageArgs,
    canonical_json,
)

MESSAGE: Final = "CommandRequest"
MAX_COMMAND_BYTES: Final = 65536  # a real command is well under 2 KiB
MAX_DEPTH: Final = 8  # a command nests 2 deep (the object, its args)
DEFAULT_CLOCK_SKEW_S: Final = 30
# The fee display's text lines: GBK, 16 registers = 32 bytes = 16 full-width characters
# (the default display profile, laned/drivers/device_profiles.py). A lane whose profile has
# other line widths passes 2 × registers.
DISPLAY_LINE_BYTES: Final = 32
_UUID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_SIGNATURE: Final = re.compile(r"[A-Za-z0-9+/]{86}==")  # the contract's Ed25519Signature
_MAX_SEQ: Final = 2**63 - 1
# Unicode categories a display line must not hold: controls, format, surrogates, private
# use, unassigned, line and paragraph separators.
_NOT_SHOWN: Final = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_COMMANDS: Final = frozenset(c.value for c in CommandName)


# -- parsing -------------------------------------------------------------------------------------


class _Refused(Exception):
    def __init__(self, code: RefusalCode, text: str, path: str | None = None) -> None:
        super().__init__(text)
        self.code, self.text, self.path = code, text, path


def _depth_ok(value: Any) -> bool:
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > MAX_DEPTH:
                return False
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return True


def _parse(raw: bytes | bytearray | str) -> dict[str, Any]:
    if len(raw) > MAX_COMMAND_BYTES:
        raise _Refused(RefusalCode.BAD_REQUEST, f"{len(raw)} bytes; a command is at most {MAX_COMMAND_BYTES}", "$")
    try:
        text = raw if isinstance(raw, str) else bytes(raw).decode("utf-8")
        data = loads_strict(text)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise _Refused(RefusalCode.BAD_REQUEST, f"not UTF-8 JSON: {err}", "$") from None
    if not isinstance(data, dict):
        raise _Refused(RefusalCode.BAD_REQUEST, f"a JSON {type(data).__name__}, not an object", "$")
    if not _depth_ok(data):
        raise _Refused(RefusalCode.BAD_REQUEST, f"nested deeper than {MAX_DEPTH}", "$")
    return data


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, int) and 1 <= value <= _MAX_SEQ else None


def _hints(data: Mapping[str, Any]) -> tuple[str | None, int | None, CommandName | None]:
    """command_id, seq and command as the payload says them, if well-formed (for the answer only)."""
    command_id = data.get("command_id")
    command = data.get("command")
    return (command_id if isinstance(command_id, str) and _UUID.fullmatch(command_id) else None,
            _int(data.get("seq")),
            CommandName(command) if isinstance(command, str) and command in _COMMANDS else None)


def _check_signature(data: Mapping[str, Any], keys: Mapping[str, Ed25519PublicKey]) -> None:
    if "signature" not in data:
        raise _Refused(RefusalCode.MISSING_SIGNATURE, "the command carries no signature", "$.signature")
    text = data["signature"]
    if not isinstance(text, str) or not _SIGNATURE.fullmatch(text):
        raise _Refused(RefusalCode.BAD_SIGNATURE, "not a base64 Ed25519 signature (88 characters)", "$.signature")
    signature = base64.b64decode(text, validate=True)
    key_id = data.get("key_id")
    if not isinstance(key_id, str):
        raise _Refused(RefusalCode.UNKNOWN_KEY, "the command names no key_id", "$.key_id")
    key = keys.get(key_id)
    if key is None:
        shown = key_id if KEY_ID.fullmatch(key_id) else repr(key_id[:64])
        raise _Refused(RefusalCode.UNKNOWN_KEY, f"key {shown} is not a trusted centre key "
                                                f"(trusted: {', '.join(sorted(keys)) or 'none'})", "$.key_id")
    payload = {k: v for k, v in data.items() if k != "signature"}
    try:
        signed = canonical_json(payload)
    except (ValueError, UnicodeEncodeError) as err:
        raise _Refused(RefusalCode.BAD_REQUEST, f"no canonical form to verify: {err}", "$") from None
    try:
        key.verify(signature, signed)
    except InvalidSignature:
        raise _Refused(RefusalCode.BAD_SIGNATURE, f"the signature does not verify with key {key_id}",
                       "$.signature") from None


def _under(path: str, member: str) -> bool:
    return path == member or path.startswith((member + ".", member + "["))


@dataclass(frozen=True, slots=True)
class _Envelope:
    lane_id: str
    command_id: str
    seq: int
    issued_at: dt.datetime
    expires_at: dt.datetime


def _envelope(data: Mapping[str, Any], problems: list[tuple[str, str]]) -> _Envelope:
    envelope = [p for p in problems if not _under(p[0], "$.command") and not _under(p[0], "$.args")]
    if envelope:
        path, reason = envelope[0]
        more = f" (and {len(envelope) - 1} more)" if len(envelope) > 1 else ""
        raise _Refused(RefusalCode.BAD_REQUEST, f"{path}: {reason}{more}", path)
    times: dict[str, dt.datetime] = {}
    for name in ("issued_at", "expires_at"):
        try:
            times[name] = dt.datetime.fromisoformat(data[name])
        except ValueError as err:
            raise _Refused(RefusalCode.BAD_REQUEST, f"$.{name}: {data[name]!r}: {err}", f"$.{name}") from None
    if times["expires_at"] <= times["issued_at"]:
        raise _Refused(RefusalCode.BAD_REQUEST, f"$.expires_at: {data['expires_at']} is not after issued_at "
                                                f"{data['issued_at']}", "$.expires_at")
    return _Envelope(lane_id=data["lane_id"], command_id=data["command_id"], seq=int(data["seq"]),
                     issued_at=times["issued_at"], expires_at=times["expires_at"])


def _display_line(text: str, path: str, limit: int) -> None:
    for i, char in enumerate(text, 1):
        if unicodedata.category(char) in _NOT_SHOWN:
            raise _Refused(RefusalCode.NOT_DISPLAYABLE, f"{path}: character {i} (U+{ord(char):04X}) is a control "
                                                        f"or format character the display cannot show", path)
        try:
            char.encode("gbk")
        except UnicodeEncodeError:
            raise _Refused(RefusalCode.NOT_DISPLAYABLE, f"{path}: character {i} (U+{ord(char):04X}) has no GBK "
                                                        f"code; the fee display shows GBK text", path) from None
    size = len(text.encode("gbk"))
    if size > limit:
        raise _Refused(RefusalCode.NOT_DISPLAYABLE, f"{path}: {size} bytes in GBK; a display line holds {limit} "
                                                    f"({limit // 2} full-width characters)", path)


def _blank(text: str, path: str) -> None:
    if not text.strip():
        raise _Refused(RefusalCode.BAD_ARGUMENTS, f"{path}: only white space", path)


def _action(request: CommandRequest, display_line_bytes: int) -> CommandAction:
    args = request.args
    if isinstance(args, CloseEtcArgs):
        _blank(args.reason, "$.args.reason")
        return CloseEtc(reason=args.reason)
    if isinstance(args, OpenEtcArgs):
        return OpenEtc(reason=args.reason)
    if isinstance(args, ShowMessageArgs):
        line2 = args.line2 or ""
        _display_line(args.line1, "$.args.line1", display_line_bytes)
        _display_line(line2, "$.args.line2", display_line_bytes)
        return ShowMessage(line1=args.line1, line2=line2, duration_s=args.duration_s)
    if isinstance(args, ResendFromArgs):
        return ResendFrom(seq=args.seq)
    if isinstance(args, PublishHealthArgs):
        return PublishHealth()
    if isinstance(args, FetchListArgs):
        return FetchList(kind=args.kind, version=args.version)
    if isinstance(args, RaiseBarrierArgs):
        _blank(args.reason, "$.args.reason")
        return RaiseBarrier(operator=args.operator, reason=args.reason)
    raise _Refused(RefusalCode.UNKNOWN_COMMAND, f"no action for {type(args).__name__}", "$.command")


def _verify(data: dict[str, Any], lane_id: str, keys: Mapping[str, Ed25519PublicKey], ledger: CommandLedger,
            now: dt.datetime, clock_skew_s: float, display_line_bytes: int) -> Verified | Replay:
    _check_signature(data, keys)
    problems = contract().problems(MESSAGE, data)
    env = _envelope(data, problems)
    if env.lane_id != lane_id:
        raise _Refused(RefusalCode.WRONG_LANE, f"the command is for lane {env.lane_id}, this is lane {lane_id}",
                       "$.lane_id")
    if ledger.executed(env.command_id):
        command = data.get("command")
        return Replay(lane_id=lane_id, command_id=env.command_id, seq=env.seq,
                      command=CommandName(command) if isinstance(command, str) and command in _COMMANDS else None)
    ahead = (env.issued_at - now).total_seconds()
    if ahead > clock_skew_s:
        raise _Refused(RefusalCode.NOT_YET_VALID, f"issued at {data['issued_at']}, {ahead:g} s ahead of the lane "
                                                  f"clock ({now.isoformat()}; tolerance {clock_skew_s:g} s)",
                       "$.issued_at")
    if now >= env.expires_at:
        raise _Refused(RefusalCode.EXPIRED, f"expired at {data['expires_at']}; the lane clock says "
                                            f"{now.isoformat()}", "$.expires_at")
    highest = ledger.highest_seq()
    if highest is not None and env.seq <= highest:
        raise _Refused(RefusalCode.SEQ_NOT_ABOVE, f"command seq {env.seq} is not above the last executed seq "
                                                  f"{highest}", "$.seq")
    for path, reason in problems:
        if _under(path, "$.command"):
            raise _Refused(RefusalCode.UNKNOWN_COMMAND, f"{path}: {reason}", path)
    args = [p for p in problems if _under(p[0], "$.args")]
    if args:
        path, reason = args[0]
        more = f" (and {len(args) - 1} more)" if len(args) > 1 else ""
        raise _Refused(RefusalCode.BAD_ARGUMENTS, f"{path}: {reason}{more}", path)
    try:
        request = CommandRequest.from_dict(data)
    except ContractError as err:  # a rule beyond the schema; the checks above leave none known
        code = RefusalCode.BAD_ARGUMENTS if _under(err.path, "$.args") else RefusalCode.BAD_REQUEST
        raise _Refused(code, f"{err.path}: {err.reason}", err.path) from None
    return Verified(request=request, action=_action(request, display_line_bytes))


def verify(raw_payload: bytes | bytearray | str, *, lane_id: str, keys: Mapping[str, Ed25519PublicKey],
           ledger: CommandLedger, now: dt.datetime, clock_skew_s: float = DEFAULT_CLOCK_SKEW_S,
           display_line_bytes: int = DISPLAY_LINE_BYTES) -> Outcome:
    """Check a received command (the MQTT payload as received) and say what to do with it.

    ``keys``: the trusted centre keys (:class:`CentreKeys`); ``ledger``: what was executed
    (read only); ``now``: the lane's clock, timezone-aware; ``clock_skew_s``: how far
    ``issued_at`` may be ahead of it; ``display_line_bytes``: GBK bytes a display line holds.
    The checks and their order: see the module docstring. Raises only on a bad call (a
    naive ``now``, a negative tolerance), never on a bad payload.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be timezone-aware (the lane clock as an aware datetime)")
    if clock_skew_s < 0:
        raise ValueError(f"clock_skew_s must not be negative, got {clock_skew_s}")
    command_id: str | None = None
    seq: int | None = None
    command: CommandName | None = None
    try:
        data = _parse(raw_payload)
        command_id, seq, command = _hints(data)
        return _verify(data, lane_id, keys, ledger, now, clock_skew_s, display_line_bytes)
    except _Refused as refused:
        return Refusal(code=refused.code, text=refused.text, lane_id=lane_id, command_id=command_id, seq=seq,
                       command=command, path=refused.path)


# -- signing (the reference centre, tests) -----------------------------------------------------------


def signature_of(payload: Mapping[str, Any], private_key: Ed25519PrivateKey) -> bytes:
    """The 64-byte Ed25519 signature over the payload without ``signature``, canonical form."""
    return private_key.sign(canonical_json({k: v for k, v in payload.items() if k != "signature"}))


def sign(payload: Mapping[str, Any], private_key: Ed25519PrivateKey, key_id: str) -> bytes:
    """The command as the centre publishes it: ``key_id`` set, signed, UTF-8 JSON bytes.

    ``payload`` holds the command's members as JSON values (times as RFC 3339 strings); a
    ``signature`` in it is replaced. The signature covers the same bytes as
    ``CommandRequest.signed_bytes()`` of what the lane receives.
    """
    if not KEY_ID.fullmatch(key_id):
        raise CommandKeyError(key_id, f"the key id must match {KEY_ID.pattern}")
    body = {k: v for k, v in payload.items() if k != "signature"}
    body["key_id"] = key_id
    body["signature"] = base64.b64encode(signature_of(body, private_key)).decode("ascii")
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


__all__ = [
    "ACTION_TYPES", "DEFAULT_CLOCK_SKEW_S", "DISPLAY_LINE_BYTES", "MAX_COMMAND_BYTES", "CentreKeys", "CloseEtc",
    "CommandAction", "CommandKeyError", "CommandLedger", "FetchList", "MemoryLedger", "OpenEtc", "Outcome",
    "PublishHealth", "RaiseBarrier", "Refusal", "RefusalCode", "Replay", "ResendFrom", "ShowMessage", "Verified",
    "load_public_key", "sign", "signature_of", "verify", "KEY_ID", "MAX_DETAIL",
]
