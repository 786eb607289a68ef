"""The lane's time zone (``[lane] timezone``) for the daemon's own date decisions.

The industrial PC's own time zone is UTC here (the test sets ``TZ``), the lane is in
Asia/Shanghai, and the instant is 2026-03-01 17:00 UTC — 2026-03-02 01:00 at the lane.
The lane must judge by the lane's day: an OBU whose contract ran out on 2026-03-01 is
expired, one valid from 2026-03-02 is good, the C6 purchase time is 01:00 (lane time),
the journal's times say which instant they are, the fee table's validity runs on lane
time, and the health loop's clock check sees no jump. The clock is the daemon's own
(:func:`laned.app.lane_clock`) with a fixed "now" injected: nothing sleeps.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from laned.app import lane_clock, load_fees
from laned.config import DEFAULT_TIMEZONE, ConfigError, load_config, load_sim_config
from laned.executor import LaneExecutor
from laned.health.alarms import AlarmRegistry
from laned.health.checks import ClockWatch, HealthSettings
from laned.health.monitor import HealthMonitor
from laned.journal import Journal, MachineJournal, TxState
from laned.lane.dialect import Dialect
from laned.lane.events import Device, DeviceStatus, LinkUp
from laned.lane.machine import LaneMachine, LaneSettings
from laned.lane.outcomes import Reason
from laned.protocol import get_profile
from tests.lane_harness import Fees, Lane, card_file

UTC = dt.UTC
SHANGHAI = ZoneInfo("Asia/Shanghai")
INSTANT = dt.datetime(2026, 3, 1, 17, 0, 0, tzinfo=UTC)  # 2026-03-02 01:00 in Shanghai
LANE_NOW = dt.datetime(2026, 3, 2, 1, 0, 0)  # the same instant, lane time, naive
HOST_DAY, LANE_DAY = dt.date(2026, 3, 1), dt.date(2026, 3, 2)
EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "laned.example.toml"


@pytest.fixture(params=["UTC", "America/Los_Angeles"])
def host_tz(request: pytest.FixtureRequest) -> Iterator[str]:
    """The PC's own time zone (``TZ``) for one test; restored afterwards."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = request.param
    time.tzset()
    try:
        yield request.param
    finally:
        if old is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = old
        time.tzset()


def fixed(at: dt.datetime = INSTANT) -> list[dt.datetime]:
    """A settable "now" for the lane clock: ``clock[0]``."""
    return [at]


def wall_at(now: list[dt.datetime]) -> Callable[[], dt.datetime]:
    return lane_clock(DEFAULT_TIMEZONE, now=lambda: now[0])


# -- the clock ----------------------------------------------------------------------------------

def test_the_lane_clock_reads_the_lanes_day_not_the_hosts(host_tz):
    wall = wall_at(fixed())()
    assert INSTANT.astimezone().date() == HOST_DAY  # what a host-local clock would have said
    assert wall.date() == LANE_DAY and wall.replace(tzinfo=None) == LANE_NOW
    assert wall.utcoffset() == dt.timedelta(hours=8) and wall == INSTANT  # the same instant


def test_the_default_lane_clock_is_the_system_time_in_the_lanes_zone(host_tz):
    before = dt.datetime.now(UTC)
    wall = lane_clock("Asia/Shanghai")()
    assert wall.tzinfo is not None and wall.utcoffset() == dt.timedelta(hours=8)
    assert before <= wall <= dt.datetime.now(UTC)


def test_an_injected_naive_now_is_refused():
    with pytest.raises(ValueError, match="naive"):
        lane_clock(DEFAULT_TIMEZONE, now=lambda: dt.datetime(2026, 3, 1, 17))()


# -- the lane's decisions, through the executor ------------------------------------------------------

class Rsu:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send_nowait(self, message: Any, reply_to: Any = None) -> None:
        self.sent.append(message)


