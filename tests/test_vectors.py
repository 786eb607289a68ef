"""The shared RSU test vectors (../shared/design/vectors/rsu_frames.json) pass completely."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from laned.protocol import Decoded, FrameDecoder, ProtocolError, encode_message, get_profile
from laned.protocol.framing import deframe_all

VECTORS_FILE = Path(__file__).parent / "vectors" / "rsu_frames.json"
SHARED_FILE = Path(__file__).parents[2] / "shared" / "design" / "vectors" / "rsu_frames.json"
VECTORS = json.loads(VECTORS_FILE.read_text())


def decode_all(profile_name: str, data: bytes, chunk: int | None = None) -> list[Decoded | ProtocolError]:
    dec = FrameDecoder(get_profile(profile_name))
    out: list[Decoded | ProtocolError] = []
    step = chunk or len(data) or 1
    for i in range(0, len(data), step):
        out += dec.feed(data[i:i + step])
    return out + dec.finish()


def test_the_copied_vectors_are_identical_to_the_shared_ones():
    if not SHARED_FILE.exists():
        pytest.skip("shared/ is not beside this clone; the copy is what the suite runs")
    assert VECTORS_FILE.read_bytes() == SHARED_FILE.read_bytes()


@pytest.mark.parametrize("vector", VECTORS["frames"], ids=lambda v: f"{v['profile']}-{v['type']}-{v['rsctl']:02x}")
def test_every_frame_decodes_to_exactly_its_fields_and_re_encodes_to_the_same_bytes(vector):
    wire = bytes.fromhex(vector["hex"])
    (event,) = decode_all(vector["profile"], wire)
    assert isinstance(event, Decoded), event
    msg = event.message
    assert msg.type_name == vector["type"]
    assert str(msg.sender) == vector["sender"]
    assert event.rsctl == vector["rsctl"]
    assert msg.json_fields() == vector["fields"]
    assert encode_message(get_profile(vector["profile"]), msg, rsctl=event.rsctl) == wire


@pytest.mark.parametrize("vector", VECTORS["malformed"], ids=lambda v: v["reason"] + ":" + v["note"][:20])
def test_every_malformed_frame_is_rejected_with_its_reason(vector):
    events = decode_all("national", bytes.fromhex(vector["hex"]))
    assert [type(e) for e in events] and all(isinstance(e, ProtocolError) for e in events)
    assert [e.reason for e in events] == [vector["reason"]]
    assert events[0].offset == 0


@pytest.mark.parametrize("vector", VECTORS["malformed"], ids=lambda v: v["reason"])
def test_malformed_frames_are_rejected_the_same_way_when_fed_one_byte_at_a_time(vector):
    events = decode_all("national", bytes.fromhex(vector["hex"]), chunk=1)
    assert [e.reason for e in events if isinstance(e, ProtocolError)] == [vector["reason"]]


def test_the_stream_yields_its_two_frames_for_every_chunk_size():
    stream = VECTORS["stream"]
    data = bytes.fromhex(stream["hex"])
    for size in range(1, len(data) + 1):
        events = decode_all("national", data, chunk=size)
        assert [e.message.type_name for e in events if isinstance(e, Decoded)] == stream["frames"], size
        assert not [e for e in events if isinstance(e, ProtocolError)], size


@pytest.mark.parametrize("vector", VECTORS["envelopes"], ids=lambda v: f"{v['envelope']}-{v['type']}")
def test_envelope_frames_decode_and_re_encode(vector):
    profile = get_profile(vector["envelope"])
    wire = bytes.fromhex(vector["hex"])
    (event,) = decode_all(vector["envelope"], wire)
    assert isinstance(event, Decoded), event
    assert event.raw.payload.hex() == vector["payload"]
    assert event.message.type_name == vector["type"]
    assert event.seq == vector.get("seq")
    assert encode_message(profile, event.message, seq=event.seq) == wire


@pytest.mark.parametrize("vector", VECTORS["envelopes_malformed"], ids=lambda v: f"{v['envelope']}-{v['reason']}")
def test_malformed_envelope_frames_are_rejected_with_their_reason(vector):
    events = deframe_all(vector["envelope"], bytes.fromhex(vector["hex"]))
    assert [e.reason for e in events] == [vector["reason"]]
