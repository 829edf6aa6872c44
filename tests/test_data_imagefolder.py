"""The ``imagefolder`` dataset (a local folder tree of images) and the image check it runs."""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hierpipe.core.errors import HierpipeError
from hierpipe.data.registry import prepare_dataset
from hierpipe.data.tables import read_dataset
from hierpipe.data.verify import check_images

FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".tif": "TIFF"}

# file -> class id, in sample-id order
EXPECTED = {
    "animals/cats/siamese/a.jpg": 0,
    "animals/cats/siamese/b.jpg": 0,
    "animals/cats/tabby/x.png": 1,
    "animals/dogs/1.png": 2,
    "animals/dogs/2.PNG": 2,
    "animals/dogs/3.JPEG": 2,
    "plants/p.jpg": 3,
    "plants/q.tif": 3,
}
PATHS = [
    ("animals", "cats", "siamese"),
    ("animals", "cats", "tabby"),
    ("animals", "dogs"),
    ("plants",),
]


def _image(path: Path, seed: int = 0) -> Path:
    """A tiny noise image in the format its (case-insensitive) suffix names."""
    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, FORMATS[path.suffix.lower()])
    return path


def _truncated_jpeg(path: Path) -> Path:
    """A JPEG cut short: its header opens, decoding the pixels fails."""
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, "JPEG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue()[:-100])
    return path


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """Branches of different depths, with files and a subfolder that are not images."""
    root = tmp_path / "source"
    for seed, name in enumerate(EXPECTED):
        _image(root / name, seed)
    (root / "animals/dogs/notes.txt").write_text("not an image")
    (root / "animals/dogs/meta").mkdir()
    (root / "animals/dogs/meta/info.txt").write_text("a subfolder without images")
    (root / "README.md").write_text("about")
    return root


def _prepare(out: Path, source: Path | str | None, **options: str | bool) -> Path:
    prepare_dataset("imagefolder", out, options, source=None if source is None else str(source))
    return out


def test_folder_tree_becomes_class_tree(tree: Path, tmp_path: Path) -> None:
    out = _prepare(tmp_path / "out", tree)
    samples, classes = read_dataset(out)
    assert classes.paths == tuple(PATHS)
    assert classes.classes == ("siamese", "tabby", "dogs", "plants")
    assert list(classes.depths) == [3, 3, 2, 1]
    assert samples["sample_id"].tolist() == list(range(len(EXPECTED)))
    assert samples["path"].tolist() == [f"images/{name}" for name in EXPECTED]
    assert samples["label"].tolist() == list(EXPECTED.values())
    assert (out / "images").is_symlink()
    assert (out / "images").readlink() == tree.resolve()
    for path, name in zip(samples["path"], EXPECTED, strict=True):
        assert (out / path).read_bytes() == (tree / name).read_bytes()
    assert sorted(p.name for p in out.iterdir()) == ["classes.parquet", "images", "samples.parquet"]


def test_copy_mode_copies_only_the_listed_images(tree: Path, tmp_path: Path) -> None:
    linked = _prepare(tmp_path / "linked", tree)
    copied = _prepare(tmp_path / "copied", tree, link=False)
    images = copied / "images"
    assert images.is_dir() and not images.is_symlink()
    assert _hashes(images) == {name: h for name, h in _hashes(tree).items() if name in EXPECTED}
    for name in ("samples.parquet", "classes.parquet"):
        assert (copied / name).read_bytes() == (linked / name).read_bytes()
    samples, _ = read_dataset(copied)
    for path in samples["path"]:
        with Image.open(copied / path) as image:
            assert image.size == (8, 8)


def test_same_folder_gives_identical_tables(tree: Path, tmp_path: Path) -> None:
    first = _hashes(_prepare(tmp_path / "a", tree, link=False))
    assert _hashes(_prepare(tmp_path / "b", tree, link=False)) == first
    assert _hashes(_prepare(tmp_path / "a", tree, link=False)) == first


def test_rerun_switching_modes_replaces_images_and_keeps_the_source(
    tree: Path, tmp_path: Path
) -> None:
    source = _hashes(tree)
    out = tmp_path / "out"
    for link in (True, False, True, False):
        _prepare(out, tree, link=link)
        assert (out / "images").is_symlink() == link
        assert len(read_dataset(out)[0]) == len(EXPECTED)
        assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert _hashes(tree) == source


