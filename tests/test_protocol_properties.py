"""Hypothesis properties of the protocol layer, for every profile.

* every message type of every profile round-trips for random field values, in its
  complete form and in the short forms its layout allows (error frames ending after
  ErrorCode, the network2019 B4 without EF04), and so do the opaque types and the empty
  reply; a message too big for its envelope is refused by the encoder, never sent as a
  frame the decoder would drop;
* random byte streams, cut anywhere and fed as bytes, bytearray or memoryview, never make
  the decoder raise, and what it returns is consistent with the stream and its counters;
* a valid frame surrounded by noise is always recovered intact, and so are two frames with
  noise between them (which noise is allowed, and why, is said at ``noise_for``);
* what comes out does not depend on how the stream was cut into reads.
"""

from __future__ import annotations

import datetime as dt
import json
import string
from collections import Counter
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, example, given, settings

from laned.protocol import (
    PROFILES,
    Decoded,
    EmptyReply,
    EncodeError,
    FrameDecoder,
    OpaqueMessage,
    ProtocolError,
    Sender,
    encode_message,
)
from laned.protocol.fields import Kind
from laned.protocol.framing import CLASSIC_MAX_WIRE, LENGTH_MAX_PAYLOAD
from laned.protocol.messages import Message
from laned.protocol.rsctl import is_rsu_rsctl

VECTORS = json.loads((Path(__file__).parent / "vectors" / "rsu_frames.json").read_text())
PROFILE_NAMES = sorted(PROFILES)
ALL_TYPES = [(p, t) for p in PROFILE_NAMES for t in sorted(PROFILES[p].messages)]
REASONS = {"bcc", "crc", "escape", "short", "too_long", "header", "unknown_type", "layout", "field"}

# Machines are noisy and shared: no per-example deadline. The budgets below keep the
# whole file at a few seconds per property.
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def envelope(profile_name: str) -> str:
    return PROFILES[profile_name].envelope


# -- field values -------------------------------------------------------------------------

PROVINCES = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼"
PLATE_TAILS = ["", "挂", "学", "警", "港", "澳", "领"]
# A plate: province, a letter, 5 or 6 letters/digits (6 on new-energy plates), an optional
# suffix character: at most 2 + 1 + 6 + 2 = 11 bytes of GBK, within the 12-byte field. Also
# the empty plate (12 NUL bytes on the wire), which OBUs without a vehicle file send.
plates = st.one_of(
    st.builds(lambda p, letter, rest, tail: p + letter + rest + tail, st.sampled_from(PROVINCES),
              st.sampled_from(string.ascii_uppercase),
              st.text(string.ascii_uppercase + string.digits, min_size=5, max_size=6),
              st.sampled_from(PLATE_TAILS)),
    st.just(""),
)
# BCD dates cover years 0001–9999; all-zero bytes stand for "no date" (None).
dates = st.one_of(st.none(), st.dates(dt.date(1, 1, 1), dt.date(9999, 12, 31)))
datetimes = st.one_of(st.none(), st.datetimes(dt.datetime(1, 1, 1), dt.datetime(9999, 12, 31, 23, 59, 59))
                      .map(lambda d: d.replace(microsecond=0)))


def value_for(kind: Kind) -> st.SearchStrategy[Any]:
    """Random typed values of one fixed-size field kind, in the range of its size."""
    if kind.name in ("u8", "u16", "u32"):
        assert kind.size is not None
        return st.integers(0, (1 << (8 * kind.size)) - 1)
    if kind.name.startswith("hex"):
        return st.binary(min_size=kind.size, max_size=kind.size)
    if kind.name == "bcd_date":
        return dates
    if kind.name == "bcd_datetime":
        return datetimes
    if kind.name.startswith("gbk"):
        assert kind.size == 12, "plates are the only GBK fields"
        return plates
    raise AssertionError(f"no strategy for field kind {kind.name}")


def payload_budget(profile_name: str) -> int:
    """The most TYPE + DATA bytes that fit the envelope whatever the bytes are.

    Classic: FF FF, then RSCTL + payload + BCC with every byte possibly escaped to two,
    then FF, within CLASSIC_MAX_WIRE. Length envelopes: the length field's limit.
    """
    if envelope(profile_name) == "classic":
        return (CLASSIC_MAX_WIRE - 3) // 2 - 2
    return LENGTH_MAX_PAYLOAD


