"""The Parquet files of a run's embeddings and class representatives.

embeddings.parquet: sample_id, split (the subset), label, embedding, and for trained models
the classifier's logits (columns = the classes in the file's `hierpipe.classifier_class_ids`
metadata). representatives.parquet: class_id, kind, vector, source; kinds: `proxy` (the
loss's class proxies), `prototype` (class mean directions), `ball_prototype` (class
gyromidpoints, Poincaré heads), `hier_proxy` (a regulariser's hierarchical proxies; their
class_id is the proxy's index, not a class).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import torch
import torch.nn.functional as F

from hierpipe.core.errors import HierpipeError
from hierpipe.core.geometry import poincare_midpoint
from hierpipe.core.io import arrow_to_vectors, read_parquet, vectors_to_arrow, write_parquet_atomic

CLASSIFIER_IDS_KEY = b"hierpipe.classifier_class_ids"


@dataclass
class Embeddings:
    """The contents of embeddings.parquet as arrays."""

    sample_id: np.ndarray
    split: np.ndarray
    label: np.ndarray
    embedding: np.ndarray
    logits: np.ndarray | None
    classifier_class_ids: list[int] | None


def class_prototypes(
    embedding: np.ndarray, label: np.ndarray, split: np.ndarray, curvature: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One representative per class from its samples' embeddings.

    Without `curvature`: the renormalised mean of the normalised embeddings (ProxyDR's
    `proto`), a direction. With it: the gyromidpoint of the embeddings as points of the
    Poincaré ball of that curvature (geoopt's `weighted_midpoint`), which keeps the depth
    that HIER trains. Training samples define a class's prototype; a class without any (the
    unseen classes of a class-disjoint split) takes its samples in the other subsets, and its
    source says so. Returns (class ids, prototypes, source per class).
    """
    points = torch.from_numpy(embedding).double()
    if curvature is None:
        points = F.normalize(points, dim=1)
    class_ids = np.unique(label)
    prototypes = torch.empty((len(class_ids), points.shape[1]), dtype=torch.float64)
    sources = np.empty(len(class_ids), dtype=object)
    in_train = split == "train"
    for row, class_id in enumerate(class_ids):
        members = label == class_id
        from_train = members & in_train
        sources[row] = "train" if from_train.any() else "other"
        chosen = points[from_train if from_train.any() else members]
        if curvature is None:
            prototypes[row] = F.normalize(chosen.mean(dim=0), dim=0)
        else:
            prototypes[row] = poincare_midpoint(chosen, curvature)
    return class_ids, prototypes.numpy().astype(np.float32), sources


def representatives_table(parts: list[tuple[str, np.ndarray, np.ndarray, list[str]]]) -> pa.Table:
    """The representatives file from (kind, class ids, vectors, sources) parts."""
    return pa.table(
        {
            "class_id": pa.array(np.concatenate([p[1] for p in parts]), pa.int64()),
            "kind": pa.array([p[0] for p in parts for _ in p[1]], pa.string()),
            "vector": vectors_to_arrow(np.concatenate([p[2] for p in parts])),
            "source": pa.array([s for p in parts for s in p[3]], pa.string()),
        }
    )


def write_embeddings(embeddings: Embeddings, path: str | Path) -> None:
    columns = {
        "sample_id": pa.array(embeddings.sample_id, pa.int64()),
        "split": pa.array(embeddings.split.astype(str), pa.string()),
        "label": pa.array(embeddings.label, pa.int64()),
        "embedding": vectors_to_arrow(embeddings.embedding),
    }
    metadata = {}
    if embeddings.logits is not None:
        columns["logits"] = vectors_to_arrow(embeddings.logits)
        metadata[CLASSIFIER_IDS_KEY] = json.dumps(embeddings.classifier_class_ids).encode()
    table = pa.table(columns).replace_schema_metadata(metadata)
    write_parquet_atomic(table, path)


def read_embeddings(path: str | Path) -> Embeddings:
    table = read_parquet(path, ["sample_id", "split", "label", "embedding"])
    metadata = table.schema.metadata or {}
    logits, classifier_ids = None, None
    if "logits" in table.column_names:
        logits = arrow_to_vectors(table["logits"], f"{path} column 'logits'")
        classifier_ids = json.loads(metadata.get(CLASSIFIER_IDS_KEY, b"null"))
        if classifier_ids is None or len(classifier_ids) != logits.shape[1]:
            raise HierpipeError(
                f"{path}: logits have {logits.shape[1]} columns but the metadata names "
                f"{'no' if classifier_ids is None else len(classifier_ids)} classifier classes"
            )
    return Embeddings(
        sample_id=table["sample_id"].to_numpy(),
        split=np.asarray(table["split"].to_pylist(), dtype=object),
        label=table["label"].to_numpy(),
        embedding=arrow_to_vectors(table["embedding"], f"{path} column 'embedding'"),
        logits=logits,
        classifier_class_ids=classifier_ids,
    )


def read_representatives(path: str | Path) -> pd.DataFrame:
    """One row per (class, kind) with the vector as an array; vectors validated finite."""
    table = read_parquet(path, ["class_id", "kind", "vector", "source"])
    vectors = arrow_to_vectors(table["vector"], f"{path} column 'vector'")
    frame = table.drop(["vector"]).to_pandas()
    frame["vector"] = list(vectors)
    return frame
