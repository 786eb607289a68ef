"""Delivery to the centre over a real Mosquitto (issue 10, items 2 and 6, the lane side).

Each test starts its own broker (TLS client certificates, the per-lane ACL: the fixtures of
``test_mqtt_security.py``), the real journal (a :class:`JournalWriter` on a tmp file) and
the uplink service (:class:`laned.uplink.service.UplinkService`) with short timeouts. The
lane reaches the broker through a TCP relay (:class:`Relay`) so that a test can pull the
lane's cable without the broker noticing a clean DISCONNECT. The centre is a stand-in
(:class:`Centre`): an aiomqtt client with the centre's certificate that checks every
payload against the contract, keeps a ledger by seq (as the real centre de-duplicates on
``(lane_id, seq)``) and acknowledges on ``tx/ack`` when it is told to.

What is held: rows arrive in seq order and conform; only rows the centre acknowledged are
marked delivered (never on PUBACK); without acks nothing is marked and rows are sent
again after ``ack_timeout_s``; a broker restarted without persistence loses nothing
unacknowledged; an ack of a row's unknown copy arriving after the lane settled the row
during an outage marks nothing; a reconciliation answer settles an unknown row and its
result goes up and is acknowledged; the retained state is ``online`` after connect and ``offline`` (the last
will) when the lane's connection dies; a malformed ack is dropped and logged, the link goes on;
alarm changes made while the lane's cable was out reach the centre after it is back, in order;
a broker whose ACL refuses the lane's ``tx`` raises ``uplink_publish_refused`` (its PUBACK
says 0x87), cleared once the ACL lets the lane write again.
Waiting is on conditions with deadlines, never on fixed sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import datetime as dt
import json
import logging
import os
import signal
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from mosquitto_broker import TOPIC_ROOT, MosquittoBroker, free_port
from lane_fixtures import read_journal
from mqtt_pki import CENTRE, Pki, make_pki
from laned.app import LaneTaskFailed, run_lane
from laned.config import Config, parse_config
from laned.health.alarms import AlarmRegistry
from laned.health.checks import HealthSettings
from laned.health.monitor import HealthMonitor
from laned.journal import JournalWriter
from laned.lane.events import ClearAlarm, RaiseAlarm
from laned.journal.records import B5Result, TransactionIntent, TxState
from laned.uplink.contract import validate
from laned.uplink.link import CentreLink, LinkSettings
from laned.uplink.messages import AckStream, ReconcileOutcome, TxAck
from laned.uplink.reporting import LaneView
from laned.uplink.publisher import GIVE_WAY_MAX_S
from laned.uplink.service import UplinkService, UplinkSettings
from laned.uplink.tls import client_tls_context
from laned.provisioning.broker_access import acl_text
from laned.sim.rsu_emulator import EmulatorSettings, RsuEmulator
from laned.sim.rsu_scenario import ObuScenario

pytestmark = [pytest.mark.hil, pytest.mark.timeout(60)]

LANE = "G0001-01"
T = 10.0  # deadline of one waited-for condition; each normally takes milliseconds to a second
ACK_TIMEOUT_S = 1.0
TZ = dt.timezone(dt.timedelta(hours=8))


def wall() -> dt.datetime:
    return dt.datetime.now(TZ)


def topic(suffix: str, lane: str = LANE) -> str:
    return f"{TOPIC_ROOT}/{lane}/{suffix}"


async def until(condition: Callable[[], bool], what: str, timeout: float = T) -> None:
    """Wait until ``condition()`` holds (polled every 20 ms), or fail naming ``what``."""
    try:
        async with asyncio.timeout(timeout):
            while not condition():  # noqa: ASYNC110 - the conditions are the centre's and the journal's state
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"not within {timeout} s: {what}") from None


# -- the relay: the lane's network cable ----------------------------------------------------------

class Relay:
    """A TCP relay from a local port to the broker; :meth:`cut` drops every connection
    through it at once, as a pulled cable does (no MQTT DISCONNECT reaches the broker).
    While ``blocked``, it refuses new connections: the cable stays out."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.blocked = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Relay:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.blocked:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            dst.close()

    def cut(self) -> None:
        for w in list(self._writers):
            transport = w.transport
            transport.abort()  # RST, no FIN handshake: the broker sees a dead peer
        self._writers.clear()


# -- the centre stand-in --------------------------------------------------------------------------

