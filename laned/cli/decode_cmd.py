"""``laned decode``: captured RSU bytes → readable frames, for the field engineer.

Input is hex as people paste it: with or without spaces, ``0x`` prefixes, commas, or a
whole log line around it. Each line contributes its longest run of hex tokens (so the
timestamp and the words of a log line are left out); the lines form one byte stream, so
a frame may span lines of a hex dump. Byte offsets in error messages count in that
stream.
"""

from __future__ import annotations

import json
import re
import sys
from typing import Iterable, TextIO

from rich.console import Console
from rich.table import Table

from laned.protocol import Decoded, FrameDecoder, ProtocolError, Sender, get_profile
from laned.protocol.describe import decoded_records, meaning, type_name
from laned.protocol.fields import to_jsonable
from laned.protocol.profiles import Profile

_SPLIT = re.compile(r"[\s,;|]+")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")


class InputError(ValueError):
    pass


def hex_from_line(line: str) -> bytes:
    """The longest run of consecutive hex tokens of one line, as bytes."""
    best: list[str] = []
    run: list[str] = []
    for token in _SPLIT.split(line.strip()):
        t = token[2:] if token[:2] in ("0x", "0X") else token
        if t and _HEX.fullmatch(t):
            run.append(t)
        else:
            if sum(map(len, run)) > sum(map(len, best)):
                best = run
            run = []
    if sum(map(len, run)) > sum(map(len, best)):
        best = run
    return bytes.fromhex("".join(best))


def read_stream(lines: Iterable[str]) -> bytes:
    """One byte stream from many lines; ``#`` comment lines are skipped."""
    return b"".join(hex_from_line(line) for line in lines if not line.lstrip().startswith("#"))


def frame_json(profile: Profile, d: Decoded) -> dict:
    msg = d.message
    out: dict = {
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


def run(data: bytes, *, profile_name: str, sender: str, as_json: bool, out: TextIO, err: TextIO) -> int:
    """Decode ``data``; print frames to ``out`` and one line per error to ``err``."""
    profile = get_profile(profile_name)
    decoder = FrameDecoder(profile)
    console = Console(file=out, soft_wrap=False, width=max(100, Console(file=out).width))
    failed = False
    for event in decoder.feed(data) + decoder.finish():
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
    if not data:
        err.write("laned decode: no hex found in the input\n")
        return 2
    return 2 if failed else 0


def main(hex_args: list[str], file: str | None, profile: str, sender: str, as_json: bool) -> int:
    if hex_args and file:
        raise InputError("give hex as arguments or --file, not both")
    if hex_args:
        data = read_stream([" ".join(hex_args)])
    elif file and file != "-":
        try:
            with open(file, encoding="utf-8", errors="replace") as fh:
                data = read_stream(fh)
        except OSError as e:
            raise InputError(f"cannot read {file}: {e.strerror}") from None
    else:
        data = read_stream(sys.stdin)
    return run(data, profile_name=profile, sender=sender, as_json=as_json, out=sys.stdout, err=sys.stderr)
