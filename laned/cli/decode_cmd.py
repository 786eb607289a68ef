"""``laned decode``: captured RSU bytes → readable frames, for the field engineer.

Input is hex as people paste it: with or without spaces, ``0x`` prefixes, commas, or a
whole log line around it. Each line contributes its longest run of hex tokens (so the
timestamp and the words of a log line are left out); the lines form one byte stream, so
a frame may span lines of a hex dump. Byte offsets in error messages count in that
stream. Lines whose first non-blank character is ``#`` are skipped.

Reading streams in bounded memory, whatever the size of the input or of one line: the
input is read ``READ_SIZE`` bytes at a time, each line's hex goes to the streaming
``FrameDecoder`` when the line ends, and a partial token is carried to the next read.
One exception to "longest run": a run of more than ``STREAM_RUN`` hex digits (a hex
dump written as one huge line) is decoded as it is read instead of being held until the
line ends, and it is that line's run: the rest of the line after it is skipped, and if
the run ends in a token that turns out not to be hex (``…ffzz``, or an odd digit out),
the bytes before it stay decoded. With shorter runs, which is every log line, the
result is exactly the longest run of each line.

A file that holds binary bytes (NUL or other control characters no text has) is refused
as "not hex text": a raw capture must be turned into hex first (``xxd -p``).
"""

from __future__ import annotations

import codecs
import json
import re
import sys
from collections.abc import Iterable, Iterator
from typing import Any, BinaryIO, TextIO

from rich.console import Console
from rich.table import Table

from laned.protocol import Decoded, FrameDecoder, ProtocolError, Sender, get_profile
from laned.protocol.describe import decoded_records, meaning, type_name
from laned.protocol.fields import to_jsonable
from laned.protocol.profiles import Profile

# Bytes read at a time (and so, about, the most text held): 1 MiB.
READ_SIZE = 1 << 20
# A run of more hex digits than this is decoded as it is read (see the module docstring):
# 256 Ki digits are 128 KiB of bytes, hundreds of the longest frames, far beyond any log
# line's decoration, and small enough to hold while the line is still being read.
STREAM_RUN = 1 << 18

_SEP = r"\s,;|"  # token separators: whitespace, commas, semicolons, pipes
# A run of hex tokens: tokens of whole bytes, each with an optional 0x prefix, starting
# at a token boundary and each followed by separators or the end of the text. The
# quantifiers are possessive (Python 3.11): giving back a pair or a separator can never
# make a match, and a backtracking repeat keeps state for every iteration: about 200 MB
# for a 1 MiB run of spaced hex, against none.
_RUN = re.compile(rf"(?<![^{_SEP}])(?:(?:0[xX])?(?:[0-9a-fA-F]{{2}})++(?:[{_SEP}]++|\Z))++")
_STRIP = re.compile(rf"[{_SEP}]+|0[xX]")  # in a run, 'x' is only ever in a 0x prefix
_SEPS_ONLY = re.compile(rf"[{_SEP}]*")
_NON_SEP = re.compile(rf"[^{_SEP}]*")
_HEX_DIGITS = re.compile(r"[0-9a-fA-F]*")
_TOKEN_START = re.compile(r"(?:0[xX])?[0-9a-fA-F]*")
_EOL = re.compile(r"\r\n|\r|\n")  # universal newlines, as text files are read
# Bytes no text file holds: NUL and the C0 controls but TAB, LF, VT, FF, CR, SUB (the
# end-of-file mark of old DOS files) and ESC (ANSI colours in logs).
_BINARY = re.compile(rb"[\x00-\x08\x0e-\x19\x1c-\x1f]")


def _run_end(pattern: re.Pattern[str], text: str) -> int:
    """Where the run of ``pattern`` (one of the ``*`` patterns above, which match
    everywhere, if only the empty string) that starts ``text`` ends."""
    m = pattern.match(text)
    assert m is not None
    return m.end()


class InputError(ValueError):
    pass


