"""Every exception path of a lane transaction, through the real daemon.

``run_lane`` as ``laned run`` builds it — configuration, RSU link, lane machine, executor,
SQLite journal, Modbus fee display driver — against the emulated RSU on a pty and the
emulated fee display on Modbus TCP (the follow-car scenario adds the emulated IO module
wired to a lane model). Each scenario checks what the emulated card was really charged,
the frame the RSU got (C2 stop, C6, C8), the journal row, the lane's counter and what
the fee display shows.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from typing import Any

import pytest

from laned.drivers.lane_io import Signal
from laned.executor import Observation
from laned.lane.fee_table import FeeTable
from laned.lane.outcomes import OUTCOMES, Reason
from laned.protocol.profiles.base import ObuFlag
from laned.protocol.profiles.common import STOP_SEARCH_AGAIN
from laned.protocol.records import CardType
from laned.sim.lane_model import BarrierSpec, LaneGeometry, LaneModel
from laned.sim.rsu_scenario import EntryRecord, ObuScenario

from lane_fixtures import (
    FAST_RSU, FEE_TABLE, LaneBench, lane_bench, read_journal, today, write_status_list,
)

pytestmark = pytest.mark.hil

FEES = FeeTable.load(FEE_TABLE)
FEE_0102_CLASS1 = FEES.fee("3701-0102", 1)  # what the default scenario OBU owes: 35.00
MANUAL = "请走人工车道"


@dataclasses.dataclass(frozen=True)
class CardOfAnotherVehicle(ObuScenario):
    """An OBU whose card (file 0015) was issued for another plate or class than the
    vehicle file of the OBU says (ObuScenario uses one plate and class for both)."""

    card_plate: str | None = None
    card_class: int | None = None

    def file_0015(self) -> bytes:
        card_side = dataclasses.replace(self, plate=self.card_plate or self.plate,
                                        vehicle_class=self.card_class or self.vehicle_class)
        return ObuScenario.file_0015(card_side)


def obu(obu_id: str = "a1b2c3d4", **kw: Any) -> ObuScenario:
    return ObuScenario(obu_id=obu_id, **kw)


def answered_frame(bench: LaneBench, entry_index: int, obu_id: str) -> str:
    """The RSU frame (B2…B5) of ``obu_id`` that was on the wire last before log entry ``entry_index``."""
    before = [e for e in bench.emu.log[:entry_index] if e.direction == "tx" and e.obu_id == obu_id
              and e.name in ("B2", "B3", "B4", "B5")]
    return before[-1].name if before else "-"


def message(reason: Reason) -> str:
    o = OUTCOMES[reason]
    return f"{o.line1} {o.line2}"


async def refused_run(tmp_path, scenario: ObuScenario, reason: Reason, **bench_kw: Any) -> tuple[LaneBench, Any]:
    async with lane_bench(tmp_path, [scenario], **bench_kw) as bench:
        await bench.decided("refused")
        await bench.until(lambda: bench.c2_for(scenario.obu_id), what="the C2 to reach the RSU")
        shown = await bench.display_shows(OUTCOMES[reason].line1)
    return bench, shown


def assert_refused(bench: LaneBench, scenario: ObuScenario, reason: Reason, shown: Any, *, at: str) -> None:
    oid = scenario.obu_id
    # Nothing charged: no C6 went out, the card kept its money.
    assert bench.emu.charges == [] and bench.c6_for(oid) == []
    assert bench.emu.balance(oid) == scenario.balance
    # One C2 "search again", answering the frame the lane refused at.
    [c2] = bench.c2_for(oid)
    assert c2.message.stop_type == STOP_SEARCH_AGAIN  # type: ignore[union-attr]
    assert answered_frame(bench, bench.emu.log.index(c2), oid) == at
    # One refusal in the journal with the reason code and the message shown.
    [row] = bench.rows()
    assert (row["kind"], row["state"], row["reason"]) == ("refusal", "refused", str(reason))
    assert row["obu_id"] == oid and row["message"] == message(reason)
    assert row["amount"] is None and row["tac"] is None
    assert bench.executor is not None and bench.executor.machine.counters[reason] == 1
    # The fee display tells the driver why, and the barrier was never raised.
    assert (shown.line1, shown.line2) == (OUTCOMES[reason].line1, MANUAL)
    assert {"command": "raise"} not in bench.observed("barrier")


# -- B2: the OBU and its contract --------------------------------------------------------------------

B2_REFUSALS = [
    pytest.param(dict(flags={ObuFlag.CARD_ABSENT}), Reason.NO_CARD,
                 id="an_obu_without_its_card_is_refused_with_no_card"),
    pytest.param(dict(flags={ObuFlag.OBU_REMOVED}), Reason.OBU_TAMPERED,
                 id="an_obu_taken_off_the_windscreen_is_refused_as_tampered"),
    pytest.param(dict(flags={ObuFlag.OBU_LOCKED}), Reason.OBU_LOCKED, id="a_locked_obu_is_refused"),
    pytest.param(dict(flags={ObuFlag.CARD_ERROR}), Reason.CARD_ERROR, id="an_obu_reporting_a_card_error_is_refused"),
    pytest.param(dict(contract_issue=dt.date(2020, 1, 1), contract_expiry=today() - dt.timedelta(days=1)),
                 Reason.OBU_EXPIRED, id="an_obu_whose_contract_expired_yesterday_is_refused"),
    pytest.param(dict(contract_issue=today() + dt.timedelta(days=1)), Reason.OBU_NOT_YET_VALID,
                 id="an_obu_whose_contract_starts_tomorrow_is_refused"),
]


@pytest.mark.parametrize("fields,reason", B2_REFUSALS)
async def test_an_obu_with_a_bad_status_or_contract_is_refused_at_b2_with_its_message_and_nothing_is_charged(
        tmp_path, fields, reason):
    """无卡 / 标签拆卸 / 标签锁定 / 卡片异常 / 标签过期 / 标签未启用, C2 at B2, journalled."""
    scenario = obu(**fields)
    bench, shown = await refused_run(tmp_path, scenario, reason)
    assert_refused(bench, scenario, reason, shown, at="B2")
    assert bench.emu.sent("B3") == []


@pytest.mark.parametrize("listed_as", ["id", "serial"])
async def test_an_obu_on_the_status_list_is_refused_with_tag_invalid_and_nothing_is_charged(tmp_path, listed_as):
    """标签失效: the status list file the daemon loaded at start lists the OBU (by its
    4-byte id, or by the 8-byte contract serial it sends in B2)."""
    scenario = obu("a1b2c3d4", contract_serial=bytes.fromhex("0102030405060708"))
    key = scenario.obu_bytes if listed_as == "id" else scenario.serial
    listed = write_status_list(tmp_path / "status.bin", obus=[key])
    bench, shown = await refused_run(tmp_path, scenario, Reason.OBU_LISTED, status_list=listed)
    assert_refused(bench, scenario, Reason.OBU_LISTED, shown, at="B2")
    assert bench.rows()[0]["status_list_version"] == 1


async def test_an_obu_of_an_issuer_the_lane_does_not_accept_is_refused_and_an_accepted_one_pays(tmp_path):
    """lane.accepted_issuers: the foreign OBU gets 标签失效, the next (accepted) OBU pays."""
    accepted = "c9bdb6ab37010001"
    foreign = obu("0f0f0f0f", issuer=bytes.fromhex("d5e3bdad33010001"), card_number="2301000012340001")
    home = obu("a1b2c3d4", arrive_at=0.1, issuer=bytes.fromhex(accepted))
    async with lane_bench(tmp_path, [foreign, home], lane={"accepted_issuers": [accepted]}) as bench:
        await bench.decided("refused")
        await bench.journal_row(lambda r: r["state"] == "charged", what="the accepted OBU to be charged")
    [c2] = bench.c2_for(foreign.obu_id)
    assert answered_frame(bench, bench.emu.log.index(c2), foreign.obu_id) == "B2"
    assert [p.obu_id for p in bench.emu.charges] == [home.obu_id]
    refusal, charge = bench.rows()
    assert (refusal["obu_id"], refusal["state"], refusal["reason"]) == (foreign.obu_id, "refused",
                                                                        "issuer_not_accepted")
    assert refusal["message"] == "标签失效 请走人工车道"
    assert (charge["obu_id"], charge["amount"]) == (home.obu_id, FEE_0102_CLASS1)
    assert bench.executor is not None and bench.executor.machine.counters[Reason.ISSUER_NOT_ACCEPTED] == 1


@pytest.mark.parametrize("heartbeats", [True, False], ids=["with_heartbeats", "without_heartbeats"])
async def test_heartbeats_only_keep_the_rsu_link_alive_they_are_never_answered_or_journalled(tmp_path, heartbeats):
    """A heartbeat (B2 00000000 80) refreshes the link's liveness and nothing else: with
    heartbeats every 0.15 s a 0.6 s silence timeout never fires (one C0 in 2 s); without
    them the link is declared lost and reopened, and the RSU initialised again."""
    settings = dataclasses.replace(FAST_RSU, heartbeat_interval=0.15 if heartbeats else None)
    async with lane_bench(tmp_path, [], settings=settings, rsu={"silence_timeout_s": 0.6}) as bench:
        start = time.monotonic()
        await bench.until(lambda: time.monotonic() - start > 2.0 and (not heartbeats or bench.emu.sent("HB")),
                          what="two seconds of an idle lane")
        hb_sent = len(bench.emu.sent("HB"))
    ex = bench.executor
    assert ex is not None
    if heartbeats:
        assert hb_sent >= 5 and ex.machine.counters["heartbeat"] >= 5
        assert len(bench.emu.received("C0")) == 1  # never declared silent
        # Answered nothing: the only lane frames are the C0 and the C1 after B0.
        assert [e.name for e in bench.emu.log if e.direction == "rx"] == ["C0", "C1"]
    else:
        assert ex.machine.counters["heartbeat"] == 0
        assert len(bench.emu.received("C0")) >= 2  # lost after 0.6 s of silence, reopened, re-initialised
    # No transaction: at most the lane's own record of closing ETC while the link was down.
    assert {r["kind"] for r in bench.rows()} <= {"etc_closed", "etc_opened"}
    assert bool(bench.rows()) is not heartbeats
    assert bench.emu.received("C2") == [] and bench.emu.charges == []


# -- B3 / B4: the vehicle, the card, the price -------------------------------------------------------

B4_REFUSALS = [
    pytest.param(dict(card_expiry=today() - dt.timedelta(days=1)), {}, Reason.CARD_EXPIRED,
                 id="a_card_that_expired_yesterday_is_refused"),
    pytest.param(dict(card_start=today() + dt.timedelta(days=1)), {}, Reason.CARD_NOT_YET_VALID,
                 id="a_card_valid_from_tomorrow_is_refused"),
    pytest.param(dict(card_plate="鲁B99999"), {}, Reason.PLATE_MISMATCH,
                 id="a_card_issued_for_another_plate_is_refused"),
    pytest.param(dict(card_class=2), {}, Reason.CLASS_MISMATCH,
                 id="a_card_issued_for_another_vehicle_class_is_refused"),
    pytest.param(dict(card_type=CardType.CREDIT, balance=500_00), {"credit_card_policy": "refuse"},
                 Reason.CREDIT_CARD_REFUSED, id="a_credit_card_is_refused_where_the_policy_refuses_them"),
    pytest.param(dict(b4_error=0x08), {}, Reason.CARD_READ_FAILED, id="a_card_that_cannot_be_read_is_refused"),
    pytest.param(dict(balance=FEE_0102_CLASS1 - 1), {}, Reason.INSUFFICIENT_BALANCE,
                 id="a_stored_value_card_one_fen_short_of_the_fee_is_refused"),
    pytest.param(dict(entry=None), {"missing_entry_policy": "refuse"}, Reason.NO_ENTRY_RECORD,
                 id="a_card_without_an_entry_record_is_refused_where_the_policy_refuses"),
    pytest.param(dict(entry=EntryRecord(network="ffff")), {"missing_entry_policy": "refuse"}, Reason.NO_ENTRY_RECORD,
                 id="a_card_with_an_unreadable_entry_record_is_refused_where_the_policy_refuses"),
    pytest.param(dict(entry=EntryRecord(station="0999")), {"missing_entry_policy": "refuse"}, Reason.NO_FEE,
                 id="an_entry_station_missing_from_the_fee_table_is_refused_where_the_policy_refuses"),
]


@pytest.mark.parametrize("fields,lane,reason", B4_REFUSALS)
async def test_a_card_that_cannot_pay_here_is_refused_at_b4_with_its_message_and_nothing_is_charged(
        tmp_path, fields, lane, reason):
    """卡片过期 / 卡片未启用 / 车卡不符 / 车型不符 / 记账卡暂停使用 / 余额不足 / 无入口信息 / 无收费标准."""
    scenario = CardOfAnotherVehicle(obu_id="a1b2c3d4", **fields)
    bench, shown = await refused_run(tmp_path, scenario, reason, lane=lane)
    assert_refused(bench, scenario, reason, shown, at="B4")
    if reason is Reason.INSUFFICIENT_BALANCE:  # the driver sees what it costs and what the card holds
        assert (shown.fee_fen, shown.balance_fen) == (FEE_0102_CLASS1, FEE_0102_CLASS1 - 1)


B3_REFUSALS = [
    pytest.param(dict(b3_error=0x04), Reason.VEHICLE_READ_FAILED,
                 id="an_obu_whose_vehicle_file_cannot_be_read_is_refused"),
    pytest.param(dict(vehicle_class=9), Reason.CLASS_INVALID, id="an_obu_with_an_unknown_vehicle_class_is_refused"),
]


@pytest.mark.parametrize("fields,reason", B3_REFUSALS)
async def test_a_vehicle_the_lane_cannot_classify_is_refused_at_b3_and_nothing_is_charged(tmp_path, fields, reason):
    """读取车辆信息失败 / 车型异常: C2 at B3, the card is never read."""
    scenario = obu(**fields)
    bench, shown = await refused_run(tmp_path, scenario, reason)
    assert_refused(bench, scenario, reason, shown, at="B3")
    assert bench.emu.sent("B4") == []


async def test_a_card_on_the_status_list_is_refused_at_b4_with_card_invalid(tmp_path):
    """卡片失效: the OBU is fine, the card (network + number) is listed."""
    listed = write_status_list(tmp_path / "status.bin", cards=["37012301000012345678"])
    scenario = obu("a1b2c3d4", card_network="3701", card_number="2301000012345678")
    bench, shown = await refused_run(tmp_path, scenario, Reason.CARD_LISTED, status_list=listed)
    assert_refused(bench, scenario, Reason.CARD_LISTED, shown, at="B4")


CHARGES = [
    pytest.param(dict(), {}, FEE_0102_CLASS1, id="a_car_from_0102_pays_the_fee_table_fee"),
    pytest.param(dict(entry=EntryRecord(station="0103")), {}, FEES.fee("3701-0103", 1),
                 id="a_car_from_0103_pays_that_stations_fee"),
    pytest.param(dict(vehicle_class=12, plate="鲁B88888", plate_colour=1, balance=500_00), {},
                 FEES.fee("3701-0102", 12), id="a_truck_pays_its_class_fee"),
    pytest.param(dict(entry=None), {"missing_entry_policy": "max_fee"}, FEES.max_fee(1),
                 id="a_card_without_an_entry_record_pays_the_maximum_fee_by_policy"),
    pytest.param(dict(entry=EntryRecord(network="ffff")), {"missing_entry_policy": "max_fee"}, FEES.max_fee(1),
                 id="a_card_with_an_unreadable_entry_record_pays_the_maximum_fee_by_policy"),
    pytest.param(dict(entry=EntryRecord(station="0999")), {"missing_entry_policy": "max_fee"}, FEES.max_fee(1),
                 id="an_entry_station_missing_from_the_fee_table_pays_the_maximum_fee_by_policy"),
    pytest.param(dict(balance=FEE_0102_CLASS1), {}, FEE_0102_CLASS1,
                 id="a_balance_exactly_equal_to_the_fee_is_enough"),
    pytest.param(dict(card_type=CardType.CREDIT, balance=0, debit_credit_card=False),
                 {"credit_card_policy": "allow"}, FEE_0102_CLASS1,
                 id="a_credit_card_with_no_balance_pays_where_the_policy_allows_them"),
]


@pytest.mark.parametrize("fields,lane,fee", CHARGES)
async def test_a_vehicle_that_can_pay_is_charged_once_journalled_shown_and_let_through(tmp_path, fields, lane, fee):
    """The fee comes from the fee table (or the maximum fee by policy); C6 goes out only
    after the intent is durable; the barrier rises only after the B5 result is durable."""
    scenario = obu("a1b2c3d4", **fields)
    at_c6: list[list[dict[str, Any]]] = []
    at_raise: list[list[dict[str, Any]]] = []
    journal = tmp_path / "journal.db"

    def hook(o: Observation) -> None:
        if o.kind == "sent" and o.detail["type"] == "C6":
            at_c6.append(read_journal(journal))
        elif o.kind == "barrier" and o.detail["command"] == "raise":
            at_raise.append(read_journal(journal))

    async with lane_bench(tmp_path, [scenario], lane=lane, hooks=[hook]) as bench:
        await bench.decided("barrier")
        shown = await bench.display_shows("欢迎通行")
        # The lane answered the B5 with C1: the RSU completed the transaction.
        await bench.until(lambda: [e for e in bench.emu.events if e.kind == "transaction_end"
                                   and e.detail["why"] == "completed"], what="the C1 after B5")
    # The card paid exactly the fee, once.
    [charge] = bench.emu.charges
    assert charge.amount == fee and len(bench.c6_for(scenario.obu_id)) == 1
    debited = 0 if scenario.card_type == CardType.CREDIT and not scenario.debit_credit_card else fee
    assert bench.emu.balance(scenario.obu_id) == scenario.balance - debited
    # Intent durable before C6, charge durable before the barrier rose.
    assert [[(r["state"], r["amount"]) for r in rows] for rows in at_c6] == [[("intent", fee)]]
    assert [[r["state"] for r in rows] for rows in at_raise] == [["charged"]]
    [row] = bench.rows()
    assert (row["kind"], row["state"], row["reason"], row["amount"]) == ("exit_charge", "charged", "charged", fee)
    assert row["tac"] == charge.tac.hex() and row["message"] == message(Reason.CHARGED)
    assert bench.executor is not None and bench.executor.machine.counters[Reason.CHARGED] == 1
    # The display shows the fee (and the balance after), and it was updated before the barrier rose.
    assert (shown.fee_fen, shown.balance_fen) == (fee, scenario.balance - debited)
    kinds = [(o.kind, o.detail.get("line1") or o.detail.get("command")) for o in bench.seen]
    assert kinds.index(("display", "欢迎通行")) < kinds.index(("barrier", "raise"))
    entry = fields.get("entry", EntryRecord())
    assert row["entry_station"] == (None if entry is None or entry.network == "ffff" else f"3701-{entry.station}")


# -- the charge: B5 errors, lost B5, re-fetch ------------------------------------------------------------

async def test_a_b5_error_before_the_debit_ends_the_intent_as_not_charged(tmp_path):
    """B5 ErrorCode 17 (purchase refused by the card): the card was never debited — 交易失败,
    the intent ends refused/charge_failed, no alarm, the barrier stays down."""
    scenario = obu("a1b2c3d4", b5_error=0x17)
    async with lane_bench(tmp_path, [scenario]) as bench:
        await bench.until(lambda: bench.c2_for(scenario.obu_id), what="the C2 after the B5 error")
        shown = await bench.display_shows("交易失败")
        await bench.journal_row(lambda r: r["state"] == "refused")
    assert bench.emu.charges == [] and bench.emu.balance(scenario.obu_id) == scenario.balance
    [c2] = bench.c2_for(scenario.obu_id)
    assert answered_frame(bench, bench.emu.log.index(c2), scenario.obu_id) == "B5"
    [row] = bench.rows()
    assert (row["kind"], row["state"], row["reason"]) == ("exit_charge", "refused", "charge_failed")
    assert row["amount"] == FEE_0102_CLASS1 and "17" in row["detail"] and row["reconciled"] == 1
    ex = bench.executor
    assert ex is not None and ex.machine.counters[Reason.CHARGE_FAILED] == 1
    assert ex.machine.counters[Reason.OUTCOME_UNKNOWN] == 0
    assert shown.line2 == MANUAL and {"command": "raise"} not in bench.observed("barrier")


UNKNOWNS = [
    pytest.param("national", dict(b5_error=0x19), 0, "B5 error 19", True,
                 id="national_a_b5_error_after_a_possible_debit_is_unknown"),
    pytest.param("national", dict(lost_b5=True), 1, "no B5 within the timeout", False,
                 id="national_a_lost_b5_is_unknown_and_the_card_did_pay"),
    pytest.param("network2019", dict(b5_error=0x19), 0, "B5 error 36", True,
                 id="network2019_a_b5_error_is_refetched_and_stays_unknown_when_the_refetch_fails"),
    pytest.param("network2019", dict(lost_b5=True, refetch_error=0x35), 1, "B5 error 35", True,
                 id="network2019_a_lost_b5_whose_refetch_gets_no_answer_is_unknown"),
]


@pytest.mark.parametrize("profile,fields,charges,detail,stopped", UNKNOWNS)
async def test_a_charge_whose_outcome_the_lane_cannot_know_is_journalled_unknown_and_the_barrier_stays_down(
        tmp_path, profile, fields, charges, detail, stopped):
    """交易异常 + alarm; re-fetch (C8) where the profile has it; never a second C6."""
    scenario = obu("a1b2c3d4", **fields)
    async with lane_bench(tmp_path, [scenario], profile=profile) as bench:
        await bench.decided("unknown")
        shown = await bench.display_shows("交易异常")
        if stopped:
            await bench.until(lambda: bench.c2_for(scenario.obu_id), what="the C2 after the B5 error")
    assert len(bench.emu.charges) == charges
    assert len(bench.c6_for(scenario.obu_id)) == 1
    assert len(bench.emu.received("C8")) == (1 if profile == "network2019" else 0)
    [row] = bench.rows()
    assert (row["kind"], row["state"], row["reason"]) == ("exit_charge", "unknown", "outcome_unknown")
    assert detail in row["detail"] and row["message"] == message(Reason.OUTCOME_UNKNOWN)
    ex = bench.executor
    assert ex is not None and ex.machine.counters[Reason.OUTCOME_UNKNOWN] == 1
    assert any(code == "outcome_unknown" for _, code, _ in ex.alarms)
    assert shown.line2 == MANUAL and {"command": "raise"} not in bench.observed("barrier")


async def test_a_lost_b5_on_network2019_is_refetched_with_c8_and_the_charge_completes_once(tmp_path):
    """No B5 within b5_timeout → C8 → the RSU's B5 of that purchase (same TAC) → charged."""
    scenario = obu("a1b2c3d4", lost_b5=True)
    async with lane_bench(tmp_path, [scenario], profile="network2019") as bench:
        await bench.decided("barrier")
        shown = await bench.display_shows("欢迎通行")
    [charge] = bench.emu.charges
    assert len(bench.emu.received("C8")) == 1 and len(bench.c6_for(scenario.obu_id)) == 1
    [row] = bench.rows()
    assert (row["state"], row["amount"], row["tac"]) == ("charged", FEE_0102_CLASS1, charge.tac.hex())
    ex = bench.executor
    assert ex is not None and ex.machine.counters["tac_refetch"] == 1 and ex.machine.counters[Reason.CHARGED] == 1
    assert ex.machine.counters[Reason.OUTCOME_UNKNOWN] == 0
    assert shown.fee_fen == FEE_0102_CLASS1


