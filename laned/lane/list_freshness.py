"""How fresh the status list in use is, and what an old one does to the lane (a freeze
attack: whoever blocks the centre's updates keeps the lane on an old blacklist). Sans-IO:
``now`` is passed in."""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass


class ListAge(enum.StrEnum):
    OK = "ok"
    OLD = "old"  # older than the configured maximum age: status_list_old
    EXPIRED = "expired"  # past the manifest's expires_at


class StalePolicy(enum.StrEnum):
    """What an old or expired status list does to the lane (``lists.on_stale``)."""

    ALARM = "alarm"  # raise status_list_old, keep taking ETC payments with the list in use
    CLOSE_ETC = "close_etc"  # also close ETC (vehicles to the manual lane) until a fresh list is in use


@dataclass(frozen=True, kw_only=True)
class Freshness:
    state: ListAge
    age_s: float | None  # None: the version's valid_from is not known
    text: str

    def closes_etc(self, policy: StalePolicy) -> bool:
        return self.state is not ListAge.OK and policy is StalePolicy.CLOSE_ETC


def list_age_state(valid_from: dt.datetime | None, expires_at: dt.datetime | None, max_age_s: float,
                   now: dt.datetime) -> Freshness:
    """How fresh the version in use is. Unknown validity (a list whose manifest was not
    kept) counts as old: an attacker who blocks updates must not gain from it."""
    if expires_at is not None and now >= expires_at:
        return Freshness(state=ListAge.EXPIRED, age_s=None if valid_from is None else
                         (now - valid_from).total_seconds(), text=f"expired at {expires_at.isoformat()}")
    if valid_from is None:
        return Freshness(state=ListAge.OLD, age_s=None, text="the version's validity is not known")
    age = (now - valid_from).total_seconds()
    if age > max_age_s:
        return Freshness(state=ListAge.OLD, age_s=age, text=f"valid from {valid_from.isoformat()}, {age / 3600:.1f} h "
                         f"old (max {max_age_s / 3600:g} h)")
    return Freshness(state=ListAge.OK, age_s=age, text=f"{age / 3600:.1f} h old")
