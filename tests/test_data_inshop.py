"""DeepFashion In-shop from tiny files in the official layout, given by hand as --source."""

import shutil
import zipfile
from pathlib import Path

import pandas as pd
import pytest
from dataset_fixtures import jpeg_bytes
from http_server import serve_directory

from hierpipe.cli import main
from hierpipe.core.errors import HierpipeError
from hierpipe.data import inshop, make_split, read_dataset, read_split

# (item_id, gender, category, evaluation status of each image), in list_eval_partition order;
# train and query/gallery items are disjoint as in the benchmark, and Denim is in both genders
ITEMS = [
    ("id_00000003", "MEN", "Denim", ["train", "train"]),
    ("id_00000001", "WOMEN", "Dresses", ["train", "train"]),
    ("id_00000002", "WOMEN", "Dresses", ["query", "gallery"]),
    ("id_00000005", "WOMEN", "Denim", ["query", "gallery", "gallery"]),
    ("id_00000004", "MEN", "Denim", ["query", "gallery"]),
]
ROWS = [
    (f"img/{gender}/{category}/{item}/{k + 1:02d}_{k + 1}_front.jpg", item, status)
    for item, gender, category, statuses in ITEMS
    for k, status in enumerate(statuses)
]
TABLES = ("samples.parquet", "classes.parquet", "predefined_splits.parquet")


def _lines() -> list[str]:
    """list_eval_partition.txt as lines: count, column names, rows padded into columns."""
    rows = [f"{name:<56}{item:<16}{status}" for name, item, status in ROWS]
    return [str(len(ROWS)), "image_name item_id evaluation_status", *rows]


