"""After a crash between saving a status list and its manifest, the validity becomes known again.

The list file is written first, its manifest (``<path>.manifest.json``) second: a crash in
between leaves version N on disk beside version N-1's manifest (or none). laned loads the
list and counts its validity as unknown — old, ``status_list_old``, ETC closed where
``lists.on_stale = "close_etc"``. The state used to last until the next version: the
centre's retained manifest of version N, seen on every connect, was ignored as the version
in use. Now that signed manifest is kept (saved beside the list) when the lane keeps none
for the version in use, and the alarm clears.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from pathlib import Path

from laned.lane import list_update as lu
from laned.lane.events import ClearAlarm, Device, DeviceStatus
from laned.lane.list_update import StalePolicy
from laned.uplink.list_apply import META_SUFFIX, load_status_list
from laned.uplink.messages import ListKind, ListRequest
from tests.test_list_service import Lane, full_list
from tests.test_list_update import NOW, OTHER_KEY, Centre, download, status_payload


def crashed_between_the_two_saves(tmp_path: Path) -> tuple[Centre, Path]:
    """Version 42 saved whole, then version 43's list file written and the power cut before
    its manifest: 43 on disk beside 42's manifest. The centre that sent 43."""
    first = Lane(tmp_path)
    v42, v43 = full_list(42, range(10)), full_list(43, range(12))

    async def scenario() -> None:
        await first.publish(v42)
        meta_42 = first.path.with_name(first.path.name + META_SUFFIX).read_bytes()
        await first.publish(v43)
        first.path.with_name(first.path.name + META_SUFFIX).write_bytes(meta_42)

    asyncio.run(first.running(scenario))
    return v43, first.path


def test_the_download_hands_over_the_manifest_of_the_version_in_use_when_none_is_kept():
    dl = download(in_use=43)
    dl.in_use_manifest_kept = False
    v43 = full_list(43, range(12))
    forged = Centre(ListKind.STATUS_LIST, 43, status_payload(43, add=range(12)), key=OTHER_KEY)
    refused = dl.on_manifest(forged.manifest, NOW)  # believed only once its signature holds
    assert isinstance(refused, lu.Refused) and refused.reason is lu.ListRefusal.BAD_SIGNATURE
    outcome = dl.on_manifest(v43.manifest, NOW)
    assert isinstance(outcome, lu.KeepManifest) and outcome.manifest.version == 43
    assert dl.collecting is None  # nothing downloaded: the list is there
    dl.manifest_kept()
    again = dl.on_manifest(v43.manifest, NOW)
    assert isinstance(again, lu.Ignored) and again.code is lu.Ignore.IN_USE


def test_the_retained_manifest_of_the_version_in_use_is_kept_and_status_list_old_clears(tmp_path):
    v43, path = crashed_between_the_two_saves(tmp_path)
    loaded = load_status_list(path)
    assert loaded.version == 43 and loaded.manifest is None  # 42's manifest does not match: unknown
    lane = Lane(tmp_path, status=loaded, on_stale=StalePolicy.CLOSE_ETC)
    lane.service.check_freshness(NOW)
    assert lane.raised("status_list_old") == ["version 43: the version's validity is not known"]
    assert lane.posted[-1].device is Device.STATUS_LIST and not lane.posted[-1].online  # ETC closed

    async def scenario() -> None:
        await lane.receive("listManifest", v43.manifest, retained=True)  # on connecting
        await lane.settle()

    asyncio.run(lane.running(scenario))
    assert lane.session.of(ListRequest) == []  # nothing to download: the list is there
    assert lane.service.status is not None and lane.service.status.manifest is not None
    assert lane.service.status.store is lane.status and lane.status.version == 43
    assert [a for a in lane.alarms if isinstance(a, ClearAlarm) and a.code == "status_list_old"]
    assert lane.posted[-1] == DeviceStatus(Device.STATUS_LIST, True, "")  # ETC open again
    kept = load_status_list(path)  # and after the next restart
    assert kept.version == 43 and kept.manifest is not None and kept.manifest.valid_from == dt.datetime.fromisoformat(v43.body["valid_from"])
    assert not lane.raised("list_update_refused") and lane.service.installed == []


def test_the_manifest_is_kept_once_and_the_next_one_is_no_news(tmp_path):
    v43, path = crashed_between_the_two_saves(tmp_path)
    lane = Lane(tmp_path, status=load_status_list(path))
    meta = path.with_name(path.name + META_SUFFIX)

    async def scenario() -> None:
        await lane.receive("listManifest", v43.manifest, retained=True)
        await lane.settle()
        kept = meta.stat().st_mtime_ns
        await lane.receive("listManifest", v43.manifest, retained=True)  # the next reconnect
        await lane.settle()
        assert meta.stat().st_mtime_ns == kept

    asyncio.run(lane.running(scenario))
    assert json.loads(meta.read_bytes())["manifest"]["version"] == 43


def test_a_manifest_that_cannot_be_saved_is_refused_not_saved_and_used_nowhere(tmp_path):
    v43, path = crashed_between_the_two_saves(tmp_path)
    lane = Lane(tmp_path, status=load_status_list(path))
    meta = path.with_name(path.name + META_SUFFIX)
    meta.unlink()
    meta.mkdir()  # a directory where the manifest goes: the save fails

    async def scenario() -> None:
        await lane.receive("listManifest", v43.manifest, retained=True)
        await lane.settle()

    asyncio.run(lane.running(scenario))
    [refused] = lane.raised("list_update_refused")
    assert "status_list version 43 refused (not_saved)" in refused
    assert lane.service.status is not None and lane.service.status.manifest is None
    assert not lane.service.downloads.status_list.in_use_manifest_kept  # tried again on the next connect
