"""One ETC transaction (B2 to B5) and the rules that admit it, sans-IO.

:class:`Tx` is what the lane knows of the OBU, vehicle and card in front of the antenna;
the functions decide the refusals (:func:`check_obu` at B2, :func:`check_card` and
:func:`price` at B4) and build what the journal and the C6 carry.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections import Counter
from dataclasses import dataclass
from typing import Any

from laned.lane.dialect import CardView, ObuView, VehicleView
from laned.lane.outcomes import Reason
from laned.lane.settings import Direction, FeeLookup, LaneSettings, MissingEntryPolicy, StatusLookup
from laned.protocol import ObuFlag, ProtocolError
from laned.protocol.profiles import Profile
from laned.protocol.records import CardIssueFile, CardType, StationRecord


class Stage(enum.StrEnum):
    OBU = "obu"  # B2 accepted, C1 sent
    VEHICLE = "vehicle"  # B3 accepted, C1 sent
    INTENT = "intent"  # B4 accepted, intent being written
    CHARGING = "charging"  # C6 sent, awaiting B5
    REFETCHING = "refetching"  # C8 sent, awaiting B5
    RECORDING = "recording"  # B5 success being journalled


@dataclass
class Tx:
    tx_id: str
    obu: ObuView
    started: float
    stage: Stage = Stage.OBU
    vehicle: VehicleView | None = None
    card: CardView | None = None
    card_file: CardIssueFile | None = None
    entry: StationRecord | None = None
    fee: int = 0
    seq: int | None = None
    deadline: float | None = None
    refetches: int = 0
    resend_due: float | None = None  # when to ask the RSU to resend (C2 stop type 2)
    resends: int = 0
    b4_rsctl: int | None = None
    purchase_time: dt.datetime | None = None
    balance_after: int | None = None
    recovering: bool = False  # a C8 asks the OBU about an earlier charge whose outcome is unknown
    result: dict[str, Any] | None = None  # the B5 success the journal is to keep
    # The fee table and status list in use when the OBU was first seen (B2): the whole
    # transaction is checked, priced and journalled with these, even if a download from
    # the centre installs a new version meanwhile (laned/uplink/list_service.py).
    lists: tuple[FeeLookup | None, StatusLookup] | None = None


class LaneStateError(RuntimeError):
    """The machine found its own state impossible (a bug, never bad input): laned must
    stop and restart rather than guess, so the journal's crash recovery decides."""


def seq_of(tx: Tx) -> int:
    """The journal seq of a transaction past its intent."""
    if tx.seq is None:
        raise LaneStateError(f"transaction {tx.tx_id} in stage {tx.stage} has no journal seq")
    return tx.seq


def plate_of(tx: Tx) -> str | None:
    """The vehicle's plate as the OBU reported it (B3), else as the card holds it."""
    if tx.vehicle is not None and tx.vehicle.plate:
        return tx.vehicle.plate
    return tx.card_file.plate if tx.card_file is not None and tx.card_file.plate else None


def check_obu(obu: ObuView, today: dt.date, s: LaneSettings, profile: Profile, status: StatusLookup) -> Reason | None:
    """Why an OBU (B2) is refused, or None: flags, contract dates, issuer, status list."""
    flags = profile.obu_flags(obu.obu_status or b"\x00\x00")
    if ObuFlag.CARD_ABSENT in flags:
        return Reason.NO_CARD
    if ObuFlag.OBU_REMOVED in flags:
        return Reason.OBU_TAMPERED
    if ObuFlag.OBU_LOCKED in flags:
        return Reason.OBU_LOCKED
    if ObuFlag.CARD_ERROR in flags:
        return Reason.CARD_ERROR
    if obu.contract_expiry is not None and obu.contract_expiry < today:
        return Reason.OBU_EXPIRED
    if obu.contract_start is not None and obu.contract_start > today:
        return Reason.OBU_NOT_YET_VALID
    if s.accepted_issuers and (obu.issuer or b"") not in s.accepted_issuers:
        return Reason.ISSUER_NOT_ACCEPTED
    if status.is_listed_obu(obu.obu_id) is not None or (
            obu.serial_number is not None and status.is_listed_obu(obu.serial_number) is not None):
        return Reason.OBU_LISTED
    return None


