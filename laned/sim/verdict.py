"""The verdict of a simulated run: did each vehicle get what it should, and was the lane safe.

It compares what each vehicle was expected to get (``SimVehicle.expected_*``: outcome,
reason, fee, way) with what the journal says happened and with where the lane model says
the vehicle went — a vehicle that paid but did not pass the arm (``paid_not_passed``:
someone else drove out on its payment) and one that passed without its own payment or
record (``passed_unpaid``) are never as expected. :class:`~laned.sim.lane_sim.LaneSim`
fills the :class:`VehicleRun` records as the run goes and sums them up in a
:class:`SimSummary`: the charges the emulated cards really took (a second charge of one
card is a double charge), and the safety violations from the lane model, which checks the
arm against where the vehicles really are rather than against what the sensors said.
With the centre, the summary also says what the centre received (``centre_*``) and the
outbox backlog left; the list versions the lane used are there either way.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from laned.lane.fee_table import FeeSchedule
from laned.lane.status_list import StatusList
from laned.masking import mask_plate
from laned.sim.rsu_emulator import LogEntry
from laned.sim.rsu_scenario import Fault
from laned.sim.vehicle import DEFAULT_TIMEZONE, PAID_OUTCOMES, Kind, SimVehicle

if TYPE_CHECKING:
    from laned.sim.lane_sim import LaneSim

# A follow-car record the lane makes belongs to a vehicle without a payment of its own that
# was at the arm at most this long before it (found out later: when the car whose payment
# it used is reported again at the closed arm) or just after it.
FOLLOW_RECORD_WINDOW_S = (-2.0, 90.0)


@dataclass
class VehicleRun:
    """One vehicle's way through the simulated lane."""

    index: int
    vehicle: SimVehicle
    spawn_at: float  # seconds after the traffic started
    model_id: str | None = None
    announced: bool = False  # its OBU is in the RSU's zone
    stopped_since: float | None = None
    end: str = ""  # "passed" | "diverted" | "" while in the lane
    outcome: str = "none"  # charged | entry_written | paid_on_record | refused | unknown | follow_car | none
    reason: str | None = None
    fee: int | None = None
    seen_again: bool = False  # the RSU reported it again after it paid and the lane let it on
    at_arm_at: float | None = None  # when it first was on the safety loop (monotonic)
    follow_recorded: bool = False  # drove out without its own payment, and the lane recorded a follow-car for it
    final: bool = False  # the run is over and was not interrupted: still in the lane counts as not passed

    @property
    def expected(self) -> str:
        return self.vehicle.expected

    @property
    def paid_not_passed(self) -> bool:
        """Paid (or let on by its record) but did not drive out: diverted, or still
        waiting at the end — someone else used its payment."""
        return self.outcome in PAID_OUTCOMES and (self.end == "diverted" or (self.final and not self.end))

    @property
    def passed_unpaid(self) -> bool:
        """Drove out without its own payment (or record) and without a follow-car record."""
        return self.end == "passed" and self.outcome not in PAID_OUTCOMES and not self.follow_recorded

    @property
    def unrecorded_follow_car(self) -> bool:
        """A tailgater (with or without an OBU: it drove out behind another vehicle) that
        drove out without its own payment and without a follow-car record."""
        return self.passed_unpaid and (self.vehicle.kind is Kind.NO_OBU or self.vehicle.is_tailgater)

    def problems(self) -> list[str]:
        """Why this vehicle is not as expected (empty: it is)."""
        v, out = self.vehicle, []
        if self.outcome != v.expected_outcome:
            out.append(f"outcome {self.outcome}, expected {v.expected_outcome}")
        elif v.expected_reason is not None and self.reason != v.expected_reason:
            out.append(f"reason {self.reason}, expected {v.expected_reason}")
        if v.expect_fee is not None and self.fee != v.expect_fee:
            out.append(f"fee {self.fee}, expected {v.expect_fee}")
        if self.paid_not_passed:
            out.append("paid_not_passed")
        if self.passed_unpaid:
            out.append("passed_unpaid")
        way = v.expected_way
        if way is not None and self.end and self.end != way and not (self.paid_not_passed or self.passed_unpaid):
            out.append(f"way {self.end}, expected {way}")
        return out

    @property
    def as_expected(self) -> bool:
        return not self.problems()

    def as_json(self, *, show_plates: bool) -> dict[str, Any]:
        v = self.vehicle
        return {"vehicle": self.index + 1, "plate": v.plate if show_plates else mask_plate(v.plate),
                "kind": str(v.kind), "outcome": self.outcome, "reason": self.reason, "fee": self.fee,
                "expected": self.expected, "expected_outcome": v.expected_outcome, "expected_fee": v.expect_fee,
                "expected_way": v.expected_way, "as_expected": self.as_expected, "unexpected": self.problems(),
                "way": self.end or "in_lane"}


@dataclass
class SimSummary:
    vehicles: int
    charged: int
    entry_written: int
    refused: dict[str, int]
    unknown: int
    safety_violations: int
    double_charges: int
    turnaround_p50_ms: float | None
    turnaround_p99_ms: float | None
    outcomes: list[dict[str, Any]]
    unexpected: int
    follow_cars: int
    passed: int
    diverted: int
    duration_s: float
    paid_not_passed: int = 0  # paid, but another vehicle drove out on the payment (or none did)
    passed_unpaid: int = 0  # drove out without its own payment or record
    unrecorded_follow_cars: int = 0  # tailgaters among those: the lane recorded no follow-car for them
    follow_car_records: int = 0  # follow-cars the lane recorded (one per vehicle without a payment of its own)
    timezone: str = DEFAULT_TIMEZONE
    violations: list[str] = field(default_factory=list)
    state_dir: str | None = None  # where the journal and the daemon log are (None: removed)
    interrupted: bool = False
    # The versions the lane used: {"status_list": 1, "fee_table": 1} (None: it had none).
    list_versions: dict[str, int | None] = field(default_factory=dict)
    # With the centre (laned/sim/sim_centre.py); all None with --no-centre (no centre ran).
    centre_received: int | None = None  # transaction messages the centre received, every copy
    centre_duplicates_dropped: int | None = None
    centre_gaps: list[str] | None = None  # seq ranges missing at the centre below its highest, e.g. ["4-6"]
    centre_pending_reconciliations: int | None = None  # unknown outcomes the centre holds unsettled
    outbox_backlog: int | None = None  # final journal rows the centre had not acknowledged at the end

    @property
    def ok(self) -> bool:
        return self.safety_violations == 0 and self.double_charges == 0

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q) - 1]


