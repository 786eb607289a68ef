"""The lane-IO interface every IO backend implements (Modbus DI/DO module, GPIO, sim).

The lane logic only ever sees *samples* (:class:`~laned.lane.signals.InputSample`): a
signal's state together with the time it was read. The values the lane shares with the
drivers (``Signal``, ``Light``, ``InputSample``) live in the lane's layer,
``laned/lane/signals.py``, and are re-exported here; the outputs (``Output``) are the
drivers' own.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Self, runtime_checkable

from laned.lane.signals import REQUIRED_INPUTS, InputSample, Light, Signal

if TYPE_CHECKING:
    from laned.drivers.fanout import Fanout


__all__ = ["REQUIRED_INPUTS", "DeviceHealth", "InputSample", "LaneIO", "Light", "Output", "SampledLaneIO", "Signal"]


class Output(enum.StrEnum):
    """Outputs of a lane."""

    BARRIER_RAISE = "barrier_raise"
    BARRIER_LOWER = "barrier_lower"
    LIGHT_GREEN = "light_green"
    LIGHT_RED = "light_red"
    ALARM = "alarm"


@dataclass(frozen=True, slots=True)
class DeviceHealth:
    """What a driver reports about its device, for diagnostics and alarms."""

    device: str
    online: bool
    detail: str = ""
    errors: int = 0
    last_ok_at: float | None = None


@runtime_checkable
class LaneIO(Protocol):
    """Barrier, loops, traffic light and alarm output of one lane."""

    name: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def sample(self, signal: Signal) -> InputSample | None:
        """The latest sample of ``signal`` (``None`` before the first read)."""
        ...

    def samples(self) -> AsyncIterator[InputSample]:
        """Every new sample whose ``active`` differs from the previous one."""
        ...

    async def raise_barrier(self) -> None: ...

    async def lower_barrier(self) -> None:
        """Only ever called by the barrier interlock (laned/lane/barrier.py)."""
        ...

    async def stop_barrier(self) -> None:
        """Drop both barrier outputs (a lowering arm that must reverse calls raise next)."""
        ...

    async def set_light(self, light: Light) -> None: ...

    async def set_alarm(self, on: bool) -> None: ...

    def health(self) -> DeviceHealth: ...


class SampledLaneIO:
    """What every LaneIO backend shares: the latest sample per input, published to
    subscribers (first the current samples, then every change), and ``async with``.

    Subclasses fill ``self._samples`` and ``self._fanout`` and implement the rest of
    :class:`LaneIO`.
    """

    _samples: dict[Signal, InputSample]
    _fanout: Fanout[InputSample]

    async def start(self) -> None:  # pragma: no cover - every backend overrides
        raise NotImplementedError

    async def close(self) -> None:  # pragma: no cover - every backend overrides
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def sample(self, signal: Signal) -> InputSample | None:
        return self._samples.get(signal)

    def samples(self) -> AsyncIterator[InputSample]:
        """Changes of any input, starting with the current sample of each known input.
        Each call gets its own queue; dropping the iterator unsubscribes."""
        return self._fanout.subscribe(initial=[self._samples[s] for s in Signal if s in self._samples])
