"""RSU profiles by name. A vendor variant is one more module and one line here."""

from __future__ import annotations

from laned.protocol.profiles import national, network2019
from laned.protocol.profiles.base import ObuFlag, Profile
from laned.protocol.profiles.tcp_envelopes import GB2019TCP, JINYI

PROFILES: dict[str, Profile] = {
    p.name: p for p in (national.PROFILE, network2019.PROFILE, JINYI, GB2019TCP)
}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown RSU profile {name!r}; expected one of {', '.join(PROFILES)}") from None


__all__ = ["PROFILES", "ObuFlag", "Profile", "get_profile"]