@dataclass
class Centre:
    """The centre's side, as far as these tests need it (see the module docstring)."""

    broker: MosquittoBroker
    pki: Pki
    lane_id: str = LANE
    acking: bool = True
    tx: list[dict[str, Any]] = field(default_factory=list)  # every copy received, in order (batches unpacked)
    batches: int = 0  # messages on tx/batch
    ledger: dict[int, dict[str, Any]] = field(default_factory=dict)  # seq -> latest copy
    results: list[dict[str, Any]] = field(default_factory=list)  # reconcile/result copies
    states: list[dict[str, Any]] = field(default_factory=list)  # state messages (retained ones too)
    health: list[dict[str, Any]] = field(default_factory=list)
    alarms: list[dict[str, Any]] = field(default_factory=list)
    expiry: dict[str, int | None] = field(default_factory=dict)  # topic suffix -> MQTT 5 message expiry seen
    nonconforming: list[str] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    client: aiomqtt.Client | None = None

    async def run(self) -> None:
        """Connect, subscribe the lane's topics, record and ack; reconnect after a broker restart."""
        context = client_tls_context(self.pki.ca_cert, self.pki.client(CENTRE).cert, self.pki.client(CENTRE).key)
        while True:
            try:
                async with aiomqtt.Client(self.broker.host, self.broker.port, tls_context=context,
                                          protocol=aiomqtt.ProtocolVersion.V5, identifier="centre-stand-in",
                                          timeout=3) as client:
                    self.client = client
                    await client.subscribe([(topic(s, self.lane_id), 1)
                                            for s in ("tx", "tx/batch", "reconcile/result", "state", "health",
                                                      "alarm")])
                    self.connected.set()
                    async for message in client.messages:
                        await self._on(client, message)
            except aiomqtt.MqttError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError from None  # the fixture stops it, mid-disconnect
                self.connected.clear()
                self.client = None
                await asyncio.sleep(0.05)

    async def _on(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        suffix = message.topic.value.removeprefix(f"{TOPIC_ROOT}/{self.lane_id}/")
        assert isinstance(message.payload, bytes)
        payload = json.loads(message.payload)
        name = {"tx": "Transaction", "tx/batch": "TransactionBatch", "reconcile/result": "ReconcileResult",
                "state": "LaneState", "health": "HealthSnapshot", "alarm": "Alarm"}[suffix]
        try:
            validate(name, payload)
        except ValueError as err:
            self.nonconforming.append(f"{suffix}: {err}")
        props = message.properties
        assert props is not None and props.ContentType == "application/json"  # type: ignore[attr-defined]
        assert props.PayloadFormatIndicator == 1  # type: ignore[attr-defined]
        self.expiry[suffix] = getattr(props, "MessageExpiryInterval", None)
        if suffix in ("tx", "tx/batch"):
            # A batch's rows are the rows tx would carry, acked by seq all the same.
            rows = payload["transactions"] if suffix == "tx/batch" else [payload]
            for row in rows:
                self.tx.append(row)
                self.ledger[row["seq"]] = row
            self.batches += suffix == "tx/batch"
            if self.acking:
                await self.ack(AckStream.TX, rows[0]["seq"], rows[-1]["seq"])
        elif suffix == "reconcile/result":
            self.results.append(payload)
            if self.acking:
                await self.ack(AckStream.RECONCILE, payload["seq"], payload["seq"])
        elif suffix == "state":
            self.states.append(payload)
        elif suffix == "health":
            self.health.append(payload)
        elif suffix == "alarm":
            self.alarms.append(payload)

    async def ack(self, stream: AckStream, first: int, last: int, *, unknown: tuple[int, ...] | None = None) -> None:
        assert self.client is not None
        ack = TxAck(lane_id=self.lane_id, stream=stream, first_seq=first, last_seq=last, acked_at=wall(),
                    unknown_seqs=unknown)
        await self.client.publish(topic("tx/ack", self.lane_id), ack.to_json().encode(), qos=1)

    async def send(self, suffix: str, payload: bytes) -> None:
        assert self.client is not None
        await self.client.publish(topic(suffix, self.lane_id), payload, qos=1)


# -- the lane side ----------------------------------------------------------------------------------

@dataclass
class Lane:
    writer: JournalWriter
    service: UplinkService
    link: CentreLink
    vehicle_busy: bool = False  # what LaneView.vehicle_busy says: a vehicle's transaction under way

    async def journal(self, op: Callable[[Any], Any]) -> Any:
        result = await self.writer.submit_async(op)
        self.service.notify()  # as app.NotifyingJournal does after each journal operation
        return result

    async def event(self, kind: str = "follow_car") -> int:
        entry = await self.journal(lambda mj: mj.journal.record_event(kind, wall(), reason=kind))
        return int(entry.seq)

    async def charge(self, amount: int = 3500, *, unknown: bool = False) -> Any:
        intent = TransactionIntent(amount=amount, purchase_time=wall().replace(tzinfo=None, microsecond=0),
                                   obu_id=bytes.fromhex("a1fe0033"), plate="鲁A12345", card_network="3701",
                                   card_number="2301000012345678", vehicle_class=1, fee=amount)
        entry = await self.journal(lambda mj: mj.journal.record_intent(intent, wall()))
        if unknown:
            return await self.journal(lambda mj: mj.journal.mark_unknown(entry.seq, "outcome_unknown", wall()))
        b5 = B5Result(tac=bytes.fromhex("674030a0"), balance_after=96500, trans_time=intent.purchase_time)
        return await self.journal(lambda mj: mj.journal.complete_charge(entry.seq, b5, wall()))

    async def unacked(self) -> list[int]:
        rows = await self.writer.submit_async(lambda mj: mj.journal.outbox_after(0, 100_000))
        return [r.seq for r in rows]

    async def unacked_becomes(self, expected: list[int], timeout: float = T) -> None:
        """Wait until the unacked rows are ``expected``: the journal marks an ack's rows after
        the window has let the next rows go (an ack's commit never holds up publishing)."""
        try:
            async with asyncio.timeout(timeout):
                while (now := await self.unacked()) != expected:  # noqa: ASYNC110 - the journal has no event
                    await asyncio.sleep(0.02)
        except TimeoutError:
            raise AssertionError(f"not within {timeout} s: unacked rows {expected}, still {now}") from None

    async def all_seqs(self) -> list[int]:
        last = await self.writer.submit_async(lambda mj: mj.journal.last_seq())
        return list(range(1, int(last) + 1))


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki", lanes=(LANE,))


@pytest.fixture
async def relay(broker: MosquittoBroker) -> AsyncIterator[Relay]:
    async with Relay(broker.port) as r:
        yield r


@contextlib.asynccontextmanager
async def running(*works: Awaitable[None]) -> AsyncIterator[None]:
    """Run background work for the body of a test; a failure in it fails the test."""
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(w) for w in works]  # type: ignore[arg-type]
        try:
            yield
        finally:
            for t in tasks:
                t.cancel()


