"""One ordered event stream: what the link saw reaches the lane in the order it happened.

Before, frames came through a queue while drops and link up/down came through
synchronous callbacks, so a link loss could overtake the frame that arrived right before
it; and journal confirmations re-entered the machine from inside the executor's step.
"""

from __future__ import annotations

import asyncio
import os
import pty
import tty

from laned.drivers.rsu import FrameDropped, LinkStatus, RsuFrame, RsuLink
from laned.executor import LaneExecutor
from laned.lane.dialect import Dialect
from laned.lane.machine import LaneMachine, LaneSettings
from laned.protocol import encode_message, get_profile
from laned.protocol.profiles.national import ObuInfo
from tests.lane_harness import Fees, Lane

B2 = ObuInfo(obu_id=bytes.fromhex("a1fe33ff"), error_code=0x80)  # a short B2 (heartbeat form) is enough


async def test_a_frame_then_garbage_then_the_port_closing_reach_the_lane_in_that_order():
    master, slave = pty.openpty()
    tty.setraw(master)
    items: list[object] = []
    link = RsuLink("national", port=os.ttyname(slave), silence_timeout=30)
    link.attach(items.append)
    try:
        async with link:
            await asyncio.wait_for(link.wait_connected(), 5)
            items.clear()
            good = encode_message(get_profile("national"), B2, rsctl=0x18)
            bad = bytearray(good)
            bad[-2] ^= 0xFF  # a wrong check byte
            # What the serial transport does when one read returns a frame and a damaged
            # one and the next read hits end of file: the lane must see the frame, then
            # the drop, then the loss — never the loss first.
            link._on_data(good + bytes(bad))
            link._lost(link._transport, "end of file on the port")
    finally:
        os.close(master)
        os.close(slave)
    kinds = [type(i) for i in items]
    assert kinds[:3] == [RsuFrame, FrameDropped, LinkStatus], kinds
    assert items[2].connected is False  # type: ignore[attr-defined]


def test_journal_answers_are_handled_after_the_event_that_asked_for_them_never_inside_it():
    depth = 0
    nested = []

    class Watched(LaneMachine):
        def handle(self, event, now, wall):
            nonlocal depth
            depth += 1
            nested.append(depth)
            try:
                return super().handle(event, now, wall)
            finally:
                depth -= 1

    class Journal:
        def record_intent(self, record, now):
            return 1

        def complete(self, seq, result, now, *, entry):
            pass

        def record_refusal(self, record, now):
            pass

        def record_event(self, kind, record, now):
            pass

    class Rsu:
        def send_nowait(self, message, reply_to=None):
            pass

    import datetime as dt
    machine = Watched(LaneSettings(), Dialect(get_profile("national")), fees=Fees())
    ex = LaneExecutor(machine, Rsu(), None, None, Journal(), monotonic=lambda: 100.0,
                      wall=lambda: dt.datetime(2026, 11, 22, 10, 0, 0))
    lane = Lane()
    built: list = []
    lane.feed = lambda ev: built.append(ev) or []
    lane.b2(), lane.b3(), lane.b4(), lane.b5()
    for frame in built:
        ex.handle(frame)
    assert machine.counters["charged"] == 1  # intent and charge confirmations did arrive
    assert max(nested) == 1  # ... each as its own event, never from inside another
