"""A traffic campaign: many seeded runs of ``laned sim`` under traffic meant to break the lane.

Each run draws its vehicles from a seed: the ordinary mix of ``laned sim`` plus what real
traffic does to an ETC lane — queues that close up to 0.5 m behind a closed arm, speeds
from a 0.5 m/s crawl to 20 m/s, tailgaters with and without an OBU (riding 1.6–3 m behind
the car in front, through the open arm whatever the light), cards moved into another
vehicle's OBU, cars without an OBU at all, and the RSU reading every OBU as it enters its
20 m zone, long before the car in front has reached the arm.

It reports, summed over all runs, the five counts that must be 0 — safety violations,
double charges, paid vehicles that did not pass, vehicles that passed without a payment
of their own nor a follow-car record, and unrecorded follow-cars — with every vehicle
that made one of them non-zero, so a failing seed can be replayed alone::

    python -m laned.sim.campaign --seeds 1-40 --vehicles 25 --json

Tailgaters keep more than the approach loop's 1.5 m to the car in front: closer, no loop
tells two vehicles apart (docs/lane_sensors.md); that limit is the sensors', not the
lane logic's, and the campaign does not count it against the lane.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import random
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from laned.sim.lane_sim import LaneSim, SimSummary
from laned.sim.traffic import Kind, SimVehicle, random_plate, traffic_mix

log = logging.getLogger("laned.sim.campaign")

SPEED_RANGE = (0.5, 20.0)  # m/s
CRAWL_MAX = 1.5  # m/s: a crawler is slower than this …
CRAWLER_SHARE = 0.15  # … and this share of the vehicles crawl (each holds up the queue behind it)
QUEUE_GAP_RANGE = (0.5, 3.0)  # m kept behind the vehicle in front, also standing
TAILGATE_GAP_RANGE = (1.6, 3.0)  # m: a tailgater the approach loop can still tell apart …
TAILGATE_POLLS_S = 0.1  # … plus its speed times two input polls (20 Hz), so a poll sees the gap
ARRIVAL_RANGE = (0.0, 2.5)  # s between arrivals: queues form behind a closed arm

# What the campaign makes of an ordinary paying car now and then (weights against 60: stays one).
EXTRA_WEIGHTS = {"tailgater_with_obu": 10, "moved_card": 6, "no_obu": 6}
COUNTS = ("safety_violations", "double_charges", "paid_not_passed", "passed_unpaid", "unrecorded_follow_cars")


def campaign_traffic(n: int, seed: int) -> list[SimVehicle]:
    """``n`` vehicles from ``seed``: the seeded mix of ``laned sim``, reworked into real traffic."""
    rng = random.Random(seed * 7919 + 17)
    base = [v.model_dump() for v in traffic_mix(n, seed)]
    out: list[dict[str, Any]] = []
    for v in base:
        kind = Kind(v["kind"])
        v["speed"] = _speed(rng)
        v["arrive_after"] = round(rng.uniform(*ARRIVAL_RANGE), 2)
        v["gap_m"] = round(rng.uniform(*QUEUE_GAP_RANGE), 2)
        v["length"] = round(rng.choice((4.5, 4.5, 4.5, 5.2, 7.5, 12.0, 16.5)), 1)
        if kind is Kind.FOLLOW_CAR:
            v["arrive_after"], v["gap_m"] = 0.0, _tailgate_gap(rng, v["speed"], out)
        elif kind is Kind.NORMAL and out:
            extra = rng.choices([None, *EXTRA_WEIGHTS], weights=[60, *EXTRA_WEIGHTS.values()])[0]
            if extra == "tailgater_with_obu":
                # Pays (the RSU reads it early) and rides close behind the car in front.
                v.update(tailgates=True, arrive_after=0.0, gap_m=_tailgate_gap(rng, v["speed"], out))
            elif extra == "moved_card":
                # Someone else's card in this OBU: its file 0015 names the other plate.
                donor = rng.choice(out)
                v.update(card_number=donor["card_number"], card_plate=donor["card_plate"] or donor["plate"],
                         plate=_other_plate(rng, donor["plate"]), expect="plate_mismatch")
            elif extra == "no_obu":
                v.update(kind=Kind.NO_OBU)
        out.append(v)
    return [SimVehicle.model_validate(v) for v in _fix_ids(out)]


def _speed(rng: random.Random) -> float:
    """A crawler (a truck in a queue) now and then, otherwise log-uniform up to 20 m/s."""
    if rng.random() < CRAWLER_SHARE:
        return round(rng.uniform(SPEED_RANGE[0], CRAWL_MAX), 2)
    return round(math.exp(rng.uniform(math.log(CRAWL_MAX), math.log(SPEED_RANGE[1]))), 2)


def _tailgate_gap(rng: random.Random, speed: float, before: list[dict[str, Any]]) -> float:
    # The sim gives a tailgater the speed of the car it follows if that is faster: the gap
    # must last two polls at that speed.
    pace = max(speed, before[-1]["speed"]) if before else speed
    return round(rng.uniform(*TAILGATE_GAP_RANGE) + TAILGATE_POLLS_S * pace, 2)


def _other_plate(rng: random.Random, plate: str) -> str:
    while (p := random_plate(rng)) == plate:
        pass
    return p


def _fix_ids(vehicles: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One OBU is one vehicle: a clash of the drawn ids gets a fresh one."""
    seen: set[str] = set()
    for v in vehicles:
        while v["obu_id"] in seen:
            v["obu_id"] = f"{(int(v['obu_id'], 16) + 1) & 0xFFFFFFFF:08x}"
        seen.add(v["obu_id"])
    return vehicles


