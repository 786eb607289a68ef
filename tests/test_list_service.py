"""Status lists and fee tables on the running daemon: laned/uplink/list_service.py.

The service between the uplink and the download/apply: a manifest's request goes out, the
chunks complete a version, it is applied in a task of the service's own, installed into
the lane's references in one step, saved, and ``list/versions`` says so; a refusal is the
``list_update_refused`` alarm and the version in use stays; an old status list raises
``status_list_old`` and, where the operator chose it, closes ETC. A fake session records
what is published; the lists, downloads and files are the real ones.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

from laned.lane.events import ClearAlarm, Device, DeviceStatus, RaiseAlarm
from laned.lane.fee_table import FeeSchedule, FeeTable
from laned.lane.list_update import StalePolicy
from laned.lane.status_list import StatusList
from laned.uplink.link import Incoming
from laned.uplink.list_apply import StatusListInUse, load_status_list
from laned.uplink.list_service import Installers, ListService, ListSettings
from laned.uplink.messages import ListKind, ListRequest, ListVersions, UplinkMessage
from tests.test_list_update import CST, FEE_TOML, KEYS, LANE, NOW, OTHER_KEY, Centre, status_payload

OLD_FEES = b'version = 7\nvalid_from = 2024-01-01T00:00:00+08:00\n[stations."3701-0102"]\n1 = 3000\n12 = 8000\n'


class Session:
    """Stands for the MQTT session: what the service publishes, in order."""

    def __init__(self) -> None:
        self.sent: list[UplinkMessage] = []

    async def publish(self, msg: UplinkMessage) -> None:
        self.sent.append(msg)

    def of(self, cls: type[Any]) -> list[Any]:
        return [m for m in self.sent if isinstance(m, cls)]


class Lane:
    """The references the daemon swaps (the lane machine's and the health monitor's), the
    alarms and the degraded-mode events it receives."""

    def __init__(self, tmp: Path, *, status: StatusListInUse | None = None, fees: FeeSchedule | None = None,
                 on_stale: StalePolicy = StalePolicy.ALARM, chunk_timeout_s: float = 30.0) -> None:
        self.clock = [NOW]
        self.alarms: list[RaiseAlarm | ClearAlarm] = []
        self.posted: list[DeviceStatus] = []
        self.status = status.store if status is not None else StatusList()
        self.fees = fees
        self.path = tmp / "status_list.bin"
        self.fee_dir = tmp / "fee_tables"
        self.service = ListService(
            lane_id=LANE, keys=KEYS,
            settings=ListSettings(status_list_path=self.path, fee_table_dir=self.fee_dir, on_stale=on_stale,
                                  chunk_timeout_s=chunk_timeout_s, max_requests=2,
                                  status_list_max_age_s=48 * 3600),
            status=status, fees=fees, install=Installers(status_list=self._use_status, fee_table=self._use_fees),
            wall=lambda: self.clock[0], tz=CST, alarm=self.alarms.append, post=self.posted.append, tick_s=0.001)
        self.session = Session()

    def _use_status(self, made: StatusListInUse) -> None:
        self.status = made.store

    def _use_fees(self, schedule: FeeSchedule) -> None:
        self.fees = schedule

    def raised(self, code: str) -> list[str]:
        return [a.detail for a in self.alarms if isinstance(a, RaiseAlarm) and a.code == code]

    async def receive(self, channel: str, payload: bytes, *, retained: bool = False) -> None:
        item = Incoming(channel=channel, topic=f"etc/v1/{LANE}/x", message=None, payload=payload, retained=retained)
        await self.service.on_message(item, self.session)

    async def publish(self, centre: Centre, chunks: list[bytes] | None = None, *, retained: bool = False) -> None:
        """The centre's publish_list: the manifest, then every chunk; then the apply runs."""
        await self.receive("listManifest", centre.manifest, retained=retained)
        for raw in centre.chunks() if chunks is None else chunks:
            await self.receive("listChunk", raw)
        await self.settle()

    async def settle(self) -> None:
        """Until the applies started are done (each runs in a task of the service's)."""
        async with asyncio.timeout(10):
            while applying := [t for t in asyncio.all_tasks() if t.get_name().startswith("list-apply-")]:
                await asyncio.wait(applying)

    async def running(self, body: Any) -> Any:
        """``body`` with the service's task (its task group holds the applies) running."""
        task = asyncio.create_task(self.service.run())
        await asyncio.sleep(0)
        try:
            return await body()
        finally:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass


