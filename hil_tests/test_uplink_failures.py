"""The centre link under failure (issue 10, items 9 and 10): nothing lost, nothing doubled.

Every test runs a real Mosquitto (TLS client certificates, the per-lane ACL), the real
reference centre (:class:`laned.centre.Centre`: contract checks, SQLite ledger, range acks),
the real journal, and the lane's uplink — :class:`UplinkService` as ``laned.app`` builds it,
or ``laned run`` as a child process where the lane itself must die. The lane reaches the
broker through :class:`tcp_proxy.TcpProxy`, the unkind network.

Whatever the failure, each test ends with the same check (:func:`assert_ledger_is_the_journal`):
every final journal row is at the centre with the same ``tx_uuid`` and the same state, the
centre holds nothing else (no gaps, no ``(lane, seq)`` conflicts), and the journal's outbox
backlog is 0 (every row marked delivered by a ``tx/ack``).

Where the network (or the broker) comes back, the time to the first row stored at the
centre is printed (``pytest -s``; the figures are in docs/reliability.md, "Centre link")
and only bounded by 60 s, the issue's correctness bound: times are measured, not asserted.
Nothing in the uplink is time-bounded except the back-off (``reconnect_max_s``) and the ack
timeout: a broker away 20 s here behaves as one away for hours, with a longer backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from lane_fixtures import LanedProcess, config_data, read_journal, to_toml, prefill_backlog
from mosquitto_broker import TOPIC_ROOT, MosquittoBroker
from mqtt_pki import CENTRE, Pki, make_pki
from tcp_proxy import TcpProxy
from laned.centre import BrokerSettings, Centre, CentreSettings, Ledger
from laned.config import load_config
from laned.journal import JournalWriter
from laned.journal.records import B5Result, TransactionIntent
from laned.sim.rsu_emulator import EmulatorSettings, RsuEmulator
from laned.uplink.link import LinkSettings
from laned.uplink.reporting import LaneView
from laned.uplink.service import UplinkService, UplinkSettings
from laned.uplink.tls import client_tls_context

pytestmark = [pytest.mark.hil, pytest.mark.timeout(120)]

LANE = "G0001-0201-03"  # the lane id of lane_fixtures (laned run) and of the lane's certificate
T = 20.0  # one waited-for condition (a drain of a few hundred rows on a loaded 2-core box)
FIRST_DELIVERY_BOUND_S = 60.0  # the issue: the first message delivered <= 60 s after the network returns
KEEPALIVE_S = 2  # a blackholed connection is found within 1.5 keep-alives (3 s)
ACK_TIMEOUT_S = 2.0
PRODUCE_EVERY_S = 0.05  # the lane journals a row every 50 ms while the network misbehaves
TZ = dt.timezone(dt.timedelta(hours=8))


def wall() -> dt.datetime:
    return dt.datetime.now(TZ)


async def until(condition: Callable[[], Any], what: str, timeout: float = T) -> None:
    """Wait until ``condition()`` holds (polled every 20 ms), or fail naming ``what``."""
    try:
        async with asyncio.timeout(timeout):
            while not condition():  # noqa: ASYNC110 - the centre's ledger and the journal have no event
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"not within {timeout} s: {what}") from None


# -- the end check -------------------------------------------------------------------------------

def journal_final_rows(db: Path) -> dict[int, tuple[str, str]]:
    return {r["seq"]: (r["uuid"], r["state"]) for r in read_journal(db) if r["state"] != "intent"}


def centre_rows(ledger: Ledger, lane_id: str = LANE) -> dict[int, tuple[str, str]]:
    return {t.seq: (t.tx_uuid, t.state) for t in ledger.transactions(lane_id, limit=10_000_000)}


def backlog(db: Path) -> int:
    """Final rows not yet acked by the centre: counted by SQLite, not read out row by row —
    the lane's uplink runs on this test's event loop, and ``until`` asks every 20 ms while
    thousands of rows drain."""
    if not db.exists():
        return 0
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2.0)
    try:
        (count,) = conn.execute("SELECT COUNT(*) FROM transactions WHERE state != 'intent' "
                                "AND acked_unix IS NULL").fetchone()
    except sqlite3.OperationalError as err:
        if "no such table" in str(err):
            return 0
        raise
    finally:
        conn.close()
    return int(count)


def in_step(ledger: Ledger, db: Path) -> bool:
    """The ledger equal to the journal: compared row by row only once nothing waits."""
    return backlog(db) == 0 and centre_rows(ledger) == journal_final_rows(db)


def assert_ledger_is_the_journal(ledger: Ledger, db: Path) -> dict[str, int]:
    """The end check of every scenario (module docstring); returns the centre's counters."""
    journal, centre = journal_final_rows(db), centre_rows(ledger)
    missing = sorted(set(journal) - set(centre))
    extra = sorted(set(centre) - set(journal))
    differ = sorted(s for s in set(journal) & set(centre) if journal[s] != centre[s])
    counts = ledger.counts(LANE)
    assert (missing, extra, differ) == ([], [], []), (
        f"centre and journal differ: missing at the centre {missing[:20]}, unknown to the journal {extra[:20]}, "
        f"other uuid or state {[(s, journal[s], centre[s]) for s in differ[:5]]}")
    assert ledger.conflicts(LANE) == [], "a (lane, seq) the centre holds under two uuids"
    assert counts.gaps == () and counts.stored == len(journal), counts
    assert backlog(db) == 0, "rows the centre holds but the journal still waits for"
    figures = {"rows": len(journal), "received": counts.received, "duplicates_dropped": counts.duplicates_dropped,
               "missing": len(missing), "conflicts": counts.conflicts}
    print(f"\nledger == journal: {figures}")
    return figures