def answer_times(log: list[LogEntry]) -> list[float]:
    """The daemon's answer times (s) to intact RSU frames. An answer to a frame the
    emulator damaged on purpose is the lane's resend request (C2 stop type 2), which by
    design waits ~0.1 s for a good frame first: it says nothing of the daemon's speed."""
    out: list[float] = []
    damaged = False
    for e in log:
        if e.direction == "tx":
            damaged = Fault.CORRUPT.value in e.note.split(",")
        elif e.turnaround is not None and not damaged:
            out.append(e.turnaround)
    return out


def attribute_follow_cars(runs: Sequence[VehicleRun], follow_records: Sequence[float]) -> None:
    """Match the lane's follow-car records with the vehicles that drove out without a
    payment of their own. The lane cannot name the vehicle (no plate camera): a record is
    judged by whether such a vehicle was at the arm about then — at most
    FOLLOW_RECORD_WINDOW_S before it (a tailgater found out once the car whose payment
    it used is reported again) or just after. Each record covers one vehicle."""
    lo, hi = FOLLOW_RECORD_WINDOW_S
    unpaid = sorted((r for r in runs if r.at_arm_at is not None and r.outcome not in PAID_OUTCOMES),
                    key=lambda r: r.at_arm_at or 0.0)
    for r in unpaid:
        r.follow_recorded = False
    for at in follow_records:
        for r in unpaid:
            if not r.follow_recorded and r.at_arm_at is not None and lo <= at - r.at_arm_at <= hi:
                r.follow_recorded = True
                break
    for r in unpaid:
        if r.follow_recorded and r.outcome == "none":
            r.outcome, r.reason = "follow_car", "follow_car"


def summarise(sim: LaneSim) -> SimSummary:
    """The verdict once the run is over (or interrupted)."""
    model, emu = sim.model, sim.emulator
    assert model is not None and emu is not None
    per_card = Counter(p.obu_id for p in emu.charges)
    journal_charged = Counter(r["obu_id"] for r in sim.journal_rows if r["state"] == "charged")
    double = sum(n - 1 for n in per_card.values() if n > 1) + sum(n - 1 for n in journal_charged.values() if n > 1)
    turn = [t * 1000.0 for t in answer_times(emu.log)]
    refused = Counter(r.reason for r in sim.runs if r.outcome == "refused" and r.reason)
    for r in sim.runs:
        r.final = not sim.interrupted
    centre = sim.centre_report
    return SimSummary(
        vehicles=len(sim.runs),
        charged=sum(1 for r in sim.runs if r.outcome == "charged"),
        entry_written=sum(1 for r in sim.runs if r.outcome == "entry_written"),
        refused=dict(sorted(refused.items())),
        unknown=sum(1 for r in sim.runs if r.outcome == "unknown"),
        safety_violations=len(model.violations),
        double_charges=double,
        turnaround_p50_ms=_round(percentile(turn, 50)),
        turnaround_p99_ms=_round(percentile(turn, 99)),
        outcomes=[r.as_json(show_plates=sim.show_plates) for r in sim.runs],
        unexpected=sum(1 for r in sim.runs if not r.as_expected),
        follow_cars=sum(1 for r in sim.runs if r.outcome == "follow_car"),
        passed=sum(1 for r in sim.runs if r.end == "passed"),
        diverted=sum(1 for r in sim.runs if r.end == "diverted"),
        paid_not_passed=sum(1 for r in sim.runs if r.paid_not_passed),
        passed_unpaid=sum(1 for r in sim.runs if r.passed_unpaid),
        unrecorded_follow_cars=sum(1 for r in sim.runs if r.unrecorded_follow_car),
        follow_car_records=len(sim.follow_records),
        timezone=sim.timezone,
        duration_s=round(time.monotonic() - sim.started, 1) if sim.started else 0.0,
        violations=[f"{v.kind} ({v.vehicle}): {v.detail}" for v in model.violations],
        state_dir=str(sim.state_dir),
        interrupted=sim.interrupted,
        list_versions=list_versions(sim),
        centre_received=centre.received if centre else None,
        centre_duplicates_dropped=centre.duplicates_dropped if centre else None,
        centre_gaps=centre.gaps if centre else None,
        centre_pending_reconciliations=centre.pending_reconciliations if centre else None,
        outbox_backlog=sim.outbox_backlog,
    )


def list_versions(sim: LaneSim) -> dict[str, int | None]:
    """The status list and fee table versions the lane used (None: it had none). Read from
    the health monitor, which holds the list the lane loaded even when it is empty (the
    machine then checks against an empty stand-in without a version)."""
    monitor = sim.executor.health if sim.executor is not None else None
    status = getattr(monitor, "status_list", None)
    fees = getattr(monitor, "fees", None)
    return {"status_list": status.version if isinstance(status, StatusList) else None,
            "fee_table": fees.current.version if isinstance(fees, FeeSchedule) else None}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
