"""The reference toll centre shipped with laned (``laned centre``).

It is the other end of the uplink contract (``laned/uplink/asyncapi.yaml``): subscribed to
every lane, it stores transactions in SQLite (unique on ``(lane_id, seq)``, with a gap
detector), acknowledges them by range, answers unknown outcomes, signs and sends commands,
publishes status lists and fee tables. Tests and the simulator run it in-process; a field
engineer runs it on a laptop to commission a lane. It is not a clearing system.

* :mod:`~laned.centre.ledger` — the SQLite ledger (sans-IO);
* :mod:`~laned.centre.seqranges` — seq ranges and gaps;
* :mod:`~laned.centre.acks` — batching and range acks;
* :mod:`~laned.centre.reconcile` — answers on unknown outcomes, the test policies;
* :mod:`~laned.centre.commanding`, :mod:`~laned.centre.keys` — signed commands, the signing key;
* :mod:`~laned.centre.lists` — signed list and fee table manifests and their chunks;
* :mod:`~laned.centre.broker` — the MQTT client and publishing;
* :mod:`~laned.centre.commissioning` — the certificates and Mosquitto configuration for
  commissioning lanes from a laptop;
* :mod:`~laned.centre.service` — :class:`Centre`, the service itself.
"""

from __future__ import annotations

from laned.centre.broker import BrokerSettings
from laned.centre.errors import CentreError, CentreStorageError, CommandTimeout
from laned.centre.ledger import LaneCounts, Ledger, StoreOutcome
from laned.centre.reconcile import AutoReconcile
from laned.centre.seqranges import SeqRange, SeqSet
from laned.centre.service import Centre, CentreSettings

__all__ = ["AutoReconcile", "BrokerSettings", "Centre", "CentreError", "CentreSettings", "CentreStorageError",
           "CommandTimeout", "LaneCounts", "Ledger", "SeqRange", "SeqSet", "StoreOutcome"]
