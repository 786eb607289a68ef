"""The journal as the lane executor wants it: ``laned.executor.JournalPort``.

:class:`MachineJournal` takes the lane machine's record dicts and B5 result dicts and writes
them through a :class:`~laned.journal.store.Journal`. It is synchronous, like the store:
in the daemon it is called on the :class:`~laned.journal.writer.JournalWriter` thread (the
writer hands it to every submitted operation).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from laned.journal.errors import JournalError
from laned.journal.records import B5_FIELDS, OBSERVED_FIELDS, B5Result, Observed, TransactionIntent, TxKind, TxState
from laned.journal.store import Journal
from laned.lane.machine import Paid
from laned.lane.outcomes import OUTCOMES, Reason

_RECORD_FIELDS = frozenset(OBSERVED_FIELDS)


def _observed_from(record: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k in _RECORD_FIELDS}


def _b5_result(result: Mapping[str, Any]) -> B5Result:
    """The lane machine's B5 result dict as the journal's record. A field it lacks is None;
    a B5 without its TAC is refused by the store (``Journal._complete``), naming the seq."""
    values: dict[str, Any] = {k: result.get(k) for k in B5_FIELDS}
    return B5Result(**values)


class MachineJournal:
    """The journal as the lane executor wants it (``laned.executor.JournalPort``).

    Takes the lane machine's record dicts (``LaneMachine._record``) and its B5 result
    dicts, and writes them through a :class:`Journal`; display messages come from the
    outcome table.
    """

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def _check_lane(self, record: Mapping[str, Any]) -> None:
        lane = record.get("lane_id")
        if lane is not None and lane != self.journal.lane_id:
            raise JournalError(f"a record of lane {lane!r} offered to the journal of lane {self.journal.lane_id!r}")

    def record_intent(self, record: dict[str, Any], now: dt.datetime) -> int:
        self._check_lane(record)
        kind = TxKind.ENTRY_WRITE if record.get("direction") == "entry" else TxKind.EXIT_CHARGE
        intent = TransactionIntent(**_observed_from(record), kind=kind, amount=record.get("fee") or 0,
                                   purchase_time=record["purchase_time"], tx_id=record.get("tx_id"))
        return self.journal.record_intent(intent, now).seq

    def complete(self, seq: int, result: dict[str, Any], now: dt.datetime, *, entry: bool) -> None:
        kind = self.journal.get(seq).kind
        if (kind == TxKind.ENTRY_WRITE) != entry:
            raise JournalError(f"seq {seq} is a {kind}, but the lane completed it as "
                               f"{'an entry write' if entry else 'a charge'}")
        b5 = _b5_result(result)
        self.journal.complete_charge(seq, b5, now, message=_message("entry_written" if entry else "charged"))

    def resolve(self, seq: int, result: dict[str, Any], now: dt.datetime) -> None:
        """A re-fetched TAC (C8) settles an unknown charge as charged."""
        b5 = _b5_result(result)
        self.journal.resolve_unknown(seq, b5, now, message=_message("charged"))

    def mark_unknown(self, seq: int, reason: str, now: dt.datetime) -> None:
        self.journal.mark_unknown(seq, reason, now, message=_message("outcome_unknown"))

    def not_charged(self, seq: int, reason: str, now: dt.datetime) -> None:
        """The RSU's B5 error says the card was never asked to debit: refused, reconciled.

        Intent → unknown → refused (reconciled) in one transaction: one commit, and either
        both steps are on disk or neither.
        """
        with self.journal.batch(f"recording seq {seq} as not charged"):
            self.journal.mark_unknown(seq, reason, now, message=_message("charge_failed"))
            self.journal.resolve_not_charged(seq, reason, now)

    def record_refusal(self, record: dict[str, Any], now: dt.datetime) -> None:
        self._check_lane(record)
        reason = str(record["reason"])
        self.journal.record_refusal(Observed(**_observed_from(record)), reason, now, message=_message(reason),
                                    tx_id=record.get("tx_id"))

    def record_event(self, kind: str, record: dict[str, Any], now: dt.datetime) -> None:
        self._check_lane(record)
        reason = str(record.get("reason") or kind)
        self.journal.record_event(kind, now, facts=Observed(**_observed_from(record)), reason=reason,
                                  message=_message(reason), tx_id=record.get("tx_id"))

    def recent_paid(self, window_s: float, wall: dt.datetime, monotonic: float) -> list[Paid]:
        """The machine's re-detection list after a restart (``LaneMachine(recent=…)``).

        Journal rows carry wall-clock times, the machine counts in monotonic seconds: each
        row's age on the wall clock is carried over to the monotonic clock.
        """
        since = wall - dt.timedelta(seconds=window_s)
        now_unix = wall.timestamp()
        return [Paid(e.obu_id or b"", e.card_key, monotonic - max(0.0, now_unix - e.created_unix), e.seq,
                     settled=e.state in (TxState.CHARGED, TxState.ENTRY_WRITTEN), plate=e.plate,
                     purchase_time=e.purchase_time)
                for e in self.journal.paid_since(since)]


def _message(reason: str) -> str | None:
    try:
        outcome = OUTCOMES[Reason(reason)]
    except ValueError:
        return None
    return f"{outcome.line1} {outcome.line2}"
