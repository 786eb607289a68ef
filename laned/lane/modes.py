"""Degraded modes: which devices the lane has, and whether it may take ETC payments.

The lane takes a payment only when it can finish what a payment starts: tell the RSU
(RSU link), record it durably (journal), price it (fee table) and let the vehicle out
(IO module: the barrier must be raisable). Losing any of them closes ETC — new OBUs are
refused to the manual lane with "ETC暂停 请走人工车道" and a red light — and getting it
back opens ETC again, both without anyone's help. A transaction already past its C6
finishes: its vehicle is let out as soon as the barrier can be raised again.

The fee display is the one device the lane can do without: ``display_policy`` says
whether its loss closes ETC (``close``) or only raises an alarm (``continue``).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from laned.lane.events import Device


class DisplayPolicy(enum.StrEnum):
    CONTINUE = "continue"  # keep taking payments; the alarm tells the operator
    CLOSE = "close"  # no payments while drivers cannot see fee and balance


@dataclass
class Availability:
    """What is unavailable, and why: ``closed_by`` is the reasons ETC is closed now."""

    display_policy: DisplayPolicy = DisplayPolicy.CONTINUE
    down: dict[Device, str] = field(default_factory=dict)

    def update(self, device: Device, online: bool, detail: str) -> bool:
        """Record a device's state; True when that changed whether ETC is open."""
        was = self.closed
        if online:
            self.down.pop(device, None)
        else:
            self.down[device] = detail or "unavailable"
        return was != self.closed

    def is_down(self, device: Device) -> bool:
        return device in self.down

    def closes(self, device: Device) -> bool:
        return device is not Device.DISPLAY or self.display_policy is DisplayPolicy.CLOSE

    @property
    def closed_by(self) -> dict[Device, str]:
        return {d: why for d, why in self.down.items() if self.closes(d)}

    @property
    def closed(self) -> bool:
        return any(self.closes(d) for d in self.down)

    def describe(self) -> str:
        """One line for the log, the alarm and the journal: ``rsu: link lost; io: …``."""
        return "; ".join(f"{d}: {why}" for d, why in sorted(self.closed_by.items()))
