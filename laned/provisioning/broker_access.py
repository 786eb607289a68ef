"""Who may do what on the broker: the TLS listener every laned broker runs and its ACLs,
written from the uplink contract so that the broker's rules and the contract's channels
cannot drift apart.

Every broker — the simulator's, the tests', a commissioned one — takes only clients with a
certificate from its CA, known by the certificate's CN (``use_identity_as_username``): the
lane id, or :data:`CENTRE`. Each lane may write only its lane→centre topics and read only
its centre→lane topics, under its own id; the centre reads and writes every lane's.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from laned.provisioning.certificates import CENTRE
from laned.uplink.contract import Direction, contract

TOPIC_ROOT = "etc/v1"
_LANE_PREFIX = TOPIC_ROOT + "/{lane_id}/"


class TopicLayoutError(RuntimeError):
    """A contract channel outside ``etc/v1/{lane_id}/``: no ACL could confine it to a lane."""


def lane_topics(direction: Direction) -> tuple[str, ...]:
    """The contract's channels in one direction, as suffixes below ``etc/v1/<lane_id>/``."""
    found = []
    for channel in contract().channels:
        delivery = contract().delivery(channel)
        if delivery.direction is direction:
            if not delivery.address.startswith(_LANE_PREFIX):
                raise TopicLayoutError(f"channel {channel} ({delivery.address}) is not below {_LANE_PREFIX}: "
                                       "the ACL cannot confine it to its lane")
            found.append(delivery.address.removeprefix(_LANE_PREFIX))
    return tuple(found)


def tls_listener(port: int, host: str, cafile: Path, certfile: Path, keyfile: Path) -> list[str]:
    """A listener that takes only clients with a certificate from ``cafile``, each known by
    its certificate's CN (the lane id, or the centre), which the ACL names."""
    return [
        f"listener {port} {host}",
        f"cafile {cafile}",
        f"certfile {certfile}",
        f"keyfile {keyfile}",
        "require_certificate true",
        "use_identity_as_username true",
        "tls_version tlsv1.2",  # the minimum (Mosquitto >= 2.0); 1.3 is offered too
    ]


def acl_text(centre: str = CENTRE) -> str:
    """An ACL for any lane: patterns, ``%u`` being the certificate's CN, the lane id (the
    simulator's and the tests' brokers, where the lanes are not known in advance)."""
    return "\n".join([
        "# Written by laned (laned/provisioning/broker_access.py). %u is the client certificate's CN",
        "# (use_identity_as_username), i.e. the lane id. Anything not granted is denied.",
        "",
        "# lane -> centre: the lane may publish these, under its own id only",
        *(f"pattern write {TOPIC_ROOT}/%u/{suffix}" for suffix in lane_topics(Direction.SEND)),
        "",
        "# centre -> lane: the lane may subscribe to (and receive) these, under its own id only",
        *(f"pattern read {TOPIC_ROOT}/%u/{suffix}" for suffix in lane_topics(Direction.RECEIVE)),
        "",
        "# the centre reads and writes every lane's topics",
        f"user {centre}",
        f"topic readwrite {TOPIC_ROOT}/#",
        "",
    ])


def lane_acl_text(lanes: Sequence[str], centre: str = CENTRE) -> str:
    """An ACL naming its lanes (a commissioned broker): each lane by name, on its own topics
    per direction; the centre on every lane's topics. A certificate of the CA made out to
    anything else may connect but neither publish nor receive."""
    lines = ["# Written by laned centre broker-config (laned/provisioning/broker_access.py) from the",
             "# uplink contract. Users are client certificate CNs (use_identity_as_username). Anything",
             "# not granted is denied.", ""]
    for lane_id in lanes:
        prefix = f"{TOPIC_ROOT}/{lane_id}/"
        lines += [f"# lane {lane_id}: publishes (lane -> centre), then receives (centre -> lane)",
                  f"user {lane_id}",
                  *(f"topic write {prefix}{suffix}" for suffix in lane_topics(Direction.SEND)),
                  *(f"topic read {prefix}{suffix}" for suffix in lane_topics(Direction.RECEIVE)),
                  ""]
    lines += ["# the centre (laned centre) reads and writes every lane's topics",
              f"user {centre}", f"topic readwrite {TOPIC_ROOT}/#", ""]
    return "\n".join(lines)