async def until(condition: Any, what: str) -> None:
    """Wait (the service looks every millisecond here) until ``condition()``, or fail naming ``what``."""
    try:
        async with asyncio.timeout(5):
            while not condition():  # noqa: ASYNC110 - the fake session's and the alarms' state
                await asyncio.sleep(0.001)
    except TimeoutError:
        raise AssertionError(f"not within 5 s: {what}") from None


def full_list(version: int, add: range) -> Centre:
    return Centre(ListKind.STATUS_LIST, version, status_payload(version, add=add))


def obu(i: int) -> bytes:
    return i.to_bytes(4, "big")


def test_a_full_list_from_the_centre_is_applied_installed_saved_and_announced_without_asking_twice(tmp_path):
    lane = Lane(tmp_path)

    async def scenario() -> None:
        lane.service._session = lane.session  # connected
        await lane.publish(full_list(42, range(100)))

    asyncio.run(lane.running(scenario))
    # The chunks follow a manifest published now: asking for them would send each twice.
    assert lane.session.of(ListRequest) == []
    assert (lane.status.version, len(lane.status)) == (42, 100) and lane.status.is_listed_obu(obu(7)) == 3
    assert lane.service.status is not None and lane.service.status.store is lane.status
    [versions] = lane.session.of(ListVersions)
    assert versions.status_list is not None and versions.status_list.version == 42
    assert versions.status_list.entries == 100
    again = load_status_list(lane.path)  # a restart finds it, with its manifest
    assert again.version == 42 and again.manifest is not None and again.manifest.version == 42
    assert lane.service.downloads.status_list.in_use == 42 and not lane.raised("list_update_refused")


def test_a_retained_manifest_seen_on_connecting_asks_for_every_chunk(tmp_path):
    # Published while the lane was away: the manifest is retained, its chunks are not.
    lane = Lane(tmp_path)

    async def scenario() -> None:
        await lane.receive("listManifest", full_list(42, range(100)).manifest, retained=True)

    asyncio.run(lane.running(scenario))
    [request] = lane.session.of(ListRequest)
    assert (request.kind, request.version, request.chunks) == (ListKind.STATUS_LIST, 42, None)
    assert lane.status.version == 0  # nothing applied before the chunks are in


def test_a_delta_applies_on_top_of_the_list_in_use(tmp_path):
    lane = Lane(tmp_path)

    async def scenario() -> None:
        await lane.publish(full_list(42, range(100)))
        delta = Centre(ListKind.STATUS_LIST, 43, status_payload(43, 42, add=range(100, 120), remove=range(0, 10)),
                       base=42)
        await lane.publish(delta)

    asyncio.run(lane.running(scenario))
    assert (lane.status.version, len(lane.status)) == (43, 110)
    assert lane.status.is_listed_obu(obu(5)) is None and lane.status.is_listed_obu(obu(110)) == 3
    assert lane.service.installed == [(ListKind.STATUS_LIST, 42), (ListKind.STATUS_LIST, 43)]
    assert load_status_list(lane.path).version == 43


def test_a_manifest_with_a_bad_signature_raises_the_alarm_and_the_list_in_use_stays(tmp_path):
    lane = Lane(tmp_path)

    async def scenario() -> None:
        await lane.publish(full_list(42, range(100)))
        forged = Centre(ListKind.STATUS_LIST, 43, status_payload(43, add=range(5)), key=OTHER_KEY)
        await lane.publish(forged)

    asyncio.run(lane.running(scenario))
    assert lane.status.version == 42 and len(lane.status) == 100
    [detail] = lane.raised("list_update_refused")
    assert "version 43 refused (bad_signature)" in detail
    assert load_status_list(lane.path).version == 42


