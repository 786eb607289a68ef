"""Runs the lane state machine against real (or emulated) devices and the journal.

The machine decides; this module carries out its actions and feeds it its events:

* **One ordered stream.** RSU frames, dropped frames, link up/down, input samples, timer
  ticks, device status and journal confirmations all go into one inbox and reach
  ``LaneMachine.handle`` one at a time, in the order they happened, from one task. Nothing
  re-enters the machine from inside an action.
* Frames to the RSU are written at once: the RSU gives up after ~1.1 s and laned's share
  of that must stay a few milliseconds. A frame that cannot be written becomes a
  :class:`SendFailed` event, never an exception that ends the lane.
* Journal work runs on the journal's writer thread (``laned.journal.JournalWriter``); its
  confirmation comes back through the inbox (``IntentRecorded`` → the machine sends C6).
  Only the C6 waits for a commit; refusals and events are grouped. A journal that fails
  makes the machine refuse, never send C6 blind.
* Display and IO commands go to one worker per device so a slow Modbus device never
  delays an RSU answer; barrier commands are never dropped or reordered, display contents
  are coalesced (only the latest matters). A device error becomes a ``DeviceStatus``
  event: the machine enters the degraded mode and leaves it when the device is back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime as dt
import logging
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar, runtime_checkable

from laned.drivers.errors import DeviceError
from laned.drivers.fee_display import DisplayContent, FeeDisplay
from laned.drivers.lane_io import LaneIO
from laned.lane.barrier import BarrierCommand
from laned.lane.machine import (
    Action, ChargeRecorded, ChargeRecordFailed, ClearAlarm, Device, DeviceStatus, Event, FrameIn, InputIn,
    IntentFailed, IntentRecorded, JournalCharged, JournalEvent, JournalIntent, JournalNotCharged, JournalRefusal,
    JournalResolved, JournalUnknown, LaneMachine, MoveBarrier, RaiseAlarm, Send, SendFailed, SetLight, Show, Tick,
)
from laned.journal.writer_health import storage_failure
from laned.masking import mask_card, mask_plate
from laned.observation import Observation
from laned.protocol import Message

log = logging.getLogger("laned.lane")

T = TypeVar("T")

TICK_S = 0.05
# Device health is looked at this often: an IO module lost is a closed lane within this
# (plus the driver's own detection), well inside the 1 s the operator expects.
DEVICE_POLL_S = 0.25
# After a write to a device failed, it is taken as back only when it answered this long
# after the failure: a relay that never reads back right is not retried at tick rate.
DEVICE_RETRY_S = 1.0
# Refusals and events kept in memory while the journal cannot write them (a full disk):
# about an hour of a busy lane's refusals; beyond it they are counted, not kept.
MAX_UNWRITTEN = 5000
MAX_RECORD_ATTEMPTS = 10
# While the journal cannot write, a probe write is tried this often: ETC reopens by itself
# once the disk takes writes again, even when no vehicle comes to try.
JOURNAL_PROBE_S = 1.0


class RsuPort(Protocol):
    def send_nowait(self, message: Message, reply_to: int | None = None) -> None: ...


class JournalPort(Protocol):
    """What the executor needs of the journal; ``laned.journal.MachineJournal`` is one."""

    def record_intent(self, record: dict[str, Any], now: dt.datetime) -> int: ...

    def complete(self, seq: int, result: dict[str, Any], now: dt.datetime, *, entry: bool) -> None: ...

    def mark_unknown(self, seq: int, reason: str, now: dt.datetime) -> None: ...

    def not_charged(self, seq: int, reason: str, now: dt.datetime) -> None: ...

    def record_refusal(self, record: dict[str, Any], now: dt.datetime) -> None: ...

    def record_event(self, kind: str, record: dict[str, Any], now: dt.datetime) -> None: ...


@runtime_checkable
class JournalSubmit(Protocol):
    """Runs journal work in order somewhere else and answers through a future
    (``laned.journal.JournalWriter``)."""

    def submit(self, op: Callable[[Any], T], *, group: bool = False) -> concurrent.futures.Future[T]: ...


class InlineJournal:
    """A :class:`JournalPort` run on the caller's thread: for tests and tools that have
    no writer thread. Every answer is a future that is already done."""

    def __init__(self, port: JournalPort) -> None:
        self.port = port

    def submit(self, op: Callable[[Any], T], *, group: bool = False) -> concurrent.futures.Future[T]:
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        try:
            fut.set_result(op(self.port))
        except Exception as err:  # the future carries it to whoever reads the answer
            fut.set_exception(err)
        return fut


@dataclass
class _Watched:
    """The executor's view of one device's availability (see DEVICE_RETRY_S)."""

    online: bool | None = None
    failed_at: float | None = None
    detail: str = ""


class LaneExecutor:
    def __init__(self, machine: LaneMachine, rsu: RsuPort, io: LaneIO | None, display: FeeDisplay | None,
                 journal: JournalPort | JournalSubmit, *, monotonic: Callable[[], float] = time.monotonic,
                 wall: Callable[[], dt.datetime] = dt.datetime.now,
                 observe: Callable[[Observation], None] | None = None,
                 on_alarm: Callable[[RaiseAlarm | ClearAlarm], None] | None = None,
                 vehicle_gone: Callable[[], None] | None = None) -> None:
        self.machine = machine
        self.rsu = rsu
        self.io = io
        self.display = display
        self.journal: JournalSubmit = journal if isinstance(journal, JournalSubmit) else InlineJournal(journal)
        self.monotonic = monotonic
        self.wall = wall
        self.observe = observe or (lambda o: None)
        self.on_alarm = on_alarm or (lambda a: None)
        # Told when a vehicle's transaction ends (the journal writer then runs what it held back).
        self.vehicle_gone = vehicle_gone or (lambda: None)
        # Observations are for the simulator's view; without a watcher they are not even
        # built, so the RSU answer path stays free of that work.
        self._observing = observe is not None
        self.counters: Counter[str] = Counter()
        self.inbox: asyncio.Queue[Event] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = threading.get_ident()
        self._io_queue: asyncio.Queue[Action] = asyncio.Queue()
        self._display_latest: DisplayContent | None = None
        self._display_event = asyncio.Event()
        self._watched = {Device.IO: _Watched(), Device.DISPLAY: _Watched(), Device.JOURNAL: _Watched()}
        self.alarms: list[tuple[float, str, str]] = []
        # Grouped journal records (refusals, events) that failed, to be written again.
        self._unwritten: list[tuple[str, Callable[[Any], None], int]] = []  # (what, op, next attempt)
        self.last_handled: float | None = None  # monotonic time of the last event handled
        self.health: Any = None  # the daemon's HealthMonitor, for laned status and tests
        self.running = False

    # -- feeding the machine -----------------------------------------------------------------
    def post(self, event: Event) -> None:
        """Queue ``event`` for the machine, from any thread."""
        if threading.get_ident() == self._loop_thread or self._loop is None:
            self.inbox.put_nowait(event)
        else:
            self._loop.call_soon_threadsafe(self.inbox.put_nowait, event)

    def handle(self, event: Event) -> None:
        """Handle ``event`` and then everything it queued (journal answers that are ready
        at once, device status): the synchronous entry point for tests and tools."""
        self._process(event)
        while not self.inbox.empty():
            self._process(self.inbox.get_nowait())

    def settle(self) -> None:
        """Look at every device and handle everything queued, now: at start-up, so the
        lane's first announcement (READY, STATUS) tells the state it is really in."""
        now = self.monotonic()
        self._execute(self.machine.outputs(), now)
        self.poll_devices(now)
        while not self.inbox.empty():
            self._process(self.inbox.get_nowait())

    def _process(self, event: Event) -> None:
        now = self.monotonic()
        self.last_handled = now
        busy = self.machine.tx is not None
        actions = self.machine.handle(event, now, self.wall())
        if actions:
            self._execute(actions, now)
        if busy and self.machine.tx is None:
            self.vehicle_gone()

    def _execute(self, actions: list[Action], now: float) -> None:
        for action in actions:
            if isinstance(action, Send):
                self._send(action, now)
            elif isinstance(action, JournalIntent):
                self._journal_intent(action)
            elif isinstance(action, (JournalCharged, JournalResolved)):
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
                self.on_alarm(action)
                self._observing and self.observe(Observation(now, "alarm", {"code": action.code, "detail": action.detail}))
            elif isinstance(action, ClearAlarm):
                log.info("lane alarm %s cleared%s", action.code, f": {action.detail}" if action.detail else "")
                self.on_alarm(action)

    def _send(self, action: Send, now: float) -> None:
        try:
            self.rsu.send_nowait(action.message, action.reply_to)
        except DeviceError as err:
            self.counters["send_failed"] += 1
            log.error("%s: %s could not be sent (%s); the transaction it belongs to is ended safely",
                      err.device, action.message.type_name, err.detail or err)
            self.post(SendFailed(action.message.type_name, str(err)))
            return
        self._observing and self.observe(Observation(now, "sent", {"type": action.message.type_name,
                                                                   "obu_id": getattr(action.message, "obu_id", b"").hex()}))

    # -- the journal, off the loop -------------------------------------------------------------
    def _answer(self, fut: concurrent.futures.Future[T], done: Callable[[concurrent.futures.Future[T]], Event | None]) -> None:
        """When ``fut`` is done, put what ``done`` makes of it into the inbox."""
        def callback(f: concurrent.futures.Future[T]) -> None:
            event = done(f)
            if event is not None:
                self.post(event)
        fut.add_done_callback(callback)

    def _journal_intent(self, a: JournalIntent) -> None:
        record, wall = a.record, self.wall()

        def done(f: concurrent.futures.Future[int]) -> Event:
            err = f.exception()
            if err is None:
                self._journal_ok()
                return IntentRecorded(a.tx_id, f.result())
            log.error("journal: intent for OBU %s could not be written (%s); refusing the vehicle, no charge",
                      record.get("obu_id", b"").hex(), err)
            self._journal_failed(err)
            return IntentFailed(a.tx_id, str(err))

        self._answer(self.journal.submit(lambda j: j.record_intent(record, wall)), done)

    def _journal_charged(self, a: JournalCharged | JournalResolved) -> None:
        wall = self.wall()
        op: Callable[[Any], None]
        if isinstance(a, JournalResolved):
            op = lambda j: j.resolve(a.seq, a.result, wall)  # noqa: E731
        else:
            op = lambda j: j.complete(a.seq, a.result, wall, entry=a.entry)  # noqa: E731

        def done(f: concurrent.futures.Future[None]) -> Event:
            err = f.exception()
            if err is None:
                self._journal_ok()
                return ChargeRecorded(a.tx_id)
            log.error("journal: charge seq %d could not be completed (%s); barrier kept down, alarm raised",
                      a.seq, err)
            self._journal_failed(err)
            return ChargeRecordFailed(a.tx_id, str(err))

        self._answer(self.journal.submit(op), done)

    def _journal_other(self, a: JournalUnknown | JournalNotCharged | JournalRefusal | JournalEvent) -> None:
        now = self.wall()
        op: Callable[[Any], None]
        if isinstance(a, JournalNotCharged):
            op = lambda j: j.not_charged(a.seq, a.reason, now)  # noqa: E731
        elif isinstance(a, JournalUnknown):
            op = lambda j: j.mark_unknown(a.seq, a.reason, now)  # noqa: E731
            self._observing and self.observe(Observation(self.monotonic(), "unknown", {"seq": a.seq, "reason": a.reason}))
        elif isinstance(a, JournalRefusal):
            rec = a.record
            op = lambda j: j.record_refusal(rec, now)  # noqa: E731
            log.info("refused OBU %s plate %s card %s: %s", rec["obu_id"].hex(), mask_plate(rec.get("plate") or ""),
                     mask_card((rec.get("card_network") or "") + (rec.get("card_number") or "")), rec["reason"])
            self._observing and self.observe(Observation(self.monotonic(), "refused", {"reason": rec["reason"],
                                                                   "obu_id": rec["obu_id"].hex()}))
        else:
            op = lambda j: j.record_event(a.kind, a.record, now)  # noqa: E731
            self._observing and self.observe(Observation(self.monotonic(), "event", {"kind": a.kind}))

        self._write_record(type(a).__name__, op, 1)

    def _write_record(self, what: str, op: Callable[[Any], None], attempt: int) -> None:
        """Write a refusal or an event (grouped); one that failed on the storage is kept
        and written again once the journal takes writes, in order and with its own time,
        so the journal's account of an outage is whole."""
        def done(f: concurrent.futures.Future[None]) -> None:
            err = f.exception()
            if err is None:
                self._journal_ok()
                return
            self.counters["journal_errors"] += 1
            if not storage_failure(err):  # the record itself is refused: writing it again cannot help
                log.error("journal: could not record %s (%s)", what, err)
                return
            if attempt >= MAX_RECORD_ATTEMPTS or len(self._unwritten) >= MAX_UNWRITTEN:
                self.counters["journal_records_dropped"] += 1
                log.error("journal: could not record %s (%s); given up after %d attempts", what, err, attempt)
            else:
                log.error("journal: could not record %s (%s); it is written again when the journal takes writes",
                          what, err)
                self._unwritten.append((what, op, attempt + 1))
            self._journal_failed(err)

        self._answer(self.journal.submit(op, group=True), done)

    def _journal_ok(self) -> None:
        w = self._watched[Device.JOURNAL]
        if w.online is False:
            w.online = True
            log.warning("journal: writable again; ETC reopens if nothing else keeps it closed")
            self.post(DeviceStatus(Device.JOURNAL, True))

    def write_unwritten(self) -> None:
        """Write again what failed while the journal could not write (the ticker calls
        this once a second while the journal is up: never from a write's own answer)."""
        again, self._unwritten = self._unwritten, []
        for what, op, attempt in again:
            self._write_record(what, op, attempt)

    def _journal_failed(self, err: BaseException) -> None:
        w = self._watched[Device.JOURNAL]
        if w.online is not False:
            w.online = False
            self.post(DeviceStatus(Device.JOURNAL, False, f"journal write failed: {err}"))

    # -- device workers ------------------------------------------------------------------------
    def _device_failed(self, device: Device, err: DeviceError) -> None:
        w = self._watched[device]
        w.failed_at = self.monotonic()
        if w.online is not False:
            w.online = False
            w.detail = str(err)
            self.post(DeviceStatus(device, False, str(err)))

    async def _io_worker(self) -> None:
        while True:
            action = await self._io_queue.get()
            if self.io is None:
                continue
            try:
                if isinstance(action, MoveBarrier):
                    if action.command is BarrierCommand.RAISE:
                        await self.io.raise_barrier()
                    elif not self.machine.may_lower(self.monotonic()):
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
                log.error("%s: %s failed (%s); ETC closes until the module answers, then the command is "
                          "given again; the interlock treats the lane as occupied until inputs are fresh",
                          err.device, type(action).__name__, err)
                self._device_failed(Device.IO, err)

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
                log.warning("%s: display update failed (%s); will rewrite when it answers", err.device, err)
                self._device_failed(Device.DISPLAY, err)

    def poll_devices(self, now: float) -> None:
        """Turn each device's health into DeviceStatus events, on change only."""
        for device, driver in ((Device.IO, self.io), (Device.DISPLAY, self.display)):
            if driver is None:
                continue
            h = driver.health()
            w = self._watched[device]
            online = h.online and (w.failed_at is None or now - w.failed_at >= DEVICE_RETRY_S)
            if online == w.online:
                continue
            first, w.online = w.online is None, online
            if online:
                w.failed_at = None
                if first:
                    continue  # the machine starts out taking every device as there
                log.warning("%s: answering again (%s)", h.device, h.detail)
            else:
                log.error("%s: offline (%s)", h.device, h.detail)
            w.detail = h.detail
            self.post(DeviceStatus(device, online, "" if online else f"{h.device}: {h.detail}"))

    def _probe_journal(self) -> None:
        def done(f: concurrent.futures.Future[None]) -> None:
            if f.exception() is None:
                self._journal_ok()

        self._answer(self.journal.submit(lambda j: j.journal.probe()), done)

    async def _ticker(self) -> None:
        # Freshness comes from each input's latest sample: the interlock judges the presence
        # and approach inputs by their age.
        interlock = self.machine.s.interlock
        presence = interlock.presence + interlock.approach
        next_poll = next_probe = 0.0
        while True:
            await asyncio.sleep(TICK_S)
            now = self.monotonic()
            # Drivers publish changes; freshness comes from their latest sample's time.
            if self.io is not None:
                for sig in presence:
                    smp = self.io.sample(sig)
                    if smp is not None:
                        self.post(InputIn(smp))
            if now >= next_poll:
                next_poll = now + DEVICE_POLL_S
                self.poll_devices(now)
            if now >= next_probe:
                next_probe = now + JOURNAL_PROBE_S
                if self._watched[Device.JOURNAL].online is False:
                    self._probe_journal()
                elif self._unwritten:
                    self.write_unwritten()
            self.post(Tick())

    async def _pump_samples(self, samples: AsyncIterator[Any]) -> None:
        async for s in samples:
            self.post(InputIn(s))

    async def _lane(self) -> None:
        while True:
            event = await self.inbox.get()
            if self._observing and isinstance(event, FrameIn):
                self.observe(Observation(self.monotonic(), "received", {
                    "type": event.message.type_name, "obu_id": getattr(event.message, "obu_id", b"").hex()}))
            self._process(event)

    async def run(self, samples: AsyncIterator[Any] | None = None) -> None:
        """Run until cancelled. The RSU link (or anything else) feeds ``post``; a worker
        that dies of anything but a device error ends this with its exception."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self.running = True
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._lane(), name="lane-machine")
                tg.create_task(self._io_worker(), name="lane-io-worker")
                tg.create_task(self._display_worker(), name="lane-display-worker")
                tg.create_task(self._ticker(), name="lane-ticker")
                if samples is not None:
                    tg.create_task(self._pump_samples(samples), name="lane-input-samples")
        finally:
            self.running = False
