"""Input checks shared by the metrics."""

from collections.abc import Sequence

import numpy as np
import torch

from hierpipe.errors import HierpipeError


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


def _is_count(value: object) -> bool:
    # bool is an int subclass; True as a count is certainly a mistake.
    return not isinstance(value, bool) and isinstance(value, (int, np.integer)) and value >= 1


def check_count(name: str, value: object) -> int:
    """``value`` as an integer >= 1."""
    if not _is_count(value):
        raise HierpipeError(f"{name}: expected an integer >= 1, got {value!r}")
    return int(value)


def check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    """``ks`` as a tuple of integers >= 1."""
    ks = tuple(ks)
    if not ks:
        raise HierpipeError("ks: expected at least one k, got an empty sequence")
    for k in ks:
        if not _is_count(k):
            raise HierpipeError(f"ks: expected integers >= 1, got {k!r}")
    return tuple(int(k) for k in ks)


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