def test_hidden_files_and_folders_are_ignored(tree: Path, tmp_path: Path) -> None:
    plain = _prepare(tmp_path / "plain", tree)
    (tree / ".DS_Store").write_bytes(b"\0junk")
    (tree / "animals/dogs/._1.png").write_bytes(b"\0AppleDouble")  # macOS resource fork
    # A visible image folder under plants would make plants both a class and a group.
    _image(tree / "plants/.thumbnails/p.jpg")
    _image(tree / ".trash/old/z.jpg")
    hidden = _prepare(tmp_path / "hidden", tree)
    for name in ("samples.parquet", "classes.parquet"):
        assert (hidden / name).read_bytes() == (plain / name).read_bytes()


def test_extensions_select_files_case_insensitively(tree: Path, tmp_path: Path) -> None:
    samples, classes = read_dataset(_prepare(tmp_path / "out", tree, extensions=".PNG"))
    assert classes.classes == ("tabby", "dogs")
    assert samples["path"].tolist() == [
        "images/animals/cats/tabby/x.png",
        "images/animals/dogs/1.png",
        "images/animals/dogs/2.PNG",
    ]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"extensions": "jpg"}, "extensions='jpg' has invalid item"),
        ({"extensions": ".jpg,"}, "invalid item"),
        ({"extensions": ".tar.gz"}, "invalid item"),
        ({"on_bad_image": "ignore"}, "expected one of error, skip"),
    ],
)
def test_invalid_options_are_rejected(
    tree: Path, tmp_path: Path, options: dict, message: str
) -> None:
    with pytest.raises(HierpipeError, match=message):
        _prepare(tmp_path / "out", tree, **options)


def test_folder_with_images_and_image_subfolders_is_rejected(tree: Path, tmp_path: Path) -> None:
    _image(tree / "animals/dogs/puppies/1.png")
    out = tmp_path / "out"
    with pytest.raises(HierpipeError, match=r"1 folder\(s\) hold both .*: animals/dogs; "):
        _prepare(out, tree)
    assert not (out / "samples.parquet").exists()


def test_images_directly_in_the_root_are_rejected(tree: Path, tmp_path: Path) -> None:
    _image(tree / "loose.png")
    with pytest.raises(HierpipeError, match="hold both images and subfolders with images: \\."):
        _prepare(tmp_path / "out", tree)
    flat = tmp_path / "flat"
    _image(flat / "a.png")
    with pytest.raises(HierpipeError, match="image\\(s\\) directly in the root folder"):
        _prepare(tmp_path / "out", flat)


def test_corrupt_image_is_named_and_nothing_is_written(tree: Path, tmp_path: Path) -> None:
    _truncated_jpeg(tree / "animals/dogs/bad.jpg")
    out = tmp_path / "out"
    with pytest.raises(HierpipeError, match=r"1 of 9 .*animals/dogs/bad\.jpg \(cannot decode: "):
        _prepare(out, tree)
    assert list(out.iterdir()) == []


def test_failed_rerun_leaves_no_complete_dataset(tree: Path, tmp_path: Path) -> None:
    out = _prepare(tmp_path / "out", tree)
    _truncated_jpeg(tree / "plants/broken.jpg")
    with pytest.raises(HierpipeError, match=r"plants/broken\.jpg"):
        _prepare(out, tree)
    assert not (out / "samples.parquet").exists()


@pytest.mark.parametrize("link", [True, False])
def test_skip_leaves_bad_images_out(
    tree: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, link: bool
) -> None:
    _truncated_jpeg(tree / "animals/dogs/bad.jpg")
    (tree / "plants/gone.jpg").symlink_to(tree / "nowhere.jpg")
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="hierpipe.data.verify"):
        _prepare(out, tree, on_bad_image="skip", link=link)
    samples, _ = read_dataset(out)
    assert samples["path"].tolist() == [f"images/{name}" for name in EXPECTED]
    assert samples["sample_id"].tolist() == list(range(len(EXPECTED)))
    assert "leaving out 2 of 10 image(s)" in caplog.text
    assert "animals/dogs/bad.jpg (cannot decode: " in caplog.text
    assert "plants/gone.jpg (missing)" in caplog.text
    assert link or not (out / "images/animals/dogs/bad.jpg").exists()


def test_skip_that_empties_a_class_is_rejected(tree: Path, tmp_path: Path) -> None:
    _truncated_jpeg(tree / "animals/cats/tabby/x.png")
    out = tmp_path / "out"
    with pytest.raises(HierpipeError, match=r"no usable image left: animals/cats/tabby;"):
        _prepare(out, tree, on_bad_image="skip")
    assert not (out / "samples.parquet").exists()


