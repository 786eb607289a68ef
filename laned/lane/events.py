"""What goes into the lane machine (events) and what comes out of it (actions).

Every event reaches the machine through one ordered stream (the executor's inbox), so
an event is a plain frozen value: frames, drops, link and device status, input samples,
timer ticks and journal confirmations alike.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from laned.lane.barrier import BarrierCommand
from laned.lane.display import DisplayContent
from laned.lane.signals import InputSample, Light
from laned.protocol import Message

# -- events ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class FrameIn:
    message: Message
    rsctl: int | None = None


@dataclass(frozen=True, slots=True)
class InputIn:
    sample: InputSample


@dataclass(frozen=True, slots=True)
class Tick:
    pass


@dataclass(frozen=True, slots=True)
class IntentRecorded:
    tx_id: str
    seq: int


@dataclass(frozen=True, slots=True)
class IntentFailed:
    tx_id: str
    error: str


@dataclass(frozen=True, slots=True)
class ChargeRecorded:
    tx_id: str


@dataclass(frozen=True, slots=True)
class ChargeRecordFailed:
    tx_id: str
    error: str


@dataclass(frozen=True, slots=True)
class LinkUp:
    """The RSU link (re)connected: initialise the RSU with C0."""


@dataclass(frozen=True, slots=True)
class LinkLost:
    """The RSU link dropped (unplugged, silent): an in-flight transaction fails safely."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class FrameLost:
    """The link dropped a damaged frame (bad check byte, bad escape …): during a
    transaction it was probably the RSU frame the lane is waiting for."""

    reason: str = ""


class Device(enum.StrEnum):
    """What the lane depends on to take an ETC payment; each one's loss is a degraded mode."""

    RSU = "rsu"
    IO = "io"  # barrier, loops, light (Modbus IO module or GPIO)
    DISPLAY = "display"
    JOURNAL = "journal"  # its last write went through
    DISK = "disk"  # free space under the journal above the threshold
    FEES = "fees"  # a fee table present and in force
    STATUS_LIST = "status_list"  # a fresh status list, where lists.on_stale = "close_etc" (freeze attack)
    OPERATOR = "operator"  # closed on purpose (a command from the centre or the booth)


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """A device or resource became available or unavailable to the lane. ``detail`` says
    why, in words for the field engineer (it reaches the log, the alarm and the journal)."""

    device: Device
    online: bool
    detail: str = ""


@dataclass(frozen=True, slots=True)
class SendFailed:
    """A frame the machine asked for did not reach the RSU (no link, write error, buffer
    full): the transaction it belongs to cannot go on as if it had."""

    type_name: str
    error: str


@dataclass(frozen=True, slots=True)
class OperatorRaise:
    """An operator lets one vehicle out (the centre's signed ``raise_barrier``): the arm is
    raised as for a payment and lowered by the interlock once the vehicle has passed (or
    after the passage timeout). There is no event that lowers the arm."""

    operator: str
    reason: str


@dataclass(frozen=True, slots=True)
class OperatorMessage:
    """Text for the fee display (the centre's signed ``show_message``), shown for
    ``duration_s`` unless a vehicle's outcome replaces it sooner; then what was shown before."""

    line1: str
    line2: str
    duration_s: float


Event = (FrameIn | InputIn | Tick | IntentRecorded | IntentFailed | ChargeRecorded | ChargeRecordFailed | LinkUp
         | LinkLost | FrameLost | DeviceStatus | SendFailed | OperatorRaise | OperatorMessage)


# -- actions --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Send:
    message: Message
    reply_to: int | None = None  # RSCTL of the RSU frame answered; None = lane-initiated


@dataclass(frozen=True, slots=True)
class Show:
    content: DisplayContent


@dataclass(frozen=True, slots=True)
class MoveBarrier:
    command: BarrierCommand


@dataclass(frozen=True, slots=True)
class SetLight:
    light: Light


@dataclass(frozen=True, slots=True)
class RaiseAlarm:
    code: str
    detail: str


@dataclass(frozen=True, slots=True)
class ClearAlarm:
    code: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class JournalIntent:
    """Write the intent durably, then feed back IntentRecorded (or IntentFailed)."""

    tx_id: str
    record: dict[str, Any]


@dataclass(frozen=True, slots=True)
class JournalCharged:
    """Write the B5 result durably, then feed back ChargeRecorded (or ChargeRecordFailed)."""

    tx_id: str
    seq: int
    result: dict[str, Any]
    entry: bool = False


@dataclass(frozen=True, slots=True)
class JournalResolved:
    """A re-fetched B5 (C8) proves an unknown charge went through: settle it as charged,
    then feed back ChargeRecorded (or ChargeRecordFailed)."""

    tx_id: str
    seq: int
    result: dict[str, Any]


@dataclass(frozen=True, slots=True)
class JournalUnknown:
    tx_id: str
    seq: int
    reason: str


@dataclass(frozen=True, slots=True)
class JournalNotCharged:
    """The B5 error came before the card was asked to debit: the intent ends as not charged."""

    tx_id: str
    seq: int
    reason: str


@dataclass(frozen=True, slots=True)
class JournalRefusal:
    tx_id: str
    record: dict[str, Any]


@dataclass(frozen=True, slots=True)
class JournalEvent:
    kind: str
    record: dict[str, Any]


Action = (Send | Show | MoveBarrier | SetLight | RaiseAlarm | ClearAlarm | JournalIntent | JournalCharged
          | JournalResolved | JournalUnknown | JournalNotCharged | JournalRefusal | JournalEvent)


