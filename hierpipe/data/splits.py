"""Deterministic dataset splits: stratified by image, class-disjoint for metric learning, or
one the dataset defines itself (official train/test, predefined_splits.parquet)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from hierpipe.core.errors import HierpipeError
from hierpipe.data.tables import SPLITS_DIR, read_dataset, read_predefined_split, write_split

_FRACTION_TOLERANCE = 1e-6


def _check_fractions(fractions: Mapping[str, float]) -> tuple[list[str], np.ndarray]:
    names = list(fractions)
    values = np.array([fractions[name] for name in names], dtype=float)
    if not names or any(not isinstance(n, str) or not n for n in names):
        raise HierpipeError(f"split fractions {dict(fractions)}: expected non-empty subset names")
    if (values <= 0).any() or abs(values.sum() - 1) > _FRACTION_TOLERANCE:
        raise HierpipeError(
            f"split fractions {dict(fractions)}: expected positive fractions summing to 1"
        )
    return names, values


def _allocate(count: int, fractions: np.ndarray) -> np.ndarray:
    """Split ``count`` items in ``fractions`` (largest remainder), at least one per subset
    whenever ``count`` allows it."""
    exact = count * fractions
    sizes = np.floor(exact).astype(np.int64)
    # Stable sort: ties go to the earlier subset, so the result does not depend on the RNG.
    by_remainder = np.argsort(-(exact - sizes), kind="stable")
    sizes[by_remainder[: count - sizes.sum()]] += 1
    if count >= len(fractions):
        for empty in np.flatnonzero(sizes == 0):
            sizes[np.argmax(sizes)] -= 1
            sizes[empty] += 1
    return sizes


def _assign(order: np.ndarray, sizes: np.ndarray, names: list[str]) -> np.ndarray:
    """Subset name of each position in ``order`` (a permutation), in consecutive blocks."""
    subsets = np.empty(len(order), dtype=object)
    subsets[order] = np.repeat(np.array(names, dtype=object), sizes)
    return subsets


def _labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise HierpipeError(
            f"labels have shape {labels.shape} and dtype {labels.dtype}; expected 1-D integers"
        )
    return labels


def split_by_image(labels: np.ndarray, fractions: Mapping[str, float], seed: int) -> np.ndarray:
    """Subset name per sample, stratified: each class is split in ``fractions``."""
    labels = _labels(labels)
    names, values = _check_fractions(fractions)
    rng = np.random.default_rng(seed)
    subsets = np.empty(len(labels), dtype=object)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        order = rng.permutation(len(members))
        subsets[members] = _assign(order, _allocate(len(members), values), names)
    return subsets.astype(str)


def split_by_class(labels: np.ndarray, fractions: Mapping[str, float], seed: int) -> np.ndarray:
    """Subset name per sample with classes partitioned between subsets (class-disjoint)."""
    labels = _labels(labels)
    names, values = _check_fractions(fractions)
    classes, inverse = np.unique(labels, return_inverse=True)
    order = np.random.default_rng(seed).permutation(len(classes))
    class_subsets = _assign(order, _allocate(len(classes), values), names)
    return class_subsets[inverse].astype(str)


def official_and_metric_learning_splits(
    official: Sequence[str], labels: np.ndarray, num_classes: int
) -> dict[str, list[str]]:
    """The predefined splits of CUB and Cars196: their official train/test split, and the
    metric-learning protocol, where the first half of the classes train and the rest are
    retrieved (test)."""
    train_classes = num_classes // 2
    metric_learning = ["train" if label < train_classes else "test" for label in _labels(labels)]
    return {"official": list(official), "metric_learning": metric_learning}


SCHEMES = {"by_image": split_by_image, "by_class": split_by_class}
PREDEFINED = "predefined"


def make_split(
    root: str | Path,
    name: str,
    scheme: str,
    fractions: Mapping[str, float],
    seed: int,
    predefined: str | None = None,
) -> Path:
    """Compute a split of the dataset at ``root`` and write ``<root>/splits/<name>.parquet``.

    ``scheme="predefined"`` copies the dataset's own split ``predefined`` (fractions and seed
    do not apply).
    """
    if scheme not in (*SCHEMES, PREDEFINED):
        known = ", ".join((*SCHEMES, PREDEFINED))
        raise HierpipeError(f"unknown split scheme {scheme!r}; known: {known}")
    if (scheme == PREDEFINED) != (predefined is not None):
        raise HierpipeError(
            f"split scheme {scheme!r} with predefined={predefined!r}: a predefined split name "
            "goes with scheme 'predefined' and only with it"
        )
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise HierpipeError(f"split name {name!r}: expected a plain file name stem")
    root = Path(root)
    samples, _ = read_dataset(root)
    # Order by sample_id so that the split does not depend on the row order of the table.
    samples = samples.sort_values("sample_id", kind="stable")
    if scheme == PREDEFINED:
        given = read_predefined_split(root, predefined).set_index("sample_id")["subset"]
        subsets = given.reindex(samples["sample_id"]).to_numpy()
        if pd.isna(subsets).any():
            raise HierpipeError(
                f"{root}: predefined split {predefined!r} does not cover every sample"
            )
        description = {"scheme": scheme, "predefined": predefined}
    else:
        subsets = SCHEMES[scheme](samples["label"].to_numpy(), fractions, seed)
        description = {"scheme": scheme, "seed": seed, "fractions": dict(fractions)}
    return write_split(
        root / SPLITS_DIR / f"{name}.parquet", samples["sample_id"].to_numpy(), subsets, description
    )