# -- seen again -------------------------------------------------------------------------------------------

def second_report_c2(bench: LaneBench, obu_id: str) -> list[Any]:
    """The C2s that answered a B2 of ``obu_id`` (the lane's answer to the RSU reporting it again)."""
    return [c for c in bench.c2_for(obu_id) if answered_frame(bench, bench.emu.log.index(c), obu_id) == "B2"]


async def test_an_obu_reported_again_after_paying_is_let_on_on_its_record_and_not_charged_a_second_time(tmp_path):
    """The RSU reports the OBU again 0.3 s after it paid: C2 at B2, no second C6, a
    paid_on_record event in the journal."""
    scenario = obu("a1b2c3d4", redetect=True)
    async with lane_bench(tmp_path, [scenario]) as bench:
        await bench.journal_row(lambda r: r["seq"] == 2, what="the lane's decision on the second report")
        await bench.until(lambda: second_report_c2(bench, scenario.obu_id), what="the C2 to the second report")
    assert len(bench.emu.sent("B2")) == 2
    assert len(bench.emu.charges) == 1 and len(bench.c6_for(scenario.obu_id)) == 1
    assert len(bench.c2_for(scenario.obu_id)) == 1
    first, again = bench.rows()
    assert first["state"] == "charged"
    assert (again["kind"], again["state"], again["reason"]) == ("paid_on_record", "event", "paid_on_record")
    assert again["obu_id"] == scenario.obu_id and again["amount"] is None
    ex = bench.executor
    assert ex is not None and ex.machine.counters[Reason.PAID_ON_RECORD] == 1
    assert ex.machine.counters[Reason.CHARGED] == 1


