"""The fee-display interface (费额显示器) every display backend implements.

What to show (:class:`~laned.lane.display.DisplayContent`) is the lane's decision and lives
in the lane's layer; it is re-exported here.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from laned.drivers.lane_io import DeviceHealth
from laned.lane.display import DisplayContent

__all__ = ["DisplayContent", "FeeDisplay"]


@runtime_checkable
class FeeDisplay(Protocol):
    name: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def show(self, content: DisplayContent) -> None:
        """Write what changed since the last successful show()."""
        ...

    def health(self) -> DeviceHealth: ...
