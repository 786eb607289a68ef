"""The frames the lane sends carry the config's values: each OBU's C1 the diversification
factor of its issuer, C0 the configured radio and timing settings. And a heartbeat is what
the profile says it is, for the RSU link and the lane alike."""

from __future__ import annotations

import datetime as dt

import pytest

from laned.config import load_config
from laned.drivers.rsu import RsuLink
from laned.lane.dialect import ISSUER_MEMORY, Dialect
from laned.lane.machine import FrameIn, LaneMachine, LinkUp, Send
from laned.protocol import get_profile
from laned.protocol.codec import FrameDecoder, decode_message, encode_message
from laned.protocol.framing import encode_frame
from laned.protocol.profiles import PROFILES, national, network2019
from tests.lane_harness import WALL0
from tests.test_config import EXAMPLE

ISSUER_SD = bytes.fromhex("c9bdb6ab37010001")  # 山东 (Shandong)
ISSUER_BJ = bytes.fromhex("b1b1bea911010001")  # 北京 (Beijing)
ISSUER_XX = bytes.fromhex("0102030405060708")  # no factor of its own
FACTOR_SD = bytes.fromhex("1111111111111111")
FACTOR_BJ = bytes.fromhex("2222222222222222")
DEFAULT = bytes.fromhex("a0a0a0a0a0a0a0a0")


def on_the_wire(profile: str, msg):
    """``msg`` encoded as the lane sends it and decoded again, as the RSU reads it."""
    p = get_profile(profile)
    [decoded] = FrameDecoder(p).feed(encode_message(p, msg, rsctl=0x81))
    return decoded.message


def b2(obu_id: bytes, issuer: bytes | None, profile: str = "national"):
    if profile == "national":
        return national.ObuInfo(obu_id=obu_id, error_code=0, issuer_identifier=issuer, serial_number=bytes(range(8)),
                                date_of_issue=dt.date(2023, 1, 1), date_of_expire=dt.date(2033, 1, 1),
                                equipment_cv=0x21, obu_status=b"\x00\x00")
    return network2019.ObuInfo(obu_id=obu_id, error_code=0, issuer=issuer, contract_type=1, contract_version=1,
                               serial_number=bytes(range(8)), issue_date=dt.date(2023, 1, 1),
                               expire_date=dt.date(2033, 1, 1), cpu_card_id=bytes(10), equipment_cv=0x21,
                               obu_status=b"\x00\x00")


def lane_from(**overrides):
    cfg = load_config(EXAMPLE, overrides=overrides)
    return LaneMachine(cfg.lane_settings(), cfg.dialect())


# -- C1: the OBU diversification factor of the OBU's issuer ------------------------------------------

def test_two_obus_of_different_issuers_get_their_issuers_factors_in_their_c1():
    machine = lane_from(**{"lane.obu_div_factors": {ISSUER_SD.hex(): FACTOR_SD.hex(), ISSUER_BJ.hex(): FACTOR_BJ.hex()},
                           "lane.obu_div_factor": DEFAULT.hex()})
    factors = {}
    for obu, issuer in ((b"\xa1\x00\x00\x01", ISSUER_SD), (b"\xa1\x00\x00\x02", ISSUER_BJ),
                        (b"\xa1\x00\x00\x03", ISSUER_XX)):
        [c1] = [a for a in machine.handle(FrameIn(b2(obu, issuer), 0x18), 100.0, WALL0) if isinstance(a, Send)]
        sent = on_the_wire("national", c1.message)
        assert sent.frame_type == 0xC1 and sent.obu_id == obu
        factors[issuer] = sent.obu_div_factor
    assert factors == {ISSUER_SD: FACTOR_SD, ISSUER_BJ: FACTOR_BJ, ISSUER_XX: DEFAULT}


def test_every_c1_of_one_transaction_carries_the_same_factor():
    d = Dialect(get_profile("national"), div_factors={ISSUER_BJ: FACTOR_BJ}, default_div_factor=DEFAULT)
    obu = b"\xa1\xfe\x33\xff"
    d.obu(b2(obu, ISSUER_BJ))
    assert d.continue_(obu).obu_div_factor == FACTOR_BJ  # after B2 and again after B3, B5
    assert d.continue_(obu).obu_div_factor == FACTOR_BJ
    assert d.continue_(bytes(4)).obu_div_factor == DEFAULT  # the C1 after B0 names no OBU
    assert d.continue_(obu, issuer=ISSUER_XX).obu_div_factor == DEFAULT  # an issuer given wins


