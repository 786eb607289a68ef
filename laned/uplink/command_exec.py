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
   the IO module offline, no list downloads, no link to ask for a list over), a refusal
   ``not_possible`` says so and nothing is recorded. Otherwise **one journal transaction**
   holds the command's event row (kind ``command``, or ``remote_raise`` with the operator —
   it goes to the centre on ``tx`` like every row), the journal side of the action
   (``resend_from`` clears the acks from that seq) and the ledger entry with the result.
   Only once that has committed is the action applied to the lane and the result
   published. A journal that fails leaves neither row nor ledger entry, applies nothing
   and answers ``not_possible``.

   That transaction reads the clock again, as it runs: a command that expired while it
   waited for the journal (a queue of vehicles' writes, a stalled disk) is refused
   ``expired``. A ``resend_from`` past the journal's last seq is refused ``not_possible``.
   Neither is recorded, like every refusal.

Recording before applying is what makes it *at most once*: a crash after the commit and
before the lane acted loses that action (a remote raise, a message) rather than running it
twice on a redelivery. A **cancellation** does not: commands run in the uplink session's
task group, which cancels them when the link drops, and a journal write that was asked for
is committed whether its caller still waits or not (:mod:`laned.journal.writer`). So the
record and the lane side of the action are one unit: a cancellation that lands during the
write waits for its outcome and, if it committed, applies the action, then goes on. The
lane side is synchronous (posts to the lane machine, the outbox's rescan); what needs the
session (a health snapshot, a list request, the result itself) goes down with it.

``close_etc`` is the action that must survive a restart: the lane reads the last
``close_etc``/``open_etc`` from the ledger at start (:meth:`CommandExecutor.restore`), so a
lane an operator closed stays closed across a restart until ``open_etc``.

The results go out on ``cmd/result`` with the command's MQTT 5 correlation data copied
unchanged (the contract: absent if the command had none).
"""

from __future__ import annotations

import asyncio
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
    RefusalCode,
    Replay,
    ResendFrom,
    ShowMessage,
    Verified,
    verify,
)
from laned.uplink.contract import ContractError
from laned.uplink.link import Incoming, LinkDown, Session
from laned.uplink.messages import CommandName, CommandOutcome, CommandResult, ListKind, RefusalReason

if TYPE_CHECKING:
    from laned.config import UplinkSection

log = logging.getLogger("laned.uplink.commands")

# A command cancelled (the link dropped) while the journal records it waits this long for the
# write's outcome, so that a committed record is also carried out.
OUTCOME_WAIT_S = 10.0

REMOTE_RAISE_KIND = "remote_raise"  # the journal row of an operator's remote raise
COMMAND_KIND = "command"  # the journal row of every other executed command
ETC_COMMANDS = (CommandName.CLOSE_ETC.value, CommandName.OPEN_ETC.value)
CLOSED_BY_CENTRE = "closed by the centre"  # how a closure by command starts, in the lane state and the log


class UplinkControl(Protocol):
    """What commands ask of the uplink service (laned.uplink.service.UplinkService)."""

    def resend_from(self, seq: int) -> None: ...

    async def publish_health(self, session: Session) -> None: ...


class ListFetch(Protocol):
    """The list downloads' side of ``fetch_list`` (laned.uplink.list_service.ListService.fetch).

    ``commit`` is the command's journal transaction, given the result's text (what the
    downloads will do); it is awaited before the centre is asked, and nothing is asked if it
    returns False (nothing was recorded). :class:`~laned.uplink.link.LinkDown` when there is
    no link to ask over: nothing committed, nothing asked.
    """

    async def __call__(self, kind: ListKind, version: int, *, commit: Callable[[str], Awaitable[bool]]) -> str: ...


@dataclass(frozen=True, slots=True)
class LaneControl:
    """What commands may do to the lane, and what they need to know of it.

    ``post`` feeds the lane machine (the executor's inbox): every change goes through the
    machine, so its interlock, its display logic and its journal see it. ``fetch_list``
    asks the list downloads for a version (:class:`ListFetch`); None: this lane has no list
    downloads.
    """

    post: Callable[[Event], None]
    closed_by: Callable[[], Mapping[Device, str]]
    is_down: Callable[[Device], bool]
    has_display: bool
    has_io: bool
    fetch_list: ListFetch | None = None


@dataclass(frozen=True, slots=True)
class CommandSettings:
    lane_id: str
    keys: Mapping[str, Any]  # CentreKeys: key id -> Ed25519 public key
    clock_skew_s: float = DEFAULT_CLOCK_SKEW_S
    display_line_bytes: int = DISPLAY_LINE_BYTES


def _refused(verified: Verified, at: dt.datetime, detail: str) -> CommandResult:
    return CommandResult.refused(verified.request, RefusalReason.NOT_POSSIBLE, at, f"not_possible: {detail}")


def _expired(verified: Verified, at: dt.datetime) -> CommandResult:
    """A command valid when it came, expired by the time the journal could record it."""
    req = verified.request
    return CommandResult.refused(req, RefusalReason.EXPIRED, at, (
        f"{RefusalCode.EXPIRED}: expired at {req.expires_at.isoformat()} while it waited for the journal; the lane "
        f"clock says {at.isoformat()}; nothing was done"))


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
        fetch = self.lane.fetch_list
        if isinstance(action, FetchList) and fetch is not None:
            result = await self._fetch_list(verified, action, fetch, now)
        else:
            result = await self._record_and_apply(verified, now)
            if result.outcome is CommandOutcome.EXECUTED and isinstance(action, PublishHealth):
                await self.uplink.publish_health(session)
        if result.outcome is CommandOutcome.EXECUTED:
            req = verified.request
            log.warning("command %s (id %s, seq %d, key %s) executed: %s", req.command, req.command_id, req.seq,
                        req.key_id, result.detail)
        await session.publish(result, correlation_data=item.correlation_data)

    async def _record_and_apply(self, verified: Verified, now: dt.datetime, fetched: str = "") -> CommandResult:
        """The command's journal transaction, then the lane side of its action: one unit no
        cancellation splits (see the module docstring). The result to answer: executed (in
        the ledger, applied), or a refusal — logged here — with nothing recorded or applied."""
        action, req = verified.action, verified.request
        closed_by = dict(self.lane.closed_by())
        kind, detail, message = _journal_detail(verified)
        wall = self.wall

        def record(mj: Any) -> CommandResult:
            journal = mj.journal
            # Read now, as the command is recorded, not when it came: ahead of it in the
            # writer's queue there may have been minutes of work.
            at = wall()
            if at >= req.expires_at:
                return _expired(verified, at)
            if isinstance(action, ResendFrom) and action.seq > (last := journal.last_seq()):
                # Not recorded, like the other not_possible: nothing was done, and once the
                # journal has reached that seq the same command may be sent again.
                return _refused(verified, at, f"the journal ends at seq {last}: there is nothing from seq "
                                              f"{action.seq} on to send again")
            with journal.batch(f"executing command {req.command_id} ({req.command})"):
                row = journal.record_event(kind, at, reason=str(req.command), detail=detail, message=message)
                requeued = journal.outbox_resend_from(action.seq) if isinstance(action, ResendFrom) else 0
                result = verified.result(at, describe(action, row_seq=row.seq, requeued=requeued,
                                                      closed_by=closed_by, fetched=fetched))
                journal.record_command(req.command_id, req.seq, str(req.command), result.to_json(), at)
            return result

        written = self.writer.submit_async(record)
        interrupted: asyncio.CancelledError | None = None
        while not written.done():
            try:
                # Not awaited directly: that would cancel the future and drop the outcome of
                # a write the writer makes anyway.
                await asyncio.wait([written], timeout=None if interrupted is None else OUTCOME_WAIT_S)
            except asyncio.CancelledError as err:
                interrupted = err  # raised again below, once the write's outcome is known
                continue
            if interrupted is not None and not written.done():
                # A stalled disk must not hold the session's end (and with it the reconnect
                # that reports the stall) for as long as it stalls.
                log.error("command %s (id %s, seq %d): the link went down while the journal recorded it, and the "
                          "journal has not answered in %g s; if it records the command, the lane does not carry it "
                          "out (close_etc/open_etc are read from the ledger again at the next start)", req.command,
                          req.command_id, req.seq, OUTCOME_WAIT_S)
                raise interrupted
        try:
            result: CommandResult = written.result()
        except JournalError as err:
            # One transaction: neither the row nor the ledger entry is there, so the command
            # did not run and may be sent again.
            text = f"the journal could not record it ({err}); nothing was done, send it again"
            log.error("command %s (id %s, seq %d) not executed: %s", req.command, req.command_id, req.seq, text)
            if interrupted is not None:
                raise interrupted from None
            return _refused(verified, now, text)
        if result.outcome is CommandOutcome.EXECUTED:
            self._apply(action)
        else:
            log.warning("command %s (id %s, seq %d) refused, nothing recorded or applied: %s", req.command,
                        req.command_id, req.seq, result.detail)
        if interrupted is not None:
            log.warning("command %s (id %s, seq %d): the link went down while it was recorded; %s, and its "
                        "result is sent when the centre delivers it again", req.command, req.command_id, req.seq,
                        "it was carried out" if result.outcome is CommandOutcome.EXECUTED else "it was not executed")
            raise interrupted
        return result

    async def _fetch_list(self, verified: Verified, action: FetchList, fetch: ListFetch,
                          now: dt.datetime) -> CommandResult:
        """Recorded, then asked: the list downloads publish the request only once the
        command is in the ledger (:class:`ListFetch`)."""
        recorded: list[CommandResult] = []

        async def commit(text: str) -> bool:
            result = await self._record_and_apply(verified, now, fetched=text)
            recorded.append(result)
            return result.outcome is CommandOutcome.EXECUTED

        try:
            await fetch(action.kind, action.version, commit=commit)
        except LinkDown as err:
            if recorded:
                raise  # recorded, and the request could not go out: the session ends with it
            text = f"{err.reason}: nothing was requested or recorded, send it again"
            log.warning("command %s (id %s, seq %d) refused, nothing applied: %s", verified.request.command,
                        verified.command_id, verified.seq, text)
            return _refused(verified, now, text)
        if not recorded:  # a ListFetch that returned without committing: nothing was recorded
            return _refused(verified, now, "the list downloads did not take it; nothing was requested or recorded")
        return recorded[0]

    def _apply(self, action: CommandAction) -> None:
        """The lane side of an action just recorded. Synchronous, so that a cancellation
        cannot come between the record and it (see the module docstring); the session's
        part (publish_health, fetch_list's request) is done by the caller."""
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


__all__ = ["COMMAND_KIND", "REMOTE_RAISE_KIND", "CommandExecutor", "CommandSettings", "LaneControl",
           "ListFetch", "UplinkControl", "cannot", "describe"]
