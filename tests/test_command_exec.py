"""Executing the centre's signed commands (issue 10, item 4): laned/uplink/command_exec.py.

The journal is real (a JournalWriter on a tmp file); the link is a fake session that keeps
what the lane published, the lane a recorder of the events posted to its machine. Each
scenario says what the centre sent and what the lane did about it: every refusal answers
why and leaves the journal as it was; an executed command is in the ledger with its event
row, once, and a redelivery gets the original answer; a journal that fails mid-command
leaves neither the row nor the ledger entry and nothing applied; a command recorded is a
command carried out, even when its task is cancelled while the journal writes it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from laned.journal import JournalWriter
from laned.journal.testing import CommitFaults
from laned.lane.events import Device, DeviceStatus, Event, OperatorMessage, OperatorRaise
from laned.uplink import command_exec
from laned.uplink.command_exec import CommandExecutor, CommandSettings, LaneControl
from laned.uplink.commands import CentreKeys, sign
from laned.uplink.contract import contract
from laned.uplink.link import Incoming
from laned.uplink.list_service import Installers, ListService, ListSettings
from laned.uplink.messages import CommandResult, ListKind, ListRequest, UplinkMessage

LANE = "G0001-0201-03"
KEY_ID = "centre-2024"
KEY = Ed25519PrivateKey.generate()
CST = dt.timezone(dt.timedelta(hours=8))
NOW = dt.datetime(2024, 11, 22, 10, 0, 0, tzinfo=CST)


# -- the scene ------------------------------------------------------------------------------------

class FakeSession:
    """The link as the executor sees it: what was published, with its correlation data."""

    def __init__(self) -> None:
        self.sent: list[tuple[UplinkMessage, bytes | None]] = []

    async def publish(self, msg: UplinkMessage, *, correlation_data: bytes | None = None) -> None:
        contract().validate(msg.MESSAGE, msg.to_dict())  # the centre would drop anything else
        self.sent.append((msg, correlation_data))

    @property
    def results(self) -> list[CommandResult]:
        return [m for m, _ in self.sent if isinstance(m, CommandResult)]


class FakeUplink:
    def __init__(self) -> None:
        self.resent: list[int] = []
        self.health = 0

    def resend_from(self, seq: int) -> None:
        self.resent.append(seq)

    async def publish_health(self, session: Any) -> None:
        self.health += 1


class Scene:
    def __init__(self, writer: JournalWriter, faults: CommitFaults, *, display: bool = True, io: bool = True,
                 io_down: bool = False) -> None:
        self.writer = writer
        self.faults = faults
        self.posted: list[Event] = []
        self.session = FakeSession()
        self.uplink = FakeUplink()
        self.seq = 0
        self.clock = [NOW]  # the lane's wall clock; a scenario moves it
        self.closed_by: dict[Device, str] = {}  # what keeps ETC closed, besides the centre
        down = {Device.IO} if io_down else set()
        self.lane = LaneControl(post=self.posted.append, closed_by=lambda: self.closed_by,
                                is_down=lambda d: d in down, has_display=display, has_io=io)
        self.executor = CommandExecutor(CommandSettings(lane_id=LANE, keys=CentreKeys({KEY_ID: KEY.public_key()})),
                                        writer=writer, lane=self.lane, uplink=self.uplink,
                                        wall=lambda: self.clock[0])

    def command(self, command: str, args: dict[str, Any], **over: Any) -> tuple[bytes, str]:
        """A signed command with the centre's next seq (``over`` changes members before signing)."""
        self.seq += 1
        body: dict[str, Any] = {
            "lane_id": LANE, "command_id": str(uuid.uuid4()), "seq": self.seq,
            "issued_at": (NOW - dt.timedelta(seconds=2)).isoformat(),
            "expires_at": (NOW + dt.timedelta(minutes=5)).isoformat(), "command": command, "args": args}
        body.update(over)
        return sign(body, KEY, KEY_ID), body["command_id"]

    async def deliver(self, raw: bytes, correlation: bytes | None = None) -> CommandResult | None:
        before = len(self.session.results)
        item = Incoming(channel="cmd", topic=f"etc/v1/{LANE}/cmd", message=None, payload=raw,
                        correlation_data=correlation)
        await self.executor(item, self.session)  # type: ignore[arg-type]  # the fake session
        got = self.session.results[before:]
        assert len(got) <= 1
        return got[0] if got else None

    def journal(self) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """(event rows: kind, reason, detail; ledger rows: command_id, seq, command), from the file."""
        con = sqlite3.connect(self.writer.path)  # type: ignore[arg-type]
        try:
            rows = con.execute("SELECT kind, reason, detail, message FROM transactions ORDER BY seq").fetchall()
            ledger = con.execute("SELECT command_id, seq, command FROM commands ORDER BY seq").fetchall()
        finally:
            con.close()
        return rows, ledger


