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
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import enum
import json
import re
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Protocol, TypeAlias, runtime_checkable

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from laned.uplink.contract import ContractError, contract
from laned.uplink.messages import (
    CloseEtcArgs,
    CommandName,
    CommandOutcome,
    CommandRequest,
    CommandResult,
    FetchListArgs,
    ListKind,
    OpenEtcArgs,
    PublishHealthArgs,
    RaiseBarrierArgs,
    RefusalReason,
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
MAX_DETAIL: Final = 1000  # the contract's Text
KEY_ID: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # the contract's KeyId
_UUID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_SIGNATURE: Final = re.compile(r"[A-Za-z0-9+/]{86}==")  # the contract's Ed25519Signature
_HEX_KEY: Final = re.compile(r"[0-9a-fA-F]{64}")
_MAX_SEQ: Final = 2**63 - 1
# Unicode categories a display line must not hold: controls, format, surrogates, private
# use, unassigned, line and paragraph separators.
_NOT_SHOWN: Final = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_COMMANDS: Final = frozenset(c.value for c in CommandName)


# -- keys ---------------------------------------------------------------------------------------


class CommandKeyError(ValueError):
    """A centre key (or its id) that cannot be trusted as given; names the key id."""

    def __init__(self, key_id: str, reason: str) -> None:
        super().__init__(f"centre key {key_id!r}: {reason}")
        self.key_id, self.reason = key_id, reason


def load_public_key(key_id: str, text: str) -> Ed25519PublicKey:
    """An Ed25519 public key from PEM (SubjectPublicKeyInfo) or the raw 32 bytes in base64."""
    if not isinstance(text, str) or not text.strip():
        raise CommandKeyError(key_id, "no key text (expected PEM or the raw 32-byte key in base64)")
    text = text.strip()
    if text.startswith("-----BEGIN"):
        first = text.splitlines()[0]
        if "PRIVATE" in first:
            raise CommandKeyError(key_id, "this is a private key; the lane must hold only the centre's public key")
        try:
            key = serialization.load_pem_public_key(text.encode("ascii"))
        except (ValueError, UnsupportedAlgorithm, UnicodeEncodeError) as err:
            raise CommandKeyError(key_id, f"not a PEM public key ({err})") from None
        if not isinstance(key, Ed25519PublicKey):
            raise CommandKeyError(key_id, f"a {type(key).__name__.removeprefix('_')} key, not Ed25519")
        return key
    if _HEX_KEY.fullmatch(text):
        raise CommandKeyError(key_id, "looks like hex; give the raw 32-byte key in base64, or PEM")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise CommandKeyError(key_id, "neither PEM nor base64 (expected the raw 32-byte Ed25519 key in base64)") \
            from None
    if len(raw) != 32:
        raise CommandKeyError(key_id, f"{len(raw)} bytes in base64; an Ed25519 public key is 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


class CentreKeys(Mapping[str, Ed25519PublicKey]):
    """The centre's Ed25519 public keys the lane trusts, by key id (the trust store).

    Built from the config (a section of laned.toml, to come) with :meth:`from_texts`; more
    than one key lets the centre roll its key over. An empty store refuses every command.
    """

    def __init__(self, keys: Mapping[str, Ed25519PublicKey] | None = None) -> None:
        checked: dict[str, Ed25519PublicKey] = {}
        for key_id, key in (keys or {}).items():
            if not isinstance(key_id, str) or not KEY_ID.fullmatch(key_id):
                raise CommandKeyError(str(key_id), f"the key id must match {KEY_ID.pattern}")
            if not isinstance(key, Ed25519PublicKey):
                raise CommandKeyError(key_id, f"a {type(key).__name__}, not an Ed25519 public key")
            checked[key_id] = key
        self._keys: Mapping[str, Ed25519PublicKey] = checked

    @classmethod
    def from_texts(cls, texts: Mapping[str, str]) -> CentreKeys:
        """From key id → PEM text or base64 of the raw 32-byte key; :class:`CommandKeyError` names a bad one."""
        keys: dict[str, Ed25519PublicKey] = {}
        for key_id, text in texts.items():
            if not isinstance(key_id, str) or not KEY_ID.fullmatch(key_id):
                raise CommandKeyError(str(key_id), f"the key id must match {KEY_ID.pattern}")
            keys[key_id] = load_public_key(key_id, text)
        return cls(keys)

    def __getitem__(self, key_id: str) -> Ed25519PublicKey:
        return self._keys[key_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"CentreKeys({sorted(self._keys)})"


# -- the ledger -----------------------------------------------------------------------------------


@runtime_checkable
class CommandLedger(Protocol):
    """What the lane remembers of the commands it executed (the journal implements it).

    The journal-backed ledger comes with the journal's command table (issue 10): it records
    a command's id and seq in the same SQLite transaction as the action's own journal record,
    so a crash leaves either both or neither. :class:`MemoryLedger` is the in-memory one for
    tests. The seq check alone already keeps a command from running twice (a redelivered
    command's seq is never above the highest); the id set lets a redelivery get its original
    answer (:class:`Replay`) instead of a refusal.
    """

    def executed(self, command_id: str) -> bool:
        """Whether the command with this id was executed."""
        ...

    def highest_seq(self) -> int | None:
        """The highest seq of an executed command; None before the first."""
        ...


class MemoryLedger:
    """An in-memory :class:`CommandLedger` (tests, the reference centre's fake lane)."""

    def __init__(self, executed: Mapping[str, int] | None = None) -> None:
        self._seqs: dict[str, int] = dict(executed or {})

    def executed(self, command_id: str) -> bool:
        return command_id in self._seqs

    def highest_seq(self) -> int | None:
        return max(self._seqs.values(), default=None)

    def record(self, command_id: str, seq: int) -> None:
        """Note an executed command; a second record of one id is a bug (at most once)."""
        if command_id in self._seqs:
            raise ValueError(f"command {command_id} is already recorded as executed")
        self._seqs[command_id] = seq

    def snapshot(self) -> Mapping[str, int]:
        """A copy of what it holds (id → seq), for tests that check it did not change."""
        return dict(self._seqs)


# -- actions --------------------------------------------------------------------------------------
# One per command of the contract, and nothing else: there is no action that lowers the
# barrier. The lane lowers it itself, through its interlock, once the vehicle is clear.


@dataclass(frozen=True, kw_only=True, slots=True)
class CloseEtc:
    """Close ETC on purpose (a degraded mode: new OBUs are sent to the manual lane) until OpenEtc."""

    COMMAND: ClassVar[CommandName] = CommandName.CLOSE_ETC
    reason: str


@dataclass(frozen=True, kw_only=True, slots=True)
class OpenEtc:
    """Lift a CloseEtc; ETC opens only if nothing else (a device, the journal) keeps it closed."""

    COMMAND: ClassVar[CommandName] = CommandName.OPEN_ETC
    reason: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ShowMessage:
    """Two lines on the fee display for ``duration_s``; checked to fit the display."""

    COMMAND: ClassVar[CommandName] = CommandName.SHOW_MESSAGE
    line1: str
    line2: str
    duration_s: int


@dataclass(frozen=True, kw_only=True, slots=True)
class ResendFrom:
    """Publish the journal again from ``seq`` on."""

    COMMAND: ClassVar[CommandName] = CommandName.RESEND_FROM
    seq: int


@dataclass(frozen=True, kw_only=True, slots=True)
class PublishHealth:
    """Publish a health snapshot now."""

    COMMAND: ClassVar[CommandName] = CommandName.PUBLISH_HEALTH


@dataclass(frozen=True, kw_only=True, slots=True)
class FetchList:
    """Collect this status list or fee table version (manifest, then chunks)."""

    COMMAND: ClassVar[CommandName] = CommandName.FETCH_LIST
    kind: ListKind
    version: int


@dataclass(frozen=True, kw_only=True, slots=True)
class RaiseBarrier:
    """An operator's remote raise, journalled with the operator and the reason.

    It asks the lane to raise; the lane alone lowers the barrier again, through its
    interlock, once the safety loop is clear. Nothing here can command it down.
    """

    COMMAND: ClassVar[CommandName] = CommandName.RAISE_BARRIER
    operator: str
    reason: str


CommandAction: TypeAlias = CloseEtc | OpenEtc | ShowMessage | ResendFrom | PublishHealth | FetchList | RaiseBarrier
ACTION_TYPES: Final[tuple[type[CommandAction], ...]] = (
    CloseEtc, OpenEtc, ShowMessage, ResendFrom, PublishHealth, FetchList, RaiseBarrier)


# -- outcomes ------------------------------------------------------------------------------------


class RefusalCode(enum.StrEnum):
    """Why a command was refused, finer than the contract's reason (:attr:`reason`)."""

    BAD_REQUEST = "bad_request"  # not a JSON object, or an envelope member breaks the contract
    MISSING_SIGNATURE = "missing_signature"
    BAD_SIGNATURE = "bad_signature"  # not a signature, or it does not verify
    UNKNOWN_KEY = "unknown_key"  # no key_id, or one the lane does not trust
    WRONG_LANE = "wrong_lane"
    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    ALREADY_EXECUTED = "already_executed"  # the Replay outcome
    SEQ_NOT_ABOVE = "seq_not_above"  # a new id, but seq not above the highest executed
    UNKNOWN_COMMAND = "unknown_command"
    BAD_ARGUMENTS = "bad_arguments"
    NOT_DISPLAYABLE = "not_displayable"  # a show_message the fee display cannot show

    @property
    def reason(self) -> RefusalReason:
        """The contract's reason code (CommandResult.reason) for this refusal."""
        return _REASONS[self]


_REASONS: Final[Mapping[RefusalCode, RefusalReason]] = {
    RefusalCode.BAD_REQUEST: RefusalReason.MALFORMED,
    RefusalCode.MISSING_SIGNATURE: RefusalReason.BAD_SIGNATURE,
    RefusalCode.BAD_SIGNATURE: RefusalReason.BAD_SIGNATURE,
    RefusalCode.UNKNOWN_KEY: RefusalReason.UNKNOWN_KEY,
    RefusalCode.WRONG_LANE: RefusalReason.WRONG_LANE,
    RefusalCode.NOT_YET_VALID: RefusalReason.NOT_YET_VALID,
    RefusalCode.EXPIRED: RefusalReason.EXPIRED,
    RefusalCode.ALREADY_EXECUTED: RefusalReason.REPLAYED,
    RefusalCode.SEQ_NOT_ABOVE: RefusalReason.REPLAYED,
    RefusalCode.UNKNOWN_COMMAND: RefusalReason.MALFORMED,
    RefusalCode.BAD_ARGUMENTS: RefusalReason.MALFORMED,
    RefusalCode.NOT_DISPLAYABLE: RefusalReason.NOT_POSSIBLE,
}


def _detail(code: RefusalCode, text: str) -> str:
    detail = f"{code}: {text}"
    return detail if len(detail) <= MAX_DETAIL else detail[:MAX_DETAIL - 3] + "..."


@dataclass(frozen=True, kw_only=True)
class Verified:
    """A command to execute: ``action``; then record it in the ledger and answer :meth:`result`."""

    request: CommandRequest
    action: CommandAction

    @property
    def command_id(self) -> str:
        return self.request.command_id

    @property
    def seq(self) -> int:
        return self.request.seq

    def result(self, at: dt.datetime, detail: str | None = None) -> CommandResult:
        return CommandResult.executed(self.request, at, detail)


@dataclass(frozen=True, kw_only=True)
class Refusal:
    """A command refused: nothing applied. ``path`` is the JSON path of the member at fault."""

    code: RefusalCode
    text: str
    lane_id: str  # this lane's (the result goes out under it)
    command_id: str | None = None  # None when the payload did not carry a readable one
    seq: int | None = None
    command: CommandName | None = None
    path: str | None = None

    @property
    def reason(self) -> RefusalReason:
        return self.code.reason

    @property
    def detail(self) -> str:
        return _detail(self.code, self.text)

    def result(self, at: dt.datetime) -> CommandResult | None:
        """The answer on ``cmd/result``; None when there is no command id to answer (log it only)."""
        if self.command_id is None:
            return None
        return CommandResult(lane_id=self.lane_id, command_id=self.command_id, seq=self.seq, command=self.command,
                             outcome=CommandOutcome.REFUSED, reason=self.reason, at=at, detail=self.detail)


@dataclass(frozen=True, kw_only=True)
class Replay:
    """A command id executed before (a QoS 1 redelivery): execute nothing, answer again.

    The answer is the original result (the journal keeps it); :meth:`result` returns it
    unchanged, or — when it is not at hand — a refusal ``replayed`` saying "already executed".
    """

    code: ClassVar[RefusalCode] = RefusalCode.ALREADY_EXECUTED
    lane_id: str
    command_id: str
    seq: int
    command: CommandName | None = None

    @property
    def reason(self) -> RefusalReason:
        return self.code.reason

    @property
    def detail(self) -> str:
        return _detail(self.code, f"already executed: command {self.command_id} (seq {self.seq}) was executed "
                                  f"before and is not executed again")

    def result(self, at: dt.datetime, original: CommandResult | None = None) -> CommandResult:
        if original is not None:
            if original.command_id != self.command_id:
                raise ValueError(f"the original result answers {original.command_id}, not {self.command_id}")
            return original
        return CommandResult(lane_id=self.lane_id, command_id=self.command_id, seq=self.seq, command=self.command,
                             outcome=CommandOutcome.REFUSED, reason=self.reason, at=at, detail=self.detail)


Outcome: TypeAlias = Verified | Refusal | Replay


# -- parsing -------------------------------------------------------------------------------------


class _Refused(Exception):
    def __init__(self, code: RefusalCode, text: str, path: str | None = None) -> None:
        super().__init__(text)
        self.code, self.text, self.path = code, text, path


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"member {key!r} appears twice")
        out[key] = value
    return out


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
        data = json.loads(text, parse_constant=_no_constant, object_pairs_hook=_unique_members)
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
    "load_public_key", "sign", "signature_of", "verify",
]
