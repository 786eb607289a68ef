"""The uplink service over a stand-in broker: what the centre gets after an outage (the
alarm changes made while the link was down, in order), the periodic health snapshot and its
counters, and a journal that fails on the uplink's reads without stopping anything.

The service (:class:`laned.uplink.service.UplinkService`) runs for real, with a real
journal (SQLite in tmp_path), the daemon's health monitor and alarm registry, and a link
whose broker only records what it is sent (:class:`Broker`): the lane's cable can be
pulled and plugged in again. Waiting is on conditions with deadlines, never on sleeps.
"""

from __future__ import annotations

from collections import Counter, deque

import asyncio
import contextlib
import datetime as dt
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from laned.health.alarms import AlarmRegistry
from laned.health.checks import HealthSettings
from laned.health.monitor import HealthMonitor
from laned.journal import Journal, TransactionIntent, TxState
from laned.journal.errors import JournalStorageError
from laned.lane.events import ClearAlarm, RaiseAlarm
from laned.lane.outcomes import Reason
from laned.uplink import service as service_module
from laned.uplink.link import CentreLink, Incoming, LinkDown, LinkSettings, LinkState
from laned.uplink.messages import (
    AckStream, AlarmMsg, EncodedRows, HealthSnapshot, ReconcileAnswer, ReconcileResult, TxAck, UplinkMessage,
)
from laned.uplink.contract import contract, validate
from laned.uplink.reporting import LaneView, alarm_replay
from laned.uplink.service import UplinkService, UplinkSettings

LANE = "G0001-0201-03"
T0 = dt.datetime(2026, 11, 22, 10, 0, tzinfo=dt.UTC)
T = 5.0  # deadline of one waited-for condition; each takes milliseconds
HEALTH_INTERVAL_S = 60.0


async def until(condition: Callable[[], bool], what: str, timeout: float = T) -> None:
    """Wait until ``condition()`` holds (looked at every 5 ms), or fail naming ``what``."""
    try:
        async with asyncio.timeout(timeout):
            while not condition():  # noqa: ASYNC110 - the conditions are the broker's and the registry's state
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"not within {timeout} s: {what}") from None


# -- the stand-ins ----------------------------------------------------------------------------------

class Broker:
    """What the lane's connections reach: up or down, and every message published, in order
    (with the message expiry asked for, None for the contract's)."""

    def __init__(self) -> None:
        self.up = True
        self.published: list[tuple[UplinkMessage, int | None]] = []

    def messages(self, kind: type[UplinkMessage]) -> list[Any]:
        return [m for m, _ in self.published if isinstance(m, kind)]

    def alarms(self) -> list[tuple[str, str]]:
        return [(m.code, str(m.change)) for m in self.messages(AlarmMsg)]

    def rows(self) -> list[dict[str, Any]]:
        """Every transaction row published, batches unpacked."""
        return [p for m in self.messages(EncodedRows) for p in m.payloads]


