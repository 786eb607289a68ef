"""Profile ``national``: classic envelope; Wanji RSUs and the national serial document.

Source: RSU_PROTOCOL.md, "Profile national" — the document "高速公路ETC系统DSRC设备串行口
通讯协议" (3) and the Wanji lane client (2). Field names are the document's, snake_case.
"""

from __future__ import annotations

import datetime as dt

from laned.protocol.fields import U8, U16, U32, BcdDate, BcdDateTime, Gbk, Hex
from laned.protocol.messages import Message, Sender, message, wire
from laned.protocol.profiles.base import Profile
from laned.protocol.profiles.common import ERROR_CODES, OPAQUE_TYPES, Switch, Stop

NAME = "national"


@message(0xC0, Sender.PC, profile=NAME)
class Init(Message):
    unix_time: int = wire(U32)
    date_time: dt.datetime = wire(BcdDateTime)
    lane_mode: int = wire(U8)
    wait_time: int = wire(U8)  # minimum re-read interval for one OBU
    tx_power: int = wire(U8)
    pll_channel_id: int = wire(U8)
    trans_mode: int = wire(U8)


@message(0xB0, Sender.RSU, profile=NAME, status_field="rsu_status")
class RsuInfo(Message):
    rsu_status: int = wire(U8)  # 00 normal
    psam_num: int | None = wire(U8, default=None)
    rsu_terminal_id1: bytes | None = wire(Hex(6), default=None)  # PSAM terminal numbers
    rsu_terminal_id2: bytes | None = wire(Hex(6), default=None)
    rsu_alg_id: int | None = wire(U8, default=None)
    rsu_manu_id: int | None = wire(U8, default=None)
    rsu_id: bytes | None = wire(Hex(3), default=None)
    rsu_version: bytes | None = wire(Hex(2), default=None)
    reserved: bytes | None = wire(Hex(5), default=None)


@message(0xB2, Sender.RSU, profile=NAME, status_field="error_code")
class ObuInfo(Message):
    obu_id: bytes = wire(Hex(4))
    error_code: int = wire(U8)  # 00 data follows, 80 heartbeat
    issuer_identifier: bytes | None = wire(Hex(8), default=None)
    serial_number: bytes | None = wire(Hex(8), default=None)
    date_of_issue: dt.date | None = wire(BcdDate, default=None)
    date_of_expire: dt.date | None = wire(BcdDate, default=None)
    equipment_cv: int | None = wire(U8, default=None)
    obu_status: bytes | None = wire(Hex(2), default=None)

    @property
    def contract_start(self) -> dt.date | None:
        return self.date_of_issue

    @property
    def contract_expiry(self) -> dt.date | None:
        return self.date_of_expire

    @property
    def issuer(self) -> bytes | None:
        return self.issuer_identifier


@message(0xC1, Sender.PC, profile=NAME)
class Continue(Message):
    obu_id: bytes = wire(Hex(4))
    obu_div_factor: bytes = wire(Hex(8))  # first-level diversification factor, per issuer


@message(0xB3, Sender.RSU, profile=NAME, status_field="error_code")
class VehicleInfo(Message):
    obu_id: bytes = wire(Hex(4))
    error_code: int = wire(U8)
    plate_number: str | None = wire(Gbk(12), default=None)
    plate_colour: int | None = wire(U16, default=None)
    vehicle_class: int | None = wire(U8, default=None)
    vehicle_user_type: int | None = wire(U8, default=None)


@message(0xB4, Sender.RSU, profile=NAME, status_field="error_code")
class CardInfo(Message):
    obu_id: bytes = wire(Hex(4))
    error_code: int = wire(U8)
    card_type: int | None = wire(U8, default=None)
    physical_card_type: int | None = wire(U8, default=None)
    trans_type: int | None = wire(U8, default=None)  # 00 traditional, 10 composite
    card_rest_money: int | None = wire(U32, default=None)  # fen
    card_id: bytes | None = wire(Hex(4), default=None)
    issuer_info: bytes | None = wire(Hex(43), default=None)  # card file 0015
    last_station: bytes | None = wire(Hex(43), default=None)  # card file 0019


@message(0xC6, Sender.PC, profile=NAME)
class Charge(Message):
    obu_id: bytes = wire(Hex(4))
    card_div_factor: bytes = wire(Hex(8))
    reserved: bytes = wire(Hex(4))
    consume_money: int = wire(U32)  # fen
    purchase_time: dt.datetime = wire(BcdDateTime)  # the card computes the TAC over it
    station: bytes = wire(Hex(40))  # the station record written into 0019


@message(0xB5, Sender.RSU, profile=NAME, status_field="error_code")
class ChargeResult(Message):
    obu_id: bytes = wire(Hex(4))
    error_code: int = wire(U8)
    wr_file_time: int | None = wire(U32, default=None)
    psam_no: bytes | None = wire(Hex(6), default=None)
    trans_time: dt.datetime | None = wire(BcdDateTime, default=None)
    trans_type: int | None = wire(U8, default=None)  # 09 composite, 06 stored-value, 16 credit
    tac: bytes | None = wire(Hex(4), default=None)
    icc_pay_serial: int | None = wire(U16, default=None)
    psam_trans_serial: int | None = wire(U32, default=None)
    card_balance: int | None = wire(U32, default=None)  # fen, after the charge


PROFILE = Profile(
    name=NAME,
    envelope="classic",
    escaping=True,
    messages={cls.TYPE: cls for cls in (Init, RsuInfo, ObuInfo, Continue, Stop, VehicleInfo, CardInfo, Charge,
                                         ChargeResult, Switch)},
    opaque=OPAQUE_TYPES,
    error_codes=ERROR_CODES,
    description="classic envelope; Wanji RSUs and the national serial document",
)