@pytest.fixture
def writer(tmp_path: Path) -> Iterator[tuple[JournalWriter, CommitFaults]]:
    faults = CommitFaults()
    w = JournalWriter.open(tmp_path / "journal.db", LANE, now=NOW, commit_hook=faults).start()
    yield w, faults
    w.close()


@pytest.fixture
def scene(writer: tuple[JournalWriter, CommitFaults]) -> Scene:
    return Scene(*writer)


def executed(result: CommandResult | None, command_id: str) -> CommandResult:
    assert result is not None and result.outcome == "executed", result
    assert result.command_id == command_id and result.lane_id == LANE
    return result


# -- refusals: answered with why, nothing applied, nothing journalled ------------------------------

def _later(**kw: Any) -> dict[str, Any]:
    return {"issued_at": (NOW + dt.timedelta(minutes=10)).isoformat(),
            "expires_at": (NOW + dt.timedelta(minutes=20)).isoformat(), **kw}


REFUSALS: list[tuple[str, Any, str, str]] = [
    # (scenario, how the command is spoilt, the contract's reason, the lane's code in the detail)
    ("a bad signature", lambda raw: raw.replace(b'"reason":"RSU maintenance"', b'"reason":"RSU maintenancf"'),
     "bad_signature", "bad_signature"),
    ("no signature", lambda raw: json.dumps({k: v for k, v in json.loads(raw).items() if k != "signature"}).encode(),
     "bad_signature", "missing_signature"),
    ("an unknown key", lambda raw: sign(json.loads(raw), Ed25519PrivateKey.generate(), "stolen-key"),
     "unknown_key", "unknown_key"),
    ("another lane", lambda raw: sign({**json.loads(raw), "lane_id": "G0001-0201-04"}, KEY, KEY_ID),
     "wrong_lane", "wrong_lane"),
    ("an expired command", lambda raw: sign({**json.loads(raw), "issued_at": (NOW - dt.timedelta(hours=1)).isoformat(),
                                             "expires_at": (NOW - dt.timedelta(minutes=1)).isoformat()}, KEY, KEY_ID),
     "expired", "expired"),
    ("a command not yet valid", lambda raw: sign({**json.loads(raw), **_later()}, KEY, KEY_ID),
     "not_yet_valid", "not_yet_valid"),
    ("an unknown command (lower_barrier)",
     lambda raw: sign({**json.loads(raw), "command": "lower_barrier", "args": {}}, KEY, KEY_ID),
     "malformed", "unknown_command"),
    ("bad arguments", lambda raw: sign({**json.loads(raw), "args": {"reason": 7}}, KEY, KEY_ID),
     "malformed", "bad_arguments"),
]


