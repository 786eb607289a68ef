"""The simulated lane's centre: a private Mosquitto and the reference centre, in-process.

``laned sim`` (unless ``--no-centre``) runs the lane with its ``[uplink]`` pointed at them,
so the run shows the whole way of a transaction: RSU → lane → journal → outbox → broker →
centre → ``tx/ack`` → the row marked delivered in the journal.

::

    async with SimCentre(state_dir, lane_id) as centre:
        config = load_sim_config(state_dir, overrides={**devices, **centre.uplink_overrides()})
        await centre.publish_status_list(payload, version)  # signed; the lane downloads it
        ...                                               # the run
        backlog = await centre.drain(config.journal.path)  # bounded: DRAIN_TIMEOUT_S
        report = centre.report()                           # received, duplicates, gaps …

What it puts in the state folder: ``centre/pki/`` (a new CA, broker, lane and centre
certificate every run, keys 0600: :mod:`laned.sim.pki`), ``centre/mosquitto/``
(configuration, ACL, log: :mod:`laned.sim.broker`) and ``centre/centre.db``, the centre's
ledger. The ledger is kept across ``--resume``: the centre then holds the previous run's
rows too, and a resumed lane's seqs go on without a gap.

The lane's status list comes from the centre as on a real lane: each run has its own
Ed25519 signing key (key id ``sim-centre``, in memory only, like the CA's key), its public
half goes into the lane's ``[uplink] centre_keys``, and :meth:`SimCentre.publish_status_list`
signs and publishes the simulator's list. The lane takes it through its own download path
(signed manifest, chunks, SHA-256, apply, saved with its manifest), so it knows the list's
validity and its freshness check (the freeze-attack rule, docs/lists.md) has nothing to
raise. The same key verifies the centre's commands (``command_keys`` falls back to
``centre_keys``).

The centre runs with ``auto_reconcile`` **off**. An unknown outcome (a lost B5) stays
pending at the centre, as it would until a real centre has the issuer's clearing data:
answering it would settle the row in the journal, and the vehicle's outcome would no
longer be the ``unknown`` the verdict expects of it. The summary counts those rows as
``centre_pending_reconciliations``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from laned.centre import AutoReconcile, BrokerSettings, Centre, CentreSettings
from laned.centre.keys import public_b64
from laned.centre.lists import build_list
from laned.journal.outbox import BACKLOG_SQL
from laned.sim.broker import SimBroker
from laned.sim.pki import SimPki, make_sim_pki
from laned.uplink.messages import ListKind

log = logging.getLogger("laned.sim.centre")

# At the end of a run the lane has this long to get its last rows acknowledged. The
# centre acks within ~50 ms of a batch (laned.centre.acks.ACK_DELAY_S); 10 s covers a
# reconnect after a broker hiccup (the lane's back-off starts at 1 s) on a loaded box.
DRAIN_TIMEOUT_S = 10.0
DRAIN_POLL_S = 0.1
# The lane's uplink, for a run of seconds to minutes: a lost connection is tried again
# soon, and a row without an ack goes up again well before the drain gives up.
UPLINK_RECONNECT_MIN_S = 0.5
UPLINK_RECONNECT_MAX_S = 2.0
UPLINK_ACK_TIMEOUT_S = 3.0
# The key id the centre signs lists (and would sign commands) with; the lane trusts it by this id.
SIGNING_KEY_ID = "sim-centre"
# How long a published status list stays valid: far beyond any run, well within the
# lane's maximum age (health.status_list_max_age_h, 48 h) counted from valid_from, so a
# --resume run a day later still starts with a fresh list.
STATUS_LIST_LIFETIME = dt.timedelta(days=7)


@dataclass(frozen=True, slots=True)
class CentreReport:
    """What the centre holds of the lane at the end of a run."""

    received: int  # transaction messages received, every copy
    stored: int  # distinct seqs held
    duplicates_dropped: int
    gaps: list[str] = field(default_factory=list)  # missing seq ranges below the highest, e.g. ["4-6"]
    pending_reconciliations: int = 0  # unknown outcomes the centre has not seen settled


class SimCentre:
    """The broker and the centre of one simulated run (see the module docstring)."""

    def __init__(self, state_dir: Path, lane_id: str) -> None:
        self.folder = state_dir / "centre"
        self.lane_id = lane_id
        self.broker: SimBroker | None = None
        self.centre: Centre | None = None
        self._pki: SimPki | None = None
        # A new signing key every run, never written: nothing but this run's lane trusts it.
        self._signing_key = Ed25519PrivateKey.generate()
        self._received = 0  # the last count read, shown once the centre has stopped
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> SimCentre:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        # A new PKI and broker configuration each run (a --resume run finds the old ones:
        # keys are never written over, so they go first).
        for old in ("pki", "mosquitto"):
            shutil.rmtree(self.folder / old, ignore_errors=True)
        pki = make_sim_pki(self.folder / "pki", self.lane_id)
        try:
            self.broker = await self._stack.enter_async_context(SimBroker(self.folder / "mosquitto", pki))
            broker = BrokerSettings(host=self.broker.host, port=self.broker.port, ca=pki.ca_cert,
                                    cert=pki.centre.cert, key=pki.centre.key)
            settings = CentreSettings(broker=broker, db=self.folder / "centre.db", auto_reconcile=AutoReconcile.OFF)
            self.centre = await self._stack.enter_async_context(Centre(settings))
        except BaseException:
            await self._stack.aclose()  # the broker does not outlive a centre that failed to start
            raise
        self._pki = pki
        log.info("sim centre: reference centre connected to the private broker on %s:%d; ledger %s",
                 broker.host, broker.port, settings.db)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        try:
            if self.centre is not None:
                self._received = self.centre.ledger.counts(self.lane_id).received
        finally:
            self.centre = None  # its ledger is closed below: nothing reads it any more
            await self._stack.aclose()

    def uplink_overrides(self) -> dict[str, Any]:
        """The lane's ``[uplink]``, pointed at this run's broker with the lane's certificate."""
        if self.broker is None or self._pki is None:
            raise RuntimeError("SimCentre.uplink_overrides() before the centre started")
        return {"uplink.host": self.broker.host, "uplink.port": self.broker.port,
                "uplink.ca": str(self._pki.ca_cert), "uplink.cert": str(self._pki.lane.cert),
                "uplink.key": str(self._pki.lane.key), "uplink.reconnect_min_s": UPLINK_RECONNECT_MIN_S,
                "uplink.reconnect_max_s": UPLINK_RECONNECT_MAX_S, "uplink.ack_timeout_s": UPLINK_ACK_TIMEOUT_S,
                # Fee tables the centre might send go into the run's folder, never /var/lib.
                "lists.fee_table_dir": str(self.folder / "fee_tables"),
                # What the lane verifies this centre's lists (and commands) with: the raw
                # public key in base64, as `laned centre keygen` prints it.
                "uplink.centre_keys": {SIGNING_KEY_ID: public_b64(self._signing_key.public_key())}}

    async def publish_status_list(self, data: bytes, version: int) -> None:
        """Sign ``data`` (a full status list as ``laned-status-json-1``, its ``version``
        inside) as ``version`` and publish it to the lane: the manifest retained, so a lane
        that connects later still sees it and asks for the chunks (``list/request``).

        Valid from now, for :data:`STATUS_LIST_LIFETIME`. Raises CentreError if the
        manifest would be refused or the centre is not connected to the broker."""
        if self.centre is None:
            raise RuntimeError("SimCentre.publish_status_list() before the centre started")
        now = dt.datetime.now(dt.UTC)
        signed = build_list(kind=ListKind.STATUS_LIST, version=version, data=data, now=now, valid_from=now,
                            expires_at=now + STATUS_LIST_LIFETIME, private_key=self._signing_key,
                            key_id=SIGNING_KEY_ID)
        await self.centre.publish_list(signed, [self.lane_id])
        log.info("sim centre: status list version %d (%d bytes, signed by key %s) published to lane %s, valid "
                 "until %s", version, len(data), SIGNING_KEY_ID, self.lane_id, signed.expires_at().isoformat())

    async def drain(self, journal: Path, timeout_s: float = DRAIN_TIMEOUT_S) -> int:
        """Wait until every final journal row is acknowledged by the centre, at most
        ``timeout_s``; the backlog left (0: all delivered)."""
        deadline = time.monotonic() + timeout_s
        backlog = await outbox_backlog(journal, self.lane_id)
        while backlog and time.monotonic() < deadline:
            await asyncio.sleep(DRAIN_POLL_S)
            backlog = await outbox_backlog(journal, self.lane_id)
        if backlog:
            log.warning("sim centre: %d journal row(s) still unacknowledged by the centre after %.0f s; the lane "
                        "keeps them and sends them again on its next start (see the uplink lines above)",
                        backlog, timeout_s)
        return backlog

    def received(self) -> int:
        """Transaction messages the centre received so far (the live view; after the run, the last count)."""
        if self.centre is not None:
            self._received = self.centre.ledger.counts(self.lane_id).received
        return self._received

    def report(self) -> CentreReport:
        if self.centre is None:
            raise RuntimeError("SimCentre.report() before the centre started")
        counts = self.centre.ledger.counts(self.lane_id)
        return CentreReport(received=counts.received, stored=counts.stored,
                            duplicates_dropped=counts.duplicates_dropped, gaps=[str(r) for r in counts.gaps],
                            pending_reconciliations=counts.pending_reconciliations)


async def outbox_backlog(journal: Path, lane_id: str) -> int:
    """Final journal rows not yet acknowledged by the centre (read-only, off the loop)."""
    return await asyncio.to_thread(_backlog, journal, lane_id)


def _backlog(journal: Path, lane_id: str) -> int:
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True, timeout=1.0)
    try:
        row = db.execute(BACKLOG_SQL, (lane_id,)).fetchone()
    finally:
        db.close()
    return int(row[0]) if row else 0
