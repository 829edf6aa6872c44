"""Stanford Online Products from a tiny zip in the official layout, served over 127.0.0.1."""

import zipfile
from pathlib import Path

import pandas as pd
import pytest
from dataset_fixtures import jpeg_bytes, pin_files
from http_server import serve_directory

from hierpipe.cli import main
from hierpipe.core.errors import HierpipeError
from hierpipe.data import make_split, read_dataset, read_split, sop

HEADER = "image_id class_id super_class_id path"
SUPER_CLASSES = {1: "bicycle", 3: "chair", 8: "mug"}  # super_class_id -> name, as published
# (class_id, super_class_id) per file: classes 1-4 train, 5-7 test, like the real 1-11,318 split
CLASSES = {
    "Ebay_train.txt": [(1, 1), (2, 1), (3, 3), (4, 8)],
    "Ebay_test.txt": [(5, 1), (6, 3), (7, 8)],
}
IMAGES_PER_CLASS = 2
TRAIN_IMAGES = len(CLASSES["Ebay_train.txt"]) * IMAGES_PER_CLASS


def _metadata() -> dict[str, list[str]]:
    """Ebay_train.txt and Ebay_test.txt as lines: the header, then image ids running on."""
    files, image_id = {}, 0
    for name, classes in CLASSES.items():
        lines = [HEADER]
        for class_id, super_id in classes:
            for k in range(IMAGES_PER_CLASS):
                image_id += 1
                folder = f"{SUPER_CLASSES[super_id]}_final"
                lines.append(
                    f"{image_id} {class_id} {super_id} {folder}/11108512287{class_id}_{k}.JPG"
                )
        files[name] = lines
    return files


def _write_dataset(
    directory: Path, metadata: dict[str, list[str]], missing: str | None = None
) -> Path:
    """The extracted layout: directory/Stanford_Online_Products/{Ebay_*.txt, <folder>/*.JPG}."""
    root = directory / "Stanford_Online_Products"
    root.mkdir(parents=True)
    for name, lines in metadata.items():
        (root / name).write_text("\n".join(lines) + "\n")
        for line in lines[1:]:
            image_id, *_, relative = line.split()
            if relative != missing:
                (root / relative).parent.mkdir(parents=True, exist_ok=True)
                (root / relative).write_bytes(jpeg_bytes(int(image_id)))
    return directory


def _zip(tree: Path, archive: Path) -> None:
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(tree.rglob("*")):
            zipped.write(path, path.relative_to(tree).as_posix())


def _serve_files(tmp_path: Path) -> Path:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    _zip(_write_dataset(tmp_path / "tree", _metadata()), mirror / "Stanford_Online_Products.zip")
    return mirror


def _prepare(source: Path, out: Path, **options) -> None:
    sop.SOPBuilder().prepare(out, sop.SOPBuilder.Options(**options), str(source))


def test_prepare_downloads_verifies_and_writes_the_tables(tmp_path, monkeypatch):
    mirror = _serve_files(tmp_path)
    out = tmp_path / "sop"
    with serve_directory(mirror) as server:
        pin_files(monkeypatch, sop, mirror, server.url)
        assert main(["data", "prepare", "sop", "--out", str(out)]) == 0
    samples, tree = read_dataset(out)
    rows = [line.split() for lines in _metadata().values() for line in lines[1:]]
    assert samples["sample_id"].tolist() == [int(r[0]) for r in rows] == list(range(1, 15))
    assert samples["path"].tolist() == [f"raw/Stanford_Online_Products/{r[3]}" for r in rows]
    assert samples["label"].tolist() == [int(r[1]) - 1 for r in rows]
    assert all((out / p).is_file() for p in samples["path"])
    assert tree.classes == (
        "bicycle_1",
        "bicycle_2",
        "chair_3",
        "mug_4",
        "bicycle_5",
        "chair_6",
        "mug_7",
    )
    assert tree.paths[0] == ("bicycle", "bicycle_1") and tree.max_depth == 2
    assert tree.paths[6] == ("mug", "mug_7")
    make_split(out, "official", "predefined", {}, 0, predefined="official")
    official, description = read_split(out / "splits/official.parquet")
    assert official["subset"].tolist() == ["train"] * TRAIN_IMAGES + ["test"] * 6
    assert description == {"scheme": "predefined", "predefined": "official"}
    subsets = samples.merge(official, on="sample_id").groupby("subset")["label"]
    assert set(subsets.get_group("train")).isdisjoint(subsets.get_group("test"))