class NotHexText(InputError):
    """The input holds binary bytes: a raw capture, not hex text."""

    def __init__(self, name: str, offset: int, byte: int) -> None:
        self.name, self.offset, self.byte = name, offset, byte
        super().__init__(f"{name} is not hex text (its byte {offset} is {byte:02x}, binary data; "
                         f"turn a raw capture into hex first: xxd -p CAPTURE | laned decode)")


def hex_from_line(line: str) -> bytes:
    """The longest run of consecutive hex tokens of one line, as bytes."""
    best = ""
    for m in _RUN.finditer(line.strip()):
        digits = _STRIP.sub("", m.group())
        if len(digits) > len(best):
            best = digits
    return bytes.fromhex(best)


class HexText:
    """Text, in pieces cut anywhere, → the byte stream of the module docstring.

    ``feed(text)`` returns the bytes that became known, ``finish()`` the rest. Memory
    stays bounded by the piece size and ``stream_run``: a partial token is carried
    between pieces only up to ``stream_run`` (+ 2 for a 0x prefix) characters, and a run
    is held only up to ``stream_run`` digits; beyond that it is streamed.
    """

    def __init__(self, *, stream_run: int = STREAM_RUN) -> None:
        self.stream_run = stream_run
        self._out: list[bytes] = []
        self._carry = ""  # the start of a token cut by the end of the last piece
        self._new_line()

    def _new_line(self) -> None:
        self._started = False  # a non-blank character was seen on this line
        self._skip = False  # the rest of the line is ignored (a comment, or after a streamed run)
        self._run: list[str] = []  # hex digits of the current run, while not streamed
        self._run_len = 0
        self._open = False  # the last token was hex: the run goes on if the next one is
        self._streaming = False  # the current run is longer than stream_run: its bytes go out as read
        self._best = ""  # digits of the longest run of the line that has ended
        self._in_giant = False  # inside a hex token too long to carry: its digits are streamed
        self._nibble = ""  # the giant token's odd digit, waiting for its pair
        self._bad_token = False  # inside a long token that is not hex: skip to its end

    def feed(self, text: str) -> list[bytes]:
        pos = 0
        for m in _EOL.finditer(text):
            self._piece(text[pos:m.start()], True)
            pos = m.end()
        if pos < len(text):
            self._piece(text[pos:], False)
        out, self._out = self._out, []
        return out

    def finish(self) -> list[bytes]:
        self._piece("", True)  # the input ends a line that has no line break
        out, self._out = self._out, []
        return out

    # -- one piece of one line ------------------------------------------------------
    def _piece(self, text: str, eol: bool) -> None:
        if self._carry:
            text, self._carry = self._carry + text, ""
        if self._in_giant:
            text = self._giant_goes_on(text, eol)
        if self._bad_token:
            end = _run_end(_NON_SEP, text)
            if end == len(text) and not eol:
                return
            self._bad_token = False
            text = text[end:]
        if not self._skip and not self._started:
            head = text.lstrip()
            if head:
                self._started = True
                self._skip = head[0] == "#"
        if self._skip or not self._started:
            if eol:
                self._new_line()
            return
        giant = ""
        if not eol:  # the last token may go on in the next piece
            k = _run_end(_NON_SEP, text[::-1])
            if k:
                if k <= self.stream_run + 2:  # + a 0x prefix: a token streamed is over stream_run digits
                    self._carry = text[-k:]
                else:
                    giant = text[-k:]
                text = text[:-k]
        self._runs(text)
        if giant and not self._skip:
            self._giant_starts(giant)
        if eol:
            self._close_run()
            if self._best:
                self._emit(self._best)
            self._new_line()

    def _runs(self, text: str) -> None:
        """Whole tokens and separators: add the runs of hex tokens in ``text``."""
        end = 0
        for i, m in enumerate(_RUN.finditer(text)):
            if not (i == 0 and self._open and _SEPS_ONLY.fullmatch(text, 0, m.start())):
                self._close_run()  # a token that is not hex came between
                if self._skip:
                    return
            self._add(_STRIP.sub("", m.group()))
            self._open = True
            end = m.end()
        if self._open and not _SEPS_ONLY.fullmatch(text, end):
            self._close_run()

    def _add(self, digits: str) -> None:
        if self._streaming:
            self._emit(digits)
            return
        self._run.append(digits)
        self._run_len += len(digits)
        if self._run_len > self.stream_run:
            self._stream()

    def _stream(self) -> None:
        """The current run is too long to hold: from now on it is the line's run."""
        self._streaming = True
        self._best = ""
        held = "".join(self._run)
        self._run, self._run_len = [], 0
        if held:
            self._emit(held)

    def _close_run(self) -> None:
        if self._streaming:
            self._skip = True  # the streamed run was this line's run
        elif self._run_len > len(self._best):
            self._best = "".join(self._run)
        self._run, self._run_len, self._open = [], 0, False
        self._streaming = False

    def _giant_starts(self, token: str) -> None:
        """A token longer than ``stream_run`` characters, cut by the end of the piece."""
        if _run_end(_TOKEN_START, token) < len(token):
            self._close_run()  # not hex, whatever follows
            self._bad_token = not self._skip
            return
        if not self._streaming:
            self._stream()
        self._open = self._in_giant = True
        self._stream_digits(token[2:] if token[:2] in ("0x", "0X") else token)

    def _giant_goes_on(self, text: str, eol: bool) -> str:
        """Digits of the giant token at the head of ``text``; returns what follows it."""
        k = _run_end(_HEX_DIGITS, text)
        self._stream_digits(text[:k])
        if k == len(text) and not eol:
            return ""
        self._in_giant = False
        if self._nibble or (k < len(text) and not _SEPS_ONLY.fullmatch(text, k, k + 1)):
            self._nibble = ""  # an odd digit out, or a character that is not hex: the run ends
            self._close_run()
        return text[k:]

    def _stream_digits(self, digits: str) -> None:
        digits = self._nibble + digits
        even = len(digits) & ~1
        self._nibble = digits[even:]
        if even:
            self._emit(digits[:even])

    def _emit(self, digits: str) -> None:
        self._out.append(bytes.fromhex(digits))


