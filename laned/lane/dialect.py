"""The lane's view of an RSU profile: uniform readings of B2–B5, and the frames to answer.

The lane logic reasons about "the OBU's expiry" or "the card's balance", not about which
profile calls the field ``date_of_expire`` or ``expire_date``. This module maps each
classic profile onto that view and builds C1/C2/C6/C8 for it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from laned.protocol import Message, Profile
from laned.protocol.profiles import national, network2019
from laned.protocol.profiles.common import STOP_SEARCH_AGAIN, Stop

HEARTBEAT_IDS = (b"\x00\x00\x00\x00", b"\xff\xff\xff\xff")
HEARTBEAT_CODE = 0x80


@dataclass(frozen=True, slots=True)
class ObuView:
    obu_id: bytes
    error_code: int
    issuer: bytes | None
    serial_number: bytes | None
    contract_start: dt.date | None
    contract_expiry: dt.date | None
    obu_status: bytes | None


@dataclass(frozen=True, slots=True)
class VehicleView:
    obu_id: bytes
    error_code: int
    plate: str | None
    plate_colour: int | None
    vehicle_class: int | None


@dataclass(frozen=True, slots=True)
class CardView:
    obu_id: bytes
    error_code: int
    rest_money: int | None
    issuer_info: bytes | None
    last_station: bytes | None


@dataclass(frozen=True, slots=True)
class ResultView:
    obu_id: bytes
    error_code: int
    tac: bytes | None
    psam_no: bytes | None
    psam_trans_serial: int | None
    icc_pay_serial: int | None
    trans_type: int | None
    balance_after: int | None
    trans_time: dt.datetime | None


class Dialect:
    """Reads and builds the frames of one classic profile."""

    def __init__(self, profile: Profile, *, obu_div_factor: bytes = bytes(8), card_div_factor: bytes = bytes(8)):
        if profile.name not in ("national", "network2019"):
            raise ValueError(f"the lane needs a profile with confirmed layouts (national, network2019), "
                             f"not {profile.name!r}")
        self.profile = profile
        self.n2019 = profile.name == "network2019"
        self.obu_div_factor = obu_div_factor
        self.card_div_factor = card_div_factor

    @property
    def can_refetch_tac(self) -> bool:
        return self.n2019

    # -- reading -------------------------------------------------------------------------
    def kind(self, msg: Message) -> str | None:
        return {0xB0: "B0", 0xB2: "B2", 0xB3: "B3", 0xB4: "B4", 0xB5: "B5"}.get(msg.frame_type)

    @staticmethod
    def is_heartbeat(msg: Message) -> bool:
        return msg.frame_type == 0xB2 and (msg.error_code == HEARTBEAT_CODE or msg.obu_id in HEARTBEAT_IDS)  # type: ignore[attr-defined]

    def obu(self, m: Message) -> ObuView:
        return ObuView(m.obu_id, m.error_code, getattr(m, "issuer", None) if self.n2019 else m.issuer_identifier,  # type: ignore[attr-defined]
                       m.serial_number, m.contract_start, m.contract_expiry, m.obu_status)  # type: ignore[attr-defined]

    def vehicle(self, m: Message) -> VehicleView:
        return VehicleView(m.obu_id, m.error_code, m.plate_number, m.plate_colour, m.vehicle_class)  # type: ignore[attr-defined]

    def card(self, m: Message) -> CardView:
        return CardView(m.obu_id, m.error_code, m.card_rest_money, m.issuer_info, m.last_station)  # type: ignore[attr-defined]

    def result(self, m: Message) -> ResultView:
        return ResultView(m.obu_id, m.error_code, m.tac, getattr(m, "psam_no", None), m.psam_trans_serial,  # type: ignore[attr-defined]
                          m.icc_pay_serial, m.trans_type, m.card_balance, m.trans_time)  # type: ignore[attr-defined]

    # -- building ------------------------------------------------------------------------
    def continue_(self, obu_id: bytes) -> Message:
        if self.n2019:
            return network2019.Continue(obu_id=obu_id)
        return national.Continue(obu_id=obu_id, obu_div_factor=self.obu_div_factor)

    def stop(self, obu_id: bytes, stop_type: int = STOP_SEARCH_AGAIN) -> Message:
        return Stop(obu_id=obu_id, stop_type=stop_type)

    def charge(self, obu_id: bytes, amount: int, purchase_time: dt.datetime, station: bytes, *,
               entry_lane: bool) -> Message:
        if self.n2019:
            # TradeMode 0 charges (exit); an entry lane with no toll writes the record only.
            mode = 1 if entry_lane and amount == 0 else 0
            return network2019.Charge(obu_id=obu_id, trade_mode=mode, consume_money=amount, station=station,
                                      purchase_time=purchase_time, ef04_offset=0, ef04_length=0, ef04_info=b"")
        return national.Charge(obu_id=obu_id, card_div_factor=self.card_div_factor, reserved=bytes(4),
                               consume_money=amount, purchase_time=purchase_time, station=station)

    def init(self, wall: dt.datetime, *, exit_lane: bool, tx_power: int = 10, channel: int = 0) -> Message:
        """C0: clock, lane mode (3 entry, 4 exit, as (1) numbers them) and radio settings."""
        unix = int(wall.replace(tzinfo=dt.timezone.utc).timestamp()) if wall.tzinfo is None else int(wall.timestamp())
        when = wall.replace(microsecond=0, tzinfo=None)
        mode = 4 if exit_lane else 3
        if self.n2019:
            return network2019.Init(unix_time=unix, date_time=when, lane_mode=mode, bst_interval=10,
                                    tx_power=tx_power, pll_channel_id=channel, ef04_opt=0, ef04_offset=0,
                                    ef04_length=0)
        return national.Init(unix_time=unix, date_time=when, lane_mode=mode, wait_time=2, tx_power=tx_power,
                             pll_channel_id=channel, trans_mode=2)

    def refetch_tac(self, obu_id: bytes) -> Message | None:
        if not self.n2019:
            return None
        return network2019.RefetchTac(obu_id=obu_id, opt_mode=0, ef04_offset=0, ef04_length=0, ef04_info=b"")
