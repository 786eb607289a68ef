"""The lane state machine: ETC transactions, passage accounting and the barrier, sans-IO.

The transaction record and its admission rules are in ``transaction.py``, the settings
in ``settings.py``, events and actions in ``events.py``, degraded modes in ``modes.py``.

Events go in (:class:`FrameIn`, :class:`InputIn`, :class:`Tick`, journal confirmations),
actions come out (:class:`Send`, :class:`Show`, :class:`MoveBarrier`, journal records…),
and time is passed in with every call: ``handle(event, now, wall)`` where ``now`` is the
monotonic clock (timers) and ``wall`` the local civil time (contract dates, C6 purchase
time). Nothing here reads a clock or touches a port.

The two rules, and how this module keeps them:

* **The barrier never moves down onto a vehicle.** Only :class:`BarrierInterlock` emits a
  lower command; the machine merely *wants* the barrier down once every paid vehicle has
  left the safety loop.
* **No charged transaction is lost or charged twice.** C6 goes out only after the
  executor confirms the intent is durable (:class:`IntentRecorded`); the barrier rises only
  after the B5 result is durable (:class:`ChargeRecorded`); an OBU or card that completed
  a charge within the re-detection window is let through on its record, never charged
  again; after a B5 error or a lost B5 the TAC is re-fetched (C8) where the profile can,
  otherwise the outcome is recorded as unknown for reconciliation.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import replace
from collections import Counter
from typing import Any

from laned.lane.barrier import BarrierInterlock, BarrierPosition
from laned.lane.dialect import Dialect, ObuView, VehicleView
from laned.lane.display import DisplayContent
from laned.lane.events import (
    Action, ChargeRecorded, ChargeRecordFailed, ClearAlarm, Device, DeviceStatus, Event, FrameIn, FrameLost, InputIn,
    IntentFailed, IntentRecorded, JournalCharged, JournalEvent, JournalIntent, JournalNotCharged, JournalRefusal,
    JournalResolved, JournalUnknown, LinkLost, LinkUp, MoveBarrier, RaiseAlarm, Send, SendFailed, SetLight, Show,
    Tick,
)
from laned.lane.modes import Availability
from laned.lane.outcomes import IDLE, OUTCOMES, Reason
from laned.lane.paid import Paid, PaidRecords
from laned.lane.passages import Passages, Unpaid
from laned.lane.settings import (
    Direction, EmptyStatusList, FeeLookup, LaneSettings, MissingEntryPolicy, StatusLookup,
)
from laned.lane.signals import InputSample, Light, Signal
from laned.masking import mask_card, mask_plate
from laned.lane.transaction import (
    LaneStateError, Stage, Tx, check_card, check_obu, price, record, seq_of, station_record,
)
from laned.protocol import Message, ProtocolError
from laned.protocol.profiles.common import STOP_RESEND
from laned.protocol.records import CardIssueFile, is_known_vehicle_class

# What other modules import from here: the machine's interface in one place.
__all__ = [
    "Action", "ChargeRecorded", "ChargeRecordFailed", "ClearAlarm", "Device", "DeviceStatus", "Direction",
    "EmptyStatusList", "Event", "FeeLookup", "FrameIn", "FrameLost", "InputIn", "IntentFailed", "IntentRecorded",
    "JournalCharged", "JournalEvent", "JournalIntent", "JournalNotCharged", "JournalRefusal", "JournalResolved",
    "JournalUnknown",
    "LaneMachine", "LaneSettings", "LaneStateError", "LinkLost", "LinkUp", "MissingEntryPolicy", "MoveBarrier",
    "Paid", "RaiseAlarm", "Send", "SendFailed", "SetLight", "Show", "Stage", "StatusLookup", "Tick", "Tx",
]

# B5 error codes (RSU_PROTOCOL.md, profile network2019) raised before the card was asked
# to debit: the vehicle certainly did not pay. Any other error may follow a debit.
NOT_DEBITED_CODES = frozenset({0x10, 0x11, 0x13, 0x17})

# After an IO outage, a vehicle let through before or during it may already have crossed
# the loop unseen: it holds the arm open this long more at most (unless it is seen on the
# loop), not the whole passage timeout. A vehicle still waiting is re-read by the RSU and
# let out on its record.
OUTAGE_PASSAGE_GRACE_S = 8.0

# A vehicle on the approach loop this long before an OBU was first read is not that OBU's
# vehicle; a raise for the OBU waits for it to turn away, this long at most.
WAITING_BEFORE_READ_S = 1.0
RAISE_HOLD_S = 4.0

# After a damaged frame during a transaction: wait this long for a good one, then ask the
# RSU to resend (C2 stop type 2), at most this many times per transaction.
RESEND_GRACE_S = 0.08
MAX_RESENDS = 2


class LaneMachine:
    def __init__(self, settings: LaneSettings, dialect: Dialect, *, fees: FeeLookup | None = None,
                 status: StatusLookup | None = None, recent: list[Paid] | None = None) -> None:
        self.s = settings
        self.d = dialect
        self.fees = fees
        self.status = status or EmptyStatusList()
        self.barrier = BarrierInterlock(settings.interlock)
        self.tx: Tx | None = None
        # Charges whose B5 success is being journalled while the RSU already moved on.
        self._recording: dict[str, Tx] = {}
        self.paid = PaidRecords(recent or ())
        # Payments not used yet, and the vehicles between the approach loop and the arm.
        self.passages = Passages(approach=bool(settings.interlock.approach))
        self.want_down = True
        self.safety_occupied: bool | None = None
        # A raise held back for a vehicle standing at the stop line that is not the one that
        # paid: (the OBU's first read, until when at most).
        self._raise_held: tuple[float, float] | None = None
        self.counters: Counter[str] = Counter()
        self.display = DisplayContent(line1=IDLE.line1, line2=IDLE.line2)
        self.light = Light.RED
        self.c6_sent: list[tuple[bytes, float, str]] = []  # (obu_id, now, tx_id), for invariant checks
        self.modes = Availability(settings.display_policy)
        self.rsu_initialised = False  # a B0 with status 0 since the link came up
        # Charges the card made whose B5 result the journal could not keep yet.
        self._unrecorded: dict[str, Tx] = {}
        # The interlock starts latched ("no input sampled yet"); that one is no news.
        self._fault_reported: str | None = self.barrier.fault

    def may_lower(self, now: float) -> bool:
        """Whether a lower decided earlier may still start now: every presence input is
        fresh and clear, and nothing is on the approach (the IO worker asks this as the
        command reaches the module)."""
        return not self.barrier.occupied(now) and self.barrier.approach_doubt(now) is None

    @property
    def credits(self) -> int:
        """Vehicles allowed through and not yet past the safety loop."""
        return self.passages.outstanding

    @property
    def unpaid_on_loop(self) -> bool:
        """A follow-car is at the arm: the arm stays up for it."""
        return self.passages.unpaid_at_arm

    # -- entry point -----------------------------------------------------------------------
    def handle(self, event: Event, now: float, wall: dt.datetime) -> list[Action]:
        out: list[Action] = []
        if isinstance(event, FrameIn):
            self._frame(event, now, wall, out)
        elif isinstance(event, InputIn):
            self._input(event.sample, now, out)
        elif isinstance(event, IntentRecorded):
            self._intent_recorded(event, now, wall, out)
        elif isinstance(event, IntentFailed):
            self._intent_failed(event, now, out)
        elif isinstance(event, ChargeRecorded):
            self._charge_recorded(event, now, out)
        elif isinstance(event, ChargeRecordFailed):
            self._charge_record_failed(event, now, out)
        elif isinstance(event, LinkLost):
            self._link_lost(now, out)
            self.rsu_initialised = False
            self._device(DeviceStatus(Device.RSU, False, event.reason or "link lost"), now, out)
        elif isinstance(event, FrameLost):
            self._frame_lost(now)
        elif isinstance(event, LinkUp):
            out.append(Send(self.d.init(wall, exit_lane=self.s.direction is Direction.EXIT,
                                        tx_power=self.s.tx_power, channel=self.s.pll_channel)))
            self.rsu_initialised = False
            self._device(DeviceStatus(Device.RSU, True), now, out)
        elif isinstance(event, DeviceStatus):
            self._device(event, now, out)
        elif isinstance(event, SendFailed):
            self._send_failed(event, now, out)
        self._timers(now, out)
        self._barrier(now, out)
        return out

    # -- RSU frames ------------------------------------------------------------------------
    def _frame(self, ev: FrameIn, now: float, wall: dt.datetime, out: list[Action]) -> None:
        msg = ev.message
        kind = self.d.kind(msg)
        if self.tx is not None and getattr(msg, "obu_id", None) == self.tx.obu.obu_id:
            self.tx.resend_due = None  # what was damaged was not this transaction's frame
        if kind == "B2":
            if self.d.is_heartbeat(msg):
                self.counters["heartbeat"] += 1
                return
            self._b2(self.d.obu(msg), ev.rsctl, now, wall, out)
        elif kind == "B3":
            self._b3(self.d.vehicle(msg), ev.rsctl, now, out)
        elif kind == "B4":
            self._b4(msg, ev.rsctl, now, wall, out)
        elif kind == "B5":
            self._b5(msg, ev.rsctl, now, out)
        elif kind == "B0":
            # RSU_PROTOCOL.md, "The transaction": after B0 the lane's C1 starts the search.
            status = getattr(msg, "rsu_status", 0)
            if status == 0:
                self.counters["rsu_ready"] += 1
                self.rsu_initialised = True
                out.append(Send(self.d.continue_(bytes(4)), ev.rsctl))
            else:
                self.counters["rsu_fault"] += 1
                out.append(RaiseAlarm("rsu_fault", f"RSU status {status:02x}: "
                                      f"{self.d.profile.error_meaning(0xB0, status)}"))
        else:
            self.counters["frame_ignored"] += 1

    def _b2(self, obu: ObuView, rsctl: int | None, now: float, wall: dt.datetime, out: list[Action]) -> None:
        if self.tx is not None:
            if self.tx.obu.obu_id == obu.obu_id and self.tx.stage is Stage.OBU:
                out.append(Send(self.d.continue_(obu.obu_id), rsctl))  # the RSU repeated B2: same answer
                return
            self._abandon(now, out, "a new OBU was reported")
        if obu.error_code != 0:
            self.counters["b2_error"] += 1
            out.append(Send(self.d.stop(obu.obu_id), rsctl))
            return
        tx = Tx(tx_id=str(uuid.uuid4()), obu=obu, started=now)
        if self._being_recorded(obu.obu_id, None, None):
            self.counters["seen_while_recording"] += 1
            out.append(Send(self.d.stop(obu.obu_id), rsctl))
            return
        if self._paid_recently(obu.obu_id, None, now, None):
            self._pass_on_record(tx, rsctl, now, out)
            return
        reason = Reason.ETC_CLOSED if self.modes.closed else check_obu(obu, wall.date(), self.s, self.d.profile, self.status)
        if reason is not None:
            self._refuse(tx, reason, rsctl, now, out)
            return
        self.tx = tx
        out.append(Send(self.d.continue_(obu.obu_id), rsctl))

    def _current(self, obu_id: bytes, stage: Stage, rsctl: int | None, out: list[Action]) -> Tx | None:
        """The transaction a B3/B4 belongs to, or None after answering C2 to a stray frame."""
        tx = self.tx
        if tx is None or tx.obu.obu_id != obu_id:
            self.counters["frame_out_of_sequence"] += 1
            if tx is None or tx.stage not in (Stage.CHARGING, Stage.REFETCHING, Stage.RECORDING, Stage.INTENT):
                out.append(Send(self.d.stop(obu_id), rsctl))
            return None
        if tx.stage is not stage:
            self.counters["frame_repeated"] += 1
            return None
        return tx

    def _b3(self, veh: VehicleView, rsctl: int | None, now: float, out: list[Action]) -> None:
        tx = self.tx
        if tx is not None and tx.obu.obu_id == veh.obu_id and tx.stage is Stage.VEHICLE:
            out.append(Send(self.d.continue_(veh.obu_id), rsctl))  # repeated B3: same answer
            return
        tx = self._current(veh.obu_id, Stage.OBU, rsctl, out)
        if tx is None:
            return
        tx.vehicle = veh
        if veh.error_code != 0:
            self._refuse(tx, Reason.VEHICLE_READ_FAILED, rsctl, now, out)
            return
        if veh.vehicle_class is None or not is_known_vehicle_class(veh.vehicle_class):
            self._refuse(tx, Reason.CLASS_INVALID, rsctl, now, out)
            return
        tx.stage = Stage.VEHICLE
        out.append(Send(self.d.continue_(veh.obu_id), rsctl))

    def _b4(self, msg: Message, rsctl: int | None, now: float, wall: dt.datetime, out: list[Action]) -> None:
        card = self.d.card(msg)
        tx = self._current(card.obu_id, Stage.VEHICLE, rsctl, out)
        if tx is None:
            return
        tx.card = card
        if card.error_code != 0 or card.issuer_info is None:
            self._refuse(tx, Reason.CARD_READ_FAILED, rsctl, now, out)
            return
        try:
            tx.card_file = CardIssueFile.decode(card.issuer_info)
        except ProtocolError:
            self._refuse(tx, Reason.CARD_ERROR, rsctl, now, out)
            return
        cf = tx.card_file
        plate = _plate_of(tx)
        if self._being_recorded(tx.obu.obu_id, cf.card_key, plate):
            self.counters["seen_while_recording"] += 1
            out.append(Send(self.d.stop(tx.obu.obu_id), rsctl))
            self.tx = None
            return
        if self._paid_recently(tx.obu.obu_id, cf.card_key, now, plate):
            self._pass_on_record(tx, rsctl, now, out)
            return
        self._card_seen_elsewhere(tx, cf.card_key, plate, out)
        # A device lost since the B2 (IO module, journal, fee table): no charge that the
        # lane could not finish.
        reason = Reason.ETC_CLOSED if self.modes.closed else check_card(tx, cf, wall.date(), self.s, self.status)
        if reason is None and self.s.direction is Direction.EXIT:
            reason = price(tx, card, self.s, self.fees, self.counters)
        if reason is not None:
            self._refuse(tx, reason, rsctl, now, out)
            return
        tx.stage = Stage.INTENT
        tx.b4_rsctl = rsctl
        tx.purchase_time = wall.replace(microsecond=0, tzinfo=None)
        out.append(JournalIntent(tx.tx_id, self._record(tx, "intent")))

    def _intent_recorded(self, ev: IntentRecorded, now: float, wall: dt.datetime, out: list[Action]) -> None:
        tx = self.tx
        if tx is None or tx.tx_id != ev.tx_id or tx.stage is not Stage.INTENT:
            # Its transaction ended (link lost, a new OBU) while the intent was being
            # written. C6 goes out only from here, so this one certainly never did.
            self.counters["late_intent"] += 1
            out.append(JournalNotCharged(ev.tx_id, ev.seq, "the transaction ended before its C6 was sent"))
            return
        tx.seq = ev.seq
        if self.modes.closed:
            # Lost a device while the intent was being written: no C6 went out, so the
            # intent certainly ends as not charged.
            out.append(JournalNotCharged(tx.tx_id, ev.seq, f"ETC closed before the charge: {self.modes.describe()}"))
            self._refuse(tx, Reason.ETC_CLOSED, tx.b4_rsctl, now, out, journal=False)
            return
        tx.stage = Stage.CHARGING
        tx.deadline = now + self.s.b5_timeout
        entry_lane = self.s.direction is Direction.ENTRY
        if tx.purchase_time is None:  # set with the intent; a C6 must carry the time the intent says
            tx.purchase_time = wall.replace(microsecond=0, tzinfo=None)
        out.append(Send(self.d.charge(tx.obu.obu_id, 0 if entry_lane else tx.fee, tx.purchase_time,
                                      station_record(tx, self.s), entry_lane=entry_lane), tx.b4_rsctl))
        self.c6_sent.append((tx.obu.obu_id, now, tx.tx_id))

    def _intent_failed(self, ev: IntentFailed, now: float, out: list[Action]) -> None:
        tx = self.tx
        if tx is None or tx.tx_id != ev.tx_id:
            return
        out.append(RaiseAlarm("journal_failed", f"intent could not be written: {ev.error}"))
        self._refuse(tx, Reason.JOURNAL_FAILED, tx.b4_rsctl, now, out, journal=False)

    def _b5(self, msg: Message, rsctl: int | None, now: float, out: list[Action]) -> None:
        res = self.d.result(msg)
        tx = self.tx
        if tx is None or tx.obu.obu_id != res.obu_id or tx.stage not in (Stage.CHARGING, Stage.REFETCHING):
            self.counters["b5_unexpected"] += 1
            if tx is None or tx.stage not in (Stage.RECORDING,):
                out.append(Send(self.d.stop(res.obu_id), rsctl))
            return
        seq = seq_of(tx)
        if tx.recovering:
            self._recovered(tx, res, seq, rsctl, out)
            return
        if res.error_code == 0:
            self._record_b5(tx, res, rsctl, out)
            return
        self.counters[f"b5_error_{res.error_code:02x}"] += 1
        if res.error_code in NOT_DEBITED_CODES and tx.stage is Stage.CHARGING:
            out.append(JournalNotCharged(tx.tx_id, seq, f"not debited: B5 error {res.error_code:02x}"))
            self._refuse(tx, Reason.CHARGE_FAILED, rsctl, now, out, journal=False)
            return
        if self._refetch(tx, now, out):
            return
        out.append(Send(self.d.stop(res.obu_id), rsctl))
        self._unknown(tx, f"B5 error {res.error_code:02x}", now, out)

    def _refetch(self, tx: Tx, now: float, out: list[Action]) -> bool:
        if tx.refetches >= self.s.refetch_attempts:
            return False
        c8 = self.d.refetch_tac(tx.obu.obu_id)
        if c8 is None:
            return False
        tx.refetches += 1
        tx.stage = Stage.REFETCHING
        tx.deadline = now + self.s.b5_timeout
        self.counters["tac_refetch"] += 1
        out.append(Send(c8))
        return True

    def _take_recording(self, tx_id: str) -> Tx | None:
        tx = self.tx
        if tx is not None and tx.tx_id == tx_id and tx.stage is Stage.RECORDING:
            self.tx = None
            return tx
        return self._recording.pop(tx_id, None)

    def _charge_recorded(self, ev: ChargeRecorded, now: float, out: list[Action]) -> None:
        if self._unrecorded.pop(ev.tx_id, None) is not None:
            self.counters["charge_recorded_late"] += 1  # its vehicle already left on its record
            return
        tx = self._take_recording(ev.tx_id)
        if tx is None:
            return
        entry = self.s.direction is Direction.ENTRY
        reason = Reason.ENTRY_WRITTEN if entry else Reason.CHARGED
        if tx.recovering:  # paid before the crash; the re-fetched TAC proved it
            self.counters["recovered_charged"] += 1
            self.paid.add(replace(self._paid_record(tx), at=now))
            self._let_through(tx, Reason.PAID_ON_RECORD, now, out, balance=tx.balance_after)
            return
        self.paid.add(replace(self._paid_record(tx), at=now))
        self._let_through(tx, reason, now, out, fee=None if entry else tx.fee, balance=tx.balance_after)

    def _charge_record_failed(self, ev: ChargeRecordFailed, now: float, out: list[Action]) -> None:
        tx = self._take_recording(ev.tx_id)
        if tx is None:
            return
        # The card paid but the journal cannot say so: keep the lane closed for the operator,
        # and write the result again as soon as the journal takes writes.
        out.append(RaiseAlarm("journal_failed", f"charge seq {tx.seq} could not be completed: {ev.error}; "
                              "it is written again when the journal takes writes"))
        self._unrecorded[tx.tx_id] = tx
        # It paid: never charge it again inside the window, even though the record failed.
        self.paid.add(replace(self._paid_record(tx), at=now))
        self._show(Reason.JOURNAL_FAILED, tx, out)
        self.counters[Reason.JOURNAL_FAILED] += 1

    def _link_lost(self, now: float, out: list[Action]) -> None:
        if self.tx is not None:
            self._abandon(now, out, "the RSU link was lost")

    def _send_failed(self, ev: SendFailed, now: float, out: list[Action]) -> None:
        self.counters["send_failed"] += 1
        out.append(RaiseAlarm("rsu_send_failed", f"{ev.type_name} not sent: {ev.error}"))
        if self.tx is not None:
            # A C6 that may or may not have left: _abandon records it as unknown, never
            # as not charged, so the vehicle is neither charged twice nor waved through.
            self._abandon(now, out, f"{ev.type_name} could not be sent: {ev.error}")

    # -- degraded modes ------------------------------------------------------------------------
    def _device(self, ev: DeviceStatus, now: float, out: list[Action]) -> None:
        was_down = self.modes.is_down(ev.device)
        changed = self.modes.update(ev.device, ev.online, ev.detail)
        if ev.device is Device.IO and was_down and ev.online:
            self._io_back(now, out)
        if ev.device is Device.JOURNAL and ev.online:
            for tx in self._unrecorded.values():
                out.append(self._journal_result(tx))
        if ev.device is Device.DISPLAY and was_down != (not ev.online):
            if ev.online:
                out.append(ClearAlarm("display_offline"))
                out.append(Show(self.display))  # what it missed while it was away
            else:
                out.append(RaiseAlarm("display_offline", ev.detail or "the fee display does not answer"))
        if not changed:
            return
        if self.modes.closed:
            why = self.modes.describe()
            self.counters["etc_closures"] += 1
            out.append(RaiseAlarm("etc_closed", why))
            out.append(JournalEvent("etc_closed", {"lane_id": self.s.lane_id, "reason": "etc_closed",
                                                   "detail": why}))
            if self.credits == 0 and not self.unpaid_on_loop:
                o = OUTCOMES[Reason.ETC_CLOSED]
                self._display(DisplayContent(line1=o.line1, line2=o.line2, light=Light.RED), out)
                self._set_light(Light.RED, out)
        else:
            out.append(ClearAlarm("etc_closed"))
            out.append(JournalEvent("etc_opened", {"lane_id": self.s.lane_id, "reason": "etc_opened"}))
            if self.credits == 0 and not self.unpaid_on_loop and self.tx is None:
                self._display(DisplayContent(line1=IDLE.line1, line2=IDLE.line2), out)

    def _io_back(self, now: float, out: list[Action]) -> None:
        """The IO module answers again: whatever it missed is asked again. Raising is
        always safe; lowering still only comes from the interlock on fresh inputs."""
        if self.credits or self.unpaid_on_loop or not self.want_down:
            self.counters["raise_reissued"] += 1
            out.append(MoveBarrier(self.barrier.command_raise()))
        # The light may have been lost with the module: send it again.
        out.append(SetLight(self.light))
        # A paid vehicle may have crossed the loop while its samples were unknown: it no
        # longer holds the arm for the full passage timeout, only for a short grace.
        self.passages.shorten(now - self.s.passage_timeout + OUTAGE_PASSAGE_GRACE_S)

    # -- outcomes ---------------------------------------------------------------------------
    def _refuse(self, tx: Tx, reason: Reason, rsctl: int | None, now: float, out: list[Action], *,
                journal: bool = True) -> None:
        out.append(Send(self.d.stop(tx.obu.obu_id), rsctl))
        if journal:
            out.append(JournalRefusal(tx.tx_id, self._record(tx, reason)))
        self.counters[reason] += 1
        self.tx = None
        self._show(reason, tx, out)
        if OUTCOMES[reason].alarm:
            out.append(RaiseAlarm(str(reason), f"OBU {tx.obu.obu_id.hex()}"))
        if self.credits == 0:
            self._set_light(Light.RED, out)

    def _pass_on_record(self, tx: Tx, rsctl: int | None, now: float, out: list[Action]) -> None:
        if not self._paid_for_sure(tx) and self._recover_by_refetch(tx, rsctl, now, out):
            return
        out.append(Send(self.d.stop(tx.obu.obu_id), rsctl))
        self.tx = None
        if not self._paid_for_sure(tx):
            self.counters["seen_again_unknown"] += 1
            self._still_unknown(tx, "seen again; its charge is unknown", out)
            return
        paid = self._paid_match(tx)
        key = paid.obu_id if paid is not None else tx.obu.obu_id
        again, unpaid = self.passages.seen_again(key, now)
        if unpaid is not None:
            self._unpaid(unpaid, out)
        # The first report after paying is kept (the driver's "was I charged twice?" is
        # answered from the journal); an RSU re-reporting a waiting OBU every half second
        # adds nothing after that, unless the vehicle is let out on it.
        if again or (paid is not None and not paid.reported_again):
            out.append(JournalEvent(str(Reason.PAID_ON_RECORD), self._record(tx, Reason.PAID_ON_RECORD)))
        if paid is not None:
            paid.reported_again = True
        if again:
            # Its payment was used (by a vehicle in front of it) or expired, and it is still
            # before the arm: a paid vehicle is let out, never sent to the manual lane.
            self._let_through(tx, Reason.PAID_ON_RECORD, now, out, key=key)
        else:
            self.counters[Reason.PAID_ON_RECORD] += 1  # its payment still waits for it

    def _record_b5(self, tx: Tx, res: Any, rsctl: int | None, out: list[Action]) -> None:
        """A B5 success: answer the RSU, and have the journal keep it before anything else."""
        tx.stage = Stage.RECORDING
        tx.balance_after = res.balance_after
        tx.result = _b5_result(res)
        out.append(Send(self.d.continue_(res.obu_id), rsctl))
        out.append(self._journal_result(tx))

    def _journal_result(self, tx: Tx) -> JournalCharged | JournalResolved:
        """Have the journal keep a B5 success (settle an unknown charge, for a recovery)."""
        result = tx.result or {}
        if tx.recovering:
            return JournalResolved(tx.tx_id, seq_of(tx), result)
        return JournalCharged(tx.tx_id, seq_of(tx), result, entry=self.s.direction is Direction.ENTRY)

    def outputs(self) -> list[Action]:
        """What the display and the light should show now: sent once at start, since the
        devices may still hold what a previous run (or another program) left on them."""
        return [Show(self.display), SetLight(self.light)]

    def _recover_by_refetch(self, tx: Tx, rsctl: int | None, now: float, out: list[Action]) -> bool:
        """An OBU whose charge is unknown (the daemon crashed, or the link dropped, between
        its C6 and B5) is back: where the profile has C8, ask the OBU for its last
        purchase before deciding — once per unknown charge."""
        unknown = [p for p in self.paid.find(tx.obu.obu_id, None)
                   if not p.settled and not p.refetch_tried and p.seq is not None and p.obu_id == tx.obu.obu_id]
        c8 = self.d.refetch_tac(tx.obu.obu_id) if unknown else None
        if c8 is None:
            return False
        p = unknown[-1]
        p.refetch_tried = True
        tx.seq, tx.purchase_time, tx.recovering = p.seq, p.purchase_time, True
        tx.stage = Stage.REFETCHING
        tx.deadline = now + self.s.b5_timeout
        self.tx = tx
        self.counters["recovery_refetch"] += 1
        out.append(Send(c8, rsctl))
        return True

    def _recovered(self, tx: Tx, res: Any, seq: int, rsctl: int | None, out: list[Action]) -> None:
        """The B5 answering a recovery C8: the unknown charge went through only if the
        OBU's last purchase is the one this lane's C6 asked for (its purchase time)."""
        if res.error_code == 0 and (tx.purchase_time is None or res.trans_time == tx.purchase_time):
            self._record_b5(tx, res, rsctl, out)
            return
        why = (f"C8 answered with B5 error {res.error_code:02x}" if res.error_code else
               f"the OBU's last purchase ({res.trans_time}) is not this lane's ({tx.purchase_time})")
        self.counters["recovery_refetch_failed"] += 1
        out.append(Send(self.d.stop(res.obu_id), rsctl))
        self._still_unknown(tx, why, out)

    def _still_unknown(self, tx: Tx, why: str, out: list[Action]) -> None:
        """Seen again with its charge unknown: neither charged again nor waved through."""
        record = self._record(tx, Reason.OUTCOME_UNKNOWN)
        record["detail"] = why
        out.append(JournalEvent(str(Reason.OUTCOME_UNKNOWN), record))
        self.tx = None
        self._show(Reason.OUTCOME_UNKNOWN, tx, out)
        if self.credits == 0:
            self._set_light(Light.RED, out)

    def _let_through(self, tx: Tx, reason: Reason, now: float, out: list[Action], *, fee: int | None = None,
                     balance: int | None = None, key: bytes | None = None) -> None:
        self.counters[reason] += 1
        self.passages.paid(key or tx.obu.obu_id, now)
        self.want_down = False
        self._show(reason, tx, out, fee=fee, balance=balance)
        read_at = tx.started - WAITING_BEFORE_READ_S
        if reason is not Reason.PAID_ON_RECORD and self.passages.waiting_since(read_at):
            # A vehicle has stood at the stop line since before this OBU was first read (an
            # OBU is read as it enters the zone, far back): the payment is the car behind's.
            # Raising now would let the one in front out on it; hold the raise until it
            # turned away, for RAISE_HOLD_S at most.
            self.counters["raise_held"] += 1
            self._raise_held = (read_at, now + RAISE_HOLD_S)
            return
        self._open(out)

    def _open(self, out: list[Action]) -> None:
        self._raise_held = None
        out.append(MoveBarrier(self.barrier.command_raise()))
        self._set_light(Light.GREEN, out)

    def _unknown(self, tx: Tx, why: str, now: float, out: list[Action]) -> None:
        out.append(JournalUnknown(tx.tx_id, seq_of(tx), why))
        out.append(RaiseAlarm(str(Reason.OUTCOME_UNKNOWN), f"seq {tx.seq} OBU {tx.obu.obu_id.hex()}: {why}"))
        self.counters[Reason.OUTCOME_UNKNOWN] += 1
        # Recognised as possibly paid: a second C6 for it inside the window could charge twice.
        self.paid.add(replace(self._paid_record(tx, settled=False), at=now))
        self.tx = None
        self._show(Reason.OUTCOME_UNKNOWN, tx, out)
        if self.credits == 0:
            self._set_light(Light.RED, out)

    def _abandon(self, now: float, out: list[Action], why: str) -> None:
        tx = self.tx
        if tx is None:
            return
        if tx.stage in (Stage.CHARGING, Stage.REFETCHING):
            self._unknown(tx, why, now, out)
        elif tx.stage is Stage.RECORDING:
            # B5 success is being journalled; the executor's confirmation finishes it. Keep
            # it aside so it still counts as paid and its confirmation still finds it.
            self._recording[tx.tx_id] = tx
            self.tx = None
        else:
            self.counters["abandoned"] += 1
            self.tx = None

    def _being_recorded(self, obu_id: bytes, card_key: str | None, plate: str | None) -> bool:
        """Paid, and the B5 result is being journalled: its confirmation lets it through."""
        return any(self._paid_record(tx).same_vehicle(obu_id, card_key, plate) for tx in self._recording.values())

    def _paid_recently(self, obu_id: bytes, card_key: str | None, now: float, plate: str | None) -> bool:
        """The same vehicle paid within the window (its OBU, or its card and its plate)."""
        self.paid.expire(now, self.s.redetect_window)
        return any(p.same_vehicle(obu_id, card_key, plate) for p in self.paid.find(obu_id, card_key))

    def _card_seen_elsewhere(self, tx: Tx, card_key: str | None, plate: str | None, out: list[Action]) -> None:
        """A card that paid in another vehicle within the window: this is a new
        transaction (one payment lets one vehicle out), and the operator should know."""
        others = [p for p in self.paid.find(tx.obu.obu_id, card_key) if p.card_key == card_key]
        if not others:
            return
        first = others[0]
        self.counters["card_shared"] += 1
        out.append(RaiseAlarm("card_shared", f"card {card_key and mask_card(card_key)} paid as seq {first.seq} in OBU "
                              f"{first.obu_id.hex()} (plate {mask_plate(first.plate or '')}); now in OBU "
                              f"{tx.obu.obu_id.hex()} (plate {mask_plate(plate or '')}): charged as a new vehicle"))

    def _paid_match(self, tx: Tx) -> Paid | None:
        """This vehicle's settled payment: by its OBU, or by its card and plate (a card
        moved to another OBU of the same vehicle)."""
        key = tx.card_file.card_key if tx.card_file else None
        plate = _plate_of(tx)
        for p in self.paid.find(tx.obu.obu_id, key):
            if p.settled and p.same_vehicle(tx.obu.obu_id, key, plate):
                return p
        return None

    def _paid_for_sure(self, tx: Tx) -> bool:
        key = tx.card_file.card_key if tx.card_file else None
        plate = _plate_of(tx)
        return any(p.settled and p.same_vehicle(tx.obu.obu_id, key, plate) for p in self.paid.find(tx.obu.obu_id, key))

    def _paid_record(self, tx: Tx, *, settled: bool = True) -> Paid:
        return Paid(tx.obu.obu_id, tx.card_file.card_key if tx.card_file else None, tx.started, tx.seq,
                    settled=settled, plate=_plate_of(tx))

    def _expire_passages(self, now: float, out: list[Action]) -> None:
        if self.safety_occupied is not False:
            return  # someone (or, for all the lane knows, someone) is passing right now
        for key in self.passages.left_zone(now, self.s.left_zone_after):
            # Not an alarm: two vehicles closer than the loops can count, both paid.
            self.counters["passed_uncounted"] += 1
            detail = f"OBU {key.hex()} not heard for {self.s.left_zone_after:g} s: it left the zone"
            out.append(JournalEvent("passed_uncounted", {"lane_id": self.s.lane_id, "reason": "passed_uncounted",
                                                         "detail": detail}))
            if self.credits == 0 and not self.unpaid_on_loop and self.safety_occupied is False:
                self.want_down = True
                self._set_light(Light.RED, out)
        for _ in range(self.passages.expire(now, self.s.passage_timeout)):
            self.counters["passage_timeout"] += 1
            out.append(RaiseAlarm("passage_timeout", f"a vehicle let through did not pass within "
                                  f"{self.s.passage_timeout:g} s; the arm no longer waits for it"))
            out.append(JournalEvent("passage_timeout", {"lane_id": self.s.lane_id, "reason": "passage_timeout"}))
            if self.credits == 0:
                self.want_down = True
                self._set_light(Light.RED, out)

    def _frame_lost(self, now: float) -> None:
        tx = self.tx
        self.counters["frame_damaged"] += 1
        if tx is None or tx.stage in (Stage.INTENT, Stage.RECORDING) or tx.resend_due is not None:
            return
        # Wait briefly: noise in front of a good frame is also a "damaged frame", and the
        # good frame right behind it makes a resend pointless.
        tx.resend_due = now + RESEND_GRACE_S

    # -- timers --------------------------------------------------------------------------------
    def _timers(self, now: float, out: list[Action]) -> None:
        self._expire_passages(now, out)
        if self._raise_held is not None:
            read_at, until = self._raise_held
            if self.credits == 0:
                self._raise_held = None
            elif now >= until or not self.passages.waiting_since(read_at):
                self._open(out)
        tx = self.tx
        if tx is not None and tx.resend_due is not None and now >= tx.resend_due:
            tx.resend_due = None
            if tx.resends < MAX_RESENDS and tx.stage not in (Stage.INTENT, Stage.RECORDING):
                # The RSU waits ~1.1 s for an answer to the frame the lane never got; asking
                # it to send that frame again saves the transaction (and, for a B5, turns
                # an unknown outcome into a known one).
                tx.resends += 1
                self.counters["resend_requested"] += 1
                out.append(Send(self.d.stop(tx.obu.obu_id, STOP_RESEND)))
        if tx is not None and tx.stage in (Stage.OBU, Stage.VEHICLE) and now - tx.started > self.s.transaction_timeout:
            # The RSU went quiet before the card was read (the OBU left, a B3/B4 was lost):
            # free the lane for the next OBU. From the intent on, b5_timeout governs.
            self.counters["transaction_timeout"] += 1
            self._abandon(now, out, "transaction timeout")
            return
        if tx is None or tx.deadline is None or now < tx.deadline:
            return
        if tx.recovering:
            self.counters["recovery_refetch_failed"] += 1
            self._still_unknown(tx, "no B5 answered the C8", out)
            return
        if tx.stage in (Stage.CHARGING, Stage.REFETCHING):
            self.counters["b5_timeout"] += 1
            if self._refetch(tx, now, out):
                return
            self._unknown(tx, "no B5 within the timeout", now, out)

    # -- inputs and barrier --------------------------------------------------------------------
    def _input(self, sample: InputSample, now: float, out: list[Action]) -> None:
        self.barrier.update(sample)
        if sample.signal is Signal.ENTRY_LOOP:
            for u in self.passages.approach_loop(sample.active, now):
                self._unpaid(u, out)
            if self.credits and self.passages.uncommitted <= 0:
                self._set_light(Light.RED, out)
            return
        if sample.signal is not Signal.SAFETY_LOOP:
            if sample.signal is Signal.BARRIER_DOWN and sample.active and self.credits == 0:
                self._set_light(Light.RED, out)
            return
        was = self.safety_occupied
        self.safety_occupied = sample.active
        for u in self.passages.safety_loop(sample.active, now,
                                           barrier_down=self.barrier.position is BarrierPosition.DOWN):
            self._unpaid(u, out)
        if sample.active and self.credits and self.passages.uncommitted <= 0:
            # The paid vehicle is at the arm: red for whoever is behind it.
            self._set_light(Light.RED, out)
        if sample.active is False and was is True and self.credits == 0 and not self.unpaid_on_loop:
            self.want_down = True
            # Red first: a driver who crossed the stop line on green is on the loop before
            # the hold-off ends, and one who has not stops.
            self._set_light(Light.RED, out)

    def _unpaid(self, u: Unpaid, out: list[Action]) -> None:
        """A vehicle passing without a payment of its own: a follow-car. One under the arm
        is never trapped; one found out afterwards is reported all the same."""
        self.counters[Reason.FOLLOW_CAR] += 1
        record = {"lane_id": self.s.lane_id, "reason": str(Reason.FOLLOW_CAR), "detail": u.detail}
        if not u.at_arm_now:
            self.counters["follow_car_found_later"] += 1
            out.append(RaiseAlarm(str(Reason.FOLLOW_CAR), u.detail))
            out.append(JournalEvent(str(Reason.FOLLOW_CAR), record))
            return
        self.want_down = False
        out.append(MoveBarrier(self.barrier.command_raise()))
        o = OUTCOMES[Reason.FOLLOW_CAR]
        self._display(DisplayContent(line1=o.line1, line2=o.line2, light=Light.RED), out)
        self._set_light(Light.RED, out)
        out.append(RaiseAlarm(str(Reason.FOLLOW_CAR), u.detail))
        out.append(JournalEvent(str(Reason.FOLLOW_CAR), record))

    def _barrier(self, now: float, out: list[Action]) -> None:
        reverse = self.barrier.tick(now)
        travel = self.barrier.travel_alarm(now)
        if travel is not None:
            out.append(RaiseAlarm("barrier_raise_timeout", travel.detail) if travel.active
                       else ClearAlarm("barrier_raise_timeout", travel.detail))
        fault = self.barrier.fault
        # Latch and release are news; a latched fault whose reason changes is not.
        if (fault is None) != (self._fault_reported is None):
            if fault is not None:
                out.append(RaiseAlarm("interlock_fault", f"{fault}; the arm is not lowered until every presence "
                                      f"input is fresh and clear for {self.s.interlock.release_after:g} s"))
            else:
                out.append(ClearAlarm("interlock_fault", "presence inputs fresh and clear again"))
            self._fault_reported = fault
        if reverse is not None:
            out.append(MoveBarrier(reverse))
            return
        if self.want_down and self.credits == 0 and self.barrier.position is not BarrierPosition.DOWN:
            decision, cmd = self.barrier.request_lower(now)
            if cmd is not None:
                out.append(MoveBarrier(cmd))
                self._set_light(Light.RED, out)

    # -- helpers -----------------------------------------------------------------------------
    def _show(self, reason: Reason, tx: Tx, out: list[Action], *, fee: int | None = None,
              balance: int | None = None) -> None:
        o = OUTCOMES[reason]
        veh = tx.vehicle
        if balance is None and tx.card is not None:
            balance = tx.card.rest_money
        if fee is None and reason is Reason.INSUFFICIENT_BALANCE:
            fee = tx.fee
        self._display(DisplayContent(
            plate=veh.plate if veh else None, vehicle_class=veh.vehicle_class if veh else None,
            fee_fen=fee, balance_fen=balance, line1=o.line1, line2=o.line2,
            light=Light.GREEN if o.passes else Light.RED), out)

    def _display(self, content: DisplayContent, out: list[Action]) -> None:
        if content != self.display:
            self.display = content
            out.append(Show(content))

    def _set_light(self, light: Light, out: list[Action]) -> None:
        if light is not self.light:
            self.light = light
            out.append(SetLight(light))

    def _record(self, tx: Tx, state: str) -> dict[str, Any]:
        return record(tx, state, self.s, self.fees, self.status)


def _plate_of(tx: Tx) -> str | None:
    """The vehicle's plate as the OBU reported it (B3), else as the card holds it."""
    if tx.vehicle is not None and tx.vehicle.plate:
        return tx.vehicle.plate
    return tx.card_file.plate if tx.card_file is not None and tx.card_file.plate else None


def _b5_result(res: Any) -> dict[str, Any]:
    """What the journal keeps of a successful B5."""
    return {"tac": res.tac, "psam_no": res.psam_no, "psam_trans_serial": res.psam_trans_serial,
            "icc_pay_serial": res.icc_pay_serial, "trans_type": res.trans_type,
            "balance_after": res.balance_after, "trans_time": res.trans_time}
