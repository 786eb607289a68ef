"""What the fee display (费额显示器) should show, as the sans-IO lane decides it.

The display drivers (``laned/drivers/fee_display.py`` re-exports it) turn it into
registers; it lives here so that the lane imports nothing from the drivers.
"""

from __future__ import annotations

from dataclasses import dataclass

from laned.lane.signals import Light


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
