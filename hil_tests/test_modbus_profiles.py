"""Device profiles and their codecs: pure checks, no transport (hence no ``hil`` mark).

They sit beside the Modbus HIL tests because the register layouts they pin down are the
ones those tests read back from the emulators.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from laned.drivers.device_profiles import (
    DEFAULT_FEE_DISPLAY_PROFILE,
    DEFAULT_IO_MODULE_PROFILE,
    ByteOrder,
    FeeDisplayProfile,
    IoModuleProfile,
    Polarity,
    TextField,
    WordOrder,
)
from laned.drivers.fee_display import DisplayContent
from laned.drivers.lane_io import Light, Output, Signal
from laned.drivers.modbus_bus import BusSettings, ReadDiscreteInputs, ReadInputRegisters
from laned.drivers.modbus_io import plan_reads

DOCS = Path(__file__).resolve().parent.parent / "docs" / "devices.md"

# Text the display can show: GBK-encodable, short enough for the default fields.
_GBK_CHARS = st.sampled_from("鲁京粤苏浙ABCDEFGHJKLMNPQRSTUVWXYZ0123456789余额不足请走人工车道缴费成功一路平安 .:-")


def _fits(text: str, field: TextField) -> bool:
    return len(text.encode("gbk")) <= 2 * field.registers


def _registers_of(profile: FeeDisplayProfile, content: DisplayContent) -> list[int]:
    image = [0] * profile.register_count
    for _, address, values in profile.encode(content):
        image[address : address + len(values)] = values
    return image


_OTHER_LAYOUT = FeeDisplayProfile.model_validate(
    {
        "plate": {"address": 100, "registers": 5, "byte_order": "low_first", "pad": 0},
        "vehicle_class": {"address": 99},
        "fee": {"address": 90},
        "balance": {"address": 92},
        "line1": {"address": 0, "registers": 20},
        "line2": {"address": 20, "registers": 20},
        "u32_word_order": "low_first",
        "blank_u32": 0,
    }
)


@pytest.mark.parametrize("profile", [DEFAULT_FEE_DISPLAY_PROFILE, _OTHER_LAYOUT], ids=["default", "other-vendor"])
@given(
    plate=st.text(_GBK_CHARS, max_size=5).map(str.strip),
    vehicle_class=st.one_of(st.none(), st.integers(1, 26)),
    fee=st.one_of(st.none(), st.integers(1, 0xFFFFFFFE)),
    balance=st.one_of(st.none(), st.integers(1, 0xFFFFFFFE)),
    line1=st.text(_GBK_CHARS, max_size=10).map(str.strip),
    line2=st.text(_GBK_CHARS, max_size=10).map(str.strip),
    light=st.sampled_from(Light),
    brightness=st.integers(0, 100),
)
def test_what_the_driver_encodes_the_display_decodes_back(
    profile: FeeDisplayProfile, plate, vehicle_class, fee, balance, line1, line2, light, brightness
) -> None:
    content = DisplayContent(
        plate=plate or None,
        vehicle_class=vehicle_class,
        fee_fen=fee,
        balance_fen=balance,
        line1=line1,
        line2=line2,
        light=light if profile.light else Light.RED,
        brightness=brightness if profile.brightness else None,
    )
    image = _registers_of(profile, content)
    assert profile.decode(lambda address, count: image[address : address + count]) == content


def test_money_is_a_u32_split_in_the_configured_word_order() -> None:
    high_first = DEFAULT_FEE_DISPLAY_PROFILE
    assert high_first.encode_u32(0x0001_86A0) == (0x0001, 0x86A0)  # 1000.00 yuan
    assert _OTHER_LAYOUT.encode_u32(0x0001_86A0) == (0x86A0, 0x0001)
    assert high_first.encode_u32(None) == (0xFFFF, 0xFFFF)


def test_text_too_long_is_cut_at_a_whole_character_and_padded() -> None:
    field = TextField(address=0, registers=4)  # 8 bytes
    registers = field.encode("A余额不足请走")  # 1 + 2 * 6 bytes
    assert field.decode(registers) == "A余额不"  # 7 bytes; half a character never goes out
    assert registers[-1] & 0xFF == 0x20


def test_text_bytes_go_high_byte_first_unless_the_profile_says_otherwise() -> None:
    assert TextField(address=0, registers=1).encode("AB") == (0x4142,)
    assert TextField(address=0, registers=1, byte_order=ByteOrder.LOW_FIRST).encode("AB") == (0x4241,)
    assert TextField(address=0, registers=2).encode("鲁") == (0xC2B3, 0x2020)  # GBK C2 B3


def test_a_character_without_a_gbk_code_shows_as_a_question_mark(caplog) -> None:
    field = TextField(address=0, registers=4)
    assert field.decode(field.encode("A😀B", key="line1")) == "A?B"
    assert "line1: character 2 has no GBK code" in caplog.text


def test_default_io_profile_wires_every_input_and_the_safety_loop_nc() -> None:
    profile = DEFAULT_IO_MODULE_PROFILE
    assert set(profile.inputs) == set(Signal)
    assert profile.inputs[Signal.SAFETY_LOOP].polarity is Polarity.NC
    assert {Output.BARRIER_RAISE, Output.BARRIER_LOWER} <= set(profile.outputs)
    assert profile.poll.safety_loop_hz >= 20


def _io(**changes: object) -> dict[str, object]:
    data = DEFAULT_IO_MODULE_PROFILE.model_dump(mode="json")
    for dotted, value in changes.items():
        *path, key = dotted.split("__")
        target = data
        for part in path:
            target = target[part]
        if value is None:
            del target[key]
        else:
            target[key] = value
    return data


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"poll__safety_loop_hz": 10}, r"poll\.safety_loop_hz[\s\S]*safety_loop_hz = 10 is outside 20–200[\s\S]*younger than 50 ms"),
        ({"poll__other_inputs_hz": 0}, r"poll\.other_inputs_hz[\s\S]*greater than 0[\s\S]*input_value=0"),
        ({"outputs__alarm": {"coil": 0}}, r"outputs\.alarm and outputs\.barrier_raise both drive coil 0"),
        ({"inputs__entry_loop": {"address": 1}}, r"inputs\.safety_loop and inputs\.entry_loop both read discrete input 1"),
        ({"inputs__barrier_up": {"address": 2, "bit": 3}}, r"inputs\.barrier_up[\s\S]*bit = 3 is only for register inputs"),
        ({"inputs__barrier_up": {"kind": "input_register_bit", "address": 2}}, r"needs bit = 0…15"),
        ({"inputs__safety_loop": None}, r"inputs: no entry for safety_loop"),
        ({"outputs__barrier_lower": None}, r"outputs: no entry for barrier_lower"),
        ({"inputs__entry_loop": {"address": 70000}}, r"inputs\.entry_loop\.address[\s\S]*less than or equal to 65535[\s\S]*input_value=70000"),
        ({"inputs__entry_loop": {"address": 0, "polarity": "NX"}}, r"inputs\.entry_loop\.polarity[\s\S]*'NO' or 'NC'[\s\S]*input_value='NX'"),
        ({"barrier__mode": "hold"}, r"barrier\.mode[\s\S]*'level' or 'pulse'[\s\S]*input_value='hold'"),
    ],
)
def test_a_bad_io_profile_is_refused_naming_the_key_the_value_and_what_was_expected(changes, expected) -> None:
    with pytest.raises(ValidationError) as refused:
        IoModuleProfile.model_validate(_io(**changes))
    assert re.search(expected, str(refused.value)), str(refused.value)


def test_display_fields_that_overlap_are_refused_naming_both() -> None:
    data = DEFAULT_FEE_DISPLAY_PROFILE.model_dump(mode="json")
    data["line2"]["address"] = 30  # line1 is 16–31
    with pytest.raises(ValidationError, match=r"line1 \(registers 16–31\) overlaps line2 \(registers 30–45\)"):
        FeeDisplayProfile.model_validate(data)


def test_a_light_register_needs_three_different_codes() -> None:
    data = DEFAULT_FEE_DISPLAY_PROFILE.model_dump(mode="json")
    data["light"]["green"] = 1
    with pytest.raises(ValidationError, match=r"light[\s\S]*three different codes"):
        FeeDisplayProfile.model_validate(data)


def test_bus_settings_refuse_a_backoff_that_shrinks() -> None:
    with pytest.raises(ValidationError, match=r"reconnect_max_s = 0.1 is below reconnect_min_s = 1"):
        BusSettings(reconnect_min_s=1, reconnect_max_s=0.1)


def test_the_default_module_is_polled_with_one_read() -> None:
    reads = plan_reads(DEFAULT_IO_MODULE_PROFILE)
    assert [(r.op, set(r.signals)) for r in reads] == [(ReadDiscreteInputs(0, 4), set(Signal))]


def test_inputs_far_apart_or_of_another_kind_get_their_own_read() -> None:
    data = _io(
        inputs__entry_loop={"address": 500},
        inputs__barrier_up={"kind": "input_register_bit", "address": 7, "bit": 0},
        inputs__barrier_down={"kind": "input_register_bit", "address": 7, "bit": 1},
    )
    reads = plan_reads(IoModuleProfile.model_validate(data))
    assert [(r.op, r.signals) for r in reads] == [
        (ReadDiscreteInputs(1, 1), (Signal.SAFETY_LOOP,)),
        (ReadDiscreteInputs(500, 1), (Signal.ENTRY_LOOP,)),
        (ReadInputRegisters(7, 1), (Signal.BARRIER_UP, Signal.BARRIER_DOWN)),
    ]
    # The approach loop is read as fast as the safety loop (it counts vehicles a short gap
    # apart); the arm's end switches are read at the slow rate.
    assert [r.polled_fast for r in reads] == [True, True, False]


def _toml_blocks() -> list[str]:
    return re.findall(r"```toml\n(.*?)```", DOCS.read_text(encoding="utf-8"), flags=re.S)


def test_the_toml_examples_in_docs_devices_md_are_valid_profiles() -> None:
    blocks = _toml_blocks()
    assert blocks, "docs/devices.md has no TOML example"
    for block in blocks:
        config = tomllib.loads(block)
        checked = 0
        for key, model in (("fee_display", FeeDisplayProfile), ("io", IoModuleProfile)):
            device = config.get("devices", {}).get(key, {})
            if "profile" in device:
                model.model_validate(device["profile"])
                checked += 1
            if "bus" in device:
                BusSettings.model_validate(device["bus"])
                checked += 1
        assert checked, f"a TOML example in docs/devices.md checks nothing:\n{block}"


def test_the_docs_tables_match_the_default_profiles() -> None:
    text = DOCS.read_text(encoding="utf-8")
    for signal, point in DEFAULT_IO_MODULE_PROFILE.inputs.items():
        assert re.search(rf"\| `{signal}` \| {point.location} \| {point.polarity} \|", text), signal
    for output, out in DEFAULT_IO_MODULE_PROFILE.outputs.items():
        assert re.search(rf"\| `{output}` \| coil {out.coil} \| {out.polarity} \|", text), output
    for key, block in DEFAULT_FEE_DISPLAY_PROFILE.fields():
        first, last = block.span.start, block.span.stop - 1
        registers = str(first) if first == last else f"{first}–{last}"
        assert re.search(rf"\| `{key}` \| {registers} \|", text), key
    assert WordOrder.HIGH_FIRST.value in text
