"""The GPIO pin map: which header pin carries which lane signal, and how it is wired.

This is data from the config (``[lane_io.gpio]``), because lane PCs are wired by hand
and no two cabinets agree. Validation errors name the key and what was expected, so a
typo in the TOML stops the start with a message the field engineer can act on.

Input wiring, in the words of the cabinet drawing:

- ``contact``: the detector's relay contact. ``NO`` (normally open) closes when the
  condition is present (loop occupied, limit switch reached); ``NC`` opens when it is
  present. NC is the safe choice for the safety loop: a cut wire then reads *occupied*.
- ``pull_up``: ``true`` when the contact switches the pin to GND against the board's
  pull-up (closed = LOW); ``false`` when it switches to 3V3 against a pull-down
  (closed = HIGH); ``null`` for an externally biased input (opto-coupler board), where
  ``closed_level`` says which level a closed contact gives.
"""

from __future__ import annotations

import enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from laned.drivers.lane_io import REQUIRED_INPUTS, Output, Signal

# Outputs a lane cannot run without; lights and alarm may be absent on small lanes.
REQUIRED_OUTPUTS = (Output.BARRIER_RAISE, Output.BARRIER_LOWER)


class Contact(enum.StrEnum):
    NO = "NO"  # normally open: closed while the condition is present
    NC = "NC"  # normally closed: open while the condition is present


class BarrierMode(enum.StrEnum):
    LEVEL = "level"  # the barrier moves while the output is held on
    PULSE = "pulse"  # the barrier controller latches a pulse and runs to its limit


def _pin_name(value: str | int) -> str:
    # gpiozero reads a bare int as a Broadcom number; spelling it "GPIO17" keeps the
    # duplicate check and the log lines unambiguous.
    if isinstance(value, bool):
        raise ValueError("a pin is a name like 'GPIO17' or a Broadcom number, not a bool")
    if isinstance(value, int):
        return f"GPIO{value}"
    name = value.strip()
    if not name:
        raise ValueError("pin name is empty")
    return name


class InputPin(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    pin: str
    contact: Contact = Contact.NO
    pull_up: bool | None = True
    closed_level: Literal["low", "high"] | None = None
    # Detector relays bounce for a few ms; 20 ms hides that and is still far below a
    # vehicle's time on a loop.
    bounce_ms: float = Field(default=20.0, ge=0.0, le=1000.0)

    @field_validator("pin", mode="before")
    @classmethod
    def _normalise_pin(cls, value: str | int) -> str:
        return _pin_name(value)

    @model_validator(mode="after")
    def _check_bias(self) -> InputPin:
        if self.pull_up is None and self.closed_level is None:
            raise ValueError(
                "pull_up = null (external bias) needs closed_level = 'low' or 'high'"
            )
        implied = None if self.pull_up is None else "low" if self.pull_up else "high"
        if implied is not None and self.closed_level not in (None, implied):
            raise ValueError(
                f"closed_level = {self.closed_level!r} contradicts pull_up = "
                f"{str(self.pull_up).lower()} (a closed contact reads {implied})"
            )
        return self

    @property
    def closed_high(self) -> bool:
        """True when a closed contact puts the pin HIGH."""
        if self.pull_up is None:
            return self.closed_level == "high"
        return not self.pull_up

    def level_for(self, active: bool) -> bool:
        """The pin level (True = HIGH) that means ``active`` (condition present)."""
        closed = active if self.contact is Contact.NO else not active
        return self.closed_high if closed else not self.closed_high

    def active_from_closed(self, closed: bool) -> bool:
        return closed if self.contact is Contact.NO else not closed


class OutputPin(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    pin: str
    active_high: bool = True  # false for relay boards that energise on LOW

    @field_validator("pin", mode="before")
    @classmethod
    def _normalise_pin(cls, value: str | int) -> str:
        return _pin_name(value)


class BarrierDrive(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: BarrierMode = BarrierMode.LEVEL
    # Typical barrier controllers want 200–500 ms on their raise/lower terminals.
    pulse_ms: int = Field(default=500, ge=20, le=5000)


class GpioPinMap(BaseModel):
    """Every pin of a directly wired lane."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    inputs: dict[Signal, InputPin]
    outputs: dict[Output, OutputPin]
    barrier: BarrierDrive = BarrierDrive()
    # Inputs are re-read at this rate even without edges so the interlock's freshness
    # check sees a live sample; 20 Hz keeps a sample younger than 50 ms.
    sample_hz: float = Field(default=20.0, gt=0.0, le=1000.0)

    @model_validator(mode="after")
    def _check_complete(self) -> GpioPinMap:
        missing_in = [s.value for s in REQUIRED_INPUTS if s not in self.inputs]
        if missing_in:
            raise ValueError(f"inputs: no pin for {', '.join(missing_in)} (every lane needs the safety loop and "
                             "both limit switches)")
        missing_out = [o.value for o in REQUIRED_OUTPUTS if o not in self.outputs]
        if missing_out:
            raise ValueError(f"outputs: no pin for {', '.join(missing_out)} (the barrier needs both)")
        seen: dict[str, str] = {}
        pins: list[tuple[Signal | Output, InputPin | OutputPin]] = [*self.inputs.items(), *self.outputs.items()]
        for key, spec in pins:
            if spec.pin in seen:
                raise ValueError(f"pin {spec.pin} is used twice: by {seen[spec.pin]} and by {key.value}")
            seen[spec.pin] = key.value
        return self
