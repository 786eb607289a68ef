"""The RSU serial protocol, sans-IO: framing, typed messages, profiles.

No asyncio, no clocks, no I/O. Decoding raises (or, when streaming, returns) only
:class:`ProtocolError` subclasses.
"""

from laned.protocol.codec import Decoded, FrameDecoder, decode_message, encode_message
from laned.protocol.errors import (
    ChecksumError,
    EncodeError,
    EscapeError,
    FieldError,
    FrameTooLongError,
    HeaderError,
    LayoutError,
    ProtocolError,
    ShortFrameError,
    UnknownTypeError,
)
from laned.protocol.framing import RawFrame, encode_frame, make_deframer
from laned.protocol.messages import EmptyReply, Message, OpaqueMessage, Sender
from laned.protocol.profiles import PROFILES, ObuFlag, Profile, get_profile
from laned.protocol.rsctl import LaneSequence, reply_rsctl

__all__ = [
    "PROFILES", "ChecksumError", "Decoded", "EmptyReply", "EncodeError", "EscapeError", "FieldError",
    "FrameDecoder", "FrameTooLongError", "HeaderError", "LaneSequence", "LayoutError", "Message",
    "ObuFlag", "OpaqueMessage", "Profile", "ProtocolError", "RawFrame", "Sender", "ShortFrameError",
    "UnknownTypeError", "decode_message", "encode_frame", "encode_message", "get_profile", "make_deframer",
    "reply_rsctl",
]
