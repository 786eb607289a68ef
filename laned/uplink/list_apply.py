"""Status lists and fee tables from the centre, applied on the running event loop.

:mod:`laned.lane.list_update` hands over the verified bytes of a version
(:class:`~laned.lane.list_update.VerifiedContent`); this module turns them into the list
or fee table the lane uses, without holding the loop:

* a status list (full or delta) is parsed from its chunks a piece at a time
  (:func:`~laned.lane.status_list.text_pieces`, gunzipped if so announced) and applied to
  a *fork* of the store in use (:meth:`StatusList.fork`: the same chunks, shared) in
  bounded steps, ``await asyncio.sleep(0)`` every ``max_step_ms``; the lane keeps looking
  up in the store in use all along;
* a fee table is parsed and validated in a thread (a large TOML file is tens of ms of
  Python) and offered to a copy of the schedule in use.

Only when everything held — content matching the manifest (version, base), parsed,
applied, **saved** (temp file, fsync, rename) — is ``install`` called with the new store
or schedule, synchronously: the caller replaces its references (the lane machine's, the
health monitor's) with no ``await`` in between, so no lookup ever sees a mix. Saving comes
first so that the version the lane uses is always the one it restarts with. Any failure
raises :class:`ListApplyError` (its :meth:`~ListApplyError.refusal` is the alarm) and leaves
the version in use untouched, in memory and on disk; a cancellation as well. Content that
the parsers cannot take — nested too deeply (RecursionError), numbers beyond Python's
4,300-digit limit, dates out of range — is such a failure (``bad_content``), never an
exception out of the apply; a version whose ``expires_at`` has passed by the time it is
applied (a download resumed after a long outage, an apply that waited for another) is
refused ``expired``.

Files: the status list at ``status_list.path`` (:meth:`StatusList.save` format) with its
verified manifest beside it (``<path>.manifest.json``: the validity the freshness check
needs after a restart; :func:`keep_status_manifest` writes it alone when the centre's
signed manifest of the version in use comes for a list kept without one); each fee table
from the centre as ``fee_table-v<version>.toml`` in the fee table directory, loaded at
start with :func:`load_fee_tables`. A status list file that cannot be loaded at start is
moved aside (:func:`set_aside_corrupt`: ``<path>.corrupt``, its manifest too).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import time
import zlib
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from laned import atomic_file
from laned.lane.fee_table import FeeSchedule, FeeTable, FeeTableError, local_naive
from laned.lane.list_update import Freshness, ListRefusal, Refused, VerifiedContent, list_age_state
from laned.lane.status_list import (
    Delta,
    PackedEntries,
    StatusList,
    StatusListError,
    parse_payload_steps,
    parse_text_steps,
    text_pieces,
)
from laned.uplink.contract import ContractError
from laned.uplink.messages import (
    Compression,
    FeeTableVersion,
    ListKind,
    ListManifest,
    ListVersions,
    StatusListVersion,
)

_T = TypeVar("_T")
# A list update holds the loop for at most this plus one step: a step is ≈ 1–2 ms on a quiet
# 2-core lane PC and up to ~5 ms on a loaded one, so 2 ms keeps the longest block under the
# 10 ms of issue 10 item 5 with room (run_steps' own default, 5 ms, is what the status-list
# benchmark measured).
DEFAULT_MAX_STEP_MS = 2.0
META_SUFFIX = ".manifest.json"
CORRUPT_SUFFIX = ".corrupt"
# What a parser of the centre's content raises beyond its own error for content it cannot
# take: RecursionError (JSON or TOML nested ~1,000 deep), ValueError (an integer beyond
# Python's 4,300-digit limit), OverflowError (a date out of range once converted). A
# refusal (bad_content), never a crash: the retained manifest would bring the same bytes
# back after every restart. Anything else (TypeError, MemoryError…) is not the content's.
_CONTENT_ERRORS = (RecursionError, ValueError, OverflowError)
_FEE_FILE = re.compile(r"fee_table-v([0-9]{1,19})\.toml")


class ListApplyError(Exception):
    """Verified bytes that could not become the version in use; nothing was changed."""

    def __init__(self, reason: ListRefusal, text: str, *, kind: ListKind, version: int) -> None:
        super().__init__(f"{kind} version {version} not applied ({reason}): {text}")
        self.reason, self.text, self.kind, self.version = reason, text, kind, version

    def refusal(self) -> Refused:
        """The same outcome as a refusal at download time (one alarm path for both)."""
        return Refused(reason=self.reason, text=self.text, kind=self.kind, version=self.version)


# -- driving steps on the loop -----------------------------------------------------------------------


async def run_steps(steps: Generator[None, None, _T], *, max_step_ms: float = 5) -> _T:
    """Drive a step generator on the running loop; return what it returns.

    Runs steps until ``max_step_ms`` have passed, then lets the event loop run
    (``await asyncio.sleep(0)``): the loop is held for at most ``max_step_ms`` plus one
    step (≈ 1–2 ms on a 2-core lane PC).
    """
    budget = max_step_ms / 1000
    clock = time.perf_counter
    started = clock()
    while True:
        try:
            next(steps)
        except StopIteration as done:
            await asyncio.sleep(0)  # so that what the caller runs next starts a fresh slice
            result: _T = done.value
            return result
        if clock() - started >= budget:
            await asyncio.sleep(0)
            started = clock()


async def apply_delta(store: StatusList, delta: Delta | bytes | str, *, max_step_ms: float = 5) -> None:
    """Apply a delta — or the centre's raw payload, parsed in steps first — to ``store`` itself.

    StatusListError (and nothing applied) for a bad payload, entry or version. Lookups in
    ``store`` see the old version until the new one is published whole.
    """
    if not isinstance(delta, Delta):
        delta = await run_steps(parse_payload_steps(delta), max_step_ms=max_step_ms)
    await run_steps(store.apply_delta_steps(delta), max_step_ms=max_step_ms)


# -- status list ---------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class StatusListInUse:
    """The status list the lane uses and what its manifest said (None: not known)."""

    store: StatusList
    manifest: ListManifest | None = None
    updated_at: dt.datetime | None = None  # when it was applied

    @property
    def version(self) -> int:
        return self.store.version

    def freshness(self, max_age_s: float, now: dt.datetime) -> Freshness:
        m = self.manifest
        return list_age_state(m.valid_from if m else None, m.expires_at if m else None, max_age_s, now)

    def version_info(self) -> StatusListVersion:
        return StatusListVersion(version=self.version, updated_at=self.updated_at, entries=len(self.store))


async def apply_status_list(content: VerifiedContent, in_use: StatusList, *, path: Path | None,
                            now: dt.datetime, install: Callable[[StatusListInUse], None],
                            max_expanded_bytes: int | None = None,
                            max_step_ms: float = DEFAULT_MAX_STEP_MS) -> StatusListInUse:
    """Build the announced version beside ``in_use``, save it to ``path``, then ``install`` it."""
    m = content.manifest
    kind, version = ListKind.STATUS_LIST, m.version

    def fail(reason: ListRefusal, text: str) -> ListApplyError:
        return ListApplyError(reason, text, kind=kind, version=version)

    if m.kind is not kind:
        raise fail(ListRefusal.UNKNOWN_KIND, f"a {m.kind} given to the status list")
    _check_expiry(m, now, fail)
    text = text_pieces(content.pieces, gzip=m.compression is Compression.GZIP, max_bytes=max_expanded_bytes)
    try:
        delta = await run_steps(parse_text_steps(text), max_step_ms=max_step_ms)
    except StatusListError as err:
        raise fail(ListRefusal.BAD_CONTENT, str(err)) from None
    except _CONTENT_ERRORS as err:  # StatusListError is a ValueError: caught above
        raise fail(ListRefusal.BAD_CONTENT, f"status list payload cannot be parsed: {_content_error(err)}") from None
    if (delta.version, delta.base) != (m.version, m.base_version):
        raise fail(ListRefusal.CONTENT_MISMATCH, f"the content is {delta}, the manifest announced version "
                   f"{m.version} on {m.base_version if m.base_version is not None else 'nothing (full)'}")
    new = in_use.fork()
    try:
        await run_steps(new.apply_delta_steps(delta), max_step_ms=max_step_ms)
    except StatusListError as err:
        reason = ListRefusal.BASE_MISMATCH if m.base_version is not None else ListRefusal.BAD_CONTENT
        raise fail(reason, str(err)) from None
    await run_steps(_release(delta), max_step_ms=max_step_ms)
    del delta
    made = StatusListInUse(store=new, manifest=m, updated_at=now)
    if path is not None:
        await _persist(lambda: _save_status_list(made, path), fail, lambda: install(made))
    install(made)
    return made


def _check_expiry(m: ListManifest, now: dt.datetime, fail: Callable[[ListRefusal, str], ListApplyError]) -> None:
    """Checked at the manifest's arrival, and again here: the chunks may have come hours
    later (a download resumed after an outage), or the apply waited for another."""
    if now >= m.expires_at:
        raise fail(ListRefusal.EXPIRED, f"expired at {m.expires_at.isoformat()} before it could be applied; the lane "
                   f"clock says {now.isoformat()}")


def _content_error(err: BaseException) -> str:
    if isinstance(err, RecursionError):
        return "nested too deeply (RecursionError)"
    return f"{type(err).__name__}: {str(err)[:200]}"


def _release(delta: Delta) -> Generator[None, None, None]:
    """Free the parsed entries a block at a time (a national list's are ~200 MB: unmapped
    at once, they would hold the loop for tens of ms)."""
    for entries in (delta.add, delta.remove):
        if isinstance(entries, PackedEntries):
            yield from entries.release_steps()


def _save_status_list(made: StatusListInUse, path: Path) -> None:
    made.store.save(path)
    _save_status_manifest(made, path)


def _save_status_manifest(made: StatusListInUse, path: Path) -> None:
    if made.manifest is not None:
        meta = {"manifest": dict(made.manifest.raw) if made.manifest.raw is not None else made.manifest.to_dict(),
                "applied_at": made.updated_at.isoformat() if made.updated_at else None}
        write_atomic(path.with_name(path.name + META_SUFFIX), json.dumps(meta, ensure_ascii=False).encode())


async def keep_status_manifest(status: StatusListInUse, manifest: ListManifest, *, path: Path | None,
                               install: Callable[[StatusListInUse], None]) -> StatusListInUse:
    """The centre's signed manifest of the version in use, for a list kept without one (a
    crash between saving the list and its manifest): saved beside the list, then
    ``install``-ed with the same store, so that its validity is known again.

    What can be checked is the version (and the kind): the manifest's size and SHA-256 are
    those of the bytes the centre sent, while the file holds the list built from them (a
    delta's are not even the whole list). The file was written only from bytes that
    matched a signed manifest of this version; the signature says this one is the centre's.
    """
    def fail(reason: ListRefusal, text: str) -> ListApplyError:
        return ListApplyError(reason, text, kind=ListKind.STATUS_LIST, version=manifest.version)

    if manifest.kind is not ListKind.STATUS_LIST or manifest.version != status.version:
        raise fail(ListRefusal.CONTENT_MISMATCH, f"a {manifest.kind} manifest of version {manifest.version} for "
                   f"status list version {status.version}")
    made = StatusListInUse(store=status.store, manifest=manifest, updated_at=status.updated_at)
    if path is not None:
        await _persist(lambda: _save_status_manifest(made, path), fail, lambda: install(made))
    install(made)
    return made


async def _persist(save: Callable[[], None], fail: Callable[[ListRefusal, str], ListApplyError],
                   on_saved_when_cancelled: Callable[[], None]) -> None:
    """Run ``save`` in a thread (a national list is ~0.2 s of writing plus the fsync).

    A cancellation does not stop a write under way: it is waited for, and if it succeeded
    the new version is installed anyway, so that memory and disk agree; then the
    cancellation goes on.
    """
    job = asyncio.ensure_future(asyncio.to_thread(save))
    try:
        await asyncio.shield(job)
    except asyncio.CancelledError:
        try:
            await job
        except OSError:
            pass
        else:
            on_saved_when_cancelled()
        raise
    except OSError as err:
        raise fail(ListRefusal.NOT_SAVED, f"cannot save: {err}") from None


def set_aside_corrupt(path: Path) -> tuple[list[Path], list[str]]:
    """Move a status list file that cannot be loaded, and its manifest, aside: each to its
    name + ``.corrupt`` (replacing an older one: one bad list is evidence, a pile of
    800 MB files a full disk). The files moved there, and what could not be moved."""
    moved: list[Path] = []
    problems: list[str] = []
    for source in (path, path.with_name(path.name + META_SUFFIX)):
        target = source.with_name(source.name + CORRUPT_SUFFIX)
        try:
            os.replace(source, target)
        except FileNotFoundError:
            continue
        except OSError as err:
            problems.append(f"cannot move {source} to {target}: {err.strerror}")
        else:
            moved.append(target)
    return moved, problems


def load_status_list(path: Path) -> StatusListInUse:
    """At start: the saved status list and its manifest (blocks ~0.2 s for 20 million
    entries). StatusListError for a bad list file; a missing or mismatched manifest
    leaves the validity unknown (the freshness check then calls the list old)."""
    store = StatusList()
    store.load(path)
    manifest, applied = None, None
    meta_path = path.with_name(path.name + META_SUFFIX)
    try:
        meta = json.loads(meta_path.read_bytes())
        candidate = ListManifest.from_dict(meta["manifest"])
        if candidate.version == store.version:
            manifest = candidate
            applied = dt.datetime.fromisoformat(meta["applied_at"]) if meta.get("applied_at") else None
    except (OSError, ValueError, KeyError, TypeError, ContractError):
        pass
    return StatusListInUse(store=store, manifest=manifest, updated_at=applied)


# -- fee table -----------------------------------------------------------------------------------------


async def apply_fee_table(content: VerifiedContent, schedule: FeeSchedule | None, *, directory: Path | None,
                          now: dt.datetime, tz: dt.tzinfo | None, install: Callable[[FeeSchedule], None],
                          max_expanded_bytes: int = 16 << 20) -> FeeSchedule:
    """Validate the announced fee table, offer it to a copy of ``schedule`` (in force now,
    or pending until its ``valid_from``), save it in ``directory``, then ``install``."""
    m = content.manifest
    kind, version = ListKind.FEE_TABLE, m.version

    def fail(reason: ListRefusal, text: str) -> ListApplyError:
        return ListApplyError(reason, text, kind=kind, version=version)

    if m.kind is not kind:
        raise fail(ListRefusal.UNKNOWN_KIND, f"a {m.kind} given to the fee table")
    _check_expiry(m, now, fail)
    data = content.to_bytes()
    try:
        if m.compression is Compression.GZIP:
            inflate = zlib.decompressobj(wbits=31)
            data = inflate.decompress(data, max_expanded_bytes + 1)
            if len(data) > max_expanded_bytes or not inflate.eof:
                raise fail(ListRefusal.BAD_CONTENT, f"not a whole gzip stream of at most {max_expanded_bytes:,} bytes")
        table = await asyncio.to_thread(FeeTable.from_toml_bytes, data, source=f"fee table version {version}", tz=tz)
    except (FeeTableError, zlib.error) as err:
        raise fail(ListRefusal.BAD_CONTENT, str(err)) from None
    except _CONTENT_ERRORS as err:  # FeeTableError is a ValueError: caught above
        raise fail(ListRefusal.BAD_CONTENT, f"fee table version {version} cannot be parsed: "
                   f"{_content_error(err)}") from None
    if table.version != m.version:
        raise fail(ListRefusal.CONTENT_MISMATCH, f"the table says version {table.version}")
    if table.valid_from != local_naive(m.valid_from, tz):
        raise fail(ListRefusal.CONTENT_MISMATCH, f"the table is valid from {table.valid_from.isoformat()}, the "
                   f"manifest says {m.valid_from.isoformat()}")
    if schedule is None:
        if table.valid_from > local_naive(now, tz):
            raise fail(ListRefusal.NOT_YET_VALID, "no fee table is in force to wait with; this one is valid only "
                       f"from {table.valid_from.isoformat()}")
        new = FeeSchedule(table, tz=tz)
    else:
        new = FeeSchedule(schedule.current, tz=tz)
        new.pending = schedule.pending
        try:
            new.offer(table, now)
        except FeeTableError as err:
            raise fail(ListRefusal.ROLLBACK, str(err)) from None
    if directory is not None:
        keep = {new.current.version} | ({new.pending.version} if new.pending else set())
        await _persist(lambda: _save_fee_table(directory, version, data, keep), fail, lambda: install(new))
    install(new)
    return new


def _save_fee_table(directory: Path, version: int, data: bytes, keep: set[int]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    write_atomic(directory / f"fee_table-v{version}.toml", data)
    for old in directory.iterdir():  # tables neither in force nor pending are of no more use
        match = _FEE_FILE.fullmatch(old.name)
        if match and int(match[1]) not in keep:
            old.unlink(missing_ok=True)


def load_fee_tables(directory: Path | None, configured: Path | None, now: dt.datetime,
                    tz: dt.tzinfo | None) -> tuple[FeeSchedule | None, list[str]]:
    """At start: the tables the centre sent (``directory``) and the configured file, the
    newest valid at ``now`` in force and a later one pending; and what could not be read."""
    tables: list[FeeTable] = []
    problems: list[str] = []
    paths = sorted(p for p in directory.iterdir() if _FEE_FILE.fullmatch(p.name)) \
        if directory is not None and directory.is_dir() else []
    for p in ([configured] if configured is not None and configured.exists() else []) + paths:
        try:
            tables.append(FeeTable.load(p, tz=tz))
        except FeeTableError as err:
            problems.append(str(err))
    if not tables:
        return None, problems or ["no fee table found"]
    try:
        return FeeSchedule.from_tables(tables, now, tz=tz), problems
    except FeeTableError as err:
        return None, [*problems, str(err)]


# -- files and the versions message ----------------------------------------------------------------


def write_atomic(path: Path, data: bytes) -> None:
    """``data`` to ``path`` whole or not at all (:func:`laned.atomic_file.write_atomic`)."""
    atomic_file.write_atomic(path, [data])


def _fee_version(table: FeeTable, tz: dt.tzinfo | None) -> FeeTableVersion:
    def aware(t: dt.datetime) -> dt.datetime:
        return t.replace(tzinfo=tz) if tz is not None else t.astimezone()

    return FeeTableVersion(version=table.version, valid_from=aware(table.valid_from),
                           valid_until=aware(table.valid_until) if table.valid_until else None)


def list_versions(lane_id: str, at: dt.datetime, status: StatusListInUse | None, fees: FeeSchedule | None,
                  tz: dt.tzinfo | None) -> ListVersions:
    """The retained ``list/versions`` message: publish it on connect and after each install."""
    extra: dict[str, Any] = {}
    if fees is not None:
        extra["fee_table"] = _fee_version(fees.current, tz)
        if fees.pending is not None:
            extra["fee_table_pending"] = _fee_version(fees.pending, tz)
    if status is not None and (status.manifest is not None or status.version or len(status.store)):
        extra["status_list"] = status.version_info()  # version 0 and empty, never announced: no list
    return ListVersions(lane_id=lane_id, at=at, **extra)


__all__ = [
    "CORRUPT_SUFFIX", "DEFAULT_MAX_STEP_MS", "META_SUFFIX", "ListApplyError", "StatusListInUse", "apply_delta",
    "apply_fee_table", "apply_status_list", "keep_status_manifest", "list_versions", "load_fee_tables",
    "load_status_list", "run_steps", "set_aside_corrupt", "write_atomic",
]
