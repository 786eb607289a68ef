"""Fault injection, the IO module: it stops answering (dead module, cut RS-485 pair — the
lane model takes it off the bus, so its inputs read nothing and its coils hear nothing) at
each moment of a transaction that matters to the barrier, through the real daemon with the
emulated RSU, fee display and IO module and a lane model of the vehicles and the arm.

Rule 1 is judged by the lane model against where the vehicles really were. The fault is
injected from inside the lane's own step (an observation hook) where the moment is a
frame: exactly then, not "about then". Alarm debounces are the catalogue's × 0.1 and the
health checks run every 0.25 s (``FAST_ALARMS``).
"""

from __future__ import annotations

import asyncio
import time

import pytest

from fault_scenarios import (
    BARRIER, CLOSED_LINE1, CLOSED_LINE2, FAST_ALARMS, OUTAGE_S, QUIET_RSU, FaultRun, assert_rules, degraded,
    io_module_lost_with_a_paid_car, now_for, obu, paid_car, passed, recovered, sent_at, short_lane,
)
from lane_fixtures import T, lane_bench
from laned.drivers.lane_io import Light, Signal
from laned.lane.outcomes import OUTCOMES, Reason
from laned.sim.lane_model import BarrierSpec, LaneGeometry, LaneModel

pytestmark = pytest.mark.hil


def assert_io_alarm_cycle(run: FaultRun) -> None:
    bench = run.bench
    for code in ("etc_closed", "io_offline"):
        raised = bench.alarm_at(code, "raised", run.fault_at)
        assert raised is not None, f"{code} was never raised: {run.raised()}"
        assert bench.alarm_at(code, "cleared", raised) is not None, f"{code} was never cleared: {run.cleared()}"
    assert [e for e in run.journal_events() if e.startswith("etc_")] == ["etc_closed", "etc_opened"]


async def test_an_io_module_lost_before_c6_refuses_the_vehicle_to_the_manual_lane_and_charges_nothing(tmp_path):
    """The module stops answering as the lane reads the OBU (B2); the card's B4 comes 1.8 s
    later, by when the lane knows it could not raise the arm (it takes it under a second):
    no charge, 请走人工车道. When the module answers again (2.5 s after it went) ETC opens
    and the next vehicle pays and passes."""
    model = short_lane()
    run: FaultRun | None = None

    def pull(o) -> None:
        if run is not None and not run.fault_at and o.kind == "received" and o.detail["type"] == "B2":
            run.fault_at = time.monotonic()
            model.set_io_online(now_for(model), False)

    async with lane_bench(tmp_path, [], model=model, barrier=BARRIER, settings=QUIET_RSU, **FAST_ALARMS,
                          hooks=[pull]) as bench:
        run = FaultRun(bench)
        bench.emu.inject("delay", "B4", delay=1.8)  # the card is slow to read: time for the lane to notice
        first = await paid_car(bench, 1)
        await bench.until(lambda: run is not None and run.fault_at, T, "the B2")
        await degraded(run)
        await bench.until(lambda: bench.c2_for("a1000001"), T, "the vehicle to be refused at B4")
        refused = bench.display.shown() if bench.display else None
        model.divert(now_for(model), first)  # it pulls over to the manual lane
        await asyncio.sleep(max(0.0, run.fault_at + 2.5 - time.monotonic()))  # the rest of the outage
        model.set_io_online(now_for(model), True)
        run.back_at = time.monotonic()
        await recovered(run)
        await bench.until(lambda: model.light is Light.RED, T, "the light to be driven red again")
        second = await paid_car(bench, 2)
        run.served_at = await bench.until(lambda: sent_at(bench, "C6", "a1000002"), T, "the next vehicle to pay")
        await passed(bench, second)
        await bench.until(lambda: bench.alarm_at("io_offline", "cleared"), T, "io_offline to clear")
    assert bench.c6_for("a1000001") == [] and bench.emu.balance("a1000001") == obu(1).balance
    [c2] = bench.c2_for("a1000001")
    assert [e.name for e in bench.emu.log if e.direction == "tx" and e.obu_id == "a1000001"] == ["B2", "B3", "B4"]
    b4 = max(i for i, e in enumerate(bench.emu.log) if e.name == "B4" and e.obu_id == "a1000001")
    assert bench.emu.log.index(c2) > b4  # answered the B4: refused there, not at B2
    refusal = next(r for r in bench.rows() if r["kind"] == "refusal")
    assert (refusal["obu_id"], refusal["reason"], refusal["message"]) == ("a1000001", "etc_closed",
                                                                          f"{CLOSED_LINE1} {CLOSED_LINE2}")
    assert refused is not None and (refused.line1, refused.line2) == (OUTCOMES[Reason.ETC_CLOSED].line1, CLOSED_LINE2)
    assert [p.obu_id for p in bench.emu.charges] == ["a1000002"]
    assert [d for d, _ in model.diverted] == [first] and [d for d, _ in model.departed] == [second]
    assert_io_alarm_cycle(run)
    assert_rules(bench)


