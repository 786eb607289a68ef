"""The simulated lane's status list: which cards and OBUs are on it, placed by hand
(``--no-centre``) or sent by the simulated centre, signed, and taken by the lane through
its own download path before the traffic starts (:mod:`laned.sim.lane_sim` drives it)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from laned.executor import LaneExecutor
from laned.lane.status_list import StatusList, StatusListError, card_key, obu_key
from laned.sim.errors import SimError
from laned.sim.traffic import status_entries
from laned.sim.vehicle import SimVehicle
from laned.uplink.list_apply import META_SUFFIX, load_status_list

log = logging.getLogger("laned.sim")

STATUS_LIST_NAME = "status_list.bin"  # in the state folder (status_list.path)
# How long the lane has to take the status list the centre published: connect (TLS, a
# reconnect after 0.5–2 s if the broker was slow to listen), the retained manifest, the
# chunks it asks for, the apply and the save: well under a second on a quiet box.
STATUS_LIST_WAIT_S = 15.0
POLL_S = 0.02

Listed = tuple[list[str], list[str]]  # card numbers (network + number, 20 digits), OBU ids (hex)


def listed_entries(vehicles: Iterable[SimVehicle]) -> Listed:
    """The cards and OBU ids on the sim's status list: those of the ``listed_card`` /
    ``listed_obu`` vehicles, sorted."""
    cards, obus = status_entries(list(vehicles))
    return sorted(cards), sorted(obus)


def write_status_list(path: Path, listed: Listed) -> int:
    """``--no-centre``: the list placed by hand as version 1 (no manifest: a lane without
    ``[uplink]`` ages it by the file's time). The version written."""
    cards, obus = listed
    entries = [card_key(c[:4], c[4:]).with_reason() for c in cards]
    entries += [obu_key(bytes.fromhex(o)).with_reason() for o in obus]
    status = StatusList()
    status.load_full(1, entries)
    status.save(path)
    return 1


def status_list_payload(version: int, listed: Listed) -> bytes:
    """The same entries as :func:`write_status_list`, as the centre sends a full list
    (``laned-status-json-1``, docs/lists.md); no ``reason``: the default, 1, as there."""
    cards, obus = listed
    add = [{"card": f"{c[:4]}-{c[4:]}"} for c in cards] + [{"obu": o} for o in obus]
    return json.dumps({"version": version, "add": add}).encode()


def status_list_version(path: Path, resume: bool) -> int:
    """With the centre: the version the centre is to publish, above any the lane holds.

    Nothing is placed by hand: a list without the manifest the lane keeps beside it is of
    unknown validity, and a lane with ``[uplink]`` counts that as old from its first second
    (``status_list_old``, the freeze-attack rule of docs/lists.md). A lane that starts with
    no list uses an empty one (nothing refused) and raises ``status_list_missing`` until the
    centre's arrives, which it does before the first vehicle (:func:`wait_status_list`):
    the vehicles' outcomes are the same as with a hand-placed list. A ``--resume`` run keeps
    the list the lane took from the centre last time (it restarts with it, as a real lane
    does) and gets the next version; a list without its manifest (a ``--no-centre`` run's)
    is removed."""
    meta = path.with_name(path.name + META_SUFFIX)
    if resume and path.exists():
        try:
            kept = load_status_list(path)
        except StatusListError as err:
            log.warning("sim: the status list %s left by the previous run cannot be read (%s); removed, the "
                        "centre sends a new one", path, err)
        else:
            if kept.manifest is not None:
                return kept.version + 1
    path.unlink(missing_ok=True)
    meta.unlink(missing_ok=True)
    return 1


def _uses(executor: LaneExecutor | None, version: int) -> bool:
    return executor is not None and getattr(executor.machine.status, "version", None) == version


async def wait_status_list(running: Callable[[], LaneExecutor | None], lane: asyncio.Task[Any],
                           stop: asyncio.Event, version: int) -> None:
    """Until the lane machine checks cards and OBUs against status list ``version``, the one
    the centre published, and the lane's health no longer says it has none: otherwise a
    listed vehicle arriving first would be checked against no list (or the previous run's)
    and pass. ``running``: the daemon's executor once it runs.

    Watched in memory (the machine's list), not on disk: the lane saves the list and its
    manifest first and swaps its references only once both are written, so the version in
    the machine is the one in use and already kept for a restart; a file that is there
    says nothing yet about what the machine uses. ``status_list_missing`` (raised at start
    when the lane has no list yet) clears at the health monitor's next round, within a
    second: the traffic starts on a lane with no list alarm standing."""
    deadline = time.monotonic() + STATUS_LIST_WAIT_S
    while True:
        executor = running()
        if _uses(executor, version) and executor is not None and (
                executor.health is None or not executor.health.registry.is_active("status_list_missing")):
            log.info("sim: the lane uses status list version %d from the centre; letting the traffic in", version)
            return
        if lane.done():
            lane.result()  # raises what stopped the daemon
            raise SimError("the lane daemon stopped before it took the centre's status list")
        if stop.is_set():
            return
        if time.monotonic() > deadline:
            if _uses(executor, version):
                raise SimError(f"the lane uses status list version {version}, but its health still reports "
                               f"status_list_missing after {STATUS_LIST_WAIT_S:.0f} s: see the laned.health lines "
                               "in laned.log")
            raise SimError(f"the lane did not take status list version {version} from the simulated centre within "
                           f"{STATUS_LIST_WAIT_S:.0f} s: see laned.log for the uplink's connection and "
                           "list_update_refused lines")
        await asyncio.sleep(POLL_S)
