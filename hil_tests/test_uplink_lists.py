"""Status lists and fee tables from the reference centre to the running daemon, over a real
Mosquitto (issue 10, item 5; docs/lists.md).

The daemon (``run_lane`` with ``[uplink]``, the RSU emulator on a pseudo-terminal) and the
reference centre (:class:`laned.centre.service.Centre`, its ``publish_list``: the signed
manifest retained, the chunks, the answers to ``list/request``) on their own broker. What
is held: a status list the centre publishes is downloaded, applied and saved, the centre
hears the new version on ``list/versions``, and the next vehicle on it is refused at the
lane; a delta applies on top; a manifest with a bad signature raises
``list_update_refused`` and the old version stays; a new fee table prices the next
transaction, which records its version; after a restart the lane uses the saved list; a
list file damaged while the lane was off is set aside at the next start, the lane runs
without a list (``status_list_missing``) and the centre's retained manifest refills it.
Waiting is on conditions with deadlines, never on fixed sleeps.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lane_fixtures import read_journal
from mosquitto_broker import MosquittoBroker
from mqtt_pki import CENTRE, Pki, make_pki
from laned.app import run_lane
from laned.centre.broker import BrokerSettings
from laned.centre.lists import ListVersion, build_list
from laned.centre.service import Centre, CentreSettings
from laned.config import Config, parse_config
from laned.executor import LaneExecutor
from laned.sim.rsu_emulator import EmulatorSettings, RsuEmulator
from laned.sim.rsu_scenario import ObuScenario
from laned.uplink.list_apply import load_status_list
from laned.uplink.messages import ListKind

pytestmark = [pytest.mark.hil, pytest.mark.timeout(90)]

LANE = "G0001-0201-03"
T = 15.0  # deadline of one waited-for condition
KEY_ID = "centre-2024"
KEY = Ed25519PrivateKey.generate()
FORGER = Ed25519PrivateKey.generate()
FEE_TABLE = resources.files("laned") / "data" / "fee_table_sim.toml"
LISTED = "a1b2c3d4"  # put on the status list by the centre
OTHER = "b2c3d4e5"  # never listed


def public_text(key: Ed25519PrivateKey) -> str:
    import base64

    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


async def until(condition: Any, what: str, timeout: float = T) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not condition():  # noqa: ASYNC110 - the daemon's, the centre's and the emulator's state
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"not within {timeout} s: {what}") from None


def config(tmp_path: Path, rsu_port: str, pki: Pki, broker_port: int) -> Config:
    creds = pki.client(LANE)
    return parse_config({
        "lane": {"lane_id": LANE, "network": "3701", "station": "0201", "lane_number": 3, "direction": "exit"},
        "rsu": {"profile": "national", "transport": "serial", "port": rsu_port, "baud": 115200},
        "journal": {"path": str(tmp_path / "journal.db")},
        "fee_table": {"path": str(FEE_TABLE)},
        "status_list": {"path": str(tmp_path / "status_list.bin")},
        "lists": {"fee_table_dir": str(tmp_path / "fee_tables"), "chunk_timeout_s": 2},
        "uplink": {"host": "127.0.0.1", "port": broker_port, "ca": str(pki.ca_cert), "cert": str(creds.cert),
                   "key": str(creds.key), "keepalive_s": 5, "window": 16, "ack_timeout_s": 2,
                   "reconnect_min_s": 0.1, "reconnect_max_s": 0.5, "link_down_alarm_s": 0.5,
                   "health_interval_s": 1, "centre_keys": {KEY_ID: public_text(KEY)}},
    })


def status_list(version: int, *, base: int | None = None, add: tuple[str, ...] = (), remove: tuple[str, ...] = (),
                key: Ed25519PrivateKey = KEY) -> ListVersion:
    doc: dict[str, Any] = {"version": version, "add": [{"obu": o, "reason": 3} for o in add]}
    if base is not None:
        doc["base"] = base
        doc["remove"] = [{"obu": o} for o in remove]
    now = dt.datetime.now(dt.UTC)
    return build_list(kind=ListKind.STATUS_LIST, version=version, data=json.dumps(doc).encode(), now=now,
                      valid_from=now - dt.timedelta(minutes=1), expires_at=now + dt.timedelta(days=7),
                      private_key=key, key_id=KEY_ID, chunk_size=256, base_version=base)


def fee_table(version: int, class1_fee: int) -> ListVersion:
    """The simulated lane's table with a new version, in force from now on, class 1 repriced."""
    now = dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).replace(microsecond=0)
    text = FEE_TABLE.read_text(encoding="utf-8").replace("version = 1\n", f"version = {version}\n").replace(
        "valid_from = 2026-01-01T00:00:00\n", f"valid_from = {now.replace(tzinfo=None).isoformat()}\n").replace(
        "1 = 3500\n", f"1 = {class1_fee}\n")
    return build_list(kind=ListKind.FEE_TABLE, version=version, data=text.encode(), now=now, valid_from=now,
                      expires_at=now + dt.timedelta(days=30), private_key=KEY, key_id=KEY_ID)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki", lanes=(LANE,))


