"""Metric learning measures on class representatives grouped by hierarchy level.

Definitions and sources: docs/methods/hierarchy_measures.md.
"""

import numpy as np
import torch

from hierpipe.evaluation.metrics.retrieval import retrieval_metrics


def representative_retrieval(
    vectors: np.ndarray | torch.Tensor,
    level_labels: np.ndarray,
    distance: str = "chord",
    curvature: float | None = None,
) -> dict[str, float]:
    """``precision@1``, ``r_precision`` and ``map@r`` of representatives grouped by ancestor.

    ``vectors`` (C, D) holds one representative per class (``W`` or ``proto``) and
    ``level_labels`` (C,) each class's level-l ancestor id (``ClassTree.level_labels``).
    ProxyDR's `get_acc_measures` ranks the other representatives of each representative j by
    distance, with R = |G| - 1 for j's group G, and skips groups of size 1: that is
    ``retrieval_metrics`` on the representatives with the ancestor ids as labels, the set
    querying itself (self excluded, lone queries skipped), which is how it is computed here.
    NaN if every group is a single class. Chord and cosine distances rank identically;
    ``curvature`` goes with ``distance="poincare"``.
    """
    metrics = retrieval_metrics(
        vectors, level_labels, ks=(1,), distance=distance, curvature=curvature, dtype=torch.float64
    )
    return {name: metrics[name] for name in ("precision@1", "r_precision", "map@r")}
