"""Scenarios of the framing layer and the message layouts beyond the shared vectors."""

from __future__ import annotations

import datetime as dt

import pytest

from laned.protocol import (
    Decoded,
    EncodeError,
    FieldError,
    FrameDecoder,
    LayoutError,
    ProtocolError,
    UnknownTypeError,
    decode_message,
    encode_frame,
    encode_message,
    get_profile,
    reply_rsctl,
)
from laned.protocol.checks import bcc
from laned.protocol.framing import ClassicDeframer, RawFrame, escape, make_deframer, unescape
from laned.protocol.messages import EmptyReply, Sender
from laned.protocol.profiles import ObuFlag, national, network2019
from laned.protocol.records import CardIssueFile, StationRecord
from laned.protocol.rsctl import LaneSequence, is_pc_rsctl

NATIONAL = get_profile("national")
N2019 = get_profile("network2019")

B2_WIRE = bytes.fromhex("ffff18b2a1fe0033fe0100c9bdb6ab37010001010203040506070820230101203301012100005eff")
C0_WIRE = bytes.fromhex("ffff80c067404cc02024112209300003020a0002ecff")


def frames(events):
    return [e for e in events if isinstance(e, (Decoded, RawFrame))]


def errors(events):
    return [e for e in events if isinstance(e, ProtocolError)]


def test_escaping_covers_the_check_byte_and_round_trips_every_byte_value():
    body = bytes(range(256))
    assert unescape(escape(body)) == body
    assert b"\xff" not in escape(body)
    # BCC FF must itself be escaped: RSCTL 80 + TYPE 7F gives BCC FF.
    wire = encode_frame("classic", b"\x7f", rsctl=0x80)
    assert wire == bytes.fromhex("ffff807ffe01ff")


def test_an_empty_reply_is_decoded_with_its_sender_from_the_rsctl():
    (event,) = FrameDecoder(NATIONAL).feed(bytes.fromhex("ffff8484ff"))
    assert isinstance(event.message, EmptyReply)
    assert event.message.sender is Sender.PC
    assert event.rsctl == 0x84
    (event,) = FrameDecoder(NATIONAL).feed(bytes.fromhex("ffff4848ff"))
    assert event.message.sender is Sender.RSU


def test_a_frame_whose_end_byte_was_lost_does_not_swallow_the_next_frame():
    damaged = B2_WIRE[:-1]  # end FF lost on the line: the next start's FF ends it
    events = FrameDecoder(NATIONAL).feed(damaged + C0_WIRE)
    assert not errors(events)
    assert [e.message.type_name for e in frames(events)] == ["B2", "C0"]
    corrupted = B2_WIRE[:12] + bytes([B2_WIRE[12] ^ 0x40]) + B2_WIRE[13:-1]  # and a byte hit as well
    events = FrameDecoder(NATIONAL).feed(corrupted + C0_WIRE)
    assert [e.reason for e in errors(events)] == ["bcc"]
    assert [e.message.type_name for e in frames(events)] == ["C0"]


def test_a_runaway_without_end_byte_is_reported_once_and_the_link_resynchronises():
    d = ClassicDeframer()
    events = []
    for _ in range(40):
        events += d.feed(b"\x11" * 10 if events or _ else b"\xff\xff" + b"\x11" * 8)
    events += d.feed(C0_WIRE)
    assert [e.reason for e in errors(events)] == ["too_long"]
    assert len(frames(events)) == 1
    assert d.drops["too_long"] == 1


def test_noise_between_frames_is_skipped_and_counted_without_errors():
    dec = FrameDecoder(NATIONAL)
    events = dec.feed(b"\x00\x12\x34" + C0_WIRE + b"\x99\xfe\x55" + B2_WIRE)
    assert [e.message.type_name for e in frames(events)] == ["C0", "B2"]
    assert not errors(events)
    assert dec.deframer.noise_bytes == 6


def test_drops_are_counted_by_reason_and_decoding_goes_on():
    dec = FrameDecoder(NATIONAL)
    bad_bcc = B2_WIRE[:-2] + bytes([B2_WIRE[-2] ^ 1]) + b"\xff"
    events = dec.feed(bad_bcc + b"\xff\xff\xff" + C0_WIRE)
    assert [e.message.type_name for e in frames(events)] == ["C0"]
    assert dec.drops["bcc"] == 1 and dec.drops["short"] == 1