def text_chunks(fh: BinaryIO, name: str) -> Iterator[str]:
    """UTF-8 text of a byte stream, as it arrives; :class:`NotHexText` at the first binary byte."""
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    offset = 0
    read = getattr(fh, "read1", fh.read)  # what is there now (a pipe from a live logger), up to READ_SIZE
    while raw := read(READ_SIZE):
        bad = _BINARY.search(raw)
        if bad is not None:
            raise NotHexText(name, offset + bad.start(), raw[bad.start()])
        offset += len(raw)
        yield decoder.decode(raw)
    yield decoder.decode(b"", final=True)


def hex_chunks(texts: Iterable[str]) -> Iterator[bytes]:
    """The byte stream of the text, one bytes object per piece of text that gave any."""
    reader = HexText()
    for text in texts:
        data = b"".join(reader.feed(text))
        if data:
            yield data
    data = b"".join(reader.finish())
    if data:
        yield data


def frame_json(profile: Profile, d: Decoded) -> dict[str, Any]:
    msg = d.message
    out: dict[str, Any] = {
        "envelope": profile.envelope,
        "profile": profile.name,
        "sender": str(msg.sender),
        "type": msg.type_name,
    }
    if d.rsctl is not None:
        out["rsctl"] = d.rsctl
    if d.seq is not None:
        out["seq"] = d.seq
    out["offset"] = d.offset
    out["fields"] = msg.json_fields()
    records = decoded_records(profile, msg)
    if records:
        out["decoded"] = records
    return out


