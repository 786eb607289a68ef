"""The reference centre (``laned.centre``) against a real Mosquitto (TLS client certificates,
the per-lane ACL) and a fake lane: an aiomqtt client holding the lane's certificate that
publishes what laned publishes (payloads built from the contract's own examples) and reads
what the centre sends back, each payload checked against the contract.

Nothing sleeps: every wait is for a message (or the centre's connection) under a deadline.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import datetime as dt
import json
import hashlib
import logging
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from mosquitto_broker import TOPIC_ROOT, MosquittoBroker, free_port, mosquitto_binary
from mqtt_pki import CENTRE, Pki, make_pki
from laned.centre import AutoReconcile, BrokerSettings, Centre, CentreSettings
from laned.centre.lists import ListVersion, build_list
from laned.cli import app
from laned.uplink.commands import CentreKeys, MemoryLedger, Verified, load_public_key, verify
from laned.uplink.contract import contract, validate
from laned.uplink.messages import (
    CommandOutcome,
    CommandResult,
    ListChunk,
    ListKind,
    ListManifest,
    ListRequest,
    ReconcileAnswer,
    ReconcileOutcome,
    ReconcileResult,
    ReconcileStatus,
    SettledBy,
    TxAck,
)
from laned.uplink.tls import client_tls_context

pytestmark = [pytest.mark.hil, pytest.mark.timeout(30)]

LANE = "G0001-01"
OTHER_LANE = "G0001-02"
T = 5.0  # per-step deadline; each step normally takes milliseconds
KEY_ID = "centre-test-1"


def example(name: str, message: str = "Transaction") -> dict[str, Any]:
    for ex in contract().messages[message]["examples"]:
        if ex["name"] == name:
            return copy.deepcopy(dict(ex["payload"]))
    raise KeyError(name)


def tx_payload(seq: int, *, name: str = "exit_charge", lane: str = LANE, **changes: Any) -> dict[str, Any]:
    payload = example(name)
    payload.update(lane_id=lane, seq=seq, tx_uuid=str(uuid.UUID(int=seq + 1000)), **changes)
    validate("Transaction", payload)
    return payload


# -- the fake lane ---------------------------------------------------------------------------------

class FakeLane:
    """A lane's MQTT side: publishes on its lane→centre topics, sorts what it receives by topic."""

    def __init__(self, client: aiomqtt.Client, lane_id: str) -> None:
        self.client, self.lane_id = client, lane_id
        self.inbox: collections.defaultdict[str, asyncio.Queue[aiomqtt.Message]] = \
            collections.defaultdict(asyncio.Queue)

    async def read(self) -> None:
        async for message in self.client.messages:
            self.inbox[message.topic.value.removeprefix(f"{TOPIC_ROOT}/{self.lane_id}/")].put_nowait(message)

    async def publish(self, suffix: str, payload: dict[str, Any] | bytes) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload, ensure_ascii=False).encode()
        await self.client.publish(f"{TOPIC_ROOT}/{self.lane_id}/{suffix}", data, qos=1)

    async def next(self, suffix: str, timeout: float = T) -> aiomqtt.Message:
        async with asyncio.timeout(timeout):
            return await self.inbox[suffix].get()

    async def acks_covering(self, seqs: set[int], stream: str = "tx", timeout: float = T) -> list[TxAck]:
        """TxAck messages of ``stream`` until every seq of ``seqs`` is acknowledged; each validated."""
        got: list[TxAck] = []
        covered: set[int] = set()
        while not seqs <= covered:
            message = await self.next("tx/ack", timeout)
            ack = TxAck.from_json(message.payload)  # checks it against the contract
            if str(ack.stream) == stream:
                got.append(ack)
                covered |= set(range(ack.first_seq, ack.last_seq + 1))
        return got


@asynccontextmanager
async def fake_lane(broker: MosquittoBroker, pki: Pki, lane_id: str = LANE) -> AsyncIterator[FakeLane]:
    credentials = pki.client(lane_id)
    context = client_tls_context(pki.ca_cert, credentials.cert, credentials.key)
    async with fake_lane_on(broker.host, broker.port, context, lane_id) as lane:
        yield lane