def test_errors_carry_the_stream_offset_of_the_bad_frame():
    dec = FrameDecoder(NATIONAL)
    events = dec.feed(C0_WIRE + b"\x00\x00" + bytes.fromhex("ffff58b5fe02ff"))
    (err,) = errors(events)
    assert err.reason == "escape"
    assert err.offset == len(C0_WIRE) + 2
    assert err.data == bytes.fromhex("ffff58b5fe02ff")


def test_a_truncated_data_frame_is_a_layout_error_naming_the_expected_length():
    body = bytes.fromhex("18b2a1fe33ff00c9bd")  # B2 with ErrorCode 00 but only 2 more bytes
    wire = encode_frame("classic", body[1:], rsctl=body[0])
    (err,) = FrameDecoder(NATIONAL).feed(wire)
    assert isinstance(err, LayoutError)
    assert "32" in err.detail and "got 7" in err.detail


def test_an_ok_frame_may_not_end_after_its_error_code():
    wire = encode_frame("classic", bytes.fromhex("b2a1b2c3d400"), rsctl=0x18)
    (err,) = FrameDecoder(NATIONAL).feed(wire)
    assert isinstance(err, LayoutError)


def test_an_unknown_frame_type_is_reported_not_raised():
    dec = FrameDecoder(NATIONAL)
    (err,) = dec.feed(encode_frame("classic", b"\x42\x01", rsctl=0x18))
    assert isinstance(err, UnknownTypeError)
    assert dec.drops["unknown_type"] == 1


def test_known_frame_types_without_a_confirmed_layout_are_kept_raw():
    msg = decode_message(NATIONAL, bytes.fromhex("b90102"))
    assert msg.type_name == "B9" and msg.fields() == {"data": b"\x01\x02"}
    assert msg.sender is Sender.RSU


def test_a_date_that_is_not_bcd_is_a_field_error_naming_the_field():
    payload = bytearray(national.ObuInfo(
        obu_id=b"\x01\x02\x03\x04", error_code=0, issuer_identifier=bytes(8), serial_number=bytes(8),
        date_of_issue=dt.date(2023, 1, 1), date_of_expire=dt.date(2033, 1, 1), equipment_cv=0,
        obu_status=b"\x00\x00").encode())
    payload[1 + 4 + 1 + 16 + 4 + 1] = 0x1A  # month of expiry: not a BCD digit
    with pytest.raises(FieldError, match="date_of_expire"):
        decode_message(NATIONAL, bytes(payload))


def test_the_lane_replies_with_the_swapped_rsctl_and_starts_frames_with_8x():
    assert reply_rsctl(0x48) == 0x84
    assert reply_rsctl(0x98) == 0x89
    seq = LaneSequence()
    values = [seq.next() for _ in range(10)]
    assert all(is_pc_rsctl(v) for v in values) and values[0] == 0x80 and values[8] == 0x80


def test_an_rsu_frame_with_a_lane_rsctl_is_decoded_and_counted_as_an_anomaly():
    dec = FrameDecoder(NATIONAL)
    (event,) = dec.feed(encode_frame("classic", bytes.fromhex("b200000000 80".replace(" ", "")), rsctl=0x84))
    assert event.message.type_name == "B2"
    assert dec.rsctl_anomalies == 1


def test_a_charge_cannot_be_encoded_with_a_field_missing_or_out_of_range():
    with pytest.raises(EncodeError, match="consume_money"):
        national.Charge(obu_id=b"\x01\x02\x03\x04", card_div_factor=bytes(8), reserved=bytes(4),
                        consume_money=None, purchase_time=dt.datetime(2024, 1, 1), station=bytes(40)).encode()
    with pytest.raises(EncodeError):
        national.Charge(obu_id=b"\x01\x02\x03\x04", card_div_factor=bytes(8), reserved=bytes(4),
                        consume_money=2**32, purchase_time=dt.datetime(2024, 1, 1), station=bytes(40)).encode()


def test_a_plate_too_long_for_its_field_is_refused_at_encoding():
    msg = national.VehicleInfo(obu_id=bytes(4), error_code=0, plate_number="鲁A123456789XY",
                               plate_colour=0, vehicle_class=1, vehicle_user_type=0)
    with pytest.raises(EncodeError, match="plate_number"):
        msg.encode()


