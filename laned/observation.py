"""What the lane did, as the simulator's live view, its summary and the tests see it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Observation:
    """One thing that happened: ``kind`` (sent, received, display, barrier, alarm_raised …)
    at monotonic time ``at``, with what a viewer needs in ``detail``."""

    at: float
    kind: str
    detail: dict[str, Any] = field(default_factory=dict)
