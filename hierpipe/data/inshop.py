"""DeepFashion In-shop Clothes Retrieval (Liu et al. 2016): 52,712 images of 7,982 items.

The files sit on Google Drive behind a license agreement, so they cannot be downloaded here:
obtain `Img/img.zip` and `Eval/list_eval_partition.txt` of the "In-shop Clothes Retrieval
Benchmark" by hand (http://mmlab.ie.cuhk.edu.hk/projects/DeepFashion.html) and pass --source:
a directory holding both files (img.zip extracted to img/ or not), an archive holding img/ and
list_eval_partition.txt, or the URL of a mirror holding both files.

`img.zip` holds `img/<GENDER>/<Category>/<item_id>/<NN_view>.jpg`. `list_eval_partition.txt`
has the image count on line 1, the column names `image_name item_id evaluation_status` on
line 2, then one whitespace-separated row per image, e.g.
`img/WOMEN/Dresses/id_00000002/02_1_front.jpg id_00000002 train`.

Sample ids are the 1-based row numbers of list_eval_partition.txt; labels number the items in
item id order. The tree is gender -> category -> item (the item id). The predefined split
`official` is the evaluation status of each image: train, query or gallery. In-shop is
evaluated by retrieving each query among the gallery images, not within one set as CUB, Cars
and SOP are; the released HIER code masks gallery items by dataset index as if query and
gallery were the same set, which hides one unrelated gallery image from most queries
(hier/helpers.py; docs/methods/retrieval_measures.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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

_PAGE = "http://mmlab.ie.cuhk.edu.hk/projects/DeepFashion.html"
IMAGES_ARCHIVE = "img.zip"
PARTITION_FILE = "list_eval_partition.txt"
# No direct URL and no published checksum exist; the URL names where to get the files by hand.
FILES = (RemoteFile(IMAGES_ARCHIVE, _PAGE, None), RemoteFile(PARTITION_FILE, _PAGE, None))
IMAGES_DIR = "img"
HEADER = ("image_name", "item_id", "evaluation_status")
STATUSES = ("train", "query", "gallery")
_MANUAL = (
    f"DeepFashion In-shop cannot be downloaded automatically: its files are on Google Drive "
    f"behind a license agreement ({_PAGE}). Download {IMAGES_ARCHIVE} (from Img/) and "
    f"{PARTITION_FILE} (from Eval/) of the In-shop Clothes Retrieval Benchmark by hand and pass "
    f"--source: a directory holding both files ({IMAGES_ARCHIVE} extracted to {IMAGES_DIR}/ or "
    f"not), or an archive holding {IMAGES_DIR}/ and {PARTITION_FILE}"
)


@dataclass(frozen=True)
class _Row:
    image_name: str  # img/<GENDER>/<Category>/<item_id>/<file>, relative to the raw directory
    item_id: str
    status: str
    where: str  # "<file>, line <n>", for error messages

    @property
    def ancestors(self) -> tuple[str, str]:
        """Gender and category, from the image's folders."""
        _, gender, category, _, _ = self.image_name.split("/")
        return gender, category


