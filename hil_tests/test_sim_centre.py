"""`laned sim` with the centre: a private Mosquitto (TLS, ACL) and the reference centre, so a
new user sees the lane's transactions arrive at the centre; `--no-centre` runs the lane alone.

Each scenario runs the real command in a subprocess, as `./dev sim` does, and checks what
it says against the files it leaves: the lane's journal and the centre's ledger.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from laned.centre import Ledger
from laned.sim.broker import MOSQUITTO_ENV

pytestmark = [pytest.mark.hil, pytest.mark.timeout(60)]

LANE_ID = "SIM-0201-03"  # laned/data/sim.toml
CENTRE_FIELDS = ("centre_received", "centre_duplicates_dropped", "centre_gaps", "centre_pending_reconciliations",
                 "outbox_backlog")


def scenario(tmp_path: Path) -> Path:
    """A paying car, a refused one (low balance) and another paying car: three final rows at least."""
    path = tmp_path / "three.json"
    path.write_text(json.dumps([
        {"plate": "鲁A12345", "obu_id": "a1b2c3d4", "card_number": "37012301000012345678", "arrive_after": 0.5},
        {"plate": "鲁B88888", "obu_id": "0badcafe", "card_number": "37012301000099990001", "balance": 500,
         "kind": "low_balance", "arrive_after": 1.0},
        {"plate": "鲁C55555", "obu_id": "c0ffee01", "card_number": "37012301000055550001", "arrive_after": 1.0},
    ], ensure_ascii=False), encoding="utf-8")
    return path


def run_sim(*args: str, env: dict[str, str] | None = None, timeout: float = 55) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "laned.cli", "sim", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


def final_rows(journal: Path) -> int:
    """Rows of the lane's journal that go to the centre: every row but an open intent."""
    db = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        return int(db.execute("SELECT COUNT(*) FROM transactions WHERE state != 'intent'").fetchone()[0])
    finally:
        db.close()


def brokers_of(state: Path) -> list[int]:
    """Pids of mosquitto processes started with this run's configuration."""
    conf = str(state / "centre" / "mosquitto" / "mosquitto.conf").encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile, or not ours to read
        if conf in cmdline.split(b"\0"):
            found.append(int(proc.name))
    return found


def test_every_journalled_row_arrives_at_the_centre_once_and_the_backlog_drains(tmp_path):
    state = tmp_path / "state"
    done = run_sim("--scenario", str(scenario(tmp_path)), "--json", "--state-dir", str(state))
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    rows = final_rows(state / "journal.db")
    assert rows >= 3  # two charges, a refusal (and the lane's events)
    assert summary["centre_received"] == rows
    assert summary["centre_duplicates_dropped"] == 0
    assert summary["centre_gaps"] == []
    assert summary["outbox_backlog"] == 0
    assert summary["centre_pending_reconciliations"] == 0
    assert summary["list_versions"] == {"status_list": 1, "fee_table": 1}
    # The centre's own ledger says the same: every seq of the lane, none missing.
    with Ledger(state / "centre" / "centre.db") as ledger:
        counts = ledger.counts(LANE_ID)
    assert counts.stored == rows and counts.highest_seq == rows and counts.gaps == ()
    # A throw-away PKI with private keys for the owner only; the broker is gone.
    keys = sorted((state / "centre" / "pki").glob("*.key"))
    assert [k.name for k in keys] == ["centre.key", "lane.key", "server.key"]
    assert all(stat.S_IMODE(k.stat().st_mode) == 0o600 for k in keys)
    assert brokers_of(state) == []


def listed_scenario(tmp_path: Path, name: str, first: int) -> Path:
    """A paying car, a car whose card is on the status list, one whose OBU is: the list
    decides two of the three outcomes. OBUs and cards are numbered from ``first`` on (a
    --resume run's vehicles must not be the previous run's: the lane remembers payments)."""
    path = tmp_path / name
    path.write_text(json.dumps([
        {"plate": "鲁A12345", "obu_id": f"a1b2{first:04x}", "card_number": f"3701230100{first:010d}",
         "arrive_after": 0.5},
        {"plate": "鲁B88888", "obu_id": f"a1b2{first + 1:04x}", "card_number": f"3701230100{first + 1:010d}",
         "kind": "listed_card", "arrive_after": 1.0},
        {"plate": "鲁C55555", "obu_id": f"a1b2{first + 2:04x}", "card_number": f"3701230100{first + 2:010d}",
         "kind": "listed_obu", "arrive_after": 1.0},
    ], ensure_ascii=False), encoding="utf-8")
    return path


def status_list_alarms(log: str) -> list[str]:
    """Lines of laned.log about an old or refused status list (none in a clean run)."""
    return [line for line in log.splitlines() if "status_list_old" in line or "list_update_refused" in line
            or " is old " in line]