async def first_delivery(ledger: Ledger, since: float, what: str, *, above: int) -> float:
    """Seconds from ``since`` (time.monotonic) until the centre holds a seq above ``above``:
    a row journalled after the link failed, so one the lane sent over a new connection
    (a row the centre had received before the failure and commits after it does not count)."""
    await until(lambda: (ledger.highest_seq(LANE) or 0) > above, f"a row delivered after {what}",
                timeout=FIRST_DELIVERY_BOUND_S)
    took = time.monotonic() - since
    print(f"\n{what}: first row at the centre {took:.2f} s after the network returned")
    return took


# -- the lane (the uplink task over the real journal) ---------------------------------------------

@dataclass
class Lane:
    db: Path
    writer: JournalWriter
    service: UplinkService

    async def journal(self, op: Callable[[Any], Any]) -> Any:
        result = await self.writer.submit_async(op)
        self.service.notify()  # as app.NotifyingJournal does after each journal operation
        return result

    async def last_seq(self) -> int:
        return int(await self.writer.submit_async(lambda mj: mj.journal.last_seq()))

    async def event(self) -> int:
        entry = await self.journal(lambda mj: mj.journal.record_event("follow_car", wall(), reason="follow_car"))
        return int(entry.seq)

    async def charge(self) -> int:
        intent = _intent()
        entry = await self.journal(lambda mj: mj.journal.record_intent(intent, wall()))
        b5 = B5Result(tac=bytes.fromhex("674030a0"), balance_after=96500, trans_time=intent.purchase_time)
        done = await self.journal(lambda mj: mj.journal.complete_charge(entry.seq, b5, wall()))
        return int(done.seq)

    async def traffic(self) -> None:
        """Rows journalled all the time, a charge every fifth, until cancelled (the lane keeps charging)."""
        n = 0
        while True:
            n += 1
            await (self.charge() if n % 5 == 0 else self.event())
            await asyncio.sleep(PRODUCE_EVERY_S)  # the pace of the traffic, not a wait for an effect


