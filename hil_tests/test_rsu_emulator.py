"""The emulated RSU (laned.sim.rsu_emulator) over a real pseudo-terminal and a real TCP socket.

The "lane" here is this file: it opens the pty slave by path (os.open + tty.setraw, read
through the event loop's add_reader), speaks the protocol layer (encode_message /
FrameDecoder) and plays a scripted lane. It does not use laned.drivers.rsu. Nothing
waits on a fixed sleep: every step awaits a frame or an emulator event with a timeout.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import errno
import hashlib
import hmac
import math
import os
import time
import tty
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from laned.protocol.codec import Decoded, FrameDecoder, encode_message
from laned.protocol.errors import ProtocolError
from laned.protocol.messages import Message
from laned.protocol.profiles import get_profile, national, network2019
from laned.protocol.profiles.common import STOP_SEARCH_AGAIN, Stop
from laned.protocol.records import CardIssueFile, StationRecord
from laned.protocol.rsctl import LaneSequence, reply_rsctl
from laned.sim.rsu_emulator import EmulatorSettings, RsuEmulator
from laned.sim.rsu_scenario import EntryRecord, Fault, ObuScenario
from laned.sim.traffic import Kind, SimVehicle

pytestmark = [pytest.mark.hil, pytest.mark.timeout(20)]

T = 3.0  # per-step timeout; every step normally takes milliseconds
NATIONAL = get_profile("national")
N2019 = get_profile("network2019")
OBU = "a1b2c3d4"
OBU_B = bytes.fromhex(OBU)
PURCHASE_TIME = dt.datetime(2026, 11, 22, 21, 30, 5)
STATION = EntryRecord(network="3701", station="0205", lane=7, entry_time=1_795_000_000).record()

# Fast timers: the answer timeout is raised per test where a test needs it short.
FAST = EmulatorSettings(heartbeat_interval=None, answer_timeout=2.0, redetect_interval=0.3)


class EndOfPort(Exception):
    """The port went away under the lane (EOF or EIO on the slave)."""


class PtyLane:
    """A scripted lane on the pty slave: raw mode, nonblocking, read by the event loop."""

    def __init__(self, path: str, profile: Any = NATIONAL) -> None:
        self.profile = profile
        self.decoder = FrameDecoder(profile)
        self.frames: asyncio.Queue[Decoded | ProtocolError | EndOfPort] = asyncio.Queue()
        self.seq = LaneSequence()
        self.closed_by: str | None = None
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return
        except OSError as err:
            if err.errno != errno.EIO:
                raise
            data = b""
            self.closed_by = "EIO"
        if not data:
            self.closed_by = self.closed_by or "EOF"
            self._loop.remove_reader(self.fd)
            self.frames.put_nowait(EndOfPort(self.closed_by))
            return
        for item in self.decoder.feed(data):
            self.frames.put_nowait(item)

    def send(self, msg: Message, answering: Decoded | None = None) -> None:
        rsctl = reply_rsctl(answering.rsctl) if answering is not None and answering.rsctl is not None \
            else self.seq.next()
        os.write(self.fd, encode_message(self.profile, msg, rsctl=rsctl))

    async def next(self, timeout: float = T) -> Decoded | ProtocolError | EndOfPort:
        return await asyncio.wait_for(self.frames.get(), timeout)

    async def expect(self, frame_type: int, timeout: float = T, skip_heartbeats: bool = True) -> Decoded:
        deadline = time.monotonic() + timeout
        while True:
            item = await self.next(max(0.01, deadline - time.monotonic()))
            if isinstance(item, (ProtocolError, EndOfPort)):
                raise AssertionError(f"expected {frame_type:02X}, got {item!r}")
            if skip_heartbeats and is_heartbeat(item):
                continue
            assert item.message.frame_type == frame_type, f"expected {frame_type:02X}, got {item.message!r}"
            return item

    def close(self) -> None:
        if self.closed_by is None:
            self._loop.remove_reader(self.fd)
        os.close(self.fd)


def is_heartbeat(d: Decoded) -> bool:
    m = d.message
    return m.frame_type == 0xB2 and getattr(m, "error_code", None) == 0x80


def init_msg(profile: Any = NATIONAL) -> Message:
    now = dt.datetime(2026, 11, 22, 21, 0, 0)
    if profile is N2019:
        return network2019.Init(unix_time=int(now.timestamp()), date_time=now, lane_mode=4, bst_interval=10,
                                tx_power=10, pll_channel_id=0, ef04_opt=0, ef04_offset=0, ef04_length=0)
    return national.Init(unix_time=int(now.timestamp()), date_time=now, lane_mode=4, wait_time=3, tx_power=10,
                         pll_channel_id=0, trans_mode=0)


def cont(obu: bytes = OBU_B, profile: Any = NATIONAL) -> Message:
    if profile is N2019:
        return network2019.Continue(obu_id=obu)
    return national.Continue(obu_id=obu, obu_div_factor=bytes(8))


def charge(amount: int, obu: bytes = OBU_B, profile: Any = NATIONAL) -> Message:
    if profile is N2019:
        return network2019.Charge(obu_id=obu, trade_mode=0, consume_money=amount, station=STATION,
                                  purchase_time=PURCHASE_TIME, ef04_offset=0, ef04_length=0, ef04_info=b"")
    return national.Charge(obu_id=obu, card_div_factor=bytes(8), reserved=bytes(4), consume_money=amount,
                           purchase_time=PURCHASE_TIME, station=STATION)


def expected_tac(obu: bytes, amount: int, when: dt.datetime, key: bytes = FAST.tac_key) -> bytes:
    data = obu + amount.to_bytes(4, "big") + when.strftime("%Y%m%d%H%M%S").encode()
    return hmac.new(key, data, hashlib.sha256).digest()[:4]


@asynccontextmanager
async def rig(obus: list[ObuScenario], settings: EmulatorSettings = FAST, profile: Any = NATIONAL,
              init: bool = True) -> AsyncIterator[tuple[RsuEmulator, PtyLane]]:
    async with RsuEmulator(obus, profile=profile, settings=settings) as emu:
        lane = PtyLane(emu.path, profile)
        try:
            if init:
                lane.send(init_msg(profile))
                b0 = await lane.expect(0xB0)
                assert b0.message.rsu_status == 0
                lane.send(cont(bytes(4), profile))  # start the search
            yield emu, lane
        finally:
            lane.close()


async def to_card(lane: PtyLane, profile: Any = NATIONAL) -> tuple[Decoded, Decoded, Decoded]:
    """B2 → C1 → B3 → C1 → B4."""
    b2 = await lane.expect(0xB2)
    lane.send(cont(b2.message.obu_id, profile), b2)
    b3 = await lane.expect(0xB3)
    lane.send(cont(b2.message.obu_id, profile), b3)
    b4 = await lane.expect(0xB4)
    return b2, b3, b4


# -- the transaction -------------------------------------------------------------------------------

async def test_c0_gets_b0_with_rsctl_98_first() -> None:
    async with rig([], init=False) as (emu, lane):
        lane.send(init_msg())
        b0 = await lane.expect(0xB0)
        assert b0.rsctl == 0x98  # the first frame after power-up
        assert b0.message.rsu_status == 0 and b0.message.psam_num == 1
        await emu.expect_frame("tx", "B0", timeout=T)  # logged once its last byte left
        assert emu.received("C0")


async def test_charge_completes_and_b5_matches_the_charges_list() -> None:
    obu = ObuScenario(OBU, plate="鲁A12345", vehicle_class=1, balance=200_00, card_network="3701",
                      card_number="2301000012345678", entry=EntryRecord(station="0102", entry_time=1_794_990_000))
    async with rig([obu]) as (emu, lane):
        b2, b3, b4 = await to_card(lane)
        assert b2.message.obu_id == OBU_B and b2.message.error_code == 0
        assert b3.message.plate_number == "鲁A12345" and b3.message.vehicle_class == 1
        card = b4.message
        assert card.card_rest_money == 200_00 and card.card_type == 0x16
        issue = CardIssueFile.decode(card.issuer_info)
        assert issue.card_key == "37012301000012345678" and issue.plate == "鲁A12345"
        entry = StationRecord.decode(card.last_station)
        assert entry.station_key == "3701-0102" and entry.entry_time == 1_794_990_000
        assert card.last_station[:3] == bytes.fromhex("aa2900")
        lane.send(charge(35_00), b4)
        b5 = await lane.expect(0xB5)
        r = b5.message
        assert r.error_code == 0
        assert len(emu.charges) == 1
        c = emu.charges[0]
        assert (c.obu_id, c.amount, c.tac, c.balance_after) == (OBU, 35_00, r.tac, r.card_balance)
        assert r.card_balance == 200_00 - 35_00 == emu.balance(OBU)
        assert r.tac == expected_tac(OBU_B, 35_00, PURCHASE_TIME)
        assert r.psam_trans_serial == FAST.psam_serial_start + 1
        lane.send(cont(OBU_B), b5)
        await emu.expect_event("transaction_end", timeout=T)
        # The turnaround log: one answer per B2/B3/B4/B5, measured from the last byte sent.
        assert len(emu.turnarounds()) == 4 and all(0 <= t < 1.0 for t in emu.turnarounds())


async def test_c6_before_b4_is_not_charged() -> None:
    async with rig([ObuScenario(OBU, balance=100_00)]) as (emu, lane):
        b2 = await lane.expect(0xB2)
        lane.send(charge(10_00), b2)  # C6 answering B2: the RSU must not charge
        await emu.expect_event("c6_ignored", timeout=T)
        lane.send(cont(), b2)
        b3 = await lane.expect(0xB3)
        lane.send(charge(10_00), b3)  # and not after B3 either
        await emu.wait_for(lambda: emu.counters["c6_ignored"] == 2, T, "second ignored C6")
        assert emu.charges == [] and emu.balance(OBU) == 100_00


async def test_no_answer_abandons_the_obu_and_a_late_c6_is_not_charged() -> None:
    settings = EmulatorSettings(heartbeat_interval=None, answer_timeout=0.15)
    async with rig([ObuScenario(OBU)], settings) as (emu, lane):
        _, _, b4 = await to_card(lane)
        ev = await emu.expect_event("abandoned", timeout=T)  # the lane says nothing
        assert ev.detail == {"obu_id": OBU, "stage": "B4"}
        lane.send(charge(5_00), b4)  # too late
        await emu.expect_event("c6_ignored", timeout=T)
        assert emu.charges == []


async def test_heartbeat_when_idle() -> None:
    settings = EmulatorSettings(heartbeat_interval=0.1)
    async with rig([], settings) as (emu, lane):
        beats = []
        while len(beats) < 2:
            item = await lane.next()
            if isinstance(item, Decoded) and is_heartbeat(item):
                beats.append(item)
        for hb in beats:
            assert hb.message.obu_id == bytes(4) and hb.message.issuer_identifier is None  # B2 00000000 80
        assert emu.counters["heartbeats"] >= 2


async def test_c2_stop_then_redetected_after_the_interval() -> None:
    async with rig([ObuScenario(OBU, redetect=True)]) as (emu, lane):
        b2 = await lane.expect(0xB2)
        lane.send(Stop(obu_id=OBU_B, stop_type=STOP_SEARCH_AGAIN), b2)
        end = await emu.expect_event("transaction_end", timeout=T)
        again = await lane.expect(0xB2)
        assert again.message.obu_id == OBU_B
        detected = [e for e in emu.events if e.kind == "obu_detected"]
        assert len(detected) == 2
        assert detected[1].at - end.at >= FAST.redetect_interval * 0.9
        # Reported once more only: a second stop lets it drive on.
        lane.send(Stop(obu_id=OBU_B, stop_type=STOP_SEARCH_AGAIN), again)
        await emu.wait_for(lambda: sum(e.kind == "transaction_end" for e in emu.events) == 2, T)


async def test_seen_again_after_paying_from_a_sim_vehicle() -> None:
    v = SimVehicle(plate="鲁A99999", kind=Kind.SEEN_AGAIN, obu_id="0badcafe", card_number="3701" + "1" * 16,
                   balance=50_00, entry_station="0102")
    obu = ObuScenario.from_sim_vehicle(v, arrive_at=0.0)
    assert obu.redetect and obu.card_network == "3701" and obu.entry is not None
    async with rig([obu]) as (emu, lane):
        _, _, b4 = await to_card(lane)
        lane.send(charge(35_00, obu.obu_bytes), b4)
        b5 = await lane.expect(0xB5)
        lane.send(cont(obu.obu_bytes), b5)
        b2, _, b4 = await to_card(lane)  # the same OBU once more, after it paid
        assert b2.message.obu_id == obu.obu_bytes
        assert b4.message.card_rest_money == 15_00  # the balance after the first charge
        assert StationRecord.decode(b4.message.last_station).record == STATION  # 0019 was written


# -- an OBU that waits in the zone (``laned sim``'s RSU: dwell until removed, re-reads) -----------

def stop(obu: bytes = OBU_B) -> Message:
    return Stop(obu_id=obu, stop_type=STOP_SEARCH_AGAIN)


async def reports_until_quiet(emu: RsuEmulator, lane: PtyLane) -> list[float]:
    """Stop every report of the OBU until the RSU stays quiet for three re-read intervals;
    the emulator times of its reports (``obu_detected``)."""
    while True:
        try:
            b2 = await lane.expect(0xB2, timeout=3 * FAST.redetect_interval)
        except TimeoutError:
            return [e.at for e in emu.events if e.kind == "obu_detected"]
        lane.send(stop(b2.message.obu_id), b2)


async def test_an_obu_waiting_in_the_zone_is_reported_again_only_for_reread_for() -> None:
    async with rig([ObuScenario(OBU, dwell=math.inf, reread_for=1.0)]) as (emu, lane):
        reported = await reports_until_quiet(emu, lane)
        first_end = next(e.at for e in emu.events if e.kind == "transaction_end")
        again = reported[1:]
        # Every 0.3 s (FAST.redetect_interval) after the last transaction ended, for 1 s
        # after the first one ended: about 0.3, 0.6 and 0.9 s.
        assert 2 <= len(again) <= 3, reported
        assert all(at - first_end < 1.0 for at in again)
        assert all(b - a >= FAST.redetect_interval * 0.9 for a, b in zip(reported, reported[1:]))


async def test_an_obu_in_the_zone_until_removed_is_reported_until_it_leaves() -> None:
    async with rig([ObuScenario(OBU, dwell=math.inf)]) as (emu, lane):
        for _ in range(3):
            b2 = await lane.expect(0xB2)
            lane.send(stop(), b2)
        await emu.wait_for(lambda: sum(e.kind == "transaction_end" for e in emu.events) == 3, T)
        emu.remove_obu(OBU)  # its vehicle passed the arm
        assert len(await reports_until_quiet(emu, lane)) == 3


@pytest.mark.parametrize("redetect, reports", [(False, 1), (True, 2)])
async def test_reread_for_0_suppresses_rereads_but_a_seen_again_obu_is_reported_once_more(
        redetect: bool, reports: int) -> None:
    async with rig([ObuScenario(OBU, dwell=math.inf, reread_for=0.0, redetect=redetect)]) as (emu, lane):
        assert len(await reports_until_quiet(emu, lane)) == reports


async def test_b5_error_injection() -> None:
    async with rig([ObuScenario(OBU, b5_error=0x17, balance=100_00)]) as (emu, lane):
        _, _, b4 = await to_card(lane)
        lane.send(charge(10_00), b4)
        b5 = await lane.expect(0xB5)
        assert b5.message.error_code == 0x17 and b5.message.tac is None  # short error form
        assert emu.charges == [] and emu.balance(OBU) == 100_00


async def test_lost_b5_and_c8_refetch_returns_the_same_tac_network2019() -> None:
    async with rig([ObuScenario(OBU, lost_b5=True, balance=100_00)], profile=N2019) as (emu, lane):
        _, _, b4 = await to_card(lane, N2019)
        lane.send(charge(12_34, profile=N2019), b4)
        await emu.expect_event("charged", timeout=T)
        await emu.wait_for(lambda: any("lost_b5" in e.note for e in emu.log if e.name == "B5"), T)
        lane.send(network2019.RefetchTac(obu_id=OBU_B, opt_mode=0, ef04_offset=0, ef04_length=0, ef04_info=b""))
        b5 = await lane.expect(0xB5)
        assert b5.message.error_code == 0
        assert b5.message.tac == emu.charges[0].tac and b5.message.card_balance == 100_00 - 12_34
        assert len(emu.charges) == 1


async def test_c8_refetch_error_from_the_scenario() -> None:
    async with rig([ObuScenario(OBU, lost_b5=True, refetch_error=0x35)], profile=N2019) as (emu, lane):
        _, _, b4 = await to_card(lane, N2019)
        lane.send(charge(1_00, profile=N2019), b4)
        await emu.expect_event("charged", timeout=T)
        lane.send(network2019.RefetchTac(obu_id=OBU_B, opt_mode=0, ef04_offset=0, ef04_length=0, ef04_info=b""))
        b5 = await lane.expect(0xB5)
        assert b5.message.error_code == 0x35


# -- transport faults -------------------------------------------------------------------------------

async def test_corrupted_frame_is_rejected_as_bcc() -> None:
    async with rig([ObuScenario(OBU, faults={"B3": (Fault.CORRUPT,)})]) as (emu, lane):
        b2 = await lane.expect(0xB2)
        lane.send(cont(), b2)
        item = await lane.next()
        assert isinstance(item, ProtocolError) and item.reason == "bcc"
        assert lane.decoder.drops["bcc"] == 1
        lane.send(Stop(obu_id=OBU_B, stop_type=2), b2)  # "resend the current frame": it comes clean
        b3 = await lane.expect(0xB3)
        assert b3.message.obu_id == OBU_B


async def test_duplicated_frame_arrives_twice() -> None:
    async with rig([ObuScenario(OBU)]) as (emu, lane):
        emu.inject("duplicate", "B2")
        first = await lane.expect(0xB2)
        second = await lane.expect(0xB2)
        assert first.message == second.message and first.rsctl == second.rsctl
        assert second.raw.wire == first.raw.wire


async def test_a_second_answer_to_a_duplicated_frame_does_not_move_the_transaction_on() -> None:
    async with rig([ObuScenario(OBU)]) as (emu, lane):
        emu.inject("duplicate", "B2")
        first = await lane.expect(0xB2)
        second = await lane.expect(0xB2)
        lane.send(cont(), first)
        b3 = await lane.expect(0xB3)
        lane.send(cont(), second)  # answers the copy of B2: stale by its RSCTL, not an answer to B3
        await emu.expect_event("stale_answer", timeout=T)
        lane.send(cont(), b3)
        b4 = await lane.expect(0xB4)
        assert b4.message.obu_id == OBU_B
        assert emu.counters["stale_answer"] == 1


async def test_a_frame_lost_on_the_line_still_times_out_and_the_rsu_searches_again() -> None:
    settings = EmulatorSettings(heartbeat_interval=None, answer_timeout=0.2, redetect_interval=0.3)
    async with rig([ObuScenario(OBU, lost_b5=True), ObuScenario("0badcafe", arrive_at=0.5)], settings) as (emu, lane):
        _, _, b4 = await to_card(lane)
        lane.send(charge(5_00), b4)
        ev = await emu.expect_event("abandoned", timeout=T)  # B5 never reached the lane
        assert ev.detail == {"obu_id": OBU, "stage": "B5"}
        nxt = await lane.expect(0xB2)  # and the RSU goes on with the next OBU
        assert nxt.message.obu_id == bytes.fromhex("0badcafe")
        assert len(emu.charges) == 1


async def test_split_noise_and_delay_still_decode() -> None:
    async with rig([ObuScenario(OBU)]) as (emu, lane):
        emu.inject("split", "B2", pieces=4)
        emu.inject("noise", "B2", noise=b"\x00\x13\x37")
        b2 = await lane.expect(0xB2)
        assert b2.message.obu_id == OBU_B
        emu.inject("delay", "B3", delay=0.05)
        lane.send(cont(), b2)
        await lane.expect(0xB3)
        assert "delay" in (await emu.expect_frame("tx", "B3", timeout=T)).note


async def test_output_is_paced_at_the_baud_rate() -> None:
    async with rig([], EmulatorSettings(heartbeat_interval=None, baud=9600), init=False) as (emu, lane):
        lane.send(init_msg())
        b0 = await lane.expect(0xB0)
        tx = await emu.expect_frame("tx", "B0", timeout=T)
        rx = await emu.expect_frame("rx", "C0", timeout=T)
        # 10 bits a byte at 9600 baud: the last byte cannot leave before len × 1.04 ms.
        assert tx.at - rx.at >= (len(b0.raw.wire) - 1) * 10 / 9600 * 0.9


async def test_silence_suppresses_heartbeats() -> None:
    async with rig([], EmulatorSettings(heartbeat_interval=0.05)) as (emu, lane):
        await emu.wait_for(lambda: emu.sent("HB"), T)
        emu.silence(0.3)
        since = len(emu.log)
        start = time.monotonic()
        await emu.wait_for(lambda: any(e.name == "HB" and e.wire for e in emu.log[since:]), T, "heartbeat after silence")
        assert time.monotonic() - start >= 0.25


async def test_port_vanishes_and_comes_back_under_a_new_path() -> None:
    paths: list[str] = []
    async with RsuEmulator([], settings=FAST, on_port_changed=paths.append) as emu:
        lane = PtyLane(emu.path)
        old = emu.path
        lane.send(init_msg())
        await lane.expect(0xB0)
        await emu.vanish()
        item = await lane.next()
        assert isinstance(item, EndOfPort) and lane.closed_by in ("EOF", "EIO")
        lane.close()
        changed = emu.port_changed
        new = await emu.restore()
        assert changed.is_set() and paths == [new] and new == emu.path and new != old
        lane = PtyLane(new)
        try:
            lane.send(init_msg())
            await lane.expect(0xB0)
        finally:
            lane.close()


# -- TCP ---------------------------------------------------------------------------------------

async def test_tcp_charge_and_reconnect_on_the_same_port() -> None:
    async with RsuEmulator([ObuScenario(OBU, balance=10_00)], transport="tcp", settings=FAST) as emu:
        port = emu.tcp_port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        dec = FrameDecoder(NATIONAL)
        pending: list[Decoded | ProtocolError] = []

        async def expect(t: int) -> Decoded:
            while True:
                while pending:
                    item = pending.pop(0)
                    if isinstance(item, Decoded) and item.message.frame_type == t:
                        return item
                data = await asyncio.wait_for(reader.read(4096), T)
                assert data, "connection closed"
                pending.extend(dec.feed(data))

        def send(msg: Message, ans: Decoded | None = None) -> None:
            writer.write(encode_message(NATIONAL, msg, rsctl=reply_rsctl(ans.rsctl) if ans else 0x80))

        send(init_msg())
        await expect(0xB0)
        send(cont(bytes(4)))
        b2 = await expect(0xB2)
        send(cont(), b2)
        b3 = await expect(0xB3)
        send(cont(), b3)
        b4 = await expect(0xB4)
        send(charge(3_00), b4)
        b5 = await expect(0xB5)
        assert b5.message.card_balance == 7_00 == emu.charges[0].balance_after
        assert b5.message.tac == emu.charges[0].tac

        await emu.vanish()
        assert await asyncio.wait_for(reader.read(4096), T) == b""  # connection closed
        writer.close()
        await emu.restore()
        assert emu.tcp_port == port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        dec = FrameDecoder(NATIONAL)
        pending.clear()
        send(init_msg())
        await expect(0xB0)
        writer.close()