@pytest.mark.parametrize(("scenario", "spoil", "reason", "code"), REFUSALS, ids=[r[0] for r in REFUSALS])
async def test_a_spoilt_command_is_refused_with_why_and_changes_nothing(scene: Scene, scenario: str, spoil: Any,
                                                                       reason: str, code: str) -> None:
    raw, command_id = scene.command("close_etc", {"reason": "RSU maintenance"})
    before = scene.journal()
    result = await scene.deliver(spoil(raw), correlation=command_id.encode())
    assert result is not None, f"{scenario}: no answer"
    assert (result.outcome, result.reason) == ("refused", reason), result
    assert result.command_id == command_id and (result.detail or "").startswith(f"{code}: ")
    assert scene.session.sent[-1][1] == command_id.encode()  # the correlation data, copied
    assert scene.journal() == before and scene.posted == [] and scene.uplink.resent == []


async def test_a_replayed_id_and_a_lower_seq_are_refused_after_an_executed_command(scene: Scene) -> None:
    raw, first = scene.command("close_etc", {"reason": "RSU maintenance"})
    executed(await scene.deliver(raw), first)
    posted, journal = list(scene.posted), scene.journal()
    # The same seq under a new id: a replay of an old command with its id changed.
    scene.seq -= 1
    raw2, second = scene.command("close_etc", {"reason": "RSU maintenance"})
    result = await scene.deliver(raw2)
    assert result is not None and (result.outcome, result.reason) == ("refused", "replayed")
    assert (result.detail or "").startswith("seq_not_above: ") and result.command_id == second
    assert scene.posted == posted and scene.journal() == journal


async def test_a_command_the_lane_cannot_do_now_is_refused_not_possible_and_not_recorded(
        writer: tuple[JournalWriter, CommitFaults]) -> None:
    scene = Scene(*writer, display=False, io_down=True)
    for command, args, why in [
            ("show_message", {"line1": "ETC暂停", "duration_s": 30}, "no fee display"),
            ("raise_barrier", {"operator": "op-0231", "reason": "OBU broken"}, "IO module is offline"),
            ("fetch_list", {"kind": "status_list", "version": 42}, "fetch_list is not available")]:
        raw, command_id = scene.command(command, args)
        result = await scene.deliver(raw)
        assert result is not None and (result.outcome, result.reason) == ("refused", "not_possible"), result
        assert why in (result.detail or ""), result.detail
    assert scene.journal() == ([], []) and scene.posted == []


# -- executing --------------------------------------------------------------------------------------

async def test_close_etc_closes_etc_on_purpose_and_is_in_the_ledger_with_its_event_row(scene: Scene) -> None:
    raw, command_id = scene.command("close_etc", {"reason": "RSU maintenance"})
    result = executed(await scene.deliver(raw, correlation=b"corr-1"), command_id)
    assert scene.posted == [DeviceStatus(Device.OPERATOR, False, "closed by the centre: RSU maintenance")]
    assert "ETC closed on purpose" in (result.detail or "")
    rows, ledger = scene.journal()
    assert ledger == [(command_id, 1, "close_etc")]
    assert [(k, r) for k, r, _, _ in rows] == [("command", "close_etc")] and command_id in rows[0][2]
    assert scene.session.sent[-1][1] == b"corr-1"


async def test_a_remote_raise_goes_to_the_lane_machine_and_is_journalled_as_remote_raise(scene: Scene) -> None:
    raw, command_id = scene.command("raise_barrier", {"operator": "op-0231", "reason": "OBU broken, paid at booth"})
    result = executed(await scene.deliver(raw), command_id)
    assert scene.posted == [OperatorRaise("op-0231", "OBU broken, paid at booth")]
    rows, ledger = scene.journal()
    assert ledger == [(command_id, 1, "raise_barrier")]
    assert rows[0][0] == "remote_raise" and "operator op-0231: OBU broken, paid at booth" in rows[0][2]
    assert "interlock" in (result.detail or "")


async def test_show_message_reaches_the_display_path_and_the_others_their_service(scene: Scene) -> None:
    cases = [("show_message", {"line1": "ETC暂停", "line2": "请走人工车道", "duration_s": 30}),
             ("open_etc", {}), ("resend_from", {"seq": 1}), ("publish_health", {})]  # seq 1: the message's row
    for command, args in cases:
        raw, command_id = scene.command(command, args)
        executed(await scene.deliver(raw), command_id)
    assert scene.posted == [OperatorMessage("ETC暂停", "请走人工车道", 30.0),
                            DeviceStatus(Device.OPERATOR, True, "opened by the centre")]
    assert scene.uplink.resent == [1] and scene.uplink.health == 1
    assert [c for _, _, c in scene.journal()[1]] == [c for c, _ in cases]


