"""MDS proxies: fixed class embeddings that reproduce the tree distances (docs/methods/mds.md)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from hierpipe.core.errors import HierpipeError
from hierpipe.core.validation import check_int, check_number
from hierpipe.train.options.base import (
    OptionContext,
    TrainingOption,
)

# Below this squared chord distance sqrt is clamped: its gradient is infinite at 0, which
# the diagonal (a row against itself) always hits.
_MIN_SQUARED_DISTANCE = 1e-12


def target_distances(tree_dist: np.ndarray, beta: float) -> Tensor:
    """T(D) = sqrt(2) D / (beta + D): tree distances mapped into chord distances [0, sqrt 2)."""
    d = torch.as_tensor(np.asarray(tree_dist, dtype=np.float64))
    return math.sqrt(2) * d / (beta + d)


def normalized_stress(vectors: Tensor, targets: Tensor) -> Tensor:
    """||T - D_V||_F / ||T||_F, D_V the chord distances between the normalised rows."""
    unit = F.normalize(vectors, dim=1)
    squared = (2 - 2 * unit @ unit.T).clamp_min(_MIN_SQUARED_DISTANCE)
    off_diagonal = ~torch.eye(len(unit), dtype=torch.bool, device=unit.device)
    distances = squared.sqrt() * off_diagonal
    return torch.linalg.norm(targets - distances) / torch.linalg.norm(targets)


def fit_mds(
    tree_dist: np.ndarray,
    dim: int,
    beta: float,
    steps: int,
    lr: float,
    generator: torch.Generator,
    device: torch.device | None = None,
) -> tuple[Tensor, list[float]]:
    """Unit vectors (C, dim), float64, whose chord distances approximate T(tree_dist).

    Adam on unnormalised rows, started from normalize(randn) drawn from `generator` (on the
    CPU, so the start does not depend on the device). Returns the vectors and the stress
    before each step plus after the last one (steps + 1 values).
    """
    targets = target_distances(tree_dist, beta).to(device)
    start = torch.randn(len(targets), dim, generator=generator, dtype=torch.float64)
    vectors = F.normalize(start, dim=1).to(device).requires_grad_(True)
    optimizer = torch.optim.Adam([vectors], lr=lr)
    stresses = []
    for _ in range(steps):
        stress = normalized_stress(vectors, targets)
        stresses.append(stress.item())
        optimizer.zero_grad(set_to_none=True)
        stress.backward()
        optimizer.step()
    with torch.no_grad():
        stresses.append(normalized_stress(vectors, targets).item())
        return F.normalize(vectors, dim=1), stresses


class MDSProxies(TrainingOption):
    """Proxies fixed to an MDS embedding of the class tree before training starts."""

    freezes_proxies = True

    def __init__(self, beta: float = 1.0, steps: int = 1000, lr: float = 1e-3) -> None:
        check_number("mds beta", beta, positive=True)
        check_int("mds steps", steps, 1)
        check_number("mds lr", lr, positive=True)
        self.beta, self.steps, self.lr = float(beta), steps, float(lr)

    def setup(self, context: OptionContext) -> None:
        """Fit the embedding (seeded by `context.seed`) and copy it into the frozen proxies."""
        super().setup(context)
        loss = context.loss
        expected = (loss.num_classes, loss.num_classes)
        if context.tree_dist.shape != expected:
            raise HierpipeError(
                f"mds: tree distance matrix has shape {context.tree_dist.shape}, expected "
                f"{expected} (one row per proxy)"
            )
        generator = torch.Generator().manual_seed(context.seed)
        vectors, stresses = fit_mds(
            context.tree_dist,
            loss.embedding_dim,
            self.beta,
            self.steps,
            self.lr,
            generator,
            context.device,
        )
        with torch.no_grad():
            loss.proxies.copy_(vectors)
        self._stress = stresses[-1]

    def log_values(self) -> dict[str, float]:
        return {"mds_stress": self._stress}