@pytest.fixture
async def centre(broker: MosquittoBroker, pki: Pki) -> AsyncIterator[Centre]:
    c = Centre(broker, pki)
    task = asyncio.create_task(c.run())
    await asyncio.wait_for(c.connected.wait(), T)
    yield c
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@pytest.fixture
def monitor() -> HealthMonitor:
    """The daemon's health monitor, without devices: alarms are raised on it by hand."""
    return HealthMonitor(registry=AlarmRegistry(), settings=HealthSettings(), post=lambda event: None, wall=wall)


@pytest.fixture
async def lane(tmp_path: Path, pki: Pki, relay: Relay, monitor: HealthMonitor) -> AsyncIterator[Lane]:
    writer = JournalWriter.open(tmp_path / "journal.db", LANE, now=wall())
    await writer.astart()
    settings = UplinkSettings(window=8, ack_timeout_s=ACK_TIMEOUT_S, reconnect_min_s=0.05, reconnect_max_s=0.3,
                              backlog_capacity=100, health_interval_s=1.0)
    creds = pki.client(LANE)
    link_settings = LinkSettings(lane_id=LANE, host="127.0.0.1", port=relay.port, ca=pki.ca_cert, cert=creds.cert,
                                 key=creds.key, keepalive_s=5, session_expiry_s=600, max_inflight=8)
    lane: Lane
    service = UplinkService.build(link_settings, settings, writer=writer, monitor=monitor,
                                  lane=LaneView(etc_open=lambda: True, closed_by=dict,
                                                vehicle_busy=lambda: lane.vehicle_busy), wall=wall)
    lane = Lane(writer, service, service.link)
    writer.hold_background(lambda: lane.vehicle_busy)  # as the daemon does (laned/app.py)
    yield lane
    await writer.aclose()


@contextlib.asynccontextmanager
async def uplink_running(lane: Lane) -> AsyncIterator[None]:
    task = asyncio.create_task(lane.service.run(), name="uplink")
    try:
        # Connected, and the outbox has read the journal's last seq: a row journalled before
        # that read goes up with the backlog, after rows journalled later (live rows first),
        # so a test that wants its rows in seq order journals them only after it.
        await until(lambda: lane.service.connected and lane.service.outbox.tx.window.is_connected,
                    "the lane connected to the broker, its outbox ready")
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, T)  # a lost cancellation fails the test, not hangs it
    if task.done() and not task.cancelled() and task.exception() is not None:
        raise AssertionError(f"the uplink task failed: {task.exception()!r}")