@pytest.mark.parametrize("fields,charges", [
    pytest.param(dict(lost_b5=True), 1, id="its_b5_was_lost_and_the_card_did_pay"),
    pytest.param(dict(b5_error=0x19), 0, id="its_b5_was_an_error_and_the_card_did_not_pay"),
])
async def test_an_obu_reported_again_after_an_unknown_outcome_is_neither_charged_again_nor_waved_through(
        tmp_path, fields, charges):
    """Its charge is unknown (交易异常 请走人工车道): reported again, it gets no second C6 —
    it may have paid — and no free pass either — it may not have: C2 at B2, the display
    repeats 交易异常, the barrier stays down, reconciliation decides."""
    scenario = obu("a1b2c3d4", redetect=True, **fields)
    async with lane_bench(tmp_path, [scenario]) as bench:
        await bench.journal_row(lambda r: r["seq"] == 2, what="the lane's decision on the second report")
        await bench.until(lambda: second_report_c2(bench, scenario.obu_id), what="the C2 to the second report")
        shown = await bench.display_shows("交易异常")
    assert len(bench.emu.sent("B2")) == 2
    assert len(bench.emu.charges) == charges and len(bench.c6_for(scenario.obu_id)) == 1
    first, again = bench.rows()
    assert (first["state"], first["reason"]) == ("unknown", "outcome_unknown")
    assert (again["kind"], again["state"], again["reason"]) == ("outcome_unknown", "event", "outcome_unknown")
    assert again["message"] == message(Reason.OUTCOME_UNKNOWN)
    ex = bench.executor
    assert ex is not None and ex.machine.counters["seen_again_unknown"] == 1
    assert ex.machine.counters[Reason.PAID_ON_RECORD] == 0 and ex.machine.counters[Reason.OUTCOME_UNKNOWN] == 1
    assert [o["line1"] for o in bench.observed("display")][-1] == "交易异常" and shown.line2 == MANUAL
    assert {"command": "raise"} not in bench.observed("barrier")


