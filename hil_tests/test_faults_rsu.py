"""Fault injection, the RSU: its adapter pulled and plugged back, its TCP connection reset,
through the real daemon (``run_lane``) with the emulated RSU, fee display, IO module and a
lane model of the vehicles and the arm.

Every case checks both rules of ARCHITECTURE.md (:func:`fault_scenarios.assert_rules`),
what the fee display shows, the alarms raised and cleared, the ``etc_closed`` /
``etc_opened`` journal events, and that ETC closes after the fault and opens again after
the device is back (within the generous deadlines of the fixtures; the measured times are
``bench/fault_bench.py``'s, recorded in docs/reliability.md). Alarm debounces are the
catalogue's × 0.1 here and the health checks run every 0.25 s (``FAST_ALARMS``), so a
1.5 s outage shows ``rsu_offline`` raised and cleared.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from fault_scenarios import (
    BARRIER, CLOSED_LINE1, CLOSED_LINE2, FAST_ALARMS, SPEED, FaultRun, GatedCommits, assert_rules, degraded,
    lane_alarm_at, now_for, obu, recovered, replug_rsu, reset_rsu_connection, rsu_connection_reset,
    rsu_unplugged_before_b2, sent_at, short_lane, unplug_rsu,
)
from lane_fixtures import FAST_RSU, T, LaneBench, lane_bench
from laned.drivers.lane_io import Light, Output
from laned.lane.outcomes import OUTCOMES, Reason

pytestmark = pytest.mark.hil

# The OBU is reported again 0.3 s after its transaction ended, while it stays in the zone.
REDETECTING = dataclasses.replace(FAST_RSU, redetect_interval=0.3)


def charged_rows(bench: LaneBench) -> list[dict]:
    return [r for r in bench.rows() if r["state"] == "charged"]


def assert_alarm_cycle(run: FaultRun, *codes: str) -> None:
    """Each of ``codes`` was raised after the fault and cleared after the device came back."""
    bench = run.bench
    for code in codes:
        raised = bench.alarm_at(code, "raised", run.fault_at)
        cleared = bench.alarm_at(code, "cleared", run.back_at or 0.0)
        assert raised is not None, f"{code} was never raised: {run.raised()}"
        assert cleared is not None and cleared > raised, f"{code} was not cleared after the device came back"


@pytest.mark.parametrize("transport", ["pty", "tcp"], ids=["usb_serial_adapter_pulled", "tcp_rsu_rebooted"])
async def test_an_rsu_lost_before_b2_closes_etc_at_once_and_the_waiting_vehicle_pays_once_when_it_is_back(
        tmp_path, transport):
    """The lane is idle when the RSU goes (pty: the adapter is pulled, and comes back under a
    new tty that udev reports; TCP: the RSU reboots, refusing connections meanwhile). A
    vehicle drives up during the 1.5 s outage and waits at the closed arm; once the RSU is
    back it is initialised again, the vehicle pays once and drives out."""
    run = await rsu_unplugged_before_b2(tmp_path, transport=transport)
    bench = run.bench
    # Degraded: ETC closed by the loss itself, the booth and the driver told.
    assert run.degrade_s is not None and run.degrade_s < T
    assert run.shown_degraded is not None
    assert (run.shown_degraded.line1, run.shown_degraded.line2) == (CLOSED_LINE1, CLOSED_LINE2)
    assert run.light_degraded is Light.RED
    assert run.notes["waiting"] == ["car-1"]  # at the closed arm, nothing charged during the outage
    assert sent_at(bench, "C6") is not None and sent_at(bench, "C6") > (run.back_at or 0)
    # Back: ETC open, the RSU initialised again (C0 → B0 → C1), the vehicle served.
    assert run.recover_s is not None and run.recover_s < T
    assert len(bench.emu.received("C0")) == 2
    assert [p.obu_id for p in bench.emu.charges] == ["a1000001"]
    assert [r["obu_id"] for r in charged_rows(bench)] == ["a1000001"]
    assert run.journal_events() == ["etc_closed", "etc_opened"]
    assert_alarm_cycle(run, "etc_closed", "rsu_offline")
    # etc_closed is the lane's own, raised at once; rsu_offline waits for its debounce.
    assert bench.alarm_at("etc_closed", "raised", run.fault_at) <= bench.alarm_at("rsu_offline", "raised")
    assert bench.c2_for("a1000001") == []  # never refused: it waited, and then it paid
    assert_rules(bench)


async def test_an_rsu_connection_reset_closes_etc_and_the_lane_reconnects_and_serves_the_next_vehicle(tmp_path):
    """The RSU's TCP connection is reset (RST) while the RSU keeps listening: the lane sees
    the reset at once, closes ETC, reconnects by itself after its first back-off step,
    initialises the RSU again and the next vehicle pays."""
    run = await rsu_connection_reset(tmp_path)
    bench = run.bench
    assert run.degrade_s is not None and run.degrade_s < T
    assert run.shown_degraded is not None and run.shown_degraded.line1 == CLOSED_LINE1
    assert run.light_degraded is Light.RED
    assert run.recover_s is not None and run.recover_s < T
    assert run.notes["initialised_s"] < T
    detail = next(o.detail["detail"] for o in bench.seen if o.kind == "alarm" and o.detail["code"] == "etc_closed")
    assert detail.startswith("rsu: ")
    assert len(bench.emu.received("C0")) == 2
    assert [p.obu_id for p in bench.emu.charges] == ["a1000001"]
    assert run.journal_events() == ["etc_closed", "etc_opened"]
    # ETC closed and opened again; the outage was shorter than rsu_offline's debounce.
    assert bench.alarm_at("etc_closed", "raised") and bench.alarm_at("etc_closed", "cleared")
    assert "rsu_offline" not in run.raised()
    assert_rules(bench)


async def test_an_rsu_unplugged_between_c6_and_b5_leaves_the_charge_unknown_and_never_charges_the_obu_again(
        tmp_path):
    """The card paid (the RSU took C6) but the adapter is pulled before its B5 reaches the
    lane. The lane cannot know whether it paid: the transaction is journalled as unknown
    for reconciliation, the vehicle is sent to the manual lane, and when the OBU is seen
    again after the replug it is neither charged again nor waved through."""
    model = short_lane()
    async with lane_bench(tmp_path, [], model=model, barrier=BARRIER, settings=REDETECTING,
                          **FAST_ALARMS) as bench:
        bench.emu.inject("delay", "B5", delay=0.5)  # the purchase is made; its B5 is on the way
        bench.emu.add_obu(obu(1, redetect=True), arrive_in=0.0)
        car = model.add_vehicle(now_for(model), speed=SPEED, vehicle_id="car-1")
        await bench.until(lambda: bench.emu.charges, T, "the RSU to take the C6")
        run = FaultRun(bench, fault_at=time.monotonic())
        await unplug_rsu(bench)
        await degraded(run)
        unknown = await bench.journal_row(lambda r: r["state"] == "unknown", what="the charge recorded as unknown")
        await asyncio.sleep(max(0.0, run.fault_at + 1.5 - time.monotonic()))  # the outage itself
        run.back_at = await replug_rsu(bench)
        await recovered(run)
        # Seen again after the replug: stopped, the driver sent to the manual lane.
        await bench.until(lambda: bench.c2_for("a1000001"), T, "the OBU seen again to be stopped")
        shown = await bench.display_shows(OUTCOMES[Reason.OUTCOME_UNKNOWN].line1)
        assert model.barrier_position == 0.0 and car not in dict(model.departed)
        model.divert(now_for(model), car)
        await bench.until(lambda: bench.alarm_at("rsu_offline", "cleared"), T, "rsu_offline to clear")
    assert len(bench.emu.charges) == 1 and len(bench.c6_for("a1000001")) == 1
    assert unknown["obu_id"] == "a1000001" and unknown["tac"] is None
    assert charged_rows(bench) == []
    assert (shown.line1, shown.line2) == ("交易异常", "请走人工车道")
    assert run.shown_degraded is not None and run.shown_degraded.line2 == CLOSED_LINE2
    assert {"barrier"} & {o.kind for o in bench.seen} == set()  # never raised for it
    assert "outcome_unknown" in run.raised()
    assert_alarm_cycle(run, "etc_closed", "rsu_offline")
    assert [e for e in run.journal_events() if e.startswith("etc_")] == ["etc_closed", "etc_opened"]
    assert_rules(bench)


async def unplugged_while_answering_b4(tmp_path) -> tuple[FaultRun, GatedCommits]:
    """The lane is answering B4 — its intent is being committed before the C6 may go out —
    when the adapter is pulled; the commit then completes; the adapter comes back and the
    OBU, still in the zone, is reported again."""
    gate = GatedCommits("writing the intent")
    model = short_lane()
    async with lane_bench(tmp_path, [], model=model, barrier=BARRIER, settings=REDETECTING, **FAST_ALARMS,
                          journal_options={"commit_hook": gate}) as bench:
        bench.emu.add_obu(obu(1, redetect=True), arrive_in=0.0)
        car = model.add_vehicle(now_for(model), speed=SPEED, vehicle_id="car-1")
        await bench.until(gate.reached.is_set, T, "the intent commit to start")
        run = FaultRun(bench, fault_at=time.monotonic())
        await unplug_rsu(bench)
        await degraded(run)
        gate.release()
        await bench.until(lambda: bench.rows() and bench.rows()[0]["seq"] == 1, T, "the intent to be durable")
        await asyncio.sleep(max(0.0, run.fault_at + 1.0 - time.monotonic()))  # the outage itself
        run.back_at = await replug_rsu(bench)
        await recovered(run)
        run.served_at = await bench.until(lambda: sent_at(bench, "C6", "a1000001"), T, "the OBU to pay")
        await bench.until(lambda: car in dict(model.departed) and model.barrier_position == 0.0, T,
                          "the vehicle to leave and the arm to close")
    return run, gate


async def test_an_rsu_unplugged_while_the_lane_answers_b4_sends_no_c6_and_the_vehicle_pays_once_after_the_replug(
        tmp_path):
    run, gate = await unplugged_while_answering_b4(tmp_path)
    bench = run.bench
    # No C6 went out for the attempt that was cut off; the one after the replug is the only one.
    c6 = bench.c6_for("a1000001")
    assert len(c6) == 1 and sent_at(bench, "C6") >= (run.back_at or 0)
    assert [p.obu_id for p in bench.emu.charges] == ["a1000001"]
    assert [r["obu_id"] for r in charged_rows(bench)] == ["a1000001"]
    assert run.shown_degraded is not None and run.shown_degraded.line1 == CLOSED_LINE1
    assert run.light_degraded is Light.RED
    assert [e for e in run.journal_events() if e.startswith("etc_")] == ["etc_closed", "etc_opened"]
    assert bench.alarm_at("etc_closed", "raised") and bench.alarm_at("etc_closed", "cleared", run.back_at or 0)
    assert sum(1 for c in gate.commits if c.startswith("writing the intent")) == 2
    assert_rules(bench)


async def test_an_rsu_unplugged_while_the_lane_answers_b4_leaves_no_open_intent_in_the_journal(tmp_path):
    """The intent committed after the link was lost belongs to a transaction the lane has
    already given up; no C6 went out for it, so it must end as not charged. (It stayed
    'intent' — "may have paid" — while the lane only counted the late confirmation.)"""
    gate = GatedCommits("writing the intent")
    async with lane_bench(tmp_path, [obu(1)], settings=REDETECTING, journal_options={"commit_hook": gate},
                          **FAST_ALARMS) as bench:
        await bench.until(gate.reached.is_set, T, "the intent commit to start")
        await unplug_rsu(bench)
        await bench.until(lambda: lane_alarm_at(bench, "etc_closed"), T, "ETC closed")
        gate.release()
        try:  # the lane's answer to the late intent: it resolves the row (or, today, only counts it)
            await bench.until(lambda: bench.rows() and bench.rows()[0]["state"] != "intent", 1.0)
        except TimeoutError:
            pass
    assert bench.c6_for("a1000001") == []
    open_intents = [(r["seq"], r["obu_id"]) for r in bench.rows() if r["state"] == "intent"]
    assert open_intents == [], f"no C6 went out for these, yet they stay 'intent' (may have paid): {open_intents}"


async def test_a_reconnected_rsu_that_sent_its_b0_raises_no_rsu_not_initialised(tmp_path):
    """After the connection reset the RSU answers C0 with B0 within milliseconds and serves
    vehicles; its "not initialised" alarm (debounce 15 s, here 1.5 s) must stay quiet. (It
    was raised after every reconnect while the health monitor took its B0 baseline at the
    first check that saw the new connection — after that connection's B0 had arrived.)"""
    async with lane_bench(tmp_path, [], settings=FAST_RSU, **FAST_ALARMS, rsu_transport="tcp") as bench:
        reset = time.monotonic()
        reset_rsu_connection(bench)
        await bench.until(lambda: sent_at(bench, "C1", "00000000", reset), T, "the RSU to be initialised again")
        bench.emu.add_obu(obu(1), arrive_in=0.0)
        await bench.until(lambda: bench.emu.charges, T, "the next vehicle to pay")
        # Hold: longer than the alarm's (scaled) debounce of 1.5 s plus two health checks.
        await asyncio.sleep(2.5)
        raised = lane_alarm_at(bench, "rsu_not_initialised") or bench.alarm_at("rsu_not_initialised", "raised")
    assert raised is None, f"rsu_not_initialised raised {raised - reset:.1f} s after the reset"


async def test_a_lane_that_loses_its_rsu_before_its_first_vehicle_shows_the_red_light(tmp_path):
    """Nothing has passed since laned started when the RSU is lost: the light is red and the
    display says ETC is closed all the same. (The lane used to drive its light and display
    only on a change, so before the first vehicle they stayed as the modules held them.)"""
    model = short_lane()
    async with lane_bench(tmp_path, [], model=model, barrier=BARRIER, **FAST_ALARMS) as bench:
        io = bench.io
        assert io is not None
        run = FaultRun(bench, fault_at=time.monotonic())
        await unplug_rsu(bench)
        await degraded(run)
        red = await bench.until(lambda: io.output_active(Output.LIGHT_RED), T, "the red light")
        green = io.output_active(Output.LIGHT_GREEN)
    assert red and not green and run.light_degraded is Light.RED
    assert run.shown_degraded is not None and run.shown_degraded.line1 == CLOSED_LINE1
