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

This module is sans-IO: time is passed in, commands come out. Nothing else in laned
emits a lower command — the lane machine, an operator and a remote command all go through
:meth:`BarrierInterlock.request_lower`.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

from laned.drivers.lane_io import InputSample, Signal


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
    staleness: float = 0.25  # s; the safety loop is polled at >= 20 Hz
    hold_off: float = 1.0  # s clear after the vehicle leaves before lowering
    release_after: float = 3.0  # s of sustained clear to release a latched fault
    chatter_changes: int = 6  # this many changes …
    chatter_window: float = 1.0  # … within this many seconds is chatter
    disagree_after: float = 0.5  # s two presence inputs may disagree before it is a fault


@dataclass
class _InputState:
    sample: InputSample | None = None
    clear_since: float | None = None  # monotonic time since which it has been clear
    changes: deque[float] = field(default_factory=lambda: deque(maxlen=64))


@dataclass(frozen=True, slots=True)
class LowerDecision:
    allowed: bool
    reason: str  # why not, for logs and `laned status`


class BarrierInterlock:
    def __init__(self, settings: InterlockSettings | None = None) -> None:
        self.s = settings or InterlockSettings()
        self._inputs: dict[Signal, _InputState] = {sig: _InputState() for sig in self.s.presence}
        self.position = BarrierPosition.UNKNOWN
        self.fault: str | None = "no input sampled yet"  # latched fault, None when released
        self._fault_clear_since: float | None = None
        self._disagree_since: float | None = None
        self.lower_commands = 0
        self.reversals = 0

    # -- inputs ------------------------------------------------------------------------
    def update(self, sample: InputSample) -> None:
        """Record a sample of any input; presence inputs feed the interlock."""
        if sample.signal is Signal.BARRIER_DOWN and sample.active:
            self.position = BarrierPosition.DOWN
        elif sample.signal is Signal.BARRIER_UP and sample.active:
            self.position = BarrierPosition.UP
        st = self._inputs.get(sample.signal)
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
        if self.position in (BarrierPosition.DOWN, BarrierPosition.LOWERING):
            return LowerDecision(True, f"already {self.position}"), None
        self.position = BarrierPosition.LOWERING
        self.lower_commands += 1
        return LowerDecision(True, "clear"), BarrierCommand.LOWER

    def command_raise(self) -> BarrierCommand:
        """Raising is always allowed."""
        if self.position is not BarrierPosition.UP:
            self.position = BarrierPosition.RAISING
        return BarrierCommand.RAISE

    def tick(self, now: float) -> BarrierCommand | None:
        """Call on every input change and timer: reverses a lowering arm on any doubt."""
        self._update_fault(now)
        if self.position is BarrierPosition.LOWERING and (self.fault is not None or self._doubts(now)):
            self.reversals += 1
            self.position = BarrierPosition.RAISING
            return BarrierCommand.RAISE
        return None

    def status(self, now: float) -> dict[str, object]:
        return {
            "position": str(self.position),
            "fault": self.fault,
            "doubts": self._doubts(now),
            "lower_commands": self.lower_commands,
            "reversals": self.reversals,
        }