def check_card(tx: Tx, cf: CardIssueFile, today: dt.date, s: LaneSettings, status: StatusLookup) -> Reason | None:
    """Why a card (B4) is refused, or None: dates, status list, plate and class, card type."""
    if cf.expiry_date is not None and cf.expiry_date < today:
        return Reason.CARD_EXPIRED
    if cf.start_date is not None and cf.start_date > today:
        return Reason.CARD_NOT_YET_VALID
    if status.is_listed_card(cf.network, cf.card_number) is not None:
        return Reason.CARD_LISTED
    veh = tx.vehicle
    if veh is not None and veh.plate and cf.plate and veh.plate != cf.plate:
        return Reason.PLATE_MISMATCH
    if veh is not None and cf.vehicle_class and veh.vehicle_class != cf.vehicle_class:
        return Reason.CLASS_MISMATCH
    if cf.card_type == CardType.CREDIT and not s.allow_credit_cards:
        return Reason.CREDIT_CARD_REFUSED
    return None


def price(tx: Tx, card: CardView, s: LaneSettings, fees: FeeLookup | None, counters: Counter[str]) -> Reason | None:
    """Set ``tx.entry`` and ``tx.fee`` from the card's entry record and the fee table;
    why the vehicle cannot pay it, or None."""
    vclass = tx.vehicle.vehicle_class if tx.vehicle and tx.vehicle.vehicle_class else 0
    fee: int | None = None
    try:
        tx.entry = StationRecord.decode(card.last_station) if card.last_station is not None else None
    except ProtocolError:
        tx.entry = None
    if tx.entry is not None and not tx.entry.is_empty and fees is not None:
        fee = fees.fee(tx.entry.station_key, vclass)
    if fee is None:
        if s.missing_entry_policy is MissingEntryPolicy.REFUSE or fees is None:
            return Reason.NO_ENTRY_RECORD if tx.entry is None or tx.entry.is_empty else Reason.NO_FEE
        fee = fees.max_fee(vclass)
        if fee is None:
            return Reason.NO_FEE
        counters["charged_max_fee"] += 1
    tx.fee = fee
    cf = tx.card_file
    # Stored-value cards must cover the fee; a balance equal to the fee is enough.
    if cf is not None and cf.card_type != CardType.CREDIT and (card.rest_money or 0) < fee:
        return Reason.INSUFFICIENT_BALANCE
    return None


def station_record(tx: Tx, s: LaneSettings) -> bytes:
    """The 40-byte station record C6 writes into card file 0019 (see records.StationRecord)."""
    veh = tx.vehicle
    plate = (veh.plate or "") if veh else ""
    ts = int(tx.purchase_time.replace(tzinfo=dt.UTC).timestamp()) if tx.purchase_time else 0
    rec = (bytes.fromhex(s.network) + s.station + bytes((s.lane_number,)) + ts.to_bytes(4, "big")
           + bytes(((veh.vehicle_class or 0) if veh else 0, 1 if s.direction is Direction.ENTRY else 2))
           + bytes(12) + plate.encode("gbk", "replace")[:12].ljust(12, b"\x00") + bytes(5))
    return rec


def record(tx: Tx, state: str, s: LaneSettings, fees: FeeLookup | None, status: StatusLookup) -> dict[str, Any]:
    """The journal's record of a transaction (``LaneMachine`` emits it with every journal action)."""
    cf, veh, obu = tx.card_file, tx.vehicle, tx.obu
    return {
        "tx_id": tx.tx_id, "lane_id": s.lane_id, "state": str(state), "direction": str(s.direction),
        "obu_id": obu.obu_id, "issuer": obu.issuer, "obu_serial": obu.serial_number,
        "contract_start": obu.contract_start, "contract_expiry": obu.contract_expiry,
        "obu_status": obu.obu_status,
        "plate": veh.plate if veh else None, "plate_colour": veh.plate_colour if veh else None,
        "vehicle_class": veh.vehicle_class if veh else None,
        "card_network": cf.network if cf else None, "card_number": cf.card_number if cf else None,
        "card_type": cf.card_type if cf else None,
        "balance_before": tx.card.rest_money if tx.card else None,
        "entry_station": tx.entry.station_key if tx.entry and not tx.entry.is_empty else None,
        "fee": tx.fee if s.direction is Direction.EXIT else 0,
        "purchase_time": tx.purchase_time,
        "fee_table_version": getattr(fees, "version", None),
        "status_list_version": getattr(status, "version", None),
        "reason": str(state),
    }


def b5_result(res: Any) -> dict[str, Any]:
    """What the journal keeps of a successful B5."""
    return {"tac": res.tac, "psam_no": res.psam_no, "psam_trans_serial": res.psam_trans_serial,
            "icc_pay_serial": res.icc_pay_serial, "trans_type": res.trans_type,
            "balance_after": res.balance_after, "trans_time": res.trans_time}