def forms(cls: type[Message]) -> list[str]:
    out = ["full"]
    if cls.LAYOUT.status_field is not None:
        out.append("short")
    if cls.LAYOUT.pre_optional is not None:
        out.append("pre_optional")
    return out


@st.composite
def messages(draw: st.DrawFn, profile_name: str, type_code: int, form: str = "full",
             oversize: bool = False) -> Message:
    """A message of ``type_code`` in ``form`` with random field values.

    Variable-length fields get a length consistent with their length field. With
    ``oversize`` the variable part may exceed what the envelope can carry.
    """
    cls = PROFILES[profile_name].messages[type_code]
    layout = cls.LAYOUT
    names = layout.names
    if form == "short":
        names = names[: names.index(layout.status_field) + 1]
    elif form == "pre_optional":
        names = layout.pre_optional[0]
    length_fields = {k.length_from for k in layout.kinds.values() if k.length_from is not None}
    fixed = sum(layout.kinds[n].size or 0 for n in names)
    room = max(0, payload_budget(profile_name) - 1 - fixed)
    if oversize:
        room = room * 3 + 100
    values: dict[str, Any] = {}
    for name in names:
        kind = layout.kinds[name]
        if name in length_fields:
            values[name] = draw(st.integers(0, room))
        elif kind.length_from is not None:
            n = values[kind.length_from]
            values[name] = draw(st.binary(min_size=n, max_size=n))
        elif kind.size is None:  # Rest: the remaining bytes of the frame
            n = draw(st.integers(0, room if oversize else min(room, 300)))
            values[name] = draw(st.binary(min_size=n, max_size=n))
        else:
            values[name] = draw(value_for(kind))
    if form == "short":
        values[layout.status_field] = draw(st.integers(1, 0xFF))  # only an error frame may be short
    return cls(**values)


@st.composite
def any_message(draw: st.DrawFn, profile_name: str | None = None) -> tuple[str, Message]:
    """A (profile, message) of any type and form; also opaque frames and empty replies."""
    if profile_name is None:
        profile_name = draw(st.sampled_from(PROFILE_NAMES))
    profile = PROFILES[profile_name]
    kind = draw(st.sampled_from(["typed"] * 8 + ["opaque"] + (["empty"] if profile.envelope == "classic" else [])))
    if kind == "opaque":
        t = draw(st.sampled_from(sorted(profile.opaque)))
        return profile_name, OpaqueMessage(type_code=t, data=draw(st.binary(max_size=payload_budget(profile_name) - 1)))
    if kind == "empty":
        return profile_name, EmptyReply()
    t = draw(st.sampled_from(sorted(profile.messages)))
    form = draw(st.sampled_from(forms(profile.messages[t])))
    return profile_name, draw(messages(profile_name, t, form))


ctl_bytes = st.integers(0, 0xFF)  # classic RSCTL or gb2019tcp SEQ: any value is accepted


def wire(profile_name: str, msg: Message, ctl: int) -> bytes:
    env = envelope(profile_name)
    return encode_message(PROFILES[profile_name], msg, rsctl=ctl if env == "classic" else None,
                          seq=ctl if env == "gb2019tcp" else None)


def expected(msg: Message, ctl: int) -> Message:
    """What the decoder gives back: an empty reply takes its sender from the RSCTL."""
    if isinstance(msg, EmptyReply):
        return EmptyReply(origin=Sender.RSU if is_rsu_rsctl(ctl) else Sender.PC)
    return msg


def decode_all(profile_name: str, data: bytes, cuts: list[int] | None = None, as_type: type = bytes,
               decoder: FrameDecoder | None = None) -> list[Decoded | ProtocolError]:
    """Feed ``data`` cut at ``cuts`` (positions, any order, repeats allowed), then finish."""
    dec = decoder or FrameDecoder(PROFILES[profile_name])
    out: list[Decoded | ProtocolError] = []
    pos = 0
    for cut in sorted(c for c in (cuts or []) if 0 <= c <= len(data)) + [len(data)]:
        out += dec.feed(as_type(data[pos:cut]))
        pos = cut
    return out + dec.finish()


def chunked(data: bytes, size: int) -> list[int]:
    return list(range(size, len(data), size))


def summary(events: list[Decoded | ProtocolError]) -> list[tuple[str, str, int | None]]:
    return [("frame", e.message.type_name, e.offset) if isinstance(e, Decoded) else ("error", e.reason, e.offset)
            for e in events]


# -- 1. round trips -----------------------------------------------------------------------

