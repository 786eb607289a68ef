"""Degraded modes in the lane machine: what a device lost or back does to the lane.

:class:`DegradedModes` is a base class of :class:`~laned.lane.machine.LaneMachine`, kept
apart so that closing and opening ETC reads in one place (which devices count is
:class:`~laned.lane.modes.Availability`'s). A closure is raised as an alarm and journalled
for the centre; the display and light say so only when no vehicle is being served, so a
vehicle already paid for is let out as before.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from laned.lane.display import DisplayContent
from laned.lane.events import Action, ClearAlarm, Device, DeviceStatus, JournalEvent, RaiseAlarm, Show
from laned.lane.modes import Availability
from laned.lane.outcomes import IDLE, OUTCOMES, Reason
from laned.lane.settings import LaneSettings
from laned.lane.signals import Light
from laned.lane.transaction import Tx

if TYPE_CHECKING:
    from laned.lane.events import JournalCharged, JournalResolved


class DegradedModes:
    # LaneMachine.__init__ sets these; declared so this part type-checks on its own.
    s: LaneSettings
    tx: Tx | None
    modes: Availability
    display: DisplayContent
    counters: Counter[str]
    _unrecorded: dict[str, Tx]

    if TYPE_CHECKING:
        # From machine.py and arm.py (LaneMachine has them).
        @property
        def credits(self) -> int: ...
        @property
        def unpaid_on_loop(self) -> bool: ...
        def _io_back(self, now: float, out: list[Action]) -> None: ...
        def _journal_result(self, tx: Tx) -> JournalCharged | JournalResolved: ...
        def _display(self, content: DisplayContent, out: list[Action]) -> None: ...
        def _set_light(self, light: Light, out: list[Action]) -> None: ...

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