class Rows:
    """The executor's journal port: what it was asked to write, and when."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, Any, dt.datetime]] = []

    def record_intent(self, record: dict[str, Any], now: dt.datetime) -> int:
        self.rows.append(("intent", record, now))
        return len(self.rows)

    def record_refusal(self, record: dict[str, Any], now: dt.datetime) -> None:
        self.rows.append(("refused", record["reason"], now))

    def record_event(self, kind: str, record: dict[str, Any], now: dt.datetime) -> None:
        self.rows.append(("event", kind, now))


def lane(journal: Any, wall: Callable[[], dt.datetime]) -> tuple[Lane, Rsu]:
    """A lane machine behind the executor with the lane clock; ``frames.b2()`` … feed it."""
    machine = LaneMachine(LaneSettings(), Dialect(get_profile("national")), fees=Fees())
    rsu = Rsu()
    ex = LaneExecutor(machine, rsu, None, None, journal, monotonic=lambda: 100.0, wall=wall)
    frames = Lane()  # builds the frames; they go straight into the executor
    frames.feed = lambda event: ex.handle(event) or []  # type: ignore[method-assign]
    return frames, rsu


def sent(rsu: Rsu) -> list[str]:
    return [m.type_name for m in rsu.sent]


@pytest.mark.parametrize(("b2", "b4", "reason"), [
    pytest.param({"expiry": HOST_DAY}, None, Reason.OBU_EXPIRED, id="obu-contract-expired-on-the-hosts-day"),
    pytest.param({}, {"expiry": HOST_DAY}, Reason.CARD_EXPIRED, id="card-expired-on-the-hosts-day"),
])
def test_a_contract_that_ran_out_on_the_hosts_day_is_expired_at_the_lane(host_tz, b2, b4, reason):
    journal = Rows()
    frames, rsu = lane(journal, wall_at(fixed()))
    frames.b2(**b2)
    if b4 is not None:
        frames.b3()
        frames.b4(card=card_file(**b4))
    assert sent(rsu)[-1] == "C2" and "C6" not in sent(rsu)
    assert [(kind, what) for kind, what, _ in journal.rows] == [("refused", reason.value)]


@pytest.mark.parametrize(("b2", "card"), [
    pytest.param({"start": LANE_DAY}, {}, id="obu-contract-from-the-lanes-day"),
    pytest.param({}, {"start": LANE_DAY}, id="card-valid-from-the-lanes-day"),
])
def test_a_contract_valid_from_the_lanes_day_is_charged_with_a_lane_local_purchase_time(host_tz, b2, card):
    journal = Rows()
    frames, rsu = lane(journal, wall_at(fixed()))
    frames.b2(**b2)
    frames.b3()
    frames.b4(card=card_file(**card))
    assert sent(rsu) == ["C1", "C1", "C6"]
    c6 = rsu.sent[-1]
    assert c6.purchase_time == LANE_NOW  # what the card's TAC covers: 01:00 at the lane, not 17:00
    (kind, record, at), = journal.rows
    assert kind == "intent" and record["purchase_time"] == LANE_NOW
    assert at == INSTANT and at.utcoffset() == dt.timedelta(hours=8)


def test_the_c0_clock_is_lane_time_and_its_unix_time_the_instant(host_tz):
    frames, rsu = lane(Rows(), wall_at(fixed()))
    frames.feed(LinkUp())
    (c0,) = [m for m in rsu.sent if m.type_name == "C0"]
    assert c0.date_time == LANE_NOW and c0.unix_time == int(INSTANT.timestamp())


# -- the journal ---------------------------------------------------------------------------------

def test_the_journal_stamps_the_instant_with_the_lanes_offset_and_finds_it_again_after_a_restart(host_tz, tmp_path):
    now = fixed()
    wall = wall_at(now)
    db = tmp_path / "journal.db"
    j = Journal.open(db, LaneSettings().lane_id, now=wall())
    frames, rsu = lane(MachineJournal(j), wall)
    frames.pay(card=card_file(start=LANE_DAY))
    (e,) = j.iter_since(0)
    assert e.state is TxState.CHARGED and e.purchase_time == LANE_NOW
    assert e.created_iso == "2026-03-02T01:00:00+08:00"  # lane time, unambiguous
    assert e.created_unix == INSTANT.timestamp()  # the instant, whatever the host's zone
    j.close()

    # A restart two minutes later: the row is inside the 300 s window by the lane clock.
    now[0] = INSTANT + dt.timedelta(minutes=2)
    j = Journal.open(db, LaneSettings().lane_id, now=wall())
    (paid,) = MachineJournal(j).recent_paid(300.0, wall(), 1000.0)
    assert paid.seq == e.seq and paid.at == pytest.approx(1000.0 - 120.0)
    j.close()


# -- the fee table and the health loop ---------------------------------------------------------------

FEE_TABLE = """
version = 7
valid_from = 2026-01-01T00:00:00
valid_until = {until}
[stations."3701-0102"]
1 = 3500
"""


@pytest.mark.parametrize("until", [
    pytest.param("2026-03-02T00:00:00", id="naive-lane-time"),
    pytest.param("2026-03-01T16:00:00Z", id="with-an-offset"),
])
def test_a_fee_table_that_ran_out_at_the_lanes_midnight_is_expired_by_the_health_loop(host_tz, tmp_path, until):
    path = tmp_path / "fees.toml"
    path.write_text(FEE_TABLE.format(until=until))
    cfg = load_sim_config(tmp_path, overrides={"fee_table.path": str(path)})
    fees, problem = load_fees(cfg)
    assert fees is not None and not problem
    assert fees.current.valid_until == dt.datetime(2026, 3, 2)  # lane time
    posted: list[Any] = []
    mono = [500.0]
    now = fixed()
    wall = wall_at(now)
    monitor = HealthMonitor(registry=AlarmRegistry(), settings=HealthSettings(), post=posted.append, fees=fees,
                            monotonic=lambda: mono[0], wall=wall)
    changes = monitor.check()
    assert posted == [DeviceStatus(Device.FEES, False, "fee table version 7 expired at 2026-03-02T00:00:00")]
    assert "fee_table_expired" in {c.alarm.code for c in changes}
    # Two hours earlier (23:00 at the lane) it was still valid; the host's clock (17:00 on
    # 2026-03-01 at UTC) would have kept it valid for seven hours more.
    assert fees.expired(INSTANT - dt.timedelta(hours=2)) is None
    assert fees.expired(INSTANT.astimezone().replace(tzinfo=None)) is None  # host-local: not yet


def test_the_lane_clock_never_looks_like_a_jump_to_the_clock_check(host_tz):
    now = fixed(dt.datetime(2026, 3, 1, 15, 59, 59, 500000, tzinfo=UTC))  # the lane's midnight in between
    wall = wall_at(now)
    watch = ClockWatch(2.0)
    assert watch.check(100.0, wall()).ok
    now[0] += dt.timedelta(seconds=1)
    result = watch.check(101.0, wall())
    assert result.ok and result.value == pytest.approx(0.0)
    # The health loop's own readings: a second apart on both clocks, no clock_jump.
    mono = [200.0]
    monitor = HealthMonitor(registry=AlarmRegistry(), settings=HealthSettings(), post=lambda ev: None,
                            monotonic=lambda: mono[0], wall=wall)
    first = monitor.check()
    mono[0] += 1.0
    now[0] += dt.timedelta(seconds=1)
    assert all(c.alarm.code != "clock_jump" for c in first + monitor.check())


# -- the configuration ------------------------------------------------------------------------------

def test_the_lane_time_zone_defaults_to_shanghai_and_takes_an_iana_name(tmp_path):
    assert load_config(EXAMPLE).lane.timezone == "Asia/Shanghai" == DEFAULT_TIMEZONE
    assert load_sim_config(tmp_path).lane.timezone == "Asia/Shanghai"
    assert load_sim_config(tmp_path, overrides={"lane.timezone": "Asia/Urumqi"}).lane.timezone == "Asia/Urumqi"
    text = EXAMPLE.read_text()
    assert 'timezone = "Asia/Shanghai"' in text
    bare = tmp_path / "laned.toml"
    bare.write_text(text.replace('timezone = "Asia/Shanghai"', "", 1))
    assert load_config(bare).lane.timezone == "Asia/Shanghai"


@pytest.mark.parametrize(("value", "message"), [
    ("Mars/Olympus", "lane.timezone = 'Mars/Olympus': expected an IANA time zone name such as Asia/Shanghai"),
    ("asia/shanghai", "lane.timezone = 'asia/shanghai': expected an IANA time zone name such as Asia/Shanghai; "
                      "did you mean Asia/Shanghai?"),
    ("+08:00", "lane.timezone = '+08:00': expected an IANA time zone name"),
    ("/etc/localtime", "lane.timezone = '/etc/localtime': expected an IANA time zone name"),
    ("", "lane.timezone = '': expected an IANA time zone name"),
])
def test_a_bad_lane_time_zone_is_refused_naming_the_key_and_the_value(tmp_path, value, message):
    path = tmp_path / "laned.toml"
    path.write_text(EXAMPLE.read_text().replace('timezone = "Asia/Shanghai"', f'timezone = "{value}"', 1))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(err.value).startswith(f"{path}: {message}")