async def test_resend_from_clears_the_acks_from_that_seq_in_the_same_transaction(scene: Scene) -> None:
    w = scene.writer
    seqs = [w.call(lambda mj: mj.journal.record_event("follow_car", NOW)).seq for _ in range(4)]
    assert w.call(lambda mj: mj.journal.outbox_ack(seqs[0], seqs[-1], NOW)) == 4
    raw, command_id = scene.command("resend_from", {"seq": seqs[2]})
    result = executed(await scene.deliver(raw), command_id)
    waiting = [e.seq for e in w.call(lambda mj: mj.journal.outbox_after(0, 100))]
    # The two asked for wait again, and so does the command's own row (new, not acked).
    assert waiting[:2] == seqs[2:] and len(waiting) == 3
    assert "2 of them had been acknowledged" in (result.detail or "")


# -- at most once -----------------------------------------------------------------------------------

async def test_a_redelivered_command_executes_once_and_gets_its_original_result(scene: Scene) -> None:
    raw, command_id = scene.command("raise_barrier", {"operator": "op-0231", "reason": "paid at the booth"})
    first = executed(await scene.deliver(raw, correlation=b"c1"), command_id)
    journal = scene.journal()
    again = await scene.deliver(raw, correlation=b"c1")  # QoS 1 redelivery: the same bytes
    assert again == first  # the original result, its time included, not a new one
    assert scene.posted == [OperatorRaise("op-0231", "paid at the booth")]  # raised once
    assert scene.journal() == journal
    assert scene.session.sent[-1][1] == b"c1"


async def test_a_failing_journal_records_neither_row_nor_ledger_and_applies_nothing(scene: Scene) -> None:
    raw, command_id = scene.command("raise_barrier", {"operator": "op-0231", "reason": "paid at the booth"})
    scene.faults.fail_next(1)  # the command's commit fails: the disk is full
    result = await scene.deliver(raw)
    assert result is not None and (result.outcome, result.reason) == ("refused", "not_possible")
    assert "could not record" in (result.detail or "")
    assert scene.journal() == ([], []) and scene.posted == []
    # The centre sends it again (the same command): now it runs, once.
    executed(await scene.deliver(raw), command_id)
    assert scene.posted == [OperatorRaise("op-0231", "paid at the booth")]
    assert len(scene.journal()[1]) == 1


# -- a closure survives a restart -------------------------------------------------------------------

async def test_a_lane_the_centre_closed_stays_closed_after_a_restart_until_open_etc(scene: Scene) -> None:
    raw, command_id = scene.command("close_etc", {"reason": "RSU maintenance"})
    executed(await scene.deliver(raw), command_id)
    scene.posted.clear()
    await scene.executor.restore()  # what run_lane does at start
    assert len(scene.posted) == 1 and isinstance(scene.posted[0], DeviceStatus)
    status = scene.posted[0]
    assert (status.device, status.online) == (Device.OPERATOR, False) and command_id in status.detail
    raw, command_id = scene.command("open_etc", {"reason": "done"})
    executed(await scene.deliver(raw), command_id)
    scene.posted.clear()
    await scene.executor.restore()
    assert scene.posted == []


# -- fetch_list: recorded, then asked ------------------------------------------------------------------