# -- (a) rows arrive in seq order, conform, and only acked rows are marked delivered ---------------

async def test_journalled_rows_reach_the_centre_in_seq_order_and_only_acked_rows_are_marked_delivered(
        lane: Lane, centre: Centre) -> None:
    centre.acking = False
    async with uplink_running(lane):
        seqs = [await lane.event() for _ in range(3)]
        seqs.append((await lane.charge()).seq)
        seqs += [await lane.event() for _ in range(16)]  # more than the window (8): it must slide
        await until(lambda: len(centre.ledger) >= 8, "the first window of rows at the centre")
        # Nothing acked yet: every row still waits, although the broker PUBACKed them all.
        assert await lane.unacked() == seqs
        acked = [m["seq"] for m in centre.tx[:5]]
        await centre.ack(AckStream.TX, acked[0], acked[-1])
        await until(lambda: len(centre.ledger) >= 13, "the window slid by the five acked rows")
        await lane.unacked_becomes([s for s in seqs if s not in acked])
        centre.acking = True
        for seq in sorted(centre.ledger):
            await centre.ack(AckStream.TX, seq, seq)
        await until(lambda: len(centre.ledger) == len(seqs), "every row at the centre")
        await until(lambda: not lane.service.in_flight(), "every row acknowledged")
        await lane.unacked_becomes([])
    first_copies = list(dict.fromkeys(m["seq"] for m in centre.tx))
    assert first_copies == seqs, "rows went up out of seq order"
    assert centre.nonconforming == []
    charge = centre.ledger[seqs[3]]
    assert charge["state"] == "charged" and charge["tac"] == "674030a0" and charge["plate"] == "鲁A12345"


async def test_the_outbox_holds_its_rows_while_a_vehicle_pays_and_sends_them_when_it_is_done(
        lane: Lane, centre: Centre) -> None:
    async with uplink_running(lane):
        first = await lane.event()
        await until(lambda: first in centre.ledger, "a row before the vehicle")
        lane.vehicle_busy = True
        held = [await lane.event() for _ in range(3)]
        await asyncio.sleep(GIVE_WAY_MAX_S / 2)
        assert not set(held) & set(centre.ledger), "published while a vehicle's C6 was due"
        lane.vehicle_busy = False
        await until(lambda: set(held) <= set(centre.ledger), "the held rows, once the vehicle is done")


async def test_a_lane_that_never_stops_being_busy_still_drains_its_outbox(lane: Lane, centre: Centre) -> None:
    lane.vehicle_busy = True  # a queue of vehicles, one after the other
    async with uplink_running(lane):
        seqs = [await lane.event() for _ in range(12)]  # more than the window (8)
        await until(lambda: set(seqs) <= set(centre.ledger), "every row, giving way at most 0.2 s at a time")
        await lane.unacked_becomes([])


# -- (b) a centre that never acks: nothing is delivered, rows go up again ------------------------

async def test_without_acks_nothing_is_marked_delivered_and_rows_are_sent_again_after_the_ack_timeout(
        lane: Lane, centre: Centre) -> None:
    centre.acking = False
    async with uplink_running(lane):
        seqs = [await lane.event() for _ in range(3)]
        await until(lambda: len(centre.tx) >= 3, "the first copies")
        first_at = asyncio.get_running_loop().time()
        await until(lambda: len(centre.tx) >= 6, "second copies after the ack timeout", timeout=ACK_TIMEOUT_S * 5)
        waited = asyncio.get_running_loop().time() - first_at
        assert await lane.unacked() == seqs
    assert waited >= ACK_TIMEOUT_S * 0.8, f"sent again after {waited:.2f} s, before the ack timeout"
    assert [m["seq"] for m in centre.tx[:6]] == seqs + seqs
    assert centre.tx[0]["tx_uuid"] == centre.tx[3]["tx_uuid"]  # the same row, not a new one


