"""Cars196 from a tiny car_ims.tgz and cars_annos.mat in the official format, over 127.0.0.1."""

import hashlib
import io
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dataset_fixtures import assert_pinned_checksum_refused, jpeg_bytes, pin_files
from http_server import serve_directory
from scipy.io import loadmat, savemat

from hierpipe.cli import main
from hierpipe.core.errors import HierpipeError
from hierpipe.data import cars196, make_split, read_dataset, read_split

CLASSES = [
    "AM General Hummer SUV 2000",
    "Audi S4 Sedan 2012",
    "Audi S4 Sedan 2007",
    "Aston Martin V8 Vantage Convertible 2012",
]
FIELDS = ("relative_im_path", "bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "test")
# (relative_im_path, class, test) per annotation: classes interleaved, the last 4 images test
ROWS = [(f"car_ims/{k + 1:06d}.jpg", k % 4 + 1, int(k >= 8)) for k in range(12)]


def _write_archive(path: Path, corrupt: str | None = None, missing: str | None = None) -> None:
    with tarfile.open(path, "w:gz") as archive:
        for k, (relative, _, _) in enumerate(ROWS):
            if relative == missing:
                continue
            data = b"\xff\xd8\xff not a jpeg" if relative == corrupt else jpeg_bytes(k)
            info = tarfile.TarInfo(relative)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def _write_mat(
    path: Path,
    rows: list[tuple[str, int, int]] = ROWS,
    class_names: list[str] = CLASSES,
    fields: tuple[str, ...] = FIELDS,
    variables: tuple[str, ...] = ("annotations", "class_names"),
) -> None:
    """cars_annos.mat as Stanford's: a 1 x N struct array and a 1 x C cell array of names."""
    structs = np.zeros((1, len(rows)), dtype=[(field, "O") for field in fields])
    for i, (relative, label, test) in enumerate(rows):
        values = {
            "relative_im_path": relative,
            "bbox_x1": np.uint16(1),
            "bbox_y1": np.uint16(2),
            "bbox_x2": np.uint16(7),
            "bbox_y2": np.uint16(6),
            "class": np.uint8(label),
            "test": np.uint8(test),
        }
        structs[0, i] = tuple(values[field] for field in fields)
    names = np.empty((1, len(class_names)), dtype=object)
    names[0, :] = class_names
    everything = {"annotations": structs, "class_names": names}
    savemat(path, {name: everything[name] for name in variables})


def _serve_files(tmp_path: Path, **archive_options) -> Path:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    _write_archive(mirror / "car_ims.tgz", **archive_options)
    _write_mat(mirror / "cars_annos.mat")
    return mirror


def _source_dir(tmp_path: Path, **mat_options) -> Path:
    """An extracted source directory: car_ims/ and a cars_annos.mat written as asked."""
    source = tmp_path / "source"
    source.mkdir()
    _write_archive(tmp_path / "car_ims.tgz")
    with tarfile.open(tmp_path / "car_ims.tgz") as archive:
        archive.extractall(source, filter="data")
    _write_mat(source / "cars_annos.mat", **mat_options)
    return source


def test_fixture_reads_back_like_the_real_file(tmp_path):
    _write_mat(tmp_path / "cars_annos.mat")
    mat = loadmat(tmp_path / "cars_annos.mat", squeeze_me=True)
    annotations = mat["annotations"]
    assert annotations.shape == (12,) and annotations.dtype.names == FIELDS
    assert annotations[0]["relative_im_path"] == "car_ims/000001.jpg"
    assert isinstance(annotations[0]["relative_im_path"], str)
    assert annotations["class"].tolist() == [r[1] for r in ROWS]
    assert mat["class_names"].dtype == object and mat["class_names"].tolist() == CLASSES


def test_prepare_downloads_verifies_and_writes_the_tables(tmp_path, monkeypatch, capsys):
    mirror = _serve_files(tmp_path)
    out = tmp_path / "cars196"
    with serve_directory(mirror) as server:
        pin_files(monkeypatch, cars196, mirror, server.url)
        assert main(["data", "prepare", "cars196", "--out", str(out)]) == 0
        # an unknown tree is refused before anything is fetched
        command = ["data", "prepare", "cars196", "--out", str(tmp_path / "x")]
        assert main([*command, "--option", "tree=colour"]) == 1
        assert "tree='colour'; expected one of make_model, body_type" in capsys.readouterr().err
        assert len(server.requests) == 2
    samples, tree = read_dataset(out)
    assert samples["sample_id"].tolist() == list(range(1, 13))
    assert samples["path"].tolist() == [f"raw/{r[0]}" for r in ROWS]
    assert samples["label"].tolist() == [r[1] - 1 for r in ROWS]
    assert all((out / p).is_file() for p in samples["path"])
    assert tree.classes == tuple(CLASSES)
    assert tree.paths == (
        ("AM General", "AM General Hummer SUV", CLASSES[0]),
        ("Audi", "Audi S4 Sedan", CLASSES[1]),
        ("Audi", "Audi S4 Sedan", CLASSES[2]),  # two years of one model share it
        ("Aston Martin", "Aston Martin V8 Vantage Convertible", CLASSES[3]),
    )
    make_split(out, "official", "predefined", {}, 0, predefined="official")
    official, _ = read_split(out / "splits/official.parquet")
    assert official["subset"].tolist() == ["train"] * 8 + ["test"] * 4
    make_split(out, "ml", "predefined", {}, 0, predefined="metric_learning")
    metric, _ = read_split(out / "splits/ml.parquet")
    # the first half of the classes (1 and 2) train, the rest are retrieved
    assert metric["subset"].tolist() == ["train", "train", "test", "test"] * 3


def test_body_type_tree(tmp_path):
    source = _source_dir(tmp_path)
    builder = cars196.Cars196Builder()
    builder.prepare(tmp_path / "out", builder.Options(tree="body_type"), str(source))
    _, tree = read_dataset(tmp_path / "out")
    assert tree.paths == (
        ("SUV", "AM General", CLASSES[0]),
        ("Sedan", "Audi", CLASSES[1]),
        ("Sedan", "Audi", CLASSES[2]),
        ("Convertible", "Aston Martin", CLASSES[3]),
    )


@pytest.mark.parametrize(
    ("name", "make", "body"),
    [
        ("Acura RL Sedan 2012", "Acura", "Sedan"),
        ("Aston Martin V8 Vantage Convertible 2012", "Aston Martin", "Convertible"),
        ("Land Rover LR2 SUV 2012", "Land Rover", "SUV"),
        ("Rolls-Royce Phantom Drophead Coupe Convertible 2012", "Rolls-Royce", "Convertible"),
        ("Mercedes-Benz Sprinter Van 2012", "Mercedes-Benz", "Van"),
        ("Ram C/V Cargo Van Minivan 2012", "Ram", "Minivan"),
        ("Ford E-Series Wagon Van 2012", "Ford", "Van"),
        ("Infiniti G Coupe IPL 2012", "Infiniti", "Coupe"),
        ("Dodge Ram Pickup 3500 Quad Cab 2009", "Dodge", "Cab"),
        ("Ford Ranger SuperCab 2011", "Ford", "Cab"),
        ("Volkswagen Golf Hatchback 1991", "Volkswagen", "Hatchback"),
        ("Acura Integra Type R 2001", "Acura", "Other"),
        ("Chevrolet HHR SS 2010", "Chevrolet", "Other"),
        ("smart fortwo Convertible 2012", "smart", "Convertible"),
    ],
)
def test_real_class_names_parse(name, make, body):
    assert cars196.class_path(name, "make_model") == (make, name.rsplit(" ", 1)[0], name)
    assert cars196.class_path(name, "body_type") == (body, make, name)


def test_same_source_gives_byte_identical_tables_and_any_source_the_same(tmp_path, monkeypatch):
    mirror = _serve_files(tmp_path)
    builder = cars196.Cars196Builder()
    with serve_directory(mirror) as server:
        pin_files(monkeypatch, cars196, mirror, server.url)
        builder.prepare(tmp_path / "a", builder.Options(), None)
        builder.prepare(tmp_path / "b", builder.Options(), None)
        pin_files(
            monkeypatch, cars196, mirror, "http://127.0.0.1:9/unused"
        )  # only the mirror is asked
        builder.prepare(tmp_path / "via_mirror", builder.Options(), server.url)
    # the extracted tree of a run, given as the source of another
    builder.prepare(tmp_path / "via_dir", builder.Options(), str(tmp_path / "a/raw"))
    for name in ("samples.parquet", "classes.parquet", "predefined_splits.parquet"):
        expected = (tmp_path / "a" / name).read_bytes()
        for other in ("b", "via_mirror", "via_dir"):
            assert (tmp_path / other / name).read_bytes() == expected, (other, name)
    samples = pd.read_parquet(tmp_path / "via_dir/samples.parquet")
    assert all((tmp_path / "via_dir" / p).is_file() for p in samples["path"])


def test_checksum_mismatch_extracts_nothing(tmp_path):
    mirror = _serve_files(tmp_path)
    # the real pinned md5 against the fixture archive
    assert_pinned_checksum_refused(
        cars196.Cars196Builder(),
        tmp_path / "cars196",
        mirror,
        "car_ims.tgz",
        "d5c8f0aa497503f355e17dc7886c3f14",
    )


def test_missing_and_corrupt_images_are_named(tmp_path, monkeypatch):
    broken, absent = ROWS[4][0], ROWS[9][0]
    mirror = _serve_files(tmp_path, corrupt=broken, missing=absent)
    builder = cars196.Cars196Builder()
    with serve_directory(mirror) as server:
        pin_files(monkeypatch, cars196, mirror, server.url)
        with pytest.raises(HierpipeError, match=r"2 of 12 image\(s\)") as error:
            builder.prepare(tmp_path / "strict", builder.Options(), None)
        assert broken in str(error.value) and absent in str(error.value)
        assert not (tmp_path / "strict/samples.parquet").exists()
        builder.prepare(tmp_path / "lenient", builder.Options(on_bad_image="skip"), None)
    samples = pd.read_parquet(tmp_path / "lenient/samples.parquet")
    assert 5 not in samples["sample_id"].tolist() and 10 not in samples["sample_id"].tolist()
    make_split(tmp_path / "lenient", "official", "predefined", {}, 0, predefined="official")
    official, _ = read_split(tmp_path / "lenient/splits/official.parquet")
    assert official["subset"].tolist() == ["train"] * 7 + ["test"] * 3


@pytest.mark.parametrize(
    ("mat_options", "message"),
    [
        ({"variables": ("class_names",)}, r"no variable 'annotations'"),
        ({"variables": ("annotations",)}, r"no variable 'class_names'"),
        (
            {"fields": tuple(f for f in FIELDS if f != "class")},
            r"'annotations' lacks the field\(s\) class",
        ),
        (
            {"rows": [*ROWS[:-1], ("car_ims/000012.jpg", 5, 1)]},
            r"1 annotation\(s\) with a class outside 1..4 \(the class_names\): 12 \(class 5\)",
        ),
        ({"rows": [*ROWS[:-1], ("car_ims/000012.jpg", 4, 2)]}, r"annotation 12 has test=2"),
        (
            {"rows": [*ROWS[:-1], ("../000012.jpg", 4, 1)]},
            r"annotation 12 has relative_im_path='../000012.jpg'",
        ),
        (
            {"class_names": [*CLASSES[:3], "Hummer"]},
            r"class_names: class name 'Hummer': expected '<make> <model> <year>'",
        ),
        ({"class_names": [*CLASSES[:3], CLASSES[0]]}, r"duplicate class name"),
    ],
)
def test_bad_annotations_are_refused(tmp_path, mat_options, message):
    source = _source_dir(tmp_path, **mat_options)
    builder = cars196.Cars196Builder()
    with pytest.raises(HierpipeError, match=message) as error:
        builder.prepare(tmp_path / "out", builder.Options(), str(source))
    assert "cars_annos.mat" in str(error.value)
    assert not (tmp_path / "out/samples.parquet").exists()


def test_missing_or_unreadable_mat_file_is_named(tmp_path):
    source = _source_dir(tmp_path)
    builder = cars196.Cars196Builder()
    (source / "cars_annos.mat").write_bytes(b"not a MATLAB file" * 20)
    with pytest.raises(HierpipeError, match=r"cars_annos.mat: cannot read it as a MATLAB file"):
        builder.prepare(tmp_path / "out", builder.Options(), str(source))
    (source / "cars_annos.mat").unlink()
    with pytest.raises(HierpipeError, match=r"cars_annos.mat: missing; a Cars196 source"):
        builder.prepare(tmp_path / "out", builder.Options(), str(source))


def test_directory_source_does_not_replace_downloaded_files(tmp_path):
    source = _source_dir(tmp_path)
    (tmp_path / "out/raw").mkdir(parents=True)  # e.g. left by an earlier download
    builder = cars196.Cars196Builder()
    with pytest.raises(HierpipeError, match=r"out/raw exists and is not a link; remove it"):
        builder.prepare(tmp_path / "out", builder.Options(), str(source))


# --- the devkit layout of today's mirrors ------------------------------------------------------


def _write_devkit(root: Path, meta_beside: bool = False) -> None:
    """The same 12 images and labels as ROWS in the devkit's layout: cars_train/ and cars_test/
    numbered in a different order than car_ims/, devkit/cars_train_annos.mat,
    devkit/cars_meta.mat and cars_test_annos_withlabels.mat."""
    (root / "devkit").mkdir(parents=True)
    for subset, test in (("train", 0), ("test", 1)):
        folder = root / f"cars_{subset}"
        folder.mkdir()
        chosen = [k for k, row in enumerate(ROWS) if row[2] == test][::-1]  # reversed order
        structs = np.zeros(
            (1, len(chosen)), dtype=[(f, "O") for f in ("bbox_x1", "class", "fname")]
        )
        for number, k in enumerate(chosen, start=1):
            name = f"{number:05d}.jpg"
            (folder / name).write_bytes(jpeg_bytes(k))
            structs[0, number - 1] = (np.uint16(1), np.uint8(ROWS[k][1]), name)
        annotations = (
            "devkit/cars_train_annos.mat" if subset == "train" else "cars_test_annos_withlabels.mat"
        )
        savemat(root / annotations, {"annotations": structs})
    names = np.empty((1, len(CLASSES)), dtype=object)
    names[0, :] = CLASSES
    savemat(
        root / ("cars_meta.mat" if meta_beside else "devkit/cars_meta.mat"), {"class_names": names}
    )


def _samples_by_content(out: Path) -> tuple[set, list[tuple[str, ...]]]:
    """(image sha256, label, official subset, metric_learning subset) per sample, and the tree."""
    samples, tree = read_dataset(out)
    subsets = {}
    for predefined in ("official", "metric_learning"):
        make_split(out, predefined, "predefined", {}, 0, predefined=predefined)
        split, _ = read_split(out / f"splits/{predefined}.parquet")
        subsets[predefined] = dict(zip(split["sample_id"], split["subset"], strict=True))
    rows = {
        (
            hashlib.sha256((out / path).read_bytes()).hexdigest(),
            label,
            subsets["official"][sample_id],
            subsets["metric_learning"][sample_id],
        )
        for sample_id, path, label in samples[["sample_id", "path", "label"]].itertuples(
            index=False
        )
    }
    return rows, [tree.paths, tree.classes]


@pytest.mark.parametrize("form", ["directory", "archive with a top folder", "meta beside"])
def test_the_devkit_layout_gives_the_same_samples_and_classes(tmp_path, form):
    reference = tmp_path / "car_ims_layout"
    assert (
        main(
            [
                "data",
                "prepare",
                "cars196",
                "--out",
                str(reference),
                "--source",
                str(_source_dir(tmp_path)),
            ]
        )
        == 0
    )
    devkit = tmp_path / "mirror" / "stanford_cars"
    _write_devkit(devkit, meta_beside=form == "meta beside")
    source = devkit
    if form == "archive with a top folder":
        source = tmp_path / "stanford_cars.tgz"
        with tarfile.open(source, "w:gz") as archive:
            archive.add(devkit, arcname="stanford_cars")
    out = tmp_path / "devkit_layout"
    assert main(["data", "prepare", "cars196", "--out", str(out), "--source", str(source)]) == 0
    assert _samples_by_content(out) == _samples_by_content(reference)
    samples, _ = read_dataset(out)
    assert len(samples) == len(ROWS) and samples["path"].str.contains("cars_t").all()


def test_a_devkit_source_without_its_test_labels_is_named(tmp_path):
    devkit = tmp_path / "devkit_source"
    _write_devkit(devkit)
    (devkit / "cars_test_annos_withlabels.mat").unlink()
    with pytest.raises(HierpipeError, match=r"no cars_test_annos_withlabels.mat \(in devkit/"):
        cars196.Cars196Builder().prepare(
            tmp_path / "out", cars196.Cars196Builder.Options(), str(devkit)
        )


def test_a_failed_official_download_names_the_mirror_layouts(tmp_path, monkeypatch, capsys):
    mirror = tmp_path / "empty"
    mirror.mkdir()
    with serve_directory(mirror) as server:  # every file answers 404, as the Stanford links do
        pin_files(monkeypatch, cars196, _serve_files(tmp_path), server.url)
        assert main(["data", "prepare", "cars196", "--out", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert "pass --source" in error and "car_ims/ with cars_annos.mat, or cars_train/" in error
