"""``imagefolder``: a local folder tree of images whose directories are the class hierarchy.

``root/<level-0>/.../<class>/<image files>``: every directory that directly holds images is a
class, and its path below ``root`` is the class's root-to-leaf path, so branches may have
different depths. Names starting with '.' (``.DS_Store``, macOS ``._x.jpg``, ``.git``) are
ignored, and so are files with other extensions. Class ids follow the sorted class paths and
sample ids the sorted (class path, file name) pairs, so the same folder gives byte-identical
tables. ``out_dir/images`` is a symlink to the folder (``link=true``: nothing is copied, which
suits large private collections) or a copy of the files used (``link=false``).
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hierpipe.core.errors import HierpipeError
from hierpipe.core.hierarchy import ClassTree
from hierpipe.data.registry import DatasetBuilder, check_choice
from hierpipe.data.tables import begin_dataset, write_classes, write_samples
from hierpipe.data.verify import ON_BAD_IMAGE, check_images

NAME = "imagefolder"
IMAGES_DIR = "images"
_SHOWN = 10  # culprits named in an error message
_LAYOUT = "expected root/<group>/.../<class>/<image files>"

_SUFFIX = re.compile(r"\.[^./\\\s]+")  # one dot, then a non-empty name without separators

ClassPath = tuple[str, ...]


def _items(extensions: str) -> list[str]:
    return [item.strip().lower() for item in extensions.split(",")]


def _show(paths: list[ClassPath]) -> str:
    shown = ", ".join("/".join(path) or "." for path in paths[:_SHOWN])
    return shown + (f" and {len(paths) - _SHOWN} more" if len(paths) > _SHOWN else "")


@dataclass
class _Scan:
    """What a walk of the source folder found: image file names per class path."""

    suffixes: frozenset[str]
    classes: dict[ClassPath, list[str]]
    mixed: list[ClassPath]  # directories holding images and also subdirectories with images

    def visit(self, directory: Path, parts: ClassPath, ancestors: frozenset[str]) -> bool:
        """Record the images under ``directory``; True when it holds any, at any depth."""
        # Symlinked directories are followed, so that a tree assembled from links works; a link
        # back to one of its own ancestors would make the walk endless.
        real = os.path.realpath(directory)
        if real in ancestors:
            raise HierpipeError(f"{directory}: symbolic link loop back to {real}")
        try:
            with os.scandir(directory) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as exc:
            raise HierpipeError(f"{directory}: cannot list the folder ({exc})") from exc
        images = []
        nested = False
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                if self.visit(Path(entry.path), (*parts, entry.name), ancestors | {real}):
                    nested = True
            # Not is_file(): a broken link named like an image is kept and then reported as
            # missing by the image check, rather than silently dropped.
            elif os.path.splitext(entry.name)[1].lower() in self.suffixes:
                images.append(entry.name)
        if images and nested:
            self.mixed.append(parts)
        elif images:
            self.classes[parts] = images
        return bool(images) or nested


def _scan(root: Path, suffixes: frozenset[str]) -> dict[ClassPath, list[str]]:
    """Image file names (sorted) per class path (sorted), checked to form a class tree."""
    scan = _Scan(suffixes, {}, [])
    scan.visit(root, (), frozenset())
    if scan.mixed:
        raise HierpipeError(
            f"{root}: {len(scan.mixed)} folder(s) hold both images and subfolders with images: "
            f"{_show(scan.mixed)}; a class must be a leaf folder, so move those images into a "
            "subfolder of their own"
        )
    if () in scan.classes:
        raise HierpipeError(
            f"{root}: {len(scan.classes[()])} image(s) directly in the root folder, e.g. "
            f"{scan.classes[()][0]!r}; {_LAYOUT}"
        )
    if not scan.classes:
        raise HierpipeError(
            f"{root}: no image files (extensions {', '.join(sorted(suffixes))}); {_LAYOUT}"
        )
    if len(scan.classes) < 2:
        raise HierpipeError(
            f"{root}: only one class folder, {_show(list(scan.classes))}; a dataset needs at "
            f"least 2 classes; {_LAYOUT}"
        )
    folders_of: dict[str, list[ClassPath]] = defaultdict(list)
    for path in scan.classes:
        folders_of[path[-1]].append(path)
    clashes = [paths for paths in folders_of.values() if len(paths) > 1]
    if clashes:
        listed = "; ".join(_show(sorted(paths)) for paths in clashes[:_SHOWN])
        raise HierpipeError(
            f"{root}: class folders share a name ({listed}); class names must be unique, so "
            "rename all but one of each"
        )
    return {path: scan.classes[path] for path in sorted(scan.classes)}


def _remove(path: Path) -> None:
    """Remove a file, a symlink (never what it points to) or a directory tree, if present."""
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _copy_files(root: Path, paths: list[str], dest: Path) -> None:
    """Copy the files ``paths`` (relative to ``root``) into a new folder ``dest``, same layout."""
    kept = {tuple(path.split("/")) for path in paths}
    kept |= {parts[:depth] for parts in kept for depth in range(1, len(parts))}

    def ignored(directory: str, names: list[str]) -> set[str]:
        parts = Path(directory).relative_to(root).parts
        return {name for name in names if (*parts, name) not in kept}

    shutil.copytree(root, dest, ignore=ignored)


def _check_no_overlap(source: Path, out_dir: Path) -> None:
    out_dir = out_dir.resolve()
    if out_dir == source or source in out_dir.parents:
        raise HierpipeError(
            f"output folder {out_dir} lies inside the source {source}; the walk would take the "
            "prepared files for images, so prepare outside the source"
        )
    # Not resolved: images may be the link to this very source from an earlier prepare.
    images = out_dir / IMAGES_DIR
    if source == images or images in source.parents:
        raise HierpipeError(
            f"source {source} lies inside {images}, which prepare replaces; move it elsewhere"
        )


class ImageFolderBuilder(DatasetBuilder):
    """A local folder tree of images; the folders are the class tree."""

    @dataclass(frozen=True)
    class Options:
        extensions: str = ".jpg,.jpeg,.png,.bmp,.tif,.tiff"
        on_bad_image: str = "error"
        link: bool = True

        def __post_init__(self) -> None:
            bad = [item for item in _items(self.extensions) if not _SUFFIX.fullmatch(item)]
            if bad:
                raise HierpipeError(
                    f"dataset {NAME!r}: extensions={self.extensions!r} has invalid item(s) "
                    f"{bad}; expected a comma-separated list of suffixes like '.jpg,.png'"
                )
            check_choice(NAME, "on_bad_image", self.on_bad_image, ON_BAD_IMAGE)

        @property
        def suffixes(self) -> frozenset[str]:
            """The extensions, lower-cased, for case-insensitive matching."""
            return frozenset(_items(self.extensions))

    def prepare(
        self, out_dir: Path, options: ImageFolderBuilder.Options, source: str | None
    ) -> None:
        """Walk the folder ``source``, check its images and write the tables under ``out_dir``."""
        if source is None:
            raise HierpipeError(f"dataset {NAME!r} needs a source folder; {_LAYOUT}")
        if not Path(source).is_dir():
            state = "is not a folder" if Path(source).exists() else "does not exist"
            raise HierpipeError(f"dataset {NAME!r}: source {source} {state}; {_LAYOUT}")
        root = Path(source).resolve()
        out_dir = Path(out_dir)
        _check_no_overlap(root, out_dir)
        begin_dataset(out_dir)

        classes = _scan(root, options.suffixes)
        try:
            tree = ClassTree.from_paths(list(classes))
        except HierpipeError as exc:
            raise HierpipeError(f"{root}: {exc}") from exc
        paths = [f"{'/'.join(parts)}/{name}" for parts, names in classes.items() for name in names]
        labels = np.repeat(np.arange(len(classes)), [len(names) for names in classes.values()])
        good = check_images(root, paths, options.on_bad_image)
        paths = [paths[index] for index in good]
        labels = labels[good]
        counts = np.bincount(labels, minlength=len(classes))
        emptied = [path for path, count in zip(classes, counts, strict=True) if not count]
        if emptied:
            raise HierpipeError(
                f"{root}: {len(emptied)} class folder(s) have no usable image left: "
                f"{_show(emptied)}; every class needs at least one image"
            )

        staged = out_dir / f".{IMAGES_DIR}-{uuid.uuid4().hex}.tmp"
        try:
            if options.link:
                staged.symlink_to(root, target_is_directory=True)
            else:
                _copy_files(root, paths, staged)
            _remove(out_dir / IMAGES_DIR)
            staged.rename(out_dir / IMAGES_DIR)
        finally:
            _remove(staged)

        write_classes(out_dir, tree)
        samples = pd.DataFrame(
            {
                "sample_id": np.arange(len(paths)),
                "path": [f"{IMAGES_DIR}/{path}" for path in paths],
                "label": labels,
            }
        )
        write_samples(out_dir, samples)