def _intent() -> TransactionIntent:
    return TransactionIntent(amount=3500, purchase_time=wall().replace(tzinfo=None, microsecond=0),
                             obu_id=bytes.fromhex("a1fe0033"), plate="鲁A12345", card_network="3701",
                             card_number="2301000012345678", vehicle_class=1, fee=3500)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki", lanes=(LANE,))


@pytest.fixture
async def net(broker: MosquittoBroker) -> AsyncIterator[TcpProxy]:
    async with TcpProxy(broker.port) as proxy:
        yield proxy


def centre_settings(broker: MosquittoBroker, pki: Pki, db: Path) -> CentreSettings:
    creds = pki.client(CENTRE)
    # The centre's own back-off capped at 1 s: these tests time the lane's return, not the centre's.
    return CentreSettings(broker=BrokerSettings(host=broker.host, port=broker.port, ca=pki.ca_cert, cert=creds.cert,
                                                key=creds.key, timeout_s=3.0),
                          db=db, reconnect_min_s=0.2, reconnect_max_s=1.0)


@contextlib.asynccontextmanager
async def lane_uplink(tmp_path: Path, pki: Pki, net: TcpProxy, *, reconnect_min_s: float = 0.2,
                      reconnect_max_s: float = 1.0, window: int = 32) -> AsyncIterator[Lane]:
    """The journal and the uplink task, connected through ``net``; the task's failure fails the test."""
    db = tmp_path / "journal.db"
    writer = JournalWriter.open(db, LANE, now=wall())
    await writer.astart()
    creds = pki.client(LANE)
    service = UplinkService.build(
        LinkSettings(lane_id=LANE, host="127.0.0.1", port=net.port, ca=pki.ca_cert, cert=creds.cert, key=creds.key,
                     keepalive_s=KEEPALIVE_S, session_expiry_s=600, max_inflight=window),
        UplinkSettings(window=window, ack_timeout_s=ACK_TIMEOUT_S, reconnect_min_s=reconnect_min_s,
                       reconnect_max_s=reconnect_max_s, backlog_capacity=100_000, health_interval_s=5.0),
        writer=writer, monitor=None, lane=LaneView(etc_open=lambda: True, closed_by=dict), wall=wall)
    lane = Lane(db, writer, service)
    task = asyncio.create_task(service.run(), name="uplink")
    try:
        await until(lambda: service.connected or task.done(), "the lane connected to the broker")
        yield lane
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, T)
        await writer.aclose()
    if not task.cancelled() and task.exception() is not None:
        raise AssertionError(f"the uplink task failed: {task.exception()!r}")


@contextlib.asynccontextmanager
async def running(work: Any) -> AsyncIterator[None]:
    task = asyncio.create_task(work)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def traffic(lane: Lane) -> AsyncIterator[None]:
    """The lane journalling while the block runs (:meth:`Lane.traffic`). On the way out its
    last write, which the cancellation does not stop (laned.journal.writer), has committed
    and the uplink knows of it — else the end check could pass before that row exists and
    fail once it does."""
    async with running(lane.traffic()):
        yield
    await lane.writer.submit_async(lambda mj: None)  # lane operations run in order: the last one is done
    lane.service.notify()


# -- 1. the broker away a long while, the lane charging meanwhile ---------------------------------

OUTAGE_S = 120.0  # "minutes": past the back-off's 30 s cap, so the lane retries at the cap

