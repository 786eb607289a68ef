"""The status list: listed cards and OBUs are found, deltas apply whole or not at all."""

from __future__ import annotations

import asyncio
import json
import struct
from unittest import mock

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from laned.lane import status_list
from laned.lane.status_list import (
    Delta, Entry, Key, StatusList, StatusListError, StatusListUnreadable, card_key, obu_key, parse_payload, parse_payload_steps,
)
from laned.uplink.list_apply import apply_delta

CARD = ("3701", "2301000012345678")
OBU_ID = bytes.fromhex("a1b2c3d4")
OBU_SERIAL = bytes.fromhex("0102030405060708")


def payload(**doc) -> bytes:
    return json.dumps(doc).encode()


def loaded() -> StatusList:
    sl = StatusList()
    sl.apply(parse_payload(payload(version=41, add=[
        {"card": "3701-2301000012345678", "reason": 3},
        {"obu": "a1b2c3d4"},
        {"obu": "0102030405060708", "issuer": "c9bdb6ab37010001", "reason": 2},
    ])))
    return sl


def state(sl: StatusList) -> tuple:
    return (sl.version, len(sl), sl.is_listed_card(*CARD), sl.is_listed_obu(OBU_ID), sl.is_listed_obu(OBU_SERIAL))


def test_a_listed_card_and_obu_are_found_with_their_reason_and_others_are_not():
    sl = loaded()
    assert sl.version == 41 and len(sl) == 3
    assert sl.is_listed_card(*CARD) == 3
    assert sl.is_listed_obu(OBU_ID) == 1  # no reason given: 1, blacklisted
    assert sl.is_listed_obu(OBU_SERIAL) == 2
    assert sl.is_listed_card("3701", "2301000012345679") is None
    assert sl.is_listed_card("3702", "2301000012345678") is None  # same number, other network
    assert sl.is_listed_obu(bytes.fromhex("a1b2c3d5")) is None
    assert sl.is_listed_obu(bytes.fromhex("a1b2c3d4a1b2c3d4")) is None  # an id is not a serial


def test_identities_that_cannot_be_listed_are_not_found_rather_than_raising():
    sl = loaded()
    assert sl.is_listed_card("3701", "230100001234567") is None  # 15 digits
    assert sl.is_listed_card("3701", "23010000123456７8") is None  # a non-ASCII digit
    assert sl.is_listed_obu(OBU_ID[:3]) is None
    assert sl.is_listed_obu(OBU_SERIAL + b"\x00") is None


def test_a_delta_adds_and_removes_entries():
    sl = loaded()
    sl.apply(parse_payload(payload(version=42, base=41, add=[{"obu": "0a0b0c0d", "reason": 2},
                                                             {"card": "3701-2301000012345678", "reason": 5}],
                                   remove=[{"obu": "a1b2c3d4"}, {"obu": "0102030405060708"},
                                           {"card": "1101-0000000000000001"}])))  # not listed: no-op
    assert state(sl) == (42, 2, 5, None, None)
    assert sl.is_listed_obu(bytes.fromhex("0a0b0c0d")) == 2


def test_a_delta_on_the_wrong_base_is_refused_and_nothing_changes():
    sl = loaded()
    before = state(sl)
    with pytest.raises(StatusListError, match="applies on version 40, this lane has 41; nothing changed"):
        sl.apply_delta_steps(parse_payload(payload(version=42, base=40, remove=[{"obu": "a1b2c3d4"}])))
    with pytest.raises(StatusListError, match="not newer than its base"):
        sl.apply(parse_payload(payload(version=41, base=41, remove=[{"obu": "a1b2c3d4"}])))
    with pytest.raises(StatusListError, match="older than this lane's 41"):
        sl.apply(parse_payload(payload(version=40, add=[])))
    assert state(sl) == before