def test_network2019_card_info_with_and_without_the_ef04_tail():
    base = dict(obu_id=b"\x08\x84\x8b\x9d", error_code=0, read_icc_status=0, card_rest_money=5000,
                issuer_info=bytes(43), last_station=bytes(43), read_ef04_status=0)
    short = network2019.CardInfo(**base)
    assert decode_message(N2019, short.encode()) == short
    full = network2019.CardInfo(**base, ef04_offset=0x10, ef04_length=3, ef04_info=b"\xff\xfe\x00")
    assert decode_message(N2019, full.encode()) == full
    wire = encode_message(N2019, full, rsctl=0x48)
    (event,) = FrameDecoder(N2019).feed(wire)
    assert event.message == full


def test_network2019_charge_carries_ef04_of_the_length_it_names():
    msg = network2019.Charge(obu_id=bytes(4), trade_mode=3, consume_money=1200, station=bytes(40),
                             purchase_time=dt.datetime(2026, 11, 22, 8, 0, 1), ef04_offset=0, ef04_length=2,
                             ef04_info=b"\x01\x02")
    assert decode_message(N2019, msg.encode()) == msg
    bad = network2019.Charge(obu_id=bytes(4), trade_mode=3, consume_money=1200, station=bytes(40),
                             purchase_time=dt.datetime(2026, 11, 22, 8, 0, 1), ef04_offset=0, ef04_length=5,
                             ef04_info=b"\x01\x02")
    with pytest.raises(EncodeError):
        bad.encode()


def test_network2019_vehicle_file_gives_plate_and_class():
    info = "粤B88888".encode("gbk").ljust(12, b"\x00") + b"\x00\x01" + bytes([12, 0]) + bytes(63)
    msg = network2019.VehicleInfo(obu_id=bytes(4), error_code=0, vehicle_info=info)
    assert (msg.plate_number, msg.plate_colour, msg.vehicle_class) == ("粤B88888", 1, 12)


def test_obu_status_flags_are_named_from_profile_data():
    assert NATIONAL.obu_flags(b"\x00\x00") == frozenset()
    assert NATIONAL.obu_flags(bytes([0b1000_0110, 0])) == {ObuFlag.CARD_ABSENT, ObuFlag.OBU_LOCKED,
                                                           ObuFlag.OBU_REMOVED}


def test_card_file_0015_and_station_record_0019_decode_with_raw_bytes_kept():
    card = CardIssueFile.decode(bytes.fromhex(
        "c9bdb6ab370100011640370123010000123456782023010120330101c2b341313233343500000000000001"))
    assert card.card_type == 0x16 and card.card_key == "37012301000012345678"
    assert card.expiry_date == dt.date(2033, 1, 1) and card.plate == "鲁A12345" and card.vehicle_class == 1
    rec = StationRecord.decode(bytes.fromhex(
        "aa29003701010203674030a00102112233445566778899000203c2b3413132333435000000000000000000"))
    assert rec.station_key == "3701-0102" and rec.entry_time == 1732260000 and rec.lane == 3
    assert len(rec.record) == 40
    with pytest.raises(FieldError):
        StationRecord.decode(bytes(10))


def test_bcc_is_the_xor_of_all_bytes():
    assert bcc(b"") == 0
    assert bcc(bytes.fromhex("80c0")) == 0x40
    assert bcc(bytes.fromhex("112233")) == 0x11 ^ 0x22 ^ 0x33


# -- stray FF before a start ---------------------------------------------------------------
# "FF FF FF" starts no frame in any envelope, so a run of FF ends with the start of what
# follows: its last two FF. The FF before them are strays: one alone is noise (an RS-485
# transceiver switching on often puts one on the line), two or more are one ``short`` drop
# for the whole run, whatever the reads it arrived in.

JINYI_C4 = bytes.fromhex("ffff0002c401f525")
GB2019_C4 = bytes.fromhex("ffff002000000002c401e90b")
SAMPLES = [("classic", C0_WIRE), ("classic", B2_WIRE), ("jinyi", JINYI_C4), ("gb2019tcp", GB2019_C4)]