@pytest.mark.timeout(300)
async def test_a_broker_stopped_a_long_while_loses_nothing_and_the_first_row_goes_up_within_the_bound(
        tmp_path: Path, pki: Pki, broker: MosquittoBroker, net: TcpProxy) -> None:
    # The production back-off (1 s doubling to 30 s, ±20 %) and an outage of two minutes, so
    # that the lane has been waiting at the back-off's cap (reached after ~31 s) when the
    # broker returns: the time to the first row is the one a real lane shows after minutes.
    async with Centre(centre_settings(broker, pki, tmp_path / "centre.db")) as centre, \
            lane_uplink(tmp_path, pki, net, reconnect_min_s=1.0, reconnect_max_s=30.0) as lane:
        async with traffic(lane):
            await until(lambda: centre.ledger.counts(LANE).stored >= 20, "rows at the centre before the outage")
            await broker.stop()
            await until(lambda: not lane.service.connected, "the lane saw the broker go")
            above = await lane.last_seq()
            outage_start, attempts = time.monotonic(), net.connections
            await until(lambda: time.monotonic() - outage_start >= OUTAGE_S, f"{OUTAGE_S:g} s of outage",
                        timeout=OUTAGE_S + 10)
            during, attempts = backlog(lane.db), net.connections - attempts
            await broker.start()
            back = time.monotonic()
            await first_delivery(centre.ledger, back, f"broker back after {OUTAGE_S:g} s", above=above)
            print(f"{attempts} connection attempts during the {OUTAGE_S:g} s outage (back-off 1 s doubling to 30 s)")
        # Two minutes of rows (~2,400) to drain: may take longer than T.
        await until(lambda: in_step(centre.ledger, lane.db), "the centre's ledger equal to the journal", timeout=90)
        figures = assert_ledger_is_the_journal(centre.ledger, lane.db)
    assert during > 100, f"only {during} rows waited during the outage: the lane did not keep journalling"
    assert figures["rows"] > during


# -- 2. the broker crashes holding rows it PUBACKed but the centre never stored -------------------

async def test_a_broker_killed_with_rows_puback_ed_but_not_at_the_centre_loses_nothing(
        tmp_path: Path, pki: Pki, broker: MosquittoBroker, net: TcpProxy) -> None:
    centre_db = tmp_path / "centre.db"
    async with lane_uplink(tmp_path, pki, net, window=64) as lane:
        async with Centre(centre_settings(broker, pki, centre_db)) as centre:
            for _ in range(10):
                await lane.event()
            await until(lambda: in_step(centre.ledger, lane.db), "the first rows acknowledged")
        # The centre is away: its persistent session makes the broker take (PUBACK) and queue
        # what the lane publishes; nothing acks it.
        async with observed(broker, pki) as seen:
            queued = [await lane.event() for _ in range(40)]
            await until(lambda: set(queued) <= seen.seqs, "the broker took every row (an observer got them)")
            assert set(queued) <= set(lane.service.in_flight()) and backlog(lane.db) == len(queued)
        await broker.kill()  # SIGKILL, persistence off: the queue for the centre is gone
        await broker.start()
        back = time.monotonic()
        async with Centre(centre_settings(broker, pki, centre_db)) as centre:
            await first_delivery(centre.ledger, back, "broker killed and restarted", above=10)
            await until(lambda: in_step(centre.ledger, lane.db), "the centre's ledger equal to the journal")
            figures = assert_ledger_is_the_journal(centre.ledger, lane.db)
    assert figures["rows"] == 50


# -- 3. the network misbehaves while rows are in flight -------------------------------------------

