"""Transport faults of the emulated RSU: which frames get them, and what they do to bytes.

Faults come from three places, merged per frame: the OBU's scenario (``faults`` by frame
name), one-shot injections (:meth:`FaultPlan.inject`: "corrupt the next B3"), and
probabilities drawn from a seeded RNG (:meth:`FaultPlan.set_probability`), so a random
fault run is reproducible from its seed.

Frame names: ``B0`` … ``B5``, ``HB`` for a heartbeat (B2 ``00000000 80`` or gb2019tcp B1).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from laned.sim.rsu_scenario import Fault

DEFAULT_DELAY_S = 0.2
DEFAULT_SPLIT_GAP_S = 0.02
DEFAULT_PIECES = 3


@dataclass(frozen=True, slots=True)
class FaultSpec:
    """One fault on one frame. ``delay`` is the pause (DELAY) or the gap between pieces
    (SPLIT); ``noise`` the bytes NOISE writes (None: 8 random bytes that are never FF,
    so the noise cannot look like a frame start)."""

    fault: Fault
    delay: float | None = None
    pieces: int = DEFAULT_PIECES
    noise: bytes | None = None


@dataclass
class _Pending:
    spec: FaultSpec
    frame: str | None  # None: the next frame of any kind
    count: int


class FaultPlan:
    def __init__(self, seed: int = 0) -> None:
        self.rng = random.Random(seed)
        self._pending: list[_Pending] = []
        self._probabilities: list[tuple[FaultSpec, float, frozenset[str] | None]] = []

    def inject(self, spec: FaultSpec, frame: str | None = None, count: int = 1) -> None:
        """Apply ``spec`` to the next ``count`` frames named ``frame`` (any frame if None)."""
        if count < 1:
            raise ValueError("count must be >= 1")
        self._pending.append(_Pending(spec, frame.upper() if frame else None, count))

    def set_probability(self, spec: FaultSpec, probability: float, frames: set[str] | None = None) -> None:
        """Apply ``spec`` to each frame (of ``frames``, or any) with ``probability``."""
        if not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be within 0..1")
        self._probabilities = [p for p in self._probabilities if p[0].fault is not spec.fault]
        if probability:
            self._probabilities.append((spec, probability, frozenset(f.upper() for f in frames) if frames else None))

    def clear(self) -> None:
        self._pending.clear()
        self._probabilities.clear()

    @property
    def pending(self) -> int:
        return sum(p.count for p in self._pending)

    def draw(self, frame: str) -> list[FaultSpec]:
        """The faults for the frame about to be sent (consumes one-shot injections)."""
        out: list[FaultSpec] = []
        for p in list(self._pending):
            if p.frame is None or p.frame == frame:
                out.append(p.spec)
                p.count -= 1
                if p.count == 0:
                    self._pending.remove(p)
        for spec, prob, frames in self._probabilities:
            if (frames is None or frame in frames) and self.rng.random() < prob:
                out.append(spec)
        return out


def corrupt(wire: bytes, envelope: str) -> bytes:
    """Flip one bit of a DATA byte, so the check byte fails but the framing holds.

    The byte chosen is neither FF nor FE nor the second byte of an escape pair, and stays
    below FE after the flip: the frame keeps its length and boundaries, only BCC/CRC fail.
    """
    first = 4 if envelope == "classic" else (5 if envelope == "jinyi" else 9)  # after TYPE
    last = len(wire) - (3 if envelope == "classic" else 2)  # before BCC+FF / CRC
    candidates = [i for i in range(first, last)
                  if wire[i] < 0xFE and wire[i - 1] != 0xFE and (wire[i] ^ 0x01) < 0xFE]
    if not candidates:  # a frame with no DATA: flip the TYPE byte instead
        candidates = [i for i in range(2, len(wire) - 1) if wire[i] < 0xFE and wire[i - 1] != 0xFE]
    i = candidates[len(candidates) // 2]
    return wire[:i] + bytes((wire[i] ^ 0x01,)) + wire[i + 1:]


def noise_bytes(spec: FaultSpec, rng: random.Random) -> bytes:
    if spec.noise is not None:
        return spec.noise
    return bytes(rng.randrange(0, 0xFF) for _ in range(8))


def split(wire: bytes, pieces: int) -> list[bytes]:
    pieces = max(2, min(pieces, len(wire)))
    step = -(-len(wire) // pieces)
    return [wire[i:i + step] for i in range(0, len(wire), step)]


def plan_writes(wire: bytes, specs: list[FaultSpec], envelope: str, rng: random.Random) -> list[tuple[float, bytes]]:
    """(pause before, bytes) writes that put ``wire`` on the line with ``specs`` applied.

    Empty when the frame is dropped. A duplicated frame appears twice.
    """
    faults = {s.fault: s for s in specs}
    if Fault.DROP in faults:
        return []
    if Fault.CORRUPT in faults:
        wire = corrupt(wire, envelope)
    writes: list[tuple[float, bytes]] = []
    pause = 0.0
    if Fault.DELAY in faults:
        d = faults[Fault.DELAY].delay
        pause = DEFAULT_DELAY_S if d is None else d
    if Fault.NOISE in faults:
        writes.append((pause, noise_bytes(faults[Fault.NOISE], rng)))
        pause = 0.0
    if Fault.SPLIT in faults:
        s = faults[Fault.SPLIT]
        gap = DEFAULT_SPLIT_GAP_S if s.delay is None else s.delay
        for n, piece in enumerate(split(wire, s.pieces)):
            writes.append((pause if n == 0 else gap, piece))
    else:
        writes.append((pause, wire))
    if Fault.DUPLICATE in faults:
        writes.append((0.0, wire))  # the whole frame again, right behind the first
    return writes
