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


# RSCTL values by sender (laned.protocol.rsctl), as sets for the per-frame check.
_RSU_RSCTL = frozenset(v for v in range(256) if is_rsu_rsctl(v))
_PC_RSCTL = frozenset(v for v in range(256) if is_pc_rsctl(v))
_tuple_new = tuple.__new__  # Decoded(...) without the named tuple's Python __new__


class FrameDecoder:
    def __init__(self, profile: Profile, *, escaping: bool | None = None) -> None:
        self.profile = profile
        self.deframer: Deframer = make_deframer(profile.envelope, escaping=profile.escaping if escaping is None else escaping)
        self.errors: Counter[str] = Counter()  # message-level errors (layout, field, unknown type)
        self.rsctl_anomalies = 0
        self._messages = dict(profile.messages)
        self._parsers = {t: cls.LAYOUT.parse for t, cls in profile.messages.items()}
        self._rsctl_ok = {t: _RSU_RSCTL if cls.SENDER is Sender.RSU else _PC_RSCTL for t, cls in profile.messages.items()}

    @property
    def drops(self) -> Counter[str]:
        """Every dropped frame by reason, framing and message level together."""
        return self.deframer.drops + self.errors

    def feed(self, data: bytes) -> list[Decoded | ProtocolError]:
        events = self.deframer.feed(data)
        if len(events) == 1:  # the common case: one read, one frame
            return [self._decode(events[0])]
        return [self._decode(e) for e in events]

    def finish(self) -> list[Decoded | ProtocolError]:
        return [self._decode(e) for e in self.deframer.finish()]

    def _decode(self, event: RawFrame | ProtocolError) -> Decoded | ProtocolError:
        if event.__class__ is not RawFrame:
            return event  # type: ignore[return-value]  # a ProtocolError: mypy does not narrow `__class__ is`
        payload = event.payload
        parse = self._parsers.get(payload[0]) if payload else None
        try:
            if parse is not None:
                msg = parse(payload[1:])
            else:
                msg = decode_payload(self._messages, payload, self.profile.opaque)
        except ProtocolError as err:
            err.offset = event.offset
            err.data = event.wire
            self.errors[err.reason] += 1
            return err
        rsctl = event.rsctl
        if rsctl is not None:
            if parse is not None:
                ok = rsctl in self._rsctl_ok[payload[0]]
            else:
                if isinstance(msg, EmptyReply):
                    msg = EmptyReply(origin=Sender.RSU if is_rsu_rsctl(rsctl) else Sender.PC)
                ok = rsctl in (_RSU_RSCTL if msg.sender is Sender.RSU else _PC_RSCTL)
            if not ok:
                self.rsctl_anomalies += 1
        return _tuple_new(Decoded, (msg, event))


def decode_message(profile: Profile, payload: bytes) -> Message:
    """TYPE + DATA → message (raises :class:`ProtocolError`)."""
    return decode_payload(profile.messages, payload, profile.opaque)


def encode_message(profile: Profile, msg: Message, *, rsctl: int | None = None, seq: int | None = None) -> bytes:
    """Message → bytes on the wire in the profile's envelope."""
    return encode_frame(profile.envelope, msg.encode(), rsctl=rsctl, seq=seq, escaping=profile.escaping)
