"""The centre's signed commands reach the real daemon over a real Mosquitto (issue 10, item 4).

One daemon run (``run_lane`` through :func:`lane_fixtures.lane_bench`: the emulated RSU on
a pty, the emulated fee display and IO module on Modbus TCP, the lane model moving the
barrier and the vehicles) with ``[uplink]`` pointing at a broker with TLS client
certificates and the per-lane ACL. The centre is a stand-in with the centre's certificate:
it signs commands with :func:`laned.centre.commanding.build_command` (the key the lane
trusts under ``[uplink.centre_keys]``, as ``laned centre keygen`` prints it), publishes
them with the command id as MQTT 5 correlation data and reads ``cmd/result`` and ``state``.

The scenario, in order: ``close_etc`` — the state says degraded (closed by the operator),
the display shows ETC closed and the next OBU is refused; ``open_etc`` reopens; a
``show_message`` reaches the display; ``raise_barrier`` raises the arm (journalled
``remote_raise``), and the arm comes down only after a vehicle has driven through;
``lower_barrier`` is refused ``unknown_command``; the raise delivered again is executed
once and answered with its original result.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from lane_fixtures import FAST_RSU, LANE_ID, T, lane_bench, poll_until
from mosquitto_broker import TOPIC_ROOT, MosquittoBroker
from mqtt_pki import CENTRE, Pki, make_pki
from laned.centre.commanding import build_command
from laned.centre.keys import public_b64
from laned.lane.events import Device
from laned.sim.lane_model import BarrierSpec, LaneGeometry, LaneModel
from laned.sim.rsu_scenario import ObuScenario
from laned.uplink.commands import sign
from laned.uplink.contract import validate
from laned.uplink.tls import client_tls_context

pytestmark = [pytest.mark.hil, pytest.mark.timeout(90)]

KEY_ID = "centre-cmd-1"
KEY = Ed25519PrivateKey.generate()


def topic(suffix: str) -> str:
    return f"{TOPIC_ROOT}/{LANE_ID}/{suffix}"


class CommandingCentre:
    """The centre's command side: signs, publishes on ``cmd``, collects ``cmd/result`` and ``state``."""

    def __init__(self, broker: MosquittoBroker, pki: Pki) -> None:
        self.broker, self.pki = broker, pki
        self.seq = 0
        self.results: list[tuple[dict[str, Any], bytes | None]] = []  # (payload, correlation data)
        self.states: list[dict[str, Any]] = []
        self.nonconforming: list[str] = []
        self.client: aiomqtt.Client | None = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[CommandingCentre]:
        creds = self.pki.client(CENTRE)
        context = client_tls_context(self.pki.ca_cert, creds.cert, creds.key)
        async with aiomqtt.Client(self.broker.host, self.broker.port, tls_context=context,
                                  protocol=aiomqtt.ProtocolVersion.V5, identifier="centre-commands",
                                  timeout=3) as client:
            self.client = client
            await client.subscribe([(topic("cmd/result"), 1), (topic("state"), 1)])
            reader = asyncio.create_task(self._read(client))
            try:
                yield self
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            payload = json.loads(message.payload)
            if message.topic.value == topic("state"):
                self.states.append(payload)
                continue
            try:
                validate("CommandResult", payload)
            except ValueError as err:
                self.nonconforming.append(str(err))
            props = message.properties
            self.results.append((payload, getattr(props, "CorrelationData", None) if props else None))

    async def publish(self, data: bytes, command_id: str) -> None:
        assert self.client is not None
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho has no annotations
        props.CorrelationData = command_id.encode()
        await self.client.publish(topic("cmd"), data, qos=1, properties=props)

    async def send(self, command: str, args: dict[str, Any]) -> tuple[bytes, str]:
        """A signed command, as ``laned centre send-command`` builds it; returns (bytes, id)."""
        self.seq += 1
        signed = build_command(lane_id=LANE_ID, command=command, args=args, seq=self.seq,
                               now=dt.datetime.now(dt.UTC), private_key=KEY, key_id=KEY_ID, lifetime_s=120)
        await self.publish(signed.data, signed.command_id)
        return signed.data, signed.command_id

    async def result_of(self, command_id: str, nth: int = 1) -> dict[str, Any]:
        """The ``nth`` result for ``command_id`` (waits for it)."""
        def found() -> dict[str, Any] | None:
            got = [(p, c) for p, c in self.results if p["command_id"] == command_id]
            if len(got) < nth:
                return None
            payload, correlation = got[nth - 1]
            assert correlation == command_id.encode(), "the correlation data was not copied onto the result"
            return payload
        result: dict[str, Any] = await poll_until(found, T, f"result {nth} of command {command_id}")
        return result


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki", lanes=(LANE_ID,))


