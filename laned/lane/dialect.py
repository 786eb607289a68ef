"""The lane's view of an RSU profile: uniform readings of B2–B5, and the frames to answer.

The lane logic reasons about "the OBU's expiry" or "the card's balance", not about which
profile calls the field ``date_of_expire`` or ``expire_date``. This module maps each
classic profile onto that view and builds C0/C1/C2/C6/C8 for it, with the lane's settings
from the config: the C0 radio and timing values (:class:`RsuInit`) and the OBU
diversification factor of each issuer, which C1 carries (profile national).

The C1 the lane sends names only the OBU id, so the dialect remembers the issuer of the
OBUs it read B2 of (:meth:`Dialect.obu`), the latest :data:`ISSUER_MEMORY` of them.
"""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeAlias, cast

from laned.protocol import Message, Profile
from laned.protocol.profiles import national, network2019
from laned.protocol.profiles.common import STOP_SEARCH_AGAIN, Stop

# OBUs whose issuer is remembered for their C1. One transaction runs at a time and an OBU
# answers B2–B5 within a few seconds, so a few hundred covers every OBU still in the zone.
ISSUER_MEMORY = 256

# What the readings take: B2–B5 of either classic profile, the only two a Dialect accepts.
# Each reading casts the lane's Message to one of these, so mypy checks every field a view
# reads against the declarations of both profiles.
_B2: TypeAlias = national.ObuInfo | network2019.ObuInfo
_B3: TypeAlias = national.VehicleInfo | network2019.VehicleInfo
_B4: TypeAlias = national.CardInfo | network2019.CardInfo
_B5: TypeAlias = national.ChargeResult | network2019.ChargeResult


@dataclass(frozen=True, slots=True)
class RsuInit:
    """The C0 values that come from the config (``[rsu]``; RSU_PROTOCOL.md, C0 of each
    profile). The defaults are the config's; LaneMode follows the lane's direction, and
    TxPower and the PLL channel come with :meth:`Dialect.init`'s call."""

    wait_time: int = 2  # national: minimum re-read interval for one OBU
    trans_mode: int = 2  # national
    bst_interval: int = 10  # network2019


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
    """Reads and builds the frames of one classic profile.

    ``div_factors`` maps an OBU issuer (8 bytes) to the diversification factor C1 carries
    for its OBUs; ``default_div_factor`` is for every other issuer. (``obu_div_factor`` is
    the old name of ``default_div_factor``.)
    """

    def __init__(self, profile: Profile, *, div_factors: Mapping[bytes, bytes] | None = None,
                 default_div_factor: bytes = bytes(8), card_div_factor: bytes = bytes(8),
                 rsu_init: RsuInit = RsuInit(), obu_div_factor: bytes | None = None):
        if profile.name not in ("national", "network2019"):
            raise ValueError(f"the lane needs a profile with confirmed layouts (national, network2019), "
                             f"not {profile.name!r}")
        self.profile = profile
        self.n2019 = profile.name == "network2019"
        self.div_factors = dict(div_factors or {})
        self.default_div_factor = obu_div_factor if obu_div_factor is not None else default_div_factor
        self.card_div_factor = card_div_factor
        self.rsu_init = rsu_init
        for factor in (self.default_div_factor, self.card_div_factor, *self.div_factors.values()):
            if len(factor) != 8:
                raise ValueError(f"a diversification factor has 8 bytes, not {len(factor)}")
        self._issuers: OrderedDict[bytes, bytes | None] = OrderedDict()  # OBU id -> issuer, newest last

    def div_factor_for(self, issuer: bytes | None) -> bytes:
        """The OBU diversification factor C1 carries for an OBU of ``issuer``."""
        if issuer is None:
            return self.default_div_factor
        return self.div_factors.get(issuer, self.default_div_factor)

    @property
    def can_refetch_tac(self) -> bool:
        return self.n2019

    # -- reading -------------------------------------------------------------------------
    def kind(self, msg: Message) -> str | None:
        return {0xB0: "B0", 0xB2: "B2", 0xB3: "B3", 0xB4: "B4", 0xB5: "B5"}.get(msg.frame_type)

    def is_heartbeat(self, msg: Message) -> bool:
        """As the profile defines it (the RSU link counts heartbeats by the same rule)."""
        return self.profile.is_heartbeat(msg)

    def obu(self, m: Message) -> ObuView:
        """The B2's reading; remembers the OBU's issuer for the C1s that answer it."""
        b2 = cast(_B2, m)
        issuer = getattr(b2, "issuer", None)  # national: IssuerIdentifier; network2019: Issuer
        view = ObuView(b2.obu_id, b2.error_code, issuer, b2.serial_number,
                       b2.contract_start, b2.contract_expiry, b2.obu_status)
        self._issuers[view.obu_id] = view.issuer
        self._issuers.move_to_end(view.obu_id)
        while len(self._issuers) > ISSUER_MEMORY:
            self._issuers.popitem(last=False)
        return view

    def vehicle(self, m: Message) -> VehicleView:
        b3 = cast(_B3, m)
        return VehicleView(b3.obu_id, b3.error_code, b3.plate_number, b3.plate_colour, b3.vehicle_class)

    def card(self, m: Message) -> CardView:
        b4 = cast(_B4, m)
        return CardView(b4.obu_id, b4.error_code, b4.card_rest_money, b4.issuer_info, b4.last_station)

    def result(self, m: Message) -> ResultView:
        b5 = cast(_B5, m)
        return ResultView(b5.obu_id, b5.error_code, b5.tac, getattr(b5, "psam_no", None), b5.psam_trans_serial,
                          b5.icc_pay_serial, b5.trans_type, b5.card_balance, b5.trans_time)

    # -- building ------------------------------------------------------------------------
    def continue_(self, obu_id: bytes, *, issuer: bytes | None = None) -> Message:
        """C1 for ``obu_id``, with its issuer's diversification factor (national): the issuer
        given, else the one its latest B2 named, else the default factor."""
        if self.n2019:
            return network2019.Continue(obu_id=obu_id)
        if issuer is None:
            issuer = self._issuers.get(obu_id)
        return national.Continue(obu_id=obu_id, obu_div_factor=self.div_factor_for(issuer))

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

    def init(self, wall: dt.datetime, *, exit_lane: bool, tx_power: int, channel: int) -> Message:
        """C0: clock, lane mode (3 entry, 4 exit, as (1) numbers them), radio and timing
        settings (``rsu_init``, from the config)."""
        unix = int(wall.replace(tzinfo=dt.UTC).timestamp()) if wall.tzinfo is None else int(wall.timestamp())
        when = wall.replace(microsecond=0, tzinfo=None)
        mode = 4 if exit_lane else 3
        r = self.rsu_init
        if self.n2019:
            # EF04 (the 2019 toll file) is neither read nor written by this lane: option and range 0.
            return network2019.Init(unix_time=unix, date_time=when, lane_mode=mode, bst_interval=r.bst_interval,
                                    tx_power=tx_power, pll_channel_id=channel, ef04_opt=0, ef04_offset=0,
                                    ef04_length=0)
        return national.Init(unix_time=unix, date_time=when, lane_mode=mode, wait_time=r.wait_time,
                             tx_power=tx_power, pll_channel_id=channel, trans_mode=r.trans_mode)

    def refetch_tac(self, obu_id: bytes) -> Message | None:
        if not self.n2019:
            return None
        return network2019.RefetchTac(obu_id=obu_id, opt_mode=0, ef04_offset=0, ef04_length=0, ef04_info=b"")
