"""NABirds (Van Horn et al. 2015): 48,562 images of 555 bird classes under the NABirds taxonomy.

Source layout (nabirds.tar.gz): `nabirds/images/<NNNN>/<file>.jpg` and the metadata files
`nabirds/images.txt` (`<image uuid> <path under images/>`), `image_class_labels.txt`
(`<image uuid> <class id>`), `train_test_split.txt` (`<image uuid> <1 train | 0 test>`),
`classes.txt` (`<class id> <name with spaces>`, internal nodes included) and `hierarchy.txt`
(`<child id> <parent id>`; the root, 0 `Birds`, has no line). The archive is pinned to the
md5 that NABirds loaders written in the torchvision style check (several independent
repositories agree on it).

The tree is the part of hierarchy.txt above the classes that have images: nodes without such
a class below them are dropped. Below the root (kept implicit, as in ProxyDR's class paths)
the perching birds' leaves sit at depth 4 (group / family / species / class) and the others
at depth 3; ProxyDR's nabirds_cls2.csv counts the root and has 5 and 4. Leaf names are those of
classes.txt, except that a name shared by several leaves gets ` [<class id>]` appended to
each, since class names must be unique. Labels number the classes with images by ascending
class id; sample_id is the 1-based row of images.txt.

Predefined splits (split scheme `predefined`): `official` (train_test_split.txt) and
`proxydr` (ProxyDR's 70 / 10 / 20 train / val / test, stratified per class, seed 0).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hierpipe.core.errors import HierpipeError
from hierpipe.core.hierarchy import ClassTree, NodePath
from hierpipe.data.fetch import RemoteFile
from hierpipe.data.registry import DatasetBuilder, check_choice
from hierpipe.data.sources import raw_dir
from hierpipe.data.splits import split_by_image
from hierpipe.data.tables import (
    begin_dataset,
    write_classes,
    write_predefined_splits,
    write_samples,
)
from hierpipe.data.verify import ON_BAD_IMAGE, check_images

log = logging.getLogger(__name__)

FILES = (
    RemoteFile(
        "nabirds.tar.gz",
        "https://www.dropbox.com/s/nf78cbxq6bxpcfc/nabirds.tar.gz?dl=1",
        "md5:df21a9e4db349a14e2b08adfd45873bd",
    ),
)
DATASET_DIR = "nabirds"
# ProxyDR's random 70 / 10 / 20 split (train_nabirds.py), here stratified and seeded like seed 0.
_PROXYDR_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}
_PROXYDR_SEED = 0
_ID = r"\d+"
_SHOWN = 5  # examples named in an error message


def _table(path: Path, form: str, key: str = r"\S+", value: str = r".*\S") -> dict[str, str]:
    """A `<key> <value>` metadata file as {key: value} in file order, every key once."""
    if not path.is_file():
        raise HierpipeError(f"{path}: missing; expected the NABirds metadata file")
    rows: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        if not raw.strip():
            continue
        match = re.fullmatch(rf"({key}) +({value})", raw.strip())
        if match is None:
            raise HierpipeError(f"{path}, line {number}: expected '{form}', got {raw!r}")
        if match[1] in rows:
            raise HierpipeError(f"{path}, line {number}: {match[1]} appears more than once")
        rows[match[1]] = match[2]
    return rows


def _same_images(path: Path, table: dict[str, str], images: dict[str, str]) -> None:
    missing = [image for image in images if image not in table]
    extra = [image for image in table if image not in images]
    if missing or extra:
        raise HierpipeError(
            f"{path}: its image ids differ from images.txt's: {len(missing)} missing "
            f"{missing[:_SHOWN]}, {len(extra)} not in images.txt {extra[:_SHOWN]}"
        )


class NABirdsBuilder(DatasetBuilder):
    """NABirds: 48,562 images of 555 bird classes (species, sexes, ages) in 22 groups."""

    source_layouts = (
        "the Cornell Lab of Ornithology hands out nabirds.tar.gz after its terms of use are "
        "accepted at https://dl.allaboutbirds.org/nabirds; --source takes that archive or its "
        "extracted nabirds/ folder"
    )

    @dataclass(frozen=True)
    class Options:
        on_bad_image: str = "error"

        def __post_init__(self) -> None:
            check_choice("nabirds", "on_bad_image", self.on_bad_image, ON_BAD_IMAGE)

    def prepare(self, out_dir: Path, options: NABirdsBuilder.Options, source: str | None) -> None:
        out_dir = begin_dataset(out_dir)
        root = raw_dir(FILES, source, out_dir) / DATASET_DIR
        images = _table(root / "images.txt", "<image id> <path>")
        labels = _table(root / "image_class_labels.txt", "<image id> <class id>", value=_ID)
        is_train = _table(root / "train_test_split.txt", "<image id> <0|1>", value="[01]")
        names = {int(k): v for k, v in _table(root / "classes.txt", "<id> <name>", key=_ID).items()}
        parents = {
            int(k): int(v)
            for k, v in _table(
                root / "hierarchy.txt", "<child id> <parent id>", key=_ID, value=_ID
            ).items()
        }
        _same_images(root / "image_class_labels.txt", labels, images)
        _same_images(root / "train_test_split.txt", is_train, images)
        unknown = sorted({int(c) for c in labels.values()} - set(names))
        if unknown:
            raise HierpipeError(
                f"{root / 'image_class_labels.txt'}: class ids not in classes.txt: "
                f"{unknown[:_SHOWN]}"
            )
        # the tree is checked before the slow image check, so a mismatch fails at once
        paths = _class_paths(
            sorted({int(c) for c in labels.values()}), names, parents, root / "hierarchy.txt"
        )
        rows = pd.DataFrame(
            {
                "sample_id": np.arange(1, len(images) + 1, dtype=np.int64),
                "path": [f"raw/{DATASET_DIR}/images/{p}" for p in images.values()],
                "class": [int(labels[image]) for image in images],
                "official": [{"1": "train", "0": "test"}[is_train[image]] for image in images],
            }
        )
        good = check_images(out_dir, rows["path"].tolist(), options.on_bad_image)
        rows = rows.iloc[good].reset_index(drop=True)
        class_ids = sorted(set(rows["class"]))
        dropped = sorted(set(paths) - set(class_ids))
        if dropped:
            log.warning(
                "%s: class(es) %s have no usable image left; leaving them out of the tree",
                root,
                ", ".join(f"{c} {names[c]!r}" for c in dropped),
            )
        rows["label"] = rows["class"].map({c: label for label, c in enumerate(class_ids)})
        write_predefined_splits(
            out_dir,
            rows["sample_id"],
            {
                "official": rows["official"].tolist(),
                "proxydr": split_by_image(
                    rows["label"].to_numpy(), _PROXYDR_FRACTIONS, _PROXYDR_SEED
                ).tolist(),
            },
        )
        write_classes(out_dir, ClassTree.from_paths([paths[c] for c in class_ids]))
        write_samples(out_dir, rows)


def _class_paths(
    class_ids: list[int], names: dict[int, str], parents: dict[int, int], source: Path
) -> dict[int, NodePath]:
    """Path of each class below the common root, by following hierarchy.txt's parent links.

    Only ancestors of ``class_ids`` enter the paths, which drops the branches without them.
    """
    unknown = sorted({*parents, *parents.values()} - set(names))
    if unknown:
        raise HierpipeError(f"{source}: class ids not in classes.txt: {unknown[:_SHOWN]}")
    chains = {}
    for class_id in class_ids:
        chain = [class_id]
        while chain[-1] in parents:
            if len(chain) > len(parents):
                raise HierpipeError(f"{source}: the parent links above class {class_id} loop")
            chain.append(parents[chain[-1]])
        chains[class_id] = chain[::-1]  # root first
    roots = sorted({chain[0] for chain in chains.values()})
    if len(roots) > 1:
        shown = ", ".join(f"{r} {names[r]!r}" for r in roots[:_SHOWN])
        raise HierpipeError(
            f"{source}: the classes with images lead up to {len(roots)} roots ({shown}); "
            "expected every class below one root"
        )
    ancestors = {node for chain in chains.values() for node in chain[:-1]}
    internal = [f"{c} {names[c]!r}" for c in class_ids if c in ancestors]
    if internal:
        raise HierpipeError(
            f"{source}: class(es) {', '.join(internal[:_SHOWN])} have images and other classes "
            "with images below them; expected images only on leaves"
        )
    counts = Counter(names[c] for c in class_ids)
    leaf = {c: f"{names[c]} [{c}]" if counts[names[c]] > 1 else names[c] for c in class_ids}
    return {c: (*(names[n] for n in chain[1:-1]), leaf[c]) for c, chain in chains.items()}