class ListDownloads:
    """The scene's lane given list downloads (the real ListService), not yet connected:
    :meth:`connect` does what ListService.serve does while a session is up."""

    def __init__(self, scene: Scene, tmp_path: Path) -> None:
        self.scene = scene
        self.service = ListService(lane_id=LANE, keys={}, settings=ListSettings(fee_table_dir=tmp_path / "fees"),
                                   status=None, fees=None,
                                   install=Installers(status_list=lambda made: None, fee_table=lambda fees: None),
                                   wall=lambda: scene.clock[0], tz=CST)
        scene.executor.lane = LaneControl(post=scene.posted.append, closed_by=dict, is_down=lambda d: False,
                                          has_display=True, has_io=True, fetch_list=self.service.fetch)

    def connect(self) -> None:
        self.service._session = self.scene.session

    def requests(self) -> list[ListRequest]:
        return [m for m, _ in self.scene.session.sent if isinstance(m, ListRequest)]


async def test_fetch_list_asks_the_centre_only_once_the_command_is_in_the_ledger(scene: Scene, tmp_path: Path) -> None:
    lists = ListDownloads(scene, tmp_path)
    lists.connect()
    ledger_when_asked: list[list[tuple[Any, ...]]] = []
    publish = scene.session.publish

    async def watching(msg: UplinkMessage, *, correlation_data: bytes | None = None) -> None:
        if isinstance(msg, ListRequest):
            ledger_when_asked.append(scene.journal()[1])
        await publish(msg, correlation_data=correlation_data)

    scene.session.publish = watching  # type: ignore[method-assign]
    raw, command_id = scene.command("fetch_list", {"kind": "fee_table", "version": 7})
    result = executed(await scene.deliver(raw), command_id)
    [request] = lists.requests()
    assert (request.kind, request.version) == (ListKind.FEE_TABLE, 7)
    assert ledger_when_asked == [[(command_id, 1, "fetch_list")]]
    assert "fee_table version 7 requested from the centre" in (result.detail or "")


async def test_fetch_list_the_journal_cannot_record_asks_the_centre_for_nothing(scene: Scene, tmp_path: Path) -> None:
    lists = ListDownloads(scene, tmp_path)
    lists.connect()
    raw, command_id = scene.command("fetch_list", {"kind": "status_list", "version": 42})
    scene.faults.fail_next(1)  # the disk is full
    result = await scene.deliver(raw)
    assert result is not None and (result.outcome, result.reason) == ("refused", "not_possible"), result
    assert "nothing was done" in (result.detail or "")
    assert lists.requests() == [] and scene.journal() == ([], [])  # and so it is
    executed(await scene.deliver(raw), command_id)  # sent again: asked, once
    assert [r.version for r in lists.requests()] == [42]


async def test_fetch_list_with_the_link_down_is_refused_unrecorded_and_runs_when_sent_again(
        scene: Scene, tmp_path: Path) -> None:
    lists = ListDownloads(scene, tmp_path)  # not connected: the list service's session ended
    raw, command_id = scene.command("fetch_list", {"kind": "status_list", "version": 42})
    result = await scene.deliver(raw)
    assert result is not None and (result.outcome, result.reason) == ("refused", "not_possible"), result
    assert "link to the centre dropped" in (result.detail or "") and "send it again" in (result.detail or "")
    assert lists.requests() == [] and scene.journal() == ([], [])
    lists.connect()  # the link is back; the centre re-sends the same command
    executed(await scene.deliver(raw), command_id)
    assert [(r.kind, r.version) for r in lists.requests()] == [(ListKind.STATUS_LIST, 42)]
    assert scene.journal()[1] == [(command_id, 1, "fetch_list")]


# -- a command recorded is a command carried out ------------------------------------------------------

class HeldCommit:
    """A commit hook that, once armed, holds the next commit on the writer thread until
    released: the command's journal write is in flight, not yet committed."""

    def __init__(self) -> None:
        self.armed = False
        self.reached = threading.Event()
        self.release = threading.Event()

    def __call__(self, what: str) -> None:
        if self.armed:
            self.armed = False
            self.reached.set()
            self.release.wait(10)


