"""What the uplink reports of the lane: its retained state, health snapshots and the
backlog alarms (``laned.uplink.service`` publishes them). Sans-IO: times are passed in."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import laned
from laned.health.checks import CheckResult, CheckStatus, HealthChecker, LaneSnapshot
from laned.lane.events import ClearAlarm, Device, RaiseAlarm
from laned.uplink.messages import ActiveAlarm, Check, ClosedBy, HealthSnapshot, LaneState, LaneStatus, OutboxState


@dataclass(frozen=True, slots=True)
class LaneView:
    """What the uplink reads of the lane: whether ETC is open and what closes it, and whether
    a vehicle's transaction is under way (the outbox gives way to it)."""

    etc_open: Callable[[], bool]
    closed_by: Callable[[], Mapping[Device, str]]
    vehicle_busy: Callable[[], bool] = lambda: False


class RecordingChecker(HealthChecker):
    """The health checker, keeping its latest results for the centre's health snapshot."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.latest: list[CheckResult] = []

    def run(self, snap: LaneSnapshot, now: float, wall: dt.datetime) -> list[CheckResult]:
        self.latest = super().run(snap, now, wall)
        return self.latest


def overall(results: list[CheckResult]) -> CheckStatus:
    statuses = {r.status for r in results}
    for status in (CheckStatus.FAILED, CheckStatus.DEGRADED, CheckStatus.OK):
        if status in statuses:
            return status
    return CheckStatus.UNKNOWN


def lane_state(lane_id: str, lane: LaneView, at: dt.datetime) -> LaneState:
    """The retained ``state`` message: online, or degraded with what closes ETC."""
    closed = lane.closed_by()
    etc_open = lane.etc_open()
    return LaneState(lane_id=lane_id, state=LaneStatus.ONLINE if etc_open else LaneStatus.DEGRADED,
                     reason=None if etc_open else "; ".join(f"{d}: {why}" for d, why in sorted(closed.items())),
                     at=at, etc_open=etc_open,
                     closed_by=tuple(ClosedBy(device=d, reason=why) for d, why in sorted(closed.items())) or None,
                     software_version=laned.__version__)


def health_snapshot(lane_id: str, monitor: Any, lane: LaneView, at: dt.datetime, outbox: OutboxState, *,
                    uptime_s: int) -> HealthSnapshot:
    """A ``health`` message: the latest checks (a :class:`RecordingChecker`'s), the active
    alarms, what closes ETC and the outbox. ``monitor`` None: no checks, no alarms."""
    results = monitor.checker.latest if monitor is not None and isinstance(monitor.checker,
                                                                             RecordingChecker) else []
    alarms = monitor.registry.active() if monitor is not None else []
    closed = lane.closed_by()
    return HealthSnapshot(
        lane_id=lane_id, at=at, overall=overall(results), etc_open=lane.etc_open(),
        checks=tuple(Check.from_result(r) for r in results),
        alarms=tuple(ActiveAlarm.from_alarm(a) for a in alarms),
        closed_by=tuple(ClosedBy(device=d, reason=why) for d, why in sorted(closed.items())) or None,
        outbox=outbox, software_version=laned.__version__, uptime_s=uptime_s)


def backlog_alarms(level: int | None, detail: str) -> list[RaiseAlarm | ClearAlarm]:
    """The ``uplink_backlog_*`` alarms for a backlog level (None: below them all): one level
    at a time, the highest reached raised, the others cleared."""
    # The codes spelt out: tests/test_alarms.py finds every code laned raises in the source.
    return [RaiseAlarm("uplink_backlog_50", detail) if level == 50 else ClearAlarm("uplink_backlog_50", detail),
            RaiseAlarm("uplink_backlog_80", detail) if level == 80 else ClearAlarm("uplink_backlog_80", detail),
            RaiseAlarm("uplink_backlog_95", detail) if level == 95 else ClearAlarm("uplink_backlog_95", detail)]