def _read_rows(path: Path) -> list[_Row]:
    """The rows of list_eval_partition.txt, its count and column names checked."""
    if not path.is_file():
        raise HierpipeError(f"{path}: missing; {_MANUAL}")
    lines = path.read_text().splitlines()
    if not lines or not lines[0].strip().isdigit():
        got = repr(lines[0]) if lines else "an empty file"
        raise HierpipeError(f"{path}, line 1: expected the number of images, got {got}")
    if len(lines) < 2 or tuple(lines[1].split()) != HEADER:
        got = repr(lines[1]) if len(lines) > 1 else "the end of the file"
        raise HierpipeError(
            f"{path}, line 2: expected the column names {' '.join(HEADER)!r}, got {got}"
        )
    rows = []
    first_line: dict[str, str] = {}
    for number, raw in enumerate(lines[2:], start=3):
        if not raw.strip():
            continue
        where = f"{path}, line {number}"
        fields = raw.split()
        if len(fields) != len(HEADER):
            raise HierpipeError(
                f"{where}: expected '<image_name> <item_id> <evaluation_status>', got {raw!r}"
            )
        name, item_id, status = fields
        parts = name.split("/")
        if len(parts) != 5 or parts[0] != IMAGES_DIR or parts[3] != item_id or "" in parts:
            raise HierpipeError(
                f"{where}: image {name!r} of item {item_id!r} is not at "
                f"'{IMAGES_DIR}/<gender>/<category>/{item_id}/<file>'"
            )
        if status not in STATUSES:
            raise HierpipeError(
                f"{where}: evaluation status {status!r}; expected one of {', '.join(STATUSES)}"
            )
        if name in first_line:
            raise HierpipeError(f"{where}: image {name!r} is already listed at {first_line[name]}")
        first_line[name] = where
        rows.append(_Row(name, item_id, status, where))
    if int(lines[0]) != len(rows):
        raise HierpipeError(
            f"{path}, line 1: declares {int(lines[0])} images, but {len(rows)} rows follow"
        )
    if not rows:
        raise HierpipeError(f"{path}: lists no images")
    return rows


def _ancestors(rows: list[_Row]) -> dict[str, tuple[str, str]]:
    """Gender and category of each item, which must be the same for all of its images."""
    first: dict[str, _Row] = {}
    for row in rows:
        other = first.setdefault(row.item_id, row)
        if other.ancestors != row.ancestors:
            raise HierpipeError(
                f"{row.where}: item {row.item_id} is under {'/'.join(row.ancestors)}, but "
                f"{other.where} has it under {'/'.join(other.ancestors)}; expected one gender "
                "and category per item"
            )
    return {item_id: row.ancestors for item_id, row in first.items()}


def _raw_dir(source: str | None, out_dir: Path) -> Path:
    """Obtain the raw files under out_dir/raw from what the user downloaded by hand."""
    if source is None and not (out_dir / "raw").is_dir():
        # fetch() would download the DeepFashion web page in place of the files
        raise HierpipeError(f"dataset 'inshop': no --source given. {_MANUAL}")
    given = None if source is None else Path(source).expanduser()
    if given is not None and given.is_dir() and not (given / IMAGES_DIR).is_dir():
        if not (given / IMAGES_ARCHIVE).is_file():
            raise HierpipeError(
                f"{given}: holds neither {IMAGES_DIR}/ nor {IMAGES_ARCHIVE}. {_MANUAL}"
            )
        # the two files as downloaded: read like a mirror, which extracts img.zip
        source = given.resolve().as_uri()
    return raw_dir(FILES, source, out_dir)


class InShopBuilder(DatasetBuilder):
    """DeepFashion In-shop: 7,982 clothing items under gender and category."""

    @dataclass(frozen=True)
    class Options:
        on_bad_image: str = "error"

        def __post_init__(self) -> None:
            check_choice("inshop", "on_bad_image", self.on_bad_image, ON_BAD_IMAGE)

    def prepare(self, out_dir: Path, options: InShopBuilder.Options, source: str | None) -> None:
        out_dir = begin_dataset(out_dir)
        rows = _read_rows(_raw_dir(source, out_dir) / PARTITION_FILE)
        ancestors = _ancestors(rows)
        paths = [f"raw/{row.image_name}" for row in rows]
        good = check_images(out_dir, paths, options.on_bad_image)
        kept = [rows[i] for i in good]
        # Labels only number the items, so an item whose every image was skipped just drops out.
        items = sorted({row.item_id for row in kept})
        label = {item_id: index for index, item_id in enumerate(items)}
        samples = pd.DataFrame(
            {
                "sample_id": [i + 1 for i in good],
                "path": [paths[i] for i in good],
                "label": [label[row.item_id] for row in kept],
            }
        )
        write_predefined_splits(
            out_dir, samples["sample_id"], {"official": [row.status for row in kept]}
        )
        write_classes(
            out_dir, ClassTree.from_paths([(*ancestors[item_id], item_id) for item_id in items])
        )
        write_samples(out_dir, samples)
