"""CIFAR-100 (Krizhevsky 2009) under ProxyDR's 4-level hierarchy or its own 20 superclasses.

Source layout (cifar-100-python.tar.gz): `cifar-100-python/{train,test,meta}`, pickled dicts
with bytes keys. `train` (50,000 images) and `test` (10,000) hold b'data' (uint8, N x 3072:
the red, green and blue 32x32 planes in turn, each row-major), b'fine_labels',
b'coarse_labels' and b'filenames'; `meta` holds b'fine_label_names' and
b'coarse_label_names'.

The training pipeline reads image files, so prepare writes every image as a PNG,
`images/<train|test>/<fine name>/<row>.png` (row = index in its pickle). The export of
60,000 files takes a while (a quarter of a minute or more, depending on the disk) and is
redone by every prepare, so that the images always come from the current source. sample_id
counts the training images and then the test images from 0; the label is the fine class.

Option `tree`: `proxydr` (default) is ProxyDR's CIFAR100_cls.csv, 3 -> 7 -> 20 -> 100 nodes
per level, downloaded beside the archive from github.com/hjk92g/ProxyDR, pinned by sha256;
`coarse` is the dataset's own 20 superclasses above the 100 classes.

Predefined splits (split scheme `predefined`): `official` (the pickles' train/test) and
`proxydr` (ProxyDR's `--use_val` in train_cifar100.py: the official test set is test, the
official training set is split 45,000 train / 5,000 val, stratified per class, seed 0).
"""

from __future__ import annotations

import logging
import pickle
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from hierpipe.core.errors import HierpipeError
from hierpipe.core.hierarchy import ClassTree
from hierpipe.data.fetch import RemoteFile
from hierpipe.data.hierarchy_files import parse_path_csv
from hierpipe.data.registry import DatasetBuilder, check_choice
from hierpipe.data.sources import raw_dir
from hierpipe.data.splits import split_by_image
from hierpipe.data.tables import (
    begin_dataset,
    write_classes,
    write_predefined_splits,
    write_samples,
)

log = logging.getLogger(__name__)

HIERARCHY_FILE = "CIFAR100_cls.csv"
_HIERARCHY_URL = f"https://raw.githubusercontent.com/hjk92g/ProxyDR/main/{HIERARCHY_FILE}"
FILES = (
    RemoteFile(
        "cifar-100-python.tar.gz",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        "md5:eb9058c3a382ffc7106e4002c42a8d85",
    ),
    RemoteFile(
        HIERARCHY_FILE,
        _HIERARCHY_URL,
        "sha256:7d257d96ccecf6979283e867ca1654692849075db05be4d5de7734ddf552d903",
        extract=False,
    ),
)
DATASET_DIR = "cifar-100-python"
IMAGES_DIR = "images"
TREES = ("proxydr", "coarse")
SUBSETS = ("train", "test")
_SIDE = 32  # pixels per image side
# ProxyDR's 45,000 / 5,000 split of the official training set, seeded like its seed-0 run.
_PROXYDR_FRACTIONS = {"train": 0.9, "val": 0.1}
_PROXYDR_SEED = 0
# Fine and coarse names become directory names; CIFAR's are lowercase words with underscores.
_NAME = re.compile(r"\w[\w-]*")

# The only globals a CIFAR pickle refers to: numpy's array reconstruction (numpy.core before
# numpy 2, numpy._core since), everything else being dicts, lists, ints and bytes.
_PICKLE_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }
)


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that admits plain data and numpy arrays and refuses any other global.

    Unpickling may call any importable function. The downloaded archive is safe to unpickle
    once its md5 matched the published one, but a source directory or mirror is only as
    trustworthy as whoever filled it; refusing other globals keeps a substituted file from
    running code either way.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load the global {module}.{name}")
        return super().find_class(module, name)


