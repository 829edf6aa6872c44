"""CUB-200-2011 (Wah et al. 2011) with its Wikispecies taxonomy: order / family / genus / class.

Source layout (CUB_200_2011.tgz): `CUB_200_2011/{images.txt, image_class_labels.txt,
classes.txt, train_test_split.txt, images/<NNN.Name>/<file>.jpg}`, every metadata file one
`<id> <value>` per line. The tree comes from cvjena/semantic-embeddings' `hierarchy_flat.txt`
and `classes_wikispecies.txt` (CUB class id -> the scientific name of a node of that tree),
downloaded beside the archive and pinned by sha256.

Besides samples.parquet and classes.parquet, prepare writes the two standard splits as
predefined splits (split scheme `predefined`): `official` (the dataset's own train/test
images, for classification) and `metric_learning` (the first half of the classes, 1-100,
train and the rest test, as HIER's hier/dataset/cub.py splits).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from hierpipe.core.errors import HierpipeError
from hierpipe.core.hierarchy import ClassTree
from hierpipe.data.fetch import RemoteFile
from hierpipe.data.hierarchy_files import class_paths, parse_id_names, parse_indented_tree
from hierpipe.data.registry import DatasetBuilder, check_choice
from hierpipe.data.sources import raw_dir
from hierpipe.data.splits import official_and_metric_learning_splits
from hierpipe.data.tables import (
    begin_dataset,
    write_classes,
    write_predefined_splits,
    write_samples,
)
from hierpipe.data.verify import ON_BAD_IMAGE, check_images

_HIERARCHY_BASE = (
    "https://raw.githubusercontent.com/cvjena/semantic-embeddings/master/CUB-Hierarchy"
)
FILES = (
    RemoteFile(
        "CUB_200_2011.tgz",
        "https://data.caltech.edu/records/65de6-vp158/files/CUB_200_2011.tgz?download=1",
        "md5:97eceeb196236b17998738112f37df78",
    ),
    RemoteFile(
        "hierarchy_flat.txt",
        f"{_HIERARCHY_BASE}/hierarchy_flat.txt",
        "sha256:046e871012bc43af81d391b2fe258421490cca5b42379827789dcf20facb649e",
    ),
    RemoteFile(
        "classes_wikispecies.txt",
        f"{_HIERARCHY_BASE}/classes_wikispecies.txt",
        "sha256:c03b8ce4616043740308579634c3a6fb025c2847f0dc4f7e9fd21d90e7b78f04",
    ),
)
DATASET_DIR = "CUB_200_2011"


def _table(path: Path, columns: list[str]) -> pd.DataFrame:
    """A `<id> <value>` metadata file as a frame indexed by id, every id once."""
    if not path.is_file():
        raise HierpipeError(f"{path}: missing; expected the CUB-200-2011 metadata file")
    values = parse_id_names(path.read_text(), str(path))
    return pd.DataFrame(list(values.items()), columns=columns).set_index(columns[0])


class CUB200Builder(DatasetBuilder):
    """CUB-200-2011: 11,788 images of 200 bird species under 13 orders."""

    source_layouts = (
        "mirrors hold CUB_200_2011.tgz, or its extracted CUB_200_2011/ with images.txt, "
        "image_class_labels.txt, classes.txt, train_test_split.txt and images/"
    )

    @dataclass(frozen=True)
    class Options:
        on_bad_image: str = "error"

        def __post_init__(self) -> None:
            check_choice("cub200", "on_bad_image", self.on_bad_image, ON_BAD_IMAGE)

    def prepare(self, out_dir: Path, options: CUB200Builder.Options, source: str | None) -> None:
        out_dir = begin_dataset(out_dir)
        raw = raw_dir(FILES, source, out_dir)
        root = raw / DATASET_DIR
        classes = _table(root / "classes.txt", ["class", "name"])
        images = _table(root / "images.txt", ["image", "path"])
        labels = _table(root / "image_class_labels.txt", ["image", "class"])
        is_train = _table(root / "train_test_split.txt", ["image", "is_train"])
        tree = _tree(raw, classes)
        for name, table in (("image_class_labels.txt", labels), ("train_test_split.txt", is_train)):
            if not table.index.equals(images.index):
                raise HierpipeError(
                    f"{root / name}: its image ids differ from images.txt's "
                    f"({len(table)} vs {len(images)} rows)"
                )
        class_ids = pd.to_numeric(labels["class"], errors="coerce")
        unknown = sorted(set(class_ids.dropna().astype(int)) - set(classes.index))
        if class_ids.isna().any() or unknown:
            raise HierpipeError(
                f"{root / 'image_class_labels.txt'}: class ids not in classes.txt: {unknown[:5]}"
            )
        samples = pd.DataFrame(
            {
                "sample_id": images.index.to_numpy(),
                "path": [f"raw/{DATASET_DIR}/images/{p}" for p in images["path"]],
                # class ids are 1..200 in classes.txt order; labels are 0-based rows of it
                "label": class_ids.map({c: row for row, c in enumerate(classes.index)}).to_numpy(),
            }
        )
        good = check_images(out_dir, samples["path"].tolist(), options.on_bad_image)
        samples = samples.iloc[good].reset_index(drop=True)
        kept = images.index[good]
        official = is_train.loc[kept, "is_train"].map({"1": "train", "0": "test"})
        if official.isna().any():
            raise HierpipeError(f"{root / 'train_test_split.txt'}: expected 0 or 1 per image")
        splits = official_and_metric_learning_splits(official, samples["label"], len(classes))
        write_predefined_splits(out_dir, samples["sample_id"], splits)
        write_classes(out_dir, tree)
        write_samples(out_dir, samples)


def _tree(raw: Path, classes: pd.DataFrame) -> ClassTree:
    """Class paths order / family / genus / class name from the Wikispecies files.

    The leaf is the dataset's own class name (e.g. `001.Black_footed_Albatross`) in place of
    the scientific name; four classes are named by a genus and sit one level higher.
    """
    texts = {}
    for name in ("hierarchy_flat.txt", "classes_wikispecies.txt"):
        if not (raw / name).is_file():
            raise HierpipeError(
                f"{raw / name}: missing; a CUB source directory must hold {name} beside "
                f"{DATASET_DIR}/ (from {_HIERARCHY_BASE})"
            )
        texts[name] = (raw / name).read_text()
    nodes = parse_indented_tree(texts["hierarchy_flat.txt"], str(raw / "hierarchy_flat.txt"))
    scientific = parse_id_names(
        texts["classes_wikispecies.txt"], str(raw / "classes_wikispecies.txt")
    )
    if set(scientific) != set(classes.index):
        raise HierpipeError(
            f"{raw / 'classes_wikispecies.txt'}: its class ids do not match classes.txt "
            f"({len(scientific)} vs {len(classes)} classes)"
        )
    paths = class_paths([scientific[c] for c in classes.index], nodes, "hierarchy_flat.txt")
    return ClassTree.from_paths(
        [(*path[:-1], name) for path, name in zip(paths, classes["name"], strict=True)]
    )
