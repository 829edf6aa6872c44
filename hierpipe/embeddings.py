"""The Parquet files of a run's embeddings and class representatives.

embeddings.parquet: sample_id, split (the subset), label, embedding, and for trained models
the classifier's logits (columns = the classes in the file's `hierpipe.classifier_class_ids`
metadata). representatives.parquet: class_id, kind (proxy | prototype), vector, source.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from hierpipe.errors import HierpipeError
from hierpipe.io import arrow_to_vectors, read_parquet, vectors_to_arrow, write_parquet_atomic

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
    embedding: np.ndarray, label: np.ndarray, split: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Renormalised class means of normalised embeddings (ProxyDR's `proto`).

    Training samples define a class's prototype; a class without any (the unseen classes of
    a class-disjoint split) takes the mean of its samples in the other subsets, and its
    source says so. Returns (class ids, prototypes, source per class).
    """
    unit = embedding / np.linalg.norm(embedding, axis=1, keepdims=True)
    class_ids = np.unique(label)
    prototypes = np.empty((len(class_ids), unit.shape[1]), dtype=np.float64)
    sources = np.empty(len(class_ids), dtype=object)
    in_train = split == "train"
    for row, class_id in enumerate(class_ids):
        members = label == class_id
        from_train = members & in_train
        sources[row] = "train" if from_train.any() else "other"
        mean = unit[from_train if from_train.any() else members].mean(axis=0, dtype=np.float64)
        prototypes[row] = mean / np.linalg.norm(mean)
    return class_ids, prototypes.astype(np.float32), sources


def representatives_table(
    embeddings: Embeddings, proxies: np.ndarray | None, proxy_class_ids: list[int]
) -> pa.Table:
    class_ids, prototypes, sources = class_prototypes(
        embeddings.embedding, embeddings.label, embeddings.split
    )
    parts = [("prototype", class_ids, prototypes, sources)]
    if proxies is not None:
        parts.insert(0, ("proxy", np.asarray(proxy_class_ids), proxies, ["learned"] * len(proxies)))
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