@pytest.mark.parametrize("fault", ["reset", "delay", "slice", "blackhole"])
async def test_a_network_that_resets_delays_slices_or_swallows_in_flight_publishes_loses_nothing(
        tmp_path: Path, pki: Pki, broker: MosquittoBroker, net: TcpProxy, fault: str) -> None:
    async with Centre(centre_settings(broker, pki, tmp_path / "centre.db")) as centre, \
            lane_uplink(tmp_path, pki, net) as lane:
        async with traffic(lane):
            await until(lambda: centre.ledger.counts(LANE).stored >= 20, "rows at the centre before the fault")
            await until(lambda: bool(lane.service.in_flight()), "rows in flight")
            sessions = lane.service.link.stats.sessions
            above = await lane.last_seq()  # the delay and slice cases; reset and blackhole read it after the cut
            if fault == "reset":
                net.reset()
                # Read after the reset: a row journalled from here on can only reach the centre
                # over a new connection (one journalled before could still go on the old one).
                above = await lane.last_seq()
                back = time.monotonic()  # the network is good again at once: only the connection died
                await first_delivery(centre.ledger, back, "connections reset", above=above)
                await until(lambda: lane.service.link.stats.sessions > sessions, "the lane reconnected")
            elif fault == "blackhole":
                net.blackhole()
                cut, accepted = time.monotonic(), net.connections
                above = await lane.last_seq()  # as for reset: from here on only a new connection delivers
                await until(lambda: not lane.service.connected, "the keep-alive found the dead connection")
                print(f"\nblackhole: the lane gave the connection up after {time.monotonic() - cut:.2f} s "
                      f"(keep-alive {KEEPALIVE_S} s)")
                await until(lambda: net.connections > accepted, "a reconnect attempt swallowed too")
                net.pass_()
                back = time.monotonic()
                await first_delivery(centre.ledger, back, "blackhole lifted", above=above)
                await until(lambda: lane.service.link.stats.sessions > sessions, "the lane reconnected")
            else:
                net.delay(0.3) if fault == "delay" else net.slice(7)
                stored = centre.ledger.counts(LANE).stored
                await until(lambda: centre.ledger.counts(LANE).stored >= stored + 40, f"rows delivered ({fault})")
                net.pass_()
                assert lane.service.link.stats.sessions == sessions, f"{fault}: the connection was given up"
        await until(lambda: in_step(centre.ledger, lane.db), "the centre's ledger equal to the journal")
        assert_ledger_is_the_journal(centre.ledger, lane.db)


# -- 4. laned itself killed (-9) while draining, and started again on the same journal -------------

BACKLOG_ROWS = 3000


async def test_laned_killed_while_draining_its_backlog_resumes_on_the_same_journal_and_loses_nothing(
        tmp_path: Path, pki: Pki, broker: MosquittoBroker, net: TcpProxy) -> None:
    db = tmp_path / "journal.db"
    prefill_backlog(db, LANE, BACKLOG_ROWS, wall)
    creds = pki.client(LANE)
    data = config_data(db, "", log={"level": "info"})
    data["uplink"] = {"host": "127.0.0.1", "port": net.port, "ca": str(pki.ca_cert), "cert": str(creds.cert),
                      "key": str(creds.key), "keepalive_s": 5, "window": 64, "ack_timeout_s": 5,
                      "reconnect_min_s": 0.2, "reconnect_max_s": 1.0, "health_interval_s": 5}
    async with RsuEmulator([], profile="national", settings=EmulatorSettings(heartbeat_interval=0.5)) as emu, \
            Centre(centre_settings(broker, pki, tmp_path / "centre.db")) as centre:
        data["rsu"]["port"] = emu.path
        config = tmp_path / "laned.toml"
        config.write_text(to_toml(data), encoding="utf-8")
        load_config(config)  # valid as laned run reads it
        daemon = LanedProcess(config, tmp_path / "laned.log")
        try:
            await daemon.start()
            await until(lambda: daemon.alive() and centre.ledger.counts(LANE).stored >= 200,
                        "part of the backlog at the centre", timeout=30)
            await daemon.kill()
            left = backlog(db)
            assert 0 < left < BACKLOG_ROWS, f"{left} rows waiting at the kill: not killed while draining"
            killed_at = centre.ledger.counts(LANE).stored
            await daemon.start()
            await until(lambda: daemon.alive() and in_step(centre.ledger, db),
                        "the centre's ledger equal to the journal after the restart", timeout=60)
            assert await daemon.stop() == 0
        finally:
            await daemon.ensure_dead()
        figures = assert_ledger_is_the_journal(centre.ledger, db)
    print(f"\nlaned -9: {killed_at} rows at the centre and {left} waiting in the journal at the kill")
    assert figures["rows"] == BACKLOG_ROWS


# -- 5. a broker path that delivers every lane publish more than once ------------------------------

@dataclass
class Seen:
    seqs: set[int]
    payloads: list[bytes]


