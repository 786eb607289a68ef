"""The barrier interlock: the only code that may command the barrier down.

Rule 1 of laned: **the barrier never moves down onto a vehicle; any doubt counts as
occupied.** Lowering is allowed only when every presence input (the safety loop under the
arm, and any other presence sensor configured) is

* known (a sample exists and its value is not ``None``),
* fresh (sampled within ``staleness`` seconds),
* clear, and has been clear continuously for ``hold_off`` seconds,
* not latched in a fault.

A stale, unknown, chattering or disagreeing input *latches a fault*; the latch is released
only by a sustained clear sequence: every presence input fresh and clear for
``release_after`` seconds. While the arm is moving down, any doubt reverses it (raise).

A raise that does not reach the up limit switch within ``raise_travel_timeout`` (a stuck
arm, a blown fuse, a broken switch) is reported through :meth:`BarrierInterlock.travel_alarm`,
once when it happens and once when it is over; it is an alarm, not an interlock fault.

This module is sans-IO: time is passed in, commands come out. Nothing else in laned
emits a lower command — the lane machine, an operator and a remote command all go through
:meth:`BarrierInterlock.request_lower`.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

from laned.lane.signals import InputSample, Signal


class BarrierCommand(enum.StrEnum):
    RAISE = "raise"
    LOWER = "lower"


class BarrierPosition(enum.StrEnum):
    UNKNOWN = "unknown"
    DOWN = "down"
    RAISING = "raising"
    UP = "up"
    LOWERING = "lowering"


@dataclass(frozen=True, slots=True)
class InterlockSettings:
    presence: tuple[Signal, ...] = (Signal.SAFETY_LOOP,)
    # Approach inputs (an approach loop, a light curtain before the arm): a vehicle on them
    # may not be able to stop before the arm, so lowering does not start while one is
    # occupied (or unknown, or stale) nor for approach_hold_off after it cleared. They do
    # not reverse a lowering arm: a car stopping at the stop line is on them.
    approach: tuple[Signal, ...] = ()
    approach_hold_off: float = 1.0
    staleness: float = 0.25  # s; the safety loop is polled at >= 20 Hz
    hold_off: float = 1.0  # s clear after the vehicle leaves before lowering
    release_after: float = 3.0  # s of sustained clear to release a latched fault
    chatter_changes: int = 6  # this many changes …
    chatter_window: float = 1.0  # … within this many seconds is chatter
    disagree_after: float = 0.5  # s two presence inputs may disagree before it is a fault
    # s from a raise command to the up limit switch; None: do not check. Only checked once
    # the switch has reported (a lane whose IO has no up switch never sees a sample of it).
    raise_travel_timeout: float | None = 6.0
    reaction_limit: float = 0.4  # s; safety loop occupied at the IO module -> raise there ([barrier] reaction_limit_ms)


@dataclass
class _InputState:
    sample: InputSample | None = None
    clear_since: float | None = None  # monotonic time since which it has been clear
    changes: deque[float] = field(default_factory=lambda: deque(maxlen=64))


@dataclass(frozen=True, slots=True)
class LowerDecision:
    allowed: bool
    reason: str  # why not, for logs and `laned status`


@dataclass(frozen=True, slots=True)
class TravelAlarm:
    """A change of the raise-travel fault, reported once: ``active`` when the up limit switch
    was not reached in time, not ``active`` when it is over (the arm reached the switch, or
    the raise was superseded by a lower)."""

    active: bool
    detail: str


class BarrierInterlock:
    def __init__(self, settings: InterlockSettings | None = None) -> None:
        self.s = settings or InterlockSettings()
        self._inputs: dict[Signal, _InputState] = {sig: _InputState() for sig in self.s.presence}
        self._approach: dict[Signal, _InputState] = {sig: _InputState() for sig in self.s.approach}
        self.position = BarrierPosition.UNKNOWN
        self.fault: str | None = "no input sampled yet"  # latched fault, None when released
        self._fault_clear_since: float | None = None
        self._disagree_since: float | None = None
        self.lower_commands = 0
        self.reversals = 0
        self.travel_fault: str | None = None  # the raise that did not reach the up switch in time
        self._up_switch_seen = False
        self._raising = False  # a raise was commanded and the up switch has not answered yet
        self._raise_since: float | None = None  # when; stamped by the next call with a time
        self._travel_reported = False  # travel_fault has been returned as an active TravelAlarm

    # -- inputs ------------------------------------------------------------------------
    def update(self, sample: InputSample) -> None:
        """Record a sample of any input; presence inputs feed the interlock."""
        if sample.signal is Signal.BARRIER_DOWN and sample.active:
            self.position = BarrierPosition.DOWN
        elif sample.signal is Signal.BARRIER_UP and sample.active:
            self.position = BarrierPosition.UP
            self._raising = False
        if sample.signal is Signal.BARRIER_UP and sample.active is not None:
            self._up_switch_seen = True
        st = self._inputs.get(sample.signal) or self._approach.get(sample.signal)
        if st is None:
            return
        prev = st.sample
        if prev is not None and prev.active != sample.active:
            st.changes.append(sample.at)
        st.sample = sample
        if sample.active is False:
            if st.clear_since is None or prev is None or prev.active is not False:
                st.clear_since = sample.at
        else:
            st.clear_since = None

    def approach_doubt(self, now: float) -> str | None:
        """Why a vehicle may be about to reach the arm (None: no approach input says so)."""
        for sig in self.s.approach:
            st = self._approach[sig]
            smp = st.sample
            if smp is None or smp.active is None:
                return f"{sig} unknown"
            if now - smp.at > self.s.staleness:
                return f"{sig} stale ({now - smp.at:.2f} s old)"
            if smp.active:
                return f"{sig} occupied"
            if st.clear_since is None or now - st.clear_since < self.s.approach_hold_off:
                return f"{sig} clear for less than {self.s.approach_hold_off:g} s"
        return None

    def occupied(self, now: float) -> bool:
        """True when any presence input is occupied, unknown or stale: any doubt."""
        return bool(self._doubts(now))

    def _doubts(self, now: float) -> list[str]:
        doubts = []
        for sig, st in self._inputs.items():
            smp = st.sample
            if smp is None or smp.active is None:
                doubts.append(f"{sig} unknown")
            elif now - smp.at > self.s.staleness:
                doubts.append(f"{sig} stale ({now - smp.at:.2f} s old)")
            elif smp.active:
                doubts.append(f"{sig} occupied")
            elif self._chattering(st, now):
                doubts.append(f"{sig} chattering")
        if len(self._inputs) > 1:
            values = {st.sample.active for st in self._inputs.values() if st.sample is not None}
            if len(values) > 1:
                if self._disagree_since is None:
                    self._disagree_since = now
                if now - self._disagree_since >= self.s.disagree_after:
                    doubts.append("presence inputs disagree")
            else:
                self._disagree_since = None
        return doubts

    def _chattering(self, st: _InputState, now: float) -> bool:
        recent = [t for t in st.changes if now - t <= self.s.chatter_window]
        return len(recent) >= self.s.chatter_changes

    # -- faults ------------------------------------------------------------------------
    def _update_fault(self, now: float) -> None:
        faults = [d for d in self._doubts(now) if not d.endswith("occupied")]
        if faults:
            self.fault = "; ".join(faults)
            self._fault_clear_since = None
            return
        if self.fault is None:
            return
        if self._all_clear(now):
            if self._fault_clear_since is None:
                self._fault_clear_since = now
            if now - self._fault_clear_since >= self.s.release_after:
                self.fault = None
                self._fault_clear_since = None
        else:
            self._fault_clear_since = None

    def _all_clear(self, now: float) -> bool:
        return not self._doubts(now)

    # -- commands ----------------------------------------------------------------------
    def request_lower(self, now: float) -> tuple[LowerDecision, BarrierCommand | None]:
        """Ask to lower the arm. Returns the decision and the command to issue, if any."""
        self._update_fault(now)
        if self.fault is not None:
            return LowerDecision(False, f"input fault latched: {self.fault}"), None
        doubts = self._doubts(now)
        if doubts:
            return LowerDecision(False, "; ".join(doubts)), None
        for sig, st in self._inputs.items():
            if st.clear_since is None or now - st.clear_since < self.s.hold_off:
                return LowerDecision(False, f"{sig} clear for less than the hold-off {self.s.hold_off} s"), None
        approach = self.approach_doubt(now)
        if approach is not None:
            return LowerDecision(False, approach), None
        if self.position in (BarrierPosition.DOWN, BarrierPosition.LOWERING):
            return LowerDecision(True, f"already {self.position}"), None
        self.position = BarrierPosition.LOWERING
        self.lower_commands += 1
        self._raising = False  # a lower supersedes the raise: its travel no longer counts
        return LowerDecision(True, "clear"), BarrierCommand.LOWER

    def command_raise(self, now: float | None = None) -> BarrierCommand:
        """Raising is always allowed. Without ``now`` the raise is timed from the next call
        that passes the time (:meth:`tick`, :meth:`travel_alarm`)."""
        if self.position is not BarrierPosition.UP:
            self.position = BarrierPosition.RAISING
            if not self._raising:
                self._raising, self._raise_since = True, now
        return BarrierCommand.RAISE

    def tick(self, now: float) -> BarrierCommand | None:
        """Call on every input change and timer: reverses a lowering arm on any doubt."""
        self._update_fault(now)
        if self._raising and self._raise_since is None:
            self._raise_since = now
        if self.position is BarrierPosition.LOWERING and (self.fault is not None or self._doubts(now)):
            self.reversals += 1
            self.position = BarrierPosition.RAISING
            self._raising, self._raise_since = True, now
            return BarrierCommand.RAISE
        return None

    def travel_alarm(self, now: float) -> TravelAlarm | None:
        """Call after :meth:`tick`: a :class:`TravelAlarm` when the raise-travel fault starts
        (the up limit switch not reached ``raise_travel_timeout`` after the raise) or ends;
        None when nothing changed. :attr:`travel_fault` holds the fault while it lasts."""
        if self._raising and self._raise_since is None:
            self._raise_since = now
        timeout = self.s.raise_travel_timeout
        if (self._raising and self._raise_since is not None and timeout is not None and self._up_switch_seen
                and now - self._raise_since > timeout and not self._travel_reported):
            self.travel_fault = (f"the arm did not reach the up limit switch within {timeout:g} s of the raise "
                                 f"command (commanded {now - self._raise_since:.1f} s ago)")
            self._travel_reported = True
            return TravelAlarm(True, self.travel_fault)
        if self._travel_reported and not self._raising:
            why = "the arm reached the up limit switch" if self.position is BarrierPosition.UP else \
                "the raise was superseded by a lower"
            self.travel_fault, self._travel_reported = None, False
            return TravelAlarm(False, why)
        return None

    def status(self, now: float) -> dict[str, object]:
        return {
            "position": str(self.position),
            "fault": self.fault,
            "doubts": self._doubts(now),
            "lower_commands": self.lower_commands,
            "reversals": self.reversals,
            "travel_fault": self.travel_fault,
        }
