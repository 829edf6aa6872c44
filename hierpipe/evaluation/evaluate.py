"""Evaluation of one run: every measure from its exported embeddings, into metrics.json.

Measures are named `<group>/<kind>/<measure>`:
- `classification/logits/...` from the model's own classifier, `classification/prototype/...`
  from the nearest class prototype (closed-set splits only);
- `retrieval/...` on the evaluation subset, each item querying all others;
- `hierarchy/<proxy|prototype|ball_prototype>/...` between class representatives and the true
  tree, `hierarchy/hier_proxy/...` between the tree a regulariser's hierarchical proxies
  induce and the true tree, and `hierarchy/random_vectors/...`, the representative measures
  for random unit vectors (chance level).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from hierpipe.core.catalog import proxies_from_hierarchy
from hierpipe.core.config import RunConfig
from hierpipe.core.errors import HierpipeError
from hierpipe.core.geometry import pairwise_distances
from hierpipe.core.hierarchy import ClassTree
from hierpipe.data import read_classes
from hierpipe.evaluation.embedding_files import Embeddings, read_embeddings, read_representatives
from hierpipe.evaluation.metrics import (
    ahd_at_k,
    ahs,
    average_hierarchical_cost,
    calibration_errors,
    classwise_spearman,
    elementwise_spearman,
    hierarchical_similarity_at_k,
    hp_at_k,
    induced_tree_measures,
    level_accuracy,
    mistake_severity,
    nearest_neighbours,
    representative_retrieval,
    retrieval_metrics,
    robinson_foulds,
    topk_accuracy,
)
from hierpipe.evaluation.metrics.hierarchical_ranking import hierarchical_ranking_metrics
from hierpipe.evaluation.metrics_file import write_metrics
from hierpipe.losses import build_regularizer
from hierpipe.losses.hier import GEOMETRIES as HIER_GEOMETRIES
from hierpipe.runtime.tracking import run_tracker


def evaluate_run(
    config: RunConfig,
    embeddings_path: str | Path,
    representatives_path: str | Path,
    metrics_path: str | Path,
) -> dict[str, float]:
    tree = read_classes(config.data_dir)
    embeddings = read_embeddings(embeddings_path)
    representatives = read_representatives(representatives_path)
    if embeddings.embedding.shape[1] != config.backbone.embedding_dim:
        raise HierpipeError(
            f"{embeddings_path}: embeddings have dimension {embeddings.embedding.shape[1]}; "
            f"the run config says {config.backbone.embedding_dim}"
        )
    subset = embeddings.split == config.evaluate.subset
    if not subset.any():
        raise HierpipeError(f"{embeddings_path}: no samples in subset {config.evaluate.subset!r}")
    tree_dist = tree.distance_matrix()

    metrics: dict[str, float] = {}
    metrics.update(_classification(config, embeddings, subset, representatives, tree, tree_dist))
    metrics.update(_retrieval(config, embeddings, subset, tree, tree_dist))
    for kind, group in representatives.groupby("kind", sort=True):
        if kind == "hier_proxy":  # not one per class: judged by the tree they induce, below
            continue
        vectors = np.stack(group["vector"].to_numpy())
        metric = representative_metric(config, kind)
        metrics.update(
            _hierarchy(
                config, kind, group["class_id"].to_numpy(), vectors, tree, tree_dist, *metric
            )
        )
    metrics.update(_hierarchical_proxies(config, representatives, tree))
    # chance level of every hierarchy measure: random unit vectors, one per class
    # (docs/methods/hierarchy_measures.md)
    chance = np.random.default_rng(config.seed).standard_normal(
        (tree.num_classes, config.backbone.embedding_dim)
    )
    metrics.update(
        _hierarchy(
            config,
            "random_vectors",
            np.arange(tree.num_classes),
            chance,
            tree,
            tree_dist,
            "chord",
            None,
        )
    )
    document = {
        "run": config.run_id,
        "dataset": config.dataset,
        "model": config.model,
        "option": config.option,
        "loss": config.loss,
        "regularizer": config.regularizer.name if config.regularizer is not None else None,
        "seed": config.seed,
        "backbone": config.backbone.name,
        "embedding_dim": config.backbone.embedding_dim,
        "space": config.head.space,
        "trained": config.trained,
        # proxies fitted to the true tree (MDS, CORR) measure that fit, not learning
        # (docs/methods/mds.md)
        "proxies_from_hierarchy": proxies_from_hierarchy(config.training_options),
        "subset": config.evaluate.subset,
        "metrics": {k: _finite_or_none(v) for k, v in sorted(metrics.items())},
    }
    write_metrics(document, metrics_path)
    # inside the workflow, an MLflow child run; undefined (null) measures are left out
    with run_tracker(config, "evaluate") as tracker:
        tracker.log_metrics(document["metrics"])
        tracker.log_artifact(metrics_path)
    return metrics


def _classification(
    config: RunConfig,
    embeddings: Embeddings,
    subset: np.ndarray,
    representatives: pd.DataFrame,
    tree: ClassTree,
    tree_dist: np.ndarray,
) -> dict[str, float]:
    """Flat and hierarchy-informed classification for each way the run can classify.

    `logits`: the model's own classifier; `prototype`: the nearest class prototype (cosine).
    Only on closed-set splits, where every evaluated class is known to the classifier.
    """
    target = embeddings.label[subset]
    sources: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if embeddings.logits is not None:
        sources["logits"] = (embeddings.logits[subset], np.asarray(embeddings.classifier_class_ids))
    prototypes = representatives[
        (representatives["kind"] == "prototype") & (representatives["source"] == "train")
    ]
    if len(prototypes):
        vectors = np.stack(prototypes["vector"].to_numpy())
        similarity = -pairwise_distances(
            torch.from_numpy(embeddings.embedding[subset]), torch.from_numpy(vectors), "cosine"
        )
        sources["prototype"] = (similarity.numpy(), prototypes["class_id"].to_numpy())
    metrics = {}
    for name, (known_scores, class_ids) in sources.items():
        if not np.isin(target, class_ids).all():
            continue  # open-set (class-disjoint) evaluation: no classifier knows these classes
        # every class gets a column; classes the classifier never saw can never be predicted
        scores = np.full((len(target), tree.num_classes), -np.inf, dtype=np.float64)
        scores[:, class_ids] = known_scores
        predicted = scores.argmax(axis=1)
        values = topk_accuracy(scores, target, ks=(1, 5))
        values["ahc"] = average_hierarchical_cost(predicted, target, tree_dist)
        values["mistake_severity"] = mistake_severity(predicted, target, tree_dist)
        k = min(5, tree.num_classes - 2)
        values[f"ahd@{k}"] = ahd_at_k(scores, target, tree_dist, k)
        values[f"hp@{k}"] = hp_at_k(scores, target, tree_dist, k, definition="code")
        values[f"hp@{k}_devise"] = hp_at_k(scores, target, tree_dist, k, definition="devise")
        for level in range(tree.max_depth - 1):
            values[f"level{level}_top1"] = level_accuracy(
                predicted, target, tree.level_labels(level)
            )
        if name == "logits":  # prototype similarities have no probabilistic scale
            probabilities = torch.softmax(torch.from_numpy(scores), dim=1).numpy()
            bins = config.evaluate.calibration_bins
            values.update(calibration_errors(probabilities, target, bins=bins))
        metrics.update(_prefixed(f"classification/{name}", values))
    return metrics


def _retrieval(
    config: RunConfig,
    embeddings: Embeddings,
    subset: np.ndarray,
    tree: ClassTree,
    tree_dist: np.ndarray,
) -> dict[str, float]:
    """Flat retrieval, hierarchical similarity (HS@k, AHS) and hierarchical ranking (H-AP,
    ASI, NDCG).

    Each item of the evaluation subset queries the rest of it, or, with `evaluate.gallery`
    (In-shop), the items of the gallery subset, none of which is a query (no
    index mask is needed, so none is applied; docs/methods/retrieval_measures.md).
    """
    settings = config.evaluate
    queries, labels = embeddings.embedding[subset], embeddings.label[subset]
    space = {
        "distance": settings.distance,
        "curvature": distance_curvature(config, settings.distance),
    }
    if settings.gallery is None:
        reference, reference_labels = None, labels
    else:
        in_gallery = embeddings.split == settings.gallery
        if not in_gallery.any():
            raise HierpipeError(f"evaluate.gallery: no samples in subset {settings.gallery!r}")
        reference, reference_labels = embeddings.embedding[in_gallery], embeddings.label[in_gallery]
    metrics = retrieval_metrics(
        queries,
        labels,
        reference,
        None if reference is None else reference_labels,
        ks=settings.retrieval_ks,
        **space,
    )
    metrics.update(
        hierarchical_ranking_metrics(
            queries,
            labels,
            tree,
            reference,
            None if reference is None else reference_labels,
            relevance=settings.relevance_schedule,
            alpha=settings.relevance_alpha,
            **space,
        )
    )
    self_excluded = reference is None
    # HS@k needs k neighbours besides the query itself: small sets cap the depth
    available = len(reference_labels) - int(self_excluded)
    depth = min(max(settings.hs_ks), settings.ahs_k_max, available)
    if depth >= 2:
        neighbours = nearest_neighbours(queries, depth, reference, **space)
        knn_labels = reference_labels[neighbours]
        ks = sorted({min(k, depth) for k in settings.hs_ks})
        hs_inputs = (labels, knn_labels, reference_labels, tree_dist)
        metrics.update(hierarchical_similarity_at_k(*hs_inputs, ks, exclude_self=self_excluded))
        metrics["ahs"] = ahs(*hs_inputs, k_max=depth, exclude_self=self_excluded)
        metrics["ahs_k"] = depth
    return _prefixed("retrieval", metrics)


def distance_curvature(config: RunConfig, metric: str) -> float | None:
    return config.head.curvature if metric == "poincare" else None


def representative_metric(config: RunConfig, kind: str) -> tuple[str, float | None]:
    """Ball prototypes are compared by Poincaré distance, directions by chord length."""
    metric = "poincare" if kind == "ball_prototype" else "chord"
    return metric, distance_curvature(config, metric)


def _hierarchy(
    config: RunConfig,
    kind: str,
    class_ids: np.ndarray,
    vectors: np.ndarray,
    tree: ClassTree,
    tree_dist: np.ndarray,
    metric: str,
    curvature: float | None,
) -> dict[str, float]:
    """Agreement of the representatives' distances (`metric`) with the tree distances."""
    if len(class_ids) < 3:
        return {}
    vectors = vectors.astype(np.float64)
    as_tensor = torch.from_numpy(vectors)
    rep_dist = pairwise_distances(as_tensor, as_tensor, metric, curvature).numpy()
    np.fill_diagonal(rep_dist, 0.0)
    sub_tree = tree_dist[np.ix_(class_ids, class_ids)]
    rho, p = classwise_spearman(rep_dist, sub_tree, include_self=True)
    rho_noself, p_noself = classwise_spearman(rep_dist, sub_tree, include_self=False)
    rho_elem, p_elem = elementwise_spearman(rep_dist, sub_tree)
    rf = robinson_foulds(rep_dist, sub_tree, config.evaluate.tree_linkage)
    values = {
        "classwise_spearman": rho,
        "classwise_spearman_p": p,
        "classwise_spearman_noself": rho_noself,
        "classwise_spearman_noself_p": p_noself,
        "elementwise_spearman": rho_elem,
        "elementwise_spearman_p": p_elem,
        "rf": rf["rf"],
        "norm_rf": rf["norm_rf"],
        "num_classes": len(class_ids),
    }
    for level in range(tree.max_depth - 1):
        level_ids = tree.level_labels(level)[class_ids]
        retrieval = representative_retrieval(vectors, level_ids, metric, curvature)
        for name, value in retrieval.items():
            values[f"level{level}_{name}"] = value
    return _prefixed(f"hierarchy/{kind}", values)