@asynccontextmanager
async def fake_lane_on(host: str, port: int, context: ssl.SSLContext, lane_id: str) -> AsyncIterator[FakeLane]:
    async with aiomqtt.Client(host, port, tls_context=context, protocol=aiomqtt.ProtocolVersion.V5,
                              identifier=f"laned-{lane_id}", timeout=T) as client:
        for suffix in ("tx/ack", "reconcile", "cmd", "list/manifest", "list/chunk"):
            await client.subscribe(f"{TOPIC_ROOT}/{lane_id}/{suffix}", qos=1)
        lane = FakeLane(client, lane_id)
        async with asyncio.TaskGroup() as tasks:
            reader = tasks.create_task(lane.read(), name=f"fake-lane-{lane_id}")
            try:
                yield lane
            finally:
                reader.cancel()


# -- fixtures --------------------------------------------------------------------------------------

@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki", lanes=(LANE, OTHER_LANE))


def settings(broker: MosquittoBroker, pki: Pki, db: Path, **changes: Any) -> CentreSettings:
    centre = pki.client(CENTRE)
    return CentreSettings(broker=BrokerSettings(host=broker.host, port=broker.port, ca=pki.ca_cert, cert=centre.cert,
                                                key=centre.key, timeout_s=T),
                          db=db, reconnect_min_s=0.05, reconnect_max_s=0.5, **changes)


# -- scenarios -------------------------------------------------------------------------------------

async def test_the_centre_stores_transactions_and_acknowledges_them_by_range(
        broker: MosquittoBroker, pki: Pki, tmp_path: Path) -> None:
    async with Centre(settings(broker, pki, tmp_path / "centre.db")) as centre, fake_lane(broker, pki) as lane:
        for seq in range(1, 41):
            await lane.publish("tx", tx_payload(seq))
        got = await lane.acks_covering(set(range(1, 41)))
        counts = centre.ledger.counts(LANE)
    covered = [s for ack in got for s in range(ack.first_seq, ack.last_seq + 1)]
    assert sorted(covered) == list(range(1, 41)) and len(covered) == 40  # exactly these seqs, each once
    assert len(got) < 40  # ranges, not one ack per row
    assert all(ack.lane_id == LANE and ack.acked_at is not None for ack in got)
    assert (counts.received, counts.stored, counts.duplicates_dropped, counts.gaps) == (40, 40, 0, ())


async def test_a_transaction_delivered_twice_is_stored_once_counted_and_acknowledged_again(
        broker: MosquittoBroker, pki: Pki, tmp_path: Path) -> None:
    async with Centre(settings(broker, pki, tmp_path / "centre.db")) as centre, fake_lane(broker, pki) as lane:
        await lane.publish("tx", tx_payload(1))
        await lane.acks_covering({1})
        await lane.publish("tx", tx_payload(1))  # the lane did not get the ack in time: it sends again
        await lane.acks_covering({1})
        await lane.publish("tx", tx_payload(3))  # and a gap: seq 2 never came
        await lane.acks_covering({3})
        counts = centre.ledger.counts(LANE)
        stored = centre.ledger.transactions(LANE)
    assert (counts.received, counts.stored, counts.duplicates_dropped) == (3, 2, 1)
    assert [str(g) for g in counts.gaps] == ["2"]
    assert [row.seq for row in stored] == [1, 3]


async def test_an_unknown_outcome_gets_an_auto_answer_and_the_result_is_acknowledged(
        broker: MosquittoBroker, pki: Pki, tmp_path: Path) -> None:
    db = tmp_path / "centre.db"
    async with Centre(settings(broker, pki, db, auto_reconcile=AutoReconcile.CHARGED)) as centre, \
            fake_lane(broker, pki) as lane:
        unknown = tx_payload(1843, name="unknown_outcome")
        await lane.publish("tx", unknown)
        await lane.acks_covering({1843})
        message = await lane.next("reconcile")
        validate("ReconcileAnswer", json.loads(message.payload))
        reply = ReconcileAnswer.from_json(message.payload)
        assert (reply.seq, reply.tx_uuid, reply.outcome) == (1843, unknown["tx_uuid"], ReconcileOutcome.CHARGED)
        assert reply.tac is not None and reply.amount == unknown["amount"]  # the evidence a charged answer needs
        assert [p.seq for p in centre.ledger.pending_reconciliations(LANE)] == [1843]
        result = ReconcileResult(lane_id=LANE, seq=1843, tx_uuid=unknown["tx_uuid"], outcome=reply.outcome,
                                 settled_by=SettledBy.CENTRE, result=ReconcileStatus.APPLIED,
                                 answer_id=reply.answer_id, tac=reply.tac, at=dt.datetime.now(dt.UTC))
        await lane.publish("reconcile/result", result.to_dict())
        (ack,) = await lane.acks_covering({1843}, stream="reconcile")
        assert centre.ledger.pending_reconciliations(LANE) == []
    assert (ack.first_seq, ack.last_seq) == (1843, 1843)