async def test_an_ack_of_the_unknown_copy_never_marks_the_row_the_lane_settled_during_an_outage(
        lane: Lane, centre: Centre, relay: Relay, caplog: pytest.LogCaptureFixture) -> None:
    # The centre's ack of an unknown copy can reach the lane after the lane settled the row
    # (a C8 re-fetch while its cable was out): the broker keeps it for the lane's session.
    # The ack names the seq as unknown at the centre, so the settled copy waits for its own.
    centre.acking = False
    async with uplink_running(lane):
        seq = (await lane.charge(unknown=True)).seq
        await until(lambda: centre.ledger.get(seq, {}).get("state") == "unknown", "the unknown copy at the centre")
        relay.blocked = True
        relay.cut()
        await until(lambda: not lane.service.connected, "the lane saw its link drop")
        b5 = B5Result(tac=bytes.fromhex("5e2f8c01"), balance_after=96500)
        await lane.journal(lambda mj: mj.journal.resolve_unknown(seq, b5, wall()))
        relay.blocked = False
        await until(lambda: centre.ledger[seq]["state"] == "charged", "the settled copy after the reconnect")
        with caplog.at_level(logging.INFO, logger="laned"):
            await centre.ack(AckStream.TX, seq, seq, unknown=(seq,))  # the unknown copy's ack, late
            await until(lambda: f"is for the unknown copy of seqs [{seq}]" in caplog.text, "the late ack taken")
        assert await lane.unacked() == [seq]  # not marked on the unknown copy's ack
        await centre.ack(AckStream.TX, seq, seq)  # the settled copy's ack names no unknown seq
        await lane.unacked_becomes([])
    assert centre.nonconforming == []


# -- (c) the broker stops and comes back empty: nothing unacknowledged is lost ---------------------

async def test_after_a_broker_restart_without_persistence_every_unacked_row_arrives(
        lane: Lane, centre: Centre, broker: MosquittoBroker) -> None:
    async with uplink_running(lane):
        acked = [await lane.event() for _ in range(5)]
        await until(lambda: not lane.service.in_flight() and set(acked) <= set(centre.ledger),
                    "the rows before the outage, acknowledged")
        centre.acking = False  # the centre stores the next rows but its acks are lost in the outage
        in_flight = [await lane.event() for _ in range(3)]
        await until(lambda: set(in_flight) <= set(centre.ledger), "the unacknowledged rows at the centre")
        await broker.stop()
        await until(lambda: not lane.service.connected, "the lane saw the link drop")
        during = [await lane.event() for _ in range(4)]
        during.append((await lane.charge()).seq)
        centre.acking = True
        await broker.start()  # the same port, persistence off: no session, no queued message
        await until(lambda: lane.service.connected, "the lane reconnected")
        after = [await lane.event() for _ in range(3)]
        expected = acked + in_flight + during + after
        await until(lambda: set(centre.ledger) == set(expected), "every row at the centre after the restart")
        await until(lambda: not lane.service.in_flight(), "every row acknowledged")
        await lane.unacked_becomes([])
    assert sorted(centre.ledger) == await lane.all_seqs(), "the centre's ledger differs from the journal"
    copies = Counter(m["seq"] for m in centre.tx)
    # The rows in flight at the outage went up again after the reconnect (the centre
    # de-duplicates them by seq); the rows it had acknowledged did not.
    assert all(copies[seq] >= 2 for seq in in_flight), copies
    assert all(copies[seq] == 1 for seq in acked), copies
    # What waited through the outage went up several rows per message, on tx/batch.
    assert centre.batches >= 1
    assert centre.ledger[during[-1]]["state"] == "charged"
    assert centre.nonconforming == []


# -- (d) the centre's answer settles an unknown row; the result goes up and is acked ---------------

async def test_a_reconcile_answer_settles_an_unknown_row_and_its_result_is_acknowledged(
        lane: Lane, centre: Centre) -> None:
    async with uplink_running(lane):
        # Two charged rows first, so the transaction's seq (what the result carries on the
        # wire and the centre acks) differs from the result's own seq in the journal.
        for _ in range(2):
            await lane.charge()
        unknown = await lane.charge(unknown=True)
        await until(lambda: unknown.seq in centre.ledger, "the unknown row at the centre")
        assert centre.ledger[unknown.seq]["state"] == "unknown"
        assert centre.ledger[unknown.seq]["reconcile_required"] is True
        await until(lambda: unknown.seq not in lane.service.in_flight(), "the unknown row acknowledged")
        answer = {"lane_id": LANE, "answer_id": str(uuid.uuid4()), "seq": unknown.seq, "tx_uuid": unknown.uuid,
                  "outcome": "charged", "tac": "5e2f8c01", "amount": 3500, "balance_after": 500,
                  "decided_at": wall().isoformat(timespec="seconds")}
        await centre.send("reconcile", json.dumps(answer).encode())
        await until(lambda: len(centre.results) >= 1, "the reconciliation result at the centre")
        await until(lambda: centre.ledger[unknown.seq]["state"] == "charged", "the settled row sent again")
        await until(lambda: not lane.service.in_flight(AckStream.RECONCILE), "the result acknowledged")
        rows = await lane.writer.submit_async(lambda mj: mj.journal.reconcile_after(0, 10))
        entry = await lane.writer.submit_async(lambda mj: mj.journal.get(unknown.seq))
    result = centre.results[0]
    assert unknown.seq == 3
    assert (result["seq"], result["tx_uuid"], result["outcome"], result["settled_by"], result["result"]) == (
        unknown.seq, unknown.uuid, str(ReconcileOutcome.CHARGED), "centre", "applied")
    assert rows == []  # nothing of the reconcile stream waits any more
    assert entry.state is TxState.CHARGED and entry.reconciled and entry.b5.tac == bytes.fromhex("5e2f8c01")
    assert centre.ledger[unknown.seq]["reconciled"] is True
    assert centre.nonconforming == []


