"""`laned decode` reads its input as a stream: the same bytes as reading it whole, in
bounded memory.

* Cut anywhere into reads, any text gives exactly the bytes the README rule gives when the
  whole input is read line by line (the longest run of hex tokens per line, ``#`` lines
  skipped): the reference below is the line reader laned had before it streamed.
* A run longer than the streaming threshold is decoded as it is read and is its line's
  run; with a small threshold, the rule "the first run over the threshold, else the
  longest run" holds for any cut of the text.
* A 16 MB hex line decodes in a child process whose peak memory stays under 200 MB.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import hypothesis.strategies as st
from hypothesis import given, settings

from laned.cli.decode_cmd import STREAM_RUN, HexText
from tests.test_protocol_properties import SETTINGS

VECTORS = json.loads((Path(__file__).parent / "vectors" / "rsu_frames.json").read_text())

# -- the reference: the whole-input line reader of README "laned decode" ------------------

_SPLIT = re.compile(r"[\s,;|]+")
_HEX = re.compile(r"(?:[0-9a-fA-F]{2})+")


def reference_runs(line: str) -> list[str]:
    """The runs of consecutive hex tokens of one line, as hex digits, in line order."""
    runs, run = [], []
    for token in _SPLIT.split(line.strip()):
        t = token[2:] if token[:2] in ("0x", "0X") else token
        if t and _HEX.fullmatch(t):
            run.append(t)
        elif run:
            runs.append("".join(run))
            run = []
    if run:
        runs.append("".join(run))
    return runs


def reference_line(line: str, stream_run: int | None = None) -> str:
    runs = reference_runs(line)
    if stream_run is not None:
        for r in runs:
            if len(r) > stream_run:
                return r  # decoded as read: the line's run, the rest of the line skipped
    best = ""
    for r in runs:
        if len(r) > len(best):
            best = r
    return best


def reference(text: str, stream_run: int | None = None) -> bytes:
    lines = io.StringIO(text, newline=None)  # universal newlines, as text files are read
    return bytes.fromhex("".join(reference_line(line, stream_run) for line in lines
                                 if not line.lstrip().startswith("#")))


def streamed(text: str, cuts: list[int], stream_run: int = STREAM_RUN) -> bytes:
    reader, out, pos = HexText(stream_run=stream_run), [], 0
    for cut in sorted(c for c in cuts if 0 <= c <= len(text)) + [len(text)]:
        out += reader.feed(text[pos:cut])
        pos = cut
    return b"".join(out + reader.finish())


# -- text as people paste it ----------------------------------------------------------------

def hex_token(max_bytes: int) -> st.SearchStrategy[str]:
    return st.tuples(st.sampled_from(["", "", "", "0x", "0X"]), st.binary(min_size=1, max_size=max_bytes),
                     st.booleans()).map(lambda t: t[0] + (t[1].hex().upper() if t[2] else t[1].hex()))


words = st.sampled_from(["rsu", "RX[14]:", "(ok)", "2024-11-22", "09:30:12.123", "0x", "0X", "zz", "fe0", "f",
                         "abc", "车道", "#", "x", "0xzz", "ff-ff", "0x0x12", "ＦＦ", "é"])
seps = st.sampled_from([" ", " ", "  ", "\t", ",", ", ", ";", "|", " | ", "\u3000", "\xa0", "\x0b", "\x85"])
breaks = st.sampled_from(["\n", "\n", "\r\n", "\r"])


@st.composite
def lines(draw: st.DrawFn, max_bytes: int = 6) -> str:
    tokens = draw(st.lists(st.one_of(hex_token(max_bytes), hex_token(max_bytes), words), max_size=12))
    line = ""
    for tok in tokens:
        line += tok + draw(seps)
    if tokens and draw(st.booleans()):
        line = line.rstrip(" \t,;|\u3000\xa0\x0b\x85")
    lead = draw(st.sampled_from(["", "", " ", "\t", "  # ", "#", "# "]))
    return lead + line


@st.composite
def texts(draw: st.DrawFn, max_bytes: int = 6) -> str:
    out = ""
    for line in draw(st.lists(lines(max_bytes), max_size=8)):
        out += line + draw(breaks)
    if draw(st.booleans()):
        out += draw(lines(max_bytes))  # a last line without a line break
    return out


cut_lists = st.lists(st.integers(0, 400), max_size=10)


@settings(max_examples=400, **SETTINGS)
@given(texts(), cut_lists)
def test_text_read_in_pieces_cut_anywhere_gives_the_bytes_of_the_whole_text_read_line_by_line(text, cuts):
    assert streamed(text, cuts) == reference(text)


@settings(max_examples=400, **SETTINGS)
@given(texts(max_bytes=30), cut_lists, st.integers(13, 40))
def test_a_run_over_the_streaming_threshold_is_its_lines_run_wherever_the_reads_cut(text, cuts, stream_run):
    # Every word above is at most 13 characters: a token that is not hex is never long
    # enough to be streamed before it turns out not to be hex (see the next scenarios).
    assert streamed(text, cuts, stream_run) == reference(text, stream_run)


# -- the streaming rule, by scenario (threshold 16 digits) -------------------------------

def every_cut(text: str, stream_run: int = 16) -> set[bytes]:
    """What the reader gives for every single cut of the text, and uncut."""
    return {streamed(text, [c], stream_run) for c in range(len(text) + 1)}


def test_a_long_hex_line_is_decoded_whole_however_it_is_cut():
    digits = bytes(range(40)).hex()
    assert every_cut(digits + "\n") == {bytes(range(40))}
    assert every_cut(" ".join(re.findall("..", digits)) + "\r\n") == {bytes(range(40))}


def test_a_long_run_in_a_log_line_is_decoded_without_the_words_around_it():
    digits = bytes(range(20)).hex()
    assert every_cut(f"09:30:12 rsu RX: 0x{digits} ff (ok) 00\n") == {bytes(range(20)) + b"\xff"}


def test_after_a_streamed_run_the_rest_of_its_line_is_skipped_even_a_longer_run():
    first, second = bytes(range(10)), bytes(range(30))
    text = f"{first.hex()} zz {second.hex()}\n{b'ok'.hex()}\n"
    assert every_cut(text) == {first + b"ok"}
    assert streamed(text, [], stream_run=STREAM_RUN) == second + b"ok"  # the longest run, below the threshold


def test_a_streamed_token_ending_in_an_odd_digit_keeps_its_whole_bytes_and_ends_the_line():
    text = bytes(range(20)).hex() + "f ab\ncd\n"
    # Read in one piece, the token is not hex (odd) and the line has only "ab"; cut while
    # the token is still being read, its bytes are already decoded when the odd digit shows.
    assert streamed(text, []) == b"\xab\xcd"
    assert streamed(text, [30], stream_run=16) == bytes(range(20)) + b"\xcd"


def test_a_comment_line_is_skipped_however_long():
    text = "# " + bytes(range(60)).hex() + "\n  #" + "ab" * 40 + "\nc4\n"
    assert every_cut(text) == {b"\xc4"}


def test_the_reader_holds_no_more_than_a_piece_and_the_threshold():
    # 4 MiB of hex in one line, read 64 KiB at a time: nothing held grows with the line.
    reader = HexText(stream_run=1 << 16)
    piece = "0123456789abcdef" * 4096
    total = 0
    for _ in range(64):
        total += sum(map(len, reader.feed(piece)))
        assert len(reader._carry) <= (1 << 16) + 2 and reader._run_len <= 1 << 16
    total += sum(map(len, reader.finish()))
    assert total == 64 * len(piece) // 2


# -- the tool on a 16 MB line, in a child process ----------------------------------------

MEASURE = textwrap.dedent("""
    import resource, subprocess, sys
    with open(sys.argv[2], "wb") as out:
        proc = subprocess.run([sys.executable, "-m", "laned.cli", "decode", "--json", "--profile", "national",
                               "--file", sys.argv[1]], stdout=out, stderr=subprocess.PIPE)
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # Linux: KiB, this child only
    print(proc.returncode, peak_kib, proc.stderr.decode()[:500].replace("\\n", " | "))
""")


def test_a_16_mb_hex_line_decodes_every_frame_in_bounded_memory(tmp_path):
    frame = next(v for v in VECTORS["frames"] if v["profile"] == "national" and v["type"] == "B4")
    count = (16 << 20) // len(frame["hex"])
    src = tmp_path / "capture.hex"
    with src.open("w") as fh:
        fh.write(frame["hex"] * count + "\n")
    assert src.stat().st_size >= 16_000_000
    out = tmp_path / "frames.jsonl"
    # A fresh process runs the tool, so that RUSAGE_CHILDREN is the tool's peak alone.
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(src), str(out)], capture_output=True, text=True,
                          timeout=120)
    code, peak_kib, stderr = proc.stdout.split(" ", 2)
    assert (int(code), stderr.strip()) == (0, ""), proc.stdout + proc.stderr
    with out.open() as fh:
        first = json.loads(fh.readline())
        frames = 1 + sum(1 for _ in fh)
    assert frames == count
    assert first["type"] == "B4" and first["fields"] == frame["fields"]
    assert int(peak_kib) < 200 * 1024, f"peak memory {int(peak_kib) // 1024} MB"
