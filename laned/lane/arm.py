"""The arm side of the lane machine: inputs, passages, the barrier, the light and the display.

:class:`Arm` is a base class of :class:`~laned.lane.machine.LaneMachine`, kept apart so
the first rule reads in one place: the barrier never moves down onto a vehicle. Only
:class:`BarrierInterlock` emits a lower command; the machine merely *wants* the barrier
down (``want_down``) once every vehicle let through has left the safety loop.
"""

from __future__ import annotations

from collections import Counter

from laned.lane.barrier import BarrierInterlock, BarrierPosition
from laned.lane.display import DisplayContent
from laned.lane.events import (
    Action, ClearAlarm, JournalEvent, MoveBarrier, OperatorMessage, OperatorRaise, RaiseAlarm, SetLight, Show,
)
from laned.lane.outcomes import OUTCOMES, Reason
from laned.lane.passages import Passages, Unpaid
from laned.lane.settings import LaneSettings
from laned.lane.signals import InputSample, Light, Signal
from laned.lane.transaction import Tx

# After an IO outage, a vehicle let through before or during it may already have crossed
# the loop unseen: it holds the arm open this long more at most (unless it is seen on the
# loop), not the whole passage timeout. A vehicle still waiting is re-read by the RSU and
# let out on its record.
OUTAGE_PASSAGE_GRACE_S = 8.0

# A vehicle on the approach loop this long before an OBU was first read is not that OBU's
# vehicle; a raise for the OBU waits for it to turn away, this long at most.
WAITING_BEFORE_READ_S = 1.0
RAISE_HOLD_S = 4.0

# The passage an operator's remote raise grants is keyed like an OBU's payment; no OBU id
# is this long (the national OBU id is 4 bytes), so it never matches a real OBU.
REMOTE_RAISE_KEY = b"remote-raise"


class Arm:
    # LaneMachine.__init__ sets these; declared so this part type-checks on its own.
    s: LaneSettings
    barrier: BarrierInterlock
    passages: Passages
    counters: Counter[str]
    want_down: bool
    safety_occupied: bool | None
    _raise_held: tuple[float, float] | None
    _fault_reported: str | None
    display: DisplayContent
    light: Light
    # A centre's message on the display: (it, what it replaced, until when).
    _message: tuple[DisplayContent, DisplayContent, float] | None

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

    def outputs(self) -> list[Action]:
        """What the display and the light should show now: sent once at start, since the
        devices may still hold what a previous run (or another program) left on them."""
        return [Show(self.display), SetLight(self.light)]

    # -- inputs and passages -----------------------------------------------------------------
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

    def _expire_passages(self, now: float, out: list[Action]) -> None:
        if self.safety_occupied is not False:
            return  # someone (or, for all the lane knows, someone) is passing right now
        for key in self.passages.left_zone(now, self.s.left_zone_after):
            # Not an alarm: two vehicles closer than the loops can count, both paid.
            self.counters["passed_uncounted"] += 1
            detail = f"OBU {key.hex()} not heard for {self.s.left_zone_after:g} s: it left the zone"
            out.append(JournalEvent("passed_uncounted", {"lane_id": self.s.lane_id, "reason": "passed_uncounted",
                                                         "detail": detail}))
            if self.credits == 0 and not self.unpaid_on_loop:
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

    # -- letting a vehicle through -----------------------------------------------------------
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

    def _release_held_raise(self, now: float, out: list[Action]) -> None:
        """A held raise goes out once the vehicle in front turned away, or RAISE_HOLD_S on;
        it is dropped when no payment waits for the arm any more."""
        if self._raise_held is None:
            return
        read_at, until = self._raise_held
        if self.credits == 0:
            self._raise_held = None
        elif now >= until or not self.passages.waiting_since(read_at):
            self._open(out)

    # -- an operator at the centre ----------------------------------------------------------
    def _operator(self, ev: OperatorRaise | OperatorMessage, now: float, out: list[Action]) -> None:
        if isinstance(ev, OperatorMessage):
            shown = DisplayContent(line1=ev.line1, line2=ev.line2, light=self.light)
            previous = self._message[1] if self._message is not None else self.display
            self._message = (shown, previous, now + ev.duration_s)
            self._display(shown, out)
            return
        # A raise as for a payment: one vehicle may pass on it, and the arm comes down
        # behind it through the interlock like behind any vehicle. The journal record
        # (remote_raise, with the operator) is written by whoever executed the command,
        # in the same transaction as its ledger entry.
        self.counters["remote_raise"] += 1
        self.passages.paid(REMOTE_RAISE_KEY, now)
        self.want_down = False
        self._open(out)

    def _message_timer(self, now: float, out: list[Action]) -> None:
        """A centre's message that has been shown long enough gives the display back,
        unless something else has replaced it meanwhile."""
        if self._message is None or now < self._message[2]:
            return
        shown, previous, _ = self._message
        self._message = None
        if self.display == shown:
            self._display(previous, out)

    # -- barrier -----------------------------------------------------------------------------
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

    # -- display and light -------------------------------------------------------------------
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
