"""Damaged payloads in intact envelopes: the layouts of every profile, attacked directly.

Random streams (``test_protocol_properties``) mostly die at the envelope: a flipped bit
breaks the BCC or the CRC long before a layout sees it. Here the damage is done to the
PAYLOAD (TYPE + DATA) of a valid message, and the result is wrapped in a *valid*
envelope by the project's own ``encode_frame`` (right BCC for classic, right length and
CRC for jinyi and gb2019tcp), so every mutation reaches the message layouts.

Whatever the payload, the decoder must give back exactly one event for the frame, a
``Decoded`` whose fields are what the layout says (every fixed field its size, every
variable field the length its length field names) or a ``ProtocolError`` naming the
frame's offset and bytes, never raise, and then decode the next good frame.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from laned.protocol import (
    PROFILES,
    Decoded,
    EmptyReply,
    EncodeError,
    FrameDecoder,
    LayoutError,
    OpaqueMessage,
    ProtocolError,
    get_profile,
)
from laned.protocol.fields import U8, U16, Hex, VarBytes
from laned.protocol.framing import encode_frame
from laned.protocol.messages import Message, Sender, message, wire
from tests.test_protocol_properties import (
    PROFILE_NAMES,
    SETTINGS,
    forms,
    messages,
    payload_budget,
)

TYPED = [(p, t) for p in PROFILE_NAMES for t in sorted(PROFILES[p].messages)]
OPAQUE = [(p, t) for p in PROFILE_NAMES for t in sorted(PROFILES[p].opaque)]
# What a damaged payload in an intact envelope may be dropped for: the layouts' reasons,
# and, in the length envelopes, an empty payload (LEN 0: no frame type).
MESSAGE_REASONS = {"layout", "field", "unknown_type"}


def type_id(v: Any) -> str:
    return f"{v:02X}" if isinstance(v, int) else str(v)


def known_types(profile_name: str) -> list[int]:
    p = PROFILES[profile_name]
    return sorted(set(p.messages) | set(p.opaque))


@st.composite
def mutated(draw: st.DrawFn, profile_name: str, payload: bytes) -> bytes:
    """``payload`` after one to four mutations: truncate, extend, flip, replace, splice, retype."""
    for _ in range(draw(st.integers(1, 4))):
        what = draw(st.sampled_from(["truncate", "extend", "flip", "replace", "splice", "retype"]))
        n = len(payload)
        if what == "truncate":
            payload = payload[: draw(st.integers(0, n))]
        elif what == "extend":
            payload += draw(st.binary(min_size=1, max_size=40))
        elif what == "splice":  # bytes inserted or removed in the middle: the fields after it shift
            i = draw(st.integers(0, n))
            j = draw(st.integers(i, min(n, i + 8)))
            payload = payload[:i] + draw(st.binary(max_size=8)) + payload[j:]
        elif not payload:
            continue
        elif what == "flip":
            i = draw(st.integers(0, n - 1))
            payload = payload[:i] + bytes([payload[i] ^ (1 << draw(st.integers(0, 7)))]) + payload[i + 1:]
        elif what == "replace":
            i = draw(st.integers(0, n - 1))
            payload = payload[:i] + bytes([draw(st.integers(0, 255))]) + payload[i + 1:]
        else:  # retype: another known frame type of the profile, the data unchanged
            payload = bytes([draw(st.sampled_from(known_types(profile_name)))]) + payload[1:]
    return payload


def envelope_frame(profile_name: str, payload: bytes, ctl: int) -> tuple[bytes, bytes]:
    """``payload`` in a valid envelope of the profile (cut to fit if it outgrew it)."""
    profile = PROFILES[profile_name]
    try:
        frame = encode_frame(profile.envelope, payload, rsctl=ctl, seq=ctl, escaping=profile.escaping)
    except EncodeError:
        payload = payload[: payload_budget(profile_name)]
        frame = encode_frame(profile.envelope, payload, rsctl=ctl, seq=ctl, escaping=profile.escaping)
    return payload, frame


def assert_fields_fit_their_layout(msg: Message, payload: bytes) -> None:
    """A decoded message holds exactly the bytes it came from, in the sizes the layout names."""
    if isinstance(msg, EmptyReply):
        assert payload == b""
        return
    assert msg.frame_type == payload[0]
    fields = msg.fields()
    layout = getattr(type(msg), "LAYOUT", None)  # OpaqueMessage has none: its data is all it holds
    for name, value in fields.items():
        if layout is None or value is None:
            continue
        kind = layout.kinds[name]
        raw = kind.encode(value) if kind.encode is not None else value
        if isinstance(raw, int):
            assert 0 <= raw < 1 << (8 * kind.size), (name, raw)
        elif kind.size is not None:
            assert len(raw) == kind.size, f"{name}: {len(raw)} bytes, the layout says {kind.size}"
        elif kind.length_from is not None:
            assert len(raw) == fields[kind.length_from], f"{name}: {len(raw)} bytes, {kind.length_from} says {fields[kind.length_from]}"
    assert len(msg.encode()) == len(payload), "the message does not account for every byte of the frame"


def check_mutated_frame(profile_name: str, payload: bytes, frame: bytes, good: bytes, good_msg: Message,
                        cuts: list[int]) -> None:
    # 1. The damaged frame alone, in one read (the classic fast path), then a good frame.
    dec = FrameDecoder(PROFILES[profile_name])
    events = dec.feed(frame)
    events += dec.finish() if not events else []
    assert len(events) == 1, events
    (event,) = events
    if isinstance(event, Decoded):
        assert event.offset == 0 and event.raw.wire == frame
        assert_fields_fit_their_layout(event.message, payload)
    else:
        assert isinstance(event, ProtocolError), event
        if not payload and PROFILES[profile_name].envelope != "classic":
            # LEN 0: the length envelopes drop it at the header, before any layout (its
            # data is the header, the CRC after it is skipped as noise).
            assert event.reason == "short" and frame.startswith(event.data), event
        else:
            assert event.reason in MESSAGE_REASONS, event
            assert event.data == frame, (event.data.hex(), frame.hex())
        assert event.offset == 0
    (after,) = dec.feed(good) + dec.finish()
    assert isinstance(after, Decoded) and after.message == good_msg, after
    assert after.offset == len(frame)

    # 2. The same two frames cut into random reads: the same events.
    dec2 = FrameDecoder(PROFILES[profile_name])
    data, got, pos = frame + good, [], 0
    for cut in sorted(c for c in cuts if 0 <= c <= len(frame) + len(good)) + [len(frame) + len(good)]:
        got += dec2.feed(data[pos:cut])
        pos = cut
    got += dec2.finish()
    assert [type(e) for e in got] == [type(event), Decoded]
    if isinstance(event, ProtocolError):
        assert (got[0].reason, got[0].offset, got[0].data) == (event.reason, event.offset, event.data)
    else:
        assert got[0].message == event.message
    assert got[1].message == good_msg and got[1].offset == len(frame)
    assert +dec2.drops == Counter(e.reason for e in got if isinstance(e, ProtocolError))


ctl_bytes = st.integers(0, 0xFF)
cut_lists = st.lists(st.integers(0, 600), max_size=8)


@pytest.mark.parametrize("profile_name,type_code", TYPED, ids=type_id)
@settings(max_examples=120, **SETTINGS)
@given(data=st.data(), ctl=ctl_bytes, cuts=cut_lists)
def test_a_damaged_payload_in_an_intact_envelope_is_decoded_or_dropped_never_raised(
        profile_name, type_code, data, ctl, cuts):
    form = data.draw(st.sampled_from(forms(PROFILES[profile_name].messages[type_code])))
    original = data.draw(messages(profile_name, type_code, form))
    _, good = envelope_frame(profile_name, original.encode(), ctl)
    payload, frame = envelope_frame(profile_name, data.draw(mutated(profile_name, original.encode())), ctl)
    check_mutated_frame(profile_name, payload, frame, good, original, cuts)


@pytest.mark.parametrize("profile_name,type_code", OPAQUE, ids=type_id)
@settings(max_examples=15, **SETTINGS)
@given(data=st.data(), ctl=ctl_bytes, cuts=cut_lists)
def test_a_damaged_opaque_frame_in_an_intact_envelope_is_decoded_or_dropped_never_raised(
        profile_name, type_code, data, ctl, cuts):
    original = OpaqueMessage(type_code=type_code, data=data.draw(st.binary(max_size=60)))
    _, good = envelope_frame(profile_name, original.encode(), ctl)
    payload, frame = envelope_frame(profile_name, data.draw(mutated(profile_name, original.encode())), ctl)
    check_mutated_frame(profile_name, payload, frame, good, original, cuts)


# -- the frames that were seen to fail, as plain scenarios ------------------------------

def good_frame(profile_name: str) -> bytes:
    profile = get_profile(profile_name)
    return encode_frame(profile.envelope, b"\xc4\x01", rsctl=0x84, seq=0x10, escaping=profile.escaping)


def test_a_network2019_b4_too_short_for_its_layout_is_a_layout_error_not_a_crash():
    # The finding: B4 with a valid BCC but 6 data bytes, which match no form of the
    # network2019 B4 (5 for an error frame, 97 without EF04, 101 + EF04Length with it).
    # The compiled construct parser raised struct.error out of FrameDecoder.feed.
    frame = bytes.fromhex("ffff18b4a1b2c3d40000a8ff")
    dec = FrameDecoder(get_profile("network2019"))
    (event,) = dec.feed(frame)
    assert isinstance(event, LayoutError) and event.reason == "layout"
    assert event.offset == 0 and event.data == frame
    assert "B4 (network2019)" in event.detail and "got 6" in event.detail
    (after,) = dec.feed(good_frame("network2019"))
    assert isinstance(after, Decoded) and after.message.frame_type == 0xC4
    assert dec.drops == Counter(layout=1)


@pytest.mark.parametrize("profile_name", ["jinyi", "gb2019tcp"])
def test_a_tcp_b2_shorter_than_its_obu_id_is_a_layout_error_not_a_two_byte_obu_id(profile_name):
    # construct's compiled parser read Bytes(4) from 2 bytes without complaint: the frame
    # came out as an OBU id of 2 bytes.
    profile = get_profile(profile_name)
    frame = encode_frame(profile.envelope, bytes.fromhex("b2a1b2"), seq=0x01)
    (event,) = FrameDecoder(profile).feed(frame)
    assert isinstance(event, LayoutError), event
    assert event.offset == 0 and event.data == frame and "at least 4" in event.detail


def b4_with_ef04(ef04_length: int, ef04_info: bytes) -> bytes:
    from laned.protocol.profiles import network2019

    head = network2019.CardInfo(obu_id=b"\xa1\xb2\xc3\xd4", error_code=0, read_icc_status=0, card_rest_money=100,
                                issuer_info=bytes(43), last_station=bytes(43), read_ef04_status=0).encode()
    return head + (0).to_bytes(2, "big") + ef04_length.to_bytes(2, "big") + ef04_info


@pytest.mark.parametrize("ef04_length,info", [(50, b"xy"), (1, b"xy"), (0xFFFF, b"")], ids=["longer", "shorter", "huge"])
def test_a_network2019_b4_whose_ef04_length_disagrees_with_its_bytes_is_a_layout_error(ef04_length, info):
    # EF04Length 50 over 2 bytes used to decode as a B4 with a 2-byte EF04Info.
    frame = encode_frame("classic", b4_with_ef04(ef04_length, info), rsctl=0x18)
    (event,) = FrameDecoder(get_profile("network2019")).feed(frame)
    assert isinstance(event, LayoutError), event
    assert event.offset == 0 and event.data == frame
    assert f"ef04_length says {ef04_length}" in event.detail


def test_a_network2019_b4_whose_ef04_length_matches_its_bytes_still_decodes():
    frame = encode_frame("classic", b4_with_ef04(3, b"xyz"), rsctl=0x18)
    (event,) = FrameDecoder(get_profile("network2019")).feed(frame)
    assert isinstance(event, Decoded) and event.message.ef04_info == b"xyz"


@message(0xA7, Sender.RSU, profile="test")
class _MiddleVariable(Message):
    """A layout no profile has yet: a variable field with fixed fields after it."""

    count: int = wire(U8)
    items: bytes = wire(VarBytes("count"))
    tail: int = wire(U16)
    tag: bytes = wire(Hex(2))


@pytest.mark.parametrize("data", ["", "03", "03aabbcc", "03aabbcc0001", "03aabbcc0001eeff00", "ff00"])
def test_a_layout_with_a_variable_field_in_the_middle_refuses_bad_lengths_with_a_layout_error(data):
    raw = bytes.fromhex(data)
    with pytest.raises(LayoutError):
        _MiddleVariable.LAYOUT.parse(raw)


def test_a_layout_with_a_variable_field_in_the_middle_still_decodes_what_fits():
    msg = _MiddleVariable.LAYOUT.parse(bytes.fromhex("03aabbcc0001eeff"))
    assert (msg.count, msg.items, msg.tail, msg.tag) == (3, b"\xaa\xbb\xcc", 1, b"\xee\xff")
    assert msg.encode() == bytes.fromhex("a703aabbcc0001eeff")
