"""The package's input checks, in one place and one message style.

Each check raises HierpipeError as `<name>: expected <what was expected>, got <what came>`,
and returns the checked value in the form its callers compute with.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from hierpipe.core.errors import HierpipeError


def _is_int(value: object) -> bool:
    # bool is an int subclass; True as a count or size is always a config mistake.
    return not isinstance(value, bool) and isinstance(value, (int, np.integer))


def check_int(name: str, value: object, minimum: int) -> int:
    """`value` as an int; raise unless it is an integer >= `minimum`."""
    if not _is_int(value) or value < minimum:
        raise HierpipeError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


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
        raise HierpipeError(f"{name}: expected {kind}{bound}, got {value!r}")
    return float(value)


def check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    """``ks`` as a tuple of integers >= 1."""
    ks = tuple(ks)
    if not ks:
        raise HierpipeError("ks: expected at least one k, got an empty sequence")
    return tuple(check_int("ks", k, 1) for k in ks)


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
        raise HierpipeError(f"{name}: expected finite values, got NaN or Inf")
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


def check_in_ball(name: str, points: np.ndarray | torch.Tensor, curvature: float) -> None:
    """Raise unless every row of `points` is finite and strictly inside the Poincaré ball of
    `curvature` (c ||x||^2 < 1, in float64), naming the first row that is not."""
    # On or beyond the boundary (or NaN) every Poincaré distance to the row is NaN.
    if isinstance(points, torch.Tensor):
        points = points.detach().to("cpu", torch.float64).numpy()
    squared = np.square(np.asarray(points, dtype=np.float64)).sum(axis=1)
    outside = np.flatnonzero(~(curvature * squared < 1))
    if len(outside):
        row = outside[0]
        raise HierpipeError(
            f"{name}: expected finite points strictly inside the Poincaré ball of curvature "
            f"{curvature:g} (radius {curvature**-0.5:g}), got row {row} with norm "
            f"{math.sqrt(squared[row]):g}"
        )


def check_batch(embeddings: torch.Tensor, labels: torch.Tensor) -> None:
    """Raise unless `embeddings` is (N, D) with N >= 1 and `labels` an integer (N,) tensor."""
    if embeddings.dim() != 2 or embeddings.shape[0] == 0:
        raise HierpipeError(
            f"embeddings: expected shape (N, D) with N >= 1, got {tuple(embeddings.shape)}"
        )
    check_labels("labels", labels, embeddings.shape[0])


def as_tensor(name: str, x: object, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``x`` (NumPy array or tensor) as a tensor, on its own device if it already was one."""
    if isinstance(x, torch.Tensor):
        t = x.detach()
    elif isinstance(x, np.ndarray):
        t = torch.from_numpy(x)
    else:
        raise HierpipeError(
            f"{name}: expected a NumPy array or torch tensor, got {type(x).__name__}"
        )
    return t if dtype is None else t.to(dtype)


def check_labels(name: str, labels: torch.Tensor, n: int) -> torch.Tensor:
    """``labels`` as a 1-D int64 tensor of length ``n``."""
    if labels.ndim != 1 or len(labels) != n:
        raise HierpipeError(f"{name}: expected shape ({n},), got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise HierpipeError(f"{name}: expected integer labels, got dtype {labels.dtype}")
    return labels.long()


def check_label_range(
    name: str, labels: np.ndarray | torch.Tensor, num_classes: int, hint: str = ""
) -> None:
    """Raise unless every label (NumPy array or tensor) is a class id in [0, num_classes)."""
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= num_classes:
        raise HierpipeError(
            f"{name}: expected labels in [0, {num_classes - 1}], got range [{low}, {high}]{hint}"
        )


def class_labels(name: str, labels: object, num_classes: int | None, ndim: int = 1) -> np.ndarray:
    """``labels`` as a non-empty ``ndim``-D integer array, of class ids in [0, num_classes)
    unless ``num_classes`` is None."""
    a = np.asarray(labels)
    if a.ndim != ndim or a.size == 0 or not np.issubdtype(a.dtype, np.integer):
        raise HierpipeError(
            f"{name}: expected a non-empty {ndim}-D integer array, got {a.dtype} {a.shape}"
        )
    if num_classes is not None:
        check_label_range(name, a, num_classes)
    return a


def paired_labels(pred: object, target: object, num_classes: int) -> tuple[np.ndarray, ...]:
    """``pred`` and ``target`` as equally long 1-D arrays of class ids in [0, num_classes)."""
    p = class_labels("pred", pred, num_classes)
    t = class_labels("target", target, num_classes)
    if len(p) != len(t):
        raise HierpipeError(f"pred and target: expected the same length, got {len(p)} and {len(t)}")
    return p, t


def check_scores(scores: np.ndarray | torch.Tensor) -> torch.Tensor:
    """``scores`` as a non-empty (N, C) tensor without NaN (±Inf allowed)."""
    s = as_tensor("scores", scores)
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] == 0:
        raise HierpipeError(
            f"scores: expected a non-empty (N, C) array, got shape {tuple(s.shape)}"
        )
    if torch.isnan(s).any():
        raise HierpipeError("scores: expected no NaN values")
    return s
