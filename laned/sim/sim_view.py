"""What ``laned sim`` shows: the live view (rich) and the summary.

The live view is redrawn from the simulation's state a few times a second: the lane as a
strip (vehicles, loops, the arm), the barrier, the light and the fee display as the
emulated devices hold them, the recent vehicles with what the lane decided, and the
recent frames on the RSU line with the lane's answer times; with the centre, how many
transactions it has received.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from laned.drivers.lane_io import Light, Signal
from laned.masking import mask_plate

if TYPE_CHECKING:
    from laned.sim.lane_sim import LaneSim, SimSummary, VehicleRun

STRIP_FROM, STRIP_TO = -20, 21  # metres shown around the arm, one character each
LIGHT_STYLE = {Light.GREEN: "bold green", Light.RED: "bold red", Light.OFF: "dim"}
OUTCOME_STYLE = {"charged": "green", "entry_written": "green", "refused": "yellow", "unknown": "red",
                 "not_charged": "yellow", "follow_car": "magenta", "in_progress": "cyan"}


def yuan(fen: int | None) -> str:
    return "" if fen is None else f"{fen / 100:.2f}"


def plate(run: VehicleRun, show: bool) -> str:
    return run.vehicle.plate if show else mask_plate(run.vehicle.plate)


def lane_strip(sim: LaneSim) -> Text:
    """One character per metre: vehicles as their number, loops underlined, the arm."""
    model = sim.model
    if model is None:
        return Text("")
    g = model.geometry
    cells = [" "] * (STRIP_TO - STRIP_FROM)
    for st in model.vehicles():
        label = st.id.removeprefix("v")
        for x in range(max(STRIP_FROM, int(st.rear)), min(STRIP_TO, int(st.front) + 1)):
            cells[x - STRIP_FROM] = "▆"
        mid = int((st.rear + st.front) / 2) - STRIP_FROM
        for i, ch in enumerate(label):
            if 0 <= mid + i < len(cells):
                cells[mid + i] = ch
    text = Text()
    for i, ch in enumerate(cells):
        x = i + STRIP_FROM
        on_loop = g.safety_loop[0] <= x < g.safety_loop[1] or g.entry_loop[0] <= x < g.entry_loop[1]
        style = "bold white on grey23" if on_loop else ""
        if x == int(g.arm_x):
            up = model.barrier_position >= 1.0
            text.append("|" if up else "┃", style="bold green" if up else "bold red")
        text.append(ch, style=style)
    return text


def lane_panel(sim: LaneSim) -> Panel:
    model, display, emu = sim.model, sim.display, sim.emulator
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    if model is not None:
        pos = model.barrier_position
        bar = "█" * round(pos * 10) + "░" * (10 - round(pos * 10))
        grid.add_row("lane", lane_strip(sim))
        grid.add_row("barrier", Text(f"{bar} {pos * 100:3.0f}% {model.barrier_motion}"))
        light = model.light
        loops = "  ".join(f"{sig.value} {'■' if model.sensed(sig) else '□'}"
                          for sig in (Signal.ENTRY_LOOP, Signal.SAFETY_LOOP))
        grid.add_row("light", Text(f"● {light.value}", style=LIGHT_STYLE.get(light, "")))
        grid.add_row("loops", loops)
    if display is not None:
        shown = display.shown()
        fields = [f for f in (shown.plate and (shown.plate if sim.show_plates else mask_plate(shown.plate)),
                              shown.vehicle_class and f"class {shown.vehicle_class}",
                              shown.fee_fen is not None and f"fee {yuan(shown.fee_fen)} 元",
                              shown.balance_fen is not None and f"balance {yuan(shown.balance_fen)} 元") if f]
        grid.add_row("display", Text(f"{shown.line1} {shown.line2}", style="bold") + Text("   " + "  ".join(fields)))
    if sim.centre is not None:
        grid.add_row("centre", f"{sim.centre.received()} transactions received (private broker "
                               f"127.0.0.1:{sim.centre.broker.port if sim.centre.broker else '?'}, reference centre)")
    rsu = f"{emu.state}" if emu is not None else "starting"
    elapsed = time.monotonic() - sim.started if sim.started else 0.0
    arrived = sum(1 for r in sim.runs if r.model_id is not None)
    title = (f"laned sim — lane {sim.config.lane.lane_id if sim.config else ''} — {elapsed:5.1f} s — "
             f"vehicle {arrived}/{len(sim.runs)} — RSU {rsu}")
    return Panel(grid, title=title, title_align="left")


def vehicles_table(sim: LaneSim, rows: int = 10) -> Table:
    table = Table(title="vehicles", title_justify="left", expand=True)
    for col in ("#", "plate", "kind", "lane decided", "fee", "way", "as expected"):
        table.add_column(col)
    arrived = [r for r in sim.runs if r.model_id is not None]
    for r in arrived[-rows:]:
        style = OUTCOME_STYLE.get(r.outcome, "")
        decided = "" if r.outcome == "none" else f"{r.outcome} ({r.reason})" if r.reason != r.outcome else r.outcome
        if r.seen_again:
            decided += ", seen again"
        ok = "" if r.outcome in ("none", "in_progress") and not r.end else ("✓" if r.as_expected else f"✗ {r.expected}")
        table.add_row(str(r.index + 1), plate(r, sim.show_plates), str(r.vehicle.kind), Text(decided, style=style),
                      yuan(r.fee) if r.outcome == "charged" else "", r.end or "in lane", ok)
    return table


def frames_table(sim: LaneSim, rows: int = 8) -> Table:
    table = Table(title="RSU line", title_justify="left", expand=True)
    for col in ("t (s)", "", "frame", "OBU", "answer after", "note"):
        table.add_column(col)
    emu = sim.emulator
    if emu is None or not emu.log:
        return table
    t0 = emu.log[0].at
    for e in emu.log[-rows:]:
        arrow = "RSU → lane" if e.direction == "tx" else "lane → RSU"
        after = f"{e.turnaround * 1000:.2f} ms" if e.turnaround is not None else ""
        table.add_row(f"{e.at - t0:7.2f}", arrow, e.name, e.obu_id or "", after, e.note)
    return table


def totals(sim: LaneSim) -> Text:
    by: dict[str, int] = {}
    for r in sim.runs:
        if r.outcome != "none":
            by[r.outcome] = by.get(r.outcome, 0) + 1
    violations = len(sim.model.violations) if sim.model is not None else 0
    parts = [f"{k} {v}" for k, v in sorted(by.items())]
    text = Text("  ".join(parts) + "   ")
    text.append(f"safety violations {violations}", style="bold red" if violations else "green")
    return text


def live(sim: LaneSim) -> Group:
    return Group(lane_panel(sim), vehicles_table(sim), frames_table(sim), totals(sim))


def summary_table(summary: SimSummary) -> Group:
    """The end-of-run report for a person (``--json`` prints the same as JSON)."""
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("vehicles", str(summary.vehicles))
    head.add_row("charged", str(summary.charged))
    if summary.entry_written:
        head.add_row("entry written", str(summary.entry_written))
    head.add_row("refused", ", ".join(f"{k} {v}" for k, v in summary.refused.items()) or "0")
    head.add_row("unknown outcomes", f"{summary.unknown} (recorded for reconciliation)")
    head.add_row("follow-cars", str(summary.follow_cars))
    head.add_row("turnaround", f"p50 {_ms(summary.turnaround_p50_ms)}, p99 {_ms(summary.turnaround_p99_ms)}")
    head.add_row("safety violations", Text(str(summary.safety_violations),
                                            style="bold red" if summary.safety_violations else "green"))
    head.add_row("double charges", Text(str(summary.double_charges),
                                         style="bold red" if summary.double_charges else "green"))
    head.add_row("as expected", Text(f"{summary.vehicles - summary.unexpected} of {summary.vehicles}",
                                     style="yellow" if summary.unexpected else "green"))
    head.add_row("time", f"{summary.duration_s} s")
    lists = summary.list_versions
    head.add_row("lists used", f"status list {_version(lists.get('status_list'))}, "
                               f"fee table {_version(lists.get('fee_table'))}")
    table = Table(expand=True)
    for col in ("#", "plate", "kind", "outcome", "reason", "fee", "way", "as expected"):
        table.add_column(col)
    for o in summary.outcomes:
        table.add_row(str(o["vehicle"]), o["plate"], o["kind"], Text(o["outcome"], style=OUTCOME_STYLE.get(o["outcome"], "")),
                      o["reason"] or "", yuan(o["fee"]) if o["outcome"] == "charged" else "", o["way"],
                      "✓" if o["as_expected"] else f"✗ expected {o['expected']}")
    parts: list[Any] = [table, Panel(head, title="summary", title_align="left")]
    if summary.interrupted:
        unfinished = sum(1 for o in summary.outcomes if o["way"] == "in_lane")
        parts.append(Text(f"interrupted after {summary.duration_s} s: {unfinished} vehicle(s) had not finished",
                          style="yellow"))
    for v in summary.violations:
        parts.append(Text(f"SAFETY VIOLATION: {v}", style="bold red"))
    return Group(*parts)


def _version(value: int | None) -> str:
    return "none" if value is None else f"version {value}"


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f} ms"