def every_form() -> list[tuple[str, int, str]]:
    return [(p, t, f) for p, t in ALL_TYPES for f in forms(PROFILES[p].messages[t])]


def type_id(v: Any) -> str:
    return f"{v:02X}" if isinstance(v, int) else str(v)


@pytest.mark.parametrize("profile_name,type_code,form", every_form(), ids=type_id)
@settings(max_examples=60, **SETTINGS)
@given(data=st.data(), ctl=ctl_bytes)
def test_every_message_type_round_trips_through_its_envelope(profile_name, type_code, form, data, ctl):
    msg = data.draw(messages(profile_name, type_code, form))
    frame = wire(profile_name, msg, ctl)
    (event,) = decode_all(profile_name, frame)
    assert isinstance(event, Decoded), event
    assert event.message == msg
    assert type(event.message) is type(msg)
    assert event.raw.wire == frame and event.offset == 0
    assert event.rsctl == (ctl if envelope(profile_name) == "classic" else None)
    assert event.seq == (ctl if envelope(profile_name) == "gb2019tcp" else None)
    assert wire(profile_name, event.message, ctl) == frame


@settings(max_examples=300, **SETTINGS)
@given(any_message(), ctl_bytes)
def test_opaque_frames_and_empty_replies_round_trip_too(pm, ctl):
    profile_name, msg = pm
    frame = wire(profile_name, msg, ctl)
    (event,) = decode_all(profile_name, frame)
    assert isinstance(event, Decoded), event
    assert event.message == expected(msg, ctl)
    assert wire(profile_name, event.message, ctl) == frame


variable_types = [(p, t) for p, t in ALL_TYPES if PROFILES[p].messages[t].LAYOUT.full[1] is None]


@pytest.mark.parametrize("profile_name,type_code", variable_types, ids=type_id)
@settings(max_examples=40, **SETTINGS)
@given(data=st.data(), ctl=ctl_bytes)
def test_a_message_too_big_for_its_envelope_is_refused_by_the_encoder(profile_name, type_code, data, ctl):
    msg = data.draw(messages(profile_name, type_code, "full", oversize=True))
    try:
        frame = wire(profile_name, msg, ctl)
    except EncodeError:
        return  # refused: nothing goes on the wire
    (event,) = decode_all(profile_name, frame)
    assert isinstance(event, Decoded), f"encoded {len(frame)} bytes that the decoder drops: {event}"
    assert event.message == msg


# -- 2. random streams --------------------------------------------------------------------

def sample_frames(profile_name: str) -> list[bytes]:
    """Vector frames of the profile's envelope (and profile, for classic)."""
    env = envelope(profile_name)
    if env == "classic":
        return [bytes.fromhex(v["hex"]) for v in VECTORS["frames"] if v["profile"] == profile_name]
    return [bytes.fromhex(v["hex"]) for v in VECTORS["envelopes"] if v["envelope"] == env]


def malformed_frames(profile_name: str) -> list[bytes]:
    env = envelope(profile_name)
    if env == "classic":
        return [bytes.fromhex(v["hex"]) for v in VECTORS["malformed"]]
    return [bytes.fromhex(v["hex"]) for v in VECTORS["envelopes_malformed"] if v["envelope"] == env]


# Bytes with a framing meaning (FF, FE) and escape seconds (00, 01) much more often than
# uniform bytes would give them: otherwise FF FF almost never occurs.
framing_bytes = st.binary(max_size=80) | st.lists(st.sampled_from([0xFF, 0xFE, 0x00, 0x01, 0x11]) | st.integers(0, 255),
                                                  max_size=40).map(bytes)


@st.composite
def stream_pieces(draw: st.DrawFn, profile_name: str) -> bytes:
    """A stream of random bytes, vector frames, encoded messages, and damaged frames."""
    frames = sample_frames(profile_name) + malformed_frames(profile_name)
    pieces = []
    for _ in range(draw(st.integers(1, 8))):
        what = draw(st.sampled_from(["noise", "vector", "message", "truncated", "flipped"]))
        if what == "noise":
            pieces.append(draw(framing_bytes))
            continue
        if what == "message":
            _, msg = draw(any_message(profile_name))
            frame = wire(profile_name, msg, draw(ctl_bytes))
        else:
            frame = draw(st.sampled_from(frames))
        if what == "truncated":
            frame = frame[: draw(st.integers(0, len(frame)))]
        elif what == "flipped":
            i = draw(st.integers(0, len(frame) - 1))
            frame = frame[:i] + bytes([frame[i] ^ draw(st.integers(1, 255))]) + frame[i + 1:]
        pieces.append(frame)
    return b"".join(pieces)