# -- (e) the retained state: online after connect, offline by the last will ------------------------

async def test_the_retained_state_is_online_after_connect_and_offline_by_the_last_will(
        lane: Lane, centre: Centre, relay: Relay, broker: MosquittoBroker, pki: Pki) -> None:
    async with uplink_running(lane):
        await until(lambda: any(s["state"] == "online" for s in centre.states), "state online at the centre")
        centre.acking = True
        relay.cut()  # the cable is pulled: no DISCONNECT, the broker publishes the will
        await until(lambda: centre.states[-1]["state"] == "offline", "the last will (offline) at the centre")
        will = centre.states[-1]
        await until(lambda: lane.service.connected and centre.states[-1]["state"] == "online",
                    "online again after the lane reconnected")
    assert will == {"lane_id": LANE, "state": "offline", "reason": "connection lost (last will)"}
    # A newcomer reads the retained state: after the clean stop above, laned's own "offline".
    context = client_tls_context(pki.ca_cert, pki.client(CENTRE).cert, pki.client(CENTRE).key)
    async with aiomqtt.Client(broker.host, broker.port, tls_context=context, protocol=aiomqtt.ProtocolVersion.V5,
                              timeout=3) as newcomer:
        await newcomer.subscribe(topic("state"), qos=1)
        async with asyncio.timeout(T):
            message = await anext(aiter(newcomer.messages))
    retained = json.loads(message.payload)  # type: ignore[arg-type]
    assert message.retain and retained["state"] == "offline" and retained["reason"] == "laned stopped"


# -- (f) a malformed ack is dropped and logged; the link goes on ------------------------------------

async def test_a_malformed_ack_is_dropped_and_logged_and_the_link_keeps_working(
        lane: Lane, centre: Centre, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="laned.uplink")
    centre.acking = False
    async with uplink_running(lane):
        seq = await lane.event()
        await until(lambda: seq in centre.ledger, "the row at the centre")
        await centre.send("tx/ack", b'{"lane_id": "G0001-01", "stream": "tx", "first_seq": "one", "last_seq": 1}')
        await centre.send("tx/ack", b"not json at all")
        await centre.send("tx/ack", TxAck(lane_id="G0001-02", stream=AckStream.TX, first_seq=seq,
                                          last_seq=seq).to_json().encode())
        await until(lambda: lane.service.dropped >= 3, "the three bad acks dropped")
        assert await lane.unacked() == [seq] and lane.service.connected
        await centre.ack(AckStream.TX, seq, seq)  # a good ack after the bad ones still works
        await until(lambda: not lane.service.in_flight(), "the row acknowledged")
        await lane.unacked_becomes([])
    dropped = [r.getMessage() for r in caplog.records if "does not conform" in r.getMessage()]
    assert len(dropped) == 3
    assert all(topic("tx/ack") in line for line in dropped)
    assert "$.first_seq" in dropped[0] and "not JSON" in dropped[1] and "$.lane_id" in dropped[2]


# -- (g) alarms go up as they change, with a health snapshot -------------------------------------------

