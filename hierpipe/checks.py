"""Checks of scalar settings (hyperparameters, sizes) shared across the package.

Each raises HierpipeError naming the setting, what was expected and what it got.
"""

from __future__ import annotations

import math

from hierpipe.errors import HierpipeError


def check_int(name: str, value: object, minimum: int) -> int:
    """`value` as an int; raise unless it is an integer >= `minimum`."""
    # bool is an int subclass; True as a count or size is always a config mistake.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise HierpipeError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_number(
    name: str, value: object, *, positive: bool = False, maximum: float = math.inf
) -> float:
    """`value` as a float; raise unless it is a finite real number (> 0 if `positive`,
    <= `maximum`)."""
    valid = (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and math.isfinite(value)
        and (value > 0 or not positive)
        and value <= maximum
    )
    if not valid:
        kind = "a positive finite number" if positive else "a finite number"
        bound = "" if maximum == math.inf else f" <= {maximum:g}"
        raise HierpipeError(f"{name} must be {kind}{bound}, got {value!r}")
    return float(value)