async def test_the_centres_ack_names_what_it_holds_as_unknown_until_the_settled_copy_arrives(
        broker: MosquittoBroker, pki: Pki, tmp_path: Path) -> None:
    # What lets a lane tell the ack of its unknown copy, queued by the broker during an
    # outage, from the ack of the copy it settled since (docs/uplink.md, "Acks").
    async with Centre(settings(broker, pki, tmp_path / "centre.db")) as centre, fake_lane(broker, pki) as lane:
        unknown = tx_payload(1843, name="unknown_outcome")
        for payload in (tx_payload(1842), unknown, tx_payload(1844)):
            await lane.publish("tx", payload)
        first = await lane.acks_covering({1842, 1843, 1844})
        settled = {**unknown, "state": "charged", "reconcile_required": False, "tac": "5e2f8c01",
                   "reason": "charged", "updated_at": "2024-11-22T09:45:00.000+08:00"}
        del settled["detail"]
        validate("Transaction", settled)
        await lane.publish("tx", settled)
        second = await lane.acks_covering({1843})
        await lane.publish("tx", unknown)  # a late copy of the unknown row: the settled one stays
        third = await lane.acks_covering({1843})
        held = centre.ledger.transaction(LANE, 1843)
    assert [a.unknown_seqs for a in first if a.covers(1843)] == [(1843,)]
    assert all(a.unknown_seqs is None for a in first if not a.covers(1843))
    assert [a.unknown_seqs for a in second + third] == [None, None]
    assert held is not None and str(held.state) == "charged"