def test_a_malformed_entry_is_refused_naming_it_and_nothing_is_half_applied():
    sl = loaded()
    before = state(sl)
    bad = payload(version=42, base=41, add=[{"obu": "01020304"}, {"card": "3701-12"}],
                  remove=[{"obu": "a1b2c3d4"}])
    with pytest.raises(StatusListError, match=r"add\[1\] \{'card': '3701-12'\}: card '3701-12' is not NNNN-"):
        asyncio.run(apply_delta(sl, bad))
    assert state(sl) == before and sl.is_listed_obu(bytes.fromhex("01020304")) is None
    cases = {
        payload(version=42, base=41, remove=[{"obu": "a1b2c3d4"}, {"obu": "xyz"}]): r"remove\[1\] .*'xyz'",
        payload(version=42, base=41, add=[{"obu": "01020304", "reason": 256}]): r"add\[0\] .* reason 256 is not 1–255",
        payload(version=42, base=41, add=[{"obu": "01020304", "colour": 1}]): r"add\[0\] .* unknown field 'colour'",
        payload(version=42, base=41, add=[{"card": "3701-2301000012345678", "x": 1}]):  # card numbers masked
            r"add\[0\] \{'card': '3701-2301\*{8}5678', 'x': 1\}: unknown field 'x'",
        payload(version=42, base=41, add=[{"obu": "01020304", "issuer": "00"}]): r"add\[0\] .* issuer",
        payload(version=42, base=41, add=["a1b2c3d4"]): r"add\[0\] 'a1b2c3d4': expected an object",
        payload(version=42, base=41, add=[{"obu": "01020304"}], remove=[{"obu": "01020304"}]):
            r"add\[0\] and remove\[0\] both name OBU id 01020304",
        payload(version=42, remove=[{"obu": "01020304"}]): "full list cannot remove",
        payload(version="42", base=41): "version is '42'",
        payload(version=42, base=41, add={"obu": "01020304"}): "'add' is .*, expected a list",
        b'{"version": 42, "base": 41, "add": [{"obu": "01020304"},': "not JSON",
        b'\xff': "not UTF-8",
        b'{"version": 42, "base": 41, "add": [], "add": [{"obu": "01020304"}]}': "member 'add' twice",
    }
    for data, message in cases.items():
        with pytest.raises(StatusListError, match=message):
            sl.apply(parse_payload(data))
    assert state(sl) == before


def test_a_bad_entry_found_while_applying_leaves_the_old_version_whole():
    sl = loaded()
    before = state(sl)
    delta = Delta(42, 41, add=[obu_key(b"\x01\x02\x03\x04").with_reason(1), Entry("C3701", 7, 0)],
                  remove=[obu_key(OBU_ID)])
    with pytest.raises(StatusListError, match="reason 0 is not 1–255"):
        sl.apply(delta)
    assert state(sl) == before


def test_the_payload_parses_the_same_from_bytes_text_or_a_decoded_object():
    doc = {"version": 7, "base": 6, "note": "ignored",
           "add": [{"card": f"3701-{i:016d}", "reason": 1 + i % 200} for i in range(1500)],
           "remove": [{"obu": f"{i:08x}"} for i in range(700)]}
    text = json.dumps(doc, indent=1)
    steps = parse_payload_steps(text.encode())
    n = 0
    while True:
        try:
            next(steps)
            n += 1
        except StopIteration as done:
            stepped = done.value
            break
    assert n > 5  # it did yield along the way
    assert stepped == parse_payload(text) == parse_payload(doc)
    assert stepped.add[3] == card_key("3701", "0000000000000003").with_reason(4)


