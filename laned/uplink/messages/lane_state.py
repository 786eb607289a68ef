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
    def from_change(cls, change: AlarmChange, lane_id: str) -> AlarmMsg:
        a = change.alarm
        return cls(lane_id=lane_id, change=change.change, code=a.code, kind=a.kind, severity=a.severity,
                   raised_at=a.raised_at, at=change.wall, count=a.count, total=a.total, zh=change.zh, en=change.en,
                   detail=a.detail or None, acknowledged=a.acknowledged, cause=change.cause or None)
