"""The executor carries out the machine's actions in the order the two rules need."""

from __future__ import annotations

import asyncio
import datetime as dt

from laned.drivers.lane_io import InputSample, Signal
from laned.executor import LaneExecutor
from laned.lane.dialect import Dialect
from laned.lane.machine import LaneMachine, LaneSettings
from laned.masking import mask_card, mask_plate
from laned.protocol import get_profile
from tests.lane_harness import Fees, Lane


class FakeRsu:
    def __init__(self):
        self.sent = []

    def send_nowait(self, message, reply_to=None):
        self.sent.append(message.type_name)


class FakeJournal:
    def __init__(self, fail_intent=False):
        self.fail_intent = fail_intent
        self.rows = []

    def record_intent(self, record, now):
        if self.fail_intent:
            raise OSError("disk full")
        self.rows.append(("intent", record["obu_id"]))
        return len(self.rows)

    def complete(self, seq, result, now, *, entry):
        self.rows.append(("charged", seq))

    def mark_unknown(self, seq, reason, now):
        self.rows.append(("unknown", seq))

    def not_charged(self, seq, reason, now):
        self.rows.append(("not_charged", seq))

    def record_refusal(self, record, now):
        self.rows.append(("refused", record["reason"]))

    def record_event(self, kind, record, now):
        self.rows.append(("event", kind))


def make(journal):
    clock = [100.0]
    machine = LaneMachine(LaneSettings(), Dialect(get_profile("national")), fees=Fees())
    rsu = FakeRsu()
    ex = LaneExecutor(machine, rsu, None, None, journal, monotonic=lambda: clock[0],
                      wall=lambda: dt.datetime(2026, 11, 22, 10, 0, 0))
    return ex, rsu, clock


def frames():
    lane = Lane()  # only used to build the frames
    built = []
    lane.feed = lambda ev: built.append(ev) or []
    lane.b2(), lane.b3(), lane.b4(), lane.b5()
    return built


def test_the_intent_is_journalled_before_c6_goes_out_and_the_charge_before_the_barrier():
    journal = FakeJournal()
    ex, rsu, _ = make(journal)
    b2, b3, b4, b5 = frames()
    for f in (b2, b3, b4):
        ex.handle(f)
    assert rsu.sent == ["C1", "C1", "C6"]
    assert journal.rows == [("intent", b"\xa1\xfe\x33\xff")]
    ex.handle(b5)
    assert journal.rows[-1] == ("charged", 1)
    assert ex._io_queue.qsize() >= 1  # the raise, queued only after the charge was journalled


def test_a_journal_that_cannot_write_the_intent_stops_the_charge():
    ex, rsu, _ = make(FakeJournal(fail_intent=True))
    b2, b3, b4, _ = frames()
    for f in (b2, b3, b4):
        ex.handle(f)
    assert rsu.sent == ["C1", "C1", "C2"]
    assert any(code == "journal_failed" for _, code, _ in ex.alarms)


def test_the_lane_says_when_a_vehicle_has_gone_once_its_transaction_ends_and_not_before():
    journal = FakeJournal()
    ex, rsu, _ = make(journal)
    gone = []
    ex.vehicle_gone = lambda: gone.append(journal.rows[-1])
    b2, b3, b4, b5 = frames()
    for f in (b2, b3, b4):
        ex.handle(f)
    assert rsu.sent[-1] == "C6" and gone == []  # paying: the uplink's work still waits
    ex.handle(b5)
    assert gone == [("charged", 1)]  # the charge journalled and the transaction over: once


def test_card_numbers_and_plates_are_masked_for_people():
    assert mask_card("37012301000012345678") == "3701************5678"
    assert mask_plate("鲁A12345") == "鲁A*****"


def test_a_b5_error_before_the_debit_ends_the_intent_as_not_charged():
    journal = FakeJournal()
    ex, rsu, _ = make(journal)
    b2, b3, b4, _ = frames()
    for f in (b2, b3, b4):
        ex.handle(f)
    lane = Lane()
    built = []
    lane.feed = lambda ev: built.append(ev) or []
    lane.b5(error=0x17)
    ex.handle(built[0])
    assert journal.rows[-1] == ("not_charged", 1) and rsu.sent[-1] == "C2"


def test_a_lower_that_waited_in_the_io_queue_is_withdrawn_if_the_loop_is_no_longer_clear():

    from laned.lane.barrier import BarrierCommand
    from laned.lane.machine import MoveBarrier

    class FakeIO:
        name = "io"

        def __init__(self):
            self.moves = []

        async def lower_barrier(self):
            self.moves.append("lower")

        async def raise_barrier(self):
            self.moves.append("raise")

    async def main():
        ex, _, clock = make(FakeJournal())
        io = FakeIO()
        ex.io = io
        ex.machine.barrier.update(InputSample(Signal.SAFETY_LOOP, True, clock[0]))  # a car arrived
        ex._io_queue.put_nowait(MoveBarrier(BarrierCommand.LOWER))  # decided before it came
        worker = asyncio.create_task(ex._io_worker())
        while ex._io_queue.qsize():  # noqa: ASYNC110 - yield until the worker took it; the queue has no such event
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        worker.cancel()
        return io.moves, ex.counters["lower_withdrawn"]

    assert asyncio.run(main()) == ([], 1)


def test_at_start_the_display_and_the_light_are_set_whatever_a_previous_run_left_on_them():
    from laned.lane.machine import SetLight
    from laned.lane.signals import Light

    ex, _, _ = make(FakeJournal())
    ex.settle()
    assert ex._display_latest == ex.machine.display and ex._display_latest.line1 == "ETC车道"
    assert ex._io_queue.get_nowait() == SetLight(Light.RED)


def test_refusals_the_journal_could_not_write_are_written_once_it_takes_writes_again():
    class FlakyJournal(FakeJournal):
        failing = True

        def record_refusal(self, record, now):
            if self.failing:
                raise OSError(28, "No space left on device")
            super().record_refusal(record, now)

    journal = FlakyJournal()
    ex, rsu, _ = make(journal)
    lane = Lane()
    built: list = []
    lane.feed = lambda ev: built.append(ev) or []
    lane.b2(status=b"\x80\x00")  # no card: refused at B2
    ex.handle(built[0])
    assert rsu.sent == ["C2"] and ex.counters["journal_errors"] == 1
    assert [r for r in journal.rows if r[0] == "refused"] == []
    journal.failing = False
    ex.write_unwritten()  # what the ticker does once a second while the journal is up
    assert [r for r in journal.rows if r[0] == "refused"] == [("refused", "no_card")]
    assert ex._unwritten == [] and ex.counters["journal_records_dropped"] == 0


def test_a_record_the_storage_keeps_refusing_is_given_up_after_its_attempts_and_counted():
    class FullDisk(FakeJournal):
        def record_refusal(self, record, now):
            raise OSError(28, "No space left on device")

    ex, _, _ = make(FullDisk())
    lane = Lane()
    built: list = []
    lane.feed = lambda ev: built.append(ev) or []
    lane.b2(status=b"\x80\x00")
    ex.handle(built[0])
    for _ in range(20):
        ex.write_unwritten()
    assert ex._unwritten == [] and ex.counters["journal_records_dropped"] == 1