def test_content_that_does_not_parse_is_refused_at_the_apply_and_nothing_changes(tmp_path):
    lane = Lane(tmp_path)

    async def scenario() -> None:
        await lane.publish(full_list(42, range(10)))
        await lane.publish(Centre(ListKind.STATUS_LIST, 43, b'{"version": 43, "add": [{"obu": "zz"}]}'))

    asyncio.run(lane.running(scenario))
    assert lane.status.version == 42
    [detail] = lane.raised("list_update_refused")
    assert "(bad_content)" in detail
    assert lane.service.downloads.status_list.in_use == 42  # a corrected version 43 is still taken


def test_a_fee_table_is_installed_saved_and_announced(tmp_path):
    fees = FeeSchedule(FeeTable.from_toml_bytes(OLD_FEES, source="test", tz=CST), tz=CST)
    lane = Lane(tmp_path, fees=fees)
    assert lane.service.downloads.fee_table.in_use == 7

    async def scenario() -> None:
        lane.service._session = lane.session
        await lane.publish(Centre(ListKind.FEE_TABLE, 8, FEE_TOML, valid_from=dt.datetime(2024, 11, 22, tzinfo=CST)))

    asyncio.run(lane.running(scenario))
    assert lane.fees is not None and lane.fees.version == 8 and lane.fees is lane.service.fees
    assert (lane.fee_dir / "fee_table-v8.toml").read_bytes() == FEE_TOML
    [versions] = lane.session.of(ListVersions)
    assert versions.fee_table is not None and versions.fee_table.version == 8


def test_chunks_that_stop_coming_are_asked_for_again_and_then_given_up_with_an_alarm(tmp_path):
    lane = Lane(tmp_path, chunk_timeout_s=30)
    centre = full_list(42, range(100))

    async def scenario() -> None:
        await lane.receive("listManifest", centre.manifest)
        for raw in centre.chunks()[:2]:
            await lane.receive("listChunk", raw)
        serving = asyncio.create_task(lane.service.serve(lane.session))
        for minutes, requests in ((1, 1), (2, 2)):  # past the chunk timeout, twice: asked each time
            lane.clock[0] = NOW + dt.timedelta(minutes=minutes)
            await until(lambda n=requests: len(lane.session.of(ListRequest)) == n, f"request {requests}")
        lane.clock[0] = NOW + dt.timedelta(minutes=3)  # max_requests = 2 reached: given up
        await until(lambda: bool(lane.raised("list_update_refused")), "the download given up")
        serving.cancel()
        try:
            await serving
        except asyncio.CancelledError:
            pass

    asyncio.run(scenario())
    requests = [r for r in lane.session.of(ListRequest)]
    assert [r.chunks for r in requests] == [(2, 3, 4), (2, 3, 4)]  # the missing ones only
    [detail] = lane.raised("list_update_refused")
    assert "(interrupted)" in detail and lane.status.version == 0


def test_an_old_list_raises_status_list_old_closes_etc_when_asked_and_a_fresh_one_clears_both(tmp_path):
    centre_v41 = Centre(ListKind.STATUS_LIST, 41, status_payload(41, add=range(3)),
                        valid_from=NOW - dt.timedelta(days=3))
    lane = Lane(tmp_path, on_stale=StalePolicy.CLOSE_ETC)

    async def scenario() -> None:
        await lane.publish(centre_v41)
        lane.service.check_freshness(NOW)
        await lane.publish(full_list(42, range(3)))  # valid from an hour ago
        lane.service.check_freshness(NOW)

    asyncio.run(lane.running(scenario))
    [old] = lane.raised("status_list_old")
    assert old.startswith("version 41: valid from") and "72.0 h old" in old
    assert [a for a in lane.alarms if isinstance(a, ClearAlarm) and a.code == "status_list_old"]
    assert lane.posted[0].device is Device.STATUS_LIST and not lane.posted[0].online
    assert lane.posted[-1] == DeviceStatus(Device.STATUS_LIST, True, "")


