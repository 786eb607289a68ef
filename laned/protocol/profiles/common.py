"""Frames and codes that the classic profiles share."""

from __future__ import annotations

from laned.protocol.fields import U8, Hex
from laned.protocol.messages import Message, Sender, message, wire


@message(0xC2, Sender.PC)
class Stop(Message):
    obu_id: bytes = wire(Hex(4))
    stop_type: int = wire(U8)  # 1 search again, 2 resend the current frame


STOP_SEARCH_AGAIN = 1
STOP_RESEND = 2


@message(0xC4, Sender.PC)
class Switch(Message):
    control_type: int = wire(U8)  # 0 off, 1 on (written 4C in sources (1) and (3))


# Frame types the sources name but whose layouts are not confirmed (RSU_PROTOCOL.md,
# "Frame types"): B1 heartbeat (gb2019tcp), B9 pass amounts, BD/BF PSAM authorisation,
# C7 exception handling, C9 read pass amounts, CD/CF PSAM authorisation.
OPAQUE_TYPES = frozenset({0xB1, 0xB9, 0xBD, 0xBF, 0xC7, 0xC9, 0xCD, 0xCF})

# RSU_PROTOCOL.md, profile network2019 (source (1)); the national document uses the
# same B5 codes. Key: (frame type, code).
ERROR_CODES = {
    (0xB2, 0x80): "heartbeat: no OBU in range",
    (0xB3, 0x04): "no DSRC answer reading the vehicle file",
    (0xB3, 0x06): "vehicle file decryption failed",
    (0xB3, 0x2E): "PSAM not authorised",
    (0xB4, 0x08): "no DSRC answer reading the card",
    (0xB4, 0x09): "card file 0019 read failed",
    (0xB4, 0x20): "EF04 read failed",
    (0xB4, 0x21): "EF04 read failed",
    (0xB5, 0x10): "no card or no answer at purchase init",
    (0xB5, 0x11): "purchase init failed",
    (0xB5, 0x13): "PSAM MAC1 failed",
    (0xB5, 0x16): "no answer at purchase",
    (0xB5, 0x17): "purchase refused by the card",
    (0xB5, 0x19): "MAC2 check failed",
    (0xB5, 0x22): "EF04 write failed",
    (0xB5, 0x23): "EF04 write failed",
    (0xB5, 0x35): "TAC re-fetch got no answer",
    (0xB5, 0x36): "TAC re-fetch failed",
    (0xB0, 0x01): "PSAM reset failed",
    (0xB0, 0x03): "PSAM read failed",
}

__all__ = ["ERROR_CODES", "OPAQUE_TYPES", "STOP_RESEND", "STOP_SEARCH_AGAIN", "Stop", "Switch"]
