"""Every outcome of a lane transaction: reason code, display message, what follows.

Each outcome the lane can reach has one :class:`Reason` with the Chinese text the fee
display shows (two lines), whether the vehicle may pass and whether an alarm is raised.
Counters, journal records and logs all use the reason's value as the code.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Outcome:
    line1: str
    line2: str
    passes: bool = False
    alarm: bool = False


class Reason(enum.StrEnum):
    # -- the vehicle passes -------------------------------------------------------
    CHARGED = "charged"
    ENTRY_WRITTEN = "entry_written"
    PAID_ON_RECORD = "paid_on_record"  # seen again after paying: let through, not charged again
    # -- refused at B2 (OBU) --------------------------------------------------------
    NO_CARD = "no_card"
    OBU_TAMPERED = "obu_tampered"
    OBU_LOCKED = "obu_locked"
    CARD_ERROR = "card_error"
    OBU_EXPIRED = "obu_expired"
    OBU_NOT_YET_VALID = "obu_not_yet_valid"
    ISSUER_NOT_ACCEPTED = "issuer_not_accepted"
    OBU_LISTED = "obu_listed"
    # -- refused at B3 / B4 ------------------------------------------------------------
    VEHICLE_READ_FAILED = "vehicle_read_failed"
    CLASS_INVALID = "class_invalid"
    CARD_READ_FAILED = "card_read_failed"
    CARD_EXPIRED = "card_expired"
    CARD_NOT_YET_VALID = "card_not_yet_valid"
    CARD_LISTED = "card_listed"
    PLATE_MISMATCH = "plate_mismatch"
    CLASS_MISMATCH = "class_mismatch"
    CREDIT_CARD_REFUSED = "credit_card_refused"
    NO_ENTRY_RECORD = "no_entry_record"
    NO_FEE = "no_fee"
    INSUFFICIENT_BALANCE = "insufficient_balance"
    # -- the charge itself ----------------------------------------------------------------
    CHARGE_FAILED = "charge_failed"  # B5 error before the card was debited: not charged
    OUTCOME_UNKNOWN = "outcome_unknown"  # the card may have been debited: reconciliation
    JOURNAL_FAILED = "journal_failed"
    ETC_CLOSED = "etc_closed"  # a degraded mode: the lane cannot finish a payment now
    # -- lane events ---------------------------------------------------------------------
    FOLLOW_CAR = "follow_car"


OUTCOMES: dict[Reason, Outcome] = {
    Reason.CHARGED: Outcome("欢迎通行", "一路顺风", passes=True),
    Reason.ENTRY_WRITTEN: Outcome("欢迎通行", "一路顺风", passes=True),
    Reason.PAID_ON_RECORD: Outcome("已缴费", "请通行", passes=True),
    Reason.NO_CARD: Outcome("无卡", "请走人工车道"),
    Reason.OBU_TAMPERED: Outcome("标签拆卸", "请走人工车道"),
    Reason.OBU_LOCKED: Outcome("标签锁定", "请走人工车道"),
    Reason.CARD_ERROR: Outcome("卡片异常", "请走人工车道"),
    Reason.OBU_EXPIRED: Outcome("标签过期", "请走人工车道"),
    Reason.OBU_NOT_YET_VALID: Outcome("标签未启用", "请走人工车道"),
    Reason.ISSUER_NOT_ACCEPTED: Outcome("标签失效", "请走人工车道"),
    Reason.OBU_LISTED: Outcome("标签失效", "请走人工车道"),
    Reason.VEHICLE_READ_FAILED: Outcome("读取车辆信息失败", "请走人工车道"),
    Reason.CLASS_INVALID: Outcome("车型异常", "请走人工车道"),
    Reason.CARD_READ_FAILED: Outcome("读卡失败", "请走人工车道"),
    Reason.CARD_EXPIRED: Outcome("卡片过期", "请走人工车道"),
    Reason.CARD_NOT_YET_VALID: Outcome("卡片未启用", "请走人工车道"),
    Reason.CARD_LISTED: Outcome("卡片失效", "请走人工车道"),
    Reason.PLATE_MISMATCH: Outcome("车卡不符", "请走人工车道"),
    Reason.CLASS_MISMATCH: Outcome("车型不符", "请走人工车道"),
    Reason.CREDIT_CARD_REFUSED: Outcome("记账卡暂停使用", "请走人工车道"),
    Reason.NO_ENTRY_RECORD: Outcome("无入口信息", "请走人工车道"),
    Reason.NO_FEE: Outcome("无收费标准", "请走人工车道"),
    Reason.INSUFFICIENT_BALANCE: Outcome("余额不足", "请走人工车道"),
    Reason.CHARGE_FAILED: Outcome("交易失败", "请走人工车道"),
    Reason.OUTCOME_UNKNOWN: Outcome("交易异常", "请走人工车道", alarm=True),
    Reason.JOURNAL_FAILED: Outcome("ETC暂停使用", "请走人工车道", alarm=True),
    Reason.ETC_CLOSED: Outcome("ETC暂停", "请走人工车道"),
    Reason.FOLLOW_CAR: Outcome("跟车违章", "请停车缴费", alarm=True),
}

IDLE = Outcome("ETC车道", "欢迎使用")