def _load(path: Path, keys: tuple[bytes, ...]) -> dict[bytes, Any]:
    """A CIFAR pickle (a dict with bytes keys) holding at least ``keys``."""
    if not path.is_file():
        raise HierpipeError(f"{path}: missing; expected the CIFAR-100 pickle")
    try:
        with path.open("rb") as file:
            # encoding="bytes": the files come from Python 2, whose str keys are bytes here
            content = _ArrayUnpickler(file, encoding="bytes").load()
    except Exception as exc:  # a corrupt pickle fails with almost any kind of exception
        raise HierpipeError(f"{path}: not a CIFAR-100 pickle ({exc})") from exc
    if not isinstance(content, dict):
        raise HierpipeError(f"{path}: expected a pickled dict, got {type(content).__name__}")
    missing = [key.decode() for key in keys if key not in content]
    if missing:
        raise HierpipeError(f"{path}: missing key(s) {missing}; has {list(content)[:10]}")
    return content


def _names(meta: dict[bytes, Any], key: bytes, path: Path) -> list[str]:
    values = meta[key]
    if not isinstance(values, list) or not all(isinstance(v, bytes) for v in values):
        raise HierpipeError(f"{path}: {key.decode()} must be a list of byte strings")
    names = [value.decode("ascii", errors="replace") for value in values]
    bad = [name for name in names if not _NAME.fullmatch(name)]
    if bad:
        raise HierpipeError(
            f"{path}: {key.decode()} has name(s) unfit for a directory: {bad[:5]}; expected "
            "letters, digits, '_' and '-'"
        )
    if len(set(names)) != len(names):
        raise HierpipeError(f"{path}: {key.decode()} lists a name more than once")
    return names


@dataclass(frozen=True)
class _Batch:
    """One of the train/test pickles: images (N x 32 x 32 x 3 RGB) and their labels."""

    images: np.ndarray
    fine: np.ndarray
    coarse: np.ndarray


def _batch(path: Path, fine_count: int, coarse_count: int) -> _Batch:
    content = _load(path, (b"data", b"fine_labels", b"coarse_labels"))
    data = content[b"data"]
    if not (
        isinstance(data, np.ndarray)
        and data.dtype == np.uint8
        and data.ndim == 2
        and data.shape[1] == 3 * _SIDE * _SIDE
    ):
        shape = getattr(data, "shape", None)
        raise HierpipeError(
            f"{path}: data must be a uint8 array of N x {3 * _SIDE * _SIDE}, got "
            f"{type(data).__name__} of shape {shape}"
        )
    labels = {}
    for key, count in ((b"fine_labels", fine_count), (b"coarse_labels", coarse_count)):
        values = np.asarray(content[key])
        if values.shape != (len(data),) or not np.issubdtype(values.dtype, np.integer):
            raise HierpipeError(
                f"{path}: {key.decode()} must be {len(data)} integers, got shape {values.shape}"
            )
        if values.size and (values.min() < 0 or values.max() >= count):
            raise HierpipeError(
                f"{path}: {key.decode()} outside 0..{count - 1} (the names in meta)"
            )
        labels[key] = values.astype(np.int64)
    # each row holds the red, then the green, then the blue plane
    images = np.ascontiguousarray(data.reshape(-1, 3, _SIDE, _SIDE).transpose(0, 2, 3, 1))
    return _Batch(images, labels[b"fine_labels"], labels[b"coarse_labels"])


class CIFAR100Builder(DatasetBuilder):
    """CIFAR-100: 60,000 32x32 images of 100 classes in 20 superclasses."""

    source_layouts = (
        "mirrors hold cifar-100-python.tar.gz, or its extracted cifar-100-python/ with train, "
        "test and meta"
    )

    @dataclass(frozen=True)
    class Options:
        tree: str = "proxydr"

        def __post_init__(self) -> None:
            check_choice("cifar100", "tree", self.tree, TREES)

    def prepare(self, out_dir: Path, options: CIFAR100Builder.Options, source: str | None) -> None:
        out_dir = begin_dataset(out_dir)
        root = raw_dir(FILES, source, out_dir) / DATASET_DIR
        meta = _load(root / "meta", (b"fine_label_names", b"coarse_label_names"))
        fine_names = _names(meta, b"fine_label_names", root / "meta")
        coarse_names = _names(meta, b"coarse_label_names", root / "meta")
        batches = {
            subset: _batch(root / subset, len(fine_names), len(coarse_names)) for subset in SUBSETS
        }
        labelled = set(np.concatenate([batch.fine for batch in batches.values()]).tolist())
        unseen = [name for label, name in enumerate(fine_names) if label not in labelled]
        if unseen:
            raise HierpipeError(f"{root}: fine class(es) without images: {unseen[:10]}")
        # the tree is checked before the slow export, so a mismatch fails at once
        if options.tree == "proxydr":
            tree = _proxydr_tree(out_dir / "raw", fine_names)
        else:
            tree = _coarse_tree(root, batches, fine_names, coarse_names)
        # The PNGs are encoded here from the pickles' arrays, so unlike downloaded image files
        # they cannot be truncated or corrupt: no check_images pass (and no on_bad_image).
        paths = _export(out_dir, batches, fine_names)
        train, test = batches["train"].fine, batches["test"].fine
        samples = pd.DataFrame(
            {
                "sample_id": np.arange(len(train) + len(test), dtype=np.int64),
                "path": paths,
                "label": np.concatenate([train, test]),
            }
        )
        write_predefined_splits(
            out_dir,
            samples["sample_id"],
            {
                "official": ["train"] * len(train) + ["test"] * len(test),
                "proxydr": [
                    *split_by_image(train, _PROXYDR_FRACTIONS, _PROXYDR_SEED),
                    *["test"] * len(test),
                ],
            },
        )
        write_classes(out_dir, tree)
        write_samples(out_dir, samples)


