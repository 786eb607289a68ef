"""`laned decode`: what a field engineer gets from pasted bytes."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from laned.cli.decode_cmd import hex_from_line, run
from laned.protocol import PROFILES
from tests.test_protocol_mutated_payloads import TYPED, envelope_frame, mutated
from tests.test_protocol_properties import SETTINGS, forms, messages

VECTORS = json.loads((Path(__file__).parent / "vectors" / "rsu_frames.json").read_text())


def decode(data: bytes, profile: str = "national", sender: str = "auto", as_json: bool = True):
    out, err = io.StringIO(), io.StringIO()
    code = run(data, profile_name=profile, sender=sender, as_json=as_json, out=out, err=err)
    return code, [json.loads(line) for line in out.getvalue().splitlines()] if as_json else out.getvalue(), \
        err.getvalue()


@pytest.mark.parametrize("vector", VECTORS["frames"], ids=lambda v: f"{v['profile']}-{v['type']}")
def test_json_output_prints_the_fields_of_every_vector(vector):
    code, (obj,), err = decode(bytes.fromhex(vector["hex"]), vector["profile"])
    assert code == 0 and err == ""
    assert obj["envelope"] == "classic" and obj["profile"] == vector["profile"]
    assert obj["sender"] == vector["sender"] and obj["type"] == vector["type"]
    assert obj["rsctl"] == vector["rsctl"]
    assert obj["fields"] == vector["fields"]


def test_gb2019tcp_frames_print_their_seq_instead_of_an_rsctl():
    vec = next(v for v in VECTORS["envelopes"] if v["envelope"] == "gb2019tcp" and v["type"] == "B5")
    code, (obj,), _ = decode(bytes.fromhex(vec["hex"]), "gb2019tcp")
    assert code == 0 and obj["seq"] == vec["seq"] and "rsctl" not in obj
    assert obj["fields"]["obu_id"] == "a1b2c3d4"


def test_hex_is_found_in_spaced_prefixed_and_logged_forms():
    frame = "ffff84c40141ff"
    assert hex_from_line(frame) == bytes.fromhex(frame)
    assert hex_from_line("ff ff 84 c4 01 41 ff") == bytes.fromhex(frame)
    assert hex_from_line("0xff,0xff,0x84,0xc4,0x01,0x41,0xff") == bytes.fromhex(frame)
    assert hex_from_line("2024-11-22 09:30:12.123 rsu RX[14]: ff ff 84 c4 01 41 ff (ok)") == bytes.fromhex(frame)


def test_a_bad_frame_is_named_by_offset_and_reason_and_the_rest_is_still_decoded():
    good = VECTORS["frames"][0]["hex"]
    bad = VECTORS["malformed"][0]["hex"]
    code, objs, err = decode(bytes.fromhex(good + bad + good))
    assert code == 2
    assert [o["type"] for o in objs] == ["C0", "C0"]
    (line,) = err.splitlines()
    assert f"byte {len(good) // 2}: bcc:" in line


def test_a_table_shows_yuan_flags_and_error_meanings():
    b5 = next(v for v in VECTORS["frames"] if v["type"] == "B5" and v["fields"].get("card_balance"))
    code, text, _ = decode(bytes.fromhex(b5["hex"]), as_json=False)
    assert code == 0
    assert "1199.56 元" in text and "composite" in text
    err_b5 = next(v for v in VECTORS["frames"] if v["type"] == "B5" and v["fields"]["error_code"] == 23)
    _, text, _ = decode(bytes.fromhex(err_b5["hex"]), as_json=False)
    assert "purchase refused by the card" in text


def test_a_frame_from_the_wrong_sender_is_reported():
    c1 = next(v for v in VECTORS["frames"] if v["type"] == "C1")
    code, objs, err = decode(bytes.fromhex(c1["hex"]), sender="rsu")
    assert code == 2 and objs == [] and "sender" in err


def test_the_console_script_reads_stdin_and_exits_2_on_bad_input():
    data = VECTORS["frames"][0]["hex"] + "\n" + VECTORS["malformed"][2]["hex"] + "\n"
    proc = subprocess.run([sys.executable, "-m", "laned.cli", "decode", "--json"], input=data,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert json.loads(proc.stdout.splitlines()[0])["type"] == "C0"
    assert "short" in proc.stderr


def test_an_unknown_profile_is_refused_with_the_choices(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "laned.cli", "decode", "--profile", "wanji", "ff"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "national" in proc.stderr


def test_a_missing_file_is_a_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "laned.cli", "decode", "--file", str(tmp_path / "none.txt")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "cannot read" in proc.stderr


# -- bad frames never stop the tool; no frame at all is an error ----------------------------

def laned_decode(*args: str, stdin: str | None = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "laned.cli", "decode", *args], input=stdin,
                          capture_output=True, text=True, timeout=60)


def test_a_network2019_b4_too_short_for_its_layout_is_named_on_stderr_not_a_traceback():
    proc = laned_decode("--profile", "network2019", "ffff18b4a1b2c3d40000a8ff")
    assert proc.returncode == 2 and proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert line.startswith("laned decode: byte 0: layout: B4 (network2019)")
    assert line.endswith("[ffff18b4a1b2c3d40000a8ff]")


def test_hex_without_a_frame_exits_2_saying_how_many_bytes_held_none():
    proc = laned_decode("00112233445566")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == ["laned decode: no frame found in 7 bytes of input (no frame start FF FF in it)"]


def test_empty_input_exits_2_saying_no_frame_was_found():
    proc = laned_decode()
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["laned decode: no frame found in 0 bytes of input (no hex in it)"]


def test_a_text_file_without_hex_exits_2_saying_no_frame_was_found(tmp_path):
    log = tmp_path / "lane.log"
    log.write_text("2024-11-22 09:30:12 lane started\n# nothing from the RSU yet\n")
    proc = laned_decode("--file", str(log))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["laned decode: no frame found in 0 bytes of input (no hex in it)"]


def test_a_binary_capture_is_refused_as_not_hex_text_naming_the_file(tmp_path):
    capture = tmp_path / "rsu.bin"
    capture.write_bytes(bytes.fromhex(VECTORS["frames"][0]["hex"]) * 3)  # raw bytes, not hex text
    proc = laned_decode("--file", str(capture))
    assert proc.returncode == 2 and proc.stdout == ""
    (line,) = proc.stderr.splitlines()
    assert f"{capture} is not hex text" in line and "no frame found" in line and "xxd -p" in line


def test_a_log_file_with_frames_across_lines_and_comments_decodes_in_stream_offsets(tmp_path, capsys):
    from laned.cli.decode_cmd import main

    c4, c0 = "ffff84c40141ff", VECTORS["frames"][0]["hex"]
    log = tmp_path / "capture.log"
    log.write_bytes(f"# capture of lane 3\r\n09:30:12 RX: {c4[:6]}\r\n  # a comment between the halves\r\n"
                    f"09:30:12 RX: {c4[6:]} (ok)\r\n{c0}".encode())
    assert main([], str(log), "national", "auto", True) == 0
    objs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(o["type"], o["offset"]) for o in objs] == [("C4", 0), ("C0", len(c4) // 2)]


# -- whatever the frame, one output per frame and never a traceback ----------------------

@settings(max_examples=150, **SETTINGS)
@given(st.data(), st.booleans())
def test_a_damaged_frame_of_any_profile_is_printed_or_named_never_a_traceback(data, as_json):
    # The fields of a frame that decodes are then read as records (0015, 0019, the vehicle
    # file, OBU flags, yuan, dates): that reading must hold for damaged values too.
    profile_name, type_code = data.draw(st.sampled_from(TYPED))
    form = data.draw(st.sampled_from(forms(PROFILES[profile_name].messages[type_code])))
    original = data.draw(messages(profile_name, type_code, form))
    _, frame = envelope_frame(profile_name, data.draw(mutated(profile_name, original.encode())), 0x18)
    code, out, err = decode(frame, profile_name, as_json=as_json)
    shown = len(out) if as_json else out.count("┏")  # one table per frame
    assert shown + len(err.splitlines()) == 1, (out, err)
    assert code == (0 if shown else 2)