def deframe(envelope, data, chunk=None):
    """(frames as (offset, wire), errors as (reason, offset, data)) and the deframer."""
    d = make_deframer(envelope)
    events = []
    step = chunk or max(len(data), 1)
    for i in range(0, len(data), step):
        events += d.feed(data[i:i + step])
    events += d.finish()
    got = [(e.offset, e.wire) if isinstance(e, RawFrame) else (e.reason, e.offset, e.data) for e in events]
    return got, d


@pytest.mark.parametrize("chunk", [None, 1, 2, 3], ids=lambda c: f"chunk{c or 'all'}")
@pytest.mark.parametrize("envelope,frame", SAMPLES, ids=lambda v: v if isinstance(v, str) else v[:8].hex())
def test_one_stray_ff_before_a_frame_is_noise_and_the_frame_comes_out(envelope, frame, chunk):
    got, d = deframe(envelope, b"\xff" + frame, chunk)
    assert got == [(1, frame)]
    assert not d.drops and d.noise_bytes == 1


@pytest.mark.parametrize("chunk", [None, 1, 2, 3], ids=lambda c: f"chunk{c or 'all'}")
@pytest.mark.parametrize("envelope,frame", SAMPLES, ids=lambda v: v if isinstance(v, str) else v[:8].hex())
def test_two_stray_ffs_before_a_frame_are_one_short_drop_and_the_frame_comes_out(envelope, frame, chunk):
    got, d = deframe(envelope, b"\xff\xff" + frame, chunk)
    assert got == [("short", 0, b"\xff\xff"), (2, frame)]
    assert d.drops == {"short": 1} and d.noise_bytes == 0


@pytest.mark.parametrize("chunk", [None, 1, 2, 3], ids=lambda c: f"chunk{c or 'all'}")
@pytest.mark.parametrize("envelope,frame", SAMPLES, ids=lambda v: v if isinstance(v, str) else v[:8].hex())
def test_a_stray_ff_between_two_frames_loses_neither(envelope, frame, chunk):
    got, d = deframe(envelope, frame + b"\xff" + frame, chunk)
    assert got == [(0, frame), (len(frame) + 1, frame)]
    assert not d.drops


def test_a_stray_ff_in_its_own_read_before_a_frame_read_whole():
    dec = FrameDecoder(NATIONAL)
    assert dec.feed(b"\xff") == []
    (event,) = dec.feed(C0_WIRE)
    assert event.message.type_name == "C0" and event.offset == 1
    events = dec.feed(b"\xff") + dec.feed(B2_WIRE)  # after a frame: its end FF, a stray FF, the next
    assert [e.message.type_name for e in events] == ["B2"] and not dec.drops


@pytest.mark.parametrize("envelope", ["classic", "jinyi", "gb2019tcp"])
def test_a_run_of_ff_is_at_most_one_drop_whatever_its_length_and_the_reads(envelope):
    frame = dict(SAMPLES)[envelope]
    for n in range(1, 12):
        for tail in (b"", frame):
            whole, _ = deframe(envelope, b"\xff" * n + tail)
            # The frame starts FF FF: all n are strays. Without it, FF FF at the very end
            # is a start cut short by the end of the input: a short drop all the same.
            expected = [("short", 0, b"\xff" * n)] if n >= 2 else []
            assert whole == expected + ([(n, frame)] if tail else []), (n, tail)
            for chunk in range(1, n + len(tail) + 1):
                assert deframe(envelope, b"\xff" * n + tail, chunk)[0] == whole, (n, tail, chunk)


def test_ff_ff_ff_alone_is_one_short_drop_at_its_start():
    for envelope in ("classic", "jinyi", "gb2019tcp"):
        got, d = deframe(envelope, b"\x00" + b"\xff\xff\xff", 1)
        assert got == [("short", 1, b"\xff\xff\xff")]
        assert d.drops == {"short": 1}


def test_a_long_run_of_ff_is_not_buffered_and_is_one_drop():
    d = ClassicDeframer()
    events = []
    for _ in range(1000):
        events += d.feed(b"\xff" * 1000)
        assert len(d._buf) <= 2
    events += d.feed(C0_WIRE)
    assert [(e.reason, e.offset, len(e.data)) for e in errors(events)] == [("short", 0, 1_000_000)]
    assert [(e.offset, e.wire) for e in frames(events)] == [(1_000_000, C0_WIRE)]