def _proxydr_tree(raw: Path, fine_names: list[str]) -> ClassTree:
    """ProxyDR's paths (superclass group / group / superclass / class) in fine-label order."""
    path = raw / HIERARCHY_FILE
    if not path.is_file():
        raise HierpipeError(
            f"{path}: missing; a CIFAR-100 source directory must hold {HIERARCHY_FILE} beside "
            f"{DATASET_DIR}/ (from {_HIERARCHY_URL}), or use the option tree=coarse"
        )
    paths = parse_path_csv(path.read_text(), str(path))
    not_in_file = [name for name in fine_names if name not in paths]
    not_classes = sorted(set(paths) - set(fine_names))
    if not_in_file or not_classes:
        raise HierpipeError(
            f"{path}: its classes do not match the {len(fine_names)} fine classes of "
            f"{DATASET_DIR}/meta; missing from the file: {not_in_file[:10]}; in the file but "
            f"not classes: {not_classes[:10]}"
        )
    return ClassTree.from_paths([paths[name] for name in fine_names])


def _coarse_tree(
    root: Path, batches: dict[str, _Batch], fine_names: list[str], coarse_names: list[str]
) -> ClassTree:
    """Superclass / class paths in fine-label order, each class in the superclass its
    images are labelled with."""
    fine = np.concatenate([batch.fine for batch in batches.values()])
    coarse = np.concatenate([batch.coarse for batch in batches.values()])
    pairs = np.unique(np.stack([fine, coarse], axis=1), axis=0)
    classes, counts = np.unique(pairs[:, 0], return_counts=True)
    split = [fine_names[c] for c in classes[counts > 1]]
    if split:
        raise HierpipeError(
            f"{root}: fine class(es) {split[:10]} carry more than one coarse label; expected "
            "each class inside one superclass"
        )
    parent = dict(pairs.tolist())
    return ClassTree.from_paths(
        [(coarse_names[parent[label]], name) for label, name in enumerate(fine_names)]
    )


def _export(out_dir: Path, batches: dict[str, _Batch], fine_names: list[str]) -> list[str]:
    """Write every image as a PNG; returns the paths, relative to ``out_dir``, in sample order.

    PIL's PNG encoder with default settings writes no timestamp, so the bytes depend only on
    the pixels.
    """
    images_dir = out_dir / IMAGES_DIR
    shutil.rmtree(images_dir, ignore_errors=True)
    total = sum(len(batch.fine) for batch in batches.values())
    log.info("writing %d PNG images under %s", total, images_dir)
    paths = []
    with tqdm(total=total, desc="CIFAR-100 PNGs", unit="image", disable=None) as bar:
        for subset, batch in batches.items():
            for label in np.unique(batch.fine):
                (images_dir / subset / fine_names[label]).mkdir(parents=True)
            for row, (pixels, label) in enumerate(zip(batch.images, batch.fine, strict=True)):
                relative = f"{IMAGES_DIR}/{subset}/{fine_names[label]}/{row}.png"
                Image.fromarray(pixels).save(out_dir / relative, format="PNG")
                paths.append(relative)
                bar.update()
    return paths