def test_a_large_payload_parses_the_same_in_any_layout_and_errors_name_the_entry_deep_inside():
    adds = [{"card": f"{3701 + i % 3}-{i:016d}", "reason": 1 + i % 255} if i % 3 else {"obu": f"{i:08x}"}
            for i in range(5000)]
    adds[1234] = {"obu": f"{1234:016x}", "issuer": "c9bdb6ab37010001"}  # another shape in the middle
    adds[2345] = {"reason": 9, "obu": f"{2345:08x}"}
    removes = [{"obu": f"{i:016x}"} for i in range(10_000, 13_000)]
    doc = {"version": 3, "base": 2, "add": adds, "remove": removes}
    expected = parse_payload(doc)  # decoded object: entry by entry
    assert expected.add[2345] == obu_key((2345).to_bytes(4, "big")).with_reason(9)
    for text in (json.dumps(doc), json.dumps(doc, separators=(",", ":")), json.dumps(doc, indent=2),
                 json.dumps(doc).replace(", ", " ,\t")):
        assert parse_payload(text) == expected
    for i, entry, message in [
        (1500, {"obu": "01020304", "reason": 256}, "reason 256 is not 1–255"),
        (3000, {"card": "3701-123"}, "is not NNNN-"),
        (4998, {"obu": "0102030g"}, "is not 8 hex digits"),
        (2000, {"obu": "01020304", "reason": 0}, "reason 0 is not 1–255"),
    ]:
        bad = list(adds)
        bad[i] = entry
        with pytest.raises(StatusListError, match=rf"^add\[{i}\] .*{message}"):
            parse_payload(json.dumps(doc | {"add": bad}))
    clash = list(removes)
    clash[2999] = {"obu": f"{7:08x}"}  # also in add (entry 7 is a card; 6 an OBU id)
    clash[2999] = {"obu": f"{6:08x}"}
    with pytest.raises(StatusListError, match=r"add\[6\] and remove\[2999\] both name"):
        parse_payload(json.dumps(doc | {"remove": clash}))


def test_an_identity_added_twice_keeps_the_larger_reason():
    sl = StatusList()
    sl.load_full(1, [obu_key(OBU_ID).with_reason(2), obu_key(OBU_ID).with_reason(7), obu_key(OBU_ID).with_reason(1)])
    assert sl.is_listed_obu(OBU_ID) == 7 and len(sl) == 1
    sl.apply(parse_payload(payload(version=2, base=1, add=[{"card": "3701-2301000012345678", "reason": 4},
                                                           {"card": "3701-2301000012345678", "reason": 3}])))
    assert sl.is_listed_card(*CARD) == 4 and len(sl) == 2


def many(start: int, n: int, reason: int = 1) -> list[Entry]:
    return [obu_key(i.to_bytes(4, "big")).with_reason(reason) for i in range(start, start + n)]


def test_lookups_during_a_delta_answer_the_old_version_until_it_is_published():
    sl = StatusList()
    sl.load_full(1, many(0, 20_000))
    delta = Delta(2, 1, add=many(100_000, 3000, reason=2) + [obu_key((3).to_bytes(4, "big")).with_reason(9)],
                  remove=[obu_key(i.to_bytes(4, "big")) for i in range(0, 20_000, 2)])
    steps = sl.apply_delta_steps(delta)
    seen_new = False
    n = 0
    for _ in steps:
        n += 1
        if sl.version == 1:
            assert not seen_new
            assert sl.is_listed_obu((2).to_bytes(4, "big")) == 1  # still there until the switch
            assert sl.is_listed_obu((3).to_bytes(4, "big")) == 1
            assert sl.is_listed_obu((100_002).to_bytes(4, "big")) is None
            assert len(sl) == 20_000
        else:
            seen_new = True
            assert sl.is_listed_obu((2).to_bytes(4, "big")) is None
            assert sl.is_listed_obu((3).to_bytes(4, "big")) == 9
            assert sl.is_listed_obu((100_002).to_bytes(4, "big")) == 2
    assert n > 10 and sl.version == 2 and len(sl) == 10_000 + 3000


