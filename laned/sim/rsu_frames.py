"""The emulated RSU's side of the messages: build B0–B5 and heartbeats, read C0–C8.

One :class:`RsuDialect` per profile. ``national`` and ``network2019`` use their typed
message classes. ``jinyi`` and ``gb2019tcp`` only confirm the frame type and the OBU id
after it (``laned/protocol/profiles/tcp_envelopes.py``); the emulator fills the rest of
their payloads with the ``national`` field layout — an inference, but it gives the lane
realistic sizes and lets a C6 carry an amount the emulator can charge. Their heartbeat:
``B2 00000000 80`` for ``jinyi``, a ``B1`` frame for ``gb2019tcp`` (RSU_PROTOCOL.md).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from laned.protocol.errors import ProtocolError
from laned.protocol.messages import Message, OpaqueMessage
from laned.protocol.profiles import Profile, national, network2019
from laned.protocol.profiles.common import Stop, Switch
from laned.sim.rsu_scenario import ObuScenario

HEARTBEAT_OBU_ID = bytes(4)
HEARTBEAT_CODE = 0x80

# B5 TransType (RSU_PROTOCOL.md, profile national): a dual-chip OBU pays by composite purchase.
TRANS_TYPE_COMPOSITE = 0x09
# B4 TransType: 0x10 composite.
B4_TRANS_COMPOSITE = 0x10
# B5 KeyType (network2019): 0 3DES.
KEY_3DES = 0


@dataclass(frozen=True, slots=True)
class RsuIdentity:
    """What the RSU reports in B0 and B5 about itself and its PSAM."""

    rsu_status: int = 0  # 00 normal
    psam_terminal: bytes = bytes.fromhex("370100000001")  # 6 bytes, PSAM terminal number
    manufacturer: int = 0x21
    rsu_id: bytes = bytes.fromhex("000001")
    version: bytes = bytes.fromhex("0102")


@dataclass(frozen=True, slots=True)
class Purchase:
    """A C6 the emulated card carried out: what B5 (and a later C8) report."""

    obu_id: str
    amount: int  # fen
    tac: bytes
    balance_after: int
    psam_serial: int
    icc_serial: int
    trans_time: dt.datetime
    wr_file_time: int
    station: bytes  # the 40-byte record written into 0019


@dataclass(frozen=True, slots=True)
class LaneFrame:
    """A frame from the lane, reduced to what the RSU acts on."""

    kind: str  # "C0", "C1", "C2", "C4", "C6", "C8" or "other"
    obu_id: bytes | None = None
    stop_type: int | None = None
    control: int | None = None  # C4
    amount: int | None = None  # C6 ConsumeMoney
    purchase_time: dt.datetime | None = None
    station: bytes | None = None
    trade_mode: int = 0  # network2019 C6
    ef04_opt: int = 0  # network2019 C0
    ef04_length: int = 0


class RsuDialect:
    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.name = profile.name
        self.n2019 = profile.name == "network2019"
        self.raw = profile.name in ("jinyi", "gb2019tcp")

    # -- RSU → lane ---------------------------------------------------------------------
    def status(self, ident: RsuIdentity) -> Message:
        if self.n2019:
            return network2019.RsuInfo(rsu_status=ident.rsu_status, psam_channel_id=1, psam_version=0x10,
                                       psam_auth_status=0, psam_terminal=ident.psam_terminal, rsu_alg_id=0,
                                       rsu_manu_id=ident.manufacturer, rsu_id=ident.rsu_id,
                                       rsu_version=ident.version, reserved=bytes(5))
        msg = national.RsuInfo(rsu_status=ident.rsu_status, psam_num=1, rsu_terminal_id1=ident.psam_terminal,
                               rsu_terminal_id2=bytes(6), rsu_alg_id=0, rsu_manu_id=ident.manufacturer,
                               rsu_id=ident.rsu_id, rsu_version=ident.version, reserved=bytes(5))
        return OpaqueMessage(type_code=0xB0, data=msg.encode()[1:]) if self.raw else msg

    def heartbeat(self) -> Message:
        if self.name == "gb2019tcp":
            return OpaqueMessage(type_code=0xB1, data=b"")
        return self._obu_msg(national.ObuInfo(obu_id=HEARTBEAT_OBU_ID, error_code=HEARTBEAT_CODE),
                             network2019.ObuInfo(obu_id=HEARTBEAT_OBU_ID, error_code=HEARTBEAT_CODE))

    def obu(self, o: ObuScenario, error: int = 0) -> Message:
        oid = o.obu_bytes
        if error:
            return self._obu_msg(national.ObuInfo(obu_id=oid, error_code=error),
                                 network2019.ObuInfo(obu_id=oid, error_code=error))
        status = o.obu_status(self.profile.obu_status_bits)
        return self._obu_msg(
            national.ObuInfo(obu_id=oid, error_code=0, issuer_identifier=o.issuer, serial_number=o.serial,
                             date_of_issue=o.contract_issue, date_of_expire=o.contract_expiry,
                             equipment_cv=o.equipment_cv, obu_status=status),
            network2019.ObuInfo(obu_id=oid, error_code=0, issuer=o.issuer, contract_type=1, contract_version=1,
                                serial_number=o.serial, issue_date=o.contract_issue, expire_date=o.contract_expiry,
                                cpu_card_id=bytes.fromhex(o.card_key), equipment_cv=o.equipment_cv,
                                obu_status=status))

    def vehicle(self, o: ObuScenario, error: int = 0) -> Message:
        oid = o.obu_bytes
        if error:
            return self._obu_msg(national.VehicleInfo(obu_id=oid, error_code=error),
                                 network2019.VehicleInfo(obu_id=oid, error_code=error))
        return self._obu_msg(
            national.VehicleInfo(obu_id=oid, error_code=0, plate_number=o.plate, plate_colour=o.plate_colour,
                                 vehicle_class=o.vehicle_class, vehicle_user_type=o.vehicle_user_type),
            network2019.VehicleInfo(obu_id=oid, error_code=0, vehicle_info=o.vehicle_file()))

    def card(self, o: ObuScenario, balance: int, last_station: bytes, error: int = 0, ef04_length: int = 0) -> Message:
        oid = o.obu_bytes
        if error:
            return self._obu_msg(national.CardInfo(obu_id=oid, error_code=error),
                                 network2019.CardInfo(obu_id=oid, error_code=error))
        # C0 asked for EF04 (network2019): the card's EF04 is blank in the emulator.
        ef04_offset, ef04_info = (0, bytes(ef04_length)) if ef04_length else (None, None)
        return self._obu_msg(
            national.CardInfo(obu_id=oid, error_code=0, card_type=int(o.card_type), physical_card_type=0,
                              trans_type=B4_TRANS_COMPOSITE, card_rest_money=balance,
                              card_id=bytes.fromhex(o.card_number[-8:]), issuer_info=o.file_0015(),
                              last_station=last_station),
            network2019.CardInfo(obu_id=oid, error_code=0, read_icc_status=0, card_rest_money=balance,
                                 issuer_info=o.file_0015(), last_station=last_station, read_ef04_status=0,
                                 ef04_offset=ef04_offset, ef04_length=ef04_length or None, ef04_info=ef04_info))

    def result(self, obu_id: bytes, p: Purchase | None, ident: RsuIdentity, error: int = 0) -> Message:
        if error or p is None:
            code = error or 0x36
            return self._obu_msg(national.ChargeResult(obu_id=obu_id, error_code=code),
                                 network2019.ChargeResult(obu_id=obu_id, error_code=code))
        return self._obu_msg(
            national.ChargeResult(obu_id=obu_id, error_code=0, wr_file_time=p.wr_file_time,
                                  psam_no=ident.psam_terminal, trans_time=p.trans_time,
                                  trans_type=TRANS_TYPE_COMPOSITE, tac=p.tac, icc_pay_serial=p.icc_serial,
                                  psam_trans_serial=p.psam_serial, card_balance=p.balance_after),
            network2019.ChargeResult(obu_id=obu_id, error_code=0, trans_time=p.trans_time,
                                     psam_trans_serial=p.psam_serial, icc_pay_serial=p.icc_serial,
                                     trans_type=TRANS_TYPE_COMPOSITE, card_balance=p.balance_after, tac=p.tac,
                                     wr_file_time=p.wr_file_time, key_type=KEY_3DES, ef04_write_status=0))

    def _obu_msg(self, nat: Message, n2019: Message) -> Message:
        if self.n2019:
            return n2019
        if not self.raw:
            return nat
        # jinyi / gb2019tcp: OBU id confirmed, the rest raw in the national layout.
        payload = nat.encode()
        cls = self.profile.messages[payload[0]]
        # type[Message] has no fields; these classes are tcp_envelopes._obu_frame's (obu_id, data).
        return cls(obu_id=payload[1:5], data=payload[5:])  # type: ignore[call-arg]

    # -- lane → RSU ---------------------------------------------------------------------
    def read(self, msg: Message) -> LaneFrame:
        """Reduce a lane frame to what the RSU acts on; unreadable ones are ``other``."""
        t = msg.frame_type
        kind = {0xC0: "C0", 0xC1: "C1", 0xC2: "C2", 0xC4: "C4", 0xC6: "C6", 0xC8: "C8"}.get(t, "other")
        if self.raw:
            try:
                msg = self._as_national(msg)
            except ProtocolError:
                return LaneFrame("other")
        if kind == "C0":
            if isinstance(msg, network2019.Init):
                return LaneFrame("C0", ef04_opt=msg.ef04_opt, ef04_length=msg.ef04_length if msg.ef04_opt else 0)
            return LaneFrame("C0")
        if kind == "C4":
            return LaneFrame("C4", control=getattr(msg, "control_type", 1))
        if kind in ("C1", "C8"):
            return LaneFrame(kind, obu_id=getattr(msg, "obu_id", None))
        if kind == "C2" and isinstance(msg, Stop):
            return LaneFrame("C2", obu_id=msg.obu_id, stop_type=msg.stop_type)
        if kind == "C6" and isinstance(msg, (national.Charge, network2019.Charge)):
            return LaneFrame("C6", obu_id=msg.obu_id, amount=msg.consume_money, purchase_time=msg.purchase_time,
                             station=msg.station, trade_mode=getattr(msg, "trade_mode", 0))
        return LaneFrame("other")

    def _as_national(self, msg: Message) -> Message:
        """A jinyi/gb2019tcp frame read with the national layout of its type."""
        payload = msg.encode()
        t = payload[0]
        if t == 0xC4:
            return Switch.LAYOUT.parse(payload[1:])
        if t == 0xC2:
            return Stop.LAYOUT.parse(payload[1:])
        if t == 0xC6:
            return national.Charge.LAYOUT.parse(payload[1:])
        if t == 0xC1 and len(payload) >= 5:
            return national.Continue(obu_id=payload[1:5], obu_div_factor=bytes(8))
        return msg
