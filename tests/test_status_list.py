"""The status list: listed cards and OBUs are found, deltas apply whole or not at all."""

from __future__ import annotations

import asyncio

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from laned.lane.status_list import (
    Delta, StatusList, StatusListError, apply_delta, card_key, obu_key, parse_payload,
)

CARD = ("3701", "2301000012345678")
OBU = bytes.fromhex("a1b2c3d4")


def loaded() -> StatusList:
    sl = StatusList()
    sl.apply(parse_payload({"version": 41, "add": [{"card": "3701-2301000012345678", "reason": 3},
                                                    {"obu": "a1b2c3d4"}]}))
    return sl


def test_a_listed_card_and_obu_are_found_with_their_reason_and_others_are_not():
    sl = loaded()
    assert sl.version == 41
    assert sl.is_listed_card(*CARD) == 3
    assert sl.is_listed_obu(OBU) == 1
    assert sl.is_listed_card("3701", "2301000012345679") is None
    assert sl.is_listed_obu(bytes(4)) is None


def test_a_delta_adds_and_removes_entries():
    sl = loaded()
    sl.apply(parse_payload({"version": 42, "base": 41, "add": [{"obu": "0102030405060708", "reason": 2}],
                            "remove": [{"card": "3701-2301000012345678"}]}))
    assert sl.version == 42
    assert sl.is_listed_card(*CARD) is None
    assert sl.is_listed_obu(bytes.fromhex("0102030405060708")) == 2
    assert sl.is_listed_obu(OBU) == 1


def test_a_delta_on_the_wrong_base_is_refused_and_nothing_changes():
    sl = loaded()
    with pytest.raises(StatusListError, match="applies on version 40"):
        sl.accept(parse_payload({"version": 42, "base": 40, "remove": [{"obu": "a1b2c3d4"}]}))
    assert sl.version == 41 and sl.is_listed_obu(OBU) == 1


def test_a_malformed_entry_is_named_and_nothing_is_half_applied():
    sl = loaded()
    with pytest.raises(StatusListError, match=r"add\[1\] card is '3701-12'"):
        sl.accept(parse_payload({"version": 42, "base": 41,
                                 "add": [{"obu": "01020304"}, {"card": "3701-12"}]}))
    assert sl.version == 41 and sl.is_listed_obu(bytes.fromhex("01020304")) is None
    with pytest.raises(StatusListError, match="not JSON"):
        parse_payload(b"{")


def test_lookups_stay_right_at_every_step_of_a_merge():
    sl = StatusList()
    sl.load_full(1, ((obu_key(i.to_bytes(4, "big")), 1) for i in range(5000)))
    delta = Delta(2, 1, add=[(obu_key((10_000 + i).to_bytes(4, "big")), 2) for i in range(3000)],
                  remove=[obu_key(i.to_bytes(4, "big")) for i in range(0, 5000, 2)])
    sl.accept(delta)
    for _ in sl.merge_steps(chunk=100):
        assert sl.is_listed_obu((10_002).to_bytes(4, "big")) == 2
        assert sl.is_listed_obu((2).to_bytes(4, "big")) is None
        assert sl.is_listed_obu((3).to_bytes(4, "big")) == 1
    assert not sl._overlay and len(sl._keys) == 2500 + 3000


def test_applying_a_delta_on_the_event_loop_yields_between_steps():
    sl = StatusList()
    sl.load_full(1, ((obu_key(i.to_bytes(4, "big")), 1) for i in range(20_000)))
    delta = Delta(2, 1, add=[(obu_key((50_000 + i).to_bytes(4, "big")), 1) for i in range(10_000)], remove=[])
    ticks = 0

    async def main():
        nonlocal ticks
        task = asyncio.create_task(apply_delta(sl, delta, chunk=500))
        while not task.done():
            ticks += 1
            await asyncio.sleep(0)
        await task

    asyncio.run(main())
    assert ticks >= 10 and sl.is_listed_obu((50_001).to_bytes(4, "big")) == 1


def test_save_and_load_round_trip_and_a_corrupt_file_is_refused(tmp_path):
    sl = loaded()
    path = tmp_path / "status.bin"
    sl.save(path)
    again = StatusList()
    again.load(path)
    assert again.version == 41 and again.is_listed_card(*CARD) == 3
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(StatusListError, match="corrupt"):
        again.load(path)
    assert again.version == 41 and again.is_listed_card(*CARD) == 3  # old state kept
    path.write_bytes(bytes(raw[:30]))
    with pytest.raises(StatusListError, match="truncated"):
        again.load(path)


ids = st.integers(0, 60)


@settings(max_examples=100, deadline=None)
@given(st.sets(ids), st.lists(st.tuples(st.sets(ids), st.sets(ids)), max_size=5), st.integers(1, 50))
def test_the_store_agrees_with_a_plain_set(initial, deltas, chunk):
    key = lambda i: obu_key(i.to_bytes(4, "big"))  # noqa: E731
    sl = StatusList()
    sl.load_full(1, ((key(i), 1) for i in initial))
    model = set(initial)
    for version, (add, remove) in enumerate(deltas, start=2):
        sl.accept(Delta(version, version - 1, add=[(key(i), 1) for i in add], remove=[key(i) for i in remove]))
        model = (model - remove) | add
        steps = sl.merge_steps(chunk)
        next(steps, None)  # part-way through a merge …
        assert {i for i in range(61) if sl.is_listed_obu(i.to_bytes(4, "big"))} == model
        for _ in steps:
            pass
        assert {i for i in range(61) if sl.is_listed_obu(i.to_bytes(4, "big"))} == model
