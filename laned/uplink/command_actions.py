"""What a verified command asks the lane to do (:data:`CommandAction`), and the three
outcomes of verifying one (:class:`Verified`, :class:`Refusal`, :class:`Replay`).

Part of :mod:`laned.uplink.commands` (which re-exports every name here); executing the
actions is :mod:`laned.uplink.command_exec`. Sans-IO.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Final, TypeAlias

from laned.uplink.messages import (
    CommandName,
    CommandOutcome,
    CommandRequest,
    CommandResult,
    ListKind,
    RefusalReason,
)

MAX_DETAIL: Final = CommandResult.MAX_DETAIL  # the contract's Text; CommandResult cuts a longer detail to it


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
    return CommandResult.fit_detail(f"{code}: {text}")  # as the result carries it, so the log says the same


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
