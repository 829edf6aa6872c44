"""Cars196 (Stanford Cars, Krause et al. 2013): 16,185 images of 196 car classes.

Source: `car_ims.tgz` (`car_ims/000001.jpg` ...) and `cars_annos.mat`, a MATLAB file with
`annotations`, a struct array with one element per image (fields `relative_im_path`, e.g.
`car_ims/000001.jpg`, `bbox_x1` .. `bbox_y2`, `class` 1..196 and `test` 0/1), and
`class_names`, the 196 names such as `Acura RL Sedan 2012`. The Stanford links (HIER's README)
have been gone since 2023 (torchvision issue 7545); mirrors publish one of two layouts, and
`--source` takes either, as a directory or an archive (also with one top folder around it):

- `car_ims/` with `cars_annos.mat` (the layout above);
- the devkit's: `cars_train/` and `cars_test/` (`00001.jpg` ...), `devkit/cars_train_annos.mat`
  and `cars_test_annos_withlabels.mat` (a struct array `annotations` with `fname` and `class`
  per image) and `devkit/cars_meta.mat` (`class_names`). The .mat files may also lie beside
  the image folders.

Both give the same classes and the same images with the same labels and official split;
sample ids follow each layout's annotation order (devkit: train, then test).

Samples follow the annotations: sample_id is the 1-based annotation index, the label is
`class - 1`. The tree (option `tree`) is parsed from the class names `<make> <model> <year>`:

- `make_model`: make / model / class, the model being the class name without its year, so
  the years of one model (`Audi S4 Sedan 2007` and `... 2012`) share a parent;
- `body_type`: body type / make / class (see `body_type`).

Besides samples.parquet and classes.parquet, prepare writes two predefined splits (split
scheme `predefined`): `metric_learning` (the first half of the classes, 1-98, train and the
rest test, as HIER's hier/dataset/cars.py does) and `official` (the annotations' `test` flag).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from hierpipe.core.errors import HierpipeError
from hierpipe.core.hierarchy import ClassTree
from hierpipe.data.fetch import RemoteFile
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

_BASE = "http://ai.stanford.edu/~jkrause/car196"
# Stanford publishes no checksums; these md5s are the ones that the Cars196 loaders of
# pytorch-metric-learning and several other metric-learning code bases pin, all agreeing.
FILES = (
    RemoteFile("car_ims.tgz", f"{_BASE}/car_ims.tgz", "md5:d5c8f0aa497503f355e17dc7886c3f14"),
    RemoteFile("cars_annos.mat", f"{_BASE}/cars_annos.mat", "md5:b407c6086d669747186bd1d764ff9dbc"),
)
ANNOTATIONS_FILE = "cars_annos.mat"
DEVKIT_FILES = {
    "train": "cars_train_annos.mat",
    "test": "cars_test_annos_withlabels.mat",
    "meta": "cars_meta.mat",
}
LAYOUTS = (
    "car_ims/ with cars_annos.mat, or cars_train/ and cars_test/ with "
    "devkit/cars_train_annos.mat, devkit/cars_meta.mat and cars_test_annos_withlabels.mat"
)
# The bounding boxes are not used, so a file without them is still accepted.
_FIELDS = ("relative_im_path", "class", "test")

TREES = ("make_model", "body_type")
# Every other make of Cars196 is one word, hyphenated ones (Rolls-Royce, Mercedes-Benz)
# included; in `Ram C/V Cargo Van Minivan 2012` the make is Ram and C/V the model.
_MULTI_WORD_MAKES = ("AM General", "Aston Martin", "Land Rover")
# Pickups are named by their cab (Crew, Regular, Extended, Quad, Club Cab, or SuperCab).
_BODY_TYPES = {
    word: word
    for word in ("Sedan", "SUV", "Coupe", "Convertible", "Hatchback", "Wagon", "Minivan", "Van")
} | {"Cab": "Cab", "SuperCab": "Cab"}
OTHER_BODY = "Other"


def _make_and_words(name: str) -> tuple[str, list[str]]:
    """The make of a class name `<make> <model> <year>` and the words between make and year."""
    words = name.split()
    make = next(
        (m for m in _MULTI_WORD_MAKES if name.startswith(f"{m} ")), words[0] if words else ""
    )
    middle = words[len(make.split()) : -1]
    if not middle or not re.fullmatch(r"\d{4}", words[-1]):
        raise HierpipeError(
            f"class name {name!r}: expected '<make> <model> <year>', e.g. 'Acura RL Sedan 2012'"
        )
    return make, middle


def body_type(name: str) -> str:
    """The body type of a class name: the last of its words that names one.

    Cars196 names end in `<body type> <year>`, but a few add a word after the body type
    (`Infiniti G Coupe IPL 2012`) or give two (`Ram C/V Cargo Van Minivan 2012`, where the
    last is the more specific); performance trims named without one (`Acura Integra Type R
    2001`, `Chevrolet HHR SS 2010`, `Dodge Challenger SRT8 2011`) are `Other`.
    """
    _, words = _make_and_words(name)
    return next((_BODY_TYPES[w] for w in reversed(words) if w in _BODY_TYPES), OTHER_BODY)


def class_path(name: str, tree: str) -> tuple[str, str, str]:
    """The root-to-leaf path of the class `name` in the tree `tree` (one of TREES)."""
    make, words = _make_and_words(name)
    if tree == "make_model":
        return make, " ".join([make, *words]), name  # the model: the name without its year
    if tree == "body_type":
        return body_type(name), make, name
    raise HierpipeError(f"tree {tree!r}; expected one of {', '.join(TREES)}")


class Cars196Builder(DatasetBuilder):
    """Cars196: 16,185 images of 196 car classes, under their make or body type."""

    source_layouts = f"Cars196 mirrors hold {LAYOUTS}"

    @dataclass(frozen=True)
    class Options:
        on_bad_image: str = "error"
        tree: str = "make_model"

        def __post_init__(self) -> None:
            check_choice("cars196", "on_bad_image", self.on_bad_image, ON_BAD_IMAGE)
            check_choice("cars196", "tree", self.tree, TREES)

    def prepare(self, out_dir: Path, options: Cars196Builder.Options, source: str | None) -> None:
        out_dir = begin_dataset(out_dir)
        raw = raw_dir(FILES, source, out_dir)
        layout_root, mat_path, annotations, class_names = _read_layout(raw)
        try:
            tree = ClassTree.from_paths([class_path(n, options.tree) for n in class_names])
        except HierpipeError as error:
            raise HierpipeError(f"{mat_path}: class_names: {error}") from error
        samples = pd.DataFrame(
            {
                "sample_id": np.arange(1, len(annotations) + 1),
                "path": [
                    (Path("raw") / layout_root.relative_to(raw) / p).as_posix()
                    for p in annotations["relative_im_path"]
                ],
                "label": annotations["class"] - 1,
            }
        )
        good = check_images(out_dir, samples["path"].tolist(), options.on_bad_image)
        samples = samples.iloc[good].reset_index(drop=True)
        official = annotations["test"].iloc[good].map({0: "train", 1: "test"})
        splits = official_and_metric_learning_splits(official, samples["label"], len(class_names))
        write_predefined_splits(out_dir, samples["sample_id"], splits)
        write_classes(out_dir, tree)
        write_samples(out_dir, samples)


def _layout_root(raw: Path) -> Path:
    """The folder of `raw` (itself or its one subfolder, a mirror archive's top folder) that
    holds either layout."""
    subfolders = [path for path in raw.iterdir() if path.is_dir()]
    for root in (raw, *(subfolders if len(subfolders) == 1 else ())):
        markers = (root / ANNOTATIONS_FILE, root / "car_ims", root / "cars_train")
        if any(marker.exists() for marker in markers):
            return root
    raise HierpipeError(f"{raw}: no Cars196 files; expected {LAYOUTS}")


def _read_layout(raw: Path) -> tuple[Path, Path, pd.DataFrame, list[str]]:
    """The layout's folder, the file of the class names, and relative_im_path (from that
    folder), class and test per annotation with the class names."""
    root = _layout_root(raw)
    if not (root / "cars_train").is_dir():
        return (root, root / ANNOTATIONS_FILE, *_read_annotations(root / ANNOTATIONS_FILE))
    files = {key: _devkit_file(root, name) for key, name in DEVKIT_FILES.items()}
    meta = _load_mat(files["meta"])
    if "class_names" not in meta:
        raise HierpipeError(f"{files['meta']}: no variable 'class_names'")
    class_names = [str(name) for name in np.atleast_1d(meta["class_names"])]
    parts = []
    for subset, test in (("train", 0), ("test", 1)):
        frame = _read_devkit_annotations(files[subset], f"cars_{subset}", len(class_names))
        parts.append(frame.assign(test=test))
    return root, files["meta"], pd.concat(parts, ignore_index=True), class_names


def _devkit_file(root: Path, name: str) -> Path:
    for path in (root / "devkit" / name, root / name):
        if path.is_file():
            return path
    raise HierpipeError(
        f"{root}: no {name} (in devkit/ or beside cars_train/); a devkit-layout Cars196 source "
        f"holds cars_train/, cars_test/, {', '.join(DEVKIT_FILES.values())}"
    )


def _read_devkit_annotations(path: Path, folder: str, num_classes: int) -> pd.DataFrame:
    """relative_im_path (`<folder>/<fname>`) and class of each annotation of a devkit file."""
    structs = np.atleast_1d(_load_mat(path).get("annotations", np.array([])))
    fields = structs.dtype.names or ()
    if "fname" not in fields or "class" not in fields:
        raise HierpipeError(
            f"{path}: expected a struct array 'annotations' with the fields fname and class "
            f"(it has {', '.join(fields) or 'none'})"
        )
    names = [str(name) for name in structs["fname"]]
    bad = [name for name in names if not _is_inside(name) or "/" in name]
    if bad:
        raise HierpipeError(f"{path}: fname {bad[0]!r}; expected a file name such as 00001.jpg")
    classes = _integers(structs["class"], "class", path)
    outside = np.flatnonzero((classes < 1) | (classes > num_classes))
    if outside.size:
        raise HierpipeError(
            f"{path}: annotation {outside[0] + 1} has class {classes[outside[0]]}; expected "
            f"1..{num_classes} (cars_meta.mat's class_names)"
        )
    paths = [f"{folder}/{name}" for name in names]
    return pd.DataFrame({"relative_im_path": paths, "class": classes})


def _load_mat(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise HierpipeError(f"{path}: missing; a Cars196 source holds {LAYOUTS}")
    # scipy.io adds a tenth of a second to every `import hierpipe.data`; only this needs it.
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        return loadmat(path, squeeze_me=True)
    except (MatReadError, ValueError, NotImplementedError, OSError) as error:
        raise HierpipeError(
            f"{path}: cannot read it as a MATLAB file ({error}); expected Cars196's "
            f"{ANNOTATIONS_FILE}"
        ) from error


def _integers(values: np.ndarray, field: str, where: Path) -> np.ndarray:
    """One integer per annotation from the (object) values of a struct field."""
    result = np.empty(len(values), dtype=np.int64)
    for index, value in enumerate(values):
        number = np.asarray(value)
        if (
            number.shape != ()
            or not np.issubdtype(number.dtype, np.number)
            or number != np.round(number)
        ):
            raise HierpipeError(
                f"{where}: annotation {index + 1} has {field}={value!r}; expected an integer"
            )
        result[index] = int(number)
    return result


def _read_annotations(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """relative_im_path, class and test per annotation (in file order), and the class names."""
    mat = _load_mat(path)
    for variable in ("annotations", "class_names"):
        if variable not in mat:
            raise HierpipeError(
                f"{path}: no variable {variable!r}; expected Cars196's 'annotations' (a struct "
                "array, one element per image) and 'class_names'"
            )
    # squeeze_me turns a one-element array into a scalar: back to one dimension
    structs = np.atleast_1d(mat["annotations"])
    fields = structs.dtype.names or ()
    missing = [field for field in _FIELDS if field not in fields]
    if missing:
        raise HierpipeError(
            f"{path}: 'annotations' lacks the field(s) {', '.join(missing)}; expected a struct "
            f"array with {', '.join(_FIELDS)} (it has {', '.join(fields) or 'none'})"
        )
    class_names = list(np.atleast_1d(mat["class_names"]))
    if not class_names or not all(isinstance(name, str) for name in class_names):
        raise HierpipeError(f"{path}: 'class_names' must be a non-empty list of strings")
    class_names = [str(name) for name in class_names]  # plain str, not numpy's str_

    paths = list(structs["relative_im_path"])
    for index, text in enumerate(paths):
        # the paths are joined to the dataset directory and read before the tables check them
        if not isinstance(text, str) or not _is_inside(text):
            raise HierpipeError(
                f"{path}: annotation {index + 1} has relative_im_path={text!r}; expected a "
                "relative path such as 'car_ims/000001.jpg'"
            )
    classes = _integers(structs["class"], "class", path)
    outside = np.flatnonzero((classes < 1) | (classes > len(class_names)))
    if outside.size:
        shown = ", ".join(f"{i + 1} (class {classes[i]})" for i in outside[:5])
        raise HierpipeError(
            f"{path}: {outside.size} annotation(s) with a class outside "
            f"1..{len(class_names)} (the class_names): {shown}"
        )
    test = _integers(structs["test"], "test", path)
    odd = np.flatnonzero((test != 0) & (test != 1))
    if odd.size:
        raise HierpipeError(
            f"{path}: annotation {odd[0] + 1} has test={test[odd[0]]}; expected 0 or 1"
        )
    frame = pd.DataFrame({"relative_im_path": paths, "class": classes, "test": test})
    return frame, class_names


def _is_inside(text: str) -> bool:
    path = PurePosixPath(text)
    return bool(text) and not path.is_absolute() and ".." not in path.parts and "\\" not in text
