"""The fee-display interface (费额显示器) every display backend implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from laned.drivers.lane_io import DeviceHealth, Light


@dataclass(frozen=True, slots=True)
class DisplayContent:
    """What the driver should show. Money in fen; ``None`` blanks the field."""

    plate: str | None = None
    vehicle_class: int | None = None
    fee_fen: int | None = None
    balance_fen: int | None = None
    line1: str = ""
    line2: str = ""
    light: Light = Light.RED
    brightness: int | None = None  # 0–100 %; None keeps the current setting


@runtime_checkable
class FeeDisplay(Protocol):
    name: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def show(self, content: DisplayContent) -> None:
        """Write what changed since the last successful show()."""
        ...

    def health(self) -> DeviceHealth: ...