@st.composite
def streams(draw: st.DrawFn) -> tuple[str, bytes]:
    profile_name = draw(st.sampled_from(PROFILE_NAMES))
    return profile_name, draw(st.one_of(framing_bytes, stream_pieces(profile_name)))


cut_lists = st.lists(st.integers(0, 2000), max_size=12)
feed_types = st.sampled_from([bytes, bytearray, memoryview])


@settings(max_examples=600, **SETTINGS)
@given(streams(), cut_lists, feed_types)
def test_random_streams_never_make_the_decoder_raise(ps, cuts, as_type):
    profile_name, data = ps
    dec = FrameDecoder(PROFILES[profile_name])
    events = decode_all(profile_name, data, cuts, as_type, decoder=dec)  # must not raise
    offsets = []
    for e in events:
        assert isinstance(e, (Decoded, ProtocolError)), e
        assert isinstance(e.offset, int) and 0 <= e.offset < len(data), (e, e.offset, len(data))
        offsets.append(e.offset)
        if isinstance(e, Decoded):
            assert data[e.offset:e.offset + len(e.raw.wire)] == e.raw.wire  # it is what the stream holds
            assert isinstance(e.message, Message)
        else:
            assert e.reason in REASONS, e
    assert offsets == sorted(offsets), "events come in stream order"
    # The counters say the same as the events.
    errors = Counter(e.reason for e in events if isinstance(e, ProtocolError))
    assert +dec.drops == errors
    assert dec.deframer.frames == sum(isinstance(e, Decoded) for e in events) + sum(dec.errors.values())


# -- 3. frames in noise -------------------------------------------------------------------

def noise_for(profile_name: str) -> st.SearchStrategy[bytes]:
    """Noise that cannot legitimately take a frame next to it.

    Classic: anything, FF and FE runs included. A noise "FF FF x …" starts a false frame
    that ends at the real frame's first FF; the decoder then takes that end FF with the
    next FF as the real start (see ``ClassicDeframer``), and a runaway is skipped up to its
    end byte the same way. Noise ending in FF (a glitch as a transceiver switches on) makes
    "FF … FF | FF FF RSCTL": no frame starts "FF FF FF", so the frame starts at the run's
    last two FF (``Deframer._skip_ff_run``).

    Length envelopes (jinyi, gb2019tcp): no "FF FF x" (x not FF) in the noise, but it may
    end in a run of FF, for the same reason as above. Those frames have no end byte: a
    false start in noise reads a length from the following bytes and, when the length is
    plausible and the CRC fails, the decoder skips the whole length it named (by design:
    on TCP a false FF FF inside DATA is likelier than corruption), which may cover the
    real frame.
    """
    raw = st.binary(max_size=120) | st.lists(st.sampled_from([0xFF, 0xFE, 0x00, 0x01]) | st.integers(0, 255),
                                             max_size=60).map(bytes)
    ff_run = st.integers(0, 6).map(lambda n: b"\xff" * n)
    if envelope(profile_name) == "classic":
        raw = raw | st.binary(min_size=1, max_size=300).map(lambda b: b"\xff\xff" + b.replace(b"\xff", b"\x11"))
        return st.tuples(raw, ff_run).map(b"".join)

    def clean(b: bytes) -> bytes:
        while b"\xff\xff" in b:
            b = b.replace(b"\xff\xff", b"\xff\x00")
        return b

    return st.tuples(raw.map(clean), ff_run).map(b"".join)


@st.composite
def framed_in_noise(draw: st.DrawFn, count: int) -> tuple[str, list[tuple[Message, int, bytes]], list[bytes]]:
    profile_name = draw(st.sampled_from(PROFILE_NAMES))
    frames = []
    for _ in range(count):
        _, msg = draw(any_message(profile_name))
        ctl = draw(ctl_bytes)
        frames.append((msg, ctl, wire(profile_name, msg, ctl)))
    noises = [draw(noise_for(profile_name)) for _ in range(count + 1)]
    return profile_name, frames, noises


