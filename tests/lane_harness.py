"""A fake-clock harness around LaneMachine that plays the executor's part."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from laned.lane.signals import InputSample, Signal
from laned.lane.dialect import Dialect
from laned.lane.machine import (
    Action, ChargeRecorded, FrameIn, InputIn, IntentRecorded, JournalCharged, JournalIntent, LaneMachine,
    LaneSettings, MoveBarrier, Send, Tick,
)
from laned.lane.barrier import BarrierCommand
from laned.protocol import get_profile
from laned.protocol.profiles import national, network2019

WALL0 = dt.datetime(2026, 11, 22, 10, 0, 0)
TODAY = WALL0.date()


def card_file(*, card_type=0x16, plate="鲁A12345", vclass=1, expiry=dt.date(2033, 1, 1),
              start=dt.date(2023, 1, 1), network="3701", number="2301000012345678") -> bytes:
    raw = (bytes.fromhex("c9bdb6ab37010001") + bytes((card_type, 0x40)) + bytes.fromhex(network + number)
           + bytes.fromhex(start.strftime("%Y%m%d")) + bytes.fromhex(expiry.strftime("%Y%m%d"))
           + plate.encode("gbk").ljust(12, b"\x00") + bytes((0, 0, vclass)))
    assert len(raw) == 43
    return raw


def station_record(station="0102", entry_time=1732260000, empty=False) -> bytes:
    if empty:
        return bytes(43)
    return bytes.fromhex("aa2900" + "3701" + station + "03") + entry_time.to_bytes(4, "big") + bytes((1, 2)) + bytes(29)


class Fees:
    version = 7

    def __init__(self, table=None, maximum=None):
        self.table = table or {("3701-0102", 1): 3500, ("3701-0102", 12): 9000}
        self.maximum = maximum or {1: 12000, 12: 30000}

    def fee(self, station, vclass):
        return self.table.get((station, vclass))

    def max_fee(self, vclass):
        return self.maximum.get(vclass)


class Listed:
    version = 42

    def __init__(self, cards=(), obus=()):
        self.cards, self.obus = set(cards), set(obus)

    def is_listed_card(self, network, number):
        return 1 if network + number in self.cards else None

    def is_listed_obu(self, obu):
        return 1 if obu in self.obus else None


@dataclass
class Lane:
    """Drives a LaneMachine like the daemon does, journaling into a list."""

    profile: str = "national"
    settings: LaneSettings = field(default_factory=LaneSettings)
    fees: Fees = field(default_factory=Fees)
    status: Listed = field(default_factory=Listed)
    auto_journal: bool = True
    now: float = 100.0
    actions: list = field(default_factory=list)
    journal: list = field(default_factory=list)
    seq: int = 0

    def __post_init__(self):
        self.machine = LaneMachine(self.settings, Dialect(get_profile(self.profile)), fees=self.fees,
                                   status=self.status)
        self.msgs = national if self.profile == "national" else network2019

    @property
    def wall(self):
        return WALL0 + dt.timedelta(seconds=self.now - 100.0)

    def feed(self, event) -> list[Action]:
        out = self.machine.handle(event, self.now, self.wall)
        self.actions += out
        more = []
        for a in out:
            if self.auto_journal and isinstance(a, JournalIntent):
                self.seq += 1
                self.journal.append(("intent", self.seq, a.record))
                more += self.feed(IntentRecorded(a.tx_id, self.seq))
            elif self.auto_journal and isinstance(a, JournalCharged):
                self.journal.append(("charged", a.seq, a.result))
                more += self.feed(ChargeRecorded(a.tx_id))
            elif not isinstance(a, (JournalIntent, JournalCharged)) and type(a).__name__.startswith("Journal"):
                self.journal.append((type(a).__name__, a))
        return out + more

    def advance(self, seconds: float) -> list[Action]:
        out = []
        step = 0.05
        t_end = self.now + seconds
        while self.now < t_end - 1e-9:
            self.now = min(t_end, self.now + step)
            for sig, val in self.loop_state.items():
                out += self.feed(InputIn(InputSample(sig, val, self.now)))
            out += self.feed(Tick())
        return out

    loop_state: dict = field(default_factory=lambda: {Signal.SAFETY_LOOP: False})

    def loop(self, occupied: bool | None) -> list[Action]:
        self.loop_state[Signal.SAFETY_LOOP] = occupied
        return self.feed(InputIn(InputSample(Signal.SAFETY_LOOP, occupied, self.now)))

    # -- RSU frames -----------------------------------------------------------------------
    def b2(self, obu_id=b"\xa1\xfe\x33\xff", status=b"\x00\x00", expiry=dt.date(2033, 1, 1),
           start=dt.date(2023, 1, 1), error=0, rsctl=0x18):
        m = self.msgs
        if self.profile == "national":
            msg = m.ObuInfo(obu_id=obu_id, error_code=error, issuer_identifier=bytes.fromhex("c9bdb6ab37010001"),
                            serial_number=bytes(range(1, 9)), date_of_issue=start, date_of_expire=expiry,
                            equipment_cv=0x21, obu_status=status)
        else:
            msg = m.ObuInfo(obu_id=obu_id, error_code=error, issuer=bytes.fromhex("c9bdb6ab37010001"),
                            contract_type=1, contract_version=1, serial_number=bytes(range(1, 9)),
                            issue_date=start, expire_date=expiry, cpu_card_id=bytes(10), equipment_cv=0x21,
                            obu_status=status)
        return self.feed(FrameIn(msg, rsctl))

    def b3(self, obu_id=b"\xa1\xfe\x33\xff", plate="鲁A12345", vclass=1, error=0, rsctl=0x38):
        if self.profile == "national":
            msg = self.msgs.VehicleInfo(obu_id=obu_id, error_code=error, plate_number=plate, plate_colour=0,
                                        vehicle_class=vclass, vehicle_user_type=0)
        else:
            info = plate.encode("gbk").ljust(12, b"\x00") + b"\x00\x00" + bytes((vclass, 0)) + bytes(63)
            msg = self.msgs.VehicleInfo(obu_id=obu_id, error_code=error, vehicle_info=info)
        return self.feed(FrameIn(msg, rsctl))

    def b4(self, obu_id=b"\xa1\xfe\x33\xff", balance=123456, card=None, station=None, error=0, rsctl=0x48):
        card = card if card is not None else card_file()
        station = station if station is not None else station_record()
        if self.profile == "national":
            msg = self.msgs.CardInfo(obu_id=obu_id, error_code=error, card_type=0, physical_card_type=0,
                                     trans_type=0x10, card_rest_money=balance, card_id=bytes(4),
                                     issuer_info=card, last_station=station)
        else:
            msg = self.msgs.CardInfo(obu_id=obu_id, error_code=error, read_icc_status=0, card_rest_money=balance,
                                     issuer_info=card, last_station=station, read_ef04_status=0)
        return self.feed(FrameIn(msg, rsctl))

    def b5(self, obu_id=b"\xa1\xfe\x33\xff", error=0, balance=119956, tac=b"\xfe\x12\xff\x34", rsctl=0x58):
        if self.profile == "national":
            msg = self.msgs.ChargeResult(obu_id=obu_id, error_code=error, wr_file_time=1, psam_no=bytes(6),
                                         trans_time=self.wall.replace(microsecond=0), trans_type=9, tac=tac,
                                         icc_pay_serial=1, psam_trans_serial=2, card_balance=balance)
        else:
            msg = self.msgs.ChargeResult(obu_id=obu_id, error_code=error, trans_time=self.wall.replace(microsecond=0),
                                         psam_trans_serial=2, icc_pay_serial=1, trans_type=9, card_balance=balance,
                                         tac=tac, wr_file_time=1, key_type=0, ef04_write_status=0)
        if error:
            msg = type(msg)(obu_id=obu_id, error_code=error)
        return self.feed(FrameIn(msg, rsctl))

    # -- reading actions ------------------------------------------------------------------------
    @staticmethod
    def sent(actions) -> list[str]:
        return [a.message.type_name for a in actions if isinstance(a, Send)]

    @staticmethod
    def barrier(actions) -> list[BarrierCommand]:
        return [a.command for a in actions if isinstance(a, MoveBarrier)]

    def pay(self, obu_id=b"\xa1\xfe\x33\xff", **b4):
        out = self.b2(obu_id=obu_id) + self.b3(obu_id=obu_id) + self.b4(obu_id=obu_id, **b4)
        return out + self.b5(obu_id=obu_id)
