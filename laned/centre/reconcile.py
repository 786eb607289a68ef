"""Answers on unknown outcomes (topic ``reconcile``): built here, decided elsewhere.

A real centre decides from the card issuer's clearing data: was this card debited by this
PSAM at this time? That data is not here. The reference centre answers either because an
operator said so (``laned centre answer``) or, for tests and the simulator only, by a fixed
policy (``--auto-reconcile``): ``not_charged`` for every unknown outcome, or ``charged``
with made-up evidence. Never run a real lane with ``charged``: its TAC is invented.
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import uuid

from laned.centre.errors import CentreError
from laned.uplink.messages import ReconcileAnswer, ReconcileOutcome, TransactionMsg


class AutoReconcile(enum.StrEnum):
    OFF = "off"  # an operator answers (laned centre answer)
    NOT_CHARGED = "not_charged"
    CHARGED = "charged"  # tests and the simulator only: the TAC is made up


def answer(tx: TransactionMsg, outcome: ReconcileOutcome, decided_at: dt.datetime, *, tac: bytes | None = None,
           balance_after: int | None = None, detail: str | None = None) -> ReconcileAnswer:
    """The answer on ``tx`` (which must be unknown); a ``charged`` answer needs its ``tac``."""
    if not tx.reconcile_required:
        raise CentreError(f"lane {tx.lane_id} seq {tx.seq} is {tx.state}, not unknown: there is nothing to reconcile")
    if outcome is ReconcileOutcome.CHARGED:
        if tac is None or len(tac) != 4:
            raise CentreError(f"a charged answer for lane {tx.lane_id} seq {tx.seq} needs the 4-byte TAC of the "
                              "cleared debit (8 hex digits) as evidence")
        return ReconcileAnswer(lane_id=tx.lane_id, answer_id=str(uuid.uuid4()), seq=tx.seq, tx_uuid=tx.tx_uuid,
                               outcome=outcome, decided_at=decided_at, tac=tac, amount=tx.amount,
                               balance_after=balance_after, trans_time=tx.purchase_time, detail=detail)
    return ReconcileAnswer(lane_id=tx.lane_id, answer_id=str(uuid.uuid4()), seq=tx.seq, tx_uuid=tx.tx_uuid,
                           outcome=outcome, decided_at=decided_at, detail=detail)


def auto_answer(tx: TransactionMsg, policy: AutoReconcile, decided_at: dt.datetime) -> ReconcileAnswer | None:
    """The policy's answer on an unknown ``tx``; None when the policy is off."""
    if policy is AutoReconcile.OFF or not tx.reconcile_required:
        return None
    if policy is AutoReconcile.NOT_CHARGED:
        return answer(tx, ReconcileOutcome.NOT_CHARGED, decided_at,
                      detail="auto-reconcile not_charged (test policy: no clearing data consulted)")
    # A stable made-up TAC, so that a repeated answer carries the same evidence.
    tac = hashlib.sha256(tx.tx_uuid.encode()).digest()[:4]
    balance = None if tx.balance_before is None or tx.amount is None else max(0, tx.balance_before - tx.amount)
    return answer(tx, ReconcileOutcome.CHARGED, decided_at, tac=tac, balance_after=balance,
                  detail="auto-reconcile charged (test policy: the TAC is made up, no clearing data consulted)")
