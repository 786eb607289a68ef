"""A version being applied is known as such, and is still valid when it is applied (issue 10, item 5).

A national list's apply takes ~40 s after its download; the version in use changes only
at its install. Meanwhile the download used to know nothing of it: a reconnect's retained
manifest of that version started its ~800 MB download again, a second apply of the same
delta ended in a false ``list_update_refused``, and a delta built on it was refused
``base_mismatch``. Now the download counts it as being applied (``ListDownload.applying``):
its manifest again is no news, a delta on it is collected and applied after it (one
version queued at most; one more announced then is asked for again once there is room).

And ``expires_at`` was checked only when the manifest came: chunks that come hours later
(a download resumed after an outage) could make an expired version the one in use. It is
checked again when the apply starts.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from laned.lane import list_update as lu
from laned.lane.status_list import StatusList
from laned.uplink import list_apply as la
from laned.uplink.list_apply import StatusListInUse, load_status_list
from laned.uplink.messages import ListKind, ListRequest
from tests.test_list_apply import verified
from tests.test_list_service import Lane, full_list
from tests.test_list_update import FEE_TOML, NOW, CST, Centre, download, feed, started, status_payload


def delta(version: int, base: int, add: range) -> Centre:
    return Centre(ListKind.STATUS_LIST, version, status_payload(version, base, add=add), base=base)


def completed(dl: lu.ListDownload, centre: Centre) -> lu.VerifiedContent:
    started(dl, centre)
    done = feed(dl, centre.chunks())[-1]
    assert isinstance(done, lu.Complete), done
    return done.content


# -- the download ----------------------------------------------------------------------------------


def test_the_version_handed_over_is_being_applied_until_installed_and_its_manifest_again_is_no_news():
    dl = download(in_use=41)
    v42 = full_list(42, range(10))
    completed(dl, v42)
    assert dl.applying == 42 and dl.in_use == 41
    again = dl.on_manifest(v42.manifest, NOW)  # the retained copy after a reconnect
    assert isinstance(again, lu.Ignored) and again.code is lu.Ignore.BEING_APPLIED and dl.collecting is None
    dl.installed(42)
    assert dl.applying is None and dl.in_use == 42


def test_a_delta_on_the_version_being_applied_is_collected_and_one_on_the_version_in_use_refused():
    dl = download(in_use=41)
    completed(dl, full_list(42, range(10)))
    on_41 = dl.on_manifest(delta(43, 41, range(3)).manifest, NOW)  # in use until 42's apply ends: no longer
    assert isinstance(on_41, lu.Refused) and on_41.reason is lu.ListRefusal.BASE_MISMATCH
    assert "uses version 41 and applies version 42" in on_41.text
    completed(dl, delta(43, 42, range(3)))
    assert dl.applying == 43


def test_one_version_queued_at_most_and_one_announced_then_is_asked_for_once_there_is_room():
    dl = download(in_use=41)
    completed(dl, full_list(42, range(10)))
    completed(dl, delta(43, 42, range(3)))
    later = dl.on_manifest(delta(44, 43, range(5)).manifest, NOW)
    assert isinstance(later, lu.Ignored) and later.code is lu.Ignore.APPLY_QUEUE_FULL
    assert dl.collecting is None and dl.due(NOW) is None  # no room yet
    dl.installed(42)
    request = dl.due(NOW)
    assert isinstance(request, ListRequest) and (request.version, request.chunks) == (44, None)
    assert dl.due(NOW) is None  # asked once
    dl.installed(43)
    completed(dl, delta(44, 43, range(5)))  # the centre answers with the manifest, then the chunks


def test_a_failed_apply_ends_and_the_version_can_come_again():
    dl = download(in_use=41)
    v42 = full_list(42, range(10))
    completed(dl, v42)
    dl.apply_ended(42)  # refused at the apply (bad content, disk full…)
    assert dl.applying is None and dl.in_use == 41
    assert isinstance(dl.on_manifest(v42.manifest, NOW), lu.Started)


# -- on the daemon -----------------------------------------------------------------------------------


class HeldSave:
    """Saving a status list version (in its thread) waits until :meth:`release`: that
    version's apply is under way, the per-kind lock held, for as long as the test wants."""

    def __init__(self, version: int) -> None:
        self.version = version
        self.entered = threading.Event()
        self._go = threading.Event()

    async def saving(self) -> None:
        """Until the apply of the version has reached its save."""
        assert await asyncio.to_thread(self.entered.wait, 5), f"version {self.version} never saved"

    def release(self) -> None:
        self._go.set()


@pytest.fixture
def hold(monkeypatch: pytest.MonkeyPatch) -> Callable[[int], HeldSave]:
    held: dict[int, HeldSave] = {}
    real = la._save_status_list

    def save(made: StatusListInUse, path: Path) -> None:
        gate = held.get(made.version)
        if gate is not None:
            gate.entered.set()
            gate._go.wait(10)
        real(made, path)

    monkeypatch.setattr(la, "_save_status_list", save)

    def holding(version: int) -> HeldSave:
        held[version] = HeldSave(version)
        return held[version]
    return holding


