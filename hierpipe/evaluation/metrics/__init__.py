"""Evaluation measures: classification, hierarchy agreement, retrieval (docs/methods/README.md).

The hierarchical ranking measures (`hierarchical_ranking`) are imported from their module:
they compile with numba, which training and export need not load."""

from hierpipe.evaluation.metrics.classification import (
    calibration_errors,
    level_accuracy,
    topk_accuracy,
)
from hierpipe.evaluation.metrics.hierarchy import (
    ahd_at_k,
    ahs,
    average_hierarchical_cost,
    check_tree_dist,
    classwise_spearman,
    elementwise_spearman,
    hierarchical_similarity_at_k,
    hp_at_k,
    mistake_severity,
    robinson_foulds,
)
from hierpipe.evaluation.metrics.induced_tree import (
    class_tree_robinson_foulds,
    induced_tree_measures,
    lca_distances,
)
from hierpipe.evaluation.metrics.representatives import representative_retrieval
from hierpipe.evaluation.metrics.retrieval import nearest_neighbours, retrieval_metrics

__all__ = [
    "ahd_at_k",
    "ahs",
    "average_hierarchical_cost",
    "calibration_errors",
    "check_tree_dist",
    "class_tree_robinson_foulds",
    "classwise_spearman",
    "elementwise_spearman",
    "hierarchical_similarity_at_k",
    "hp_at_k",
    "induced_tree_measures",
    "lca_distances",
    "level_accuracy",
    "mistake_severity",
    "nearest_neighbours",
    "representative_retrieval",
    "retrieval_metrics",
    "robinson_foulds",
    "topk_accuracy",
]
