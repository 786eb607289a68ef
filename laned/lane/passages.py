"""Who may pass the arm: payments bound to the vehicles that drive through, in order.

A payment lets one vehicle out. The lane cannot see which vehicle carries which OBU (the
RSU's zone is 15–30 m long and it reads the next OBU while the car in front is still
before the arm), so it counts: payments in the order they completed, vehicles in the
order the loops see them. The sensor layout this assumes (docs/lane_sensors.md):

* the **safety loop** under the arm;
* where the IO profile has one, an **approach loop** before it, ending less than the
  shortest vehicle's length before the safety loop and covering the stop line, so that
  a vehicle that leaves the approach loop forwards is on the safety loop at that moment,
  and a vehicle waiting at the stop line is on the approach loop;
* the RSU's zone ends at the arm: an OBU it reports is before the arm.

What the counting gives:

* **A vehicle with no payment of its own is a follow-car** the moment it is at the arm
  with more vehicles at the arm than payments outstanding: reported, never trapped, and
  it does not use up a payment.
* **Vehicles closer than the safety loop is long** are told apart by the approach loop:
  each vehicle that leaves it forwards is one vehicle at the arm, paid or not, and every
  vehicle at the arm has passed once the safety loop is clear. Without an approach loop
  one occupation of the safety loop is one vehicle.
* **A payment taken by the wrong vehicle is found out:** which vehicle drove out on a
  payment is known only by order, so a tailgater slipping in front of a car that paid
  early uses that car's payment. When that car's OBU is reported again after its payment
  was used (it is still before the arm: the RSU cannot hear it past the arm), the
  vehicle that used it was a follow-car — recorded as such — and the car is let out.
  A paid vehicle is never sent to the manual lane for it.

Vehicles closer than the approach loop is long are one vehicle to the loops; telling a
tailgater that close from the car in front takes a plate camera or a light curtain.

Sans-IO: the machine feeds edges and payments with the time, and acts on the returned
:class:`Unpaid` passages.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

# An OBU reported again this soon after its payment was used is the vehicle that just
# drove out, heard once more at the edge of the zone; later, it is still before the arm …
REREAD_AFTER_PASSAGE_S = 0.5
# … if it is this soon: the RSU reports a waiting OBU every few seconds at most. Reported
# again later than this, it is the vehicle that drove out and came round again (let out on
# its record all the same), not a sign that another vehicle used its payment.
USED_MEMORY_S = 60.0
# More vehicles than this between the approach loop and the arm is a chattering loop,
# not traffic: the oldest count is dropped.
MAX_COUNTED = 64


@dataclass
class Credit:
    """A payment not used yet: one vehicle may pass on it."""

    key: bytes  # the OBU that paid
    at: float  # when it was granted (monotonic)
    heard: float | None = None  # when the RSU last reported its OBU again (None: not since it paid)


@dataclass
class _Counted:
    """A vehicle the approach loop saw (or the safety loop, when the approach loop did not)."""

    entered: float
    at_arm: bool = False  # it is on the safety loop, or was and is past it
    unpaid: bool = False  # judged a follow-car when it reached the arm


@dataclass(frozen=True, slots=True)
class Unpaid:
    """A vehicle that passed (or is passing) without a payment of its own."""

    at: float  # when it was at the arm (monotonic)
    at_arm_now: bool  # True: it is under the arm now (raise for it); False: found out afterwards
    detail: str


class Passages:
    """Payments outstanding and the vehicles between the approach loop and the arm."""

    def __init__(self, *, approach: bool) -> None:
        self.approach = approach  # count vehicles with the approach loop
        self._credits: deque[Credit] = deque()
        self._used: dict[bytes, float] = {}  # OBU → when its payment was used
        self._counted: deque[_Counted] = deque()
        self._approach_on = False
        self._safety_on = False
        self.unpaid_on_loop = False  # without an approach loop: the occupation is a follow-car's

    # -- what the arm needs to know ------------------------------------------------------
    @property
    def outstanding(self) -> int:
        return len(self._credits)

    def holds(self, key: bytes) -> bool:
        return any(c.key == key for c in self._credits)

    @property
    def uncommitted(self) -> int:
        """Payments no vehicle at the arm is using yet: while there are none, the light is
        red, so a driver behind the paid vehicle waits for a payment of its own."""
        if not self.approach:
            return len(self._credits) - (1 if self._safety_on and not self.unpaid_on_loop else 0)
        return len(self._credits) - sum(1 for c in self._counted if c.at_arm and not c.unpaid)

    @property
    def unpaid_at_arm(self) -> bool:
        """A follow-car is on the safety loop: the arm stays up for it."""
        if not self.approach:
            return self.unpaid_on_loop
        return self._safety_on and any(c.at_arm and c.unpaid for c in self._counted)

    def waiting_since(self, before: float) -> bool:
        """A vehicle stands on the approach loop that arrived there at or before ``before``
        and has not reached the arm."""
        return self._approach_on and any(not c.at_arm and c.entered <= before for c in self._counted)

    # -- payments --------------------------------------------------------------------------
    def paid(self, key: bytes, now: float) -> None:
        self._used.pop(key, None)
        self._credits.append(Credit(key, now))

    def seen_again(self, key: bytes, now: float) -> tuple[bool, Unpaid | None]:
        """A vehicle that paid is reported again. Returns whether it needs a payment again
        (its own was used or expired: the caller lets it out again with :meth:`paid`) and,
        when its payment was used by another vehicle, that vehicle as a follow-car."""
        for c in self._credits:
            if c.key == key:
                c.heard = now
                return False, None  # still on its way to the arm
        used = self._used.get(key)
        if used is not None and now - used < REREAD_AFTER_PASSAGE_S:
            return False, None  # the vehicle that just drove out
        self._used.pop(key, None)
        if used is None or now - used > USED_MEMORY_S:
            return True, None
        return True, Unpaid(used, False, f"a vehicle drove out on the payment of OBU {key.hex()}, which is still "
                                         "before the arm and is let out now")

    def expire(self, now: float, timeout: float) -> int:
        """Forget payments older than ``timeout`` (the vehicle turned back): how many."""
        n = 0
        while self._credits and now - self._credits[0].at > timeout:
            self._credits.popleft()
            n += 1
        for key in [k for k, t in self._used.items() if now - t > USED_MEMORY_S]:
            del self._used[key]
        return n

    def left_zone(self, now: float, silence: float) -> list[bytes]:
        """Forget the payments of OBUs the RSU reported again after paying and has not heard
        for ``silence`` seconds: their vehicles left the zone — past the arm, too close
        behind another vehicle for the loops to count them. The OBUs, oldest first."""
        if silence <= 0:
            return []
        gone = [c for c in self._credits if c.heard is not None and now - c.heard > silence]
        for c in gone:
            # Not remembered as used: were it still waiting after all, its next report lets
            # it out on its record without blaming another vehicle.
            self._credits.remove(c)
        return [c.key for c in gone]

    def shorten(self, oldest: float) -> None:
        """After an IO outage: a paid vehicle may have passed unseen; no payment counts as
        older than ``oldest`` from now on (it expires sooner)."""
        for c in self._credits:
            c.at = min(c.at, oldest)

    # -- loops -------------------------------------------------------------------------------
    def approach_loop(self, active: bool | None, now: float) -> list[Unpaid]:
        if active is None or not self.approach:
            return []  # no news: neither an arrival nor a departure
        out: list[Unpaid] = []
        if active and not self._approach_on:
            self._counted.append(_Counted(now))
            if len(self._counted) > MAX_COUNTED:
                self._counted.popleft()
        elif not active and self._approach_on:
            for c in [c for c in self._counted if not c.at_arm]:
                if self._safety_on:
                    # Left forwards: the approach loop ends less than a vehicle's length
                    # before the safety loop, so it is on the safety loop now.
                    out += self._reaches_arm(c, now, rising=False)
                else:
                    self._counted.remove(c)  # turned away before the arm (the manual lane)
        self._approach_on = bool(active)
        return out

    def safety_loop(self, active: bool | None, now: float, *, barrier_down: bool) -> list[Unpaid]:
        if active is None:
            return []
        out: list[Unpaid] = []
        if active and not self._safety_on:
            self._safety_on = True
            if self.approach:
                c = next((c for c in self._counted if not c.at_arm), None)
                if c is None:  # the approach loop did not see it: count it here
                    c = _Counted(now)
                    self._counted.append(c)
                out += self._reaches_arm(c, now, rising=True, barrier_down=barrier_down)
            elif not self._credits and not barrier_down:
                self.unpaid_on_loop = True
                out.append(Unpaid(now, True, "a vehicle entered the safety loop without paying"))
        elif not active and self._safety_on:
            self._safety_on = False
            if self.approach:
                passed = [c for c in self._counted if c.at_arm]
                for c in passed:
                    self._counted.remove(c)
                    if not c.unpaid:
                        self._use(now)
            elif self.unpaid_on_loop:
                self.unpaid_on_loop = False
            else:
                self._use(now)
        return out

    def _reaches_arm(self, c: _Counted, now: float, *, rising: bool, barrier_down: bool = False) -> list[Unpaid]:
        c.at_arm = True
        at_arm = [x for x in self._counted if x.at_arm and not x.unpaid]
        if len(at_arm) <= len(self._credits):
            return []
        if barrier_down:
            # Someone pulled up onto the loop at a closed arm: not passing, nothing to
            # report; it drives out only when the arm opens for a payment.
            return []
        c.unpaid = True
        why = ("a vehicle entered the safety loop without paying" if rising else
               "a vehicle reached the safety loop right behind the one before it, without paying")
        return [Unpaid(now, True, why)]

    def _use(self, now: float) -> None:
        if self._credits:
            self._used[self._credits.popleft().key] = now