@pytest.mark.parametrize(("command", "args", "applied"), [
    ("close_etc", {"reason": "RSU maintenance"}, DeviceStatus(Device.OPERATOR, False, "closed by the centre: RSU maintenance")),
    ("raise_barrier", {"operator": "op-0231", "reason": "paid at the booth"}, OperatorRaise("op-0231", "paid at the booth")),
], ids=["close_etc", "raise_barrier"])
async def test_a_command_cancelled_while_the_journal_writes_it_is_still_carried_out(
        tmp_path: Path, command: str, args: dict[str, Any], applied: Event) -> None:
    held = HeldCommit()
    w = JournalWriter.open(tmp_path / "journal.db", LANE, now=NOW, commit_hook=held).start()
    try:
        scene = Scene(w, CommitFaults())
        raw, command_id = scene.command(command, args)
        held.armed = True
        task = asyncio.create_task(scene.deliver(raw))
        assert await asyncio.to_thread(held.reached.wait, 5), "the command's journal write never started"
        # Another task of the uplink session raised LinkDown: its task group cancels this one,
        # while the writer is committing the command.
        task.cancel()
        await asyncio.sleep(0)  # the cancellation lands (the task wakes before this coroutine)
        held.release.set()
        async with asyncio.timeout(10):
            with pytest.raises(asyncio.CancelledError):
                await task  # the cancellation goes on: the session is going down
        await w.submit_async(lambda mj: None)  # the writer is past the command's write
        assert scene.journal()[1] == [(command_id, 1, command)]  # the writer committed it
        assert scene.posted == [applied]  # and the lane carried it out
        assert scene.session.results == []  # no answer on the dying session
        # Next session: the broker delivers the command again; the ledger answers, nothing runs twice.
        executed(await scene.deliver(raw), command_id)
        assert scene.posted == [applied]
    finally:
        held.release.set()
        w.close()