# -- entry lanes --------------------------------------------------------------------------------------------

async def test_an_entry_lane_writes_the_entry_record_instead_of_charging(tmp_path):
    """direction = "entry": C6 with no money writes this station into 0019; no balance check."""
    scenario = obu("a1b2c3d4", entry=None, balance=0)
    async with lane_bench(tmp_path, [scenario], lane={"direction": "entry"}) as bench:
        await bench.decided("barrier")
        shown = await bench.display_shows("欢迎通行")
    [write] = bench.emu.charges
    assert write.amount == 0 and bench.emu.balance(scenario.obu_id) == 0
    assert write.station[:5] == bytes.fromhex("3701" + "0201") + bytes((3,))  # network, station, lane 3
    assert bench.emu.received("C0")[0].message.lane_mode == 3  # type: ignore[union-attr]
    [row] = bench.rows()
    assert (row["kind"], row["state"], row["reason"], row["amount"]) == ("entry_write", "entry_written",
                                                                         "entry_written", 0)
    assert row["tac"] == write.tac.hex()
    assert bench.executor is not None and bench.executor.machine.counters[Reason.ENTRY_WRITTEN] == 1
    assert bench.executor.machine.counters[Reason.CHARGED] == 0
    assert shown.fee_fen is None


# -- the IO module: a vehicle following the one that paid ------------------------------------------------

