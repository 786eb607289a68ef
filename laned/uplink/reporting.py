"""What the uplink reports of the lane: its retained state, health snapshots with their
counters, the backlog alarms, and which alarm changes go up after an outage
(``laned.uplink.service`` publishes them). Sans-IO: times are passed in."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import laned
from laned.health.alarms import AlarmChange
from laned.health.checks import CheckResult, CheckStatus, HealthChecker, LaneSnapshot
from laned.lane.events import ClearAlarm, Device, RaiseAlarm
from laned.lane.outcomes import Reason
from laned.uplink.messages import (
    ActiveAlarm, AlarmCount, Check, ClosedBy, HealthCounters, HealthSnapshot, LaneCount, LaneState, LaneStatus,
    OutboxState,
)


@dataclass(frozen=True, slots=True)
class LaneView:
    """What the uplink reads of the lane: whether ETC is open and what closes it, and whether
    a vehicle's transaction is under way (the outbox gives way to it)."""

    etc_open: Callable[[], bool]
    closed_by: Callable[[], Mapping[Device, str]]
    vehicle_busy: Callable[[], bool] = lambda: False
    counters: Callable[[], Mapping[str, int]] = dict  # the lane machine's counts since start


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


def alarm_counts(monitor: Any) -> tuple[AlarmCount, ...]:
    """The registry's raises (conditions) and occurrences (events) per code since start."""
    if monitor is None:
        return ()
    counts: Mapping[str, int] = monitor.registry.counts
    return tuple(AlarmCount(code=code, count=n) for code, n in sorted(counts.items()) if n > 0)


# The contract's bounds on HealthCounters.outcomes / lane_events (maxItems).
OUTCOMES_MAX, LANE_EVENTS_MAX = 128, 512


_REASONS = frozenset(r.value for r in Reason)


def lane_counts(counters: Mapping[str, int]) -> tuple[tuple[LaneCount, ...], tuple[LaneCount, ...]]:
    """The lane machine's counts since start, split into the vehicles' outcomes (a
    :class:`~laned.lane.outcomes.Reason`: charged, low_balance, blacklisted …) and its other
    events (frame_damaged, b5_timeout …), each by code. Within the contract's bounds: should
    there ever be more codes, the most frequent are kept."""
    outcomes: list[LaneCount] = []
    events: list[LaneCount] = []
    for code, n in counters.items():
        if n > 0:
            (outcomes if str(code) in _REASONS else events).append(LaneCount(code=str(code), count=n))

    def bounded(counts: list[LaneCount], limit: int) -> tuple[LaneCount, ...]:
        kept = sorted(counts, key=lambda c: -c.count)[:limit]
        return tuple(sorted(kept, key=lambda c: c.code))

    return bounded(outcomes, OUTCOMES_MAX), bounded(events, LANE_EVENTS_MAX)


def health_snapshot(lane_id: str, monitor: Any, lane: LaneView, at: dt.datetime, outbox: OutboxState, *,
                    uptime_s: int, counters: HealthCounters | None = None) -> HealthSnapshot:
    """A ``health`` message: the latest checks (a :class:`RecordingChecker`'s), the active
    alarms, what closes ETC, the outbox and the uplink's counters. ``monitor`` None: no
    checks, no alarms."""
    results = monitor.checker.latest if monitor is not None and isinstance(monitor.checker,
                                                                             RecordingChecker) else []
    alarms = monitor.registry.active() if monitor is not None else []
    closed = lane.closed_by()
    return HealthSnapshot(
        lane_id=lane_id, at=at, overall=overall(results), etc_open=lane.etc_open(),
        checks=tuple(Check.from_result(r) for r in results),
        alarms=tuple(ActiveAlarm.from_alarm(a) for a in alarms),
        closed_by=tuple(ClosedBy(device=d, reason=why) for d, why in sorted(closed.items())) or None,
        outbox=outbox, software_version=laned.__version__, uptime_s=uptime_s, counters=counters)


# -- alarm changes that waited for the link -------------------------------------------------------

@dataclass(frozen=True, slots=True)
class AlarmToSend:
    """One alarm change to publish: with what is left of the channel's message expiry
    (None: the contract's, or none), and how many earlier changes of its code were left out."""

    change: AlarmChange
    expiry_s: int | None
    left_out: int = 0

    @property
    def note(self) -> str:
        if not self.left_out:
            return ""
        return (f"the lane left out {self.left_out} earlier change{'s' if self.left_out > 1 else ''} of "
                f"{self.change.code} made while it could not publish (too many to send)")


@dataclass(frozen=True, slots=True)
class AlarmReplay:
    """What :func:`alarm_replay` decided: the changes to publish, in order, and what it left
    out (``expired``: older than the channel's expiry; ``collapsed``: superseded by a later
    change of the same code because there were more than the limit)."""

    send: tuple[AlarmToSend, ...]
    expired: int = 0
    collapsed: int = 0


def alarm_replay(changes: Sequence[AlarmChange], now: float, *, expiry_s: int | None, limit: int) -> AlarmReplay:
    """The alarm changes (oldest first, monotonic ``at``) that waited to be published —
    a second while connected, the whole outage after a reconnect — as they go up:

    * each with what is left of the channel's ``expiry_s``: one that waited longer than that
      is not sent at all, as the broker would have dropped it had it been queued there;
    * all of them, in order, if at most ``limit``; else only the latest change of each code
      (the centre learns how each alarm stands, and its ``cause`` says how many were left
      out), in the order of those changes — so an alarm storm in a long outage does not
      become a storm of messages at the reconnect.
    """
    if limit < 1:
        raise ValueError(f"the alarm replay limit is {limit!r}, expected 1 or more changes")
    fresh: list[tuple[AlarmChange, int | None]] = []
    expired = 0
    for change in changes:
        if expiry_s is None:
            fresh.append((change, None))
            continue
        left = expiry_s - int(max(0.0, now - change.at))
        if left <= 0:
            expired += 1
        else:
            fresh.append((change, left))
    if len(fresh) <= limit:
        return AlarmReplay(tuple(AlarmToSend(c, left) for c, left in fresh), expired=expired)
    per_code = Counter(c.code for c, _ in fresh)
    latest = {c.code: i for i, (c, _) in enumerate(fresh)}  # the index of each code's last change
    send = tuple(AlarmToSend(c, left, left_out=per_code[c.code] - 1)
                 for i, (c, left) in enumerate(fresh) if latest[c.code] == i)
    return AlarmReplay(send, expired=expired, collapsed=len(fresh) - len(send))


def backlog_alarms(level: int | None, detail: str) -> list[RaiseAlarm | ClearAlarm]:
    """The ``uplink_backlog_*`` alarms for a backlog level (None: below them all): one level
    at a time, the highest reached raised, the others cleared."""
    # The codes spelt out: tests/test_alarms.py finds every code laned raises in the source.
    return [RaiseAlarm("uplink_backlog_50", detail) if level == 50 else ClearAlarm("uplink_backlog_50", detail),
            RaiseAlarm("uplink_backlog_80", detail) if level == 80 else ClearAlarm("uplink_backlog_80", detail),
            RaiseAlarm("uplink_backlog_95", detail) if level == 95 else ClearAlarm("uplink_backlog_95", detail)]
