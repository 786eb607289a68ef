"""Hypothesis properties of the protocol layer.

* every message type of every profile round-trips for random field values, also in
  its short error form;
* random byte streams, cut anywhere, never make the decoder raise;
* a valid frame surrounded by noise is always recovered intact;
* what comes out does not depend on how the stream was cut into chunks.
"""

from __future__ import annotations

import datetime as dt
import string

import hypothesis.strategies as st
from hypothesis import given, settings

from laned.protocol import PROFILES, Decoded, FrameDecoder, ProtocolError, encode_message
from laned.protocol.messages import Message

PROFILE_NAMES = sorted(PROFILES)
ALL_TYPES = [(p, t) for p in PROFILE_NAMES for t in sorted(PROFILES[p].messages)]

dates = st.one_of(st.none(), st.dates(dt.date(1990, 1, 1), dt.date(2099, 12, 31)))
datetimes = st.one_of(st.none(), st.datetimes(dt.datetime(1990, 1, 1), dt.datetime(2099, 12, 31))
                      .map(lambda d: d.replace(microsecond=0)))
plates = st.builds(lambda prov, rest: prov + rest, st.sampled_from("京津沪渝冀鲁粤苏浙闽"),
                   st.text(string.ascii_uppercase + string.digits, min_size=1, max_size=8))


def value_for(kind, length_hint=None):
    name = kind.name
    if name == "u8":
        return st.integers(0, 0xFF)
    if name == "u16":
        return st.integers(0, 0xFFFF)
    if name == "u32":
        return st.integers(0, 0xFFFFFFFF)
    if name.startswith("hex"):
        return st.binary(min_size=kind.size, max_size=kind.size)
    if name == "bcd_date":
        return dates
    if name == "bcd_datetime":
        return datetimes
    if name.startswith("gbk"):
        return plates
    if name == "rest":
        return st.binary(max_size=40)
    raise AssertionError(name)


@st.composite
def messages(draw, profile_name: str, type_code: int, short: bool = False) -> Message:
    cls = PROFILES[profile_name].messages[type_code]
    layout = cls.LAYOUT
    values = {}
    names = layout.names
    if short:
        names = names[: names.index(layout.status_field) + 1]
    for name in names:
        kind = layout.kinds[name]
        if kind.length_from is not None:
            values[name] = draw(st.binary(min_size=values[kind.length_from], max_size=values[kind.length_from]))
        elif kind.length_from is None and name.endswith("_length") and any(
                k.length_from == name for k in layout.kinds.values()):
            values[name] = draw(st.integers(0, 20))
        else:
            values[name] = draw(value_for(kind))
    if short:
        values[layout.status_field] = draw(st.integers(1, 0xFF))
    return cls(**values)


def wire(profile_name: str, msg: Message, ctl: int) -> bytes:
    profile = PROFILES[profile_name]
    return encode_message(profile, msg, rsctl=ctl if profile.envelope == "classic" else None,
                          seq=ctl if profile.envelope == "gb2019tcp" else None)


def decode_all(profile_name: str, data: bytes, cuts: list[int] | None = None) -> list:
    dec = FrameDecoder(PROFILES[profile_name])
    out, pos = [], 0
    for cut in sorted(cuts or []) + [len(data)]:
        out += dec.feed(data[pos:cut])
        pos = max(pos, cut)
    return out + dec.finish()


@st.composite
def any_message(draw, short_allowed: bool = True):
    profile_name, type_code = draw(st.sampled_from(ALL_TYPES))
    layout = PROFILES[profile_name].messages[type_code].LAYOUT
    short = short_allowed and layout.status_field is not None and draw(st.booleans())
    return profile_name, draw(messages(profile_name, type_code, short))


@settings(max_examples=400)
@given(any_message(), st.integers(0, 0xFF))
def test_every_message_type_round_trips_through_its_envelope(pm, ctl):
    profile_name, msg = pm
    data = wire(profile_name, msg, ctl)
    events = decode_all(profile_name, data)
    assert len(events) == 1 and isinstance(events[0], Decoded), events
    assert events[0].message == msg
    assert wire(profile_name, events[0].message, ctl) == data


@settings(max_examples=300)
@given(st.sampled_from(PROFILE_NAMES), st.binary(max_size=600), st.lists(st.integers(0, 600), max_size=8))
def test_random_bytes_never_make_the_decoder_raise(profile_name, data, cuts):
    for event in decode_all(profile_name, data, cuts):
        assert isinstance(event, (Decoded, ProtocolError))


# Noise that cannot take part in framing: no FF (which starts and ends frames). A noise
# byte FF right before the frame would legitimately merge with its start.
noise = st.binary(max_size=60).map(lambda b: b.replace(b"\xff", b"\x00"))


@settings(max_examples=300)
@given(any_message(), noise, noise, st.lists(st.integers(0, 400), max_size=6))
def test_a_valid_frame_in_noise_is_always_recovered(pm, before, after, cuts):
    profile_name, msg = pm
    data = before + wire(profile_name, msg, 0x18) + after
    frames = [e for e in decode_all(profile_name, data, cuts) if isinstance(e, Decoded)]
    assert [f.message for f in frames] == [msg]


@settings(max_examples=200)
@given(any_message(short_allowed=False), any_message(short_allowed=False), noise)
def test_two_frames_with_noise_between_both_come_out(a, b, gap):
    pa, ma = a
    pb, mb = b
    if PROFILES[pa].envelope != PROFILES[pb].envelope or PROFILES[pa].name != PROFILES[pb].name:
        mb = ma
    data = wire(pa, ma, 0x28) + gap + wire(pa, mb, 0x38)
    frames = [e.message for e in decode_all(pa, data) if isinstance(e, Decoded)]
    assert frames == [ma, mb]


def summary(events):
    return [(e.message.type_name, e.offset) if isinstance(e, Decoded) else (e.reason, e.offset) for e in events]


@settings(max_examples=200)
@given(st.lists(st.one_of(any_message(), st.binary(max_size=20).map(lambda b: ("noise", b))), min_size=1,
                max_size=6), st.integers(1, 50))
def test_the_outcome_does_not_depend_on_chunk_size(items, chunk):
    profile_name = "national"
    data = b""
    for item in items:
        if item[0] == "noise":
            data += item[1]
        elif item[0] == profile_name:
            data += wire(profile_name, item[1], 0x48)
    whole = summary(decode_all(profile_name, data))
    cut = summary(decode_all(profile_name, data, list(range(chunk, len(data), chunk))))
    assert cut == whole
