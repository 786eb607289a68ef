"""What a profile is: the data that says how one RSU model speaks.

A profile names its envelope, whether the envelope escapes, its message classes by frame
type, the frame types it knows only as opaque bytes, where the OBUStatus flags sit, and
what its error codes mean. The lane logic asks the profile, never the RSU model.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from laned.protocol.messages import Message, Sender


class ObuFlag(enum.StrEnum):
    """Named OBUStatus flags (RSU_PROTOCOL.md, "Records inside the frames")."""

    CARD_ABSENT = "card_absent"
    CONTACTLESS = "contactless"  # card interface; 0 = contact
    LOGIC_CARD = "logic_card"  # 0 = CPU card
    CARD_ERROR = "card_error"
    OBU_LOCKED = "obu_locked"
    OBU_REMOVED = "obu_removed"  # tamper: the OBU was taken off the windscreen
    BATTERY_LOW = "battery_low"


# Document (3), bit 7 to 0 of the first OBUStatus byte. Bit positions differ between OBU
# generations, so a profile may override them.
DEFAULT_OBU_STATUS_BITS: Mapping[ObuFlag, tuple[int, int]] = {
    ObuFlag.CARD_ABSENT: (0, 7),
    ObuFlag.CONTACTLESS: (0, 5),
    ObuFlag.LOGIC_CARD: (0, 4),
    ObuFlag.CARD_ERROR: (0, 3),
    ObuFlag.OBU_LOCKED: (0, 2),
    ObuFlag.OBU_REMOVED: (0, 1),
    ObuFlag.BATTERY_LOW: (0, 0),
}


@dataclass(frozen=True)
class Profile:
    name: str
    envelope: str
    messages: Mapping[int, type[Message]]
    escaping: bool = True
    opaque: frozenset[int] = frozenset()
    obu_status_bits: Mapping[ObuFlag, tuple[int, int]] = field(default_factory=lambda: dict(DEFAULT_OBU_STATUS_BITS))
    # (frame type, code) → meaning, for the decode tool and for logs.
    error_codes: Mapping[tuple[int, int], str] = field(default_factory=dict)
    description: str = ""

    def obu_flags(self, obu_status: bytes) -> frozenset[ObuFlag]:
        """The named flags set in a raw OBUStatus field."""
        return frozenset(
            flag for flag, (byte, bit) in self.obu_status_bits.items()
            if byte < len(obu_status) and obu_status[byte] >> bit & 1
        )

    def error_meaning(self, frame_type: int, code: int) -> str:
        if code == 0:
            return "ok"
        return self.error_codes.get((frame_type, code), "unknown error code")

    def is_heartbeat(self, msg: Message) -> bool:
        """The RSU saying it is alive with no OBU in range; never answered. The one
        definition (the link counts them, the lane ignores them): B2 with ErrorCode 0x80 or
        OBU id 00000000/FFFFFFFF (document (3), lane code (2)), or B1 (gb2019tcp)."""
        if msg.frame_type == 0xB1:
            return True
        return msg.frame_type == 0xB2 and (getattr(msg, "error_code", None) == 0x80
                                           or getattr(msg, "obu_id", None) in (bytes(4), b"\xff" * 4))

    def sender_of(self, frame_type: int) -> Sender:
        cls = self.messages.get(frame_type)
        if cls is not None:
            return cls.SENDER
        return Sender.RSU if frame_type >> 4 in (0xA, 0xB) else Sender.PC