def assert_recovered(profile_name: str, frames: list[tuple[Message, int, bytes]], noises: list[bytes],
                     cuts: list[int], as_type: type) -> None:
    data, at = noises[0], []
    for (_, _, frame), after in zip(frames, noises[1:]):
        at.append(len(data))
        data += frame + after
    got = [e for e in decode_all(profile_name, data, cuts, as_type) if isinstance(e, Decoded)]
    for (msg, ctl, frame), offset in zip(frames, at):
        match = [e for e in got if e.offset == offset]
        assert match, f"frame at {offset} lost; decoded {summary(got)}"
        assert match[0].message == expected(msg, ctl)
        assert match[0].raw.wire == frame


@settings(max_examples=500, **SETTINGS)
@given(framed_in_noise(1), cut_lists, feed_types)
@example(("national", [(EmptyReply(), 0x84, bytes.fromhex("ffff8484ff"))], [b"\xff\xff" + b"\x11" * 300, b""]),
         [1, 100, 257], bytes)  # a runaway detected by length before its end FF arrives
def test_a_valid_frame_in_noise_is_always_recovered_intact(pf, cuts, as_type):
    assert_recovered(*pf, cuts, as_type)


@settings(max_examples=400, **SETTINGS)
@given(framed_in_noise(2), cut_lists, feed_types)
def test_two_frames_with_noise_around_and_between_both_come_out(pf, cuts, as_type):
    assert_recovered(*pf, cuts, as_type)


@pytest.mark.parametrize("profile_name", PROFILE_NAMES)
def test_a_stray_ff_right_before_a_frame_loses_the_frame(profile_name):
    # An RS-485 transceiver switching on often puts one glitch byte, typically FF, on the
    # line before the first real byte. The decoder takes "FF FF FF" as a 0-byte frame
    # (classic) or reads FF as the first header byte (length envelopes), and the frame that
    # follows is lost.
    msg = EmptyReply() if envelope(profile_name) == "classic" else OpaqueMessage(type_code=0xC4, data=b"\x01")
    assert_recovered(profile_name, [(msg, 0x84, wire(profile_name, msg, 0x84))], [b"\xff", b""], [], bytes)


# -- 4. chunking does not matter ----------------------------------------------------------

@st.composite
def concatenations(draw: st.DrawFn) -> tuple[str, bytes]:
    """Valid frames (vectors and random messages), malformed vectors and noise, joined."""
    profile_name = draw(st.sampled_from(PROFILE_NAMES))
    good, bad = sample_frames(profile_name), malformed_frames(profile_name)
    pieces = []
    for _ in range(draw(st.integers(1, 8))):
        what = draw(st.sampled_from(["vector", "message", "malformed", "malformed", "noise"]))
        if what == "vector":
            pieces.append(draw(st.sampled_from(good)))
        elif what == "malformed":
            pieces.append(draw(st.sampled_from(bad)))
        elif what == "message":
            _, msg = draw(any_message(profile_name))
            pieces.append(wire(profile_name, msg, draw(ctl_bytes)))
        else:
            pieces.append(draw(framing_bytes))
    return profile_name, b"".join(pieces)


@settings(max_examples=300, **SETTINGS)
@given(concatenations(), st.lists(st.integers(2, 64), min_size=1, max_size=3), cut_lists)
def test_the_outcome_does_not_depend_on_how_the_stream_is_cut(pd, sizes, cuts):
    profile_name, data = pd
    whole_decoder = FrameDecoder(PROFILES[profile_name])
    whole = summary(decode_all(profile_name, data, decoder=whole_decoder))
    for cut in [chunked(data, 1)] + [chunked(data, n) for n in sizes] + [cuts]:
        dec = FrameDecoder(PROFILES[profile_name])
        assert summary(decode_all(profile_name, data, cut, decoder=dec)) == whole, cut[:10]
        assert dec.drops == whole_decoder.drops


def test_the_shared_stream_and_every_malformed_vector_give_the_same_events_for_every_chunk_size():
    c0 = bytes.fromhex(VECTORS["frames"][0]["hex"])
    data = bytes.fromhex(VECTORS["stream"]["hex"]) + b"".join(bytes.fromhex(v["hex"]) + c0 for v in VECTORS["malformed"])
    whole = summary(decode_all("national", data))
    assert [s[1] for s in whole if s[0] == "error"] == [v["reason"] for v in VECTORS["malformed"]]
    assert [s[1] for s in whole if s[0] == "frame"] == VECTORS["stream"]["frames"] + ["C0"] * len(VECTORS["malformed"])
    for size in range(1, len(data) + 1):
        assert summary(decode_all("national", data, chunked(data, size))) == whole, size
