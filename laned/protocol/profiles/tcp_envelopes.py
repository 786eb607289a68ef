"""Profiles ``jinyi`` and ``gb2019tcp``: the two length+CRC envelopes over TCP.

Source: RSU_PROTOCOL.md (2), ``rsu_controller/service/jinyi/`` and a public summary of the
2019 TCP spec. Only the frame type and, for B2–B5 and C1/C2/C6, the OBU id that follows
the type byte are confirmed; the rest of each payload is kept raw as ``data`` until a
layout is confirmed against a real RSU.
"""

from __future__ import annotations

from laned.protocol.fields import Hex, Rest
from laned.protocol.messages import Message, Sender, message, wire
from laned.protocol.profiles.base import Profile
from laned.protocol.profiles.common import ERROR_CODES, OPAQUE_TYPES


def _obu_frame(type_code: int, sender: Sender, profile: str) -> type[Message]:
    @message(type_code, sender, profile=profile)
    class ObuFrame(Message):
        obu_id: bytes = wire(Hex(4))
        data: bytes = wire(Rest)

    ObuFrame.__name__ = ObuFrame.__qualname__ = f"ObuFrame{type_code:02X}"
    return ObuFrame


_OBU_TYPES = {0xB2: Sender.RSU, 0xB3: Sender.RSU, 0xB4: Sender.RSU, 0xB5: Sender.RSU,
              0xC1: Sender.PC, 0xC2: Sender.PC, 0xC6: Sender.PC}
# Known frame types whose payload stays raw entirely (C4 on/off, B0/C0 init, …).
_RAW_TYPES = frozenset({0xB0, 0xC0, 0xC4, 0xC8}) | OPAQUE_TYPES


def _profile(name: str, description: str) -> Profile:
    return Profile(
        name=name,
        envelope=name,
        escaping=False,
        messages={t: _obu_frame(t, s, name) for t, s in _OBU_TYPES.items()},
        opaque=_RAW_TYPES,
        error_codes=ERROR_CODES,
        description=description,
    )


JINYI = _profile("jinyi", "Jinyi RSUs over TCP: FF FF | LEN16 | DATA | CRC-16/X-25")
GB2019TCP = _profile("gb2019tcp", "newer RSUs over TCP: FF FF | VER | SEQ | LEN32 | DATA | CRC-16/X-25")
