"""The reference centre as a service: subscribed to every lane, storing, acknowledging,
answering (``laned centre run``, or in-process for tests and the simulator).

::

    async with Centre(CentreSettings(broker=BrokerSettings(...), db="centre.db")) as centre:
        ...                                   # connected and subscribed here
        centre.ledger.counts("G0001-01")      # received, duplicates_dropped, gaps, ...
        result = await centre.send_command("G0001-01", "close_etc", {"reason": "maintenance"},
                                           private_key=key, key_id="centre-1")

What it does with each topic (every payload is checked against the contract first; one
that breaks it is logged with its topic and the offending member, counted, and dropped):

* ``tx`` / ``tx/batch`` / ``reconcile/result`` — checked (:mod:`laned.centre.intake`),
  batched (:mod:`laned.centre.acks`), stored in one commit, then acknowledged on ``tx/ack``
  by contiguous ranges — duplicates and conflicts too, since both are durably held (a
  conflict in its own table, logged as an error for a person);
* an unknown outcome — listed as pending; with ``auto_reconcile`` on, answered at once;
  every answer is repeated every ``answer_repeat_s`` until the lane reports its result;
* ``state``, ``health``, ``alarm``, ``list/versions`` — the last one kept per lane; a lane's
  ``list/versions`` behind the versions the centre holds is offered what it misses
  (:func:`laned.centre.lists.catch_up`; the same version at most once per cooldown);
* ``cmd/result`` — recorded, and handed to whoever waits for it (:meth:`Centre.send_command`);
* ``list/request`` — the chunks asked for, from the lists the centre published.

The connection is supervised: when the broker goes away the centre reconnects with
backoff (jitter, capped) and, its session being persistent, receives what the lanes
published meanwhile. Its tasks run in one TaskGroup per connection.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import functools
import json
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from laned.cancellation import stop_if_cancelled
from laned.centre.acks import ACK_BATCH_MAX, ACK_DELAY_S, Batch, acks
from laned.centre.broker import BrokerSettings, make_client, publish
from laned.centre.commanding import DEFAULT_LIFETIME_S, build_command
from laned.centre.errors import CentreError, CommandTimeout
from laned.centre.intake import Inbound, Intake
from laned.centre.ledger import Ledger, StoreOutcome
from laned.centre.lists import CannotCatchUp, ListVersion, RecentOffers, catch_up
from laned.centre.outbound import publish_command, publish_list_version
from laned.centre.reconcile import AutoReconcile, auto_answer
from laned.uplink.contract import route
from laned.uplink.messages import (
    AckStream,
    AlarmMsg,
    CommandResult,
    HealthSnapshot,
    LaneState,
    ListRequest,
    ListVersions,
    ReconcileResult,
    TransactionBatch,
    TransactionMsg,
    UplinkMessage,
)

log = logging.getLogger("laned.centre")
T = TypeVar("T")
M = TypeVar("M", bound=UplinkMessage)

# What the centre subscribes to: every lane's lane→centre topics (QoS 1; health is QoS 0 at the lane).
SUBSCRIPTIONS = ("etc/v1/+/tx", "etc/v1/+/tx/batch", "etc/v1/+/reconcile/result", "etc/v1/+/state",
                 "etc/v1/+/health", "etc/v1/+/alarm", "etc/v1/+/cmd/result", "etc/v1/+/list/request",
                 "etc/v1/+/list/versions")
# The message each lane→centre channel carries.
INBOUND: Mapping[str, type[UplinkMessage]] = {
    "tx": TransactionMsg, "txBatch": TransactionBatch, "reconcileResult": ReconcileResult, "state": LaneState,
    "health": HealthSnapshot, "alarm": AlarmMsg, "cmdResult": CommandResult, "listRequest": ListRequest,
    "listVersions": ListVersions,
}
ANSWER_REPEAT_S = 60.0  # the contract: "the centre repeats an answer until it has the result"
ANSWER_POLL_S = 1.0  # how soon an operator's answer (written by `laned centre answer`) goes out
RECONNECT_MIN_S = 0.5
RECONNECT_MAX_S = 30.0  # a broker back after maintenance is found within half a minute
COMMAND_WAIT_S = 10.0


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class CentreSettings:
    broker: BrokerSettings
    db: Path | str
    auto_reconcile: AutoReconcile = AutoReconcile.OFF
    ack_delay_s: float = ACK_DELAY_S
    ack_batch_max: int = ACK_BATCH_MAX
    answer_repeat_s: float = ANSWER_REPEAT_S
    reconnect_min_s: float = RECONNECT_MIN_S
    reconnect_max_s: float = RECONNECT_MAX_S


class Centre:
    """The reference centre (see the module docstring). ``run()`` until cancelled, or
    ``async with`` (returns once connected and subscribed; stops on the way out)."""

    def __init__(self, settings: CentreSettings, *, ledger: Ledger | None = None,
                 clock: Callable[[], dt.datetime] = utc_now) -> None:
        self.settings = settings
        self._owns_ledger = ledger is None
        self.ledger = ledger if ledger is not None else Ledger(settings.db)
        self._clock = clock
        # One thread owns every database call of the service: a commit's fsync never stalls the loop.
        self._db_thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="centre-db")
        self._tx: Batch[Inbound] = Batch(settings.ack_batch_max, settings.ack_delay_s)
        self._results: Batch[Inbound] = Batch(settings.ack_batch_max, settings.ack_delay_s)
        self._waiting: dict[str, asyncio.Future[CommandResult]] = {}
        self._client: aiomqtt.Client | None = None
        self._connected = asyncio.Event()
        self._connection_made = asyncio.Condition()
        self._received = asyncio.Event()  # a batch has something
        # Committed acks on their way out (lane, payload): sent by their own task, so the
        # next batch's commit never waits on an ack's PUBACK.
        self._acks_out: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._answers_due = asyncio.Event()
        self._runner: asyncio.Task[None] | None = None
        self._served_once = False
        self._offers = RecentOffers()  # list versions offered to lanes, so one is not sent again and again
        self.connections = 0  # successful connections so far (a reconnect adds one)
        self.intake = Intake(self.ledger.note_invalid)
        self.dropped = self.intake.dropped  # invalid payloads by channel

    # -- lifetime -------------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self._runner = asyncio.create_task(self.run(), name="centre")
        try:
            await self.wait_connected()
        except BaseException:
            await self._stop()  # a centre that could not connect does not linger in the background
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._stop()

    async def _stop(self) -> None:
        runner, self._runner = self._runner, None
        try:
            if runner is not None:
                runner.cancel()
                try:
                    await runner  # a failure of the runner (not its cancellation) is raised here
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if current is not None and current.cancelling():
                        raise  # we are being cancelled ourselves, not just our runner
        finally:
            self.close()

    def close(self) -> None:
        self._db_thread.shutdown(wait=True)
        if self._owns_ledger:
            self.ledger.close()

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Until connected and subscribed; the runner's own failure is raised here."""
        wait = asyncio.ensure_future(self._connected.wait())
        watch: set[asyncio.Future[Any]] = {wait}
        if self._runner is not None:
            watch.add(self._runner)
        try:
            done, _ = await asyncio.wait(watch, timeout=timeout or self.settings.broker.timeout_s * 2,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            wait.cancel()
        if self._runner is not None and self._runner in done:
            self._runner.result()  # raises what stopped it
            raise CentreError("the centre stopped before it connected")
        if wait not in done:
            raise CentreError(f"the centre did not connect to {self.settings.broker.describe()} in time")

    async def wait_connections(self, count: int, timeout: float | None = None) -> None:
        """Until the centre has connected ``count`` times (a reconnect after a broker restart is the 2nd)."""
        async with asyncio.timeout(timeout or self.settings.broker.timeout_s * 2), self._connection_made:
            await self._connection_made.wait_for(lambda: self.connections >= count)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def run(self) -> None:
        """Connect, serve, reconnect with backoff when the broker goes away; until cancelled."""
        delay = self.settings.reconnect_min_s
        while True:
            failure = await self._serve_until_lost()
            # Being stopped: Python 3.11's TaskGroup may have raised the receive task's
            # "Disconnected" instead of the cancellation, which must not read as a lost link.
            stop_if_cancelled(failure)
            if self._served_once:  # it was up: start the backoff afresh
                delay = self.settings.reconnect_min_s
            self._served_once = False
            wait = min(delay, self.settings.reconnect_max_s) * random.uniform(0.8, 1.2)
            log.warning("centre: MQTT connection to %s lost or refused (%s); reconnecting in %.1f s (lanes keep "
                        "their rows until acknowledged, nothing is lost)", self.settings.broker.describe(), failure,
                        wait)
            await asyncio.sleep(wait)
            delay = min(delay * 2, self.settings.reconnect_max_s)

    async def _serve_until_lost(self) -> BaseException:
        """Serve one connection; return the MQTT error that ended it (anything else is raised)."""
        try:
            # In a task of its own: Python 3.11's TaskGroup leaves its parent's cancel count
            # raised after a child failed (a lost link), which run() would read as a stop.
            await asyncio.create_task(self._serve(), name="centre-session")
        except aiomqtt.MqttError as err:
            return err
        except BaseExceptionGroup as group:
            mqtt, rest = group.split(aiomqtt.MqttError)
            if rest is not None or mqtt is None:
                raise
            return mqtt.exceptions[0]
        finally:
            self._client = None
            self._connected.clear()
        raise CentreError("the MQTT session ended without an error")  # the receive loop never ends by itself

    async def _serve(self) -> None:
        async with make_client(self.settings.broker, persistent=True) as client:
            for subscription in SUBSCRIPTIONS:
                await client.subscribe(subscription, qos=1)
            self._client = client
            self._served_once = True
            self._connected.set()
            async with self._connection_made:
                self.connections += 1
                self._connection_made.notify_all()
            log.info("centre: connected to %s as %s, subscribed to every lane (etc/v1/+/...)",
                     self.settings.broker.describe(), self.settings.broker.client_id)
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._receive(client), name="centre-receive")
                tasks.create_task(self._commit_and_ack(), name="centre-commit")
                tasks.create_task(self._send_acks(client), name="centre-acks")
                tasks.create_task(self._send_answers(client), name="centre-answers")

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._db_thread, functools.partial(fn, *args))

    # -- receiving ------------------------------------------------------------------------------------

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            await self._handle(client, message.topic.value, message.payload)

    async def _handle(self, client: aiomqtt.Client, topic: str, payload: Any) -> None:
        found = route(topic)
        cls = INBOUND.get(found[0]) if found else None
        if found is None or cls is None:
            log.warning("centre: dropped a message on %s: not a lane→centre topic of the contract", topic)
            return
        item = Inbound.received(topic, found[0], found[1], payload)
        if cls is TransactionMsg or cls is TransactionBatch:
            # Checked in the database thread with the rest of its batch: the loop only reads, so
            # the broker's queue for the centre drains as fast as the lanes fill it.
            self._tx.add(item, time.monotonic(), item.rows)
            self._received.set()
            return
        if cls is ReconcileResult:
            self._results.add(item, time.monotonic())
            self._received.set()
            return
        msg = self.intake.parse(cls, item)
        now = self._clock()
        if msg is None:
            await self._db(self.ledger.note_invalid, item.lane_id, now)
        elif isinstance(msg, LaneState):
            await self._db(self.ledger.note_lane_state, msg, now)
            log.info("centre: lane %s is %s%s", item.lane_id, msg.state, f" ({msg.reason})" if msg.reason else "")
        elif isinstance(msg, HealthSnapshot):
            await self._db(self.ledger.note_health, msg, now)
        elif isinstance(msg, AlarmMsg):
            await self._db(self.ledger.note_alarm, msg, now)
            log.info("centre: lane %s alarm %s %s (%s): %s", item.lane_id, msg.code, msg.change, msg.severity, msg.en)
        elif isinstance(msg, ListVersions):
            await self._db(self.ledger.note_list_versions, msg, now)
            await self._offer_missing(client, msg, now)
        elif isinstance(msg, CommandResult):
            await self._command_result(msg)
        elif isinstance(msg, ListRequest):
            await self._list_request(client, msg)

    def _store_transaction_batch(self, items: list[Inbound], now: dt.datetime
                                 ) -> tuple[list[TransactionMsg], list[StoreOutcome], dict[str, set[int]]]:
        msgs, texts = self.intake.transactions(items, now)
        if not msgs:
            return msgs, [], {}
        return msgs, *self.ledger.store_transactions_held(msgs, now, texts)

    def _store_result_batch(self, items: list[Inbound], now: dt.datetime) -> list[ReconcileResult]:
        results, _ = self.intake.parse_all(ReconcileResult, items, now)
        if results:
            self.ledger.store_reconcile_results(results, now)
        return results

    async def _command_result(self, result: CommandResult) -> None:
        known = await self._db(self.ledger.record_command_result, result)
        log.info("centre: lane %s: command %s (%s, seq %s) %s%s", result.lane_id, result.command_id, result.command,
                 result.seq, result.outcome, f": {result.reason}: {result.detail}" if result.reason else "")
        if not known:
            log.debug("centre: command %s was not sent by this centre's database", result.command_id)
        waiting = self._waiting.get(result.command_id)
        if waiting is not None and not waiting.done():
            waiting.set_result(result)

    async def _list_request(self, client: aiomqtt.Client, request: ListRequest) -> None:
        stored = await self._db(self.ledger.list_version, str(request.kind), request.version)
        if stored is None:
            log.warning("centre: lane %s asks for %s version %d, which this centre never published",
                        request.lane_id, request.kind, request.version)
            return
        version = ListVersion(manifest=stored[0], data=stored[1])
        if request.chunks is None:
            # Every chunk: the lane saw the manifest only as the broker's retained copy, or
            # a fetch_list command sent it for a version it has no manifest of. The whole
            # version again, manifest first (the lane ignores a manifest it is downloading).
            try:
                await publish_list_version(client, version, [request.lane_id], self._clock())
            except CentreError as err:
                log.warning("centre: lane %s asks for %s version %d: %s", request.lane_id, request.kind,
                            request.version, err)
            return
        wanted = [i for i in request.chunks if i < version.chunk_count]
        for index in wanted:
            await publish(client, "listChunk", request.lane_id, version.chunk(index).to_json())
        log.info("centre: lane %s: sent %d chunk(s) of %s version %d", request.lane_id, len(wanted), request.kind,
                 request.version)

    async def _offer_missing(self, client: aiomqtt.Client, lane: ListVersions, now: dt.datetime) -> None:
        """Publish to a lane the list versions it missed (offline longer than its MQTT session,
        it got only the last retained manifest back, perhaps of the other kind)."""
        held = await self._db(self.ledger.list_manifests)
        for found in catch_up(held, lane, now):
            if isinstance(found, CannotCatchUp):
                log.warning("centre: lane %s cannot catch up on its %s: %s", lane.lane_id, found.kind, found.reason)
                continue
            if not self._offers.due(lane.lane_id, found.kind, found.version, now.timestamp()):
                log.debug("centre: lane %s: %s version %d was offered less than %.0f s ago; not again yet",
                          lane.lane_id, found.kind, found.version, self._offers.cooldown_s)
                continue
            stored = await self._db(self.ledger.list_version, str(found.kind), found.version)
            if stored is None:
                continue  # removed from the database since
            # Noted before publishing: a publish cut by a lost connection is not started over
            # on the lane's next list/versions; the lane asks for the chunks it lacks itself.
            self._offers.note(lane.lane_id, found.kind, found.version, now.timestamp())
            log.info("centre: lane %s is behind: %s; offering %s version %d", lane.lane_id, found.reason, found.kind,
                     found.version)
            try:
                await publish_list_version(client, ListVersion(manifest=stored[0], data=stored[1]), [lane.lane_id],
                                           now)
            except CentreError as err:
                log.warning("centre: lane %s: could not offer %s version %d: %s", lane.lane_id, found.kind,
                            found.version, err)

    # -- storing and acknowledging ---------------------------------------------------------------------

    async def _commit_and_ack(self) -> None:
        while True:
            deadlines = [d for d in (self._tx.deadline(), self._results.deadline()) if d is not None]
            if not deadlines:
                await self._received.wait()
            else:
                delay = min(deadlines) - time.monotonic()
                full = max(self._tx.rows, self._results.rows) >= self.settings.ack_batch_max
                if delay > 0 and not full:
                    with contextlib.suppress(TimeoutError):  # the batch's time is up: commit it
                        async with asyncio.timeout(delay):
                            await self._received.wait()
            self._received.clear()
            now = time.monotonic()
            if self._tx.due(now):
                await self._store_transactions(self._tx.take())
            if self._results.due(now):
                await self._store_results(self._results.take())

    async def _send_acks(self, client: aiomqtt.Client) -> None:
        """Publish the committed acks, in commit order. One lost with a dropped connection
        costs nothing: the lane sends those rows again, the ledger finds them stored and
        they are acked again; those still queued go out on the next connection (a lane
        ignores an ack that names nothing it has in flight)."""
        while True:
            lane_id, payload = await self._acks_out.get()
            await publish(client, "txAck", lane_id, payload)

    async def _store_transactions(self, received: list[Inbound]) -> None:
        now = self._clock()
        batch, outcomes, unknown = await self._db(self._store_transaction_batch, received, now)
        committed: dict[str, list[int]] = {}
        answers = 0
        for msg, outcome in zip(batch, outcomes):
            committed.setdefault(msg.lane_id, []).append(msg.seq)
            if outcome is StoreOutcome.CONFLICT:
                log.error("centre: lane %s seq %d arrived with tx_uuid %s, but the centre holds seq %d with another "
                          "tx_uuid: kept aside in the conflicts table, the stored row unchanged — the lane reused a "
                          "seq (a restored or replaced journal?); compare both before billing: %r",
                          msg.lane_id, msg.seq, msg.tx_uuid, msg.seq, msg)
            elif outcome is StoreOutcome.UPDATED:
                log.info("centre: lane %s seq %d updated: now %s%s", msg.lane_id, msg.seq, msg.state,
                         " (reconciled)" if msg.reconciled else "")
            if msg.reconcile_required and outcome in (StoreOutcome.NEW, StoreOutcome.UPDATED):
                log.info("centre: lane %s seq %d is an unknown outcome: reconciliation pending (%r)", msg.lane_id,
                         msg.seq, msg)
                reply = auto_answer(msg, self.settings.auto_reconcile, now)
                if reply is not None and await self._db(self.ledger.record_answer, reply,
                                                        f"auto:{self.settings.auto_reconcile}"):
                    answers += 1
        for lane_id, seqs in committed.items():
            for ack in acks(lane_id, AckStream.TX, seqs, now, unknown=unknown.get(lane_id, ())):
                self._acks_out.put_nowait((lane_id, ack.to_json()))
        if answers:
            self._answers_due.set()

    async def _store_results(self, received: list[Inbound]) -> None:
        now = self._clock()
        batch = await self._db(self._store_result_batch, received, now)
        committed: dict[str, list[int]] = {}
        for result in batch:
            committed.setdefault(result.lane_id, []).append(result.seq)
            log.info("centre: lane %s seq %d settled %s by %s: %s%s", result.lane_id, result.seq, result.outcome,
                     result.settled_by, result.result, f" ({result.detail})" if result.detail else "")
        for lane_id, seqs in committed.items():
            for ack in acks(lane_id, AckStream.RECONCILE, seqs, now):
                self._acks_out.put_nowait((lane_id, ack.to_json()))

    # -- answers on unknown outcomes -------------------------------------------------------------------

    async def _send_answers(self, client: aiomqtt.Client) -> None:
        while True:
            now = self._clock().timestamp()
            for due in await self._db(self.ledger.answers_due, now, self.settings.answer_repeat_s):
                await publish(client, "reconcile", due.lane_id, due.payload)
                await self._db(self.ledger.mark_answer_sent, due.answer_id, now)
                log.info("centre: lane %s seq %d: sent reconciliation answer %s (%s)", due.lane_id, due.seq,
                         due.answer_id, json.loads(due.payload)["outcome"])
            with contextlib.suppress(TimeoutError):  # poll: the CLI writes operators' answers to the database
                async with asyncio.timeout(ANSWER_POLL_S):
                    await self._answers_due.wait()
            self._answers_due.clear()

    # -- commands --------------------------------------------------------------------------------------

    async def send_command(self, lane_id: str, command: str, args: Mapping[str, Any], *,
                           private_key: Ed25519PrivateKey, key_id: str, lifetime_s: float = DEFAULT_LIFETIME_S,
                           wait_s: float = COMMAND_WAIT_S, min_seq: int = 1) -> CommandResult:
        """Sign and send a command, then wait for the lane's result (CommandTimeout if none comes)."""
        client = self._client
        if client is None:
            raise CentreError(f"the centre is not connected to {self.settings.broker.describe()}")
        seq = await self._db(self.ledger.next_command_seq, lane_id, min_seq)
        signed = build_command(lane_id=lane_id, command=command, args=args, seq=seq, now=self._clock(),
                               private_key=private_key, key_id=key_id, lifetime_s=lifetime_s)
        waiting: asyncio.Future[CommandResult] = asyncio.get_running_loop().create_future()
        self._waiting[signed.command_id] = waiting
        try:
            await self._db(self.ledger.record_command, signed.payload)
            await publish_command(client, signed, self._clock())
            try:
                async with asyncio.timeout(wait_s):
                    return await waiting
            except TimeoutError:
                raise CommandTimeout(f"lane {lane_id} did not answer command {signed.command_id} ({command}, seq "
                                     f"{seq}) within {wait_s:g} s: is it online (laned centre status)?") from None
        finally:
            self._waiting.pop(signed.command_id, None)

    async def publish_list(self, version: ListVersion, lanes: list[str]) -> None:
        """Keep ``version`` for chunk requests, publish its manifest (retained) and chunks to ``lanes``."""
        client = self._client
        if client is None:
            raise CentreError(f"the centre is not connected to {self.settings.broker.describe()}")
        await self._db(self.ledger.store_list, version.kind, version.version, version.manifest, version.data)
        now = self._clock()
        for lane_id in lanes:  # the lane's list/versions meanwhile (a reconnect mid-download) asks for no 2nd copy
            self._offers.note(lane_id, version.kind, version.version, now.timestamp())
        await publish_list_version(client, version, lanes, now)
