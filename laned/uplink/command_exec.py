"""Executing the centre's signed commands: at most once, and every command answered.

:class:`CommandExecutor` is the uplink service's command hook (``UplinkService.on_command``,
wired in ``laned.app``). For each payload on ``cmd``, as received:

1. **Verify** (:func:`laned.uplink.commands.verify`) on the journal writer's thread: the
   ledger (executed ids, the highest seq) is read there, so the loop never waits on SQLite
   nor on the signature check.
2. :class:`~laned.uplink.commands.Refusal`: nothing is applied, nothing is journalled; the
   refusal is published (if the payload had a readable command id) and logged with why.
   :class:`~laned.uplink.commands.Replay` (a QoS 1 redelivery of an executed command):
   nothing is executed; the **original** result, as the ledger kept it, is published again.
3. :class:`~laned.uplink.commands.Verified`: if the lane cannot do it now (no fee display,
   the IO module offline, no list downloads), a refusal ``not_possible`` says so and
   nothing is recorded. Otherwise **one journal transaction** holds the command's event row
   (kind ``command``, or ``remote_raise`` with the operator — it goes to the centre on
   ``tx`` like every row), the journal side of the action (``resend_from`` clears the acks
   from that seq) and the ledger entry with the result. Only once that has committed is the
   action applied to the lane and the result published. A journal that fails leaves
   neither row nor ledger entry, applies nothing and answers ``not_possible``.

Recording before applying is what makes it *at most once*: a crash after the commit and
before the lane acted loses that action (a remote raise, a message) rather than running it
twice on a redelivery. ``close_etc`` is the exception that must survive: the lane reads the
last ``close_etc``/``open_etc`` from the ledger at start (:meth:`CommandExecutor.restore`),
so a lane an operator closed stays closed across a restart until ``open_etc``.

The results go out on ``cmd/result`` with the command's MQTT 5 correlation data copied
unchanged (the contract: absent if the command had none).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from laned.journal.errors import JournalError
from laned.lane.events import Device, DeviceStatus, Event, OperatorMessage, OperatorRaise
from laned.uplink.commands import (
    DEFAULT_CLOCK_SKEW_S,
    DISPLAY_LINE_BYTES,
    CentreKeys,
    CloseEtc,
    CommandAction,
    FetchList,
    OpenEtc,
    Outcome,
    PublishHealth,
    RaiseBarrier,
    Refusal,
    Replay,
    ResendFrom,
    ShowMessage,
    Verified,
    verify,
)
from laned.uplink.contract import ContractError
from laned.uplink.link import Incoming, Session
from laned.uplink.messages import CommandName, CommandResult, ListKind, RefusalReason

if TYPE_CHECKING:
    from laned.config import UplinkSection

log = logging.getLogger("laned.uplink.commands")

REMOTE_RAISE_KIND = "remote_raise"  # the journal row of an operator's remote raise
COMMAND_KIND = "command"  # the journal row of every other executed command
ETC_COMMANDS = (CommandName.CLOSE_ETC.value, CommandName.OPEN_ETC.value)
CLOSED_BY_CENTRE = "closed by the centre"  # how a closure by command starts, in the lane state and the log


class UplinkControl(Protocol):
    """What commands ask of the uplink service (laned.uplink.service.UplinkService)."""

    def resend_from(self, seq: int) -> None: ...

    async def publish_health(self, session: Session) -> None: ...


@dataclass(frozen=True, slots=True)
class LaneControl:
    """What commands may do to the lane, and what they need to know of it.

    ``post`` feeds the lane machine (the executor's inbox): every change goes through the
    machine, so its interlock, its display logic and its journal see it. ``fetch_list``
    asks the list downloads for a version and returns what it did; None: this lane has
    no list downloads.
    """

    post: Callable[[Event], None]
    closed_by: Callable[[], Mapping[Device, str]]
    is_down: Callable[[Device], bool]
    has_display: bool
    has_io: bool
    fetch_list: Callable[[ListKind, int], Awaitable[str]] | None = None


@dataclass(frozen=True, slots=True)
class CommandSettings:
    lane_id: str
    keys: Mapping[str, Any]  # CentreKeys: key id -> Ed25519 public key
    clock_skew_s: float = DEFAULT_CLOCK_SKEW_S
    display_line_bytes: int = DISPLAY_LINE_BYTES


def _refused(verified: Verified, at: dt.datetime, detail: str) -> CommandResult:
    return CommandResult.refused(verified.request, RefusalReason.NOT_POSSIBLE, at, f"not_possible: {detail}")


def cannot(action: CommandAction, lane: LaneControl) -> str | None:
    """Why the lane cannot carry out ``action`` now; None if it can."""
    if isinstance(action, ShowMessage):
        if not lane.has_display:
            return "this lane has no fee display configured ([devices.fee_display] kind = none)"
        if lane.is_down(Device.DISPLAY):
            return "the fee display does not answer; the message would not be seen"
    if isinstance(action, RaiseBarrier):
        if not lane.has_io:
            return "this lane has no IO module configured: laned cannot move the barrier"
        if lane.is_down(Device.IO):
            return "the IO module is offline: the barrier cannot be raised now (raise it at the booth)"
    if isinstance(action, FetchList) and lane.fetch_list is None:
        return ("fetch_list is not available on this lane: list downloads are not wired here; status lists "
                "and fee tables arrive with the centre's retained manifest (list/manifest)")
    return None


def _journal_detail(verified: Verified) -> tuple[str, str, str | None]:
    """The event row of an executed command: (kind, detail, message)."""
    req, action = verified.request, verified.action
    head = f"command {req.command_id} seq {req.seq} (key {req.key_id})"
    if isinstance(action, RaiseBarrier):
        return REMOTE_RAISE_KIND, f"{head}: remote raise by operator {action.operator}: {action.reason}", None
    if isinstance(action, CloseEtc):
        return COMMAND_KIND, f"{head}: close ETC: {action.reason}", None
    if isinstance(action, OpenEtc):
        return COMMAND_KIND, f"{head}: open ETC{': ' + action.reason if action.reason else ''}", None
    if isinstance(action, ShowMessage):
        return COMMAND_KIND, f"{head}: show a message for {action.duration_s} s", \
            " ".join(p for p in (action.line1, action.line2) if p)
    if isinstance(action, ResendFrom):
        return COMMAND_KIND, f"{head}: resend from seq {action.seq}", None
    if isinstance(action, FetchList):
        return COMMAND_KIND, f"{head}: fetch {action.kind} version {action.version}", None
    return COMMAND_KIND, f"{head}: publish a health snapshot", None


def describe(action: CommandAction, *, row_seq: int, requeued: int = 0,
             closed_by: Mapping[Device, str] | None = None, fetched: str = "") -> str:
    """What the lane did, for the result's detail (the centre's operator reads it)."""
    if isinstance(action, CloseEtc):
        return (f"ETC closed on purpose ({action.reason}): new OBUs are sent to the manual lane until open_etc; "
                f"kept across restarts (journal seq {row_seq})")
    if isinstance(action, OpenEtc):
        others = {d: why for d, why in (closed_by or {}).items() if d is not Device.OPERATOR}
        if others:
            return ("the centre's closure is lifted, but ETC stays closed by: "
                    + "; ".join(f"{d}: {why}" for d, why in sorted(others.items())))
        return "the centre's closure is lifted: ETC open"
    if isinstance(action, ShowMessage):
        return f"shown on the fee display for {action.duration_s} s"
    if isinstance(action, ResendFrom):
        return (f"transactions from seq {action.seq} go up again ({requeued} of them had been acknowledged and "
                "were queued again)")
    if isinstance(action, PublishHealth):
        return "a health snapshot was published"
    if isinstance(action, FetchList):
        return fetched or f"{action.kind} version {action.version} requested"
    return (f"barrier raise commanded for operator {action.operator} (journal seq {row_seq}, remote_raise); the lane "
            "lowers it itself through the interlock once the vehicle has passed")


class CommandExecutor:
    """The uplink's command hook: ``await executor(item, session)`` (see the module docstring)."""

    def __init__(self, settings: CommandSettings, *, writer: Any, lane: LaneControl, uplink: UplinkControl,
                 wall: Callable[[], dt.datetime]) -> None:
        self.settings = settings
        self.writer = writer
        self.lane = lane
        self.uplink = uplink
        self.wall = wall

    @classmethod
    def from_config(cls, uplink: UplinkSection, lane_id: str, *, display_profile: Any, writer: Any,
                    lane: LaneControl, control: UplinkControl, wall: Callable[[], dt.datetime]) -> CommandExecutor:
        """From ``[uplink]``: ``command_keys`` (absent: ``centre_keys``), ``command_clock_skew_s``;
        a show_message must fit the narrower text line of the display profile (GBK, 2 bytes
        a register)."""
        texts = uplink.command_keys if uplink.command_keys is not None else uplink.centre_keys
        if not texts:
            log.warning("[uplink] trusts no centre key for commands (command_keys / centre_keys): every command "
                        "from the centre is refused unknown_key")
        line_bytes = DISPLAY_LINE_BYTES
        if display_profile is not None:
            line_bytes = 2 * min(display_profile.line1.registers, display_profile.line2.registers)
        settings = CommandSettings(lane_id=lane_id, keys=CentreKeys.from_texts(texts),
                                   clock_skew_s=uplink.command_clock_skew_s, display_line_bytes=line_bytes)
        return cls(settings, writer=writer, lane=lane, uplink=control, wall=wall)

    async def restore(self) -> None:
        """At start: a lane the centre closed (its last close/open command was close_etc)
        stays closed — an operator closed it, a restart must not reopen it."""
        last: tuple[str, str, str] | None = await self.writer.submit_async(
            lambda mj: mj.journal.last_command_of(ETC_COMMANDS))
        if last is None or last[0] != CommandName.CLOSE_ETC:
            return
        command, command_id, result_json = last
        try:
            detail = CommandResult.from_json(result_json).detail or ""
        except ContractError:
            detail = ""
        why = f"{CLOSED_BY_CENTRE} (command {command_id}){': ' + detail if detail else ''}"
        log.warning("ETC stays closed: the centre closed it with command %s and has not reopened it (open_etc)",
                    command_id)
        self.lane.post(DeviceStatus(Device.OPERATOR, False, why))

    async def __call__(self, item: Incoming, session: Session) -> None:
        s = self.settings
        now = self.wall()
        payload = item.payload

        def check(mj: Any) -> tuple[Outcome, str | None]:
            outcome = verify(payload, lane_id=s.lane_id, keys=s.keys, ledger=mj.journal, now=now,
                             clock_skew_s=s.clock_skew_s, display_line_bytes=s.display_line_bytes)
            original = mj.journal.command_result(outcome.command_id) if isinstance(outcome, Replay) else None
            return outcome, original

        try:
            outcome, original = await self.writer.submit_async(check)
        except JournalError as err:
            # The ledger cannot be read: nothing can be known about replays, so nothing runs.
            log.error("command on %s not executed: the journal cannot be read (%s); the centre must send it again",
                      item.topic, err)
            return
        if isinstance(outcome, Refusal):
            await self._refusal(outcome, item, session, now)
        elif isinstance(outcome, Replay):
            await self._replay(outcome, original, item, session, now)
        else:
            await self._execute(outcome, item, session, now)

    async def _refusal(self, refusal: Refusal, item: Incoming, session: Session, now: dt.datetime) -> None:
        result = refusal.result(now)
        log.warning("command %s (id %s, seq %s) refused, nothing applied: %s", refusal.command or "?",
                    refusal.command_id or "unreadable", refusal.seq if refusal.seq is not None else "?",
                    refusal.detail)
        if result is None:
            log.warning("command on %s: no readable command id, so no result can be addressed to the centre",
                        item.topic)
            return
        await session.publish(result, correlation_data=item.correlation_data)

    async def _replay(self, replay: Replay, original: str | None, item: Incoming, session: Session,
                      now: dt.datetime) -> None:
        kept: CommandResult | None = None
        if original is not None:
            try:
                kept = CommandResult.from_json(original)
            except ContractError as err:
                log.error("command %s: the result kept in the journal does not read back (%s); answering "
                          "'already executed' instead", replay.command_id, err)
        log.info("command %s (id %s, seq %d) delivered again: executed before, not executed again; the original "
                 "result is sent again", replay.command or "?", replay.command_id, replay.seq)
        await session.publish(replay.result(now, kept), correlation_data=item.correlation_data)

    async def _execute(self, verified: Verified, item: Incoming, session: Session, now: dt.datetime) -> None:
        action = verified.action
        why_not = cannot(action, self.lane)
        if why_not is not None:
            log.warning("command %s (id %s, seq %d) refused, nothing applied: %s", verified.request.command,
                        verified.command_id, verified.seq, why_not)
            await session.publish(_refused(verified, now, why_not), correlation_data=item.correlation_data)
            return
        fetched = ""
        if isinstance(action, FetchList) and self.lane.fetch_list is not None:
            fetched = await self.lane.fetch_list(action.kind, action.version)
        closed_by = dict(self.lane.closed_by())
        kind, detail, message = _journal_detail(verified)
        req = verified.request

        def record(mj: Any) -> CommandResult:
            journal = mj.journal
            with journal.batch(f"executing command {req.command_id} ({req.command})"):
                row = journal.record_event(kind, now, reason=str(req.command), detail=detail, message=message)
                requeued = journal.outbox_resend_from(action.seq) if isinstance(action, ResendFrom) else 0
                result = verified.result(now, describe(action, row_seq=row.seq, requeued=requeued,
                                                       closed_by=closed_by, fetched=fetched))
                journal.record_command(req.command_id, req.seq, str(req.command), result.to_json(), now)
            return result

        try:
            result: CommandResult = await self.writer.submit_async(record)
        except JournalError as err:
            # One transaction: neither the row nor the ledger entry is there, so the command
            # did not run and may be sent again.
            text = f"the journal could not record it ({err}); nothing was done, send it again"
            log.error("command %s (id %s, seq %d) not executed: %s", req.command, req.command_id, req.seq, text)
            await session.publish(_refused(verified, now, text), correlation_data=item.correlation_data)
            return
        await self._apply(action, session)
        log.warning("command %s (id %s, seq %d, key %s) executed: %s", req.command, req.command_id, req.seq,
                    req.key_id, result.detail)
        await session.publish(result, correlation_data=item.correlation_data)

    async def _apply(self, action: CommandAction, session: Session) -> None:
        """The lane side of an action already recorded (see the module docstring)."""
        if isinstance(action, CloseEtc):
            self.lane.post(DeviceStatus(Device.OPERATOR, False, f"{CLOSED_BY_CENTRE}: {action.reason}"))
        elif isinstance(action, OpenEtc):
            self.lane.post(DeviceStatus(Device.OPERATOR, True, action.reason or "opened by the centre"))
        elif isinstance(action, ShowMessage):
            self.lane.post(OperatorMessage(action.line1, action.line2, float(action.duration_s)))
        elif isinstance(action, RaiseBarrier):
            self.lane.post(OperatorRaise(action.operator, action.reason))
        elif isinstance(action, ResendFrom):
            self.uplink.resend_from(action.seq)
        elif isinstance(action, PublishHealth):
            await self.uplink.publish_health(session)
        # FetchList: asked before recording (its answer is the result's detail).


__all__ = ["COMMAND_KIND", "REMOTE_RAISE_KIND", "CommandExecutor", "CommandSettings", "LaneControl",
           "UplinkControl", "cannot", "describe"]