@pytest.fixture
async def centre(tmp_path: Path, broker: MosquittoBroker, pki: Pki) -> AsyncIterator[Centre]:
    creds = pki.client(CENTRE)
    settings = CentreSettings(broker=BrokerSettings(host=broker.host, port=broker.port, ca=pki.ca_cert,
                                                    cert=creds.cert, key=creds.key, timeout_s=T),
                              db=tmp_path / "centre.db", reconnect_min_s=0.05, reconnect_max_s=0.5)
    async with Centre(settings) as c:
        yield c


class Daemon:
    """run_lane in a task; ``executor`` once it runs."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.stop = asyncio.Event()
        self.started: list[LaneExecutor] = []
        self.task: asyncio.Task[LaneExecutor] | None = None

    async def __aenter__(self) -> Daemon:
        self.task = asyncio.create_task(run_lane(self.cfg, stop=self.stop, started=self.started.append))
        await until(lambda: bool(self.started), "the daemon running")
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, T)

    @property
    def machine(self) -> Any:
        return self.started[0].machine

    def alarms(self, code: str) -> list[str]:
        return [c.alarm.detail for c in self.started[0].health.changes if c.code == code and c.raised]


def versions(centre: Centre) -> dict[str, Any]:
    return centre.ledger.last_payload(LANE, "versions") or {}


def journal(tmp_path: Path) -> list[dict[str, Any]]:
    return read_journal(tmp_path / "journal.db")


async def drive(emu: RsuEmulator, tmp_path: Path, obu_id: str) -> dict[str, Any]:
    """A vehicle with ``obu_id`` (and a card and plate of its own: not one that paid just
    now) comes to the antenna; its journal row once final (a charge's row is ``intent``
    between its C6 and its B5's commit: reading it then is a race, not a result)."""
    before = len(journal(tmp_path))
    n = int(obu_id, 16) % 10_000
    emu.add_obu(ObuScenario(obu_id=obu_id, balance=500_00, card_number=f"230100001234{n:04d}", plate=f"鲁A{n:05d}"),
                arrive_in=0.0)

    def rows() -> list[dict[str, Any]]:
        return [r for r in journal(tmp_path)[before:] if r["obu_id"] in (bytes.fromhex(obu_id), obu_id)]

    await until(lambda: any(r["state"] != "intent" for r in rows()), f"the final journal row of OBU {obu_id}")
    return [r for r in rows() if r["state"] != "intent"][-1]


async def test_a_status_list_from_the_centre_refuses_the_next_vehicle_on_it_a_delta_applies_and_a_restart_keeps_it(
        tmp_path: Path, pki: Pki, broker: MosquittoBroker, centre: Centre) -> None:
    async with RsuEmulator([], profile="national", settings=EmulatorSettings(heartbeat_interval=0.5)) as emu:
        cfg = config(tmp_path, emu.path, pki, broker.port)
        async with Daemon(cfg) as lane:
            await until(lambda: centre.ledger.last_payload(LANE, "state") is not None, "the lane online")
            await centre.publish_list(status_list(5, add=(LISTED,)), [LANE])
            await until(lambda: versions(centre).get("status_list", {}).get("version") == 5,
                        "list/versions saying status list version 5")
            assert lane.machine.status.version == 5
            refused = await drive(emu, tmp_path, LISTED)
            assert (refused["state"], refused["reason"]) == ("refused", "obu_listed") and refused["status_list_version"] == 5
            assert not emu.charges
            # A delta on top: the listed OBU is taken off, another goes on.
            await centre.publish_list(status_list(6, base=5, add=(OTHER,), remove=(LISTED,)), [LANE])
            await until(lambda: versions(centre).get("status_list", {}).get("version") == 6,
                        "list/versions saying status list version 6")
            paid = await drive(emu, tmp_path, LISTED)
            assert paid["state"] == "charged" and paid["status_list_version"] == 6
            assert lane.alarms("list_update_refused") == []
        saved = load_status_list(tmp_path / "status_list.bin")
        assert saved.version == 6 and saved.manifest is not None and saved.store.is_listed_obu(
            bytes.fromhex(OTHER)) is not None
        # A restart: the saved list is in use at once, and its retained manifest is no news.
        async with Daemon(cfg) as lane:
            assert lane.machine.status.version == 6
            refused = await drive(emu, tmp_path, OTHER)
            assert (refused["state"], refused["reason"]) == ("refused", "obu_listed") and refused["status_list_version"] == 6
            await until(lambda: versions(centre).get("status_list", {}).get("entries") == 1,
                        "list/versions after the restart")
            assert lane.alarms("list_update_refused") == []


async def test_a_manifest_with_a_bad_signature_raises_the_alarm_and_the_old_list_stays(
        tmp_path: Path, pki: Pki, broker: MosquittoBroker, centre: Centre) -> None:
    async with RsuEmulator([], profile="national", settings=EmulatorSettings(heartbeat_interval=0.5)) as emu:
        async with Daemon(config(tmp_path, emu.path, pki, broker.port)) as lane:
            await until(lambda: centre.ledger.last_payload(LANE, "state") is not None, "the lane online")
            await centre.publish_list(status_list(5, add=(LISTED,)), [LANE])
            await until(lambda: lane.machine.status.version == 5, "status list version 5 in use")
            await centre.publish_list(status_list(7, add=(OTHER,), key=FORGER), [LANE])
            await until(lambda: bool(lane.alarms("list_update_refused")), "list_update_refused raised")
            assert "status_list version 7 refused (bad_signature)" in lane.alarms("list_update_refused")[0]
            await until(lambda: any(a[0] == "list_update_refused" for a in centre.ledger.alarms(LANE)),
                        "the alarm at the centre")
            assert lane.machine.status.version == 5
            paid = await drive(emu, tmp_path, OTHER)
            assert paid["state"] == "charged" and paid["status_list_version"] == 5
    assert load_status_list(tmp_path / "status_list.bin").version == 5


async def test_a_fee_table_from_the_centre_prices_the_next_transaction_which_records_its_version(
        tmp_path: Path, pki: Pki, broker: MosquittoBroker, centre: Centre) -> None:
    async with RsuEmulator([], profile="national", settings=EmulatorSettings(heartbeat_interval=0.5)) as emu:
        async with Daemon(config(tmp_path, emu.path, pki, broker.port)) as lane:
            await until(lambda: centre.ledger.last_payload(LANE, "state") is not None, "the lane online")
            before = await drive(emu, tmp_path, OTHER)
            assert before["state"] == "charged" and before["fee_table_version"] == 1
            await centre.publish_list(fee_table(2, class1_fee=4100), [LANE])
            await until(lambda: versions(centre).get("fee_table", {}).get("version") == 2,
                        "list/versions saying fee table version 2")
            assert lane.machine.fees.version == 2
            after = await drive(emu, tmp_path, LISTED)
            assert after["state"] == "charged" and after["fee_table_version"] == 2
            assert after["fee"] == 4100 and emu.charges[-1].amount == 4100
    assert (tmp_path / "fee_tables" / "fee_table-v2.toml").exists()


async def test_a_corrupt_status_list_at_start_is_set_aside_the_lane_runs_and_the_centres_list_refills_it(
        tmp_path: Path, pki: Pki, broker: MosquittoBroker, centre: Centre) -> None:
    path = tmp_path / "status_list.bin"
    async with RsuEmulator([], profile="national", settings=EmulatorSettings(heartbeat_interval=0.5)) as emu:
        cfg = config(tmp_path, emu.path, pki, broker.port)
        async with Daemon(cfg) as lane:
            await until(lambda: centre.ledger.last_payload(LANE, "state") is not None, "the lane online")
            await centre.publish_list(status_list(5, add=(LISTED,)), [LANE])
            await until(lambda: lane.machine.status.version == 5, "status list version 5 in use")
        damaged = bytearray(path.read_bytes())
        damaged[len(damaged) // 2] ^= 0xFF  # a sector gone bad while the lane was off
        path.write_bytes(bytes(damaged))
        # The start used to stop here (exit 2, restarted every 2 s, never fixed): now the lane
        # comes up without a list, says so, and takes the centre's (its manifest is retained).
        async with Daemon(cfg) as lane:
            await until(lambda: bool(lane.alarms("status_list_missing")), "status_list_missing raised")
            assert (tmp_path / "status_list.bin.corrupt").read_bytes() == bytes(damaged)
            await until(lambda: lane.machine.status.version == 5, "the centre's version 5 in use again")
            await until(lambda: not lane.started[0].health.registry.is_active("status_list_missing"),
                        "status_list_missing cleared")
            refused = await drive(emu, tmp_path, LISTED)
            assert (refused["state"], refused["reason"]) == ("refused", "obu_listed")
            assert lane.alarms("list_update_refused") == []
    assert load_status_list(path).version == 5