def test_a_small_delta_rewrites_only_the_chunks_it_touches():
    sl = StatusList()
    sl.load_full(1, [Entry("C3701", n, 1) for n in range(0, 3 * status_list.CHUNK)])
    before = sl._snap.tables["C3701"].chunks
    sl.apply(Delta(2, 1, add=[Entry("C3701", status_list.CHUNK + 7, 5)], remove=[Key("C3701", 3)]))
    after = sl._snap.tables["C3701"].chunks
    assert after[0] is not before[0] and after[-1] is before[-1]  # the untouched last chunk is shared
    assert sl.is_listed_card("3701", f"{status_list.CHUNK + 7:016d}") == 5
    assert sl.is_listed_card("3701", f"{3:016d}") is None and len(sl) == 3 * status_list.CHUNK - 1


def test_a_delta_is_not_published_if_the_list_was_replaced_meanwhile():
    sl = StatusList()
    sl.load_full(1, many(0, 5000))
    steps = sl.apply_delta_steps(Delta(2, 1, add=many(10_000, 5000)))
    next(steps)
    sl.load_full(7, many(50, 10))
    with pytest.raises(StatusListError, match="changed to version 7 while it was being applied"):
        for _ in steps:
            pass
    assert sl.version == 7 and len(sl) == 10


def test_applying_on_the_event_loop_lets_other_tasks_run_between_steps():
    sl = StatusList()
    sl.load_full(1, many(0, 50_000))
    data = payload(version=2, base=1, add=[{"obu": f"{i:08x}", "reason": 3} for i in range(60_000, 80_000)],
                   remove=[{"obu": f"{i:08x}"} for i in range(0, 20_000)])

    async def main() -> int:
        ticks = 0
        task = asyncio.create_task(apply_delta(sl, data, max_step_ms=0.5))
        while not task.done():
            ticks += 1
            await asyncio.sleep(0)
        await task
        return ticks

    assert asyncio.run(main()) >= 10
    assert sl.version == 2 and len(sl) == 50_000
    assert sl.is_listed_obu((60_001).to_bytes(4, "big")) == 3 and sl.is_listed_obu(bytes(4)) is None


def test_save_and_load_round_trip(tmp_path):
    sl = loaded()
    sl.apply(Delta(42, 41, add=many(0, 5000, reason=4)))
    path = tmp_path / "status.bin"
    sl.save(path)
    again = StatusList()
    again.load(path)
    assert state(again) == state(sl) == (42, 5003, 3, 1, 2)
    assert again.is_listed_obu((4999).to_bytes(4, "big")) == 4
    assert not (tmp_path / "status.bin.tmp").exists()


def test_a_corrupt_or_truncated_file_is_refused_and_the_old_state_kept(tmp_path):
    path = tmp_path / "status.bin"
    loaded().save(path)
    good = path.read_bytes()
    sl = StatusList()
    sl.load_full(5, many(0, 10))
    before = state(sl)

    def refused(data: bytes, message: str) -> None:
        path.write_bytes(data)
        with pytest.raises(StatusListError, match=message):
            sl.load(path)
        assert state(sl) == before

    flipped = bytearray(good)
    flipped[-1] ^= 0x01  # a reason bit in the last entry
    refused(bytes(flipped), r"corrupt \(checksum mismatch\); not loaded")
    version_changed = bytearray(good)
    version_changed[12] ^= 0x01  # the version field
    refused(bytes(version_changed), r"corrupt \(checksum mismatch\)")
    refused(good[:-3], "truncated: .* the header announces 3 entries")
    refused(good[:10], "truncated: 10 bytes, shorter than the header")
    refused(good + b"\0", "corrupt: .* bytes, the header announces")
    refused(b"NOTALIST" + good[8:], "not a laned status list")
    refused(good[:8] + struct.pack("<H", 9) + good[10:], "format 9")
    path.unlink()
    with pytest.raises(StatusListUnreadable, match="cannot be read"):
        sl.load(path)
    assert state(sl) == before


# -- the store against a plain model -------------------------------------------------------------