async def test_a_command_cancelled_while_the_journal_stalls_ends_after_a_bounded_wait(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A stalled disk must not hold the dying session (and the reconnect that reports the
    stall) for as long as it stalls: the cancellation goes on after OUTCOME_WAIT_S, saying so."""
    monkeypatch.setattr(command_exec, "OUTCOME_WAIT_S", 0.2)
    held = HeldCommit()
    w = JournalWriter.open(tmp_path / "journal.db", LANE, now=NOW, commit_hook=held).start()
    try:
        scene = Scene(w, CommitFaults())
        raw, _ = scene.command("close_etc", {"reason": "RSU maintenance"})
        held.armed = True
        task = asyncio.create_task(scene.deliver(raw))
        assert await asyncio.to_thread(held.reached.wait, 5), "the command's journal write never started"
        task.cancel()
        async with asyncio.timeout(5):
            with pytest.raises(asyncio.CancelledError):
                await task  # the commit is still held: the wait gave up
        assert scene.posted == [] and scene.session.results == []
        assert "the journal has not answered in 0.2 s" in caplog.text
    finally:
        held.release.set()
        w.close()


# -- what the lane cannot do when it comes to it ----------------------------------------------------------

async def test_resend_from_beyond_the_end_of_the_journal_is_refused_saying_where_it_ends(scene: Scene) -> None:
    w = scene.writer
    seqs = [w.call(lambda mj: mj.journal.record_event("follow_car", NOW)).seq for _ in range(3)]
    raw, command_id = scene.command("resend_from", {"seq": seqs[-1] + 10})
    result = await scene.deliver(raw)
    assert result is not None and (result.outcome, result.reason) == ("refused", "not_possible"), result
    assert f"the journal ends at seq {seqs[-1]}" in (result.detail or "")
    assert scene.uplink.resent == [] and scene.journal()[1] == []  # not recorded: it may be sent again
    raw, command_id = scene.command("resend_from", {"seq": seqs[-1]})  # the last row: there is one to send
    executed(await scene.deliver(raw), command_id)
    assert scene.uplink.resent == [seqs[-1]]


class SlowJournal:
    """The real writer, each of whose operations takes ``took`` of the lane clock before it
    runs: a queue of vehicles' writes, a stalled eMMC."""

    def __init__(self, writer: JournalWriter, clock: list[dt.datetime], took: dt.timedelta) -> None:
        self.writer, self.clock, self.took = writer, clock, took

    def submit_async(self, op: Any, **kw: Any) -> Any:
        def slow(mj: Any) -> Any:
            self.clock[0] += self.took
            return op(mj)
        return self.writer.submit_async(slow, **kw)


async def test_a_command_that_expires_while_it_waits_for_the_journal_is_refused_expired_and_not_run(
        scene: Scene) -> None:
    scene.executor.writer = SlowJournal(scene.writer, scene.clock, dt.timedelta(minutes=3))
    raw, command_id = scene.command("raise_barrier", {"operator": "op-0231", "reason": "paid at the booth"},
                                    expires_at=(NOW + dt.timedelta(minutes=5)).isoformat())
    result = await scene.deliver(raw)  # valid when it came (10:00), 10:06 once the journal could take it
    assert result is not None and (result.outcome, result.reason) == ("refused", "expired"), result
    assert (result.detail or "").startswith("expired: ") and "10:06:00" in (result.detail or "")
    assert scene.posted == [] and scene.journal() == ([], [])


async def test_a_command_recorded_in_time_on_a_slow_journal_is_stamped_when_it_ran(scene: Scene) -> None:
    scene.executor.writer = SlowJournal(scene.writer, scene.clock, dt.timedelta(minutes=1))
    raw, command_id = scene.command("close_etc", {"reason": "RSU maintenance"})
    result = executed(await scene.deliver(raw), command_id)
    assert result.at == NOW + dt.timedelta(minutes=2)  # after the check's and the record's waits


# -- result details fit the contract --------------------------------------------------------------------

async def test_a_long_result_detail_is_cut_to_the_contracts_limit_and_says_so(scene: Scene) -> None:
    # ETC stays closed for many reasons, each long: open_etc's detail names them all.
    scene.closed_by.update({d: f"{d} fault: " + "no answer on the bus; " * 20 for d in Device})
    raw, command_id = scene.command("open_etc", {})
    result = executed(await scene.deliver(raw), command_id)  # FakeSession validated it against the contract
    detail = result.detail or ""
    assert len(detail) == 1000 and detail.endswith(CommandResult.DETAIL_CUT)
    assert detail.startswith("the centre's closure is lifted, but ETC stays closed by: ")
    contract().validate("CommandResult", json.loads(result.to_json()))
    # The ledger kept the answer as sent: a redelivery gets it back unchanged.
    assert await scene.deliver(raw) == result
    # A refusal whose reason is long (a journal error quoting SQLite at length) fits too.
    raw, _ = scene.command("close_etc", {"reason": "RSU maintenance"})
    scene.faults.fail_next(1, sqlite3.OperationalError("disk I/O error: " + "sector unreadable; " * 100))
    refused = await scene.deliver(raw)
    assert refused is not None and refused.reason == "not_possible"
    assert len(refused.detail or "") == 1000 and (refused.detail or "").endswith(CommandResult.DETAIL_CUT)


# -- the trusted keys in laned.toml -----------------------------------------------------------------

def test_the_keygen_line_goes_into_command_keys_and_those_keys_verify_commands(tmp_path: Path) -> None:
    from laned.centre.keys import generate
    from laned.config import load_config
    from tests.test_config import _uplink, example, write

    made = generate(tmp_path / "keys", "centre-cmd-1")
    cfg = load_config(write(tmp_path, example() + _uplink(
        tmp_path, extra=f"command_clock_skew_s = 5\n[uplink.command_keys]\n{made.config_line}\n")))
    assert cfg.uplink is not None and cfg.uplink.command_clock_skew_s == 5
    lane = LaneControl(post=lambda e: None, closed_by=dict, is_down=lambda d: False, has_display=True, has_io=True)
    built = CommandExecutor.from_config(cfg.uplink, LANE, display_profile=None, writer=None, lane=lane,
                                        control=FakeUplink(), wall=lambda: NOW)
    assert list(built.settings.keys) == ["centre-cmd-1"] and built.settings.clock_skew_s == 5
    assert built.settings.keys["centre-cmd-1"] == CentreKeys.from_texts({"k": made.public_b64})["k"]


def test_without_command_keys_the_centre_keys_verify_commands(tmp_path: Path) -> None:
    from laned.config import load_config
    from tests.test_config import _uplink, example, write

    cfg = load_config(write(tmp_path, example() + _uplink(
        tmp_path, extra='[uplink.centre_keys]\ncentre-2024 = "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="\n')))
    assert cfg.uplink is not None and cfg.uplink.command_keys is None
    lane = LaneControl(post=lambda e: None, closed_by=dict, is_down=lambda d: False, has_display=True, has_io=True)
    built = CommandExecutor.from_config(cfg.uplink, LANE, display_profile=None, writer=None, lane=lane,
                                        control=FakeUplink(), wall=lambda: NOW)
    assert list(built.settings.keys) == ["centre-2024"] and built.settings.clock_skew_s == 30


def test_a_bad_command_key_stops_the_start_naming_its_key_id(tmp_path: Path) -> None:
    from tests.test_config import _uplink, error_of, example

    msg = error_of(tmp_path, example() + _uplink(tmp_path, extra='[uplink.command_keys]\nops-key = "not a key"\n'))
    assert "command_keys" in msg and "'ops-key'" in msg and "base64" in msg


# -- more scenarios ---------------------------------------------------------------------------------

async def test_a_payload_without_a_readable_command_id_gets_no_result_and_changes_nothing(
        scene: Scene, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", logger="laned.uplink.commands")
    assert await scene.deliver(b"not json at all") is None
    assert scene.session.sent == [] and scene.journal() == ([], []) and scene.posted == []
    assert any("no readable command id" in r.getMessage() for r in caplog.records)


def test_after_resend_from_the_uplink_window_scans_again_from_that_seq(
        writer: tuple[JournalWriter, CommitFaults]) -> None:
    from laned.uplink.outbox import transaction_window

    w, _ = writer
    seqs = [w.call(lambda mj: mj.journal.record_event("follow_car", NOW)).seq for _ in range(5)]
    window = transaction_window(8)
    window.connected()
    sent = window.take(w.call(lambda mj: mj.journal.outbox_after(0, 8)), 0.0)
    assert [e.seq for e in sent] == seqs
    acked = window.acked(seqs[0], seqs[-1])
    w.call(lambda mj: mj.journal.outbox_ack(seqs[0], seqs[-1], NOW, sent=acked))
    window.settled(acked)  # what the publisher's mark task does once the journal has marked them
    assert window.next_scan_after() == seqs[-1]
    assert w.call(lambda mj: mj.journal.outbox_resend_from(seqs[3])) == 2  # what resend_from does in the journal
    window.rescan(seqs[3] - 1)  # what UplinkService.resend_from does
    again = window.take(w.call(lambda mj: mj.journal.outbox_after(window.next_scan_after(), 8)), 1.0)
    assert [e.seq for e in again] == seqs[3:]


def test_a_message_must_fit_the_narrower_text_line_of_the_display_profile(tmp_path: Path) -> None:
    from laned.config import load_config
    from laned.drivers.device_profiles import DEFAULT_FEE_DISPLAY_PROFILE
    from tests.test_config import _uplink, example, write

    cfg = load_config(write(tmp_path, example() + _uplink(tmp_path)))
    assert cfg.uplink is not None
    profile = DEFAULT_FEE_DISPLAY_PROFILE
    narrow = profile.model_copy(update={"line2": profile.line2.model_copy(update={"registers": 4})})
    lane = LaneControl(post=lambda e: None, closed_by=dict, is_down=lambda d: False, has_display=True, has_io=True)
    built = CommandExecutor.from_config(cfg.uplink, LANE, display_profile=narrow, writer=None, lane=lane,
                                        control=FakeUplink(), wall=lambda: NOW)
    assert built.settings.display_line_bytes == 8  # 4 registers, 2 GBK bytes each
