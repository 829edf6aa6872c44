"""CIFAR-100 from a tiny archive of real pickles in the official layout, served over 127.0.0.1."""

import pickle
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import nodes_per_level
from dataset_fixtures import add_member, assert_pinned_checksum_refused, pin_files
from http_server import serve_directory
from PIL import Image

from hierpipe.cli import main
from hierpipe.core.errors import HierpipeError
from hierpipe.data import cifar100, make_split, read_dataset, read_split

# Eight of the real classes (in the real files' alphabetical order) in five superclasses, with
# their rows of ProxyDR's CIFAR100_cls.csv: 3 -> 4 -> 5 -> 8 nodes per level.
PATHS = {
    "apple": "Nature_non-animal/Plants/fruit_and_vegetables/apple",
    "aquarium_fish": "Animals/Non-mammal_vertebrates/fish/aquarium_fish",
    "bear": "Animals/Mammals/large_carnivores/bear",
    "bicycle": "Artificial/Artificial_outdoor/vehicles_1/bicycle",
    "pear": "Nature_non-animal/Plants/fruit_and_vegetables/pear",
    "tractor": "Artificial/Artificial_outdoor/vehicles_2/tractor",
    "trout": "Animals/Non-mammal_vertebrates/fish/trout",
    "wolf": "Animals/Mammals/large_carnivores/wolf",
}
FINE = list(PATHS)
COARSE = sorted({path.split("/")[2] for path in PATHS.values()})
TRAIN_PER_CLASS, TEST_PER_CLASS = 10, 2


def _csv(paths: dict[str, str]) -> str:
    rows = [f"{name},{path},{number}" for number, (name, path) in enumerate(paths.items())]
    return "\r\n".join(["Class,Path,Number", *rows]) + "\r\n"  # CRLF, as the real file


def _batch(per_class: int, seed: int) -> dict:
    """A train/test dict as in the real pickles, classes interleaved in a random order."""
    rng = np.random.default_rng(seed)
    fine = rng.permutation(np.repeat(np.arange(len(FINE)), per_class))
    coarse = [COARSE.index(PATHS[FINE[f]].split("/")[2]) for f in fine]
    return {
        b"filenames": [f"{FINE[f]}_s_{i:06d}.png".encode() for i, f in enumerate(fine)],
        b"batch_label": b"training batch 1 of 1" if seed == 0 else b"testing batch 1 of 1",
        b"fine_labels": fine.tolist(),
        b"coarse_labels": coarse,
        b"data": rng.integers(0, 256, (len(fine), 3072), dtype=np.uint8),
    }


