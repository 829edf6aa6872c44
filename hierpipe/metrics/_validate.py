"""Input checks shared by the torch-based metrics."""

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


def check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    """``ks`` as a tuple of integers >= 1."""
    ks = tuple(ks)
    if not ks:
        raise HierpipeError("ks: expected at least one k, got an empty sequence")
    for k in ks:
        # bool is an int subclass; True as k is certainly a mistake.
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise HierpipeError(f"ks: expected integers >= 1, got {k!r}")
    return tuple(int(k) for k in ks)


def check_labels(name: str, labels: torch.Tensor, n: int) -> torch.Tensor:
    """``labels`` as a 1-D int64 tensor of length ``n``."""
    if labels.ndim != 1 or len(labels) != n:
        raise HierpipeError(f"{name}: expected shape ({n},), got {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise HierpipeError(f"{name}: expected integer labels, got dtype {labels.dtype}")
    return labels.long()
