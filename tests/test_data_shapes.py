"""The embedded ``shapes`` dataset and the dataset registry."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import nodes_per_level
from PIL import Image

from hierpipe.core import catalog
from hierpipe.core.errors import HierpipeError
from hierpipe.data import get_dataset, prepare_dataset, read_dataset
from hierpipe.data.registry import DatasetBuilder, parse_options
from hierpipe.data.shapes import SHAPES, TEXTURES, ShapesBuilder

SMALL = {"image_size": 16, "images_per_class": 3, "families": 2, "genera_per_family": 2}


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def default_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("shapes")
    prepare_dataset("shapes", root)
    return root


def test_same_seed_gives_identical_files(default_root: Path, tmp_path: Path) -> None:
    prepare_dataset("shapes", tmp_path)
    hashes = _hashes(tmp_path)
    assert len(hashes) == 24 * 40 + 2
    assert hashes == _hashes(default_root)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_different_seeds_differ(tmp_path: Path) -> None:
    prepare_dataset("shapes", tmp_path / "a", SMALL)
    prepare_dataset("shapes", tmp_path / "b", {**SMALL, "seed": 1})
    a, b = _hashes(tmp_path / "a"), _hashes(tmp_path / "b")
    assert a.keys() == b.keys()
    images = [name for name in a if name.endswith(".png")]
    assert all(a[name] != b[name] for name in images)
    assert a["classes.parquet"] == b["classes.parquet"]


def test_default_tree_and_samples(default_root: Path) -> None:
    samples, tree = read_dataset(default_root)
    assert tree.num_classes == 24
    assert tree.max_depth == 3
    assert (tree.depths == 3).all()
    assert nodes_per_level(tree) == [4, 8, 24]
    assert tree.level_names(0) == ["circle", "square", "triangle", "cross"]
    assert tree.paths[0] == ("circle", "circle-solid", "circle-solid-small")
    assert tree.classes[1:4] == (
        "circle-solid-large",
        "circle-solid-small_tilted",
        "circle-striped-small",
    )
    assert len(set(tree.classes)) == 24
    assert np.bincount(samples["label"], minlength=24).tolist() == [40] * 24
    assert samples["sample_id"].tolist() == list(range(24 * 40))
    assert samples["path"].iloc[41] == "images/circle-solid-large/0001.png"


def test_images_are_rgb_of_the_requested_size(tmp_path: Path) -> None:
    prepare_dataset("shapes", tmp_path, {**SMALL, "image_size": 20})
    samples, _ = read_dataset(tmp_path)
    for path in samples["path"]:
        with Image.open(tmp_path / path) as image:
            assert (image.mode, image.size) == ("RGB", (20, 20))


def test_regenerating_replaces_the_images(tmp_path: Path) -> None:
    prepare_dataset("shapes", tmp_path, SMALL)
    prepare_dataset("shapes", tmp_path, {**SMALL, "images_per_class": 2})
    samples, _ = read_dataset(tmp_path)
    on_disk = sorted(str(p.relative_to(tmp_path)) for p in (tmp_path / "images").rglob("*.png"))
    assert on_disk == sorted(samples["path"])
    assert len(on_disk) == 2 * 2 * 2 * 3


def test_colour_is_nuisance_and_says_nothing_about_the_class(default_root: Path) -> None:
    # What makes an untrained backbone fail to see the tree: the strongest low-level signal,
    # an image's mean colour, varies as much within a class as between classes.
    samples, tree = read_dataset(default_root)
    colours = np.stack(
        [
            np.asarray(Image.open(default_root / p), dtype=float).mean(axis=(0, 1))
            for p in samples["path"]
        ]
    )
    labels = samples["label"].to_numpy()
    class_means = np.stack([colours[labels == c].mean(axis=0) for c in range(tree.num_classes)])
    within = np.mean([colours[labels == c].var(axis=0).sum() for c in range(tree.num_classes)])
    between = class_means.var(axis=0).sum()
    # with class-independent colour, the variance of a mean of 40 images is within / 40
    assert between < 3 * within / 40


def test_siblings_share_outline_and_pattern(default_root: Path) -> None:
    # the learnable cues follow the tree: outline = family, pattern = genus
    _, tree = read_dataset(default_root)
    for (family, genus, species), class_name in zip(tree.paths, tree.classes, strict=True):
        outline, pattern = genus.split("-")
        assert family == outline and outline in SHAPES and pattern in TEXTURES
        assert species == class_name and species.startswith(f"{genus}-")


def test_option_parsing_and_validation() -> None:
    builder = get_dataset("shapes")
    options = parse_options(builder, {"image_size": "64", "seed": 7})
    assert options == ShapesBuilder.Options(image_size=64, seed=7)
    with pytest.raises(HierpipeError, match=r"unknown option.*colour, size; accepted: image_size"):
        parse_options(builder, {"size": 3, "colour": "red"})
    for value in ("big", 2.5, True):
        with pytest.raises(HierpipeError, match=r"image_size=.* is not a valid int"):
            parse_options(builder, {"image_size": value})
    for key, value in [
        ("image_size", 8),
        ("images_per_class", 0),
        ("families", 7),
        ("genera_per_family", 5),
        ("species_per_genus", 13),
        ("seed", -1),
    ]:
        with pytest.raises(HierpipeError, match=f"{key}={value}; expected"):
            parse_options(builder, {key: value})


class _Typed(DatasetBuilder):
    """Unregistered builder with one option of every supported type."""

    @dataclass(frozen=True)
    class Options:
        flag: bool = False
        rate: float = 0.5
        label: str = "x"

    def prepare(self, out_dir: Path, options: object, source: str | None) -> None:
        raise AssertionError("never called")


def test_option_types() -> None:
    options = parse_options(_Typed, {"flag": "yes", "rate": "1e-3", "label": "7"})
    assert options == _Typed.Options(flag=True, rate=1e-3, label="7")
    assert parse_options(_Typed, {"flag": False, "rate": 2}).rate == 2.0
    for key, value in [
        ("flag", "maybe"),
        ("flag", 1),
        ("rate", True),
        ("rate", "fast"),
        ("label", 3),
    ]:
        with pytest.raises(HierpipeError, match=f"option {key}="):
            parse_options(_Typed, {key: value})


def test_shapes_takes_no_source(tmp_path: Path) -> None:
    with pytest.raises(HierpipeError, match="takes no source"):
        prepare_dataset("shapes", tmp_path, SMALL, source="http://example.org/shapes.zip")


class Unfrozen(DatasetBuilder):
    @dataclass
    class Options:
        size: int = 1

    def prepare(self, out_dir: Path, options: Any, source: str | None) -> None:
        raise AssertionError("never prepared")


def test_registry_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(HierpipeError, match=r"unknown dataset 'nope'; known datasets: .*shapes"):
        get_dataset("nope")
    entry = catalog.Dataset(f"{__name__}:Unfrozen")
    monkeypatch.setitem(catalog.DATASETS, "test-unfrozen", entry)
    with pytest.raises(HierpipeError, match="'test-unfrozen': Options must be a frozen dataclass"):
        get_dataset("test-unfrozen")


def test_many_species_and_genera(tmp_path: Path) -> None:
    options = {"image_size": 16, "images_per_class": 1, "families": 6}
    prepare_dataset("shapes", tmp_path, {**options, "genera_per_family": 4, "species_per_genus": 4})
    _, tree = read_dataset(tmp_path)
    assert nodes_per_level(tree) == [6, 24, 96]
    assert "hexagon-checkered-large_tilted" in tree.classes