def frame_table(profile: Profile, d: Decoded) -> Table:
    msg = d.message
    where = f"RSCTL {d.rsctl:02X}" if d.rsctl is not None else (f"SEQ {d.seq:02X}" if d.seq is not None else "")
    title = f"{msg.type_name} {type_name(msg)} — from {msg.sender}, {where}, byte {d.offset}".replace(", ,", ",")
    table = Table(title=title, title_justify="left", show_lines=False)
    table.add_column("field")
    table.add_column("value", overflow="fold")
    table.add_column("meaning", overflow="fold")
    for name, value in msg.fields().items():
        table.add_row(name, str(to_jsonable(value)) if value is not None else "—", meaning(profile, msg, name, value))
    for name, rec in decoded_records(profile, msg).items():
        if isinstance(rec, dict):
            text = ", ".join(f"{k}={v}" for k, v in rec.items())
        else:
            text = ", ".join(rec) or "none"
        table.add_row(f"[dim]{name}[/dim]", "", text)
    return table


def run(data: bytes | Iterable[bytes], *, profile_name: str, sender: str, as_json: bool, out: TextIO,
        err: TextIO) -> int:
    """Decode ``data`` (bytes, or byte chunks as they are read); print frames to ``out``
    and one line per error to ``err``. Exit status 2 if anything was bad or no frame found."""
    profile = get_profile(profile_name)
    decoder = FrameDecoder(profile)
    console = Console(file=out, soft_wrap=False, width=max(100, Console(file=out).width))
    failed = False
    events_seen = 0
    nbytes = 0

    def show(events: list[Decoded | ProtocolError]) -> None:
        nonlocal failed, events_seen
        events_seen += len(events)
        for event in events:
            if isinstance(event, ProtocolError):
                failed = True
                err.write(f"laned decode: byte {event.offset}: {event.reason}: {event.detail}"
                          f" [{event.data[:64].hex()}{'…' if len(event.data) > 64 else ''}]\n")
                continue
            if sender != "auto" and event.message.sender != Sender(sender):
                failed = True
                err.write(f"laned decode: byte {event.offset}: sender: {event.message.type_name} is sent by the "
                          f"{event.message.sender}, not the {sender}\n")
                continue
            if as_json:
                out.write(json.dumps(frame_json(profile, event), ensure_ascii=False) + "\n")
            else:
                console.print(frame_table(profile, event))
        if events:
            out.flush()  # frames show as they are decoded when a live log is piped in

    try:
        for chunk in ([data] if isinstance(data, (bytes, bytearray)) else data):
            nbytes += len(chunk)
            show(decoder.feed(chunk))
    except NotHexText as e:
        found = "decoding stopped there" if events_seen else "no frame found"
        err.write(f"laned decode: {found}: {e}\n")
        return 2
    show(decoder.finish())
    if not events_seen:
        what = "no hex in it" if not nbytes else "no frame start FF FF in it"
        err.write(f"laned decode: no frame found in {nbytes} byte{'' if nbytes == 1 else 's'} of input ({what})\n")
        return 2
    return 2 if failed else 0


def main(hex_args: list[str], file: str | None, profile: str, sender: str, as_json: bool) -> int:
    if hex_args and file:
        raise InputError("give hex as arguments or --file, not both")

    def decode(chunks: Iterable[bytes]) -> int:
        return run(chunks, profile_name=profile, sender=sender, as_json=as_json, out=sys.stdout, err=sys.stderr)

    if hex_args:
        # The arguments are one line, whatever line breaks a quoted argument holds.
        return decode(hex_chunks([" ".join(hex_args).replace("\r", " ").replace("\n", " ")]))
    if file and file != "-":
        try:
            fh = open(file, "rb")  # noqa: SIM115 - closed below; only opening is an input error
        except OSError as e:
            raise InputError(f"cannot read {file}: {e.strerror}") from None
        with fh:
            return decode(hex_chunks(text_chunks(fh, file)))
    return decode(hex_chunks(text_chunks(sys.stdin.buffer, "standard input")))
