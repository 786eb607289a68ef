"""The uplink's two outbox streams (``tx`` and ``reconcile/result``): each a publishing
window (:mod:`laned.uplink.outbox`) with how to read its rows from the journal, mark them
acked and turn one into its message. ``laned.uplink.service`` drives them."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from laned.journal.records import JournalEntry, ReconcileRecord
from laned.journal.store import Journal
from laned.uplink.messages import AckStream, ReconcileResult, UplinkMessage, outbox_messages
from laned.uplink.outbox import OutboxWindow, reconcile_window, transaction_window

R = TypeVar("R")

# Results in flight at once: each is an MQTT message the broker queues for the centre, and
# Mosquitto's default queue per client is 1,000 messages (docs/centre.md).
RECONCILE_WINDOW = 256


class OutboxStream(Generic[R]):
    """One outbox stream: its window, how to read it from the journal, mark it and send its rows."""

    def __init__(self, name: AckStream, window: OutboxWindow[R], *,
                 scan: Callable[[Journal, int, int], list[R]],
                 mark: Callable[[Journal, int, int, dict[int, str], dt.datetime], int],
                 messages: Callable[[list[R]], Iterable[UplinkMessage]], seq: Callable[[R], int],
                 batch_max: int = 1) -> None:
        self.name = name
        self.window = window
        self.scan = scan
        self.mark = mark
        self._messages = messages
        self.seq = seq
        self.batch_max = batch_max  # rows per message at most (1: every row alone)
        self.wake = asyncio.Event()
        self.last_acked: int | None = None
        self.more = False  # the last scan filled the room and there is room again: scan on at once

    def messages(self, rows: list[R]) -> Iterable[UplinkMessage]:
        """The messages that carry ``rows``, in order (several rows per message where the stream
        batches), each encoded as it is taken (``outbox_messages``)."""
        return self._messages(rows)

    def reader(self, after: int, limit: int) -> Callable[[Any], list[R]]:
        """The journal operation reading this stream from ``after`` (at most ``limit`` rows)."""
        return lambda mj: self.scan(mj.journal, after, limit)


def _mark_tx(j: Journal, first: int, last: int, sent: dict[int, str], now: dt.datetime) -> int:
    return j.outbox_ack(first, last, now, sent=sent)


def _mark_reconcile(j: Journal, first: int, last: int, sent: dict[int, str], now: dt.datetime) -> int:
    # The ack names transaction seqs; ``sent`` maps each to the result's own seq that went
    # out, so a newer result of the same transaction is not marked by an older one's ack.
    return j.reconcile_ack(first, last, now, sent=sent)


def tx_stream(window: int, batch_max: int = 1) -> OutboxStream[JournalEntry]:
    """The journal's final rows: alone on ``tx``, or up to ``batch_max`` consecutive ones
    per message on ``tx/batch``, each row encoded straight from the journal
    (:func:`~laned.uplink.messages.outbox_messages`)."""
    def messages(rows: list[JournalEntry]) -> Iterable[UplinkMessage]:
        return outbox_messages(rows, batch_max)

    return OutboxStream(AckStream.TX, transaction_window(window), scan=lambda j, after, n: j.outbox_after(after, n),
                        mark=_mark_tx, messages=messages, seq=lambda e: e.seq, batch_max=batch_max)


def reconcile_stream(window: int) -> OutboxStream[ReconcileRecord]:
    """Reconciliation results, on ``reconcile/result``, one per message. On the wire a result
    carries its transaction's seq, and the centre acks by it (ReconcileResult.from_record);
    the journal scans results by their own seq. Its window is at most
    :data:`RECONCILE_WINDOW`: ``[uplink] window`` counts rows, and these rows are messages."""
    return OutboxStream(AckStream.RECONCILE, reconcile_window(min(window, RECONCILE_WINDOW)),
                        scan=lambda j, after, n: j.reconcile_after(after, n), mark=_mark_reconcile,
                        messages=lambda rows: (ReconcileResult.from_record(r) for r in rows),
                        seq=lambda r: r.tx_seq)
