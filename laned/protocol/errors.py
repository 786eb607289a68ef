"""The exception family of the protocol layer.

Decoding never raises anything but a :class:`ProtocolError`. Each error carries a short
``reason`` token (the same tokens as the shared test vectors: ``bcc``, ``crc``,
``escape``, ``short``, ``too_long`` …), the offending bytes and, for streams, the byte
offset where the bad frame started, so a field engineer can find it in a capture.
"""

from __future__ import annotations


class ProtocolError(Exception):
    reason: str = "protocol"

    def __init__(self, detail: str, data: bytes = b"", offset: int | None = None) -> None:
        self.detail = detail
        self.data = bytes(data)
        self.offset = offset
        super().__init__(detail)

    def __str__(self) -> str:
        where = f" at byte {self.offset}" if self.offset is not None else ""
        return f"{self.reason}{where}: {self.detail}"


class ChecksumError(ProtocolError):
    """The check byte (classic envelope, ``bcc``) or CRC (``crc``) does not match."""

    def __init__(self, detail: str, data: bytes = b"", offset: int | None = None, *, reason: str = "bcc") -> None:
        self.reason = reason
        super().__init__(detail, data, offset)


class EscapeError(ProtocolError):
    """``FE`` followed by anything but ``00`` or ``01``."""

    reason = "escape"


class ShortFrameError(ProtocolError):
    """A runt: fewer bytes than the envelope's minimum, or input ended mid-frame."""

    reason = "short"


class FrameTooLongError(ProtocolError):
    """A runaway frame: no end marker (or an absurd length) within the envelope's limit."""

    reason = "too_long"


class HeaderError(ProtocolError):
    """An envelope header field holds a value the envelope does not allow."""

    reason = "header"


class UnknownTypeError(ProtocolError):
    """The frame type byte is not one of the profile's frame types."""

    reason = "unknown_type"


class LayoutError(ProtocolError):
    """The frame's data does not fit the layout of its type in the profile."""

    reason = "layout"


class FieldError(ProtocolError):
    """A field holds bytes that cannot mean anything (bad BCD date, undecodable GBK)."""

    reason = "field"


class EncodeError(ProtocolError):
    """A message cannot be encoded: a field is missing or out of range."""

    reason = "encode"
