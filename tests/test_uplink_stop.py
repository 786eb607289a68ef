"""The uplink stops when it is told to, even when Python 3.11 loses the stop in a publish."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from laned.uplink.link import Incoming, LinkSettings
from laned.uplink.reporting import LaneView
from laned.uplink.service import UplinkService, UplinkSettings

LANE = "G0001-0201-03"


class CentreThatSendsOneCommand:
    """A session whose centre sends one command and then nothing more (until ``gone``)."""

    def __init__(self) -> None:
        self.gone = asyncio.Event()

    async def incoming(self) -> Any:
        yield Incoming(channel="cmd", topic=f"etc/v1/{LANE}/cmd", message=None, payload=b"{}")
        await self.gone.wait()


async def test_stopped_while_a_commands_result_is_published_the_uplink_stops_without_another_message(
        tmp_path: Path) -> None:
    publishing = asyncio.Event()

    async def answer_as_the_stop_comes(item: Any, session: Any) -> None:
        # The result's PUBACK comes at the moment of the stop: aiomqtt's wait_for returns it
        # and drops the cancellation (Python 3.11).
        publishing.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            return

    files = tmp_path / "unused.pem"
    service = UplinkService.build(LinkSettings(lane_id=LANE, host="127.0.0.1", port=1, ca=files, cert=files, key=files),
                                  UplinkSettings(), writer=None, monitor=None, lane=LaneView(lambda: True, dict),
                                  wall=lambda: dt.datetime.now(dt.UTC), on_command=answer_as_the_stop_comes)
    centre = CentreThatSendsOneCommand()
    receiving = asyncio.create_task(service._receive(centre))  # type: ignore[arg-type]
    await asyncio.wait_for(publishing.wait(), 2)
    receiving.cancel()
    done, _ = await asyncio.wait({receiving}, timeout=2)
    try:
        assert receiving in done, "stopped while answering a command, the uplink waited for the centre's next message"
        with pytest.raises(asyncio.CancelledError):
            receiving.result()
    finally:
        if not receiving.done():  # end the loop the assertion found: the session ends
            centre.gone.set()
            await asyncio.wait({receiving}, timeout=2)
