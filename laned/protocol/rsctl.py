"""RSCTL rules of the classic envelope (RSU_PROTOCOL.md, document (3)).

RSU frames carry ``X8`` (X = 0–7, 9 for the first frame after power-up); PC frames carry
``8X``. A PC frame that answers an RSU frame uses that frame's RSCTL with its nibbles
swapped (``48`` → ``84``); frames the PC starts use a free-running ``8X``. Real firmware
(1) never checks the PC's RSCTL and real lane code (2) does not echo, so laned sends the
swapped value, accepts anything, and counts anomalies.

The same object serves the ``gb2019tcp`` SEQ byte: RSU ``0X``, lane ``X0``.
"""

from __future__ import annotations


def reply_rsctl(rsu_rsctl: int) -> int:
    """The RSCTL of the PC frame that answers an RSU frame."""
    return ((rsu_rsctl & 0x0F) << 4) | (rsu_rsctl >> 4)


def is_rsu_rsctl(rsctl: int) -> bool:
    return rsctl & 0x0F == 0x08 and rsctl >> 4 in (0, 1, 2, 3, 4, 5, 6, 7, 9)


def is_pc_rsctl(rsctl: int) -> bool:
    return rsctl >> 4 == 0x08


class LaneSequence:
    """Free-running ``8X`` for frames the lane starts (C0, C4…)."""

    def __init__(self) -> None:
        self._n = 0

    def next(self) -> int:
        value = 0x80 | self._n
        self._n = (self._n + 1) & 0x07
        return value
