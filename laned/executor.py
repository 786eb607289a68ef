"""Runs the lane state machine against real (or emulated) devices and the journal.

The machine decides; this module carries out its actions and feeds it its events:

* RSU frames, input samples and a 50 ms tick go into ``LaneMachine.handle`` one at a
  time, on the event loop, so the machine never sees two events at once.
* Frames to the RSU are written at once: the RSU gives up after ~1.1 s and laned's share
  of that must stay a few milliseconds.
* Journal actions are carried out synchronously, in order, and their confirmation is fed
  straight back (``IntentRecorded`` → the machine sends C6). A journal that fails makes
  the machine refuse, never send C6 blind.
* Display and IO commands go to one worker per device so a slow Modbus device never
  delays an RSU answer; barrier commands are never dropped or reordered, display contents
  are coalesced (only the latest matters).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Protocol

from laned.drivers.errors import DeviceError
from laned.drivers.fee_display import DisplayContent, FeeDisplay
from laned.drivers.lane_io import LaneIO
from laned.lane.barrier import BarrierCommand
from laned.lane.machine import (
    Action, ChargeRecorded, ChargeRecordFailed, Event, FrameIn, InputIn, IntentFailed, IntentRecorded,
    JournalCharged, JournalEvent, JournalIntent, JournalNotCharged, JournalRefusal, JournalUnknown, LaneMachine, LinkLost, MoveBarrier,
    RaiseAlarm, Send, SetLight, Show, Tick,
)
from laned.masking import mask_card, mask_plate
from laned.protocol import Message

log = logging.getLogger("laned.lane")

TICK_S = 0.05


class RsuPort(Protocol):
    def send_nowait(self, message: Message, reply_to: int | None = None) -> None: ...


class JournalPort(Protocol):
    """What the executor needs of the journal; laned.journal adapts to it."""

    def record_intent(self, record: dict[str, Any], now: dt.datetime) -> int: ...

    def complete(self, seq: int, result: dict[str, Any], now: dt.datetime, *, entry: bool) -> None: ...

    def mark_unknown(self, seq: int, reason: str, now: dt.datetime) -> None: ...

    def not_charged(self, seq: int, reason: str, now: dt.datetime) -> None: ...

    def record_refusal(self, record: dict[str, Any], now: dt.datetime) -> None: ...

    def record_event(self, kind: str, record: dict[str, Any], now: dt.datetime) -> None: ...


@dataclass
class Observation:
    """What happened, for the simulator's live view and summary and for `laned status`."""

    at: float
    kind: str
    detail: dict[str, Any] = field(default_factory=dict)


