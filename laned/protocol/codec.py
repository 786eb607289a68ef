"""Frames ⇄ typed messages for one profile: the streaming decoder the RSU link feeds.

``FrameDecoder`` is sans-IO (h11 style): ``feed(bytes)`` returns what became complete,
``finish()`` what was left at end of input. Results are :class:`Decoded` frames and
:class:`ProtocolError` values, in stream order; nothing is raised for bad input.
"""

from __future__ import annotations

from collections import Counter
from typing import NamedTuple

from laned.protocol.errors import ProtocolError
from laned.protocol.framing import Deframer, RawFrame, encode_frame, make_deframer
from laned.protocol.messages import EmptyReply, Message, Sender, decode_payload
from laned.protocol.profiles import Profile
from laned.protocol.rsctl import is_pc_rsctl, is_rsu_rsctl


class Decoded(NamedTuple):
    """A decoded frame: the message and what the envelope said about it (immutable)."""

    message: Message
    raw: RawFrame

    @property
    def rsctl(self) -> int | None:
        return self.raw.rsctl

    @property
    def seq(self) -> int | None:
        return self.raw.seq

    @property
    def offset(self) -> int:
        return self.raw.offset


class FrameDecoder:
    def __init__(self, profile: Profile, *, escaping: bool | None = None) -> None:
        self.profile = profile
        self.deframer: Deframer = make_deframer(profile.envelope, escaping=profile.escaping if escaping is None else escaping)
        self.errors: Counter[str] = Counter()  # message-level errors (layout, field, unknown type)
        self.rsctl_anomalies = 0
        self._messages = dict(profile.messages)

    @property
    def drops(self) -> Counter[str]:
        """Every dropped frame by reason, framing and message level together."""
        return self.deframer.drops + self.errors

    def feed(self, data: bytes) -> list[Decoded | ProtocolError]:
        return [self._decode(e) for e in self.deframer.feed(data)]

    def finish(self) -> list[Decoded | ProtocolError]:
        return [self._decode(e) for e in self.deframer.finish()]

    def _decode(self, event: RawFrame | ProtocolError) -> Decoded | ProtocolError:
        if isinstance(event, ProtocolError):
            return event
        payload = event.payload
        try:
            cls = self._messages.get(payload[0]) if payload else None
            if cls is not None:
                msg = cls.LAYOUT.parse(payload[1:])
            else:
                msg = decode_payload(self._messages, payload, self.profile.opaque)  # type: ignore[arg-type]
        except ProtocolError as err:
            err.offset = event.offset
            err.data = event.wire
            self.errors[err.reason] += 1
            return err
        if isinstance(msg, EmptyReply) and event.rsctl is not None:
            msg = EmptyReply(origin=Sender.RSU if is_rsu_rsctl(event.rsctl) else Sender.PC)
        if event.rsctl is not None:
            ok = is_rsu_rsctl(event.rsctl) if msg.sender is Sender.RSU else is_pc_rsctl(event.rsctl)
            if not ok:
                self.rsctl_anomalies += 1
        return Decoded(msg, event)


def decode_message(profile: Profile, payload: bytes) -> Message:
    """TYPE + DATA → message (raises :class:`ProtocolError`)."""
    return decode_payload(profile.messages, payload, profile.opaque)  # type: ignore[arg-type]


def encode_message(profile: Profile, msg: Message, *, rsctl: int | None = None, seq: int | None = None) -> bytes:
    """Message → bytes on the wire in the profile's envelope."""
    return encode_frame(profile.envelope, msg.encode(), rsctl=rsctl, seq=seq, escaping=profile.escaping)
