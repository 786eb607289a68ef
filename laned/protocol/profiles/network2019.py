"""Profile ``network2019``: classic envelope; the 2019 RSU firmware with the EF04 file.

Source: RSU_PROTOCOL.md, "Profile network2019" — RSU firmware (1),
``USER/CommandProcess.c`` / ``CommandProcess.h``. Only the differences from ``national``
are new classes; C2 and C4 are shared.
"""

from __future__ import annotations

import datetime as dt

from laned.protocol.fields import U8, U16, U32, BcdDate, BcdDateTime, Hex, VarBytes, gbk_text
from laned.protocol.messages import Message, Sender, message, wire
from laned.protocol.profiles.base import Profile
from laned.protocol.profiles.common import ERROR_CODES, OPAQUE_TYPES, Switch, Stop

NAME = "network2019"


class LaneMode:
    """C0 LaneMode values of (1)."""

    ENTRY = 3
    EXIT = 4
    OPEN_ROAD = 6
    MARKER = 7
    PROVINCIAL_BOUNDARY = 8


@message(0xC0, Sender.PC, profile=NAME)
class Init(Message):
    unix_time: int = wire(U32)
    date_time: dt.datetime = wire(BcdDateTime)
    lane_mode: int = wire(U8)
    bst_interval: int = wire(U8)
    tx_power: int = wire(U8)  # 0–15 used
    pll_channel_id: int = wire(U8)  # 0 or 1
    ef04_opt: int = wire(U8)
    ef04_offset: int = wire(U16)
    ef04_length: int = wire(U16)


@message(0xB0, Sender.RSU, profile=NAME, status_field="rsu_status")
class RsuInfo(Message):
    rsu_status: int = wire(U8)  # 00 normal, 01 PSAM reset failed, 03 PSAM read failed
    psam_channel_id: int | None = wire(U8, default=None)
    psam_version: int | None = wire(U8, default=None)
    psam_auth_status: int | None = wire(U8, default=None)
    psam_terminal: bytes | None = wire(Hex(6), default=None)
    rsu_alg_id: int | None = wire(U8, default=None)
    rsu_manu_id: int | None = wire(U8, default=None)
    rsu_id: bytes | None = wire(Hex(3), default=None)
    rsu_version: bytes | None = wire(Hex(2), default=None)
    reserved: bytes | None = wire(Hex(5), default=None)


@message(0xB2, Sender.RSU, profile=NAME, status_field="error_code")
class ObuInfo(Message):
    obu_id: bytes = wire(Hex(4))
    error_code: int = wire(U8)
    issuer: bytes | None = wire(Hex(8), default=None)
    contract_type: int | None = wire(U8, default=None)
    contract_version: int | None = wire(U8, default=None)
    serial_number: bytes | None = wire(Hex(8), default=None)
    issue_date: dt.date | None = wire(BcdDate, default=None)
    expire_date: dt.date | None = wire(BcdDate, default=None)
    cpu_card_id: bytes | None = wire(Hex(10), default=None)
    equipment_cv: int | None = wire(U8, default=None)
    obu_status: bytes | None = wire(Hex(2), default=None)

    @property
    def contract_start(self) -> dt.date | None:
        return self.issue_date

    @property
    def contract_expiry(self) -> dt.date | None:
        return self.expire_date


@message(0xC1, Sender.PC, profile=NAME)
class Continue(Message):
    obu_id: bytes = wire(Hex(4))


@message(0xB3, Sender.RSU, profile=NAME, status_field="error_code")
class VehicleInfo(Message):
    obu_id: bytes = wire(Hex(4))
    error_code: int = wire(U8)  # 00 ok, 04 no DSRC answer, 06 decrypt failed, 2E PSAM not authorised
    vehicle_info: bytes | None = wire(Hex(79), default=None)  # decrypted vehicle file

    # The vehicle file starts: plate 12, colour 2, class 1, user type 1 (RSU_PROTOCOL.md).
    @property
    def plate_number(self) -> str | None:
        return None if self.vehicle_info is None else gbk_text(self.vehicle_info[:12])

    @property
    def plate_colour(self) -> int | None:
        return None if self.vehicle_info is None else int.from_bytes(self.vehicle_info[12:14], "big")

    @property
    def vehicle_class(self) -> int | None:
        return None if self.vehicle_info is None else self.vehicle_info[14]

    @property
    def vehicle_user_type(self) -> int | None:
        return None if self.vehicle_info is None else self.vehicle_info[15]


@message(0xB4, Sender.RSU, profile=NAME, status_field="error_code", optional_from="ef04_offset")
class CardInfo(Message):
    obu_id: bytes = wire(Hex(4))
    error_code: int = wire(U8)  # 00 ok, 08 no DSRC answer, 09 0019 read failed, 20/21 EF04 read
    read_icc_status: int | None = wire(U8, default=None)
    card_rest_money: int | None = wire(U32, default=None)
    issuer_info: bytes | None = wire(Hex(43), default=None)
    last_station: bytes | None = wire(Hex(43), default=None)
    read_ef04_status: int | None = wire(U8, default=None)
    # Present only if C0 asked for EF04.
    ef04_offset: int | None = wire(U16, default=None)
    ef04_length: int | None = wire(U16, default=None)
    ef04_info: bytes | None = wire(VarBytes("ef04_length"), default=None)


@message(0xC6, Sender.PC, profile=NAME)
class Charge(Message):
    obu_id: bytes = wire(Hex(4))
    trade_mode: int = wire(U8)  # entry: 0 charge, 1 write EF04, 2 both; exit: 0, 1, 3 both
    consume_money: int = wire(U32)
    station: bytes = wire(Hex(40))
    purchase_time: dt.datetime = wire(BcdDateTime)
    ef04_offset: int = wire(U16)
    ef04_length: int = wire(U16)
    ef04_info: bytes = wire(VarBytes("ef04_length"))


@message(0xB5, Sender.RSU, profile=NAME, status_field="error_code")
class ChargeResult(Message):
    obu_id: bytes = wire(Hex(4))
    error_code: int = wire(U8)
    trans_time: dt.datetime | None = wire(BcdDateTime, default=None)
    psam_trans_serial: int | None = wire(U32, default=None)
    icc_pay_serial: int | None = wire(U16, default=None)
    trans_type: int | None = wire(U8, default=None)
    card_balance: int | None = wire(U32, default=None)
    tac: bytes | None = wire(Hex(4), default=None)
    wr_file_time: int | None = wire(U32, default=None)
    key_type: int | None = wire(U8, default=None)  # 4 SM4, 0 3DES
    ef04_write_status: int | None = wire(U8, default=None)


@message(0xC8, Sender.PC, profile=NAME)
class RefetchTac(Message):
    """Re-fetch the TAC of the last purchase; the RSU answers with a B5."""

    obu_id: bytes = wire(Hex(4))
    opt_mode: int = wire(U8)
    ef04_offset: int = wire(U16)
    ef04_length: int = wire(U16)
    ef04_info: bytes = wire(VarBytes("ef04_length"))


PROFILE = Profile(
    name=NAME,
    envelope="classic",
    escaping=True,
    messages={cls.TYPE: cls for cls in (Init, RsuInfo, ObuInfo, Continue, Stop, VehicleInfo, CardInfo, Charge,
                                         ChargeResult, RefetchTac, Switch)},
    opaque=OPAQUE_TYPES,
    error_codes=ERROR_CODES,
    description="classic envelope; 2019 RSU firmware with the EF04 file",
)