async def test_a_car_following_the_one_that_paid_is_reported_and_the_barrier_never_comes_down_on_either(tmp_path):
    """跟车违章: the paying car leaves the safety loop, the tailgater 3 m behind it enters
    before the barrier closed. The lane raises the alarm, journals a follow_car event,
    keeps the arm up until the tailgater has left too, then lowers it."""
    now = time.monotonic()
    model = LaneModel(now=now, geometry=LaneGeometry(spawn_x=-8.0, safety_loop=(-1.0, 1.0), exit_x=8.0),
                      barrier=BarrierSpec(travel_time=0.4))
    scenario = obu("a1b2c3d4")
    async with lane_bench(tmp_path, [scenario], model=model, barrier={"hold_off_s": 1.0, "release_after_s": 0.5},
                          settings=dataclasses.replace(FAST_RSU, redetect_interval=30.0)) as bench:
        payer = model.add_vehicle(time.monotonic(), speed=6.0, vehicle_id="payer")
        tailgater = model.add_vehicle(time.monotonic(), speed=6.0, follow_gap=3.0, vehicle_id="tailgater",
                                      obeys_light=False)  # it goes through on the red light
        await bench.journal_row(lambda r: r["kind"] == "follow_car", what="the follow-car event")
        shown = await bench.display_shows("跟车违章")
        await bench.until(lambda: len(model.departed) == 2, what="both cars to leave the lane")
        await bench.until(lambda: model.barrier_position == 0.0, what="the barrier to close behind them")
        assert not model.true_state(Signal.SAFETY_LOOP)
    assert model.violations == ()
    assert [v for v, _ in model.departed] == [payer, tailgater]
    assert len(bench.emu.charges) == 1
    charged, follow = bench.rows()
    assert charged["state"] == "charged"
    assert (follow["kind"], follow["state"], follow["reason"]) == ("follow_car", "event", "follow_car")
    ex = bench.executor
    assert ex is not None and ex.machine.counters[Reason.FOLLOW_CAR] == 1
    assert any(code == "follow_car" for _, code, _ in ex.alarms)
    assert shown.line2 == "请停车缴费"