def test_the_lane_takes_the_status_list_signed_from_the_centre_and_never_calls_it_old(tmp_path):
    state = tmp_path / "state"
    done = run_sim("--scenario", str(listed_scenario(tmp_path, "listed.json", 0x100)), "--json",
                   "--state-dir", str(state))
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    # The list decided as a hand-placed one did: every vehicle got what it should.
    assert summary["unexpected"] == 0 and summary["charged"] == 1
    assert summary["refused"] == {"card_listed": 1, "obu_listed": 1}
    assert summary["list_versions"] == {"status_list": 1, "fee_table": 1}
    # Taken through the download path: saved with the signed manifest the centre published.
    meta = json.loads((state / "status_list.bin.manifest.json").read_text())
    assert (meta["manifest"]["version"], meta["manifest"]["key_id"]) == (1, "sim-centre")
    log = (state / "laned.log").read_text(encoding="utf-8")
    assert status_list_alarms(log) == []
    assert "status list: version 1 in use (2 entries)" in log
    # What the lane told the centre: version 1 in use, and no status_list_old ever.
    with Ledger(state / "centre" / "centre.db") as ledger:
        versions = ledger.last_payload(LANE_ID, "versions")
        alarms = [code for code, _, _, _ in ledger.alarms(LANE_ID)]
    assert versions is not None and versions["status_list"]["version"] == 1
    assert "status_list_old" not in alarms and "list_update_refused" not in alarms


def test_a_resumed_run_keeps_the_centres_list_and_takes_the_next_version(tmp_path):
    state = tmp_path / "state"
    first = run_sim("--scenario", str(listed_scenario(tmp_path, "first.json", 0x100)), "--json",
                    "--state-dir", str(state))
    assert first.returncode == 0, first.stderr
    again = run_sim("--scenario", str(listed_scenario(tmp_path, "again.json", 0x200)), "--json",
                    "--state-dir", str(state), "--resume")
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    # This run's listed vehicles are refused: version 2 holds them, not version 1's.
    assert summary["unexpected"] == 0 and summary["refused"] == {"card_listed": 1, "obu_listed": 1}
    assert summary["list_versions"] == {"status_list": 2, "fee_table": 1}
    meta = json.loads((state / "status_list.bin.manifest.json").read_text())
    assert meta["manifest"]["version"] == 2
    # The lane restarted with version 1 and its manifest (fresh), then took version 2.
    assert status_list_alarms((state / "laned.log").read_text(encoding="utf-8")) == []


def test_the_plain_summary_says_what_the_centre_received(tmp_path):
    state = tmp_path / "state"
    done = run_sim("-n", "2", "--seed", "3", "--no-live", "--state-dir", str(state))
    assert done.returncode == 0, done.stderr
    rows = final_rows(state / "journal.db")
    assert f"centre: {rows} transactions received, 0 duplicates dropped, backlog 0" in done.stdout


def test_no_centre_runs_the_lane_alone_and_starts_no_broker(tmp_path):
    state = tmp_path / "state"
    # Were a broker started, this mosquitto would be looked for and not found (exit 2).
    done = run_sim("--scenario", str(scenario(tmp_path)), "--json", "--no-centre", "--state-dir", str(state),
                   env={MOSQUITTO_ENV: str(tmp_path / "no-such-mosquitto")})
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert {field: summary[field] for field in CENTRE_FIELDS} == dict.fromkeys(CENTRE_FIELDS)
    assert summary["charged"] == 2 and summary["list_versions"] == {"status_list": 1, "fee_table": 1}
    assert not (state / "centre").exists()
    plain = run_sim("-n", "1", "--no-live", "--no-centre", env={MOSQUITTO_ENV: str(tmp_path / "no-such-mosquitto")})
    assert plain.returncode == 0, plain.stderr
    assert "centre:" not in plain.stdout


def test_without_mosquitto_the_sim_says_what_to_do_and_exits_2(tmp_path):
    state = tmp_path / "state"
    done = run_sim("-n", "2", "--json", "--state-dir", str(state), env={MOSQUITTO_ENV: str(tmp_path / "none")},
                   timeout=30)
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "mosquitto not found" in lines[0] and "./dev sim" in lines[0] and "--no-centre" in lines[0]
    assert not (state / "journal.db").exists()  # said before anything started


def test_ctrl_c_stops_the_broker_too(tmp_path):
    state = tmp_path / "state"
    proc = subprocess.Popen([sys.executable, "-m", "laned.cli", "sim", "-n", "12", "--json", "--state-dir",
                             str(state)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not brokers_of(state) or not (state / "journal.db").exists():
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the broker and the lane did not start within 30 s"
            time.sleep(0.1)
        broker = brokers_of(state)
        time.sleep(2.0)  # some traffic
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    summary = json.loads(out)
    assert summary["interrupted"] is True
    assert isinstance(summary["centre_received"], int) and isinstance(summary["outbox_backlog"], int)
    assert brokers_of(state) == [] and not any(Path(f"/proc/{pid}").exists() for pid in broker)
