"""Protocol throughput: laned's decoder and encoder next to a hand-written struct decoder.

Decoding is measured on the full path a frame takes in the daemon: wire bytes into
``FrameDecoder.feed`` → a typed message. The hand-written comparison does the same work
for the national B2 and B5 frames with ``struct.unpack_from`` (find start and end,
unescape, check the BCC, unpack, turn BCD dates into ``date``/``datetime``) and is checked
once to give the same field values as laned, so the ratio compares like with like.

Prints one JSON object per line: ``{"bench": "protocol", "metric", "value", "unit"}``.

    .venv/bin/python bench/protocol_bench.py [--seconds 0.5] [--repeats 5]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import struct
import sys
import time
from pathlib import Path
from typing import Any, Callable

from laned.protocol import FrameDecoder, encode_message, get_profile
from laned.protocol.checks import bcc

VECTORS = Path(__file__).resolve().parents[1] / "tests" / "vectors" / "rsu_frames.json"


def _unescape(body: bytes) -> bytes:
    if b"\xfe" in body:
        if body.count(b"\xfe") != body.count(b"\xfe\x00") + body.count(b"\xfe\x01"):
            raise ValueError("escape")
        body = body.replace(b"\xfe\x01", b"\xff").replace(b"\xfe\x00", b"\xfe")
    return body


def _date(raw: bytes) -> dt.date | None:
    if raw == b"\0\0\0\0":
        return None
    s = raw.hex()
    return dt.date(int(s[:4]), int(s[4:6]), int(s[6:8]))


def _datetime(raw: bytes) -> dt.datetime | None:
    if raw == bytes(7):
        return None
    s = raw.hex()
    return dt.datetime(int(s[:4]), int(s[4:6]), int(s[6:8]), int(s[8:10]), int(s[10:12]), int(s[12:14]))


_B2 = struct.Struct(">4sB8s8s4s4sB2s")
_B5 = struct.Struct(">4sBI6s7sB4sHII")


def _body(wire: bytes) -> bytes:
    start = wire.find(b"\xff\xff")
    end = wire.find(b"\xff", start + 2)
    body = _unescape(wire[start + 2:end])
    if bcc(body):
        raise ValueError("bcc")
    return body


def handwritten_b2(wire: bytes) -> dict[str, Any]:
    body = _body(wire)
    f = _B2.unpack_from(body, 2)
    return {"obu_id": f[0], "error_code": f[1], "issuer_identifier": f[2], "serial_number": f[3],
            "date_of_issue": _date(f[4]), "date_of_expire": _date(f[5]), "equipment_cv": f[6], "obu_status": f[7]}


def handwritten_b5(wire: bytes) -> dict[str, Any]:
    body = _body(wire)
    f = _B5.unpack_from(body, 2)
    return {"obu_id": f[0], "error_code": f[1], "wr_file_time": f[2], "psam_no": f[3], "trans_time": _datetime(f[4]),
            "trans_type": f[5], "tac": f[6], "icc_pay_serial": f[7], "psam_trans_serial": f[8], "card_balance": f[9]}


def rate(fn: Callable[[], Any], seconds: float, repeats: int) -> float:
    """Best-of-``repeats`` calls per second, each run lasting about ``seconds``."""
    n = 1
    while True:  # calibrate a batch that takes ~1/20 of a run
        t = time.perf_counter()
        for _ in range(n):
            fn()
        if time.perf_counter() - t > seconds / 20:
            break
        n *= 2
    best = 0.0
    for _ in range(repeats):
        count, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for _ in range(n):
                fn()
            count += n
        best = max(best, count / (time.perf_counter() - t0))
    return best


def emit(metric: str, value: float, unit: str) -> None:
    print(json.dumps({"bench": "protocol", "metric": metric, "value": round(value, 3), "unit": unit}), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=0.5, help="length of one measuring run")
    ap.add_argument("--repeats", type=int, default=5, help="runs per figure; the best is reported")
    args = ap.parse_args(argv)

    vectors = json.loads(VECTORS.read_text())["frames"]
    national = get_profile("national")
    frames: dict[str, bytes] = {}
    for v in vectors:
        if v["profile"] == "national" and v["fields"].get("error_code", 0) == 0 and v["type"] not in frames:
            frames[v["type"]] = bytes.fromhex(v["hex"])

    decoder = FrameDecoder(national)

    def laned_decode(wire: bytes):
        return decoder.feed(wire)[0].message

    # Honesty check: the hand-written decoders must produce laned's values.
    for t, hand in (("B2", handwritten_b2), ("B5", handwritten_b5)):
        if hand(frames[t]) != laned_decode(frames[t]).fields():
            print(f"hand-written {t} decoder disagrees with laned", file=sys.stderr)
            return 1

    results: dict[str, float] = {}
    for t, wire in sorted(frames.items()):
        results[f"decode_fps.{t}"] = rate(lambda w=wire: laned_decode(w), args.seconds, args.repeats)
        emit(f"decode_fps.{t}", results[f"decode_fps.{t}"], "frames/s")
    for t, hand in (("B2", handwritten_b2), ("B5", handwritten_b5)):
        r = rate(lambda w=frames[t], h=hand: h(w), args.seconds, args.repeats)
        emit(f"decode_fps_handwritten.{t}", r, "frames/s")
        emit(f"handwritten_ratio.{t}", r / results[f"decode_fps.{t}"], "x")
    for t in ("C6", "C1", "C2"):
        msg = laned_decode(frames[t])
        emit(f"encode_fps.{t}", rate(lambda m=msg: encode_message(national, m, rsctl=0x84), args.seconds,
                                     args.repeats), "frames/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
