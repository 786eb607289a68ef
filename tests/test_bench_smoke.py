"""The protocol benchmark runs and prints every metric docs/benchmarks.md records (no timing asserted)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from laned.protocol import get_profile

BENCH = Path(__file__).resolve().parents[1] / "bench" / "protocol_bench.py"


def load_bench():
    spec = importlib.util.spec_from_file_location("protocol_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_protocol_bench_prints_every_required_metric_as_json_lines(capsys):
    bench = load_bench()
    assert bench.main(["--seconds", "0.01", "--repeats", "1"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows and all(set(r) == {"bench", "metric", "value", "unit"} and r["bench"] == "protocol" for r in rows)
    assert all(isinstance(r["value"], (int, float)) and r["value"] > 0 for r in rows)
    metrics = {r["metric"] for r in rows}
    national_types = {f"{t:02X}" for t in get_profile("national").messages}
    required = {"decode_fps_handwritten.B2", "decode_fps_handwritten.B5", "handwritten_ratio.B2",
                "handwritten_ratio.B5", "encode_fps.C6"} | {f"decode_fps.{t}" for t in national_types}
    assert required <= metrics, required - metrics
    units = {r["metric"]: r["unit"] for r in rows}
    assert units["decode_fps.B2"] == "frames/s" and units["handwritten_ratio.B2"] == "x"


def test_the_hand_written_decoders_refuse_a_frame_whose_bcc_is_wrong():
    bench = load_bench()
    frames = bench.national_frames(json.loads(bench.VECTORS.read_text())["frames"])
    for t, hand in bench.HANDWRITTEN.items():
        wire = frames[t]
        assert hand(wire)["error_code"] == 0
        broken = wire[:-2] + bytes([wire[-2] ^ 1]) + wire[-1:]  # BCC (or its escape) altered
        try:
            hand(broken)
        except ValueError:
            continue
        raise AssertionError(f"the hand-written {t} decoder accepted a bad BCC")
