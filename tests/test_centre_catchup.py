"""A lane that missed list versions (offline longer than its MQTT session) is offered what it
lacks when it publishes ``list/versions``: the delta on the status list it uses, else the
newest full list, else a warning; the newest fee table; never an expired version, and the
same version to the same lane at most once per cooldown (laned/centre/lists.py catch_up,
laned/centre/service.py)."""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from laned.centre import BrokerSettings, Centre, CentreSettings, Ledger
from laned.centre.lists import OFFER_COOLDOWN_S, CannotCatchUp, ListVersion, Offer, build_list, catch_up
from laned.uplink.messages import (
    FeeTableVersion,
    ListChunk,
    ListKind,
    ListManifest,
    ListVersions,
    StatusListVersion,
)

LANE = "G0001-0201-03"
KEY_ID = "centre-test-1"
NOW = dt.datetime(2024, 11, 22, 9, 45, tzinfo=dt.UTC)
KEY = Ed25519PrivateKey.generate()


def status_list(version: int, base: int | None = None, *, expires_in: dt.timedelta = dt.timedelta(days=7),
                issued: dt.datetime = NOW - dt.timedelta(hours=1)) -> ListVersion:
    data = json.dumps({"version": version, **({"base": base} if base is not None else {}), "add": []}).encode()
    return build_list(kind=ListKind.STATUS_LIST, version=version, data=data, now=issued, valid_from=issued,
                      expires_at=NOW + expires_in, private_key=KEY, key_id=KEY_ID, base_version=base)


def fee_table(version: int, *, expires_in: dt.timedelta = dt.timedelta(days=365)) -> ListVersion:
    issued = NOW - dt.timedelta(days=1)
    return build_list(kind=ListKind.FEE_TABLE, version=version, data=f"version = {version}\n".encode(), now=issued,
                      valid_from=issued, expires_at=NOW + expires_in, private_key=KEY, key_id=KEY_ID)


def lane_uses(status: int | None = None, fee: int | None = None, pending: int | None = None) -> ListVersions:
    def table(v: int | None) -> FeeTableVersion | None:
        return None if v is None else FeeTableVersion(version=v, valid_from=NOW - dt.timedelta(days=30))
    return ListVersions(lane_id=LANE, at=NOW, status_list=None if status is None else StatusListVersion(version=status),
                        fee_table=table(fee), fee_table_pending=table(pending))


def offers(held: list[ListVersion], lane: ListVersions) -> list[Offer | CannotCatchUp]:
    return catch_up([v.manifest for v in held], lane, NOW)


def offered(held: list[ListVersion], lane: ListVersions) -> list[tuple[str, int]]:
    found = offers(held, lane)
    assert all(isinstance(f, Offer) for f in found), found
    return [(str(f.kind), f.version) for f in found if isinstance(f, Offer)]


CHAIN = [status_list(40), status_list(41, 40), status_list(42, 41), status_list(43, 42)]


# -- status lists ----------------------------------------------------------------------------------

def test_a_lane_one_delta_behind_gets_that_delta() -> None:
    assert offered(CHAIN, lane_uses(status=42)) == [("status_list", 43)]


def test_a_lane_several_deltas_behind_gets_the_next_delta_of_the_chain_not_the_newest() -> None:
    # After it installs 42 it publishes list/versions again and gets 42→43.
    assert offered(CHAIN, lane_uses(status=41)) == [("status_list", 42)]


def test_of_two_deltas_on_the_lanes_version_the_one_reaching_further_is_offered() -> None:
    assert offered([*CHAIN, status_list(44, 41)], lane_uses(status=41)) == [("status_list", 44)]


def test_a_lane_at_a_version_no_delta_builds_on_gets_the_newest_full_list() -> None:
    held = [status_list(30), status_list(40), status_list(41, 40), status_list(45), status_list(46, 45)]
    assert offered(held, lane_uses(status=38)) == [("status_list", 45)]


def test_a_lane_with_no_status_list_gets_the_newest_full_list() -> None:
    assert offered(CHAIN, lane_uses()) == [("status_list", 40)]


def test_a_lane_up_to_date_is_offered_nothing() -> None:
    assert offers([*CHAIN, fee_table(7)], lane_uses(status=43, fee=7)) == []


def test_a_lane_ahead_of_the_centre_is_offered_nothing() -> None:
    assert offers(CHAIN, lane_uses(status=50)) == []


def test_an_expired_delta_is_not_offered_and_the_newest_full_list_is() -> None:
    held = [status_list(40), status_list(41, 40, expires_in=-dt.timedelta(minutes=1))]
    assert offered(held, lane_uses(status=39)) == [("status_list", 40)]
    assert offers(held, lane_uses(status=40)) == []  # 41 expired: nothing newer the lane could take


def test_a_status_list_not_valid_yet_is_not_offered() -> None:
    later = status_list(44, 43, issued=NOW + dt.timedelta(hours=1))  # the lane refuses one ahead of valid_from
    assert offers([*CHAIN, later], lane_uses(status=43)) == []


def test_a_lane_that_missed_a_delta_with_no_full_list_newer_cannot_catch_up_and_says_why() -> None:
    found = offers(CHAIN[2:], lane_uses(status=40))  # it missed 40→41 (expired, removed); 41→42 needs 41
    assert len(found) == 1 and isinstance(found[0], CannotCatchUp)
    assert found[0].kind is ListKind.STATUS_LIST
    assert found[0].reason.startswith("the lane uses status list version 40; the centre holds versions up to 43, "
                                      "but only as deltas on version(s) 41, 42 and no full list newer than 40")