def uplink_section(pki: Pki, broker: MosquittoBroker) -> dict[str, Any]:
    creds = pki.client(LANE_ID)
    return {"host": "127.0.0.1", "port": broker.port, "ca": str(pki.ca_cert), "cert": str(creds.cert),
            "key": str(creds.key), "keepalive_s": 5, "window": 16, "ack_timeout_s": 2, "reconnect_min_s": 0.1,
            "reconnect_max_s": 0.5, "link_down_alarm_s": 0.5, "health_interval_s": 1,
            # The line `laned centre keygen` prints, as the lane's trust store takes it.
            "centre_keys": {KEY_ID: public_b64(KEY.public_key())}}


async def test_the_centre_closes_and_opens_etc_shows_a_message_and_raises_the_barrier_once(
        tmp_path: Path, pki: Pki, broker: MosquittoBroker) -> None:
    model = LaneModel(now=time.monotonic(), geometry=LaneGeometry(spawn_x=-8.0, safety_loop=(-1.0, 1.0), exit_x=8.0),
                      barrier=BarrierSpec(travel_time=0.4))
    centre = CommandingCentre(broker, pki)
    async with centre.running(), lane_bench(
            tmp_path, [], model=model, barrier={"hold_off_s": 1.0, "release_after_s": 0.5},
            settings=dataclasses.replace(FAST_RSU, redetect_interval=30.0),
            uplink=uplink_section(pki, broker)) as bench:
        lane = bench.running
        assert lane is not None and bench.display is not None
        await bench.until(lambda: any(s["state"] == "online" for s in centre.states), what="the lane online")

        # -- close_etc: ETC closed on purpose; the next OBU goes to the manual lane
        _, closing = await centre.send("close_etc", {"reason": "RSU maintenance"})
        closed = await centre.result_of(closing)
        assert closed["outcome"] == "executed" and "ETC closed on purpose" in closed["detail"]
        state = await bench.until(lambda: next((s for s in reversed(centre.states) if s["state"] == "degraded"),
                                               None), what="the state message saying degraded")
        assert state["etc_open"] is False
        assert state["closed_by"] == [{"device": "operator", "reason": "closed by the centre: RSU maintenance"}]
        assert lane.machine.modes.closed_by == {Device.OPERATOR: "closed by the centre: RSU maintenance"}
        await bench.display_shows("ETC暂停")
        bench.emu.add_obu(ObuScenario(obu_id="a1b2c3d4", reread_for=0), arrive_in=0.0)
        await bench.until(lambda: bench.c2_for("a1b2c3d4"), what="the OBU refused (C2) while ETC is closed")
        assert bench.c6_for("a1b2c3d4") == [] and bench.emu.charges == []

        # -- open_etc: open again
        _, opening = await centre.send("open_etc", {"reason": "maintenance done"})
        assert (await centre.result_of(opening))["outcome"] == "executed"
        await bench.until(lambda: centre.states[-1]["state"] == "online" and centre.states[-1]["etc_open"],
                          what="the state message saying online again")
        assert not lane.machine.modes.closed

        # -- show_message: on the emulated fee display
        _, showing = await centre.send("show_message", {"line1": "道路施工", "line2": "请减速慢行", "duration_s": 30})
        assert (await centre.result_of(showing))["outcome"] == "executed"
        shown = await bench.display_shows("道路施工")
        assert shown.line2 == "请减速慢行"

        # -- raise_barrier: the arm rises, journalled as a remote raise; down only behind a vehicle
        raise_bytes, raising = await centre.send("raise_barrier", {"operator": "op-0231", "reason": "OBU broken"})
        raised = await centre.result_of(raising)
        assert raised["outcome"] == "executed" and "interlock" in raised["detail"]
        await bench.until(lambda: model.barrier_position == 1.0, what="the arm up after the remote raise")
        row = await bench.journal_row(lambda r: r["kind"] == "remote_raise", what="the remote_raise row")
        assert row["state"] == "event" and "operator op-0231: OBU broken" in row["detail"]
        car = model.add_vehicle(time.monotonic(), speed=6.0, vehicle_id="waved-through")
        await bench.until(lambda: [v for v, _ in model.departed] == [car], what="the vehicle through the lane")
        await bench.until(lambda: model.barrier_position == 0.0, what="the arm down behind it")

        # -- lower_barrier does not exist: refused, nothing moves
        body = {"lane_id": LANE_ID, "command_id": str(uuid.uuid4()), "seq": centre.seq + 1,
                "issued_at": dt.datetime.now(dt.UTC).isoformat(),
                "expires_at": (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=2)).isoformat(),
                "command": "lower_barrier", "args": {}}
        await centre.publish(sign(body, KEY, KEY_ID), body["command_id"])
        lowering = await centre.result_of(body["command_id"])
        assert (lowering["outcome"], lowering["reason"]) == ("refused", "malformed")
        assert lowering["detail"].startswith("unknown_command: ")

        # -- the raise delivered again: executed once, answered with its original result
        await centre.publish(raise_bytes, raising)
        again = await centre.result_of(raising, nth=2)
        assert again == raised
        assert lane.machine.counters["remote_raise"] == 1
        assert [r["kind"] for r in bench.rows()].count("remote_raise") == 1
    assert model.violations == ()
    assert centre.nonconforming == []
    commands = [(r["kind"], r["reason"]) for r in bench.rows() if r["kind"] in ("command", "remote_raise")]
    assert commands == [("command", "close_etc"), ("command", "open_etc"), ("command", "show_message"),
                        ("remote_raise", "raise_barrier")]