@dataclass
class CampaignReport:
    runs: int = 0
    vehicles: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))
    unexpected: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    ways: dict[str, int] = field(default_factory=dict)
    follow_car_records: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)  # seed, vehicle, what
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return all(n == 0 for n in self.counts.values())

    def add(self, seed: int, summary: dict[str, Any]) -> None:
        """One run's summary (``SimSummary.as_json()``)."""
        self.runs += 1
        self.vehicles += summary["vehicles"]
        for key in COUNTS:
            self.counts[key] += int(summary[key])
        self.unexpected += summary["unexpected"]
        self.follow_car_records += summary["follow_car_records"]
        outcomes: Counter[str] = Counter(self.outcomes)
        ways: Counter[str] = Counter(self.ways)
        for o in summary["outcomes"]:
            outcomes[o["outcome"]] += 1
            ways[o["way"]] += 1
            bad = [u for u in o["unexpected"] if u in ("paid_not_passed", "passed_unpaid")]
            if bad:
                self.failures.append({"seed": seed, "vehicle": o["vehicle"], "kind": o["kind"], "what": bad})
        for v in summary["violations"]:
            self.failures.append({"seed": seed, "vehicle": None, "kind": None, "what": [v]})
        if summary["double_charges"]:
            self.failures.append({"seed": seed, "vehicle": None, "kind": None,
                                  "what": [f"{summary['double_charges']} double charge(s)"]})
        self.outcomes, self.ways = dict(sorted(outcomes.items())), dict(sorted(ways.items()))

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


async def run_one(seed: int, vehicles: int, state_dir: Path) -> SimSummary:
    """One seed's run, in this process."""
    return await LaneSim(campaign_traffic(vehicles, seed), state_dir, seed=seed).run()


async def run_campaign(seeds: list[int], vehicles: int, *, jobs: int = 1, state_root: Path | None = None,
                       progress: bool = False) -> CampaignReport:
    """Every seed's run, ``jobs`` at a time, each in its own process (the runs are in real
    time and mostly wait: a few side by side use the machine, not contend for it)."""
    report = CampaignReport()
    started = time.monotonic()
    gate = asyncio.Semaphore(jobs)

    async def one(seed: int, root: Path) -> None:
        async with gate:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "laned.sim.campaign", "--one", str(seed), "--vehicles", str(vehicles),
                "--state-root", str(root), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
            out, _ = await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"seed {seed}: the run ended with status {proc.returncode} (its log: "
                               f"{root / f'seed-{seed}'})")
        summary = json.loads(out)
        report.add(seed, summary)
        if progress:
            bad = {k: summary[k] for k in COUNTS if summary[k]}
            print(f"seed {seed}: {summary['vehicles']} vehicles, {summary['passed']} passed, "
                  f"{summary['diverted']} diverted, unexpected {summary['unexpected']}, "
                  f"{bad or 'all five counts 0'} ({summary['duration_s']:.0f} s)", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="laned-campaign-") as tmp:
        root = state_root or Path(tmp)
        async with asyncio.TaskGroup() as tg:
            for seed in seeds:
                tg.create_task(one(seed, root), name=f"campaign-seed-{seed}")
    report.duration_s = round(time.monotonic() - started, 1)
    return report


def _seeds(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        try:
            out += list(range(int(lo), int(hi or lo) + 1))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}: expected seeds such as 1-40 or 3,7,9") from None
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m laned.sim.campaign", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=_seeds, default=_seeds("1-40"), help="seeds, e.g. 1-40 or 3,7,9")
    parser.add_argument("--vehicles", type=int, default=25, help="vehicles per seed")
    parser.add_argument("--state-root", type=Path, help="keep each run's journal and log here")
    parser.add_argument("--jobs", type=int, default=3, help="runs side by side (default 3)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a worker: one seed, its summary as JSON
    args = parser.parse_args(argv)
    if args.vehicles < 1 or args.jobs < 1:
        parser.error("--vehicles and --jobs: at least 1")
    if args.one is not None:
        root = args.state_root or Path(tempfile.mkdtemp(prefix="laned-campaign-"))
        summary = asyncio.run(run_one(args.one, args.vehicles, root / f"seed-{args.one}"))
        print(json.dumps(summary.as_json(), ensure_ascii=False, default=str))
        return 0
    logging.basicConfig(level=logging.WARNING)
    report = asyncio.run(run_campaign(args.seeds, args.vehicles, jobs=args.jobs, state_root=args.state_root,
                                      progress=True))
    if args.json:
        print(json.dumps(report.as_json(), ensure_ascii=False))
    else:
        print(f"{report.runs} runs, {report.vehicles} vehicles in {report.duration_s:.0f} s: "
              + ", ".join(f"{k} {v}" for k, v in report.counts.items()))
        for f in report.failures:
            print(f"  seed {f['seed']} vehicle {f['vehicle']} ({f['kind']}): {'; '.join(f['what'])}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
