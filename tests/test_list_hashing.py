"""A list whose chunk 0 comes last never holds the lane's loop to hash it (issue 10, item 5).

The SHA-256 of the whole is computed over the contiguous run of chunks from chunk 0. When
chunk 0 is lost and asked for again after ``chunk_timeout_s``, every other chunk is in by
then — for a national list ~800 MB, ~0.8 s of hashing — and must be hashed a bounded step
at a time (``hash_step_bytes``), the lane's tasks running in between. The SHA-256 is
counted here by a stand-in for ``hashlib.sha256`` in laned/lane/list_update.py: how many
bytes each synchronous call (a chunk taken, a step of the catch-up) hashes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from laned.lane import list_update as lu
from laned.lane.status_list import StatusList
from laned.uplink.list_apply import load_status_list
from laned.uplink.messages import ListKind
from tests.test_list_service import Lane
from tests.test_list_update import Centre, applied, download, feed, resigned, started, status_payload

STEP = 10_000  # hash_step_bytes here: not a multiple of the chunk size, so steps end inside chunks


class CountingSha256:
    """hashlib.sha256, counting every byte it is given (its own chunk's hash included)."""

    total = 0

    def __init__(self, data: bytes = b"") -> None:
        self._h = hashlib.sha256(data)
        CountingSha256.total += memoryview(data).nbytes

    def update(self, data: Any) -> None:
        self._h.update(data)
        CountingSha256.total += memoryview(data).nbytes

    def digest(self) -> bytes:
        return self._h.digest()


@pytest.fixture
def per_call(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, int]]]:
    """(call, bytes hashed in it) for every on_chunk and hash_step of any download."""
    monkeypatch.setattr(lu, "hashlib", types.SimpleNamespace(sha256=CountingSha256))
    calls: list[tuple[str, int]] = []

    def counted(name: str) -> Any:
        real = getattr(lu.ListDownload, name, None)

        def call(self: lu.ListDownload, *args: Any) -> Any:
            before = CountingSha256.total
            try:
                return real(self, *args)
            finally:
                calls.append((name, CountingSha256.total - before))
        return call

    for name in ("on_chunk", "hash_step"):
        monkeypatch.setattr(lu.ListDownload, name, counted(name), raising=False)
    yield calls


async def settled() -> None:
    """Until the service's tasks that verify and apply versions are done."""
    async with asyncio.timeout(10):
        while busy := [t for t in asyncio.all_tasks() if t.get_name().startswith(("list-verify-", "list-apply-"))]:
            await asyncio.wait(busy)


def late_chunk_0(centre: Centre) -> list[bytes]:
    count = int(centre.body["chunk_count"])
    return centre.chunks([*range(1, count), 0])


def test_a_late_chunk_0_is_hashed_a_bounded_step_at_a_time_and_the_list_still_applies(per_call):
    centre = Centre(ListKind.STATUS_LIST, 42, status_payload(42, add=range(5000)), chunks=40)
    dl = download(in_use=41)
    dl.limits = dataclasses.replace(dl.limits, hash_step_bytes=STEP)
    started(dl, centre)
    outcomes = feed(dl, late_chunk_0(centre))
    # Each call: at most one step of the running hash, plus the chunk's own SHA-256.
    assert max(n for _, n in per_call) <= STEP + centre.chunk_size
    # Chunk 0 completes the set, but the ~200 KB before it are not hashed in that call.
    assert outcomes[-1] == lu.Accepted(index=0, missing=0) and dl.hashing_due
    steps: list[lu.Complete | lu.Refused | None] = []
    while dl.hashing_due:
        steps.append(dl.hash_step())
    assert steps[:-1] == [None] * (len(steps) - 1) and len(steps) > 10
    done = steps[-1]
    assert isinstance(done, lu.Complete) and done.content.to_bytes() == centre.data
    store = applied(StatusList(), done.content)
    assert (store.version, len(store)) == (42, 5000)
    assert max(n for _, n in per_call) <= STEP + centre.chunk_size
    assert sum(n for name, n in per_call if name == "hash_step") >= len(centre.data) - STEP


def test_chunks_in_order_are_hashed_as_they_come_with_no_catching_up(per_call):
    centre = Centre(ListKind.STATUS_LIST, 42, status_payload(42, add=range(5000)), chunks=40)
    dl = download(in_use=41)
    dl.limits = dataclasses.replace(dl.limits, hash_step_bytes=STEP)
    started(dl, centre)
    outcomes = feed(dl, centre.chunks())
    assert isinstance(outcomes[-1], lu.Complete) and not dl.hashing_due
    assert [name for name, _ in per_call] == ["on_chunk"] * 40


def test_a_late_chunk_0_whose_whole_does_not_match_the_manifest_is_refused_after_the_catch_up(per_call):
    honest = Centre(ListKind.STATUS_LIST, 42, status_payload(42, add=range(3000)), chunks=20)
    liar = Centre(ListKind.STATUS_LIST, 42, status_payload(42, add=range(3000)), chunks=20)
    liar.body = json.loads(resigned(dict(honest.body, sha256=hashlib.sha256(b"something else").hexdigest())))
    dl = download(in_use=41)
    dl.limits = dataclasses.replace(dl.limits, hash_step_bytes=STEP)
    started(dl, liar)
    feed(dl, late_chunk_0(honest))
    last = None
    while dl.hashing_due:
        last = dl.hash_step()
    assert isinstance(last, lu.Refused) and last.reason is lu.ListRefusal.HASH_MISMATCH
    assert dl.collecting is None and dl.applying is None and dl.in_use == 41


def test_on_the_daemon_the_catch_up_runs_a_step_per_loop_turn_and_the_list_is_installed(tmp_path: Path, per_call):
    lane = Lane(tmp_path)
    download_ = lane.service.downloads.status_list
    download_.limits = dataclasses.replace(download_.limits, hash_step_bytes=STEP)
    centre = Centre(ListKind.STATUS_LIST, 42, status_payload(42, add=range(5000)), chunks=40)
    turns: list[int] = []  # hash_step calls seen at each turn of a task beside the download

    async def scenario() -> None:
        stop = asyncio.Event()

        async def lane_task() -> None:  # stands for the lane's own tasks: it must get its turns
            while not stop.is_set():
                turns.append(sum(1 for name, _ in per_call if name == "hash_step"))
                await asyncio.sleep(0)

        beside = asyncio.create_task(lane_task())
        await lane.publish(centre, late_chunk_0(centre))
        await settled()
        stop.set()
        await beside

    asyncio.run(lane.running(scenario))
    assert (lane.status.version, len(lane.status)) == (42, 5000)
    assert load_status_list(lane.path).version == 42 and not lane.raised("list_update_refused")
    steps = [n for name, n in per_call if name == "hash_step"]
    assert len(steps) > 10 and max(n for _, n in per_call) <= STEP + centre.chunk_size
    # The lane's task ran between the steps: never two of them in one of its turns.
    assert all(b - a <= 1 for a, b in zip(turns, turns[1:], strict=False))
