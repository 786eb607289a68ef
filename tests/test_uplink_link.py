"""The broker's answers to the lane's publishes, as the link reads them: a PUBACK's MQTT 5
reason code reaches :class:`laned.uplink.link.PublishRefusals` with its topic (aiomqtt drops
it), a refusal is reported once per topic and its end too; and a message that waited is
published with what is left of its channel's expiry, never more than the contract's.

The paho client is the real one, with no connection: the PUBACK is handed to the callback
paho calls when one arrives, with the message still in paho's table as it is then.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.client import MQTTMessage
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from laned.health.alarms import AlarmChange, AlarmRegistry
from laned.uplink.link import LinkSettings, LinkStats, PublishRefusals, Session
from laned.uplink.messages import AlarmMsg
from laned.uplink.mqtt_client import SlicedClient

LANE = "G0001-0201-03"
TX = f"etc/v1/{LANE}/tx"
STATE = f"etc/v1/{LANE}/state"
T0 = dt.datetime(2026, 11, 22, 10, 0, tzinfo=dt.UTC)
NOT_AUTHORIZED = 0x87  # MQTT 5.0, 3.4.2.1: the broker's ACL refuses the topic


def puback(code: int) -> ReasonCode:
    return ReasonCode(PacketTypes.PUBACK, identifier=code)


class Refusals:
    """A :class:`PublishRefusals` with what it told its owner."""

    def __init__(self) -> None:
        self.stats = LinkStats()
        self.told: list[dict[str, str]] = []
        self.watcher = PublishRefusals(self.stats, on_change=self._changed)

    def _changed(self, refused: Mapping[str, str]) -> None:
        self.told.append(dict(refused))


async def test_a_puback_refusing_a_topic_reaches_the_watcher_with_the_topic_and_the_reason() -> None:
    refusals = Refusals()
    client = SlicedClient("127.0.0.1", identifier="laned-test")
    client.puback_watcher = refusals.watcher
    paho = client._client
    for mid, topic in ((7, TX), (8, STATE), (9, TX)):
        paho._out_messages[mid] = MQTTMessage(mid, topic.encode())  # in flight, as paho keeps it until its PUBACK
    client._on_publish(paho, None, 7, puback(NOT_AUTHORIZED), Properties(PacketTypes.PUBACK))
    client._on_publish(paho, None, 8, puback(0x00), Properties(PacketTypes.PUBACK))  # state is taken
    assert refusals.watcher.refused == {TX: "Not authorized (0x87)"}
    client._on_publish(paho, None, 9, puback(0x10), Properties(PacketTypes.PUBACK))  # "no matching subscribers": taken
    assert refusals.watcher.refused == {}
    assert refusals.told == [{TX: "Not authorized (0x87)"}, {}]
    assert refusals.stats.refused == 1


def test_a_topic_refused_again_and_again_is_reported_once_until_the_broker_takes_it_again(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="laned.uplink")
    refusals = Refusals()
    for _ in range(5):  # a window of rows, then the same rows sent again
        refusals.watcher.answer(TX, NOT_AUTHORIZED, "Not authorized")
    assert refusals.watcher.watching()  # while refused, accepted publishes matter too
    refusals.watcher.answer(STATE, 0x00, "Success")  # another topic taken: nothing changes
    refusals.watcher.answer(TX, 0x00, "Success")  # the centre fixed its ACL
    refusals.watcher.answer(TX, 0x00, "Success")
    assert refusals.told == [{TX: "Not authorized (0x87)"}, {}]
    assert refusals.stats.refused == 5 and not refusals.watcher.watching()
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and TX in errors[0] and "Not authorized (0x87)" in errors[0] and "ACL" in errors[0]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.INFO] == [
        f"centre link: the broker takes this lane's publishes on {TX} again"]


class RecordingClient:
    """aiomqtt's client as Session.publish uses it: what was published, with its properties."""

    def __init__(self) -> None:
        self.published: list[dict[str, Any]] = []

    async def publish(self, topic: str, payload: bytes, **kwargs: Any) -> None:
        self.published.append({"topic": topic, **kwargs})


def an_alarm_change() -> AlarmChange:
    (change,) = AlarmRegistry().event("follow_car", 10.0, T0, "vehicle under the open arm")
    return change


async def test_a_message_that_waited_goes_up_with_what_is_left_of_its_expiry_never_more_than_the_contracts() -> None:
    files = Path("unused.pem")
    client = RecordingClient()
    session = Session(client, LinkSettings(lane_id=LANE, host="127.0.0.1", port=8883, ca=files, cert=files,
                                           key=files), LinkStats())  # type: ignore[arg-type]
    alarm = AlarmMsg.from_change(an_alarm_change(), LANE)
    await session.publish(alarm)
    await session.publish(alarm, expiry_s=600)
    await session.publish(alarm, expiry_s=10**9)
    expiries = [p["properties"].MessageExpiryInterval for p in client.published]
    assert expiries == [86_400, 600, 86_400]  # the contract's alarm expiry is a day
    assert {p["topic"] for p in client.published} == {f"etc/v1/{LANE}/alarm"}
