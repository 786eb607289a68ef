"""The lane state machine: ETC transactions, passage accounting and the barrier, sans-IO.

The transaction record and its admission rules are in ``transaction.py``, the settings
in ``settings.py``, events and actions in ``events.py``, degraded modes in ``modes.py``.
:class:`LaneMachine` is the transaction (B2 to B5) and the durable outcomes; its base
classes hold the arm side (``arm.py``) and re-detection and recovery (``redetect.py``).

Events go in (:class:`FrameIn`, :class:`InputIn`, :class:`Tick`, journal confirmations),
actions come out (:class:`Send`, :class:`Show`, :class:`MoveBarrier`, journal records…),
and time is passed in with every call: ``handle(event, now, wall)`` where ``now`` is the
monotonic clock (timers) and ``wall`` the local civil time (contract dates, C6 purchase
time). Nothing here reads a clock or touches a port.

The two rules, and how the machine keeps them:

* **The barrier never moves down onto a vehicle.** Only :class:`BarrierInterlock` emits a
  lower command; the machine merely *wants* the barrier down once every paid vehicle has
  left the safety loop (``arm.py``).
* **No charged transaction is lost or charged twice.** Here: C6 goes out only after the
  executor confirms the intent is durable (:class:`IntentRecorded`); the barrier rises only
  after the B5 result is durable (:class:`ChargeRecorded`). In ``redetect.py``: an OBU or
  card that completed a charge within the re-detection window is let through on its record,
  never charged again; after a B5 error or a lost B5 the TAC is re-fetched (C8) where the
  profile can, otherwise the outcome is recorded as unknown for reconciliation.
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import replace
from collections import Counter
from typing import Any

from laned.lane.arm import Arm
from laned.lane.barrier import BarrierInterlock
from laned.lane.degraded import DegradedModes
from laned.lane.dialect import Dialect, ObuView, VehicleView
from laned.lane.display import DisplayContent
from laned.lane.events import (
    Action, ChargeRecorded, ChargeRecordFailed, ClearAlarm, Device, DeviceStatus, Event, FrameIn, FrameLost, InputIn,
    IntentFailed, IntentRecorded, JournalCharged, JournalEvent, JournalIntent, JournalNotCharged, JournalRefusal,
    JournalResolved, JournalUnknown, LinkLost, LinkUp, MoveBarrier, OperatorMessage, OperatorRaise, RaiseAlarm, Send,
    SendFailed, SetLight, Show, Tick,
)
from laned.lane.fee_table import FeeSchedule
from laned.lane.modes import Availability
from laned.lane.outcomes import IDLE, OUTCOMES, Reason
from laned.lane.paid import Paid, PaidRecords
from laned.lane.passages import Passages
from laned.lane.redetect import Redetection
from laned.lane.settings import (
    Direction, EmptyStatusList, FeeLookup, LaneSettings, MissingEntryPolicy, StatusLookup,
)
from laned.lane.signals import Light
from laned.lane.transaction import (
    LaneStateError, Stage, Tx, b5_result, check_card, check_obu, plate_of, price, record, seq_of, station_record,
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

# After a damaged frame during a transaction: wait this long for a good one, then ask the
# RSU to resend (C2 stop type 2), at most this many times per transaction.
RESEND_GRACE_S = 0.08
MAX_RESENDS = 2


class LaneMachine(Redetection, DegradedModes, Arm):
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
        self._message = None
        self.c6_sent: list[tuple[bytes, float, str]] = []  # (obu_id, now, tx_id), for invariant checks
        self.modes = Availability(settings.display_policy)
        self.rsu_initialised = False  # a B0 with status 0 since the link came up
        # Charges the card made whose B5 result the journal could not keep yet.
        self._unrecorded: dict[str, Tx] = {}
        # The interlock starts latched ("no input sampled yet"); that one is no news.
        self._fault_reported: str | None = self.barrier.fault

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
        elif isinstance(event, (OperatorRaise, OperatorMessage)):
            self._operator(event, now, out)
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
        # The table in force now, not the schedule: a schedule switches to its pending table in
        # place at its valid_from (FeeSchedule.tick), and a vehicle whose B2 came before that
        # moment must be priced and recorded with the same version.
        fees = self.fees.current if isinstance(self.fees, FeeSchedule) else self.fees
        tx = Tx(tx_id=str(uuid.uuid4()), obu=obu, started=now, lists=(fees, self.status))
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
        plate = plate_of(tx)
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
        fees, status = tx.lists or (self.fees, self.status)
        reason = Reason.ETC_CLOSED if self.modes.closed else check_card(tx, cf, wall.date(), self.s, status)
        if reason is None and self.s.direction is Direction.EXIT:
            reason = price(tx, card, self.s, fees, self.counters)
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

    def _record_b5(self, tx: Tx, res: Any, rsctl: int | None, out: list[Action]) -> None:
        """A B5 success: answer the RSU, and have the journal keep it before anything else."""
        tx.stage = Stage.RECORDING
        tx.balance_after = res.balance_after
        tx.result = b5_result(res)
        out.append(Send(self.d.continue_(res.obu_id), rsctl))
        out.append(self._journal_result(tx))

    def _journal_result(self, tx: Tx) -> JournalCharged | JournalResolved:
        """Have the journal keep a B5 success (settle an unknown charge, for a recovery)."""
        result = tx.result or {}
        if tx.recovering:
            return JournalResolved(tx.tx_id, seq_of(tx), result)
        return JournalCharged(tx.tx_id, seq_of(tx), result, entry=self.s.direction is Direction.ENTRY)

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
        self._message_timer(now, out)
        self._expire_passages(now, out)
        self._release_held_raise(now, out)
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

    # -- helpers -----------------------------------------------------------------------------
    def _record(self, tx: Tx, state: str) -> dict[str, Any]:
        fees, status = tx.lists or (self.fees, self.status)  # the versions the transaction was decided with
        return record(tx, state, self.s, fees, status)
