"""`laned decode`: what a field engineer gets from pasted bytes."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from laned.cli.decode_cmd import hex_from_line, run

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
