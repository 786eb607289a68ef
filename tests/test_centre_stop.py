"""The reference centre stops when it is told to, whatever its MQTT session was doing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiomqtt
import pytest

from laned.centre import BrokerSettings, Centre, CentreSettings


async def test_a_centre_being_stopped_stops_even_when_its_session_ends_with_an_mqtt_error(tmp_path: Path) -> None:
    files = tmp_path / "unused.pem"
    centre = Centre(CentreSettings(broker=BrokerSettings(host="127.0.0.1", port=1, ca=files, cert=files, key=files),
                                   db=tmp_path / "centre.db", reconnect_min_s=0.01, reconnect_max_s=0.01))
    serving = asyncio.Event()

    async def session_that_ends_with_disconnected() -> BaseException:
        # What Python 3.11's TaskGroup does when the receive task's "Disconnected during
        # message iteration" comes with the stop: the error is raised, the cancellation not.
        serving.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return aiomqtt.MqttError("Disconnected during message iteration")
        raise AssertionError("unreachable")

    async def broken() -> BaseException:
        raise RuntimeError("the test is over")

    centre._serve_until_lost = session_that_ends_with_disconnected  # type: ignore[method-assign]
    runner = asyncio.create_task(centre.run())
    try:
        await asyncio.wait_for(serving.wait(), 2)
        runner.cancel()
        done, _ = await asyncio.wait({runner}, timeout=2)
        assert runner in done, "cancelled, the centre went on reconnecting"
        with pytest.raises(asyncio.CancelledError):
            runner.result()
    finally:
        if not runner.done():  # end the loop the assertion found
            centre._serve_until_lost = broken  # type: ignore[method-assign]
            runner.cancel()
            await asyncio.wait({runner}, timeout=2)
        centre.close()


class PubackAsTheStopComes:
    """An MQTT client whose publish returns normally when its task is cancelled meanwhile:
    what aiomqtt's publish does in Python 3.11 when the PUBACK comes at the moment of the
    cancellation (asyncio.wait_for returns the result and drops the cancellation)."""

    def __init__(self) -> None:
        self.publishing = asyncio.Event()
        self.published: list[str] = []

    async def publish(self, topic: str, payload: bytes, **kwargs: object) -> None:
        self.publishing.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.published.append(topic)  # the PUBACK won: no CancelledError


async def test_a_centre_stopped_while_an_ack_is_being_published_stops(tmp_path: Path) -> None:
    files = tmp_path / "unused.pem"
    centre = Centre(CentreSettings(broker=BrokerSettings(host="127.0.0.1", port=1, ca=files, cert=files, key=files),
                                   db=tmp_path / "centre.db"))
    client = PubackAsTheStopComes()
    centre._acks_out.put_nowait(("G0001-01", '{"ack": 1}'))
    sending = asyncio.create_task(centre._send_acks(client))  # type: ignore[arg-type]
    try:
        await asyncio.wait_for(client.publishing.wait(), 2)
        sending.cancel()
        done, _ = await asyncio.wait({sending}, timeout=2)
        assert sending in done, "stopped while publishing an ack, the ack loop waited for the next ack"
        assert len(client.published) == 1  # the ack did go out
        with pytest.raises(asyncio.CancelledError):
            sending.result()
    finally:
        if not sending.done():  # end the loop the assertion found: its next publish fails
            async def broken(*args: object, **kwargs: object) -> None:
                raise RuntimeError("the test is over")

            client.publish = broken  # type: ignore[method-assign]
            centre._acks_out.put_nowait(("G0001-01", '{"ack": 2}'))
            await asyncio.wait({sending}, timeout=2)
        centre.close()