class LaneExecutor:
    def __init__(self, machine: LaneMachine, rsu: RsuPort, io: LaneIO | None, display: FeeDisplay | None,
                 journal: JournalPort, *, monotonic: Callable[[], float] = time.monotonic,
                 wall: Callable[[], dt.datetime] = dt.datetime.now,
                 observe: Callable[[Observation], None] | None = None) -> None:
        self.machine = machine
        self.rsu = rsu
        self.io = io
        self.display = display
        self.journal = journal
        self.monotonic = monotonic
        self.wall = wall
        self.observe = observe or (lambda o: None)
        # Observations are for the simulator's view; without a watcher they are not even
        # built, so the RSU answer path stays free of that work.
        self._observing = observe is not None
        self.counters: Counter[str] = Counter()
        self._io_queue: asyncio.Queue[Action] = asyncio.Queue()
        self._display_latest: DisplayContent | None = None
        self._display_event = asyncio.Event()
        self.alarms: list[tuple[float, str, str]] = []

    # -- feeding the machine -----------------------------------------------------------------
    def handle(self, event: Event) -> None:
        now = self.monotonic()
        actions = self.machine.handle(event, now, self.wall())
        if actions:
            self._execute(actions, now)

    def _execute(self, actions: list[Action], now: float) -> None:
        for action in actions:
            if isinstance(action, Send):
                self.rsu.send_nowait(action.message, action.reply_to)
                self._observing and self.observe(Observation(now, "sent", {"type": action.message.type_name,
                                                       "obu_id": getattr(action.message, "obu_id", b"").hex()}))
            elif isinstance(action, JournalIntent):
                self._journal_intent(action)
            elif isinstance(action, JournalCharged):
                self._journal_charged(action)
            elif isinstance(action, (JournalUnknown, JournalNotCharged, JournalRefusal, JournalEvent)):
                self._journal_other(action)
            elif isinstance(action, Show):
                self._display_latest = action.content
                self._display_event.set()
                self._observing and self.observe(Observation(now, "display", {"line1": action.content.line1,
                                                          "line2": action.content.line2}))
            elif isinstance(action, (MoveBarrier, SetLight)):
                self._io_queue.put_nowait(action)
                what = action.command if isinstance(action, MoveBarrier) else action.light
                self._observing and self.observe(Observation(now, "barrier" if isinstance(action, MoveBarrier) else "light",
                                         {"command": str(what)}))
            elif isinstance(action, RaiseAlarm):
                self.alarms.append((now, action.code, action.detail))
                log.warning("lane alarm %s: %s", action.code, action.detail)
                self._observing and self.observe(Observation(now, "alarm", {"code": action.code, "detail": action.detail}))

    def _journal_intent(self, a: JournalIntent) -> None:
        try:
            seq = self.journal.record_intent(a.record, self.wall())
        except Exception as err:  # any failure: the C6 must not go out
            log.error("journal: intent for OBU %s could not be written (%s); refusing the vehicle, no charge",
                      a.record.get("obu_id", b"").hex(), err)
            self.handle(IntentFailed(a.tx_id, str(err)))
            return
        self.handle(IntentRecorded(a.tx_id, seq))

    def _journal_charged(self, a: JournalCharged) -> None:
        try:
            self.journal.complete(a.seq, a.result, self.wall(), entry=a.entry)
        except Exception as err:
            log.error("journal: charge seq %d could not be completed (%s); barrier kept down, alarm raised",
                      a.seq, err)
            self.handle(ChargeRecordFailed(a.tx_id, str(err)))
            return
        self.handle(ChargeRecorded(a.tx_id))

    def _journal_other(self, a: JournalUnknown | JournalNotCharged | JournalRefusal | JournalEvent) -> None:
        now = self.wall()
        try:
            if isinstance(a, JournalNotCharged):
                self.journal.not_charged(a.seq, a.reason, now)
            elif isinstance(a, JournalUnknown):
                self.journal.mark_unknown(a.seq, a.reason, now)
                self._observing and self.observe(Observation(self.monotonic(), "unknown", {"seq": a.seq, "reason": a.reason}))
            elif isinstance(a, JournalRefusal):
                self.journal.record_refusal(a.record, now)
                rec = a.record
                log.info("refused OBU %s plate %s card %s: %s", rec["obu_id"].hex(), mask_plate(rec.get("plate") or ""),
                         mask_card((rec.get("card_network") or "") + (rec.get("card_number") or "")), rec["reason"])
                self._observing and self.observe(Observation(self.monotonic(), "refused", {"reason": rec["reason"],
                                                                       "obu_id": rec["obu_id"].hex()}))
            else:
                self.journal.record_event(a.kind, a.record, now)
                self._observing and self.observe(Observation(self.monotonic(), "event", {"kind": a.kind}))
        except Exception as err:
            self.counters["journal_errors"] += 1
            log.error("journal: could not record %s (%s)", type(a).__name__, err)

    # -- device workers ------------------------------------------------------------------------
    async def _io_worker(self) -> None:
        while True:
            action = await self._io_queue.get()
            if self.io is None:
                continue
            try:
                if isinstance(action, MoveBarrier):
                    if action.command is BarrierCommand.RAISE:
                        await self.io.raise_barrier()
                    elif self.machine.barrier.occupied(self.monotonic()):
                        # The lower was decided on fresh clear inputs, but the IO queue
                        # delayed it and the lane is no longer clear: do not start moving
                        # down; the interlock's next tick reverses to raise.
                        self.counters["lower_withdrawn"] += 1
                        log.warning("%s: lower withdrawn, the safety loop is no longer clear", self.io.name)
                    else:
                        await self.io.lower_barrier()
                elif isinstance(action, SetLight):
                    await self.io.set_light(action.light)
            except DeviceError as err:
                self.counters["io_errors"] += 1
                log.error("%s: %s failed (%s); the interlock treats the lane as occupied until inputs are fresh",
                          err.device, type(action).__name__, err)

    async def _display_worker(self) -> None:
        while True:
            await self._display_event.wait()
            self._display_event.clear()
            content = self._display_latest
            if self.display is None or content is None:
                continue
            try:
                await self.display.show(content)
            except DeviceError as err:
                self.counters["display_errors"] += 1
                log.warning("%s: display update failed (%s); will rewrite on the next change", err.device, err)

    async def _ticker(self) -> None:
        presence = self.machine.s.interlock.presence
        while True:
            await asyncio.sleep(TICK_S)
            # Drivers publish changes; freshness comes from their latest sample's time.
            if self.io is not None:
                for sig in presence:
                    smp = self.io.sample(sig)
                    if smp is not None:
                        self.handle(InputIn(smp))
            self.handle(Tick())

    async def _pump_frames(self, frames: AsyncIterator[Any]) -> None:
        async for f in frames:
            self._observing and self.observe(Observation(self.monotonic(), "received", {"type": f.message.type_name,
                                                                    "obu_id": getattr(f.message, "obu_id", b"").hex()}))
            self.handle(FrameIn(f.message, f.rsctl))

    async def _pump_samples(self, samples: AsyncIterator[Any]) -> None:
        async for s in samples:
            self.handle(InputIn(s))

    def link_lost(self) -> None:
        self.handle(LinkLost())

    async def run(self, frames: AsyncIterator[Any], samples: AsyncIterator[Any] | None) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._io_worker())
            tg.create_task(self._display_worker())
            tg.create_task(self._ticker())
            tg.create_task(self._pump_frames(frames))
            if samples is not None:
                tg.create_task(self._pump_samples(samples))