class FakeSession:
    """One connection: publishing records at the broker; the centre's messages come from ``inbox``."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.inbox: asyncio.Queue[Incoming | None] = asyncio.Queue()
        self.lost = False

    async def publish(self, msg: UplinkMessage, *, correlation_data: bytes | None = None,
                      expiry_s: int | None = None) -> None:
        if self.lost:
            raise LinkDown("publish to etc/v1/…: connection lost")
        msg.to_json()  # encoded as the real session does
        self.broker.published.append((msg, expiry_s))
        await asyncio.sleep(0)  # the PUBACK

    async def publish_all(self, messages: Any) -> None:
        for msg in messages:
            if self.lost:
                raise LinkDown("publish to etc/v1/…: connection lost")
            msg.to_json()
            self.broker.published.append((msg, None))

    async def incoming(self) -> AsyncIterator[Incoming]:
        while (item := await self.inbox.get()) is not None:
            yield item
        raise LinkDown("connection lost: the cable was pulled")

    def cut(self) -> None:
        self.lost = True
        self.inbox.put_nowait(None)


class FakeLink(CentreLink):
    """The centre link with its connection replaced by :class:`FakeSession`."""

    def __init__(self, broker: Broker) -> None:
        files = Path("unused.pem")
        super().__init__(LinkSettings(lane_id=LANE, host="127.0.0.1", port=8883, ca=files, cert=files, key=files),
                         lane_state=lambda: self.service.lane_state(), wall=lambda: T0)
        self.broker = broker
        self.current: FakeSession | None = None
        self.service: UplinkService

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Any]:
        if not self.broker.up:
            raise LinkDown("cannot connect to 127.0.0.1:8883: [Errno 111] Connection refused")
        session = self.current = FakeSession(self.broker)
        await session.publish(self.lane_state())
        self.state = LinkState.UP
        self.stats.sessions += 1
        try:
            yield session
        except LinkDown:
            self.stats.lost += 1
            raise
        finally:
            self.state = LinkState.DOWN

    def pull_cable(self) -> None:
        self.broker.up = False
        if self.current is not None:
            self.current.cut()


class FlakyJournal:
    """The journal as the uplink's operations see it: the methods named in ``failing`` fail
    as a disk with I/O errors makes them fail."""

    def __init__(self, journal: Journal, failing: set[str]) -> None:
        self._journal = journal
        self._failing = failing

    def __getattr__(self, name: str) -> Any:
        if name in self._failing:
            def fail(*args: Any, **kwargs: Any) -> Any:
                raise JournalStorageError(f"{name}: disk I/O error")
            return fail
        return getattr(self._journal, name)


class Writer:
    """The journal writer, running each operation at once (on the loop: a test's journal is small)."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.failing: set[str] = set()

    def submit_async(self, op: Callable[[Any], Any], *, background: bool = False) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        try:
            future.set_result(op(SimpleNamespace(journal=FlakyJournal(self.journal, self.failing))))
        except Exception as err:  # noqa: BLE001 - handed to the awaiting caller, as the writer does
            future.set_exception(err)
        return future


class Scene:
    """A lane's uplink over :class:`FakeLink`, with its journal, health monitor and clock."""

    def __init__(self, path: Path) -> None:
        self.clock = [1000.0]
        self.journal = Journal.open(path, LANE, now=T0)
        self.writer = Writer(self.journal)
        self.broker = Broker()
        self.link = FakeLink(self.broker)
        self.watches = 0  # the service's watch looks at the lane state once per round
        # The lane machine's counters as the health snapshot reads them (a zero is not reported).
        self.lane_counters = Counter({Reason.CHARGED: 5, Reason.INSUFFICIENT_BALANCE: 1, "frame_damaged": 2,
                                      "b5_error_0a": 1, "heartbeat": 0})
        # No debounce on the alarms these scenarios raise: each change happens when it is made.
        registry = AlarmRegistry(debounce_s={"rsu_offline": 0, "centre_link_down": 0},
                                 clear_debounce_s={"rsu_offline": 0})
        self.monitor = HealthMonitor(registry=registry, settings=HealthSettings(), post=lambda event: None,
                                     monotonic=self.now, wall=lambda: T0)
        self.service = UplinkService(
            self.link, self.writer,
            UplinkSettings(window=8, ack_timeout_s=30.0, reconnect_min_s=0.01, reconnect_max_s=0.02,
                           health_interval_s=HEALTH_INTERVAL_S),
            monitor=self.monitor, lane=LaneView(etc_open=self._etc_open, closed_by=dict,
                                                counters=lambda: self.lane_counters), wall=lambda: T0,
            monotonic=self.now)
        self.link.service = self.service

    def now(self) -> float:
        return self.clock[0]

    def _etc_open(self) -> bool:
        self.watches += 1
        return True

    def event(self) -> int:
        seq = self.journal.record_event("follow_car", T0).seq
        self.service.notify()
        return int(seq)

    def ack(self, seq: int) -> None:
        assert self.link.current is not None
        self.link.current.inbox.put_nowait(Incoming(channel="txAck", topic=f"etc/v1/{LANE}/tx/ack", message=TxAck(
            lane_id=LANE, stream=AckStream.TX, first_seq=seq, last_seq=seq)))

    @asynccontextmanager
    async def running(self) -> AsyncIterator[asyncio.Task[None]]:
        task = asyncio.create_task(self.service.run(), name="uplink")
        try:
            await until(lambda: self.service.connected or task.done(), "the lane connected")
            yield task
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(task, T)
            self.journal.close()


@pytest.fixture
def scene(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Scene:
    monkeypatch.setattr(service_module, "WATCH_S", 0.005)  # the watch's pace, so the scenarios take milliseconds
    monkeypatch.setattr(service_module, "BACKLOG_CHECK_S", 0.01)
    return Scene(tmp_path / "journal.db")


# -- alarm changes made while the link was down ---------------------------------------------------

async def test_an_alarm_raised_and_cleared_during_an_outage_reaches_the_centre_in_order_after_the_reconnect(
        scene: Scene) -> None:
    async with scene.running():
        await until(lambda: ("centre_link_down", "cleared") in scene.broker.alarms(), "the first connect's alarms")
        before = len(scene.broker.alarms())
        scene.link.pull_cable()
        await until(lambda: not scene.service.connected and scene.monitor.registry.is_active("centre_link_down"),
                    "the link down, centre_link_down raised")
        scene.clock[0] += 3600.0  # an hour-long outage
        scene.monitor.lane_alarm(RaiseAlarm("rsu_offline", "serial port closed (EIO)"))
        scene.clock[0] += 60.0
        scene.monitor.lane_alarm(ClearAlarm("rsu_offline", "link back"))
        snapshots = len(scene.broker.messages(HealthSnapshot))
        scene.broker.up = True
        expected = [("centre_link_down", "raised"), ("rsu_offline", "raised"), ("rsu_offline", "cleared"),
                    ("centre_link_down", "cleared")]
        await until(lambda: len(scene.broker.alarms()) >= before + len(expected) or (
            scene.service.connected and ("centre_link_down", "cleared") in scene.broker.alarms()[before:]),
            "the alarm changes of the outage after the reconnect")
        assert scene.broker.alarms()[before:] == expected
        await until(lambda: len(scene.broker.messages(HealthSnapshot)) > snapshots, "a health snapshot after them")
    sent = [(m, expiry) for m, expiry in scene.broker.published if isinstance(m, AlarmMsg)][before:]
    # Each with what is left of the alarm topic's day-long expiry: centre_link_down's raise
    # waited the whole outage (an hour and a minute), rsu_offline's raise a minute.
    assert [expiry for _, expiry in sent] == [86_400 - 3660, 86_400 - 60, 86_400, 86_400]
    assert sent[1][0].detail == "serial port closed (EIO)"


async def test_changes_no_longer_kept_in_memory_are_counted_and_the_rest_still_go_up_in_order(
        scene: Scene, caplog: pytest.LogCaptureFixture) -> None:
    async with scene.running():
        await until(lambda: ("centre_link_down", "cleared") in scene.broker.alarms(), "the first connect's alarms")
        before = len(scene.broker.alarms())
        scene.monitor.changes = deque(scene.monitor.changes, maxlen=3)  # a long outage's worth, in small
        scene.link.pull_cable()
        await until(lambda: not scene.service.connected and scene.monitor.registry.is_active("centre_link_down"),
                    "the link down, centre_link_down raised")
        scene.clock[0] += 60.0
        scene.monitor.lane_alarm(RaiseAlarm("rsu_offline", "serial port closed (EIO)"))
        scene.clock[0] += 60.0
        scene.monitor.lane_alarm(ClearAlarm("rsu_offline", "link back"))
        scene.broker.up = True
        await until(lambda: scene.service.connected and ("centre_link_down", "cleared") in scene.broker.alarms()[before:],
                    "the reconnect's alarms")
        # Three kept: centre_link_down's raise is gone; the rsu_offline changes and the clear go up.
        assert scene.broker.alarms()[before:] == [("rsu_offline", "raised"), ("rsu_offline", "cleared"),
                                                  ("centre_link_down", "cleared")]
    assert "1 alarm changes made while the link was down are no longer kept" in caplog.text


def test_after_a_long_outage_changes_older_than_the_alarm_topics_expiry_are_not_sent() -> None:
    registry = AlarmRegistry(debounce_s={"rsu_offline": 0}, clear_debounce_s={"rsu_offline": 0})
    old = registry.raise_alarm("rsu_offline", 0.0, T0, "serial port closed (EIO)")  # a day and more ago
    recent = registry.clear_alarm("rsu_offline", 90_000.0, T0, "link back")  # ten minutes ago
    replay = alarm_replay(old + recent, 90_600.0, expiry_s=86_400, limit=200)
    assert [(t.change.code, str(t.change.change), t.expiry_s) for t in replay.send] == [
        ("rsu_offline", "cleared", 86_400 - 600)]
    assert (replay.expired, replay.collapsed) == (1, 0)


def test_more_changes_than_the_limit_send_the_latest_of_each_alarm_saying_how_many_it_stands_for() -> None:
    registry = AlarmRegistry(debounce_s=0, clear_debounce_s=0, flap_count=0)
    changes = []
    for i in range(150):  # a fee display dropping every few minutes through a long outage
        changes += registry.raise_alarm("display_offline", 10.0 * i, T0, "no answer from slave 1")
        changes += registry.clear_alarm("display_offline", 10.0 * i + 5, T0)
        if i == 100:
            changes += registry.raise_alarm("rsu_offline", 10.0 * i + 6, T0, "serial port closed (EIO)")
    replay = alarm_replay(changes, 1500.0, expiry_s=86_400, limit=200)
    assert [(t.change.code, str(t.change.change), t.left_out) for t in replay.send] == [
        ("rsu_offline", "raised", 0), ("display_offline", "cleared", 299)]  # in the order of those changes
    assert (replay.expired, replay.collapsed) == (0, 299)
    msg = AlarmMsg.from_change(replay.send[1].change, LANE, note=replay.send[1].note)
    assert msg.cause is not None and "left out 299 earlier changes of display_offline" in msg.cause
    validate("Alarm", msg.to_dict())


# -- health: periodic, with counters --------------------------------------------------------------

async def test_health_goes_up_every_health_interval_without_any_change_and_carries_the_uplinks_counters(
        scene: Scene) -> None:
    async with scene.running() as task:
        seqs = [scene.event() for _ in range(3)]
        await until(lambda: [r["seq"] for r in scene.broker.rows()] == seqs, "the rows published")
        scene.ack(seqs[0])
        await until(lambda: len(scene.broker.messages(HealthSnapshot)) >= 1, "the first health snapshot")
        first = len(scene.broker.messages(HealthSnapshot))
        watched = scene.watches
        await until(lambda: scene.watches >= watched + 5, "five rounds of the watch")
        assert len(scene.broker.messages(HealthSnapshot)) == first, "a snapshot before the interval, with no change"
        scene.clock[0] += HEALTH_INTERVAL_S
        await until(lambda: len(scene.broker.messages(HealthSnapshot)) == first + 1,
                    f"a snapshot of the timer, {HEALTH_INTERVAL_S:g} s after the first")
        scene.clock[0] += HEALTH_INTERVAL_S
        await until(lambda: len(scene.broker.messages(HealthSnapshot)) == first + 2,
                    f"another, {HEALTH_INTERVAL_S:g} s later")
        assert not task.done()
    health = scene.broker.messages(HealthSnapshot)[-1]
    counters = health.counters
    assert counters is not None
    assert (counters.tx_published, counters.tx_retransmissions, counters.results_published) == (3, 0, 0)
    assert (counters.link_sessions, counters.link_lost, counters.received_dropped, counters.publish_refused) == (
        1, 0, 0, 0)
    # centre_link_down: pending from the start, raised at once here (no debounce), cleared on connect.
    assert [(a.code, a.count) for a in counters.alarms] == [("centre_link_down", 1)]
    assert health.outbox is not None and health.outbox.last_acked_seq == seqs[0]
    # The lane machine's counts: the vehicles by outcome, the rest as lane events.
    assert [(c.code, c.count) for c in counters.outcomes] == [("charged", 5), ("insufficient_balance", 1)]
    assert [(c.code, c.count) for c in counters.lane_events] == [("b5_error_0a", 1), ("frame_damaged", 2)]
    validate("HealthSnapshot", health.to_dict())


# -- a journal that fails on the uplink's reads -----------------------------------------------------

async def test_a_journal_failing_through_an_outage_and_the_reconnect_stops_nothing_and_loses_no_row(
        scene: Scene, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="laned.uplink")
    seqs = [scene.event() for _ in range(2)]
    scene.broker.up = False  # the centre unreachable from the start …
    scene.writer.failing |= {"outbox_backlog", "last_seq"}  # … and the disk failing on the backlog's count
    task = asyncio.create_task(scene.service.run(), name="uplink")
    try:
        await until(lambda: scene.monitor.registry.is_active("centre_link_down") or task.done(), "the link down")
        scene.broker.up = True  # the connect reads the last seq and counts the backlog: both fail
        await until(lambda: scene.service.connected or task.done(), "the lane connected")
        await until(lambda: [r["seq"] for r in scene.broker.rows()] == seqs or task.done(),
                    "the rows that waited, published all the same")
        assert not task.done(), f"the uplink stopped: {task.exception()!r}"
        scene.writer.failing.clear()  # the disk is back: the backlog is counted again
        await until(lambda: scene.service._backlog == (2, 1), "the backlog counted again")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, T)
        scene.journal.close()
    troubles = [r.getMessage() for r in caplog.records if "the journal failed while" in r.getMessage()]
    assert any("counting the outbox backlog" in t for t in troubles)
    assert any("reading the journal's last seq at connect" in t for t in troubles)
    assert len(troubles) == len(set(troubles)), "the same failure reported more than once"


async def test_a_journal_failing_to_read_the_row_the_centre_settled_still_sends_it_and_its_result(
        scene: Scene) -> None:
    intent = TransactionIntent(amount=3500, purchase_time=dt.datetime(2026, 11, 22, 18, 0), obu_id=bytes(4),
                               plate="鲁A12345", card_network="3701", card_number="2301000012345678",
                               vehicle_class=1, fee=3500)
    entry = scene.journal.record_intent(intent, T0)
    scene.journal.mark_unknown(entry.seq, "outcome_unknown", T0)
    async with scene.running() as task:
        await until(lambda: [(r["seq"], r["state"]) for r in scene.broker.rows()] == [(entry.seq, "unknown")],
                    "the unknown row at the centre")
        scene.ack(entry.seq)
        await until(lambda: not scene.service.in_flight(), "the unknown row acknowledged")
        scene.writer.failing.add("get")  # reading the row back after the answer fails
        answer = ReconcileAnswer(lane_id=LANE, answer_id=str(uuid.uuid4()), seq=entry.seq, tx_uuid=entry.uuid,
                                 outcome=service_module.ReconcileOutcome.CHARGED, decided_at=T0,
                                 tac=bytes.fromhex("5e2f8c01"), amount=3500, balance_after=500)
        assert scene.link.current is not None
        scene.link.current.inbox.put_nowait(Incoming(channel="reconcile", topic=f"etc/v1/{LANE}/reconcile",
                                                     message=answer))
        await until(lambda: len(scene.broker.messages(ReconcileResult)) == 1 or task.done(), "the result")
        await until(lambda: scene.broker.rows()[-1]["state"] == "charged" or task.done(), "the settled row again")
        assert not task.done(), f"the uplink stopped: {task.exception()!r}"
        assert scene.broker.rows()[-1]["seq"] == entry.seq
        assert scene.journal.get(entry.seq).state is TxState.CHARGED


async def test_a_journal_failing_while_the_link_goes_down_does_not_stop_the_uplink(scene: Scene) -> None:
    async with scene.running() as task:
        scene.writer.failing.add("outbox_backlog")
        scene.link.pull_cable()
        await until(lambda: not scene.service.connected, "the link down")
        scene.broker.up = True
        await until(lambda: scene.service.connected or task.done(), "the lane connected again")
        assert not task.done(), f"the uplink stopped: {task.exception()!r}"
        seq = scene.event()
        await until(lambda: seq in [r["seq"] for r in scene.broker.rows()], "a new row published")



# -- the broker refusing a topic ------------------------------------------------------------------

async def test_a_broker_refusing_the_lanes_tx_topic_raises_an_alarm_naming_it_until_it_takes_tx_again(
        scene: Scene) -> None:
    tx = f"etc/v1/{LANE}/tx"
    registry = scene.monitor.registry
    async with scene.running():
        scene.link.refusals.answer(tx, 0x87, "Not authorized")  # the PUBACK of a row (laned.uplink.mqtt_client)
        assert registry.is_active("uplink_publish_refused")
        (active,) = [a for a in registry.active() if a.code == "uplink_publish_refused"]
        assert active.detail == f"{tx}: Not authorized (0x87)"
        await until(lambda: ("uplink_publish_refused", "raised") in scene.broker.alarms(), "the alarm at the centre")
        scene.link.refusals.answer(tx, 0x00, "Success")  # the row sent again, once the centre fixed its ACL
        assert not registry.is_active("uplink_publish_refused")
        await until(lambda: ("uplink_publish_refused", "cleared") in scene.broker.alarms(), "the clear")
        await until(lambda: any(h.counters is not None and h.counters.publish_refused == 1
                                for h in scene.broker.messages(HealthSnapshot)), "the refusal counted in health")


def test_the_lane_counts_keep_to_the_contracts_bounds_keeping_the_most_frequent() -> None:
    from laned.uplink import reporting

    counts = Counter({f"b5_error_{i:02x}": i + 1 for i in range(256)})
    counts.update({Reason.CHARGED: 3})
    outcomes, events = reporting.lane_counts({**counts, **{f"event_{i}": 1 for i in range(400)}})
    assert [(c.code, c.count) for c in outcomes] == [("charged", 3)]
    assert len(events) == reporting.LANE_EVENTS_MAX  # 656 codes: the 512 most frequent go up
    assert {f"b5_error_{i:02x}" for i in range(256)} <= {c.code for c in events}
    assert [c.code for c in events] == sorted(c.code for c in events)
    schema = contract().document["components"]["schemas"]["HealthCounters"]["properties"]
    assert (schema["outcomes"]["maxItems"], schema["lane_events"]["maxItems"]) == (
        reporting.OUTCOMES_MAX, reporting.LANE_EVENTS_MAX)
