"""Re-detection and recovery: an OBU or card seen again after paying, and charges whose
outcome is unknown.

:class:`Redetection` is a base class of :class:`~laned.lane.machine.LaneMachine`, kept
apart so the second rule reads in one place: no charged transaction is lost or charged
twice. A vehicle that completed a charge within the re-detection window is let through on
its record (:attr:`LaneMachine.paid`), never charged again; one whose charge is being
journalled waits for that record. After a B5 error or a lost B5 the TAC is re-fetched (C8)
where the profile can, otherwise the outcome is recorded as unknown; an OBU seen again with
its charge unknown (the daemon crashed, or the link dropped, between C6 and B5) is asked
for its last purchase once, and is otherwise neither charged again nor waved through.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from laned.lane.dialect import Dialect
from laned.lane.events import Action, JournalEvent, JournalUnknown, RaiseAlarm, Send
from laned.lane.outcomes import Reason
from laned.lane.paid import Paid, PaidRecords
from laned.lane.passages import Passages, Unpaid
from laned.lane.settings import LaneSettings
from laned.lane.signals import Light
from laned.lane.transaction import Stage, Tx, plate_of, seq_of
from laned.masking import mask_card, mask_plate


class Redetection:
    # LaneMachine.__init__ sets these; declared so this part type-checks on its own.
    s: LaneSettings
    d: Dialect
    tx: Tx | None
    paid: PaidRecords
    passages: Passages
    counters: Counter[str]
    _recording: dict[str, Tx]

    if TYPE_CHECKING:
        # What the outcomes here go through, from machine.py and arm.py (LaneMachine has them).
        @property
        def credits(self) -> int: ...
        def _record(self, tx: Tx, state: str) -> dict[str, Any]: ...
        def _record_b5(self, tx: Tx, res: Any, rsctl: int | None, out: list[Action]) -> None: ...
        def _unpaid(self, u: Unpaid, out: list[Action]) -> None: ...
        def _let_through(self, tx: Tx, reason: Reason, now: float, out: list[Action], *, fee: int | None = None,
                         balance: int | None = None, key: bytes | None = None) -> None: ...
        def _show(self, reason: Reason, tx: Tx, out: list[Action], *, fee: int | None = None,
                  balance: int | None = None) -> None: ...
        def _set_light(self, light: Light, out: list[Action]) -> None: ...

    # -- seen again --------------------------------------------------------------------------
    def _pass_on_record(self, tx: Tx, rsctl: int | None, now: float, out: list[Action]) -> None:
        if not self._paid_for_sure(tx) and self._recover_by_refetch(tx, rsctl, now, out):
            return
        out.append(Send(self.d.stop(tx.obu.obu_id), rsctl))
        self.tx = None
        if not self._paid_for_sure(tx):
            self.counters["seen_again_unknown"] += 1
            self._still_unknown(tx, "seen again; its charge is unknown", out)
            return
        paid = self._paid_match(tx)
        key = paid.obu_id if paid is not None else tx.obu.obu_id
        again, unpaid = self.passages.seen_again(key, now)
        if unpaid is not None:
            self._unpaid(unpaid, out)
        # The first report after paying is kept (the driver's "was I charged twice?" is
        # answered from the journal); an RSU re-reporting a waiting OBU every half second
        # adds nothing after that, unless the vehicle is let out on it.
        if again or (paid is not None and not paid.reported_again):
            out.append(JournalEvent(str(Reason.PAID_ON_RECORD), self._record(tx, Reason.PAID_ON_RECORD)))
        if paid is not None:
            paid.reported_again = True
        if again:
            # Its payment was used (by a vehicle in front of it) or expired, and it is still
            # before the arm: a paid vehicle is let out, never sent to the manual lane.
            self._let_through(tx, Reason.PAID_ON_RECORD, now, out, key=key)
        else:
            self.counters[Reason.PAID_ON_RECORD] += 1  # its payment still waits for it

    def _being_recorded(self, obu_id: bytes, card_key: str | None, plate: str | None) -> bool:
        """Paid, and the B5 result is being journalled: its confirmation lets it through."""
        return any(self._paid_record(tx).same_vehicle(obu_id, card_key, plate) for tx in self._recording.values())

    def _paid_recently(self, obu_id: bytes, card_key: str | None, now: float, plate: str | None) -> bool:
        """The same vehicle paid within the window (its OBU, or its card and its plate)."""
        self.paid.expire(now, self.s.redetect_window)
        return any(p.same_vehicle(obu_id, card_key, plate) for p in self.paid.find(obu_id, card_key))

    def _card_seen_elsewhere(self, tx: Tx, card_key: str | None, plate: str | None, out: list[Action]) -> None:
        """A card that paid in another vehicle within the window: this is a new
        transaction (one payment lets one vehicle out), and the operator should know."""
        others = [p for p in self.paid.find(tx.obu.obu_id, card_key) if p.card_key == card_key]
        if not others:
            return
        first = others[0]
        self.counters["card_shared"] += 1
        out.append(RaiseAlarm("card_shared", f"card {card_key and mask_card(card_key)} paid as seq {first.seq} in OBU "
                              f"{first.obu_id.hex()} (plate {mask_plate(first.plate or '')}); now in OBU "
                              f"{tx.obu.obu_id.hex()} (plate {mask_plate(plate or '')}): charged as a new vehicle"))

    def _paid_match(self, tx: Tx) -> Paid | None:
        """This vehicle's settled payment: by its OBU, or by its card and plate (a card
        moved to another OBU of the same vehicle)."""
        key = tx.card_file.card_key if tx.card_file else None
        plate = plate_of(tx)
        for p in self.paid.find(tx.obu.obu_id, key):
            if p.settled and p.same_vehicle(tx.obu.obu_id, key, plate):
                return p
        return None

    def _paid_for_sure(self, tx: Tx) -> bool:
        key = tx.card_file.card_key if tx.card_file else None
        plate = plate_of(tx)
        return any(p.settled and p.same_vehicle(tx.obu.obu_id, key, plate) for p in self.paid.find(tx.obu.obu_id, key))

    def _paid_record(self, tx: Tx, *, settled: bool = True) -> Paid:
        return Paid(tx.obu.obu_id, tx.card_file.card_key if tx.card_file else None, tx.started, tx.seq,
                    settled=settled, plate=plate_of(tx))

    # -- charges whose outcome is unknown ----------------------------------------------------
    def _refetch(self, tx: Tx, now: float, out: list[Action]) -> bool:
        if tx.refetches >= self.s.refetch_attempts:
            return False
        c8 = self.d.refetch_tac(tx.obu.obu_id)
        if c8 is None:
            return False
        tx.refetches += 1
        tx.stage = Stage.REFETCHING
        tx.deadline = now + self.s.b5_timeout
        self.counters["tac_refetch"] += 1
        out.append(Send(c8))
        return True

    def _unknown(self, tx: Tx, why: str, now: float, out: list[Action]) -> None:
        out.append(JournalUnknown(tx.tx_id, seq_of(tx), why))
        out.append(RaiseAlarm(str(Reason.OUTCOME_UNKNOWN), f"seq {tx.seq} OBU {tx.obu.obu_id.hex()}: {why}"))
        self.counters[Reason.OUTCOME_UNKNOWN] += 1
        # Recognised as possibly paid: a second C6 for it inside the window could charge twice.
        self.paid.add(replace(self._paid_record(tx, settled=False), at=now))
        self.tx = None
        self._show(Reason.OUTCOME_UNKNOWN, tx, out)
        if self.credits == 0:
            self._set_light(Light.RED, out)

    def _recover_by_refetch(self, tx: Tx, rsctl: int | None, now: float, out: list[Action]) -> bool:
        """An OBU whose charge is unknown (the daemon crashed, or the link dropped, between
        its C6 and B5) is back: where the profile has C8, ask the OBU for its last
        purchase before deciding — once per unknown charge."""
        unknown = [p for p in self.paid.find(tx.obu.obu_id, None)
                   if not p.settled and not p.refetch_tried and p.seq is not None and p.obu_id == tx.obu.obu_id]
        c8 = self.d.refetch_tac(tx.obu.obu_id) if unknown else None
        if c8 is None:
            return False
        p = unknown[-1]
        p.refetch_tried = True
        tx.seq, tx.purchase_time, tx.recovering = p.seq, p.purchase_time, True
        tx.stage = Stage.REFETCHING
        tx.deadline = now + self.s.b5_timeout
        self.tx = tx
        self.counters["recovery_refetch"] += 1
        out.append(Send(c8, rsctl))
        return True

    def _recovered(self, tx: Tx, res: Any, seq: int, rsctl: int | None, out: list[Action]) -> None:
        """The B5 answering a recovery C8: the unknown charge went through only if the
        OBU's last purchase is the one this lane's C6 asked for (its purchase time)."""
        if res.error_code == 0 and (tx.purchase_time is None or res.trans_time == tx.purchase_time):
            self._record_b5(tx, res, rsctl, out)
            return
        why = (f"C8 answered with B5 error {res.error_code:02x}" if res.error_code else
               f"the OBU's last purchase ({res.trans_time}) is not this lane's ({tx.purchase_time})")
        self.counters["recovery_refetch_failed"] += 1
        out.append(Send(self.d.stop(res.obu_id), rsctl))
        self._still_unknown(tx, why, out)

    def _still_unknown(self, tx: Tx, why: str, out: list[Action]) -> None:
        """Seen again with its charge unknown: neither charged again nor waved through."""
        record = self._record(tx, Reason.OUTCOME_UNKNOWN)
        record["detail"] = why
        out.append(JournalEvent(str(Reason.OUTCOME_UNKNOWN), record))
        self.tx = None
        self._show(Reason.OUTCOME_UNKNOWN, tx, out)
        if self.credits == 0:
            self._set_light(Light.RED, out)