async def test_a_lane_the_centre_closed_comes_back_closed_after_a_restart_until_open_etc(
        tmp_path: Path, pki: Pki, broker: MosquittoBroker) -> None:
    centre = CommandingCentre(broker, pki)
    async with centre.running():
        async with lane_bench(tmp_path, [], display=False, uplink=uplink_section(pki, broker)) as bench:
            await bench.until(lambda: any(s["state"] == "online" for s in centre.states), what="the lane online")
            _, closing = await centre.send("close_etc", {"reason": "lane resurfacing"})
            assert (await centre.result_of(closing))["outcome"] == "executed"
        # laned stopped (a reboot, an update) and starts again on the same journal.
        centre.states.clear()
        async with lane_bench(tmp_path, [], display=False, uplink=uplink_section(pki, broker)) as bench:
            lane = bench.running
            assert lane is not None
            assert Device.OPERATOR in lane.machine.modes.closed_by, "the restart reopened a lane the centre closed"
            assert closing in lane.machine.modes.closed_by[Device.OPERATOR]
            first = await bench.until(lambda: next((s for s in centre.states if s["state"] != "offline"), None),
                                      what="the state message after the restart")
            assert first["state"] == "degraded" and first["closed_by"][0]["device"] == "operator"
            _, opening = await centre.send("open_etc", {})
            assert (await centre.result_of(opening))["outcome"] == "executed"
            await bench.until(lambda: not lane.machine.modes.closed, what="ETC open after open_etc")