def test_the_issuers_remembered_are_the_latest_few_hundred():
    d = Dialect(get_profile("national"), div_factors={ISSUER_SD: FACTOR_SD}, default_div_factor=DEFAULT)
    first = (0).to_bytes(4, "big")
    for n in range(ISSUER_MEMORY + 1):
        d.obu(b2(n.to_bytes(4, "big"), ISSUER_SD))
    assert len(d._issuers) == ISSUER_MEMORY
    assert d.continue_(first).obu_div_factor == DEFAULT  # forgotten: the default, never an error
    assert d.continue_((ISSUER_MEMORY).to_bytes(4, "big")).obu_div_factor == FACTOR_SD


def test_the_old_keyword_still_sets_the_default_factor():
    d = Dialect(get_profile("national"), obu_div_factor=DEFAULT)
    assert d.continue_(b"\x01\x02\x03\x04").obu_div_factor == DEFAULT
    with pytest.raises(ValueError, match="8 bytes"):
        Dialect(get_profile("national"), div_factors={ISSUER_SD: b"\x01"})


def test_network2019_c1_has_no_factor_and_reads_the_issuer_all_the_same():
    d = load_config(EXAMPLE, overrides={"rsu.profile": "network2019"}).dialect()
    view = d.obu(b2(b"\xa1\xfe\x33\xff", ISSUER_SD, "network2019"))
    assert view.issuer == ISSUER_SD
    assert on_the_wire("network2019", d.continue_(view.obu_id)).fields() == {"obu_id": b"\xa1\xfe\x33\xff"}


# -- C0: the configured radio and timing settings ------------------------------------------------------

@pytest.mark.parametrize("profile,expected", [
    ("national", {"wait_time": 7, "trans_mode": 3, "tx_power": 12, "pll_channel_id": 1}),
    ("network2019", {"bst_interval": 25, "tx_power": 12, "pll_channel_id": 1}),
])
def test_c0_carries_the_configured_values(profile, expected):
    machine = lane_from(**{"rsu.profile": profile, "rsu.wait_time": 7, "rsu.trans_mode": 3, "rsu.bst_interval": 25,
                           "rsu.tx_power": 12, "rsu.pll_channel": 1})
    [c0] = [a for a in machine.handle(LinkUp(), 100.0, WALL0) if isinstance(a, Send)]
    sent = on_the_wire(profile, c0.message)
    assert sent.frame_type == 0xC0 and sent.lane_mode == 4  # exit lane
    assert {k: getattr(sent, k) for k in expected} == expected


def test_c0_with_the_default_config_is_what_it_always_was():
    machine = lane_from()
    [c0] = [a for a in machine.handle(LinkUp(), 100.0, WALL0) if isinstance(a, Send)]
    m = c0.message
    assert (m.wait_time, m.tx_power, m.pll_channel_id, m.trans_mode) == (2, 10, 0, 2)


# -- heartbeats: one definition, the profile's ------------------------------------------------------

def _frames(profile: str) -> dict[str, tuple[bytes, bool]]:
    """name -> (payload, is a heartbeat) for B2s and B1 of ``profile``."""
    if profile in ("national", "network2019"):
        no_obu = b2(b"\xff\xff\xff\xff", ISSUER_SD, profile).encode()
        obu = b2(b"\xa1\xfe\x33\xff", ISSUER_SD, profile).encode()
    else:
        no_obu = bytes.fromhex("b2ffffffff00")
        obu = bytes.fromhex("b2a1fe33ff00")
    return {"B2 00000000 80": (bytes.fromhex("b20000000080"), True),
            "B2 a1fe33ff 80": (bytes.fromhex("b2a1fe33ff80"), profile in ("national", "network2019")),
            "B2 ffffffff": (no_obu, True),
            "B2 of an OBU": (obu, False),
            "B1": (bytes.fromhex("b1010203"), True)}


@pytest.mark.parametrize("profile", list(PROFILES))
def test_the_rsu_link_and_the_lane_agree_on_every_heartbeat(profile):
    p = get_profile(profile)
    link = RsuLink(p, port="/dev/laned-test-never-opened")
    for name, (payload, heartbeat) in _frames(profile).items():
        msg = decode_message(p, payload)
        assert p.is_heartbeat(msg) is heartbeat, name
        before = link.stats["heartbeats"]
        link._on_data(encode_frame(p.envelope, payload, escaping=p.escaping,
                                   **({"rsctl": 0x18} if p.envelope == "classic" else
                                      {"seq": 0x01} if p.envelope == "gb2019tcp" else {})))
        assert link.stats["heartbeats"] - before == int(heartbeat), name
        if profile in ("national", "network2019"):
            assert Dialect(p).is_heartbeat(msg) is heartbeat, name