async def test_an_alarm_raised_and_cleared_on_the_lane_reaches_the_centre_with_a_health_snapshot(
        lane: Lane, centre: Centre, monitor: HealthMonitor) -> None:
    async with uplink_running(lane):
        await until(lambda: len(centre.health) >= 1, "the first health snapshot")
        monitor.lane_alarm(RaiseAlarm("follow_car", "vehicle under the open arm"))
        await until(lambda: [a["change"] for a in centre.alarms] == ["raised"], "the raise at the centre")
        await until(lambda: any(h["alarms"] for h in centre.health), "a health snapshot listing the alarm")
        monitor.lane_alarm(ClearAlarm("follow_car", "acknowledged"))
        await until(lambda: [a["change"] for a in centre.alarms] == ["raised", "cleared"], "the clear")
    raised = centre.alarms[0]
    assert (raised["code"], raised["kind"], raised["severity"], raised["detail"]) == (
        "follow_car", "event", "major", "vehicle under the open arm")
    assert [a["code"] for h in centre.health for a in h["alarms"]][:1] == ["follow_car"]
    counters = centre.health[-1]["counters"]
    assert counters["link_sessions"] == 1 and {"code": "follow_car", "count": 1} in counters["alarms"]
    assert centre.nonconforming == []


async def test_an_alarm_raised_and_cleared_while_the_cable_was_out_reaches_the_centre_after_it_is_back(
        lane: Lane, centre: Centre, relay: Relay, monitor: HealthMonitor) -> None:
    async with uplink_running(lane):
        await until(lambda: len(centre.health) >= 1, "the first health snapshot")
        relay.blocked = True
        relay.cut()
        await until(lambda: not lane.service.connected, "the lane saw its link drop")
        monitor.lane_alarm(RaiseAlarm("follow_car", "vehicle under the open arm"))
        monitor.lane_alarm(ClearAlarm("follow_car", "acknowledged in the booth"))
        assert centre.alarms == []
        relay.blocked = False
        await until(lambda: [(a["code"], a["change"]) for a in centre.alarms] == [
            ("follow_car", "raised"), ("follow_car", "cleared")], "the raise and the clear, in order, after the outage")
        await until(lambda: centre.health[-1]["counters"]["link_lost"] >= 1, "the lost connection counted")
    assert centre.alarms[0]["detail"] == "vehicle under the open arm"
    assert 0 < (centre.expiry["alarm"] or 0) <= 86_400
    assert centre.nonconforming == []


# -- (h) a broker whose ACL refuses the lane's tx: the PUBACK says so, an alarm names the topic -------

async def reload_acl(broker: MosquittoBroker, *, deny_write: str | None = None) -> None:
    """Rewrite the broker's ACL (without the lane's write grant of ``deny_write``) and have
    it reloaded (SIGHUP); return once the broker has logged the reload."""
    grant = f"pattern write {TOPIC_ROOT}/%u/{deny_write}"
    lines = [line for line in acl_text().splitlines() if line != grant]
    assert deny_write is None or len(lines) < len(acl_text().splitlines()), "no such grant in the ACL"
    broker.acl_path.write_text("\n".join(lines) + "\n")
    reloads = broker.log_text().count("Reloading config")
    assert broker.pid is not None
    os.kill(broker.pid, signal.SIGHUP)
    await until(lambda: broker.log_text().count("Reloading config") > reloads, "the broker reloaded its ACL")


async def test_a_broker_refusing_the_lanes_tx_raises_an_alarm_naming_the_topic_until_its_acl_is_fixed(
        lane: Lane, centre: Centre, broker: MosquittoBroker, monitor: HealthMonitor,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="laned.uplink")
    registry = monitor.registry
    async with uplink_running(lane):
        await reload_acl(broker, deny_write="tx")
        seq = await lane.event()
        await until(lambda: registry.is_active("uplink_publish_refused"), "uplink_publish_refused raised")
        (active,) = [a for a in registry.active() if a.code == "uplink_publish_refused"]
        assert lane.service.connected and seq not in centre.ledger
        await reload_acl(broker)  # the centre fixes its ACL: the row, sent again when its ack is overdue, goes in
        await until(lambda: seq in centre.ledger, "the row at the centre once the ACL lets the lane write tx")
        await until(lambda: not registry.is_active("uplink_publish_refused"), "uplink_publish_refused cleared")
        await lane.unacked_becomes([])
    assert active.detail == f"{topic('tx')}: Not authorized (0x87)"
    refusals = [r.getMessage() for r in caplog.records if "refuses what this lane publishes" in r.getMessage()]
    assert len(refusals) == 1 and topic("tx") in refusals[0]
    assert lane.link.stats.refused >= 1


# -- the daemon: run_lane with [uplink] -------------------------------------------------------------

DAEMON_LANE = "G0001-0201-03"
FEE_TABLE = str(resources.files("laned") / "data" / "fee_table_sim.toml")