def test_same_data_gives_byte_identical_tables(tmp_path, monkeypatch):
    mirror = _serve_files(tmp_path)
    with serve_directory(mirror) as server:
        pin_files(monkeypatch, sop, mirror, server.url)
        sop.SOPBuilder().prepare(tmp_path / "a", sop.SOPBuilder.Options(), None)
    # the extracted tree of that run, given as the source of another
    _prepare(tmp_path / "a/raw", tmp_path / "b")
    for name in ("samples.parquet", "classes.parquet", "predefined_splits.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    paths = pd.read_parquet(tmp_path / "b/samples.parquet")["path"]
    assert all((tmp_path / "b" / p).is_file() for p in paths)


def test_official_checksum_is_pinned(tmp_path):
    mirror = _serve_files(tmp_path)
    with serve_directory(mirror) as server, pytest.raises(HierpipeError) as error:
        sop.SOPBuilder().prepare(tmp_path / "out", sop.SOPBuilder.Options(), server.url)
    assert "7f73d41a2f44250d4779881525aea32e" in str(error.value)
    assert not (tmp_path / "out/raw").exists()


def test_row_pointing_to_a_missing_image_is_named(tmp_path):
    absent = "chair_final/111085122873_1.JPG"
    source = _write_dataset(tmp_path / "src", _metadata(), missing=absent)
    with pytest.raises(HierpipeError, match=r"1 of 14 image\(s\)") as error:
        _prepare(source, tmp_path / "strict")
    assert absent in str(error.value) and "missing" in str(error.value)
    assert not (tmp_path / "strict/samples.parquet").exists()
    _prepare(source, tmp_path / "lenient", on_bad_image="skip")
    samples, tree = read_dataset(tmp_path / "lenient")
    assert len(samples) == 13 and tree.num_classes == 7
    assert 6 not in samples["sample_id"].tolist()  # image 6 is the missing one


def test_class_left_without_images_is_refused(tmp_path):
    metadata = _metadata()
    # class 4 has images 7 and 8; without both, label 3 would be an empty class
    source = _write_dataset(tmp_path / "src", metadata, missing="mug_final/111085122874_0.JPG")
    (source / "Stanford_Online_Products/mug_final/111085122874_1.JPG").unlink()
    with pytest.raises(HierpipeError, match=r"empty class.*'mug_4'"):
        _prepare(source, tmp_path / "out", on_bad_image="skip")
    assert not (tmp_path / "out/samples.parquet").exists()


@pytest.mark.parametrize(
    ("line", "text", "message"),
    [
        (0, "image_id class_id path", r"Ebay_train.txt, line 1: expected the header"),
        (3, "3 2 1", r"Ebay_train.txt, line 4: expected '<image_id> <class_id>"),
        (3, "3 x 1 bicycle_final/a.JPG", r"Ebay_train.txt, line 4: expected '<image_id>"),
        (3, "3 0 1 bicycle_final/a.JPG", r"Ebay_train.txt, line 4: ids start at 1"),
        (3, "3 2 1 a.JPG", r"Ebay_train.txt, line 4: path 'a.JPG' is not"),
        (3, "2 2 1 bicycle_final/a.JPG", r"line 4: image_id 2 is already used at .*line 3"),
    ],
)
def test_malformed_metadata_is_named_with_file_and_line(tmp_path, line, text, message):
    metadata = _metadata()
    metadata["Ebay_train.txt"][line] = text
    source = _write_dataset(tmp_path / "src", metadata)
    with pytest.raises(HierpipeError, match=message):
        _prepare(source, tmp_path / "out")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # class 1 (line 2) also listed under super class 3
        (
            "2 1 3 chair_final/a.JPG",
            r"line 3: class 1 has super_class_id 3, but .*line 2 gives it 1",
        ),
        # super class 1 (bicycle) with an image in the mug folder
        (
            "2 1 1 mug_final/a.JPG",
            r"line 3: super_class_id 1 in folder 'mug_final', but .*line 2 in 'bicycle_final'",
        ),
        # a class of super class 2 with its image in the folder of super class 3 (chair)
        (
            "7 4 2 chair_final/a.JPG",
            r"line 8: folder 'chair_final' holds super_class_id 2, "
            r"but .*line 6 gives it 3",
        ),
    ],
)
def test_inconsistent_super_class_is_refused(tmp_path, text, message):
    metadata = _metadata()
    metadata["Ebay_train.txt"][int(text.split()[0])] = text
    source = _write_dataset(tmp_path / "src", metadata)
    with pytest.raises(HierpipeError, match=message):
        _prepare(source, tmp_path / "out")


def test_gap_in_class_ids_is_refused(tmp_path):
    metadata = _metadata()
    metadata["Ebay_test.txt"] = [
        line.replace(" 7 8 ", " 9 8 ") for line in metadata["Ebay_test.txt"]
    ]
    source = _write_dataset(tmp_path / "src", metadata)
    with pytest.raises(
        HierpipeError, match=r"must be 1\.\.9 without gaps; missing 2, e.g. \[7, 8\]"
    ):
        _prepare(source, tmp_path / "out")
