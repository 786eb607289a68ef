"""RSU framing: the three envelopes of RSU_PROTOCOL.md, sans-IO.

A *deframer* is fed byte chunks of any size (one byte, several frames, a frame split
anywhere) and returns, in stream order, every complete :class:`RawFrame` and every
:class:`~laned.protocol.errors.ProtocolError` for bytes it had to drop. Errors are
returned, not raised: a noisy line must never stop the link. Drops are counted by reason
in ``deframer.drops``.

Envelopes (RSU_PROTOCOL.md, "Envelopes"):

``classic``   ``FF FF | RSCTL | TYPE | DATA | BCC | FF``. BCC is the XOR of RSCTL..DATA on
              the unescaped bytes; escaping covers RSCTL..BCC (``FF``→``FE 01``,
              ``FE``→``FE 00``). An empty reply is ``FF FF | RSCTL | BCC | FF``.
``jinyi``     ``FF FF | LEN16 | DATA | CRC16``, CRC-16/X-25 over LEN..DATA, high byte first.
``gb2019tcp`` ``FF FF | VER | SEQ | LEN32 | DATA | CRC16``, CRC over VER..DATA.

Escaping is an option of every envelope: on by default for ``classic``, off for the two
TCP envelopes (their escaping is unverified, and one public TCP sample carries a raw
``FE``).
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable
from typing import NamedTuple

from laned.protocol.checks import bcc, crc16_x25
from laned.protocol.errors import (
    ChecksumError,
    EncodeError,
    EscapeError,
    FrameTooLongError,
    HeaderError,
    ProtocolError,
    ShortFrameError,
)


class Reserved(enum.IntEnum):
    """Bytes with a framing meaning in every envelope."""

    FLAG = 0xFF  # two start a frame; one alone ends a classic frame
    ESCAPE = 0xFE  # FE 01 stands for FF, FE 00 for FE


START = b"\xff\xff"

# RSU_PROTOCOL.md (1): the RSU buffers 250 bytes and sends at most 255 on the wire.
# Anything longer between FF FF and FF is a runaway, not a frame. 256 leaves one byte
# of slack for the lane's own encoder on the same limit.
CLASSIC_MAX_WIRE = 256
# The TCP envelopes carry an explicit length; a length beyond this is a desynchronised
# stream (or garbage), not a frame: the largest layout (B4 with EF04) stays well below.
LENGTH_MAX_PAYLOAD = 4096


def escape(body: bytes) -> bytes:
    """Escape bytes (FE first, so the FE that FF turns into is not escaped again)."""
    if b"\xfe" in body:
        body = body.replace(b"\xfe", b"\xfe\x00")
    if b"\xff" in body:
        body = body.replace(b"\xff", b"\xfe\x01")
    return body


def unescape(body: bytes, offset: int | None = None) -> bytes:
    """Undo :func:`escape`; raise :class:`EscapeError` for FE not followed by 00/01.

    Every FE of an escaped stream leads a pair and no pair's second byte is FE, so the
    pairs never overlap: counting them validates the whole body in C.
    """
    n = body.count(b"\xfe")
    if not n:
        return body
    pairs01 = body.count(b"\xfe\x01")
    if n != pairs01 + body.count(b"\xfe\x00"):
        at = _first_bad_escape(body)
        raise EscapeError(f"FE followed by {body[at + 1:at + 2].hex() or 'end of frame'} at body byte {at}", body, offset)
    if pairs01:
        body = body.replace(b"\xfe\x01", b"\xff")
    return body.replace(b"\xfe\x00", b"\xfe")


def _first_bad_escape(body: bytes) -> int:
    i = body.find(b"\xfe")
    while i >= 0:
        if i + 1 >= len(body) or body[i + 1] not in (0, 1):
            return i
        i = body.find(b"\xfe", i + 2)
    return -1  # pragma: no cover - only called when one exists


class RawFrame(NamedTuple):
    """One frame as the envelope delivered it.

    ``payload`` is TYPE + DATA, unescaped, without check bytes; it is empty for a classic
    empty reply. ``rsctl`` (classic) or ``seq`` (gb2019tcp) is set where the envelope has
    one. ``offset`` is the position of the frame's first byte in the stream. A named
    tuple: immutable like the messages, and built several times faster than a frozen
    dataclass on the path of every frame.
    """

    envelope: str
    payload: bytes
    wire: bytes
    offset: int = 0
    rsctl: int | None = None
    seq: int | None = None

    @property
    def frame_type(self) -> int | None:
        return self.payload[0] if self.payload else None


Event = RawFrame | ProtocolError

# ``RawFrame(...)`` goes through the named tuple's Python ``__new__``; the hot path builds
# the tuple directly, all six fields in order.
_tuple_new = tuple.__new__


class Deframer:
    """Base of the streaming decoders: a buffer, its absolute offset, drop counters."""

    envelope = ""

    def __init__(self, *, escaping: bool) -> None:
        self.escaping = escaping
        self._buf = bytearray()
        self._base = 0  # stream offset of _buf[0]
        self.drops: Counter[str] = Counter()
        self.frames = 0
        self.noise_bytes = 0
        self._run = -1  # inside a run of 3+ FF: how many of its FF are already discarded; else -1
        self._run_at = 0  # stream offset of the run's first FF

    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        self._buf += data
        out: list[Event] = []
        self._scan(out)
        return out

    def finish(self) -> list[Event]:
        """End of input: a frame still in progress is reported as ``short``."""
        out: list[Event] = []
        pending = self._pending_start()
        if self._run >= 0:  # the input ended inside a run of FF: no start after it
            self._end_run(out, self._run + len(self._buf), "the input ended")
        elif pending is not None:
            out.append(self._drop(ShortFrameError("input ended inside a frame", bytes(self._buf[pending:]), self._base + pending)))
        self._discard(len(self._buf))
        self._reset()
        return out

    def _drop(self, err: ProtocolError) -> ProtocolError:
        self.drops[err.reason] += 1
        return err

    def _discard(self, n: int, *, noise: int = 0) -> None:
        if n:
            del self._buf[:n]
            self._base += n
        self.noise_bytes += noise

    def _seek_start(self) -> bool:
        """Discard noise up to the next ``FF FF``; False if there is none yet."""
        buf = self._buf
        i = buf.find(START)
        if i < 0:
            # Keep a trailing FF: it may be the first half of a start.
            keep = 1 if buf and buf[-1] == 0xFF else 0
            self._discard(len(buf) - keep, noise=len(buf) - keep)
            return False
        self._discard(i, noise=i)
        return True

    def _skip_ff_run(self, out: list[Event]) -> bool:
        """Skip a run of FF (``FF FF FF`` at the head of the buffer) up to its last two FF.

        No frame starts ``FF FF FF``: the start of what follows is the run's *last* two
        FF, and the FF before them are strays. A single stray FF is noise (a transceiver
        switching on, a glitch); two or more are one ``short`` drop however long the run:
        one report per run, whatever the reads it came in. Returns True once the run has
        ended (the buffer then starts ``FF FF x``, x not FF), False if it goes on past the
        buffer: its last two FF are kept (they may start a frame), the others discarded
        and counted, so an endless run of FF takes no memory.
        """
        buf = self._buf
        if self._run < 0:
            self._run = 0
            self._run_at = self._base
        n = len(buf) - len(buf.lstrip(b"\xff"))  # FF at the head of the buffer
        more = n == len(buf)
        self._discard(n - 2)
        if more:
            self._run += n - 2
            return False
        self._end_run(out, self._run + n - 2, "a start follows")
        return True

    def _end_run(self, out: list[Event], strays: int, why: str) -> None:
        self._run = -1
        if strays >= 2:
            out.append(self._drop(ShortFrameError(
                f"a run of FF: {strays} byte(s) that no frame can start with ({why})", b"\xff" * strays, self._run_at)))
        else:
            self.noise_bytes += strays

    def _scan(self, out: list[Event]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _pending_start(self) -> int | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _reset(self) -> None:
        pass


class ClassicDeframer(Deframer):
    """``FF FF | RSCTL | TYPE | DATA | BCC | FF``.

    Resynchronisation rules (RSU_PROTOCOL.md): skip to ``FF FF``; a frame ends at the
    next bare ``FF``; bodies shorter than RSCTL+TYPE+BCC are ``short`` (a valid two-byte
    empty reply aside); runaways over ``max_wire`` bytes are ``too_long``. ``FF FF FF``
    starts no frame, but its last FF may start one: in a run of FF the frame starts at
    the last two, a single stray FF before them is noise, two or more are one ``short``
    (see :meth:`Deframer._skip_ff_run`; ``FF FF FF`` alone is one ``short``). After a
    frame that failed, an ``FF FF`` starting at its end byte is taken as the next start:
    a frame whose end byte was lost in noise would otherwise swallow the start of the
    next one. The same holds after a good frame: "end FF, FF, not FF" is a lost end byte
    far more often than a lone noise FF, while frames sent back to back ("end FF, FF FF,
    RSCTL") are unaffected.
    """

    envelope = "classic"

    def __init__(self, *, escaping: bool = True, max_wire: int = CLASSIC_MAX_WIRE) -> None:
        super().__init__(escaping=escaping)
        self.max_wire = max_wire
        self._start = -1  # index in _buf of the current frame's first FF, or -1
        self._after_frame = False  # _buf[0] is the end FF of the previous frame
        self._runaway = False  # inside a frame already dropped as too_long: skip to its end FF

    def _reset(self) -> None:
        self._start = -1
        self._after_frame = False
        self._runaway = False

    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        # Fast path for the common case of one whole frame per read: the same rules as
        # _scan (a previous end FF followed by "FF FF x" is not a start), without copying
        # through the buffer.
        if data.__class__ is not bytes:
            data = bytes(data)
        n = len(data)
        if self._start < 0 and 3 < n <= self.max_wire and data[0] == 0xFF and data[1] == 0xFF \
                and data[2] != 0xFF and data.find(b"\xff", 3) == n - 1:
            buf = self._buf
            if (not buf and not self._runaway) or (self._after_frame and len(buf) == 1):
                base = self._base + len(buf)
                event = self._frame(data, base)
                if event.__class__ is RawFrame:
                    self.frames += 1
                else:
                    self._drop(event)  # type: ignore[arg-type]  # a ProtocolError: mypy does not narrow `__class__ is`
                if not buf:  # else buf is already the previous end FF
                    buf.append(0xFF)  # this end FF: it may start the next frame
                self._base = base + n - 1
                self._after_frame = True
                return [event]
        return super().feed(data)

    def _pending_start(self) -> int | None:
        return self._start if self._start >= 0 else None

    def _scan(self, out: list[Event]) -> None:
        buf = self._buf
        while True:
            if self._runaway:
                # The rest of a runaway belongs to the dropped frame up to its end FF,
                # exactly as when the whole runaway is in the buffer at once: what comes
                # out must not depend on how the stream was cut into reads.
                end = buf.find(b"\xff")
                if end < 0:
                    self._discard(len(buf))
                    return
                self._discard(end)
                self._runaway = False
                self._after_frame = True
            if self._start < 0:
                if self._run >= 0:
                    if not self._skip_ff_run(out):
                        return
                    self._start = 0
                elif self._after_frame:
                    # buf[0] ended the previous frame: is it also the first FF of "FF FF x"?
                    if len(buf) < 3:
                        return
                    self._after_frame = False
                    if buf[1] == 0xFF and buf[2] != 0xFF:
                        self._start = 0
                    else:
                        self._discard(1)
                        continue
                else:
                    if not self._seek_start():
                        return
                    self._start = 0
            # _start == 0 here: FF FF at the head of the buffer.
            if len(buf) < 3:
                return
            if buf[2] == 0xFF:
                # "FF FF FF": not a frame, but its last FF may begin one (a stray FF before a
                # start). The run of FF decides where the frame starts.
                self._start = -1
                if not self._skip_ff_run(out):
                    return
                self._start = 0
            end = buf.find(b"\xff", 3)
            if end < 0:
                if len(buf) > self.max_wire:
                    out.append(self._drop(FrameTooLongError(
                        f"no end byte within {self.max_wire} bytes", bytes(buf[: self.max_wire]), self._base)))
                    self._start = -1
                    self._runaway = True
                    self._discard(len(buf))  # no FF after the start: all of it is the runaway's
                    continue
                return
            wire = bytes(buf[: end + 1])
            event = self._frame(wire, self._base)
            out.append(event)
            self._start = -1
            if isinstance(event, RawFrame):
                self.frames += 1
            else:
                self._drop(event)
            self._discard(end)
            self._after_frame = True

    def _frame(self, wire: bytes, offset: int) -> Event:
        if len(wire) > self.max_wire:
            return FrameTooLongError(f"{len(wire)} bytes between start and end, limit {self.max_wire}", wire, offset)
        body = wire[2:-1]
        if self.escaping and b"\xfe" in body:
            try:
                body = unescape(body, offset)
            except EscapeError as err:
                err.data = wire
                return err
        n = len(body)
        if n >= 3:
            if bcc(body):
                return ChecksumError(
                    f"BCC {body[-1]:02x} but the bytes XOR to {bcc(body[:-1]):02x}", wire, offset, reason="bcc")
            return _tuple_new(RawFrame, (self.envelope, body[1:-1], wire, offset, body[0], None))
        if n == 2 and body[0] == body[1]:
            return RawFrame(self.envelope, b"", wire, offset, rsctl=body[0])  # empty reply
        return ShortFrameError(f"{n} byte(s) between start and end, need RSCTL, TYPE and BCC", wire, offset)


class LengthDeframer(Deframer):
    """Envelopes with a length field and a CRC-16/X-25: ``jinyi`` and ``gb2019tcp``.

    ``header`` bytes follow ``FF FF`` (the length field at their end); DATA follows,
    then the CRC over header+DATA. A CRC error skips the frame its length named (the
    stream is TCP: corruption is rare, a false ``FF FF`` inside DATA is not); an absurd
    length or a bad header resynchronises just after the start bytes. A run of FF before
    a start is handled as in the classic envelope when FF cannot be the first header byte
    (VER 00, a length beyond ``max_payload``, or escaping).
    """

    def __init__(self, envelope: str, header: int, *, escaping: bool = False, max_payload: int = LENGTH_MAX_PAYLOAD) -> None:
        super().__init__(escaping=escaping)
        self.envelope = envelope
        self.header = header
        self.max_payload = max_payload
        self._in_frame = False
        # Can "FF FF FF" start a frame? Not when FF would be escaped, not with VER 00
        # (gb2019tcp), not when a length high byte of FF is beyond max_payload (jinyi).
        # Then a run of FF is handled as in the classic envelope: the frame starts at its
        # last two FF.
        self._ff_runs = escaping or envelope == "gb2019tcp" or max_payload < 0xFF00

    def _reset(self) -> None:
        self._in_frame = False

    def _pending_start(self) -> int | None:
        return 0 if self._in_frame else None

    def _scan(self, out: list[Event]) -> None:
        buf = self._buf
        while True:
            if not self._in_frame:
                if self._run >= 0:
                    if not self._skip_ff_run(out):
                        return
                elif not self._seek_start():
                    return
                self._in_frame = True
            if len(buf) > 2 and buf[2] == 0xFF and self._ff_runs:
                self._in_frame = False
                if not self._skip_ff_run(out):
                    return
                self._in_frame = True
            got = self._take(buf)
            if got is None:
                return
            event, consumed = got
            out.append(event)
            self._in_frame = False
            if isinstance(event, RawFrame):
                self.frames += 1
            else:
                self._drop(event)
            self._discard(consumed)

    def _unescaped(self, raw: bytearray, start: int, need: int) -> tuple[bytes, int] | None:
        """``need`` unescaped bytes from raw[start:], and the raw index after them."""
        if not self.escaping:
            if len(raw) - start < need:
                return None
            return bytes(raw[start:start + need]), start + need
        out = bytearray()
        i = start
        while len(out) < need:
            if i >= len(raw):
                return None
            b = raw[i]
            if b == 0xFE:
                if i + 1 >= len(raw):
                    return None
                nxt = raw[i + 1]
                if nxt not in (0, 1):
                    raise EscapeError(f"FE followed by {nxt:02x}", bytes(raw[: i + 2]), self._base)
                out.append(0xFF if nxt else 0xFE)
                i += 2
            else:
                out.append(b)
                i += 1
        return bytes(out), i

    def _take(self, buf: bytearray) -> tuple[Event, int] | None:
        try:
            got = self._unescaped(buf, 2, self.header)
            if got is None:
                return None
            head, i = got
            err = self._check_header(head)
            if err is not None:
                return err, 2
            length = int.from_bytes(head[-self._len_size():], "big")
            if length > self.max_payload:
                return FrameTooLongError(f"length field says {length} bytes, limit {self.max_payload}",
                                         bytes(buf[:i]), self._base), 2
            if length == 0:
                return ShortFrameError("length field is 0: no frame type", bytes(buf[:i]), self._base), i
            got = self._unescaped(buf, i, length + 2)
            if got is None:
                return None
            rest, end = got
        except EscapeError as err:
            return err, 2
        payload, crc = rest[:length], int.from_bytes(rest[length:], "big")
        wire = bytes(buf[:end])
        calc = crc16_x25(head + payload)
        if calc != crc:
            return ChecksumError(f"CRC {crc:04x} but the bytes give {calc:04x}", wire, self._base, reason="crc"), end
        return self._raw(head, payload, wire), end

    def _len_size(self) -> int:
        return 2 if self.envelope == "jinyi" else 4

    def _check_header(self, head: bytes) -> ProtocolError | None:
        if self.envelope == "gb2019tcp" and head[0] != 0x00:
            return HeaderError(f"VER is {head[0]:02x}, the envelope defines 00", head, self._base)
        return None

    def _raw(self, head: bytes, payload: bytes, wire: bytes) -> RawFrame:
        seq = head[1] if self.envelope == "gb2019tcp" else None
        return RawFrame(self.envelope, payload, wire, self._base, seq=seq)


ENVELOPES = ("classic", "jinyi", "gb2019tcp")


def make_deframer(envelope: str, *, escaping: bool | None = None) -> Deframer:
    if envelope == "classic":
        return ClassicDeframer(escaping=True if escaping is None else escaping)
    if envelope == "jinyi":
        return LengthDeframer("jinyi", 2, escaping=bool(escaping))
    if envelope == "gb2019tcp":
        return LengthDeframer("gb2019tcp", 6, escaping=bool(escaping))
    raise ValueError(f"unknown envelope {envelope!r}; expected one of {', '.join(ENVELOPES)}")


def encode_frame(envelope: str, payload: bytes, *, rsctl: int | None = None, seq: int | None = None,
                 escaping: bool | None = None) -> bytes:
    """Wrap ``payload`` (TYPE + DATA) in ``envelope``; see the module docstring.

    A frame longer than the envelope allows (``CLASSIC_MAX_WIRE`` bytes on the wire,
    ``LENGTH_MAX_PAYLOAD`` bytes of DATA) is refused with :class:`EncodeError`: the
    RSU could not take it, and the deframers drop it as ``too_long``.
    """
    if envelope == "classic":
        if rsctl is None:
            raise ValueError("the classic envelope needs an RSCTL byte")
        body = bytes((rsctl,)) + payload
        body += bytes((bcc(body),))
        wire = START + (escape(body) if escaping is None or escaping else body) + b"\xff"
        if len(wire) > CLASSIC_MAX_WIRE:
            raise EncodeError(f"the frame is {len(wire)} bytes on the wire, the classic envelope's limit is "
                              f"{CLASSIC_MAX_WIRE}")
        return wire
    if len(payload) > LENGTH_MAX_PAYLOAD:
        raise EncodeError(f"{len(payload)} bytes of DATA, the {envelope} envelope's limit is {LENGTH_MAX_PAYLOAD}")
    if envelope == "jinyi":
        head = len(payload).to_bytes(2, "big")
    elif envelope == "gb2019tcp":
        if seq is None:
            raise ValueError("the gb2019tcp envelope needs a SEQ byte")
        head = b"\x00" + bytes((seq,)) + len(payload).to_bytes(4, "big")
    else:
        raise ValueError(f"unknown envelope {envelope!r}; expected one of {', '.join(ENVELOPES)}")
    body = head + payload
    body += crc16_x25(body).to_bytes(2, "big")
    return START + (escape(body) if escaping else body)


def deframe_all(envelope: str, data: Iterable[bytes] | bytes, *, escaping: bool | None = None) -> list[Event]:
    """Convenience for tools and tests: run a whole capture through a fresh deframer."""
    d = make_deframer(envelope, escaping=escaping)
    out: list[Event] = []
    chunks = [data] if isinstance(data, (bytes, bytearray)) else data
    for chunk in chunks:
        out += d.feed(chunk)
    out += d.finish()
    return out