@contextlib.asynccontextmanager
async def observed(broker: MosquittoBroker, pki: Pki) -> AsyncIterator[Seen]:
    """An observer with the centre's certificate (clean session): every row the broker takes (tx, tx/batch)."""
    seen = Seen(set(), [])
    context = client_tls_context(pki.ca_cert, pki.client(CENTRE).cert, pki.client(CENTRE).key)
    async with aiomqtt.Client(broker.host, broker.port, tls_context=context, protocol=aiomqtt.ProtocolVersion.V5,
                              identifier="observer", timeout=3) as client:
        await client.subscribe([(f"{TOPIC_ROOT}/{LANE}/tx", 1), (f"{TOPIC_ROOT}/{LANE}/tx/batch", 1)])

        async def read() -> None:
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                seen.payloads.append(message.payload)
                payload = json.loads(message.payload)
                seen.seqs.update(int(row["seq"]) for row in payload.get("transactions", [payload]))

        async with running(read()):
            yield seen


REPLAYS = 2  # every lane publish reaches the centre 1 + REPLAYS times


async def replay_every_publish(broker: MosquittoBroker, pki: Pki, subscribed: asyncio.Event) -> None:
    """A second publisher with the lane's own certificate (the ACL lets the lane's CN write its
    ``tx`` and ``tx/batch``) that republishes every lane publish REPLAYS times, marked so it is
    not replayed again. ``subscribed`` is set once it listens: what the lane publishes before
    would never be replayed."""
    centre, lane = pki.client(CENTRE), pki.client(LANE)
    listen_tls = client_tls_context(pki.ca_cert, centre.cert, centre.key)
    speak_tls = client_tls_context(pki.ca_cert, lane.cert, lane.key)
    async with aiomqtt.Client(broker.host, broker.port, tls_context=listen_tls, protocol=aiomqtt.ProtocolVersion.V5,
                              identifier="replay-listener", timeout=3) as listener, \
            aiomqtt.Client(broker.host, broker.port, tls_context=speak_tls, protocol=aiomqtt.ProtocolVersion.V5,
                           identifier=f"replay-{LANE}", timeout=3) as speaker:
        await listener.subscribe([(f"{TOPIC_ROOT}/{LANE}/tx", 1), (f"{TOPIC_ROOT}/{LANE}/tx/batch", 1)])
        subscribed.set()
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        props.UserProperty = [("replayed", "1")]
        props.PayloadFormatIndicator = 1
        props.ContentType = "application/json"
        async for message in listener.messages:
            user = dict(getattr(message.properties, "UserProperty", []) or [])
            if user.get("replayed"):
                continue
            assert isinstance(message.payload, bytes)
            for _ in range(REPLAYS):
                await speaker.publish(message.topic.value, message.payload, qos=1, properties=props)


async def test_a_path_that_delivers_every_publish_three_times_is_stored_once_and_counted_as_duplicates(
        tmp_path: Path, pki: Pki, broker: MosquittoBroker, net: TcpProxy) -> None:
    subscribed = asyncio.Event()
    async with Centre(centre_settings(broker, pki, tmp_path / "centre.db")) as centre, \
            running(replay_every_publish(broker, pki, subscribed)):
        await asyncio.wait_for(subscribed.wait(), T)
        async with lane_uplink(tmp_path, pki, net) as lane:
            for n in range(150):
                await (lane.charge() if n % 5 == 0 else lane.event())
            await until(lambda: in_step(centre.ledger, lane.db) and centre.ledger.counts(LANE).received >= 450,
                        "every row and its replays at the centre")
        figures = assert_ledger_is_the_journal(centre.ledger, lane.db)
        counts = centre.ledger.counts(LANE)
    assert figures["rows"] == 150 and counts.updated == 0
    assert counts.received == counts.stored + counts.duplicates_dropped
    assert counts.duplicates_dropped >= REPLAYS * 150, counts