def _extracted(directory: Path, lines: list[str], missing: tuple[str, ...] = ()) -> Path:
    """img.zip extracted beside list_eval_partition.txt: directory/{img/..., the list}."""
    for seed, (name, _, _) in enumerate(ROWS):
        if name not in missing:
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            (directory / name).write_bytes(jpeg_bytes(seed))
    (directory / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return directory


def _zip(tree: Path, archive: Path, names: list[str]) -> None:
    with zipfile.ZipFile(archive, "w") as zipped:
        for name in names:
            for path in sorted([tree / name, *(tree / name).rglob("*")]):
                zipped.write(path, path.relative_to(tree).as_posix())


def _downloaded(directory: Path, extracted: Path) -> Path:
    """The two files as downloaded by hand: img.zip and list_eval_partition.txt."""
    directory.mkdir()
    _zip(extracted, directory / "img.zip", ["img"])
    shutil.copy(extracted / "list_eval_partition.txt", directory)
    return directory


def _prepare(source: Path | str, out: Path, **options) -> None:
    inshop.InShopBuilder().prepare(out, inshop.InShopBuilder.Options(**options), str(source))


def test_prepare_from_the_files_as_downloaded(tmp_path):
    source = _downloaded(tmp_path / "download", _extracted(tmp_path / "tree", _lines()))
    out = tmp_path / "inshop"
    assert main(["data", "prepare", "inshop", "--out", str(out), "--source", str(source)]) == 0
    samples, tree = read_dataset(out)
    items = sorted({item for _, item, _ in ROWS})
    assert samples["sample_id"].tolist() == list(range(1, len(ROWS) + 1))
    assert samples["path"].tolist() == [f"raw/{name}" for name, _, _ in ROWS]
    assert samples["label"].tolist() == [items.index(item) for _, item, _ in ROWS]
    assert all((out / p).is_file() for p in samples["path"])
    assert tree.classes == tuple(items)
    assert tree.paths[0] == ("WOMEN", "Dresses", "id_00000001")
    assert tree.paths[2] == ("MEN", "Denim", "id_00000003")
    assert tree.paths[4] == ("WOMEN", "Denim", "id_00000005")
    assert tree.max_depth == 3
    make_split(out, "official", "predefined", {}, 0, predefined="official")
    official, description = read_split(out / "splits/official.parquet")
    assert official["subset"].tolist() == [status for _, _, status in ROWS]
    assert description == {"scheme": "predefined", "predefined": "official"}


def test_every_source_gives_byte_identical_tables(tmp_path):
    extracted = _extracted(tmp_path / "tree", _lines())
    downloaded = _downloaded(tmp_path / "download", extracted)
    archive = tmp_path / "inshop.zip"
    _zip(extracted, archive, ["img", "list_eval_partition.txt"])
    with serve_directory(downloaded) as server:
        sources = [downloaded, downloaded, extracted, archive, server.url]
        for index, source in enumerate(sources):
            _prepare(source, tmp_path / f"out{index}")
    for index in range(1, len(sources)):
        out = tmp_path / f"out{index}"
        for name in TABLES:
            assert (out / name).read_bytes() == (tmp_path / "out0" / name).read_bytes()
        paths = pd.read_parquet(out / "samples.parquet")["path"]
        assert all((out / p).is_file() for p in paths)
    assert (tmp_path / "out0/downloads/img.zip").is_file()  # read like a mirror, then extracted
    assert (tmp_path / "out2/raw").is_symlink()  # the extracted directory is used where it is
    # a rerun without --source reuses the raw files already there
    inshop.InShopBuilder().prepare(tmp_path / "out0", inshop.InShopBuilder.Options(), None)
    assert (tmp_path / "out0/samples.parquet").is_file()


def test_no_source_asks_for_a_manual_download(tmp_path, capsys):
    out = tmp_path / "inshop"
    with pytest.raises(HierpipeError, match=r"no --source given.*license agreement") as error:
        inshop.InShopBuilder().prepare(out, inshop.InShopBuilder.Options(), None)
    assert "img.zip" in str(error.value) and "list_eval_partition.txt" in str(error.value)
    assert not (out / "raw").exists() and not (out / "downloads").exists()
    assert main(["data", "prepare", "inshop", "--out", str(out)]) == 1
    assert "by hand" in capsys.readouterr().err
    with pytest.raises(HierpipeError, match=r"holds neither img/ nor img.zip\. DeepFashion"):
        _prepare(tmp_path, out)


def test_missing_images_are_named_and_empty_items_drop_out(tmp_path):
    absent = (ROWS[3][0], ROWS[4][0], ROWS[5][0])  # one of id_00000001, both of id_00000002
    source = _extracted(tmp_path / "tree", _lines(), missing=absent)
    with pytest.raises(HierpipeError, match=r"3 of 11 image\(s\)") as error:
        _prepare(source, tmp_path / "strict")
    assert all(name in str(error.value) for name in absent)
    assert not (tmp_path / "strict/samples.parquet").exists()
    _prepare(source, tmp_path / "lenient", on_bad_image="skip")
    samples, tree = read_dataset(tmp_path / "lenient")
    assert samples["sample_id"].tolist() == [1, 2, 3, 7, 8, 9, 10, 11]
    assert tree.classes == ("id_00000001", "id_00000003", "id_00000004", "id_00000005")
    assert samples["label"].tolist() == [1, 1, 0, 3, 3, 3, 2, 2]


@pytest.mark.parametrize(
    ("line", "text", "message"),
    [
        (0, "eleven", r"line 1: expected the number of images"),
        (0, "12", r"line 1: declares 12 images, but 11 rows follow"),
        (1, "image_name item_id", r"line 2: expected the column names"),
        (2, f"{ROWS[0][0]} id_00000003", r"line 3: expected '<image_name> <item_id>"),
        (2, f"{ROWS[0][0]} id_00000003 test", r"line 3: evaluation status 'test'"),
        (2, f"{ROWS[0][0]} id_00000009 train", r"line 3: image .* of item 'id_00000009' is not"),
        (2, "MEN/Denim/id_00000003/x.jpg id_00000003 train", r"line 3: image 'MEN/Denim"),
        (3, f"{ROWS[0][0]} id_00000003 train", r"line 4: image .* is already listed at .*line 3"),
    ],
)
def test_malformed_partition_file_is_named_with_line(tmp_path, line, text, message):
    lines = _lines()
    lines[line] = text
    source = _extracted(tmp_path / "tree", lines)
    with pytest.raises(HierpipeError, match=rf"list_eval_partition.txt, {message}"):
        _prepare(source, tmp_path / "out")


@pytest.mark.parametrize("folders", ["WOMEN/Skirts", "MEN/Dresses"], ids=["category", "gender"])
def test_item_under_two_places_is_refused(tmp_path, folders):
    lines = _lines()
    lines[5] = f"img/{folders}/id_00000001/02_2_front.jpg id_00000001 train"  # was WOMEN/Dresses
    source = _extracted(tmp_path / "tree", lines)
    with pytest.raises(
        HierpipeError,
        match=rf"line 6: item id_00000001 is under {folders}, but .*line 5 has it under "
        r"WOMEN/Dresses",
    ):
        _prepare(source, tmp_path / "out")
