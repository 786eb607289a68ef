"""``barrier.raise_travel_timeout_s``: a raise that does not reach the up limit switch in
time is reported once, and its end once (the interlock, sans-IO, fake clock)."""

from __future__ import annotations

from laned.config import load_config
from laned.lane.barrier import BarrierCommand, BarrierInterlock, BarrierPosition, InterlockSettings, TravelAlarm
from laned.lane.signals import InputSample, Signal
from tests.test_config import EXAMPLE

T = 6.0


def interlock(timeout: float | None = T) -> BarrierInterlock:
    il = BarrierInterlock(InterlockSettings(raise_travel_timeout=timeout))
    for sig, active in ((Signal.SAFETY_LOOP, False), (Signal.BARRIER_DOWN, True), (Signal.BARRIER_UP, False)):
        il.update(InputSample(sig, active, 0.0))
    return il


def run(il: BarrierInterlock, start: float, end: float, step: float = 0.1,
        loop: bool = False) -> list[tuple[float, TravelAlarm]]:
    """Sample the safety loop and tick like the machine does; the alarms with their times."""
    alarms = []
    t = start
    while t <= end + 1e-9:
        il.update(InputSample(Signal.SAFETY_LOOP, loop, t))
        il.tick(t)
        if (a := il.travel_alarm(t)) is not None:
            alarms.append((round(t, 3), a))
        t += step
    return alarms


def test_an_arm_that_reaches_the_up_switch_in_time_raises_no_alarm():
    il = interlock()
    assert il.command_raise() is BarrierCommand.RAISE  # as the machine calls it: without the time
    assert run(il, 10.0, 13.0) == []
    il.update(InputSample(Signal.BARRIER_UP, True, 13.0))
    assert il.position is BarrierPosition.UP
    assert run(il, 13.0, 30.0) == [] and il.travel_fault is None


def test_an_arm_that_never_reaches_the_up_switch_is_reported_once_after_the_timeout():
    il = interlock()
    il.command_raise()
    alarms = run(il, 10.0, 30.0)
    assert [t for t, _ in alarms] == [16.1]  # timed from the first tick after the command
    [(_, alarm)] = alarms
    assert alarm.active and "up limit switch" in alarm.detail and "6 s" in alarm.detail
    assert il.travel_fault == alarm.detail and il.status(30.0)["travel_fault"] == alarm.detail
    il.command_raise()  # raising again while it is stuck is the same raise: no second report
    assert run(il, 30.0, 40.0) == []


def test_the_alarm_ends_when_the_arm_gets_there_after_all():
    il = interlock()
    il.command_raise(now=10.0)
    run(il, 10.0, 17.0)
    assert il.travel_fault is not None
    il.update(InputSample(Signal.BARRIER_UP, True, 17.5))
    [(_, end)] = run(il, 17.5, 18.0)
    assert not end.active and "reached the up limit switch" in end.detail and il.travel_fault is None


def test_a_lower_supersedes_the_raise():
    il = interlock()
    il.command_raise(now=0.0)
    run(il, 0.0, 5.0)  # the loop clear long enough to release the start-up latch
    assert il.request_lower(5.0)[1] is BarrierCommand.LOWER
    assert run(il, 5.0, 30.0) == []


def test_a_reversed_lowering_arm_is_timed_from_the_reversal():
    il = interlock()
    il.update(InputSample(Signal.BARRIER_UP, True, 0.0))
    run(il, 0.0, 5.0)
    assert il.request_lower(5.0)[1] is BarrierCommand.LOWER
    il.update(InputSample(Signal.SAFETY_LOOP, True, 5.5))  # a vehicle under the lowering arm: reverse
    assert il.tick(5.5) is BarrierCommand.RAISE
    assert run(il, 5.6, 11.5, loop=True) == []
    assert [t for t, a in run(il, 11.6, 12.0, loop=True) if a.active] == [11.6]


def test_no_check_without_an_up_switch_or_without_a_timeout():
    il = BarrierInterlock(InterlockSettings(raise_travel_timeout=T))
    il.update(InputSample(Signal.SAFETY_LOOP, False, 0.0))  # no BARRIER_UP sample ever
    il.command_raise(now=0.0)
    assert run(il, 0.0, 20.0, step=1.0) == []
    il = interlock(timeout=None)
    il.command_raise(now=0.0)
    assert run(il, 0.0, 20.0, step=1.0) == []


def test_the_config_key_reaches_the_interlock():
    cfg = load_config(EXAMPLE, overrides={"barrier.raise_travel_timeout_s": 9.5})
    assert cfg.lane_settings().interlock.raise_travel_timeout == 9.5