@pytest.mark.parametrize("when", ["sent C6", "received B5"], ids=["between_c6_and_b5", "after_b5_before_the_raise"])
async def test_an_io_module_lost_after_the_charge_lets_the_paid_vehicle_out_when_it_answers_again(tmp_path, when):
    """The module stops answering between C6 and B5, or after B5 before the raise reached it:
    the card paid, the arm cannot be raised. ETC closes (no new charges) while the paid
    vehicle keeps its screen and waits; 2 s later the module answers, the lane gives the
    raise again at once, the vehicle leaves and the arm comes down behind it."""
    run = await io_module_lost_with_a_paid_car(tmp_path, when)
    bench, model = run.bench, run.bench.model
    assert model is not None
    assert run.degrade_s is not None and run.degrade_s < T
    assert run.notes["arm_during"] == 0.0 and run.notes["car_waiting"]  # it waited at the closed arm
    # The booth is not told "ETC closed" while the paid vehicle is still to be let out: its
    # screen (fee and balance) stays — on a shared Modbus link it may still be on its way
    # behind the dead module's time-outs when ETC closes.
    assert run.shown_degraded is not None and run.shown_degraded.line1 != CLOSED_LINE1
    shown = run.notes["shown_after"]
    assert (shown.line1, shown.line2, shown.fee_fen) == ("欢迎通行", "一路顺风", 3500)
    assert run.recover_s is not None and run.recover_s < T
    assert run.served_s is not None and run.served_s < T
    # It paid once, and got out once: the raise was given again after the module came back.
    assert [p.obu_id for p in bench.emu.charges] == ["a1000001"]
    [row] = [r for r in bench.rows() if r["kind"] == "exit_charge"]
    assert row["state"] == "charged"
    raises = [o.at for o in bench.seen if o.kind == "barrier" and o.detail["command"] == "raise"]
    assert len(raises) == 2 and raises[1] >= (run.back_at or 0)
    assert [v for v, _ in model.departed] == ["car-1"] and run.notes["left_at"] > (run.back_at or 0)
    assert run.notes["light_after"] is Light.RED
    assert bench.executor is not None and bench.executor.machine.counters["raise_reissued"] == 1
    assert_io_alarm_cycle(run)
    assert_rules(bench)