CARDS = [(net, f"{n:016d}") for net in ("3701", "1101") for n in (0, 1, 9_999_999_999_999_999, 2301000012345678)]
OBUS = [bytes([hi, 0, 0, lo]) for hi in (0, 0xFF) for lo in (0, 1, 2)] + \
       [bytes([hi]) + bytes(6) + bytes([lo]) for hi in (0, 0xFF) for lo in (0, 1)]
UNIVERSE = [("card", c) for c in CARDS] + [("obu", o) for o in OBUS]


def key_of(ident):
    kind, value = ident
    return card_key(*value) if kind == "card" else obu_key(value)


def observe(sl: StatusList) -> dict:
    found = {}
    for ident in UNIVERSE:
        kind, value = ident
        reason = sl.is_listed_card(*value) if kind == "card" else sl.is_listed_obu(value)
        if reason is not None:
            found[ident] = reason
    return found


identities = st.sampled_from(UNIVERSE)
listing = st.lists(st.tuples(identities, st.integers(1, 255)), max_size=12)
operation = st.one_of(
    st.tuples(st.just("full"), listing, st.none()),
    st.tuples(st.just("delta"), listing, st.lists(identities, max_size=8)),
)


small_steps = st.sampled_from([
    {"STEP_WORK": status_list.STEP_WORK},  # the real sizes: small lists take one or two steps
    {"STEP_WORK": 2, "COPY_UNIT": 1, "SORT_RUN": 2, "GALLOP": 1, "CHUNK": 2, "MERGE_PIECES": 1},
    {"STEP_WORK": 3, "COPY_UNIT": 2, "SORT_RUN": 3, "GALLOP": 2, "CHUNK": 3, "MERGE_PIECES": 2, "BULK_CHARS": 90},
    {"CHUNK": 1, "MERGE_PIECES": 3, "BULK_CHARS": 1},
])


def payload_entry(ident, reason=None) -> dict:
    kind, value = ident
    entry = {"card": "-".join(value)} if kind == "card" else {"obu": value.hex()}
    return entry if reason is None else entry | {"reason": reason}


def added(adds) -> dict:
    out: dict = {}
    for ident, reason in adds:
        out[ident] = max(reason, out.get(ident, 0))
    return out


@settings(max_examples=150, deadline=None)
@given(listing, st.lists(operation, max_size=6), st.integers(0, 40), small_steps, st.booleans())
def test_the_store_agrees_with_a_plain_model(initial, operations, stop_at, step_sizes, as_payload):
    with mock.patch.multiple(status_list, **step_sizes):
        sl = StatusList()
        sl.load_full(1, [key_of(i).with_reason(r) for i, r in initial])
        model = added(initial)
        assert observe(sl) == model and len(sl) == len(model)
        for op, adds, removes in operations:
            version = sl.version + 1
            if op == "full":
                delta = Delta(version, None, add=[key_of(i).with_reason(r) for i, r in adds])
                new = added(adds)
            else:
                removes = [i for i in removes if i not in added(adds)]  # the payload refuses both
                delta = Delta(version, version - 1, add=[key_of(i).with_reason(r) for i, r in adds],
                              remove=[key_of(i) for i in removes])
                new = {i: r for i, r in model.items() if i not in removes} | added(adds)
            if as_payload:  # the same through the centre's JSON: parsed entries take the bulk paths
                delta = parse_payload(payload(version=version, base=delta.base,
                                              add=[payload_entry(i, r) for i, r in adds],
                                              remove=[payload_entry(i) for i in (removes or [])]))
            steps = sl.apply_delta_steps(delta)
            for n, _ in enumerate(steps):  # lookups part-way through: the old or the new version, whole
                assert observe(sl) == (model if sl.version < version else new)
                if n == stop_at:
                    break
            for _ in steps:
                pass
            model = new
            assert sl.version == version and observe(sl) == model and len(sl) == len(model)
