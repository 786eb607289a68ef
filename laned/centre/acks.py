"""Application-level acknowledgements (``tx/ack``): which seqs, in which messages, and when.

The centre stores what arrives in batches and acknowledges a batch only after its commit
(an ack lets the lane forget the row). :class:`Batch` collects received messages until
they hold :data:`ACK_BATCH_MAX` rows (a ``tx/batch`` message holds many) or
:data:`ACK_DELAY_S` after the first; :func:`acks` turns the committed seqs of one lane and
stream into as few :class:`TxAck` as there are contiguous runs. A lane draining a
100,000-row backlog in order thus gets one ack per 500 rows instead of one per row. Sans-IO: ``now`` is passed in.
"""

from __future__ import annotations

import datetime as dt
from bisect import bisect_left, bisect_right
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from laned.centre.seqranges import coalesce
from laned.uplink.messages import AckStream, TxAck

# The contract's bound on TxAck.unknown_seqs (maxItems).
UNKNOWN_SEQS_MAX = 1024
# 50 ms: a lane waits for its ack no longer than a person notices, and a burst of rows
# (a backlog after an outage) shares one commit and one ack per run.
ACK_DELAY_S = 0.05
# 500 rows: one commit of that many is ~tens of ms on an SSD; more would delay the first ack.
ACK_BATCH_MAX = 500

M = TypeVar("M")


def acks(lane_id: str, stream: AckStream, seqs: Iterable[int], acked_at: dt.datetime | None = None, *,
         unknown: Collection[int] = ()) -> list[TxAck]:
    """One TxAck per contiguous run of ``seqs`` (any order, repeats allowed), ascending.

    ``unknown``: those of ``seqs`` the ledger holds as unknown outcomes, named in the ack
    of their run (``unknown_seqs``) so that a lane tells an ack of its unknown copy from
    one of the settled copy; a run naming more than :data:`UNKNOWN_SEQS_MAX` is cut."""
    held = sorted(set(unknown))
    out: list[TxAck] = []
    for run in coalesce(seqs):
        inside = held[bisect_left(held, run.first):bisect_right(held, run.last)]
        first = run.first
        for i in range(0, len(inside), UNKNOWN_SEQS_MAX):
            named = inside[i:i + UNKNOWN_SEQS_MAX]
            last = run.last if i + UNKNOWN_SEQS_MAX >= len(inside) else inside[i + UNKNOWN_SEQS_MAX] - 1
            out.append(TxAck(lane_id=lane_id, stream=stream, first_seq=first, last_seq=last, acked_at=acked_at,
                             unknown_seqs=tuple(named)))
            first = last + 1
        if not inside:
            out.append(TxAck(lane_id=lane_id, stream=stream, first_seq=run.first, last_seq=run.last,
                             acked_at=acked_at))
    return out


@dataclass
class Batch(Generic[M]):
    """Messages waiting for one commit; :meth:`due` says when to commit them."""

    max_items: int = ACK_BATCH_MAX
    max_delay_s: float = ACK_DELAY_S
    items: list[M] = field(default_factory=list)
    opened_at: float | None = None  # when the first item came (monotonic seconds)
    rows: int = 0  # what the items weigh: a message of several transactions counts them all

    def add(self, item: M, now: float, rows: int = 1) -> None:
        if not self.items:
            self.opened_at = now
        self.items.append(item)
        self.rows += rows

    def deadline(self) -> float | None:
        """When the batch must be committed at the latest; None while empty."""
        return None if self.opened_at is None else self.opened_at + self.max_delay_s

    def due(self, now: float) -> bool:
        deadline = self.deadline()
        return deadline is not None and (self.rows >= self.max_items or now >= deadline)

    def take(self) -> list[M]:
        items, self.items, self.opened_at, self.rows = self.items, [], None, 0
        return items