async def feed_all(lane: Lane, centre: Centre, *, retained: bool = False) -> None:
    await lane.receive("listManifest", centre.manifest, retained=retained)
    for raw in centre.chunks():
        await lane.receive("listChunk", raw)


def test_while_a_full_list_applies_its_retained_manifest_is_no_news_and_a_delta_on_it_follows_it(tmp_path, hold):
    lane = Lane(tmp_path)
    held = hold(42)
    v42 = full_list(42, range(50))

    async def scenario() -> None:
        lane.service._session = lane.session  # connected
        await lane.publish(full_list(41, range(5)))
        await feed_all(lane, v42)
        await held.saving()
        # A reconnect meanwhile: the broker's retained manifest of 42, and (answering nothing)
        # stray chunks of it again.
        await feed_all(lane, v42, retained=True)
        await feed_all(lane, delta(43, 42, range(50, 60)))  # the centre's next version, on 42
        assert lane.status.version == 41  # 42 not installed yet: both wait
        held.release()
        await lane.settle()

    asyncio.run(lane.running(scenario))
    assert lane.session.of(ListRequest) == []  # 42 was not asked for again
    assert lane.service.installed == [(ListKind.STATUS_LIST, 41), (ListKind.STATUS_LIST, 42),
                                      (ListKind.STATUS_LIST, 43)]
    assert (lane.status.version, len(lane.status)) == (43, 60) and load_status_list(lane.path).version == 43
    assert lane.raised("list_update_refused") == []
    assert lane.service.downloads.status_list.applying is None


def test_a_delta_announced_again_while_it_applies_is_applied_once_without_a_false_refusal(tmp_path, hold):
    lane = Lane(tmp_path)
    held = hold(43)
    v43 = delta(43, 42, range(50, 60))

    async def scenario() -> None:
        lane.service._session = lane.session
        await lane.publish(full_list(42, range(50)))
        await feed_all(lane, v43)
        await held.saving()
        await feed_all(lane, v43, retained=True)  # the retained manifest and the chunks again
        held.release()
        await lane.settle()

    asyncio.run(lane.running(scenario))
    assert lane.service.installed == [(ListKind.STATUS_LIST, 42), (ListKind.STATUS_LIST, 43)]
    assert lane.raised("list_update_refused") == [] and lane.session.of(ListRequest) == []
    assert (lane.status.version, len(lane.status)) == (43, 60)


# -- expiry at the apply -------------------------------------------------------------------------------


def test_a_download_resumed_after_its_expiry_is_refused_expired_and_the_list_in_use_stays(tmp_path):
    lane = Lane(tmp_path, chunk_timeout_s=30)
    v42 = Centre(ListKind.STATUS_LIST, 42, status_payload(42, add=range(20)),
                 valid_from=NOW - dt.timedelta(hours=1), expires_at=NOW + dt.timedelta(hours=1))

    async def scenario() -> None:
        await lane.publish(full_list(41, range(5)))
        chunks = v42.chunks()
        await lane.receive("listManifest", v42.manifest)  # valid now
        for raw in chunks[:-1]:
            await lane.receive("listChunk", raw)
        lane.clock[0] = NOW + dt.timedelta(hours=3)  # a long outage; the last chunk comes after it
        await lane.receive("listChunk", chunks[-1])
        await lane.settle()

    asyncio.run(lane.running(scenario))
    [refused] = lane.raised("list_update_refused")
    assert "status_list version 42 refused (expired)" in refused and "before it could be applied" in refused
    assert lane.status.version == 41 and load_status_list(lane.path).version == 41
    assert lane.service.downloads.status_list.applying is None


def test_an_expired_status_list_or_fee_table_is_refused_at_the_apply():
    v42 = Centre(ListKind.STATUS_LIST, 42, status_payload(42, add=range(3)), expires_at=NOW + dt.timedelta(hours=1))
    with pytest.raises(la.ListApplyError) as err:
        asyncio.run(la.apply_status_list(verified(v42, 41), StatusList(), path=None, now=NOW + dt.timedelta(hours=1),
                                         install=lambda made: None))
    assert err.value.reason is lu.ListRefusal.EXPIRED
    fee = Centre(ListKind.FEE_TABLE, 8, FEE_TOML, valid_from=NOW - dt.timedelta(hours=10),
                 expires_at=NOW + dt.timedelta(days=1))
    with pytest.raises(la.ListApplyError) as err:
        asyncio.run(la.apply_fee_table(verified(fee, 7), None, directory=None, now=NOW + dt.timedelta(days=2),
                                       tz=CST, install=lambda schedule: None))
    assert err.value.reason is lu.ListRefusal.EXPIRED
