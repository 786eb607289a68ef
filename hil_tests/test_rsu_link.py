"""laned's RsuLink against the emulated RSU over a real pseudo-terminal and a real TCP socket.

The emulator (``laned/sim/rsu_emulator.py``) holds the master side of an ``os.openpty()``
pair or listens on 127.0.0.1; the link opens the slave by path exactly as it opens
``/dev/ttyUSB0``. A scripted minimal lane (``rsu_fixtures.ScriptedLane``) answers the
transaction. A few byte-exact driver tests use a bare pty peer instead. Nothing waits on
a fixed sleep: every step awaits an event with a deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sys
import time
from collections.abc import AsyncIterator

import pytest

from rsu_fixtures import (
    AMOUNT, T, PtyPeer, frame_name, lane_charge, lane_refetch, next_frame, poll_until, rsu_bench,
)
from laned.drivers.errors import DeviceOffline
from laned.drivers.rsu import RsuLink
from laned.protocol.codec import Decoded, FrameDecoder, encode_message
from laned.protocol.profiles import get_profile
from laned.protocol.profiles.common import Switch
from laned.protocol.profiles.national import Continue, ObuInfo, RsuInfo
from laned.protocol.records import CardIssueFile, StationRecord
from laned.protocol.rsctl import LaneSequence, reply_rsctl
from laned.sim.rsu_emulator import EmulatorSettings
from laned.sim.rsu_scenario import EntryRecord, ObuFlag, ObuScenario

pytestmark = [pytest.mark.hil, pytest.mark.timeout(30)]

NATIONAL = get_profile("national")
OBU = ObuScenario("a1b2c3d4", balance=100_00, plate="鲁A12345", card_number="2301000012345678",
                  entry=EntryRecord(station="0102", lane=3, entry_time=1_763_800_000))
QUICK = EmulatorSettings(heartbeat_interval=0.05, answer_timeout=1.1)


def charged_once(emu, obu=OBU):  # type: ignore[no-untyped-def]
    return [c for c in emu.charges if c.obu_id == obu.obu_id and c.amount]


# -- the transaction ------------------------------------------------------------------------------

@pytest.mark.parametrize("transport", ["pty", "tcp"])
@pytest.mark.parametrize("profile", ["national", "network2019"])
async def test_scripted_lane_completes_a_charge_and_b5_matches_the_emulator(profile, transport) -> None:
    async with rsu_bench(profile, transport, [OBU]) as b:
        b5 = await b.lane.wait_frame("B5")
        await b.emu.expect_event("transaction_end")  # the lane's C1 after B5 closed it
        [charge] = b.emu.charges
        assert (charge.obu_id, charge.amount) == (OBU.obu_id, AMOUNT)
        assert charge.balance_after == OBU.balance - AMOUNT == b.emu.balance(OBU.obu_id)
        m = b5.message
        assert m.error_code == 0 and m.tac == charge.tac and m.card_balance == charge.balance_after
        assert m.psam_trans_serial == charge.psam_serial and m.trans_time == charge.trans_time
        # What the lane read is the scenario: OBU status, card files 0015 and 0019.
        b2 = b.lane.received("B2")[0].message
        assert b.profile.obu_flags(b2.obu_status) == frozenset()
        b4 = b.lane.received("B4")[0].message
        card = CardIssueFile.decode(b4.issuer_info)
        assert (card.card_key, card.plate) == (OBU.card_key, OBU.plate)
        station = StationRecord.decode(b4.last_station)
        assert (station.station_key, station.entry_time) == ("3701-0102", 1_763_800_000)
        assert b4.card_rest_money == OBU.balance
        # Every answer carried the RSU frame's RSCTL with its nibbles swapped; frames the
        # lane started (C0, the first C1) a free-running 8X.
        rx = [e for e in b.emu.log if e.direction == "rx"]
        answers = [e for e in rx if e.answers is not None]
        assert [e.name for e in answers] == ["C1", "C1", "C6", "C1"]
        assert all(e.rsctl == reply_rsctl(e.answers) for e in answers)
        assert b.emu.counters["rsctl_not_swapped"] == 0
        started = [e for e in rx if e.answers is None]
        assert [e.name for e in started] == ["C0", "C1"] and all(e.rsctl >> 4 == 0x8 for e in started)
        # The lane's turnaround, measured by the emulator, is milliseconds.
        assert len(b.emu.turnarounds()) == 4 and max(b.emu.turnarounds()) < 0.5


@pytest.mark.parametrize("profile", ["jinyi", "gb2019tcp"])
async def test_tcp_envelope_profiles_complete_a_charge(profile) -> None:
    async with rsu_bench(profile, "tcp", [OBU]) as b:
        b5 = await b.lane.wait_frame("B5")
        [charge] = b.emu.charges
        assert b5.message.obu_id == OBU.obu_bytes and charge.tac in b5.message.data
        assert charge.balance_after == OBU.balance - AMOUNT
        if profile == "gb2019tcp":  # answers carry the swapped SEQ (RSU 0X, lane X0)
            answers = [e for e in b.emu.log if e.direction == "rx" and e.answers is not None]
            assert answers and all(e.seq == reply_rsctl(e.answers) for e in answers)


async def test_heartbeats_refresh_liveness_and_are_never_answered() -> None:
    async with rsu_bench("national", "pty", settings=QUICK) as b:
        await b.lane.wait_frame("HB", count=4)
        beats = b.lane.received("HB")
        assert all(f.message.obu_id == bytes(4) and f.message.error_code == 0x80 for f in beats)
        assert [f.arrived_at for f in beats] == sorted(f.arrived_at for f in beats)
        assert b.link.last_seen == b.lane.frames[-1].arrived_at and b.link.alive
        assert b.link.health().online and b.link.health().last_ok_at == b.link.last_seen
        # The lane sent C0 and the C1 that starts searching, and nothing for any heartbeat.
        assert [e.name for e in b.emu.log if e.direction == "rx"] == ["C0", "C1"]


# -- injected faults ---------------------------------------------------------------------------------

@pytest.mark.parametrize("transport", ["pty", "tcp"])
async def test_corrupted_frame_is_counted_as_bcc_drop_link_stays_up_and_next_frame_is_delivered(transport,
                                                                                                  caplog) -> None:
    caplog.set_level(logging.WARNING, logger="laned.drivers.rsu")
    async with rsu_bench("national", transport, settings=QUICK) as b:
        await b.lane.wait_frame("HB")
        mark = len(b.emu.log)
        b.emu.inject("corrupt", "HB")
        bad = await b.emu.expect_frame("tx", "HB", since=mark)
        good = await b.emu.expect_frame("tx", "HB", since=b.emu.log.index(bad) + 1)
        delivered = await b.lane.wait_for(lambda: next((f for f in b.lane.frames if f.wire == good.wire), None))
        assert "corrupt" in bad.note and bad.wire not in [f.wire for f in b.lane.frames]
        assert dict(b.link.drops) == {"bcc": 1}
        assert delivered.heartbeat and b.link.connected and b.link.stats["connects"] == 1
        assert any(b.link.name in r.getMessage() and "bcc" in r.getMessage() for r in caplog.records)


async def test_corrupted_b2_is_dropped_the_rsu_reports_the_obu_again_and_charges_once() -> None:
    settings = EmulatorSettings(heartbeat_interval=0.2, answer_timeout=0.3, redetect_interval=0.1)
    async with rsu_bench("national", "pty", [dataclasses.replace(OBU, dwell=5.0)], settings=settings,
                         stop_paid=True) as b:
        b.emu.inject("corrupt", "B2")
        await b.lane.wait_frame("B5")
        await b.emu.expect_event("abandoned")  # the lane never saw the first B2
        assert b.link.drops["bcc"] == 1 and len(charged_once(b.emu)) == 1


async def test_noise_between_frames_is_skipped_and_the_charge_completes() -> None:
    async with rsu_bench("national", "pty", [OBU]) as b:
        # Line noise before every frame, with an FE and a lone FF in it.
        b.emu.set_fault_probability("noise", 1.0, noise=b"\x00\x55\xfe\x13\xff\x00\xaa")
        await b.lane.wait_frame("B5")
        sent = [e for e in b.emu.log if e.direction == "tx" and e.name in ("B2", "B3", "B4", "B5")]
        assert sent and all("noise" in e.note for e in sent)
        assert sum(b.link.drops.values()) == 0 and len(charged_once(b.emu)) == 1


async def test_split_frames_are_delivered_intact() -> None:
    async with rsu_bench("network2019", "pty", [OBU]) as b:
        b.emu.set_fault_probability("split", 1.0, delay=0.01)  # every frame in 3 pieces, 10 ms apart
        await b.lane.wait_frame("B5")
        sent = {e.name: e.wire for e in b.emu.log if e.direction == "tx" and e.name in ("B2", "B3", "B4", "B5")}
        got = {frame_name(f): f.wire for f in b.lane.frames if not f.heartbeat and frame_name(f) != "B0"}
        assert got == sent and sum(b.link.drops.values()) == 0
        assert len(charged_once(b.emu)) == 1


async def test_duplicated_frame_is_delivered_twice_and_the_lane_deduplicates() -> None:
    # The link delivers what the line carried: a duplicated B3 arrives twice, same RSCTL.
    # De-duplicating is the lane's job (laned's lane machine answers a repeated frame once).
    async with rsu_bench("national", "pty", [OBU]) as b:
        b.emu.inject("duplicate", "B3")
        await b.lane.wait_frame("B5")
        await b.emu.expect_event("transaction_end")  # the lane's C1 after B5 has arrived
        first, second = b.lane.received("B3")
        assert first.wire == second.wire and first.rsctl == second.rsctl
        assert second.arrived_at >= first.arrived_at and b.lane.duplicates == 1
        assert [e.name for e in b.emu.log if e.direction == "rx"] == ["C0", "C1", "C1", "C1", "C6", "C1"]
        assert len(charged_once(b.emu)) == 1


async def test_delayed_frame_arrives_late_and_the_charge_still_completes() -> None:
    async with rsu_bench("national", "pty", [OBU]) as b:
        b.emu.inject("delay", "B4", delay=0.3)
        await b.lane.wait_frame("B5")
        b3, b4 = b.lane.received("B3")[0], b.lane.received("B4")[0]
        assert b4.arrived_at - b3.arrived_at >= 0.3
        # The RSU's answer timer starts when the frame is on the wire, so it does not give up.
        assert b.emu.counters["abandoned"] == 0 and len(charged_once(b.emu)) == 1


async def test_lane_stop_type_2_makes_the_rsu_resend_the_current_frame() -> None:
    async with rsu_bench("national", "pty", [OBU], resend_once={"B3"}) as b:
        await b.lane.wait_frame("B5")
        first, again = b.lane.received("B3")
        assert first.message == again.message and first.rsctl != again.rsctl
        assert len(charged_once(b.emu)) == 1


async def test_gb2019tcp_rsu_retransmits_an_unanswered_frame_three_times_then_abandons() -> None:
    settings = EmulatorSettings(heartbeat_interval=1.0, answer_timeout=0.6)
    async with rsu_bench("gb2019tcp", "tcp", [OBU], settings=settings, hold={"B2"}) as b:
        await b.emu.expect_event("abandoned")
        b2s = b.lane.received("B2")
        assert len(b2s) == 4 and len({f.wire for f in b2s}) == 1  # same SEQ each time
        assert b.lane.duplicates == 3 and b.emu.charges == []


# -- losing the RSU ----------------------------------------------------------------------------------

@pytest.mark.parametrize("transport", ["pty", "tcp"])
async def test_silence_longer_than_the_silence_timeout_makes_the_driver_reconnect(transport) -> None:
    async with rsu_bench("national", transport, settings=QUICK, link_kw={"silence_timeout": 0.4}) as b:
        await b.lane.wait_frame("HB")
        assert b.link.alive
        mark = b.status.mark
        b.emu.silence(1.0)
        down = await b.status.wait(False, after=mark)
        assert "silent" in down.reason and not b.link.alive and not b.link.health().online
        await b.status.wait(True, after=mark + 1)
        # Once the RSU talks again, heartbeats arrive on the new connection: alive again.
        quiet_from = time.monotonic()
        await b.lane.wait_for(lambda: b.link.alive and b.link.last_seen > quiet_from + 0.5, timeout=T)
        assert b.link.stats["disconnects"] >= 1 and b.link.stats["connects"] >= 2


async def test_pty_vanishing_reports_disconnected_and_device_added_with_the_new_path_reconnects() -> None:
    async with rsu_bench("national", "pty", settings=QUICK) as b:
        await b.lane.wait_frame("HB")
        old = b.emu.path
        mark = b.status.mark
        await b.emu.vanish()
        down = await b.status.wait(False, after=mark)
        assert down.reason and not b.link.connected
        with pytest.raises(DeviceOffline):
            b.link.send_nowait(Switch(control_type=1))
        # The adapter comes back under another name; hotplug tells the link (device_added).
        b.emu.on_port_changed = b.link.device_added
        mark = b.status.mark
        t0 = time.monotonic()
        new = await b.emu.restore()
        up = await b.status.wait(True, after=mark, timeout=1.0)
        assert new != old and new in up.reason and time.monotonic() - t0 < 1.0
        # The lane initialises the RSU again and a vehicle pays over the new port.
        b.emu.add_obu(OBU, arrive_in=0.0)
        b5 = await b.lane.wait_frame("B5")
        assert b5.message.tac == charged_once(b.emu)[0].tac


async def test_tcp_rsu_vanishing_reports_disconnected_and_the_driver_reconnects_with_backoff() -> None:
    backoff = (0.05, 0.4)
    async with rsu_bench("national", "tcp", settings=QUICK, link_kw={"backoff": backoff}) as b:
        await b.lane.wait_frame("HB")
        mark = b.status.mark
        await b.emu.vanish()
        await b.status.wait(False, after=mark)
        failed_at: list[float] = []
        while len(failed_at) < 5:  # refused connects, timed as they happen
            await poll_until(lambda: b.link.stats["open_failures"] > len(failed_at), what="a refused connect")
            failed_at.append(time.monotonic())
        gaps = [later - earlier for earlier, later in zip(failed_at, failed_at[1:])]
        # Doubling from 0.05 s (0.1, 0.2, 0.4 …), capped at 0.4 s: not 0.8 s.
        assert gaps[0] >= 0.09 and gaps[1] >= 0.18 and gaps[2] >= 0.36, gaps
        assert gaps[3] < 0.6, gaps
        mark = b.status.mark
        await b.emu.restore()  # same host and port: no hotplug, the link finds it by itself
        await b.status.wait(True, after=mark, timeout=backoff[1] + 1.0)
        n = len(b.lane.received("HB"))
        await b.lane.wait_frame("HB", count=n + 1)
        assert b.link.alive


async def test_device_removed_closes_at_once_and_device_added_reopens_within_one_second() -> None:
    async with rsu_bench("national", "pty", settings=QUICK) as b:
        await b.lane.wait_frame("HB")
        mark = b.status.mark
        await b.link.device_removed()
        assert not b.link.connected and [s for _, s in b.status.events[mark:]] == [
            dataclasses.replace(b.link.status, connected=False, reason="adapter removed")]
        with pytest.raises(DeviceOffline):
            b.link.send_nowait(Switch(control_type=1))
        t0 = time.monotonic()
        b.link.device_added(b.emu.path)
        await b.status.wait(True, after=mark, timeout=1.0)
        assert time.monotonic() - t0 < 1.0
        n = len(b.lane.received("HB"))
        assert (await b.lane.wait_frame("HB", count=n + 1)).heartbeat


# -- the emulated RSU's own rules ----------------------------------------------------------------------

async def test_rsu_abandons_an_obu_the_lane_does_not_answer_and_a_late_c6_is_not_charged() -> None:
    settings = EmulatorSettings(heartbeat_interval=0.2, answer_timeout=0.3)
    async with rsu_bench("national", "pty", [OBU], settings=settings, hold={"B4"}) as b:
        b4 = await b.lane.wait_frame("B4")
        abandoned = await b.emu.expect_event("abandoned")
        sent_b4 = b.emu.sent("B4")[0]
        assert abandoned.detail["stage"] == "B4" and 0.3 <= abandoned.at - sent_b4.at < 1.0
        b.link.send_nowait(lane_charge(b.profile, OBU.obu_bytes), b4)  # too late: the RSU moved on
        await b.emu.expect_event("c6_ignored")
        assert b.emu.charges == [] and b.emu.balance(OBU.obu_id) == OBU.balance


@pytest.mark.parametrize("refetch_error", [None, 0x35])
async def test_lost_b5_is_refetched_with_c8_and_the_card_is_charged_once(refetch_error) -> None:
    obu = dataclasses.replace(OBU, lost_b5=True, refetch_error=refetch_error)
    async with rsu_bench("network2019", "pty", [obu]) as b:
        await b.emu.expect_event("charged")
        await b.emu.expect_frame("tx", "B5")  # the B5 that never reaches the lane
        assert b.lane.received("B5") == []
        b.link.send_nowait(lane_refetch(obu.obu_bytes))
        b5 = (await b.lane.wait_frame("B5")).message
        [charge] = b.emu.charges
        if refetch_error is None:
            assert b5.error_code == 0 and b5.tac == charge.tac and b5.card_balance == charge.balance_after
        else:
            assert b5.error_code == refetch_error and b5.tac is None
        assert b.emu.balance(obu.obu_id) == obu.balance - AMOUNT


async def test_obu_still_in_the_zone_is_reported_again_after_the_redetection_interval() -> None:
    settings = EmulatorSettings(heartbeat_interval=0.2, redetect_interval=0.2)
    async with rsu_bench("national", "pty", [dataclasses.replace(OBU, dwell=5.0)], settings=settings,
                         stop_paid=True) as b:
        first = await b.lane.wait_frame("B5")
        again = await b.lane.wait_frame("B2", count=2)
        assert again.arrived_at - first.arrived_at >= 0.2
        await b.emu.expect_event("transaction_end", since=len(b.emu.events))  # stopped by the lane
        assert len(charged_once(b.emu)) == 1 and b.emu.balance(OBU.obu_id) == OBU.balance - AMOUNT


async def test_obu_status_flags_and_b3_error_codes_come_from_the_scenario() -> None:
    obu = dataclasses.replace(OBU, flags=frozenset({ObuFlag.OBU_REMOVED, ObuFlag.BATTERY_LOW}), errors={"B3": 0x06})
    async with rsu_bench("national", "pty", [obu]) as b:
        b3 = await b.lane.wait_frame("B3")
        b2 = b.lane.received("B2")[0].message
        assert b.profile.obu_flags(b2.obu_status) == {ObuFlag.OBU_REMOVED, ObuFlag.BATTERY_LOW}
        assert b3.message.error_code == 0x06 and b3.message.plate_number is None
        await b.emu.expect_event("transaction_end")  # the lane's C1 after an error frame ends it
        assert b.emu.charges == [] and b.lane.received("B4") == []


async def test_output_is_paced_at_the_configured_baud_rate() -> None:
    settings = EmulatorSettings(heartbeat_interval=0.5, baud=9600)
    async with rsu_bench("national", "pty", [OBU], settings=settings, link_kw={"baud": 9600}) as b:
        await b.lane.wait_frame("B5")
        c1_for_b3 = next(e for e in b.emu.log if e.direction == "rx" and e.name == "C1" and e.answers is not None
                         and e.turnaround is not None and b.emu.sent("B3")[0].at < e.at)
        b4 = b.emu.sent("B4")[0]
        # 10 bits a byte: the B4 cannot be on the line faster than the UART sends it.
        assert b4.at - c1_for_b3.at >= len(b4.wire) * 10 / 9600


# -- byte-exact driver behaviour (bare pty peer) -----------------------------------------------------

@pytest.fixture
async def peer() -> AsyncIterator[PtyPeer]:
    p = PtyPeer(NATIONAL)
    yield p
    p.close()


async def test_frames_arrive_typed_with_arrival_time_and_answers_swap_rsctl(peer) -> None:
    async with RsuLink(NATIONAL, port=peer.path, name="rsu-raw") as link:
        await asyncio.wait_for(link.wait_connected(), T)
        frames = link.frames()
        b0_wire = encode_message(NATIONAL, RsuInfo(rsu_status=1), rsctl=0x98)
        b2_wire = encode_message(NATIONAL, ObuInfo(obu_id=OBU.obu_bytes, error_code=0x04), rsctl=0x48)
        before = time.monotonic()
        peer.write(b0_wire + b2_wire)
        b0, b2 = await next_frame(frames), await next_frame(frames)
        assert isinstance(b0.message, RsuInfo) and b0.rsctl == 0x98 and b0.wire == b0_wire
        assert isinstance(b2.message, ObuInfo) and b2.rsctl == 0x48 and not b2.heartbeat
        assert before <= b0.arrived_at <= b2.arrived_at <= time.monotonic()
        with pytest.raises(dataclasses.FrozenInstanceError):
            b2.rsctl = 1  # type: ignore[misc]
        answer = Continue(obu_id=OBU.obu_bytes, obu_div_factor=bytes(8))
        link.send_nowait(answer, b2)  # the frame itself, or its RSCTL as the executor passes it
        await link.send(answer, b2.rsctl)
        await link.send(Switch(control_type=1))
        got = [await peer.next_frame() for _ in range(3)]
        assert [d.rsctl for d in got] == [0x84, 0x84, 0x80]


async def test_partial_writes_drain_in_order_without_errors_and_the_writer_is_unregistered(peer,
                                                                                            caplog) -> None:
    caplog.set_level(logging.DEBUG)
    async with RsuLink(NATIONAL, port=peer.path, name="rsu-raw") as link:
        await asyncio.wait_for(link.wait_connected(), T)
        seq = LaneSequence()
        expected = bytearray()
        i = 0
        while len(expected) < 64 * 1024:  # 16 times what the pty buffers
            msg = Continue(obu_id=i.to_bytes(4, "big"), obu_div_factor=(i * 7919).to_bytes(8, "big"))
            expected += encode_message(NATIONAL, msg, rsctl=seq.next())
            link.send_nowait(msg)
            i += 1
        # The pty took only part of it: the rest waits in the link's buffer, writer registered.
        assert link.writing and link.write_buffer_size > 0
        assert link.stats["short_write"] + link.stats["write_blocked"] > 0
        peer.chunk = 61  # the RSU reads slowly, in small chunks
        got = await peer.wait_bytes(len(expected), timeout=15)
        assert got == bytes(expected)
        assert not link.writing and link.write_buffer_size == 0
        loop = asyncio.get_running_loop()
        assert loop.remove_writer(link._transport.fd) is False  # nothing was left registered
        decoded = FrameDecoder(NATIONAL).feed(got)
        assert len(decoded) == i and all(isinstance(d, Decoded) for d in decoded)
        assert [d.message.obu_id for d in decoded[:3]] == [b"\0\0\0\0", b"\0\0\0\x01", b"\0\0\0\x02"]
        for _ in range(20):  # loop turns with the port idle: nothing may be logged
            await asyncio.sleep(0)
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
        assert "AssertionError" not in caplog.text and link.connected


async def test_send_when_disconnected_raises_device_offline_and_bad_settings_are_refused(peer) -> None:
    link = RsuLink(NATIONAL, port=peer.path)
    with pytest.raises(DeviceOffline):
        link.send_nowait(Switch(control_type=1))
    with pytest.raises(ValueError):
        RsuLink(NATIONAL, port=peer.path, baud=4800)
    with pytest.raises(ValueError):
        RsuLink(NATIONAL)


async def test_gb2019tcp_answers_swap_seq_and_lane_frames_count_x0() -> None:
    gb = get_profile("gb2019tcp")
    conns: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await conns.put((reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    writer = None
    try:
        async with RsuLink(gb, host="127.0.0.1", tcp_port=server.sockets[0].getsockname()[1]) as link:
            reader, writer = await asyncio.wait_for(conns.get(), T)
            frames = link.frames()
            b2 = gb.messages[0xB2](obu_id=OBU.obu_bytes, data=b"\x00\x01\x02")  # type: ignore[call-arg]
            writer.write(encode_message(gb, b2, seq=0x03))
            f = await next_frame(frames)
            assert f.seq == 0x03 and f.message == b2 and f.rsctl is None
            c1 = gb.messages[0xC1](obu_id=OBU.obu_bytes, data=b"")  # type: ignore[call-arg]
            for reply_to in (f, None, None):
                link.send_nowait(c1, reply_to)
            dec = FrameDecoder(gb)
            got: list[Decoded] = []
            while len(got) < 3:
                data = await asyncio.wait_for(reader.read(4096), T)
                assert data
                got += [d for d in dec.feed(data) if isinstance(d, Decoded)]
            assert [d.seq for d in got] == [0x30, 0x00, 0x10] and all(d.message == c1 for d in got)
    finally:
        if writer is not None:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_frames_iterator_ends_at_close_and_the_link_restarts(peer) -> None:
    link = RsuLink(NATIONAL, port=peer.path)
    async with link:
        await asyncio.wait_for(link.wait_connected(), T)
    assert [f async for f in link.frames()] == []  # ended by close()
    async with link:
        await asyncio.wait_for(link.wait_connected(), T)
        peer.write(encode_message(NATIONAL, ObuInfo(obu_id=bytes(4), error_code=0x80), rsctl=0x18))
        assert (await next_frame(link.frames())).heartbeat


# -- the emulator's command line ---------------------------------------------------------------------

async def test_emulator_command_line_serves_a_pty_that_the_link_can_use(tmp_path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "laned.sim.rsu_emulator", "--pty", "--no-init", "--heartbeat", "0.1",
        "--duration", "20", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        path = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode().strip()  # type: ignore[union-attr]
        assert path.startswith("/dev/pts/")
        async with RsuLink(NATIONAL, port=path, name="rsu-cli") as link:
            beat = await next_frame(link.frames(), timeout=5)
            assert beat.heartbeat
    finally:
        proc.terminate()
        await proc.wait()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"obu_id": "a1b2c3d4"}, {"obu_id": "a1b2c3d5", "colour": 1}]))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "laned.sim.rsu_emulator", "--pty", "--scenario", str(bad),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 2 and b"OBU 1" in err and b"colour" in err