def daemon_config(tmp_path: Path, rsu_port: str, pki: Pki, broker_port: int) -> Config:
    creds = pki.client(DAEMON_LANE)
    return parse_config({
        "lane": {"lane_id": DAEMON_LANE, "network": "3701", "station": "0201", "lane_number": 3,
                 "direction": "exit"},
        "rsu": {"profile": "national", "transport": "serial", "port": rsu_port, "baud": 115200},
        "journal": {"path": str(tmp_path / "journal.db")},
        "fee_table": {"path": FEE_TABLE},
        "uplink": {"host": "127.0.0.1", "port": broker_port, "ca": str(pki.ca_cert), "cert": str(creds.cert),
                   "key": str(creds.key), "keepalive_s": 5, "window": 16, "ack_timeout_s": 2,
                   "reconnect_min_s": 0.1, "reconnect_max_s": 0.5, "link_down_alarm_s": 0.5,
                   "health_interval_s": 1},
    })


async def test_the_daemon_sends_a_paid_vehicle_to_the_centre_and_marks_it_delivered_on_the_ack(
        tmp_path: Path, pki: Pki, broker: MosquittoBroker) -> None:
    centre = Centre(broker, pki, lane_id=DAEMON_LANE)
    obu = ObuScenario(obu_id="a1b2c3d4", arrive_at=0.3, balance=120_00)
    async with running(centre.run()), RsuEmulator([obu], profile="national",
                                                  settings=EmulatorSettings(heartbeat_interval=0.5)) as emu:
        await asyncio.wait_for(centre.connected.wait(), T)
        stop = asyncio.Event()
        lane = asyncio.create_task(run_lane(daemon_config(tmp_path, emu.path, pki, broker.port), stop=stop))
        try:
            await until(lambda: any(m["state"] == "charged" for m in centre.tx), "the charge at the centre")
            await until(lambda: len(centre.health) >= 1, "a health snapshot at the centre")
            db = tmp_path / "journal.db"
            await until(lambda: _acked(db) == [1], "the charge marked delivered after the centre's ack")
        finally:
            stop.set()
            await asyncio.wait_for(lane, T)
    assert len(emu.charges) == 1
    assert centre.states[0]["state"] == "online" and centre.states[-1]["state"] == "offline"
    assert centre.health[0]["lane_id"] == DAEMON_LANE and centre.health[0]["checks"]
    # The contract's delivery table: transactions never expire, health snapshots after 120 s.
    assert centre.expiry["tx"] is None and 0 < (centre.expiry["health"] or 0) <= 120
    assert centre.nonconforming == []


async def test_an_unreachable_centre_never_stops_the_lane_and_raises_centre_link_down(
        tmp_path: Path, pki: Pki, broker: MosquittoBroker) -> None:
    await broker.stop()  # nobody listens on the configured port
    obu = ObuScenario(obu_id="a1b2c3d4", arrive_at=0.3, balance=120_00)
    async with RsuEmulator([obu], profile="national", settings=EmulatorSettings(heartbeat_interval=0.5)) as emu:
        stop = asyncio.Event()
        started: list[Any] = []
        lane = asyncio.create_task(run_lane(daemon_config(tmp_path, emu.path, pki, broker.port), stop=stop,
                                            started=started.append))
        try:
            await until(lambda: len(emu.charges) == 1, "the vehicle charged while the centre is unreachable")
            await until(lambda: bool(started) and started[0].health.registry.is_active("centre_link_down"),
                         "centre_link_down raised")
        finally:
            stop.set()
            executor = await asyncio.wait_for(lane, T)
    assert [r["state"] for r in read_journal(tmp_path / "journal.db")] == ["charged"]
    assert _acked(tmp_path / "journal.db") == []
    raised = [c for c in executor.health.changes if c.code == "centre_link_down"]
    assert raised and "cannot connect" in raised[0].alarm.detail


async def test_a_bug_in_the_uplink_task_ends_the_daemon_naming_the_task(
        tmp_path: Path, pki: Pki, broker: MosquittoBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(self: UplinkService) -> None:
        raise RuntimeError("a bug in the uplink")

    monkeypatch.setattr(UplinkService, "run", broken)
    async with RsuEmulator([], profile="national", settings=EmulatorSettings(heartbeat_interval=0.5)) as emu:
        with pytest.raises(LaneTaskFailed) as failed:
            await asyncio.wait_for(run_lane(daemon_config(tmp_path, emu.path, pki, broker.port)), T)
    assert failed.value.task == "uplink" and "a bug in the uplink" in str(failed.value)


def _acked(db: Path) -> list[int]:
    con = sqlite3.connect(db)
    try:
        return [r[0] for r in con.execute("SELECT seq FROM transactions WHERE acked_unix IS NOT NULL ORDER BY seq")]
    finally:
        con.close()
