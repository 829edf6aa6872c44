"""Evaluation of one run: every measure from its exported embeddings, into metrics.json.

Measures are named `<group>/<kind>/<measure>`:
- `classification/logits/...` from the model's own classifier, `classification/prototype/...`
  from the nearest class prototype (closed-set splits only);
- `retrieval/...` on the evaluation subset, each item querying all others;
- `hierarchy/<proxy|prototype>/...` between class representatives and the true tree.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hierpipe.config import RunConfig
from hierpipe.data import read_classes
from hierpipe.embed import Embeddings, read_embeddings, read_representatives
from hierpipe.errors import HierpipeError
from hierpipe.geometry import pairwise_distances
from hierpipe.hierarchy import ClassTree
from hierpipe.io import write_text_atomic
from hierpipe.metrics import (
    average_hierarchical_cost,
    classwise_spearman,
    elementwise_spearman,
    retrieval_metrics,
    topk_accuracy,
)


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
    metrics.update(_classification(embeddings, subset, representatives, tree_dist))
    metrics.update(
        _prefixed(
            "retrieval",
            retrieval_metrics(
                embeddings.embedding[subset],
                embeddings.label[subset],
                ks=config.evaluate.retrieval_ks,
                distance=config.evaluate.distance,
            ),
        )
    )
    for kind, group in representatives.groupby("kind", sort=True):
        metrics.update(_hierarchy(kind, group, tree, tree_dist))
    document = {
        "run": config.run_id,
        "dataset": config.dataset,
        "model": config.model,
        "seed": config.seed,
        "trained": config.trained,
        "subset": config.evaluate.subset,
        "metrics": {k: _finite_or_none(v) for k, v in sorted(metrics.items())},
    }
    write_text_atomic(json.dumps(document, indent=2, sort_keys=True) + "\n", metrics_path)
    return metrics


def _classification(
    embeddings: Embeddings, subset: np.ndarray, representatives, tree_dist: np.ndarray
) -> dict[str, float]:
    """Top-k accuracy and AHC for each way the run can classify, on closed-set splits."""
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
    for name, (scores, class_ids) in sources.items():
        if not np.isin(target, class_ids).all():
            continue  # open-set (class-disjoint) evaluation: no classifier knows these classes
        rows = _index(class_ids, target)
        accuracy = topk_accuracy(scores, rows, ks=(1, 5))
        predicted = class_ids[scores.argmax(axis=1)]
        accuracy["ahc"] = average_hierarchical_cost(predicted, target, tree_dist)
        metrics.update(_prefixed(f"classification/{name}", accuracy))
    return metrics


def _hierarchy(kind: str, group, tree: ClassTree, tree_dist: np.ndarray) -> dict[str, float]:
    """Agreement of representative distances (chord, on the unit sphere) with tree distances."""
    class_ids = group["class_id"].to_numpy()
    if len(class_ids) < 3:
        return {}
    vectors = torch.from_numpy(np.stack(group["vector"].to_numpy()))
    rep_dist = pairwise_distances(vectors, vectors, "chord").double().numpy()
    sub_tree = tree_dist[np.ix_(class_ids, class_ids)]
    rho, p = classwise_spearman(rep_dist, sub_tree, include_self=True)
    rho_noself, p_noself = classwise_spearman(rep_dist, sub_tree, include_self=False)
    rho_elem, p_elem = elementwise_spearman(rep_dist, sub_tree)
    return _prefixed(
        f"hierarchy/{kind}",
        {
            "classwise_spearman": rho,
            "classwise_spearman_p": p,
            "classwise_spearman_noself": rho_noself,
            "classwise_spearman_noself_p": p_noself,
            "elementwise_spearman": rho_elem,
            "elementwise_spearman_p": p_elem,
            "num_classes": float(len(class_ids)),
        },
    )


def _index(class_ids: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Column of each target in a score matrix whose columns are `class_ids`."""
    position = {int(c): i for i, c in enumerate(class_ids)}
    return np.array([position[int(t)] for t in target])


def _prefixed(prefix: str, values: dict[str, Any]) -> dict[str, float]:
    return {f"{prefix}/{name}": float(value) for name, value in values.items()}


def _finite_or_none(value: float) -> float | None:
    """JSON has no NaN: an undefined measure is written as null."""
    return None if math.isnan(value) else value


def read_metrics(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise HierpipeError(f"{path}: metrics file not found")
    try:
        document = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise HierpipeError(f"{path}: not valid JSON ({error})") from error
    for key in ("run", "dataset", "model", "seed", "trained", "metrics"):
        if key not in document:
            raise HierpipeError(f"{path}: missing key {key!r}")
    return document
