"""Stanford Online Products (Song et al. 2016): 120,053 eBay images of 22,634 products.

Source layout (Stanford_Online_Products.zip): `Stanford_Online_Products/{Ebay_train.txt,
Ebay_test.txt, <super>_final/<file>.JPG}`. Both metadata files start with the header
`image_id class_id super_class_id path`, then one whitespace-separated row per image, e.g.
`1 1 1 bicycle_final/111085122871_0.JPG`; image ids run on across the two files.

The tree has two levels: super class (12, named after the image folder: `bicycle_final` ->
`bicycle`) -> product (named `<super>_<class_id>`, e.g. `bicycle_1`). Labels are class_id - 1.
The predefined split `official` is the published one: Ebay_train.txt's images train (classes
1-11,318), Ebay_test.txt's test (11,319-22,634), so train and test share no class (as in
HIER's hier/dataset/SOP.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hierpipe.core.errors import HierpipeError
from hierpipe.core.hierarchy import ClassTree
from hierpipe.data.fetch import RemoteFile
from hierpipe.data.registry import DatasetBuilder, check_choice
from hierpipe.data.sources import raw_dir
from hierpipe.data.tables import (
    begin_dataset,
    write_classes,
    write_predefined_splits,
    write_samples,
)
from hierpipe.data.verify import ON_BAD_IMAGE, check_images

FILES = (
    # The official ftp://cs.stanford.edu/cs/cvgl/ path through its HTTP mirror (fetch speaks
    # no FTP); the md5 is the one pytorch-metric-learning and others pin for this file. Where
    # the server is gone, --source takes a mirror, the zip itself or its extracted directory.
    RemoteFile(
        "Stanford_Online_Products.zip",
        "http://ftp.cs.stanford.edu/cs/cvgl/Stanford_Online_Products.zip",
        "md5:7f73d41a2f44250d4779881525aea32e",
    ),
)
DATASET_DIR = "Stanford_Online_Products"
SPLIT_FILES = {"train": "Ebay_train.txt", "test": "Ebay_test.txt"}
HEADER = ("image_id", "class_id", "super_class_id", "path")
_FOLDER_SUFFIX = "_final"  # every super class folder is named `<super class>_final`


@dataclass(frozen=True)
class _Row:
    image_id: int
    class_id: int
    super_class_id: int
    path: str  # relative to the dataset directory
    subset: str  # the official split's subset: the file the row came from
    where: str  # "<file>, line <n>", for error messages


def _read_rows(path: Path, subset: str) -> list[_Row]:
    """The rows of Ebay_train.txt or Ebay_test.txt, the header checked."""
    if not path.is_file():
        raise HierpipeError(
            f"{path}: missing; expected the Stanford Online Products metadata file (a directory "
            f"given as source must hold {DATASET_DIR}/ as extracted from the zip)"
        )
    lines = path.read_text().splitlines()
    if not lines or tuple(lines[0].split()) != HEADER:
        got = repr(lines[0]) if lines else "an empty file"
        raise HierpipeError(f"{path}, line 1: expected the header {' '.join(HEADER)!r}, got {got}")
    rows = []
    for number, raw in enumerate(lines[1:], start=2):
        if not raw.strip():
            continue
        fields = raw.split()
        where = f"{path}, line {number}"
        if len(fields) != len(HEADER) or not all(field.isdigit() for field in fields[:3]):
            raise HierpipeError(
                f"{where}: expected '<image_id> <class_id> <super_class_id> <path>', got {raw!r}"
            )
        image_id, class_id, super_class_id = (int(field) for field in fields[:3])
        if min(image_id, class_id, super_class_id) < 1:
            raise HierpipeError(f"{where}: ids start at 1, got {raw!r}")
        rows.append(_Row(image_id, class_id, super_class_id, fields[3], subset, where))
    return rows


def _super_class_name(row: _Row) -> str:
    folder, separator, file = row.path.partition("/")
    if not folder or not separator or not file:
        raise HierpipeError(f"{row.where}: path {row.path!r} is not '<super class folder>/<file>'")
    return folder.removesuffix(_FOLDER_SUFFIX)


def _tree(root: Path, rows: list[_Row]) -> ClassTree:
    """Super class -> product, checking that ids and folder names tell one consistent story."""
    super_of_class: dict[int, _Row] = {}
    name_of_super: dict[int, tuple[str, _Row]] = {}
    super_of_name: dict[str, _Row] = {}
    for row in rows:
        first = super_of_class.setdefault(row.class_id, row)
        if first.super_class_id != row.super_class_id:
            raise HierpipeError(
                f"{row.where}: class {row.class_id} has super_class_id {row.super_class_id}, "
                f"but {first.where} gives it {first.super_class_id}; expected one super class "
                "per class"
            )
        name = _super_class_name(row)
        first_name, first = name_of_super.setdefault(row.super_class_id, (name, row))
        if first_name != name:
            raise HierpipeError(
                f"{row.where}: super_class_id {row.super_class_id} in folder "
                f"{row.path.partition('/')[0]!r}, but {first.where} in "
                f"{first.path.partition('/')[0]!r}; expected one folder per super class"
            )
        first = super_of_name.setdefault(name, row)
        if first.super_class_id != row.super_class_id:
            raise HierpipeError(
                f"{row.where}: folder {row.path.partition('/')[0]!r} holds super_class_id "
                f"{row.super_class_id}, but {first.where} gives it {first.super_class_id}; "
                "expected one super class per folder"
            )
    count = max(super_of_class)
    missing = sorted(set(range(1, count + 1)) - set(super_of_class))
    if missing:
        # labels are class_id - 1, and classes.parquet needs every class id up to the last
        raise HierpipeError(
            f"{root}: the class ids of {' and '.join(SPLIT_FILES.values())} must be "
            f"1..{count} without gaps; missing {len(missing)}, e.g. {missing[:5]}"
        )
    paths = []
    for class_id in range(1, count + 1):
        name = name_of_super[super_of_class[class_id].super_class_id][0]
        paths.append((name, f"{name}_{class_id}"))
    return ClassTree.from_paths(paths)


class SOPBuilder(DatasetBuilder):
    """Stanford Online Products: 22,634 products under 12 super classes."""

    source_layouts = (
        "mirrors hold Stanford_Online_Products.zip, or its extracted Stanford_Online_Products/ "
        "with Ebay_train.txt, Ebay_test.txt and the <super>_final/ folders"
    )

    @dataclass(frozen=True)
    class Options:
        on_bad_image: str = "error"

        def __post_init__(self) -> None:
            check_choice("sop", "on_bad_image", self.on_bad_image, ON_BAD_IMAGE)

    def prepare(self, out_dir: Path, options: SOPBuilder.Options, source: str | None) -> None:
        out_dir = begin_dataset(out_dir)
        root = raw_dir(FILES, source, out_dir) / DATASET_DIR
        rows = [
            row for subset, name in SPLIT_FILES.items() for row in _read_rows(root / name, subset)
        ]
        if not rows:
            raise HierpipeError(f"{root}: {' and '.join(SPLIT_FILES.values())} list no images")
        seen: dict[int, _Row] = {}
        for row in rows:
            first = seen.setdefault(row.image_id, row)
            if first is not row:
                raise HierpipeError(
                    f"{row.where}: image_id {row.image_id} is already used at {first.where}"
                )
        tree = _tree(root, rows)
        samples = pd.DataFrame(
            {
                "sample_id": [row.image_id for row in rows],
                "path": [f"raw/{DATASET_DIR}/{row.path}" for row in rows],
                "label": [row.class_id - 1 for row in rows],
            }
        )
        good = check_images(out_dir, samples["path"].tolist(), options.on_bad_image)
        samples = samples.iloc[good].reset_index(drop=True)
        # Labels are fixed by class_id, so a class whose every image was skipped cannot be
        # dropped; refuse here rather than write a dataset that no reader accepts.
        tree.require_samples(np.bincount(samples["label"], minlength=tree.num_classes))
        write_predefined_splits(
            out_dir, samples["sample_id"], {"official": [rows[i].subset for i in good]}
        )
        write_classes(out_dir, tree)
        write_samples(out_dir, samples)
