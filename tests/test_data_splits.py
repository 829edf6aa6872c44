"""Splits (stratified by image, class-disjoint) and the torch image dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hierpipe.core.errors import HierpipeError
from hierpipe.data import ImageTableDataset, make_split, prepare_dataset, read_dataset, read_split
from hierpipe.data.splits import split_by_class, split_by_image
from hierpipe.data.transforms import build_transform

FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    options = {"image_size": 16, "images_per_class": 10, "families": 2, "genera_per_family": 2}
    prepare_dataset("shapes", root, options)
    return root


def _per_class_counts(labels: np.ndarray, subsets: np.ndarray) -> dict[int, dict[str, int]]:
    return {
        int(c): {name: int(np.sum(subsets[labels == c] == name)) for name in FRACTIONS}
        for c in np.unique(labels)
    }


def test_split_by_image_fractions_per_class() -> None:
    labels = np.repeat(np.arange(10), 20)
    subsets = split_by_image(labels, FRACTIONS, seed=1)
    assert subsets.shape == labels.shape
    for counts in _per_class_counts(labels, subsets).values():
        assert counts == {"train": 14, "val": 2, "test": 4}


def test_split_by_image_small_classes_get_every_subset() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 2, 2, 3])
    counts = _per_class_counts(labels, split_by_image(labels, FRACTIONS, seed=0))
    assert counts[0] == {"train": 1, "val": 1, "test": 1}
    assert counts[1] == {"train": 2, "val": 1, "test": 1}
    # Fewer samples than subsets: largest remainders win, train then test.
    assert counts[2] == {"train": 1, "val": 0, "test": 1}
    assert counts[3] == {"train": 1, "val": 0, "test": 0}


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(1, 40), min_size=1, max_size=8),
    st.lists(st.integers(1, 10), min_size=1, max_size=4),
    st.integers(0, 2**32 - 1),
)
def test_split_by_image_rounding(class_sizes: list[int], weights: list[int], seed: int) -> None:
    fractions = {f"s{i}": w / sum(weights) for i, w in enumerate(weights)}
    labels = np.repeat(np.arange(len(class_sizes)), class_sizes)
    subsets = split_by_image(labels, fractions, seed)
    for label, size in enumerate(class_sizes):
        counts = np.array([np.sum(subsets[labels == label] == name) for name in fractions])
        assert counts.sum() == size
        exact = size * np.array(list(fractions.values()))
        if size >= len(fractions):
            assert (counts >= 1).all()
        if (exact >= 1).all():
            assert (np.abs(counts - exact) < 1).all()


def test_split_by_image_is_deterministic() -> None:
    labels = np.repeat(np.arange(5), 30)
    first = split_by_image(labels, FRACTIONS, seed=4)
    np.testing.assert_array_equal(first, split_by_image(labels, FRACTIONS, seed=4))
    assert (first != split_by_image(labels, FRACTIONS, seed=5)).any()


def test_split_by_class_is_class_disjoint() -> None:
    labels = np.repeat(np.arange(20), np.arange(1, 21))
    fractions = {"train": 0.5, "val": 0.25, "test": 0.25}
    subsets = split_by_class(labels, fractions, seed=0)
    class_subset = {}
    for label in range(20):
        assert len(set(subsets[labels == label])) == 1
        class_subset[label] = subsets[labels == label][0]
    assert sorted(class_subset.values()).count("train") == 10
    assert sorted(class_subset.values()).count("val") == 5
    assert sorted(class_subset.values()).count("test") == 5

    np.testing.assert_array_equal(subsets, split_by_class(labels, fractions, seed=0))
    assert (subsets != split_by_class(labels, fractions, seed=1)).any()


def test_split_by_class_few_classes() -> None:
    subsets = split_by_class(np.array([7, 3, 3, 9]), {"train": 0.9, "test": 0.1}, seed=0)
    assert sorted(set(subsets)) == ["test", "train"]


@pytest.mark.parametrize(
    "fractions",
    [{}, {"train": 0.5, "test": 0.4}, {"train": 1.2, "test": -0.2}, {"train": 1.0, "test": 0.0}],
)
def test_invalid_fractions(fractions: dict[str, float]) -> None:
    for split in (split_by_image, split_by_class):
        with pytest.raises(HierpipeError, match="split fractions"):
            split(np.zeros(4, dtype=int), fractions, seed=0)


def test_invalid_labels() -> None:
    with pytest.raises(HierpipeError, match="expected 1-D integers"):
        split_by_image(np.zeros(4), FRACTIONS, seed=0)


def test_make_split(dataset: Path) -> None:
    path = make_split(dataset, "seed3", "by_image", FRACTIONS, seed=3)
    assert path == dataset / "splits" / "seed3.parquet"
    frame, description = read_split(path)
    assert description == {"scheme": "by_image", "seed": 3, "fractions": FRACTIONS}
    samples, _ = read_dataset(dataset)
    assert sorted(frame["sample_id"]) == sorted(samples["sample_id"])
    merged = samples.merge(frame, on="sample_id")
    for counts in _per_class_counts(
        merged["label"].to_numpy(), merged["subset"].to_numpy()
    ).values():
        assert counts == {"train": 7, "val": 1, "test": 2}

    again = make_split(dataset, "again", "by_image", FRACTIONS, seed=3)
    assert again.read_bytes() == path.read_bytes()

    by_class, _ = read_split(
        make_split(dataset, "classes", "by_class", {"train": 0.5, "test": 0.5}, 0)
    )
    merged = samples.merge(by_class, on="sample_id")
    assert (merged.groupby("label")["subset"].nunique() == 1).all()
    assert merged.groupby("subset")["label"].nunique().to_dict() == {"test": 6, "train": 6}


def test_make_split_errors(dataset: Path) -> None:
    with pytest.raises(
        HierpipeError, match="unknown split scheme 'random'; known: by_image, by_class"
    ):
        make_split(dataset, "x", "random", FRACTIONS, seed=0)
    with pytest.raises(HierpipeError, match="split name"):
        make_split(dataset, "../x", "by_image", FRACTIONS, seed=0)


def test_image_table_dataset(dataset: Path) -> None:
    samples, _ = read_dataset(dataset)
    rows = samples.iloc[[0, 15, 37]]
    images = ImageTableDataset(
        dataset,
        rows["sample_id"],
        list(rows["path"]),
        rows["label"],
        build_transform(image_size=16),
    )
    assert len(images) == 3
    image, label, sample_id = images[1]
    assert (label, sample_id) == (int(rows["label"].iloc[1]), int(rows["sample_id"].iloc[1]))
    assert image.shape == (3, 16, 16)
    assert image.dtype == torch.float32
    assert 0.0 <= image.min() < image.max() <= 1.0

    resized = ImageTableDataset(
        dataset, [0], [rows["path"].iloc[0]], [0], build_transform(image_size=24)
    )
    assert resized[0][0].shape == (3, 24, 24)

    batch = next(iter(torch.utils.data.DataLoader(images, batch_size=3)))
    assert batch[2].tolist() == rows["sample_id"].tolist()


def test_image_table_dataset_unreadable_images(dataset: Path, tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n but then garbage")
    images = ImageTableDataset(
        tmp_path, [41, 42], ["bad.png", "gone.png"], [0, 0], build_transform(image_size=16)
    )
    with pytest.raises(HierpipeError, match=r"sample 41: cannot read image .*bad\.png"):
        images[0]
    with pytest.raises(HierpipeError, match=r"sample 42: cannot read image .*gone\.png"):
        images[1]
    with pytest.raises(HierpipeError, match="one of each per sample"):
        ImageTableDataset(tmp_path, [1, 2], ["a.png"], [0], build_transform(image_size=16))


@pytest.mark.parametrize("augment", ["none", "flip"])
def test_preloaded_images_give_the_same_tensors(
    augment: str, dataset: Path, tmp_path: Path
) -> None:
    samples, _ = read_dataset(dataset)
    rows = samples.iloc[:12]
    arguments = (dataset, rows["sample_id"], list(rows["path"]), rows["label"])
    transform = build_transform(augment, image_size=16)
    from_disk = ImageTableDataset(*arguments, transform)
    in_memory = ImageTableDataset(*arguments, transform, preload=True)
    if transform.random:  # the pixels are kept, and augmented afresh at every read
        assert in_memory.tensors is None and in_memory.pixels[0].dtype == np.uint8
    else:  # the transform's output is kept
        assert in_memory.pixels is None and len(in_memory.tensors) == len(rows)
    for index in range(len(rows)):
        torch.manual_seed(index)  # the same flips on both sides
        expected = from_disk[index]
        torch.manual_seed(index)
        torch.testing.assert_close(in_memory[index][0], expected[0], rtol=0, atol=0)
        assert in_memory[index][1:] == expected[1:]
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n but then garbage")
    with pytest.raises(HierpipeError, match=r"sample 7: cannot read image .*bad\.png"):
        ImageTableDataset(tmp_path, [7], ["bad.png"], [0], build_transform(), preload=True)
