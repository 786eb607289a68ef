"""Hypothesis stateful test: the invariants of ARCHITECTURE.md hold after every step.

Random interleavings of RSU frames (good and bad), loop changes, unknown and stale
inputs, time passing, journal confirmations arriving late or failing, RSU link loss and
daemon restarts — checked against a model that knows only what the machine was told.
"""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from laned.drivers.lane_io import InputSample, Signal
from laned.lane.barrier import BarrierCommand
from laned.lane.machine import (
    ChargeRecorded, IntentFailed, IntentRecorded, JournalCharged, JournalIntent, LaneMachine,
    Device, DeviceStatus, FrameLost, LinkLost, LinkUp, MoveBarrier, Paid, Send, SendFailed, Tick,
)
from laned.lane.dialect import Dialect
from laned.protocol import get_profile
from tests.lane_harness import Fees, Lane, card_file

OBUS = [b"\x01\x00\x00\x01", b"\x02\x00\x00\x02"]
CARDS = {OBUS[0]: "2301000000000001", OBUS[1]: "2301000000000002"}


class LaneInvariants(RuleBasedStateMachine):
    @initialize(profile=st.sampled_from(["national", "network2019"]))
    def start(self, profile):
        self.lane = Lane(profile=profile, auto_journal=False)
        self.s = self.lane.machine.s
        self.pending_intents: list[str] = []
        self.pending_charges: list[tuple[str, int]] = []
        self.durable_intents: set[str] = set()
        self.durable_charges: set[str] = set()
        self.c6_log: list[tuple[bytes, float]] = []  # (obu_id, now) of every C6 ever sent
        self.loop_sample: InputSample | None = None
        self.clear_since: float | None = None
        self.seq = 0
        self.charged_count = 0
        self.down: set[Device] = set()

    # -- applying events and checking what came out -------------------------------------------
    def apply(self, event):
        out = self.lane.machine.handle(event, self.lane.now, self.lane.wall)
        for a in out:
            if isinstance(a, JournalIntent):
                self.pending_intents.append(a.tx_id)
            elif isinstance(a, JournalCharged):
                self.pending_charges.append((a.tx_id, a.seq))
            elif isinstance(a, Send) and a.message.type_name == "C6":
                # Invariant: every C6 has a durable intent written before it.
                assert isinstance(event, IntentRecorded) and event.tx_id in self.durable_intents
                # Invariant: no second C6 for an OBU inside the re-detection window.
                for obu, at in self.c6_log:
                    assert not (obu == a.message.obu_id and self.lane.now - at <= self.s.redetect_window), \
                        f"second C6 for {obu.hex()} after {self.lane.now - at:.1f} s"
                # Invariant: no charge the lane could not finish (a degraded mode is on).
                assert not (self.down - {Device.DISPLAY}), f"C6 while ETC is closed: {self.down}"
                self.c6_log.append((a.message.obu_id, self.lane.now))
            elif isinstance(a, MoveBarrier) and a.command is BarrierCommand.LOWER:
                # Invariant: lower only when the safety loop is known, fresh, clear for the hold-off.
                smp = self.loop_sample
                assert smp is not None and smp.active is False, smp
                assert self.lane.now - smp.at <= self.s.interlock.staleness
                assert self.clear_since is not None and self.lane.now - self.clear_since >= self.s.interlock.hold_off
        charged = self.lane.machine.counters["charged"]
        if charged > self.charged_count:
            # Invariant: a charge counts (and the barrier rises for it) only once its B5 is durable.
            assert isinstance(event, ChargeRecorded) and event.tx_id in self.durable_charges
            self.charged_count = charged
        return out

    # -- RSU ------------------------------------------------------------------------------------------
    @rule(obu=st.sampled_from(OBUS), status=st.sampled_from([b"\x00\x00", b"\x80\x00", b"\x02\x00"]))
    def b2(self, obu, status):
        self._frame(self.lane.b2, obu_id=obu, status=status)

    @rule(obu=st.sampled_from(OBUS), vclass=st.sampled_from([1, 1, 1, 12, 99]), error=st.sampled_from([0, 0, 4]))
    def b3(self, obu, vclass, error):
        self._frame(self.lane.b3, obu_id=obu, vclass=vclass, error=error)

    @rule(obu=st.sampled_from(OBUS), balance=st.sampled_from([0, 3499, 3500, 100000]), error=st.sampled_from([0, 0, 8]))
    def b4(self, obu, balance, error):
        self._frame(self.lane.b4, obu_id=obu, balance=balance, error=error,
                    card=card_file(number=CARDS[obu]))

    @rule(obu=st.sampled_from(OBUS), error=st.sampled_from([0, 0, 0x17, 0x19, 0x16]))
    def b5(self, obu, error):
        self._frame(self.lane.b5, obu_id=obu, error=error)

    @rule(obu=st.sampled_from(OBUS), journal_fast=st.booleans(), b5_error=st.sampled_from([0, 0, 0, 0x19]))
    def vehicle_pays(self, obu, journal_fast, b5_error):
        """A whole well-formed transaction, so the random walk reaches charges often."""
        self.b2(obu, b"\x00\x00")
        self.b3(obu, 1, 0)
        self.b4(obu, 100000, 0)
        if journal_fast:
            while self.pending_intents:
                self.intent_written(True)
            self.b5(obu, b5_error)
            while self.pending_charges:
                self.charge_written()

    def _frame(self, maker, **kw):
        # Build the frame through the harness, but feed it through apply() for the checks.
        feed, self.lane.feed = self.lane.feed, self.apply
        try:
            maker(**kw)
        finally:
            self.lane.feed = feed

    @rule()
    def link_lost(self):
        self.down.add(Device.RSU)
        self.apply(LinkLost())

    @rule()
    def link_up(self):
        self.down.discard(Device.RSU)
        self.apply(LinkUp())

    @rule(what=st.sampled_from(["C1", "C2", "C6"]))
    def send_fails(self, what):
        self.apply(SendFailed(what, "rsu: write failed"))

    @rule(device=st.sampled_from([Device.IO, Device.DISPLAY, Device.JOURNAL, Device.DISK, Device.FEES]),
          online=st.booleans())
    def device_status(self, device, online):
        """Devices come and go (degraded modes): the invariants hold in every mode."""
        (self.down.discard if online else self.down.add)(device)
        self.apply(DeviceStatus(device, online, "" if online else "lost"))

    @rule(reason=st.sampled_from(["bcc", "short", "escape"]))
    def damaged_frame(self, reason):
        self.apply(FrameLost(reason))

    # -- journal ---------------------------------------------------------------------------------------
    @precondition(lambda self: self.pending_intents)
    @rule(ok=st.booleans())
    def intent_written(self, ok):
        tx_id = self.pending_intents.pop(0)
        if ok:
            self.seq += 1
            self.durable_intents.add(tx_id)
            self.apply(IntentRecorded(tx_id, self.seq))
        else:
            self.apply(IntentFailed(tx_id, "disk full"))

    @precondition(lambda self: self.pending_charges)
    @rule()
    def charge_written(self):
        tx_id, _ = self.pending_charges.pop(0)
        self.durable_charges.add(tx_id)
        self.apply(ChargeRecorded(tx_id))

    # -- inputs and time ----------------------------------------------------------------------------------
    @rule(value=st.sampled_from([True, False, False, None]))
    def safety_loop(self, value):
        self._sample(value)

    def _sample(self, value):
        smp = InputSample(Signal.SAFETY_LOOP, value, self.lane.now)
        if value is False:
            if self.loop_sample is None or self.loop_sample.active is not False:
                self.clear_since = self.lane.now
        else:
            self.clear_since = None
        self.loop_sample = smp
        from laned.lane.machine import InputIn
        self.apply(InputIn(smp))

    @rule(seconds=st.floats(0.01, 3.0), sampled=st.booleans())
    def time_passes(self, seconds, sampled):
        end = self.lane.now + seconds
        while self.lane.now < end:
            self.lane.now = min(end, self.lane.now + 0.05)
            if sampled and self.loop_sample is not None and self.loop_sample.active is not None:
                self._sample(self.loop_sample.active)
            self.apply(Tick())

    @rule()
    def restart(self):
        """The daemon restarts: in-flight journal work is lost, the journal's charges are reloaded."""
        recent = [Paid(obu, None, at, None) for obu, at in self.c6_log]
        self.lane.machine = LaneMachine(self.s, Dialect(get_profile(self.lane.profile)), fees=Fees(),
                                        status=self.lane.status, recent=recent)
        self.pending_intents.clear()
        self.pending_charges.clear()
        self.charged_count = 0
        self.down.clear()  # the new process learns its devices' state afresh
        self.loop_sample = None
        self.clear_since = None

    @invariant()
    def credits_never_negative(self):
        if hasattr(self, "lane"):
            assert self.lane.machine.credits >= 0


LaneInvariants.TestCase.settings = settings(max_examples=150, stateful_step_count=60, deadline=None,
                                            suppress_health_check=[HealthCheck.too_slow])
test_lane_invariants = LaneInvariants.TestCase
