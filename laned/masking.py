"""Masking of card numbers and plates in logs and command output.

The journal stores them in full (the centre needs them); everything a person reads by
default shows only enough to tell two vehicles apart.
"""

from __future__ import annotations


def mask_card(number: str) -> str:
    """Keep the first 4 and last 4 digits: 3701********5678."""
    if len(number) <= 8:
        return "*" * len(number)
    return number[:4] + "*" * (len(number) - 8) + number[-4:]


def mask_plate(plate: str) -> str:
    """Keep the province character and the issuing-authority letter: 鲁A*****."""
    if len(plate) <= 2:
        return plate
    return plate[:2] + "*" * (len(plate) - 2)