def _serve_files(tmp_path: Path, meta: dict | None = None, csv: str | None = None) -> dict:
    """The mirror: cifar-100-python.tar.gz and CIFAR100_cls.csv; returns the pickled dicts."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    batches = {"train": _batch(TRAIN_PER_CLASS, 0), "test": _batch(TEST_PER_CLASS, 1)}
    meta = meta or {
        b"fine_label_names": [name.encode() for name in FINE],
        b"coarse_label_names": [name.encode() for name in COARSE],
    }
    with tarfile.open(mirror / "cifar-100-python.tar.gz", "w:gz") as archive:
        # protocol 4 writes the same dicts as the real Python 2 files, numpy arrays included
        for name, content in (*batches.items(), ("meta", meta)):
            add_member(archive, f"cifar-100-python/{name}", pickle.dumps(content, protocol=4))
    (mirror / "CIFAR100_cls.csv").write_text(csv or _csv(PATHS), newline="")
    return batches


def _prepare(tmp_path: Path, monkeypatch, *args: str, out: str = "cifar100") -> Path:
    with serve_directory(tmp_path / "mirror") as server:
        pin_files(monkeypatch, cifar100, tmp_path / "mirror", server.url)
        assert main(["data", "prepare", "cifar100", "--out", str(tmp_path / out), *args]) == 0
    return tmp_path / out


def test_prepare_writes_pngs_samples_tree_and_splits(tmp_path, monkeypatch):
    batches = _serve_files(tmp_path)
    out = _prepare(tmp_path, monkeypatch)
    samples, tree = read_dataset(out)
    train, test = batches["train"][b"fine_labels"], batches["test"][b"fine_labels"]
    assert samples["sample_id"].tolist() == list(range(len(train) + len(test)))
    assert samples["label"].tolist() == train + test
    assert samples["path"][0] == f"images/train/{FINE[train[0]]}/0.png"
    assert samples["path"].iloc[-1] == f"images/test/{FINE[test[-1]]}/{len(test) - 1}.png"
    # the pixels survive the planes-to-RGB reshaping and the PNG round trip
    for row, subset in ((3, "train"), (5, "test")):
        planes = batches[subset][b"data"][row].reshape(3, 32, 32)
        label = batches[subset][b"fine_labels"][row]
        with Image.open(out / f"images/{subset}/{FINE[label]}/{row}.png") as image:
            assert image.mode == "RGB"
            np.testing.assert_array_equal(np.asarray(image), planes.transpose(1, 2, 0))
    assert tree.classes == tuple(FINE)
    assert tree.paths[1] == ("Animals", "Non-mammal_vertebrates", "fish", "aquarium_fish")
    assert nodes_per_level(tree) == [3, 4, 5, 8]

    make_split(out, "official", "predefined", {}, 0, predefined="official")
    official, _ = read_split(out / "splits/official.parquet")
    assert official["subset"].tolist() == ["train"] * len(train) + ["test"] * len(test)
    make_split(out, "proxydr", "predefined", {}, 0, predefined="proxydr")
    proxydr, description = read_split(out / "splits/proxydr.parquet")
    assert description == {"scheme": "predefined", "predefined": "proxydr"}
    assert proxydr["subset"].iloc[len(train) :].eq("test").all()
    per_class = pd.crosstab(samples["label"], proxydr["subset"])
    # 90 / 10 of every class's official training images, as 45,000 / 5,000 of 50,000
    assert (per_class["train"] == 9).all() and (per_class["val"] == 1).all()
    assert (per_class["test"] == TEST_PER_CLASS).all()


def test_coarse_tree_puts_the_classes_under_their_superclasses(tmp_path, monkeypatch):
    _serve_files(tmp_path)
    out = _prepare(tmp_path, monkeypatch, "--option", "tree=coarse")
    _, tree = read_dataset(out)
    assert nodes_per_level(tree) == [5, 8]
    assert tree.paths[FINE.index("trout")] == ("fish", "trout")
    assert tree.paths[FINE.index("tractor")] == ("vehicles_2", "tractor")


def test_same_archive_gives_byte_identical_tables_and_images(tmp_path, monkeypatch):
    _serve_files(tmp_path)
    a = _prepare(tmp_path, monkeypatch, out="a")
    b = _prepare(tmp_path, monkeypatch, out="b")
    for name in ("samples.parquet", "classes.parquet", "predefined_splits.parquet"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    for path in pd.read_parquet(a / "samples.parquet")["path"][::7]:
        assert (a / path).read_bytes() == (b / path).read_bytes()


def test_rerun_rewrites_the_images(tmp_path, monkeypatch):
    _serve_files(tmp_path)
    out = _prepare(tmp_path, monkeypatch)
    stray = out / "images/train/apple/stray.png"
    stray.write_bytes(b"left over")
    _prepare(tmp_path, monkeypatch, "--option", "tree=coarse")
    assert not stray.exists()
    samples, _ = read_dataset(out)
    assert all((out / path).is_file() for path in samples["path"])


def test_checksum_mismatch_extracts_nothing(tmp_path):
    _serve_files(tmp_path)
    # the real pinned md5 against the fixture archive
    assert_pinned_checksum_refused(
        cifar100.CIFAR100Builder(),
        tmp_path / "cifar100",
        tmp_path / "mirror",
        "cifar-100-python.tar.gz",
        "eb9058c3a382ffc7106e4002c42a8d85",
    )


def test_hierarchy_not_matching_the_classes_is_refused(tmp_path, monkeypatch):
    paths = {**PATHS, "pine_tree": "Nature_non-animal/Plants/trees/pine_tree"}
    del paths["wolf"]
    _serve_files(tmp_path, csv=_csv(paths))
    with serve_directory(tmp_path / "mirror") as server:
        pin_files(monkeypatch, cifar100, tmp_path / "mirror", server.url)
        builder = cifar100.CIFAR100Builder()
        with pytest.raises(
            HierpipeError,
            match=r"CIFAR100_cls.csv: .* missing from the file: \['wolf'\]; in the file but "
            r"not classes: \['pine_tree'\]",
        ):
            builder.prepare(tmp_path / "out", builder.Options(), None)
    # refused before the images were exported
    assert not (tmp_path / "out/images").exists()
    assert not (tmp_path / "out/samples.parquet").exists()


def test_pickle_with_other_globals_is_refused(tmp_path, monkeypatch):
    # a pickle that would call print (and could call anything) on loading
    meta = {b"fine_label_names": [name.encode() for name in FINE], b"coarse_label_names": print}
    _serve_files(tmp_path, meta=meta)
    with serve_directory(tmp_path / "mirror") as server:
        pin_files(monkeypatch, cifar100, tmp_path / "mirror", server.url)
        builder = cifar100.CIFAR100Builder()
        with pytest.raises(HierpipeError, match=r"meta: not a CIFAR-100 pickle .*builtins.print"):
            builder.prepare(tmp_path / "out", builder.Options(), None)


def test_unknown_tree_option_is_refused():
    with pytest.raises(HierpipeError, match=r"tree='wordnet'; expected one of proxydr, coarse"):
        cifar100.CIFAR100Builder.Options(tree="wordnet")