def test_a_list_without_its_manifest_counts_as_old_but_closes_nothing_by_default(tmp_path):
    store = StatusList()
    store.load_full(40, [])
    lane = Lane(tmp_path, status=StatusListInUse(store=store))
    lane.service.check_freshness(NOW)
    assert lane.raised("status_list_old") == ["version 40: the version's validity is not known"]
    assert lane.posted == []


def next_vehicles_intent(lane: Any) -> dict[str, Any]:
    """Another vehicle (OBU, card and plate: not one that just paid) pays after a pause; its intent record."""
    from tests.lane_harness import card_file

    lane.advance(5)
    other = b"\xa1\xfe\x33\x01"
    lane.b2(obu_id=other)
    lane.b3(obu_id=other, plate="鲁B54321")
    lane.b4(obu_id=other, card=card_file(plate="鲁B54321", number="2301000099999999"))
    return [r for kind, _, r in (j for j in lane.journal if len(j) == 3) if kind == "intent"][-1]


def test_a_transaction_is_priced_and_journalled_with_the_versions_in_use_at_its_b2():
    """An install between a transaction's B2 and its B4/B5 does not relabel it: the record
    names the versions that decided it (and the next transaction names the new ones)."""
    from tests.lane_harness import Fees, Listed
    from tests.lane_harness import Lane as MachineLane

    class NewFees(Fees):
        version = 8

    class NewList(Listed):
        version = 43

    lane = MachineLane()
    lane.b2()
    lane.machine.fees, lane.machine.status = NewFees(table={("3701-0102", 1): 4100}), NewList()  # an install
    lane.b3()
    lane.b4()
    intent = next(r for kind, _, r in (j for j in lane.journal if len(j) == 3) if kind == "intent")
    assert (intent["fee_table_version"], intent["status_list_version"], intent["fee"]) == (7, 42, 3500)
    second = next_vehicles_intent(lane)
    assert (second["fee_table_version"], second["status_list_version"], second["fee"]) == (8, 43, 4100)


def test_a_fetch_list_command_asks_the_centre_for_that_version_unless_it_is_in_use(tmp_path):
    lane = Lane(tmp_path)

    async def scenario() -> tuple[str, str]:
        await lane.publish(full_list(42, range(10)))
        lane.service._session = lane.session  # connected
        asked = await lane.service.fetch(ListKind.STATUS_LIST, 43)
        again = await lane.service.fetch(ListKind.STATUS_LIST, 42)
        return asked, again

    asked, again = asyncio.run(lane.running(scenario))
    [request] = lane.session.of(ListRequest)
    assert (request.kind, request.version, request.chunks) == (ListKind.STATUS_LIST, 43, None)
    assert request.reason == "fetch_list command from the centre"
    assert "requested from the centre" in asked
    assert "already in use; nothing requested" in again


def test_a_tariff_change_during_a_transaction_prices_it_with_the_table_of_its_b2():
    """At a fee table's valid_from the schedule switches in place (the health monitor's tick).
    A vehicle whose B2 came before is priced and recorded with the table in force at its B2,
    as its status list is; the next vehicle pays the new tariff under the new version."""
    from tests.lane_harness import Lane as MachineLane

    old = FeeTable(7, dt.datetime(2026, 1, 1), {("3701-0102", 1): 3500})
    new = FeeTable(8, dt.datetime(2026, 12, 1), {("3701-0102", 1): 4100})
    schedule = FeeSchedule(old)
    schedule.offer(new, dt.datetime(2026, 11, 30))
    lane = MachineLane(fees=schedule)
    lane.b2()
    lane.b3()
    assert schedule.tick(dt.datetime(2026, 12, 1))  # the tariff changes between B3 and B4
    lane.b4()
    intent = next(r for kind, _, r in (j for j in lane.journal if len(j) == 3) if kind == "intent")
    assert (intent["fee_table_version"], intent["fee"]) == (7, 3500)
    lane.b5()
    second = next_vehicles_intent(lane)
    assert (second["fee_table_version"], second["fee"]) == (8, 4100)
