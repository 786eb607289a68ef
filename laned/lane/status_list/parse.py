"""The centre's status list payload (JSON), parsed and validated in bounded steps.

The format is described in the package docstring (:mod:`laned.lane.status_list`). A
payload comes as a string, bytes, or — from a download — its bytes in pieces
(:func:`text_pieces`, gunzipped and decoded a piece at a time): a 700 MB national list is
then never one string, and no step decodes more than TEXT_PIECE characters.
"""

from __future__ import annotations

import codecs
import json
import re
import zlib
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from typing import Any, cast

from laned.lane import status_list as tuning
from laned.lane.status_list.entries import (
    DEFAULT_REASON,
    ID_PARTS,
    SERIAL_PARTS,
    Delta,
    StatusListError,
    check_version,
)
from laned.lane.status_list.packed import PackedEntries

_ENTRY_FIELDS = frozenset({"card", "obu", "issuer", "reason"})
_CARD = re.compile(r"([0-9]{4})-([0-9]{16})")
_OBU = re.compile(r"[0-9a-fA-F]{8}(?:[0-9a-fA-F]{8})?")
_ISSUER = re.compile(r"[0-9a-fA-F]{16}")
_WS = re.compile(r"[ \t\n\r]*")
# An entry in its usual shape and the separator after it — {"card": "NNNN-N…N"} or
# {"obu": "hex"}, optionally with "reason" (1–999, checked after) — so the common case is
# one regex match; anything else goes through json's decoder and _take.
_FAST_ENTRY = re.compile(r"""\{[ \t\n\r]*(?:
        "card"[ \t\n\r]*:[ \t\n\r]*"([0-9]{4})-([0-9]{16})"
      | "obu"[ \t\n\r]*:[ \t\n\r]*"([0-9a-fA-F]{8}(?:[0-9a-fA-F]{8})?)"
    )[ \t\n\r]*(?:,[ \t\n\r]*"reason"[ \t\n\r]*:[ \t\n\r]*([1-9][0-9]{0,2})[ \t\n\r]*)?
    \}[ \t\n\r]*([,\]])[ \t\n\r]*""", re.VERBOSE).match


_SEP = r"[ \t\n\r]*+"
_REASON = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]?)"  # 1–255, no leading zero
# An entry in the usual shape followed by a comma, all of it captured as group 1. One
# findall over a stretch of an array takes the fields of ~1,000 entries; the entries
# were contiguous (nothing skipped between them) iff the captured texts joined are the
# stretch of text they came from: the pattern holds one "{", at its start, so text that
# repeats a match after a gap would itself have matched. The last entry of an array
# (before "]") and entries of any other shape go the per-entry way.
_BULK_FIELDS = re.compile((r"""(\{S(?:"card"S:S"([0-9]{4})-([0-9]{16})"|"obu"S:S"([0-9a-fA-F]{8}(?:[0-9a-fA-F]{8})?)")"""
                            r"""S(?:,S"reason"S:S(R)S)?\}S,S)""").replace("S", _SEP).replace("R", _REASON)).findall


def _take_bulk(sink: PackedEntries, text: str, pos: int) -> tuple[int, int]:
    """Entries in the usual shape from text[pos:], up to BULK_CHARS: (entries taken, end)."""
    found = _BULK_FIELDS(text, pos, pos + tuning.BULK_CHARS)
    if not found:
        return 0, pos
    run = "".join([f[0] for f in found])
    if not text.startswith(run, pos):  # something between the matches: go entry by entry
        return 0, pos
    part_no = sink._part_no
    sink.room()  # a bulk take adds ~1,000 entries to the current block
    index = sink._index.append
    words = sink._words.append
    removing = sink.removing
    for _, network, number, obu, reason in found:
        if network:
            part = "C" + network
            ident = int(number)
        else:
            part = (ID_PARTS if len(obu) == 8 else SERIAL_PARTS)[int(obu[:2], 16)]
            ident = int(obu[2:], 16)
        no = part_no.get(part)
        if no is None:
            no = part_no[part] = len(sink._parts)
            sink._parts.append(part)
        index(no)
        words(ident << 8 if removing else ident << 8 | (int(reason) if reason else DEFAULT_REASON))
    return len(found), pos + len(run)


def parse_payload(data: bytes | str | Mapping[str, Any]) -> Delta:
    """The centre's JSON payload as a validated :class:`Delta`, in one go."""
    steps = parse_payload_steps(data)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            delta: Delta = done.value
            return delta