async def test_an_io_module_lost_with_the_arm_up_and_a_car_on_the_loop_never_brings_the_arm_down_on_it(tmp_path):
    """A long, slow vehicle (a 5 m lorry at 2 m/s) is on the safety loop under the raised arm when
    the module stops answering; it answers again 2 s later with the lorry still on the loop.
    The arm stays up all along (inputs unknown count as occupied; after that the loop is
    occupied), and comes down only after the lorry has left it."""
    model = LaneModel(now=time.monotonic(), geometry=LaneGeometry(spawn_x=-3.0, safety_loop=(-1.0, 1.0), exit_x=3.0),
                      barrier=BarrierSpec(travel_time=0.4))
    async with lane_bench(tmp_path, [], model=model, barrier=BARRIER, settings=QUIET_RSU,
                          **FAST_ALARMS) as bench:
        bench.emu.add_obu(obu(1), arrive_in=0.0)
        lorry = model.add_vehicle(now_for(model), speed=2.0, length=5.0, vehicle_id="lorry")
        await bench.until(lambda: model.true_state(Signal.SAFETY_LOOP) and model.barrier_position == 1.0, T,
                          "the lorry on the loop under the raised arm")
        run = FaultRun(bench, fault_at=time.monotonic())
        model.set_io_online(now_for(model), False)
        await degraded(run, closed_screen=False)
        lowest = 1.0
        while time.monotonic() < run.fault_at + 2.0:  # the outage: watch the arm all along
            lowest = min(lowest, model.barrier_position)
            await asyncio.sleep(0.01)
        assert model.true_state(Signal.SAFETY_LOOP), "the lorry should still be on the loop when the module is back"
        model.set_io_online(now_for(model), True)
        run.back_at = time.monotonic()
        await recovered(run)
        while model.true_state(Signal.SAFETY_LOOP):  # back, and the lorry still on the loop
            lowest = min(lowest, model.barrier_position)
            await bench.until(lambda: True, T)  # re-raises if the daemon stopped
            await asyncio.sleep(0.01)
        left_loop = time.monotonic()
        lowered = await bench.until(
            lambda: next((o.at for o in bench.seen if o.kind == "barrier" and o.detail["command"] == "lower"), None),
            T, "the arm to come down after the lorry left the loop")
        await passed(bench, lorry)
        await bench.until(lambda: bench.alarm_at("io_offline", "cleared"), T, "io_offline to clear")
    assert lowest == 1.0, f"the arm moved down to {lowest:.2f} while the lorry was on the loop"
    assert lowered >= left_loop
    assert [p.obu_id for p in bench.emu.charges] == ["a1000001"]
    # Inputs unknown latch the interlock's fault; it releases once they are fresh and clear.
    assert bench.alarm_at("interlock_fault", "raised", run.fault_at) is not None
    assert bench.alarm_at("interlock_fault", "cleared", run.back_at or 0) is not None
    assert run.shown_degraded is not None and run.shown_degraded.line1 != CLOSED_LINE1  # the lorry's screen
    assert_io_alarm_cycle(run)
    assert_rules(bench)


async def test_an_io_module_tcp_server_gone_before_the_vehicle_closes_etc_and_refuses_it_at_b2(tmp_path):
    """A Modbus TCP IO module (on its own TCP port) loses power: connections drop and new
    ones are refused. The lane notices at once, closes ETC and refuses the next vehicle at
    B2; the module powers up again, the lane reconnects, ETC opens and the vehicle behind pays."""
    model = short_lane()
    async with lane_bench(tmp_path, [], model=model, barrier=BARRIER, settings=QUIET_RSU, **FAST_ALARMS,
                          split_modbus=True) as bench:
        assert bench.io_server is not None and bench.io_server is not bench.display_server
        run = FaultRun(bench, fault_at=time.monotonic())
        await bench.io_server.go_offline()
        await degraded(run)
        first = await paid_car(bench, 1)
        await bench.until(lambda: bench.c2_for("a1000001"), T, "the vehicle to be refused")
        model.divert(now_for(model), first)
        await asyncio.sleep(max(0.0, run.fault_at + OUTAGE_S - time.monotonic()))  # the outage itself
        await bench.io_server.come_back()
        run.back_at = time.monotonic()
        await recovered(run)
        second = await paid_car(bench, 2)
        run.served_at = await bench.until(lambda: sent_at(bench, "C6", "a1000002"), T, "the next vehicle to pay")
        await passed(bench, second)
        await bench.until(lambda: bench.alarm_at("io_offline", "cleared"), T, "io_offline to clear")
    assert run.shown_degraded is not None and (run.shown_degraded.line1, run.shown_degraded.line2) == (
        CLOSED_LINE1, CLOSED_LINE2)
    [c2] = bench.c2_for("a1000001")
    assert [e.name for e in bench.emu.log if e.direction == "tx" and e.obu_id == "a1000001"] == ["B2"]
    assert bench.c6_for("a1000001") == []
    assert [p.obu_id for p in bench.emu.charges] == ["a1000002"]
    assert_io_alarm_cycle(run)
    assert_rules(bench)

