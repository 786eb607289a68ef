"""The lane's inputs and its light, as the sans-IO lane sees them.

The lane logic only ever sees *samples*: a signal's state together with the time it was
read, so staleness is visible to the barrier interlock. ``active`` means "the physical
condition is present" (loop occupied, limit switch reached) after NO/NC polarity has been
applied; ``None`` means the state is unknown (read failed, device offline), which the
interlock treats as occupied.

These are values the lane shares with the IO drivers (``laned/drivers/lane_io.py``
re-exports them); they live here so that the sans-IO lane imports nothing from the drivers.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Signal(enum.StrEnum):
    """Inputs of a lane."""

    ENTRY_LOOP = "entry_loop"  # the approach loop before the arm (optional)
    SAFETY_LOOP = "safety_loop"  # the loop under the barrier arm
    BARRIER_UP = "barrier_up"  # limit switch: arm fully raised
    BARRIER_DOWN = "barrier_down"  # limit switch: arm fully lowered


# The approach (entry) loop is optional: a lane without one gets a hold-off derived from its
# geometry instead (docs/lane_sensors.md).
REQUIRED_INPUTS: tuple[Signal, ...] = (Signal.SAFETY_LOOP, Signal.BARRIER_UP, Signal.BARRIER_DOWN)


class Light(enum.StrEnum):
    RED = "red"
    GREEN = "green"
    OFF = "off"


@dataclass(frozen=True, slots=True)
class InputSample:
    """One reading of one input. ``at`` is the monotonic time of the read, in seconds."""

    signal: Signal
    active: bool | None
    at: float

    def is_fresh(self, now: float, max_age: float) -> bool:
        return self.active is not None and (now - self.at) <= max_age