def parse_payload_steps(data: bytes | str | Mapping[str, Any]) -> Generator[None, None, Delta]:
    """:func:`parse_payload` in bounded steps; the Delta is the generator's return value."""
    if isinstance(data, Mapping):
        return (yield from _mapping_steps(data))
    if isinstance(data, str):
        return (yield from parse_text_steps([data]))
    return (yield from parse_text_steps(text_pieces([data])))


def parse_text_steps(pieces: Iterable[str]) -> Generator[None, None, Delta]:
    """The payload given as its text in pieces (:func:`text_pieces` of a download's chunks),
    parsed in bounded steps without ever joining the pieces into one string."""
    sinks = {"add": PackedEntries(removing=False), "remove": PackedEntries(removing=True)}
    doc = yield from _decode_steps(_Window(pieces), sinks)
    return (yield from _delta(doc, sinks))


def text_pieces(pieces: Iterable[bytes | bytearray | memoryview], *, gzip: bool = False,
                max_bytes: int | None = None) -> Iterator[str]:
    """The payload's UTF-8 text, about TEXT_PIECE characters at a time, from its bytes in
    pieces, gunzipped first when ``gzip``. ``max_bytes`` bounds the bytes after
    decompression (a small gzip member can expand without limit). StatusListError for
    bad UTF-8, a damaged or truncated gzip stream, or too many bytes."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    inflate = zlib.decompressobj(wbits=31) if gzip else None  # 31: a gzip header and trailer
    done = 0  # bytes of text decoded so far (for the error messages and the limit)

    def decode(raw: bytes | memoryview, final: bool = False) -> str:
        nonlocal done
        if max_bytes is not None and done + len(raw) > max_bytes:
            raise StatusListError(f"status list payload is larger than {max_bytes:,} bytes"
                                  f"{' once decompressed' if gzip else ''}; not loaded")
        try:
            text: str = decoder.decode(raw, final)
        except UnicodeDecodeError as err:
            raise StatusListError(f"status list payload is not UTF-8: {err.reason} at byte "
                                  f"{done + err.start}") from None
        done += len(raw)
        return text

    step = tuning.TEXT_PIECE
    for piece in pieces:
        view = memoryview(piece).cast("B")
        if inflate is None:
            for at in range(0, len(view), step):
                yield decode(view[at:at + step])
            continue
        data: bytes | memoryview = view
        while data:
            try:
                out = inflate.decompress(data, step)
            except zlib.error as err:
                raise StatusListError(f"status list payload is not valid gzip: {err}") from None
            if inflate.eof and inflate.unused_data:
                raise StatusListError("status list payload has data after the end of its gzip stream")
            data = inflate.unconsumed_tail
            yield decode(out)
    if inflate is not None:
        while True:  # what is still held back for lack of max_length room
            out = inflate.decompress(b"", step)
            if not out:
                break
            yield decode(out)
        if not inflate.eof:
            raise StatusListError("status list payload: the gzip stream is truncated")
    yield decode(b"", final=True)


def _mapping_steps(data: Mapping[str, Any]) -> Generator[None, None, Delta]:
    sinks = {"add": PackedEntries(removing=False), "remove": PackedEntries(removing=True)}
    doc = dict(data)
    for name, sink in sinks.items():
        items = doc.get(name)
        if isinstance(items, list):
            for i, raw in enumerate(items):
                _take(sink, name, i, raw)
                if i % tuning.PARSE_STEP == tuning.PARSE_STEP - 1:
                    yield
            doc[name] = sink
    return (yield from _delta(doc, sinks))


def _delta(doc: Mapping[str, Any], sinks: Mapping[str, PackedEntries]) -> Generator[None, None, Delta]:
    add, remove = sinks["add"], sinks["remove"]
    version = check_version(doc.get("version"), "status list version")
    base = doc.get("base")
    if base is not None:
        check_version(base, "status list base")
    for name in sinks:
        if doc.get(name, sinks[name]) is not sinks[name]:
            raise StatusListError(f"status list {name!r} is {_show(doc[name])}, expected a list of entries")
    if base is None and remove:
        raise StatusListError(f"status list version {version} has no base (a full list) but removes "
                              f"{len(remove)} entries; a full list cannot remove")
    if remove and add:  # an identity both added and removed is ambiguous: refuse
        yield from add.check_disjoint(remove)
    return Delta(version, base, add, remove)


_SIXTEEN_DIGITS = re.compile(r"(?<![0-9])([0-9]{4})[0-9]{8}([0-9]{4})(?![0-9])")


def _show(value: Any) -> str:
    """A payload value for an error message: shortened, card numbers masked."""
    try:
        shown = repr(value)
    except RecursionError:  # a value nested nearly as deep as json decodes
        return "(a value nested too deeply to show)"
    text = _SIXTEEN_DIGITS.sub(r"\1********\2", shown)
    return text if len(text) <= 100 else text[:97] + "..."


def _bad(where: str, i: int, raw: Any, problem: str) -> StatusListError:
    return StatusListError(f"{where}[{i}] {_show(raw)}: {problem}")


def _take(sink: PackedEntries, where: str, i: int, raw: Any) -> None:
    """Validate payload entry ``where[i]`` and append it to ``sink``."""
    if type(raw) is not dict:
        raise _bad(where, i, raw, "expected an object with 'card' or 'obu'")
    if not _ENTRY_FIELDS.issuperset(raw):
        unknown = ", ".join(repr(k) for k in raw if k not in _ENTRY_FIELDS)
        raise _bad(where, i, raw, f"unknown field {unknown}")
    card = raw.get("card")
    obu = raw.get("obu")
    if card is not None:
        if obu is not None or "issuer" in raw:
            raise _bad(where, i, raw, "has both 'card' and 'obu'/'issuer'")
        match = _CARD.fullmatch(card) if type(card) is str else None
        if match is None:
            raise _bad(where, i, raw, f"card {_show(card)} is not NNNN-NNNNNNNNNNNNNNNN (network, card number)")
        part, ident = "C" + match[1], int(match[2])
    elif obu is not None:
        if type(obu) is not str or not _OBU.fullmatch(obu):
            raise _bad(where, i, raw, f"obu {_show(obu)} is not 8 hex digits (OBU id) or 16 (OBU serial)")
        issuer = raw.get("issuer")
        if issuer is not None and (len(obu) != 16 or type(issuer) is not str or not _ISSUER.fullmatch(issuer)):
            raise _bad(where, i, raw, f"issuer {_show(issuer)} is not 16 hex digits next to a 16-digit OBU serial")
        first = int(obu[:2], 16)
        part = ID_PARTS[first] if len(obu) == 8 else SERIAL_PARTS[first]
        ident = int(obu[2:], 16)
    else:
        raise _bad(where, i, raw, "has neither 'card' nor 'obu'")
    if sink.removing:
        sink.append(part, ident)
        return
    reason = raw.get("reason", DEFAULT_REASON)
    if type(reason) is not int or not 1 <= reason <= 255:
        raise _bad(where, i, raw, f"reason {reason!r} is not 1–255")
    sink.append(part, ident, reason)


class _Window:
    """The payload text from ``text_pieces``, a window at a time: what the decoder has
    not consumed yet plus the next pieces. ``base`` is the payload offset of ``text[0]``."""

    __slots__ = ("text", "base", "_source", "_exhausted")

    def __init__(self, pieces: Iterable[str]) -> None:
        self.text = ""
        self.base = 0
        self._source = iter(pieces)
        self._exhausted = False

    def fill(self, pos: int, need: int) -> int:
        """Make ``text[pos:]`` hold ``need`` characters or all that is left; the new ``pos``.

        With MARGIN characters ahead, a value that ends inside the window was not cut by
        its edge: a number or a literal is short, a string or container cut short fails
        to decode and :meth:`grow` brings more."""
        if self._exhausted or len(self.text) - pos >= need:
            return pos
        got = [self.text[pos:]] if pos < len(self.text) else []
        have = len(self.text) - pos if pos < len(self.text) else 0
        while have < need:
            piece = next(self._source, None)
            if piece is None:
                self._exhausted = True
                break
            if piece:
                got.append(piece)
                have += len(piece)
        self.base += pos
        self.text = got[0] if len(got) == 1 else "".join(got)
        return 0

    def grow(self, pos: int) -> int | None:
        """Bring one more piece in behind ``text[pos:]``: the new ``pos``, None at the end."""
        if self._exhausted or len(self.text) - pos > MAX_VALUE_CHARS:
            return None
        return self.fill(pos, len(self.text) - pos + 1)

    def at_end(self, pos: int) -> bool:
        return self._exhausted and pos >= len(self.text)


MARGIN = 4096  # characters ahead of each value: longer than any entry the centre sends
MAX_VALUE_CHARS = 16 << 20  # one JSON value (not the arrays of entries) longer than this is refused


def _decode_steps(win: _Window, sinks: Mapping[str, PackedEntries]) -> Generator[None, None, dict[str, Any]]:
    """Decode a top-level JSON object; the arrays named in ``sinks`` element by element.

    Each element of those arrays is validated into its sink as soon as it is decoded,
    PARSE_STEP elements per step; every value is decoded by ``json``'s own decoder. The
    text comes through ``win``: positions are in its window, the messages say payload
    offsets.
    """
    scan = json.JSONDecoder().raw_decode
    ws = cast(Callable[[str, int], re.Match[str]], _WS.match)  # [ \t\n\r]* matches anywhere: never None
    doc: dict[str, Any] = {}

    def fail(pos: int, expected: str) -> StatusListError:
        text = win.text
        found = f"{text[pos]!r} at char {win.base + pos}" if pos < len(text) else f"the end at char {win.base + pos}"
        return StatusListError(f"status list payload is not JSON: found {found}, expected {expected}")

    def value(pos: int) -> tuple[Any, int]:
        while True:
            try:
                return scan(win.text, pos)
            except json.JSONDecodeError as err:
                grown = win.grow(pos)
                if grown is None:
                    raise StatusListError(f"status list payload is not JSON: {err.msg} at char "
                                          f"{win.base + err.pos}") from None
                pos = grown
            # JSON that json's decoder will not take either: a payload is the centre's, and
            # its fault is a refusal, never an exception out of the parse.
            except RecursionError:
                raise StatusListError(f"status list payload: the value at char {win.base + pos} is nested too "
                                      "deeply to decode") from None
            except ValueError as err:  # e.g. an integer of more than 4,300 digits
                raise StatusListError(f"status list payload: the value at char {win.base + pos} cannot be "
                                      f"decoded: {str(err)[:200]}") from None

    def skip(pos: int) -> int:
        """``pos`` past white space, with at least MARGIN characters (or the rest) ahead."""
        need = max(MARGIN, tuning.BULK_CHARS)
        while True:
            pos = win.fill(pos, need)  # first: it may replace win.text
            pos = ws(win.text, pos).end()
            if pos < len(win.text) or win.at_end(pos):
                return pos

    pos = skip(0)
    if not win.text.startswith("{", pos):
        raise fail(pos, "'{'")
    pos = skip(pos + 1)
    closed = win.text.startswith("}", pos)
    while not closed:
        if not win.text.startswith('"', pos):
            raise fail(pos, "a member name")
        name, pos = value(pos)
        if name in doc:
            raise StatusListError(f"status list payload has the member {name!r} twice")
        pos = skip(pos)
        if not win.text.startswith(":", pos):
            raise fail(pos, "':'")
        pos = skip(pos + 1)
        sink = sinks.get(name)
        if sink is not None and win.text.startswith("[", pos):
            pos = skip(pos + 1)
            i = 0
            more = not win.text.startswith("]", pos)
            if not more:
                pos += 1
            bulk_at = 0  # the entry index from which bulk takes are tried again
            while more:
                pos = skip(pos)
                text = win.text
                if i >= bulk_at:
                    taken, pos = _take_bulk(sink, text, pos)
                    if taken:
                        i += taken
                        yield
                        continue
                    bulk_at = i + tuning.PARSE_STEP  # not in the usual shape here: a step entry by entry
                fast = _FAST_ENTRY(text, pos)  # the usual shape, without building a dict
                if fast is not None:
                    network, number, obu, reason, sep = fast.groups()
                    if network is not None:
                        part, ident = "C" + network, int(number)
                    else:
                        parts = ID_PARTS if len(obu) == 8 else SERIAL_PARTS
                        part, ident = parts[int(obu[:2], 16)], int(obu[2:], 16)
                    if sink.removing:
                        sink.append(part, ident)
                    else:
                        code = DEFAULT_REASON if reason is None else int(reason)
                        if code > 255:
                            fast = None  # the general path words the error
                        else:
                            sink.append(part, ident, code)
                if fast is not None:
                    pos = fast.end()
                    more = sep == ","
                else:
                    raw, pos = value(pos)
                    _take(sink, name, i, raw)
                    pos = skip(pos)
                    if win.text.startswith(",", pos):
                        pos += 1
                    elif win.text.startswith("]", pos):
                        pos += 1
                        more = False
                    else:
                        raise fail(pos, "',' or ']'")
                i += 1
                if i % tuning.PARSE_STEP == 0:
                    yield
            doc[name] = sink
        else:
            doc[name], pos = value(pos)
        pos = skip(pos)
        if win.text.startswith(",", pos):
            pos = skip(pos + 1)
        elif win.text.startswith("}", pos):
            closed = True
        else:
            raise fail(pos, "',' or '}'")
    pos = skip(pos + 1)
    if not win.at_end(pos):
        raise StatusListError(f"status list payload is not JSON: extra data at char {win.base + pos}")
    return doc