def test_source_must_be_an_existing_folder(tree: Path, tmp_path: Path) -> None:
    with pytest.raises(HierpipeError, match="needs a source folder"):
        _prepare(tmp_path / "out", None)
    with pytest.raises(HierpipeError, match="does not exist"):
        _prepare(tmp_path / "out", tmp_path / "missing")
    with pytest.raises(HierpipeError, match="is not a folder"):
        _prepare(tmp_path / "out", tree / "README.md")


def test_folder_without_images_is_rejected(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(HierpipeError, match="no image files"):
        _prepare(tmp_path / "out", empty)
    (empty / "docs").mkdir()
    (empty / "docs/readme.txt").write_text("text only")
    _image(empty / "cats/.hidden.png")
    with pytest.raises(HierpipeError, match="no image files"):
        _prepare(tmp_path / "out", empty)


def test_single_class_is_rejected(tmp_path: Path) -> None:
    _image(tmp_path / "source/animals/cats/a.png")
    with pytest.raises(HierpipeError, match=r"only one class folder, animals/cats; .* at least 2"):
        _prepare(tmp_path / "out", tmp_path / "source")


def test_class_folders_sharing_a_name_are_rejected(tree: Path, tmp_path: Path) -> None:
    _image(tree / "plants/x/siamese/a.png")
    (tree / "plants/p.jpg").unlink()
    (tree / "plants/q.tif").unlink()
    with pytest.raises(HierpipeError, match="animals/cats/siamese, plants/x/siamese"):
        _prepare(tmp_path / "out", tree)


def test_output_inside_the_source_is_rejected(tree: Path) -> None:
    with pytest.raises(HierpipeError, match="lies inside the source"):
        _prepare(tree / "prepared", tree)


def test_symlinked_folders_are_followed_and_loops_rejected(tree: Path, tmp_path: Path) -> None:
    _image(tmp_path / "elsewhere/a.png")
    (tree / "animals/birds").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    samples, classes = read_dataset(_prepare(tmp_path / "out", tree, link=False))
    assert classes.paths[0] == ("animals", "birds")
    assert "images/animals/birds/a.png" in samples["path"].tolist()
    assert (tmp_path / "out/images/animals/birds/a.png").is_file()
    (tree / "plants/again").symlink_to(tree / "plants", target_is_directory=True)
    with pytest.raises(HierpipeError, match="symbolic link loop"):
        _prepare(tmp_path / "out", tree)


def test_check_images_keeps_good_rows_in_input_order(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    paths = []
    for index in range(30):
        name = f"{index:02d}.png"
        if index % 3 == 1:
            _truncated_jpeg(tmp_path / name)
        elif index % 3 == 0:
            _image(tmp_path / name, index)
        paths.append(name)
    good = [index for index in range(30) if index % 3 == 0]
    assert check_images(tmp_path, paths, "skip") == good
    assert "leaving out 20 of 30 image(s)" in caplog.text
    assert check_images(tmp_path, [paths[i] for i in good]) == list(range(len(good)))
    assert check_images(tmp_path, []) == []


def test_check_images_error_names_culprits_and_reasons(tmp_path: Path) -> None:
    _image(tmp_path / "good.png")
    _truncated_jpeg(tmp_path / "bad.jpg")
    (tmp_path / "text.jpg").write_text("not an image")
    with Image.open(tmp_path / "bad.jpg"):  # only decoding finds the truncation
        pass
    with pytest.raises(HierpipeError) as error:
        check_images(tmp_path, ["good.png", "bad.jpg", "missing.png", "text.jpg"])
    message = str(error.value)
    assert "3 of 4 image(s) cannot be used" in message
    assert "bad.jpg (cannot decode: image file is truncated" in message
    assert "missing.png (missing)" in message
    assert "text.jpg (cannot decode: cannot identify image file" in message
    assert "good.png" not in message


def test_check_images_error_lists_the_first_ten(tmp_path: Path) -> None:
    with pytest.raises(HierpipeError, match=r"15 of 15 .*; and 5 more; ") as error:
        check_images(tmp_path, [f"{index:02d}.png" for index in range(15)])
    assert "09.png" in str(error.value)
    assert "10.png" not in str(error.value)


def test_check_images_catches_decompression_bombs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _image(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # 8 x 8 is over twice the limit
    with pytest.raises(HierpipeError, match=r"big\.png \(cannot decode: .*decompression bomb"):
        check_images(tmp_path, ["big.png"])


def test_check_images_rejects_unknown_mode(tmp_path: Path) -> None:
    with pytest.raises(HierpipeError, match="on_bad_image='warn'; expected one of error, skip"):
        check_images(tmp_path, [], "warn")