# -- fee tables ------------------------------------------------------------------------------------

def test_a_lane_behind_on_fee_tables_gets_the_newest_not_the_next() -> None:
    assert offered([fee_table(7), fee_table(8), fee_table(9)], lane_uses(fee=7)) == [("fee_table", 9)]


def test_a_lane_whose_pending_fee_table_is_the_newest_is_offered_nothing() -> None:
    assert offers([fee_table(7), fee_table(8)], lane_uses(fee=7, pending=8)) == []


def test_an_expired_fee_table_is_not_offered() -> None:
    held = [fee_table(7), fee_table(8, expires_in=-dt.timedelta(seconds=1))]
    assert offers(held, lane_uses(fee=7)) == []


def test_a_lane_behind_on_both_kinds_is_offered_both() -> None:
    assert offered([*CHAIN, fee_table(8)], lane_uses(status=42, fee=7)) == [("status_list", 43), ("fee_table", 8)]


# -- the running centre: offers published, not repeated within the cooldown ----------------------------

class FakeClient:
    """What the centre publishes, in order (topic, payload, retain)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bool]] = []

    async def publish(self, topic: str, payload: bytes, *, qos: int, retain: bool, properties: Any) -> None:
        self.sent.append((topic, payload, retain))

    def manifests(self) -> list[ListManifest]:
        found = [ListManifest.from_json(p) for t, p, _ in self.sent if t.endswith("/list/manifest")]
        self.sent.clear()
        return found


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def centre(tmp_path: Path, clock: Clock) -> Iterator[Centre]:
    files = tmp_path / "unused.pem"  # never connected: messages are handed in, publishes go to a FakeClient
    made = Centre(CentreSettings(broker=BrokerSettings(host="127.0.0.1", port=1, ca=files, cert=files, key=files),
                                 db=tmp_path / "centre.db"), clock=clock)
    try:
        yield made
    finally:
        made.close()


def hold(ledger: Ledger, *versions: ListVersion) -> None:
    for v in versions:
        ledger.store_list(v.kind, v.version, v.manifest, v.data)


async def lane_publishes(centre: Centre, client: FakeClient, lane: ListVersions) -> None:
    # As received from the broker: the centre checks the payload against the contract first.
    await centre._handle(client, f"etc/v1/{LANE}/list/versions", lane.to_json().encode())  # type: ignore[arg-type]


async def test_a_lane_behind_is_sent_the_manifest_and_chunks_of_what_it_missed(
        centre: Centre, caplog: pytest.LogCaptureFixture) -> None:
    hold(centre.ledger, *CHAIN)
    client = FakeClient()
    with caplog.at_level(logging.INFO, "laned.centre"):
        await lane_publishes(centre, client, lane_uses(status=42))
    topics = [t.removeprefix(f"etc/v1/{LANE}/") for t, _, _ in client.sent]
    assert topics == ["list/manifest", "list/chunk"] and client.sent[0][2]  # the manifest retained, as published
    chunk = ListChunk.from_json(client.sent[1][1])
    assert (chunk.kind, chunk.version, chunk.data) == (ListKind.STATUS_LIST, 43, CHAIN[3].data)
    assert (ListManifest.from_json(client.sent[0][1]).version, ListManifest.from_json(client.sent[0][1]).base_version) \
        == (43, 42)
    assert f"lane {LANE} is behind: the lane uses status list version 42; the delta 42→43" in caplog.text
    assert centre.ledger.last_payload(LANE, "versions") is not None  # still stored, as before


async def test_the_same_version_is_not_offered_again_within_the_cooldown_but_a_newer_one_is(
        centre: Centre, clock: Clock) -> None:
    hold(centre.ledger, *CHAIN[:3])
    client = FakeClient()
    await lane_publishes(centre, client, lane_uses(status=41))
    assert [m.version for m in client.manifests()] == [42]
    clock.now += dt.timedelta(minutes=5)  # the lane reconnects mid-download, still on 41
    await lane_publishes(centre, client, lane_uses(status=41))
    assert client.manifests() == []
    hold(centre.ledger, status_list(44, 41))  # a delta reaching further is published meanwhile
    await lane_publishes(centre, client, lane_uses(status=41))
    assert [m.version for m in client.manifests()] == [44]
    clock.now += dt.timedelta(seconds=OFFER_COOLDOWN_S)  # still on 41 after the cooldown: offered again
    await lane_publishes(centre, client, lane_uses(status=41))
    assert [m.version for m in client.manifests()] == [44]


async def test_a_lane_that_cannot_catch_up_is_logged_and_sent_nothing(
        centre: Centre, caplog: pytest.LogCaptureFixture) -> None:
    hold(centre.ledger, *CHAIN[1:])  # deltas only
    client = FakeClient()
    with caplog.at_level(logging.WARNING, "laned.centre"):
        await lane_publishes(centre, client, lane_uses(status=39))
    assert client.sent == []
    assert f"lane {LANE} cannot catch up on its status_list: the lane uses status list version 39" in caplog.text
    assert "publish a full list" in caplog.text


async def test_a_version_that_expires_before_it_is_sent_is_logged_not_fatal(
        centre: Centre, caplog: pytest.LogCaptureFixture) -> None:
    hold(centre.ledger, fee_table(8, expires_in=dt.timedelta(milliseconds=500)))  # under publish's 1 s minimum
    client = FakeClient()
    with caplog.at_level(logging.WARNING, "laned.centre"):
        await lane_publishes(centre, client, lane_uses(fee=7))
    assert client.sent == [] and "could not offer fee_table version 8" in caplog.text
