"""Evaluation measures: retrieval on embeddings, top-k classification, hierarchy agreement."""

from hierpipe.metrics.classification import topk_accuracy
from hierpipe.metrics.hierarchy import (
    average_hierarchical_cost,
    classwise_spearman,
    elementwise_spearman,
)
from hierpipe.metrics.retrieval import retrieval_metrics

__all__ = [
    "average_hierarchical_cost",
    "classwise_spearman",
    "elementwise_spearman",
    "retrieval_metrics",
    "topk_accuracy",
]
