"""Checks of settings (hyperparameters, sizes) and point arrays shared across the package.

Each raises HierpipeError naming the setting, what was expected and what it got.
"""

from __future__ import annotations

import math

import numpy as np

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


def check_finite_array(name: str, shape: str, value: object) -> np.ndarray:
    """`value` as a float64 array of finite numbers; `shape` (e.g. "(C, C)") is what messages
    say was expected. Callers check the shape itself."""
    try:
        x = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise HierpipeError(
            f"{name}: expected a numeric {shape} array, got {type(value).__name__}"
        ) from error
    if not np.isfinite(x).all():
        raise HierpipeError(f"{name}: expected finite values, found NaN or Inf")
    return x


def check_points(name: str, shape: str, points: object) -> np.ndarray:
    """`points` as a float64 array; raise unless it is a non-empty, finite 2-D array (the
    `shape` a message shows, e.g. "(N, D)")."""
    x = check_finite_array(name, shape, points)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise HierpipeError(
            f"{name}: expected a 2-D {shape} array with at least one row and column, "
            f"got shape {x.shape}"
        )
    return x
