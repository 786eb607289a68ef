"""The daemon killed in the middle of a charge, and started again on the same journal.

``laned run --config FILE`` runs as a child process against the emulated RSU on a pty
(this process). The test SIGKILLs it at a chosen point of a transaction — found by
reading the journal read-only, as an operator's tool would — starts it again on the same
journal and checks rule 2 of ARCHITECTURE.md across the crash: the intent is not lost,
the card is not charged twice, the row ends in the right state, and the restarted daemon
says what it recovered.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from laned.config import load_config
from laned.sim.rsu_emulator import EmulatorSettings, RsuEmulator, RsuState
from laned.sim.rsu_scenario import ObuScenario

from lane_fixtures import LanedProcess as Daemon
from lane_fixtures import config_data, poll_until, read_journal, to_toml

pytestmark = pytest.mark.hil

T = 20.0  # a Python daemon starting on a loaded 2-core box
# The RSU never re-reports an OBU by itself here: the test puts it back into the zone
# once the restarted daemon is up. No heartbeats: nothing piles up in the pty meanwhile.
SETTINGS = EmulatorSettings(answer_timeout=1.1, heartbeat_interval=None, redetect_interval=60.0)
OBU = "a1b2c3d4"


def write_config(tmp_path: Path, rsu_port: str, profile: str = "national") -> Path:
    path = tmp_path / "laned.toml"
    # b5_timeout_s at its maximum: the window in which the daemon holds an intent without
    # a B5 before it marks it unknown itself — the test kills it inside that window.
    path.write_text(to_toml(config_data(tmp_path / "journal.db", rsu_port, profile=profile,
                                        lane={"b5_timeout_s": 1.1, "transaction_timeout_s": 5.0},
                                        log={"level": "info"})), encoding="utf-8")
    load_config(path)  # the file is valid as laned run reads it
    return path


def rows(tmp_path: Path) -> list[dict[str, Any]]:
    return read_journal(tmp_path / "journal.db")


async def until(daemon: Daemon, predicate: Any, what: str, emu: RsuEmulator) -> Any:
    def check() -> Any:
        daemon.check_running()
        return predicate()

    def describe() -> str:
        frames = ", ".join(f"{e.direction}:{e.name}{'(' + e.note + ')' if e.note else ''}" for e in emu.log[-15:])
        return (f"emulator {emu.state}, charges {len(emu.charges)}; frames {frames}\njournal "
                f"{[(r['seq'], r['state'], r['reason']) for r in rows(daemon.config.parent)]}\n"
                f"daemon log:\n{daemon.log()}")

    return await poll_until(check, T, what, describe)


async def initialised(daemon: Daemon, emu: RsuEmulator, inits: int) -> None:
    """The daemon opened the pty, sent C0 and the C1 that starts the search."""
    await until(daemon, lambda: len(emu.received("C0")) >= inits and emu.state is RsuState.SEARCHING
                and emu.log[-1].name == "C1", f"daemon C0 number {inits} and C1", emu)


@asynccontextmanager
async def two_daemons(tmp_path: Path, emu: RsuEmulator) -> AsyncIterator[tuple[Daemon, Daemon]]:
    """The daemon that gets killed and the one that restarts on its journal; neither outlives the test."""
    config = write_config(tmp_path, emu.path, emu.profile.name)
    first, second = Daemon(config, tmp_path / "first.log"), Daemon(config, tmp_path / "second.log")
    try:
        yield first, second
    finally:
        await first.ensure_dead()
        await second.ensure_dead()


async def report_again(daemon: Daemon, emu: RsuEmulator, scenario: ObuScenario, tmp_path: Path) -> dict[str, Any]:
    """The same OBU (same card) is back in the RSU's zone; returns the lane's journal row for it."""
    emu.add_obu(dataclasses.replace(scenario, lost_b5=False), arrive_in=0.0)
    return await until(daemon, lambda: next((r for r in rows(tmp_path) if r["seq"] > 1), None),
                       "the lane's decision about the OBU reported again", emu)


async def test_a_daemon_killed_between_the_intent_and_b5_recovers_the_intent_as_unknown_and_never_charges_twice(
        tmp_path):
    # The card pays, but its B5 never reaches the lane: the daemon holds a bare intent.
    scenario = ObuScenario(OBU, lost_b5=True)
    async with RsuEmulator([scenario], profile="national", settings=SETTINGS) as emu:
        async with two_daemons(tmp_path, emu) as (first, second):
            await first.start()
            await until(first, lambda: [r for r in rows(tmp_path) if r["state"] == "intent"], "the intent", emu)
            await until(first, lambda: emu.charges, "the purchase at the card", emu)
            await first.kill()
            [row] = rows(tmp_path)
            assert (row["seq"], row["kind"], row["state"], row["obu_id"]) == (1, "exit_charge", "intent", OBU)
            # The lane's last word was the C6: it never saw a B5 to answer.
            assert [e.name for e in emu.log if e.direction == "rx"][-1] == "C6" and len(emu.received("C6")) == 1

            await second.start()
            await initialised(second, emu, 2)
            # Recovery ran before the lane started: the intent is unknown, for reconciliation.
            [row] = rows(tmp_path)
            assert (row["seq"], row["state"], row["reason"]) == (1, "unknown", "outcome_unknown")
            assert "stopped between C6 and B5" in row["detail"] and row["amount"] == 3500
            log = second.log()
            assert "recovered after an unclean stop" in log and "unknown=(1,)" in log
            assert "seq 1 (OBU a1b2c3d4" in log and "marked unknown for reconciliation" in log

            # The RSU reports the OBU again: it may have paid, so no second C6; it may not
            # have, so no free pass either — the re-detection window survived the restart.
            again = await report_again(second, emu, scenario, tmp_path)
            assert (again["kind"], again["state"], again["obu_id"]) == ("outcome_unknown", "event", OBU)
            await until(second, lambda: [e for e in emu.received("C2") if e.obu_id == OBU], "the C2", emu)
            assert len(emu.charges) == 1 and len(emu.received("C6")) == 1
            assert await second.stop() == 0
            assert [r["state"] for r in rows(tmp_path)] == ["unknown", "event"]


async def test_a_daemon_killed_after_the_b5_was_journalled_stays_charged_once_and_remembers_who_paid(tmp_path):
    scenario = ObuScenario(OBU)
    async with RsuEmulator([scenario], profile="national", settings=SETTINGS) as emu:
        async with two_daemons(tmp_path, emu) as (first, second):
            await first.start()
            await until(first, lambda: [r for r in rows(tmp_path) if r["state"] == "charged"], "the charge", emu)
            await first.kill()
            [charge] = emu.charges
            [row] = rows(tmp_path)
            assert (row["state"], row["amount"], row["tac"]) == ("charged", 3500, charge.tac.hex())

            await second.start()
            await initialised(second, emu, 2)
            assert "recovered after an unclean stop" not in second.log()  # nothing was left open
            # Re-detection survives the restart (MachineJournal.recent_paid): no second C6.
            again = await report_again(second, emu, scenario, tmp_path)
            assert (again["kind"], again["state"], again["obu_id"]) == ("paid_on_record", "event", OBU)
            await until(second, lambda: [e for e in emu.received("C2") if e.obu_id == OBU], "the C2", emu)
            assert len(emu.charges) == 1 and len(emu.received("C6")) == 1
            assert await second.stop() == 0
            assert "link lost" not in second.log()  # a clean stop is not reported as a fault
            assert [(r["seq"], r["state"], r["tac"]) for r in rows(tmp_path)] == [(1, "charged", charge.tac.hex()),
                                                                                  (2, "event", None)]


async def test_on_network2019_a_charge_left_unknown_by_a_crash_is_settled_by_c8_when_the_obu_is_back(tmp_path):
    """Killed between C6 and B5; after the restart the OBU is reported again. The lane asks
    it for its last purchase (C8): the TAC proves the charge, the journal row is settled as
    charged and the vehicle goes out on it — one charge at the card, one C6."""
    scenario = ObuScenario(OBU, lost_b5=True)
    async with RsuEmulator([scenario], profile="network2019", settings=SETTINGS) as emu:
        async with two_daemons(tmp_path, emu) as (first, second):
            await first.start()
            await until(first, lambda: [r for r in rows(tmp_path) if r["state"] == "intent"], "the intent", emu)
            await until(first, lambda: emu.charges, "the purchase at the card", emu)
            await first.kill()
            [charge] = emu.charges

            await second.start()
            await initialised(second, emu, 2)
            [row] = rows(tmp_path)
            assert row["state"] == "unknown"
            emu.add_obu(dataclasses.replace(scenario, lost_b5=False), arrive_in=0.0, keep_card=True)
            await until(second, lambda: rows(tmp_path)[0]["state"] == "charged", "the charge settled by C8", emu)
            [row] = rows(tmp_path)
            assert (row["seq"], row["state"], row["tac"], row["amount"]) == (1, "charged", charge.tac.hex(), 3500)
            assert "reconciled with TAC" in row["detail"]
            assert len(emu.received("C8")) == 1 and len(emu.received("C6")) == 1 and len(emu.charges) == 1
            assert await second.stop() == 0
