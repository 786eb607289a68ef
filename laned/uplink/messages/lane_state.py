"""The lane's state, health and alarms: the retained lane state and the broker's last will
(topic ``state``), the periodic health snapshot (``health``), alarms raised and cleared (``alarm``)."""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from typing import ClassVar

from laned.health.alarms import Alarm as RegistryAlarm
from laned.health.alarms import AlarmChange, AlarmKind, Change, Severity
from laned.health.checks import CheckResult, CheckStatus
from laned.lane.events import Device
from laned.uplink.messages.codec import UplinkMessage

# -- codes ----------------------------------------------------------------------------------------


class LaneStatus(enum.StrEnum):
    ONLINE = "online"
    DEGRADED = "degraded"  # connected, ETC closed
    OFFLINE = "offline"


# -- messages --------------------------------------------------------------------------------------

@dataclass(frozen=True, kw_only=True)
class ClosedBy:
    device: Device
    reason: str


LAST_WILL_REASON = "connection lost (last will)"


@dataclass(frozen=True, kw_only=True)
class LaneState(UplinkMessage):
    """Retained lane state (topic ``state``); :meth:`last_will` is the broker's copy."""

    MESSAGE: ClassVar[str] = "LaneState"

    lane_id: str
    state: LaneStatus
    reason: str | None = None
    at: dt.datetime | None = None
    etc_open: bool | None = None
    closed_by: tuple[ClosedBy, ...] | None = None
    software_version: str | None = None

    @classmethod
    def last_will(cls, lane_id: str) -> LaneState:
        """The will registered at CONNECT: no time (its text is fixed before it is needed)."""
        return cls(lane_id=lane_id, state=LaneStatus.OFFLINE, reason=LAST_WILL_REASON)


@dataclass(frozen=True, kw_only=True)
class Check:
    name: str
    status: CheckStatus
    detail: str
    alarm: str | None = None
    value: float | None = None

    @classmethod
    def from_result(cls, result: CheckResult) -> Check:
        return cls(name=result.name, status=result.status, detail=result.detail, alarm=result.alarm,
                   value=None if result.value is None else float(result.value))


@dataclass(frozen=True, kw_only=True)
class ActiveAlarm:
    code: str
    severity: Severity
    raised_at: dt.datetime
    count: int
    detail: str | None = None

    @classmethod
    def from_alarm(cls, alarm: RegistryAlarm) -> ActiveAlarm:
        return cls(code=alarm.code, severity=alarm.severity, raised_at=alarm.raised_at, count=alarm.count,
                   detail=alarm.detail or None)


@dataclass(frozen=True, kw_only=True)
class OutboxState:
    pending: int  # journal rows the centre has not acknowledged
    oldest_pending_seq: int | None = None
    last_acked_seq: int | None = None


@dataclass(frozen=True, kw_only=True)
class AlarmCount:
    code: str
    count: int  # raises of a condition, occurrences of an event, since laned started


@dataclass(frozen=True, kw_only=True)
class LaneCount:
    code: str
    count: int  # since laned started


@dataclass(frozen=True, kw_only=True)
class HealthCounters:
    """What the uplink has counted since laned started (the health snapshot's ``counters``):
    in-memory counts, so they restart from 0 with laned; the centre compares snapshots."""

    tx_published: int  # transaction rows handed to the broker, retransmissions included
    tx_retransmissions: int  # of those, rows published again because their ack was overdue
    results_published: int  # reconciliation results handed to the broker, retransmissions included
    link_sessions: int  # connections to the broker made
    link_lost: int  # connections lost (not closed by laned)
    received_dropped: int  # centre messages dropped because they did not conform to the contract
    publish_refused: int  # publishes the broker refused (PUBACK reason code 0x80 or above)
    alarms: tuple[AlarmCount, ...] = ()  # per alarm code, the codes raised at least once
    outcomes: tuple[LaneCount, ...] = ()  # vehicles by the lane's outcome reason (charged, low_balance …)
    lane_events: tuple[LaneCount, ...] = ()  # the lane machine's other counts (frame_damaged, b5_timeout …)


@dataclass(frozen=True, kw_only=True)
class HealthSnapshot(UplinkMessage):
    """Periodic health (topic ``health``)."""

    MESSAGE: ClassVar[str] = "HealthSnapshot"

    lane_id: str
    at: dt.datetime
    overall: CheckStatus
    etc_open: bool
    checks: tuple[Check, ...] = ()
    alarms: tuple[ActiveAlarm, ...] = ()
    closed_by: tuple[ClosedBy, ...] | None = None
    outbox: OutboxState | None = None
    software_version: str | None = None
    uptime_s: int | None = None
    counters: HealthCounters | None = None


@dataclass(frozen=True, kw_only=True)
class AlarmMsg(UplinkMessage):
    """An alarm raised or cleared (topic ``alarm``)."""

    MESSAGE: ClassVar[str] = "Alarm"

    lane_id: str
    change: Change
    code: str
    kind: AlarmKind
    severity: Severity
    raised_at: dt.datetime
    at: dt.datetime
    count: int
    total: int
    zh: str
    en: str
    detail: str | None = None
    acknowledged: bool | None = None
    cause: str | None = None

    @classmethod
    def from_change(cls, change: AlarmChange, lane_id: str, *, note: str = "") -> AlarmMsg:
        """The message of one registry change; ``note`` is added to its cause (what the lane
        left out before it, when the changes of a long outage were too many to send)."""
        a = change.alarm
        cause = "; ".join(part for part in (change.cause, note) if part)
        return cls(lane_id=lane_id, change=change.change, code=a.code, kind=a.kind, severity=a.severity,
                   raised_at=a.raised_at, at=change.wall, count=a.count, total=a.total, zh=change.zh, en=change.en,
                   detail=a.detail or None, acknowledged=a.acknowledged, cause=cause or None)