async def test_a_command_reaches_the_lane_signed_and_its_result_comes_back(
        broker: MosquittoBroker, pki: Pki, tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    trusted = CentreKeys({KEY_ID: key.public_key()})
    async with Centre(settings(broker, pki, tmp_path / "centre.db")) as centre, fake_lane(broker, pki) as lane:

        async def the_lane_executes() -> aiomqtt.Message:
            message = await lane.next("cmd")
            outcome = verify(message.payload, lane_id=LANE, keys=trusted, ledger=MemoryLedger(),
                             now=dt.datetime.now(dt.UTC))
            assert isinstance(outcome, Verified), outcome
            await lane.publish("cmd/result", outcome.result(dt.datetime.now(dt.UTC)).to_dict())
            return message

        async with asyncio.TaskGroup() as tasks:
            executed = tasks.create_task(the_lane_executes(), name="fake-lane-command")
            result = await centre.send_command(LANE, "show_message", {"line1": "测试", "duration_s": 5},
                                               private_key=key, key_id=KEY_ID, lifetime_s=120, wait_s=T)
        message = executed.result()
        stored = centre.ledger.command_result(result.command_id)
    assert isinstance(result, CommandResult) and result.outcome is CommandOutcome.EXECUTED
    assert result.seq == 1 and stored == result
    assert message.properties is not None
    assert 110 <= message.properties.MessageExpiryInterval <= 120  # the command's remaining lifetime
    assert message.properties.CorrelationData == result.command_id.encode()


async def test_a_malformed_payload_is_logged_with_its_member_and_dropped_and_the_centre_keeps_going(
        broker: MosquittoBroker, pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="laned.centre")
    async with Centre(settings(broker, pki, tmp_path / "centre.db")) as centre, fake_lane(broker, pki) as lane:
        await lane.publish("tx", b"{not json")
        await lane.publish("tx", tx_payload(1) | {"seq": 0})
        await lane.publish("tx", tx_payload(2) | {"lane_id": OTHER_LANE})
        await lane.publish("health", {"lane_id": LANE})
        await lane.publish("tx", tx_payload(4) | {"plate": "鲁A12345678901234567"})  # too long; a plate all the same
        await lane.publish("tx", tx_payload(1))
        (ack,) = await lane.acks_covering({1})
        counts = centre.ledger.counts(LANE)
        dropped = dict(centre.dropped)
    assert (ack.first_seq, ack.last_seq) == (1, 1)
    assert dropped == {"tx": 4, "health": 1}
    assert (counts.invalid, counts.stored) == (5, 1)
    text = caplog.text
    assert f"on {TOPIC_ROOT}/{LANE}/tx: $: not JSON" in text
    assert "$.seq: 0 is less than the minimum of 1" in text
    assert f"$.lane_id: '{OTHER_LANE}' on lane {LANE}'s topic" in text
    assert f"on {TOPIC_ROOT}/{LANE}/health: $.at: required member is missing" in text
    assert "$.plate: value not logged (personal data)" in text and "12345678901234567" not in text


async def test_what_lanes_publish_while_the_centre_is_down_arrives_when_it_comes_back(
        broker: MosquittoBroker, pki: Pki, tmp_path: Path) -> None:
    db = tmp_path / "centre.db"
    async with fake_lane(broker, pki) as lane:
        async with Centre(settings(broker, pki, db)) as centre:
            await lane.publish("tx", tx_payload(1))
            await lane.acks_covering({1})
        for seq in range(2, 7):  # the centre is down; its session keeps its subscriptions
            await lane.publish("tx", tx_payload(seq))
        assert lane.inbox["tx/ack"].empty()
        async with Centre(settings(broker, pki, db)) as centre:
            got = await lane.acks_covering(set(range(2, 7)))
            counts = centre.ledger.counts(LANE)
    assert sorted(s for a in got for s in range(a.first_seq, a.last_seq + 1)) == [2, 3, 4, 5, 6]
    assert (counts.stored, counts.gaps) == (6, ())


async def test_the_centre_reconnects_when_the_broker_restarts(
        broker: MosquittoBroker, pki: Pki, tmp_path: Path) -> None:
    async with Centre(settings(broker, pki, tmp_path / "centre.db")) as centre:
        await broker.restart()
        await centre.wait_connections(2)  # its session went with the broker: it subscribes again
        async with fake_lane(broker, pki) as lane:
            await lane.publish("tx", tx_payload(1))
            await lane.acks_covering({1})
        assert centre.connections == 2


async def test_a_fee_table_is_published_signed_and_a_missing_chunk_is_sent_again_on_request(
        broker: MosquittoBroker, pki: Pki, tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    table = ("# fee table 8\n" + "x" * 150).encode()
    now = dt.datetime.now(dt.UTC)
    version = build_list(kind=ListKind.FEE_TABLE, version=8, data=table, now=now, valid_from=now,
                         expires_at=now + dt.timedelta(days=30), private_key=key, key_id=KEY_ID, chunk_size=64)
    async with Centre(settings(broker, pki, tmp_path / "centre.db")) as centre, fake_lane(broker, pki) as lane:
        await centre.publish_list(version, [LANE])
        message = await lane.next("list/manifest")
        chunks = [ListChunk.from_json((await lane.next("list/chunk")).payload) for _ in range(3)]
        await lane.publish("list/request", ListRequest(lane_id=LANE, kind=ListKind.FEE_TABLE, version=8, chunks=(1,),
                                                       at=dt.datetime.now(dt.UTC)).to_dict())
        again = ListChunk.from_json((await lane.next("list/chunk")).payload)
    async with fake_lane(broker, pki) as later:  # a lane that connects afterwards finds it retained
        retained = await later.next("list/manifest")
    manifest = ListManifest.from_json(message.payload)
    assert retained.retain and retained.payload == message.payload
    assert message.properties is not None
    assert 29 * 86400 < message.properties.MessageExpiryInterval <= 30 * 86400
    key.public_key().verify(manifest.signature, manifest.signed_bytes())  # raises if it does not verify
    assert (manifest.chunk_count, manifest.size) == (3, len(table))
    assert b"".join(c.data for c in sorted(chunks, key=lambda c: c.index)) == table
    assert hashlib.sha256(table).digest() == manifest.sha256
    assert (again.index, again.data) == (1, table[64:128])


async def test_a_lane_back_after_missing_a_status_list_delta_is_offered_it_on_its_list_versions(
        broker: MosquittoBroker, pki: Pki, tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    now = dt.datetime.now(dt.UTC)

    def status_list(version: int, base: int | None = None) -> ListVersion:
        data = json.dumps({"version": version, **({"base": base} if base else {}), "add": []}).encode()
        return build_list(kind=ListKind.STATUS_LIST, version=version, data=data, now=now, valid_from=now,
                          expires_at=now + dt.timedelta(days=7), private_key=key, key_id=KEY_ID, base_version=base)

    async with Centre(settings(broker, pki, tmp_path / "centre.db")) as centre:
        # Published (laned centre publish-list) while the lane was offline beyond its session.
        for version in (status_list(42), status_list(43, 42)):
            centre.ledger.store_list(version.kind, version.version, version.manifest, version.data)
        async with fake_lane(broker, pki) as lane:
            versions = example("in_use", "ListVersions") | {"lane_id": LANE, "at": now.isoformat()}
            versions["status_list"] = {"version": 42}
            validate("ListVersions", versions)
            await lane.publish("list/versions", versions)
            manifest = ListManifest.from_json((await lane.next("list/manifest")).payload)
            chunk = ListChunk.from_json((await lane.next("list/chunk")).payload)
    assert (manifest.version, manifest.base_version) == (43, 42)
    key.public_key().verify(manifest.signature, manifest.signed_bytes())
    assert (chunk.version, chunk.data) == (43, status_list(43, 42).data)


async def test_the_cli_signs_a_command_with_a_generated_key_and_prints_the_lanes_result(
        broker: MosquittoBroker, pki: Pki, tmp_path: Path) -> None:
    made = CliRunner().invoke(app, ["centre", "keygen", "--out", str(tmp_path / "keys"), "--key-id", KEY_ID])
    assert made.exit_code == 0, made.output
    public_line = made.output.strip().splitlines()[-1]
    assert public_line.startswith(f'{KEY_ID} = "')
    trusted = CentreKeys({KEY_ID: load_public_key(KEY_ID, public_line.split('"')[1])})
    assert (tmp_path / "keys" / f"{KEY_ID}.key").stat().st_mode & 0o777 == 0o600
    centre = pki.client(CENTRE)
    async with fake_lane(broker, pki) as lane:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "laned.cli", "centre", "send-command", "--host", broker.host, "--port",
            str(broker.port), "--ca", str(pki.ca_cert), "--cert", str(centre.cert), "--key", str(centre.key),
            "--db", str(tmp_path / "centre.db"), "--lane", LANE, "--command", "close_etc",
            "--args", '{"reason": "commissioning"}', "--signing-key", str(tmp_path / "keys" / f"{KEY_ID}.key"),
            "--key-id", KEY_ID, "--wait", str(T * 2), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        message = await lane.next("cmd", timeout=T * 2)  # the CLI starts a Python: allow for it
        outcome = verify(message.payload, lane_id=LANE, keys=trusted, ledger=MemoryLedger(),
                         now=dt.datetime.now(dt.UTC))
        assert isinstance(outcome, Verified), outcome
        await lane.publish("cmd/result", outcome.result(dt.datetime.now(dt.UTC)).to_dict())
        async with asyncio.timeout(T * 2):
            out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    printed = CommandResult.from_json(out.decode().strip().splitlines()[-1])
    assert (printed.command_id, printed.outcome, printed.seq) == (outcome.request.command_id,
                                                                 CommandOutcome.EXECUTED, 1)


async def test_an_operators_answer_from_the_cli_is_sent_by_the_running_centre_and_status_shows_it(
        broker: MosquittoBroker, pki: Pki, tmp_path: Path) -> None:
    db = tmp_path / "centre.db"
    runner = CliRunner(env={"COLUMNS": "240"})  # rich lays the tables out for a wide terminal
    async with Centre(settings(broker, pki, db)) as centre, fake_lane(broker, pki) as lane:
        unknown = tx_payload(1843, name="unknown_outcome")
        await lane.publish("tx", tx_payload(1842))
        await lane.publish("tx", unknown)
        await lane.acks_covering({1842, 1843})
        status = runner.invoke(app, ["centre", "status", "--db", str(db)])
        answered = runner.invoke(app, ["centre", "answer", "--db", str(db), "--lane", LANE, "--seq", "1843",
                                       "--outcome", "not_charged", "--detail", "no clearing record within 48 h"])
        assert answered.exit_code == 0, answered.output
        reply = ReconcileAnswer.from_json((await lane.next("reconcile")).payload)
        masked = runner.invoke(app, ["centre", "ledger", "--db", str(db), "--lane", LANE])
        full = runner.invoke(app, ["centre", "ledger", "--db", str(db), "--lane", LANE, "--full"])
        assert centre.ledger.counts(LANE).pending_reconciliations == 1  # until the lane reports its result
    assert (reply.seq, reply.outcome, reply.detail) == (1843, ReconcileOutcome.NOT_CHARGED,
                                                        "no clearing record within 48 h")
    assert status.exit_code == 0 and LANE in status.output and "1843" in status.output
    assert "1-1841" in status.output  # the gap below the first seq this centre saw
    assert "鲁A*****" in masked.output and "鲁A12345" not in masked.output
    assert "鲁A12345" in full.output


async def test_laned_centre_run_serves_until_sigterm_and_status_reads_what_it_stored(
        broker: MosquittoBroker, pki: Pki, tmp_path: Path) -> None:
    db = tmp_path / "centre.db"
    centre = pki.client(CENTRE)
    async with fake_lane(broker, pki) as lane:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "laned.cli", "centre", "run", "--host", broker.host, "--port", str(broker.port),
            "--ca", str(pki.ca_cert), "--cert", str(centre.cert), "--key", str(centre.key), "--db", str(db),
            "--auto-reconcile", "not_charged", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            # The lane sends before the centre is up: its persistent session does not exist yet, so
            # the lane re-sends until acknowledged, as laned's outbox does.
            got: list[TxAck] = []
            async with asyncio.timeout(T * 3):
                while not got:
                    await lane.publish("tx", tx_payload(1, name="unknown_outcome"))
                    try:
                        got = await lane.acks_covering({1}, timeout=0.5)
                    except TimeoutError:
                        continue
            reply = ReconcileAnswer.from_json((await lane.next("reconcile")).payload)
        finally:
            process.terminate()  # SIGTERM: a clean stop
            async with asyncio.timeout(T):
                _, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    assert reply.outcome is ReconcileOutcome.NOT_CHARGED
    assert "connected to" in err.decode()
    status = CliRunner(env={"COLUMNS": "240"}).invoke(app, ["centre", "status", "--db", str(db)])
    assert status.exit_code == 0 and LANE in status.output and "unknown outcomes waiting" in status.output


async def test_the_last_state_health_and_alarms_of_each_lane_are_kept(
        broker: MosquittoBroker, pki: Pki, tmp_path: Path) -> None:
    db = tmp_path / "centre.db"
    async with Centre(settings(broker, pki, db)) as centre, fake_lane(broker, pki) as lane:
        await lane.publish("state", example("online", "LaneState") | {"lane_id": LANE})
        await lane.publish("state", example("degraded", "LaneState") | {"lane_id": LANE})
        await lane.publish("health", example("degraded", "HealthSnapshot") | {"lane_id": LANE})
        await lane.publish("alarm", example("raised", "Alarm") | {"lane_id": LANE})
        # The centre handles a lane's messages in order: once this is acknowledged, the rest is stored.
        await lane.publish("tx", tx_payload(1))
        await lane.acks_covering({1})
        state = centre.ledger.last_payload(LANE, "state")
        health = centre.ledger.last_payload(LANE, "health")
        alarms = centre.ledger.alarms(LANE)
    status = CliRunner(env={"COLUMNS": "240"}).invoke(app, ["centre", "status", "--db", str(db)])
    assert state is not None and state["state"] == "degraded"
    assert health is not None and health["overall"] == "failed"
    assert [(code, change) for code, change, _, _ in alarms] == [("rsu_offline", "raised")]
    assert "degraded" in status.output and "rsu_offline" in status.output


async def test_a_backlog_is_stored_in_few_commits_and_acknowledged_in_few_ranges(
        broker: MosquittoBroker, pki: Pki, tmp_path: Path) -> None:
    rows, window = 3000, 256  # laned's outbox keeps at most [uplink] window rows unacknowledged (256)
    template = tx_payload(1)
    payloads = {s: json.dumps(template | {"seq": s, "tx_uuid": str(uuid.UUID(int=s + 1000))}).encode()
                for s in range(1, rows + 1)}
    got: list[TxAck] = []
    acked: set[int] = set()
    async with Centre(settings(broker, pki, tmp_path / "centre.db")) as centre, fake_lane(broker, pki) as lane:
        # As a lane back from an outage drains its outbox: in seq order, a window ahead of the acks.
        sent = 0
        async with asyncio.timeout(60):
            while len(acked) < rows:
                room = min(rows - sent, window - (sent - len(acked)))
                async with asyncio.TaskGroup() as tasks:
                    for seq in range(sent + 1, sent + room + 1):
                        tasks.create_task(lane.client.publish(f"{TOPIC_ROOT}/{LANE}/tx", payloads[seq], qos=1))
                sent += room
                ack = TxAck.from_json((await lane.next("tx/ack")).payload)
                got.append(ack)
                acked |= set(range(ack.first_seq, ack.last_seq + 1))
        counts = centre.ledger.counts(LANE)
    assert acked == set(range(1, rows + 1))
    # Ranges of many rows each, not one ack per row (3,000). How many rows one range holds
    # depends on how many arrive within the centre's 50 ms ack delay: ~50 on a busy CI run
    # (61 acks), so the bound asks for 20 on average, not 50.
    assert len(got) <= rows // 20, len(got)
    assert (counts.stored, counts.duplicates_dropped, counts.gaps) == (rows, 0, ())


async def test_the_cli_publishes_a_signed_status_list_the_lane_can_verify(
        broker: MosquittoBroker, pki: Pki, tmp_path: Path) -> None:
    made = CliRunner().invoke(app, ["centre", "keygen", "--out", str(tmp_path / "keys"), "--key-id", KEY_ID])
    assert made.exit_code == 0, made.output
    public = load_public_key(KEY_ID, made.output.strip().splitlines()[-1].split('"')[1])
    listing = tmp_path / "status_list.json"
    listing.write_text(json.dumps({"version": 42, "entries": []}))
    centre = pki.client(CENTRE)
    async with fake_lane(broker, pki) as lane:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "laned.cli", "centre", "publish-list", "--host", broker.host, "--port",
            str(broker.port), "--ca", str(pki.ca_cert), "--cert", str(centre.cert), "--key", str(centre.key),
            "--db", str(tmp_path / "centre.db"), "--kind", "status_list", "--file", str(listing), "--version", "42",
            "--lane", LANE, "--signing-key", str(tmp_path / "keys" / f"{KEY_ID}.key"), "--key-id", KEY_ID,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        async with asyncio.timeout(T * 2):
            out, err = await process.communicate()
        assert process.returncode == 0, err.decode()
        manifest = ListManifest.from_json((await lane.next("list/manifest")).payload)
        chunk = ListChunk.from_json((await lane.next("list/chunk")).payload)
    public.verify(manifest.signature, manifest.signed_bytes())  # raises if it does not verify
    assert (manifest.kind, manifest.version, manifest.format) == (ListKind.STATUS_LIST, 42, "laned-status-json-1")
    assert chunk.data == listing.read_bytes() and hashlib.sha256(chunk.data).digest() == manifest.sha256
    assert "published to G0001-01" in out.decode()


def test_a_mistyped_database_is_refused_not_created(tmp_path: Path) -> None:
    missing = tmp_path / "centre-typo.db"
    for command in (["status"], ["ledger", "--lane", LANE],
                    ["answer", "--lane", LANE, "--seq", "1", "--outcome", "not_charged"]):
        done = CliRunner().invoke(app, ["centre", *command, "--db", str(missing)])
        assert done.exit_code == 2, (command, done.output)
        assert f"no centre database at {missing}" in done.output
    assert not missing.exists()


# -- several transactions per message (tx/batch) ----------------------------------------------------

def batch_payload(*rows: dict[str, Any], lane: str = LANE) -> dict[str, Any]:
    payload = {"lane_id": lane, "transactions": list(rows)}
    validate("TransactionBatch", payload)
    return payload


async def test_a_batch_of_transactions_is_stored_row_by_row_and_acked_by_seq_with_singles_deduplicated(
        broker: MosquittoBroker, pki: Pki, tmp_path: Path) -> None:
    async with Centre(settings(broker, pki, tmp_path / "centre.db")) as centre, fake_lane(broker, pki) as lane:
        await lane.publish("tx", tx_payload(2))  # went up alone first, then again in the backlog's batch
        await lane.publish("tx/batch", batch_payload(*(tx_payload(seq) for seq in range(1, 6))))
        await lane.acks_covering({1, 2, 3, 4, 5})
        counts = centre.ledger.counts(LANE)
        stored = centre.ledger.transaction(LANE, 4)
    assert (counts.received, counts.stored, counts.duplicates_dropped, counts.invalid) == (6, 5, 1, 0)
    # Each row is kept as the Transaction it is, not as a piece of the batch.
    assert stored is not None and stored.to_dict() == tx_payload(4)


async def test_a_batch_breaking_a_rule_is_dropped_whole_with_the_row_named_and_nothing_is_stored(
        broker: MosquittoBroker, pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="laned.centre")
    async with Centre(settings(broker, pki, tmp_path / "centre.db")) as centre, fake_lane(broker, pki) as lane:
        await lane.publish("tx/batch", batch_payload(tx_payload(3), tx_payload(2)))  # seqs not ascending
        await lane.publish("tx/batch", batch_payload(tx_payload(4), tx_payload(5, lane=OTHER_LANE)))
        await lane.publish("tx/batch", {"lane_id": LANE, "transactions": [tx_payload(6) | {"seq": "6"}]})
        await lane.publish("tx/batch", {"lane_id": LANE, "transactions": []})
        await lane.publish("tx", tx_payload(1))  # the centre keeps going
        await lane.acks_covering({1})
        counts = centre.ledger.counts(LANE)
        dropped = dict(centre.dropped)
    assert dropped == {"txBatch": 4} and (counts.invalid, counts.stored) == (4, 1)
    text = caplog.text
    assert "$.transactions[1].seq: 2 does not ascend (the row before has seq 3)" in text
    assert f"$.transactions[1].lane_id: '{OTHER_LANE}' in a batch of lane '{LANE}'" in text
    assert "$.transactions[0].seq" in text and "$.transactions: [] should be non-empty" in text


# -- commissioning from a laptop: laned centre pki + broker-config, a real Mosquitto ----------------------

@asynccontextmanager
async def mosquitto_from(conf: Path, port: int) -> AsyncIterator[None]:
    """``mosquitto -c conf`` as the field engineer starts it; stopped (SIGTERM) on the way out."""
    log_path = conf.with_suffix(".log")
    with log_path.open("wb") as log:
        process = await asyncio.create_subprocess_exec(mosquitto_binary(), "-c", str(conf), stdin=subprocess.DEVNULL,
                                                       stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + T
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                assert process.returncode is None, f"mosquitto exited at start: {log_path.read_text()}"
                assert time.monotonic() < deadline, f"mosquitto did not listen: {log_path.read_text()}"
                await asyncio.sleep(0.02)  # polling the port under the deadline above
                continue
            writer.close()
            break
        yield
    finally:
        if process.returncode is None:
            process.terminate()
        async with asyncio.timeout(T):
            await process.wait()


async def test_a_laptop_broker_made_by_laned_centre_pki_and_broker_config_carries_a_lanes_transactions(
        tmp_path: Path) -> None:
    runner = CliRunner(env={"COLUMNS": "240"})
    pki_dir, conf, port = tmp_path / "pki", tmp_path / "broker" / "mosquitto.conf", free_port()
    made = runner.invoke(app, ["centre", "pki", "--out", str(pki_dir), "--lane", LANE, "--lane", OTHER_LANE])
    assert made.exit_code == 0, made.output
    configured = runner.invoke(app, ["centre", "broker-config", "--pki", str(pki_dir), "--out", str(conf),
                                     "--port", str(port), "--bind", "127.0.0.1"])
    assert configured.exit_code == 0, configured.output
    lane_dir = pki_dir / "lanes" / LANE
    # The files as the lane takes them from its [uplink] ca, cert and key.
    lane_context = client_tls_context(lane_dir / "centre-ca.pem", lane_dir / "lane.pem", lane_dir / "lane.key")
    db = tmp_path / "centre.db"
    settings = CentreSettings(broker=BrokerSettings(host="127.0.0.1", port=port, ca=pki_dir / "ca.pem",
                                                    cert=pki_dir / "centre.pem", key=pki_dir / "centre.key",
                                                    timeout_s=T),
                              db=db, reconnect_min_s=0.05, reconnect_max_s=0.5)
    async with mosquitto_from(conf, port), Centre(settings) as centre, \
            fake_lane_on("127.0.0.1", port, lane_context, LANE) as lane:
        # The ACL keeps a lane to its own topics: this one is dropped by the broker. The lane's
        # own transaction, published after it on the same connection, arrives after it would have.
        await lane.client.publish(f"{TOPIC_ROOT}/{OTHER_LANE}/tx",
                                  json.dumps(tx_payload(7, lane=OTHER_LANE)).encode(), qos=1)
        await lane.publish("tx", tx_payload(1))
        (ack,) = await lane.acks_covering({1})
        lanes = centre.ledger.lanes()
    assert (ack.lane_id, ack.first_seq, ack.last_seq) == (LANE, 1, 1)
    assert lanes == [LANE]
    listed = runner.invoke(app, ["centre", "ledger", "--db", str(db), "--lane", LANE])
    assert listed.exit_code == 0 and str(uuid.UUID(int=1001)) in listed.output, listed.output
    other = runner.invoke(app, ["centre", "ledger", "--db", str(db), "--lane", OTHER_LANE])
    assert other.exit_code == 2 and f"lanes present: {LANE}" in other.output