def _hierarchical_proxies(
    config: RunConfig, representatives: pd.DataFrame, tree: ClassTree
) -> dict[str, float]:
    """The regulariser's hierarchical proxies against the true tree (hierpipe.evaluation.metrics.
    induced_tree), with the class prototypes of the proxies' geometry as the leaves."""
    proxies = representatives[representatives["kind"] == "hier_proxy"]
    if proxies.empty:
        return {}
    regularizer = config.regularizer
    # the regulariser as configured says in which geometry its proxies live
    geometry = build_regularizer(
        regularizer.name,
        regularizer.hyperparameters,
        embedding_dim=config.backbone.embedding_dim,
        curvature=config.head.curvature,
        clip_r=config.head.clip_r,
    ).geometry
    metric = HIER_GEOMETRIES[geometry]
    leaves = representatives[
        representatives["kind"] == ("ball_prototype" if metric == "poincare" else "prototype")
    ].sort_values("class_id")
    if not np.array_equal(leaves["class_id"].to_numpy(), np.arange(tree.num_classes)):
        return {}  # the induced tree needs a leaf for every class of the tree
    values = induced_tree_measures(
        np.stack(leaves["vector"].to_numpy()),
        np.stack(proxies["vector"].to_numpy()),
        tree,
        metric,
        distance_curvature(config, metric),
    )
    return _prefixed("hierarchy/hier_proxy", values)


def _prefixed(prefix: str, values: dict[str, Any]) -> dict[str, float]:
    return {f"{prefix}/{name}": float(value) for name, value in values.items()}


def _finite_or_none(value: float) -> float | None:
    """JSON has no NaN: an undefined measure is written as null."""
    return None if math.isnan(value) else value
