"""Human meanings of message fields, for the decode tool and for logs.

Kept apart from the layouts so that what an engineer reads ("12.34 元", "card absent,
OBU removed", "purchase refused by the card") is decided in one place.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from laned.protocol.errors import ProtocolError
from laned.protocol.fields import to_jsonable
from laned.protocol.messages import Message
from laned.protocol.profiles import Profile
from laned.protocol.records import (
    PLATE_COLOUR_NAMES,
    CardIssueFile,
    CardType,
    StationRecord,
    vehicle_class_name,
)

TYPE_NAMES = {
    0xB0: "RSU status", 0xB1: "heartbeat", 0xB2: "OBU information", 0xB3: "vehicle information",
    0xB4: "card information", 0xB5: "transaction result", 0xB9: "pass amounts",
    0xBD: "PSAM authorisation", 0xBF: "PSAM authorisation",
    0xC0: "initialise", 0xC1: "continue", 0xC2: "stop", 0xC4: "RSU on/off", 0xC6: "charge / write entry",
    0xC7: "exception handling", 0xC8: "re-fetch TAC", 0xC9: "read pass amounts",
    0xCD: "PSAM authorisation", 0xCF: "PSAM authorisation",
}

_MONEY = {"card_rest_money", "consume_money", "card_balance"}
_TRANS_TYPE_B5 = {0x09: "composite", 0x06: "stored-value traditional", 0x16: "credit traditional"}


def type_name(msg: Message) -> str:
    if msg.frame_type < 0:
        return "empty reply"
    return TYPE_NAMES.get(msg.frame_type, "frame")


def yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d} 元"


def meaning(profile: Profile, msg: Message, name: str, value: Any) -> str:
    """A short human meaning of one field, or "" when the value speaks for itself."""
    if value is None:
        return "no date" if name.endswith(("date", "time", "_expire", "_issue")) else ""
    if name in ("error_code", "rsu_status"):
        return profile.error_meaning(msg.frame_type, value)
    if name in _MONEY:
        return yuan(value)
    if name == "obu_status":
        flags = sorted(profile.obu_flags(value))
        return ", ".join(flags) if flags else "OK: card present, CPU card, contact, not locked or removed"
    if name == "vehicle_class":
        return vehicle_class_name(value)
    if name == "plate_colour":
        return PLATE_COLOUR_NAMES.get(value, "unknown colour")
    if name == "card_type" and value in CardType._value2member_map_:
        return CardType(value).name.lower().replace("_", "-")
    if name == "trans_type" and msg.frame_type == 0xB5:
        return _TRANS_TYPE_B5.get(value, "")
    if name == "trans_type" and msg.frame_type == 0xB4:
        return {0x00: "traditional", 0x10: "composite"}.get(value, "")
    if name in ("unix_time", "wr_file_time") and value:
        return dt.datetime.fromtimestamp(value, dt.UTC).isoformat()
    if name == "stop_type":
        return {1: "search again", 2: "resend the current frame"}.get(value, "")
    if name == "control_type":
        return {0: "RSU off", 1: "RSU on"}.get(value, "")
    if name == "obu_id" and value in (b"\x00\x00\x00\x00", b"\xff\xff\xff\xff"):
        return "no OBU (heartbeat id)"
    return ""


def decoded_records(profile: Profile, msg: Message) -> dict[str, Any]:
    """Records and flags decoded from raw fields (0015, 0019, OBUStatus, vehicle file)."""
    out: dict[str, Any] = {}
    fields = msg.fields()
    status = fields.get("obu_status")
    if status is not None:
        out["obu_flags"] = sorted(profile.obu_flags(status))
    for name, cls, key in (("issuer_info", CardIssueFile, "card_file_0015"),
                           ("last_station", StationRecord, "station_record_0019")):
        raw = fields.get(name)
        if raw is not None:
            try:
                rec = cls.decode(raw)
            except ProtocolError as err:
                out[key] = {"error": err.detail}
            else:
                out[key] = {k: to_jsonable(getattr(rec, k)) for k in rec.__slots__ if k not in ("raw",)}
    if fields.get("vehicle_info") is not None:
        try:
            out["vehicle"] = {k: getattr(msg, k) for k in ("plate_number", "plate_colour", "vehicle_class",
                                                           "vehicle_user_type")}
        except ProtocolError as err:
            out["vehicle"] = {"error": err.detail}
    return out
