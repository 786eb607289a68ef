"""The centre's commands as messages: the signed :class:`CommandRequest` (topic ``cmd``),
the arguments each command takes, and the lane's :class:`CommandResult` (``cmd/result``).

Verifying a request (signature, lane, replay, time, seq) and turning it into an action is
:mod:`laned.uplink.commands`.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import enum
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from laned.uplink.contract import ContractError
from laned.uplink.messages.codec import (
    BASE64,
    NOT_JSON,
    UplinkMessage,
    _check_uuid,
    _decode_fields,
    _Invalid,
    _signed_bytes,
)
from laned.uplink.messages.lists import ListKind

# -- codes ----------------------------------------------------------------------------------------


class CommandName(enum.StrEnum):
    CLOSE_ETC = "close_etc"
    OPEN_ETC = "open_etc"
    SHOW_MESSAGE = "show_message"
    RESEND_FROM = "resend_from"
    PUBLISH_HEALTH = "publish_health"
    FETCH_LIST = "fetch_list"
    RAISE_BARRIER = "raise_barrier"  # an operator's remote raise; nothing lowers the barrier remotely


class CommandOutcome(enum.StrEnum):
    EXECUTED = "executed"
    REFUSED = "refused"


class RefusalReason(enum.StrEnum):
    BAD_SIGNATURE = "bad_signature"
    UNKNOWN_KEY = "unknown_key"  # key_id is not in the lane's trust store
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"  # issued_at in the future beyond the clock tolerance
    REPLAYED = "replayed"  # seq not above the last executed command's
    WRONG_LANE = "wrong_lane"
    MALFORMED = "malformed"  # does not conform to the contract
    NOT_POSSIBLE = "not_possible"  # valid, but the lane cannot do it now (detail says why)


# -- arguments -------------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class CloseEtcArgs:
    reason: str


@dataclass(frozen=True, kw_only=True)
class OpenEtcArgs:
    reason: str | None = None


@dataclass(frozen=True, kw_only=True)
class ShowMessageArgs:
    line1: str
    duration_s: int
    line2: str | None = None


@dataclass(frozen=True, kw_only=True)
class ResendFromArgs:
    seq: int


@dataclass(frozen=True, kw_only=True)
class PublishHealthArgs:
    pass


@dataclass(frozen=True, kw_only=True)
class FetchListArgs:
    kind: ListKind
    version: int


@dataclass(frozen=True, kw_only=True)
class RaiseBarrierArgs:
    operator: str
    reason: str


CommandArgs = (CloseEtcArgs | OpenEtcArgs | ShowMessageArgs | ResendFromArgs | PublishHealthArgs | FetchListArgs
               | RaiseBarrierArgs)
COMMAND_ARGS: Mapping[CommandName, type[CommandArgs]] = types.MappingProxyType({
    CommandName.CLOSE_ETC: CloseEtcArgs,
    CommandName.OPEN_ETC: OpenEtcArgs,
    CommandName.SHOW_MESSAGE: ShowMessageArgs,
    CommandName.RESEND_FROM: ResendFromArgs,
    CommandName.PUBLISH_HEALTH: PublishHealthArgs,
    CommandName.FETCH_LIST: FetchListArgs,
    CommandName.RAISE_BARRIER: RaiseBarrierArgs,
})


def _decode_args(value: Any, data: Mapping[str, Any], path: str) -> CommandArgs:
    args: CommandArgs = _decode_fields(COMMAND_ARGS[CommandName(data["command"])], value, path)
    return args


# -- messages --------------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class CommandRequest(UplinkMessage):
    """A signed command from the centre (topic ``cmd``)."""

    MESSAGE: ClassVar[str] = "CommandRequest"
    _DECODERS: ClassVar[Mapping[str, Callable[[Any, Mapping[str, Any], str], Any]]] = {"args": _decode_args}

    lane_id: str
    command_id: str
    seq: int
    issued_at: dt.datetime
    expires_at: dt.datetime
    command: CommandName
    args: CommandArgs
    key_id: str
    signature: bytes = field(default=b"", metadata=BASE64)
    # The payload it was read from (what the signature covers); None for one built here.
    raw: Mapping[str, Any] | None = field(default=None, compare=False, repr=False, metadata=NOT_JSON)

    def __post_init__(self) -> None:
        expected = COMMAND_ARGS[CommandName(self.command)]
        if type(self.args) is not expected:
            raise ContractError(self.MESSAGE, [("$.args", f"{self.command} takes {expected.__name__}, "
                                                          f"not {type(self.args).__name__}")])

    def signed_bytes(self) -> bytes:
        """The bytes the Ed25519 signature covers: the payload without ``signature``, canonical."""
        return _signed_bytes(self, self.raw)

    def signed(self, signature: bytes) -> CommandRequest:
        """The same command carrying ``signature`` (the centre side, and tests)."""
        return dataclasses.replace(self, signature=signature, raw=None)

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        made = super().from_dict(data)
        object.__setattr__(made, "raw", types.MappingProxyType(copy.deepcopy(dict(data))))
        return made

    def _check(self) -> None:
        _check_uuid(self.command_id, "$.command_id")
        if self.expires_at <= self.issued_at:
            raise _Invalid("$.expires_at", f"{self.expires_at.isoformat()} is not after issued_at "
                                           f"{self.issued_at.isoformat()}")


@dataclass(frozen=True, kw_only=True)
class CommandResult(UplinkMessage):
    """Executed, or refused with a reason (topic ``cmd/result``).

    ``detail`` longer than the contract's ``Text`` allows is cut to fit, ending in
    :attr:`DETAIL_CUT`.
    """

    MESSAGE: ClassVar[str] = "CommandResult"
    MAX_DETAIL: ClassVar[int] = 1000  # the contract's Text (docs/asyncapi.yaml, components.schemas.Text maxLength)
    DETAIL_CUT: ClassVar[str] = " [… cut]"  # ends a detail that was cut to MAX_DETAIL

    lane_id: str
    command_id: str
    outcome: CommandOutcome
    at: dt.datetime
    seq: int | None = None
    command: CommandName | None = None
    reason: RefusalReason | None = None
    detail: str | None = None

    def __post_init__(self) -> None:
        # Every result passes here: the factories, a refusal, a replay, one read back from the
        # ledger. Details are built from texts of any length (open_etc names every closure's
        # reason, a journal error quotes SQLite) and the centre drops a result whose Text is
        # too long: cut here, it goes out and into the ledger as one, and a redelivery gets it.
        if self.detail is not None:
            object.__setattr__(self, "detail", self.fit_detail(self.detail))

    @classmethod
    def fit_detail(cls, detail: str) -> str:
        """``detail`` as a result carries it: unchanged, or cut to :attr:`MAX_DETAIL` characters
        ending in :attr:`DETAIL_CUT`."""
        if len(detail) <= cls.MAX_DETAIL:
            return detail
        return detail[:cls.MAX_DETAIL - len(cls.DETAIL_CUT)] + cls.DETAIL_CUT

    @classmethod
    def executed(cls, request: CommandRequest, at: dt.datetime, detail: str | None = None) -> CommandResult:
        return cls(lane_id=request.lane_id, command_id=request.command_id, seq=request.seq, command=request.command,
                   outcome=CommandOutcome.EXECUTED, at=at, detail=detail)

    @classmethod
    def refused(cls, request: CommandRequest, reason: RefusalReason, at: dt.datetime, detail: str | None = None,
                *, lane_id: str | None = None) -> CommandResult:
        """``lane_id``: this lane's id (for a wrong_lane refusal, the request names another)."""
        return cls(lane_id=lane_id or request.lane_id, command_id=request.command_id, seq=request.seq,
                   command=request.command, outcome=CommandOutcome.REFUSED, reason=reason, at=at, detail=detail)
