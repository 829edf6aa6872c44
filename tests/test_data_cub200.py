"""CUB-200-2011 from a tiny archive in the official layout, served over 127.0.0.1."""

import tarfile
from pathlib import Path

import pandas as pd
import pytest
from dataset_fixtures import add_member, assert_pinned_checksum_refused, jpeg_bytes, pin_files
from http_server import serve_directory

from hierpipe.cli import main
from hierpipe.core.errors import HierpipeError
from hierpipe.data import cub200, make_split, read_dataset, read_split

CLASSES = [
    "001.Black_footed_Albatross",
    "002.Laysan_Albatross",
    "003.Sooty_Albatross",
    "004.Groove_billed_Ani",
]
SCIENTIFIC = ["Phoebastria nigripes", "Phoebastria immutabilis", "Phoebetria fusca", "Crotophaga"]
HIERARCHY = """Aves

-- Procellariiformes
---- Diomedeidae
------ Phoebastria
-------- Phoebastria nigripes
-------- Phoebastria immutabilis
------ Phoebetria
-------- Phoebetria fusca

-- Cuculiformes
---- Cuculidae
------ Crotophaga
"""
IMAGES_PER_CLASS = 3


def _build_archive(path: Path, corrupt: str | None = None, missing: str | None = None) -> dict:
    """CUB_200_2011.tgz with 4 classes x 3 images; returns the expected per-image facts."""
    images, labels, is_train, expected = [], [], [], []
    with tarfile.open(path, "w:gz") as archive:
        for c, name in enumerate(CLASSES, start=1):
            for k in range(IMAGES_PER_CLASS):
                image_id = len(images) + 1
                relative = f"{name}/{name.split('.')[1]}_{k:04d}.jpg"
                images.append(f"{image_id} {relative}")
                labels.append(f"{image_id} {c}")
                is_train.append(f"{image_id} {int(k < 2)}")
                expected.append((image_id, relative, c - 1, "train" if k < 2 else "test"))
                if relative != missing:
                    data = (
                        b"\xff\xd8\xff not a jpeg" if relative == corrupt else jpeg_bytes(image_id)
                    )
                    add_member(archive, f"CUB_200_2011/images/{relative}", data)
        for name, lines in (
            ("images.txt", images),
            ("image_class_labels.txt", labels),
            ("train_test_split.txt", is_train),
            ("classes.txt", [f"{c} {n}" for c, n in enumerate(CLASSES, start=1)]),
        ):
            add_member(archive, f"CUB_200_2011/{name}", ("\n".join(lines) + "\n").encode())
    return {"rows": expected}


def _serve_files(tmp_path: Path, **archive_options) -> tuple[Path, dict]:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    facts = _build_archive(mirror / "CUB_200_2011.tgz", **archive_options)
    (mirror / "hierarchy_flat.txt").write_text(HIERARCHY)
    (mirror / "classes_wikispecies.txt").write_text(
        "".join(f"{c} {s}\n" for c, s in enumerate(SCIENTIFIC, start=1))
    )
    return mirror, facts


def test_prepare_downloads_verifies_and_writes_the_tables(tmp_path, monkeypatch):
    mirror, facts = _serve_files(tmp_path)
    out = tmp_path / "cub200"
    with serve_directory(mirror) as server:
        pin_files(monkeypatch, cub200, mirror, server.url)
        assert main(["data", "prepare", "cub200", "--out", str(out)]) == 0
    samples, tree = read_dataset(out)
    rows = facts["rows"]
    assert samples["sample_id"].tolist() == [r[0] for r in rows]
    assert samples["path"].tolist() == [f"raw/CUB_200_2011/images/{r[1]}" for r in rows]
    assert samples["label"].tolist() == [r[2] for r in rows]
    assert all((out / p).is_file() for p in samples["path"])
    assert tree.classes == tuple(CLASSES)
    assert tree.paths[0] == ("Procellariiformes", "Diomedeidae", "Phoebastria", CLASSES[0])
    assert tree.paths[3] == ("Cuculiformes", "Cuculidae", CLASSES[3])  # genus-named class
    assert (
        main(
            [
                "data",
                "split",
                str(out),
                "--name",
                "official",
                "--scheme",
                "predefined",
                "--predefined",
                "official",
                "--fractions",
                "train=1",
                "--seed",
                "0",
            ]
        )
        == 0
    )
    official, description = read_split(out / "splits/official.parquet")
    assert official["subset"].tolist() == [r[3] for r in rows]
    assert description == {"scheme": "predefined", "predefined": "official"}
    make_split(out, "ml", "predefined", {}, 0, predefined="metric_learning")
    metric, _ = read_split(out / "splits/ml.parquet")
    # the first half of the classes train, the rest are retrieved
    assert metric["subset"].tolist() == ["train"] * 6 + ["test"] * 6
    with pytest.raises(HierpipeError, match=r"no predefined split 'query'; .* official"):
        make_split(out, "q", "predefined", {}, 0, predefined="query")


def test_same_archive_gives_byte_identical_tables(tmp_path, monkeypatch):
    mirror, _ = _serve_files(tmp_path)
    with serve_directory(mirror) as server:
        pin_files(monkeypatch, cub200, mirror, server.url)
        for out in ("a", "b"):
            cub200.CUB200Builder().prepare(tmp_path / out, cub200.CUB200Builder.Options(), None)
    for name in ("samples.parquet", "classes.parquet", "predefined_splits.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_mirror_and_extracted_directory_sources(tmp_path, monkeypatch):
    mirror, _ = _serve_files(tmp_path)
    with serve_directory(mirror) as server:
        pin_files(
            monkeypatch, cub200, mirror, "http://127.0.0.1:9/unused"
        )  # only the mirror is asked
        builder = cub200.CUB200Builder()
        builder.prepare(tmp_path / "via_mirror", builder.Options(), server.url)
    # the extracted tree of that run, given as the source of another
    builder.prepare(tmp_path / "via_dir", builder.Options(), str(tmp_path / "via_mirror/raw"))
    a = pd.read_parquet(tmp_path / "via_mirror/samples.parquet")
    b = pd.read_parquet(tmp_path / "via_dir/samples.parquet")
    pd.testing.assert_frame_equal(a, b)
    assert all((tmp_path / "via_dir" / p).is_file() for p in b["path"])


def test_checksum_mismatch_extracts_nothing(tmp_path):
    mirror, _ = _serve_files(tmp_path)
    # the real pinned md5 against the fixture archive
    assert_pinned_checksum_refused(
        cub200.CUB200Builder(),
        tmp_path / "cub200",
        mirror,
        "CUB_200_2011.tgz",
        "97eceeb196236b17998738112f37df78",
    )


def test_missing_and_corrupt_images_are_named(tmp_path, monkeypatch):
    broken = f"{CLASSES[1]}/Laysan_Albatross_0001.jpg"
    absent = f"{CLASSES[2]}/Sooty_Albatross_0000.jpg"
    mirror, _ = _serve_files(tmp_path, corrupt=broken, missing=absent)
    with serve_directory(mirror) as server:
        pin_files(monkeypatch, cub200, mirror, server.url)
        builder = cub200.CUB200Builder()
        with pytest.raises(HierpipeError, match=r"2 of 12 image\(s\)") as error:
            builder.prepare(tmp_path / "strict", builder.Options(), None)
        assert broken in str(error.value) and absent in str(error.value)
        assert not (tmp_path / "strict/samples.parquet").exists()
        builder.prepare(tmp_path / "lenient", builder.Options(on_bad_image="skip"), None)
    samples = pd.read_parquet(tmp_path / "lenient/samples.parquet")
    assert len(samples) == 10
    make_split(tmp_path / "lenient", "official", "predefined", {}, 0, predefined="official")
    assert len(read_split(tmp_path / "lenient/splits/official.parquet")[0]) == 10


def test_hierarchy_not_matching_the_classes_is_refused(tmp_path, monkeypatch):
    mirror, _ = _serve_files(tmp_path)
    (mirror / "classes_wikispecies.txt").write_text(
        "".join(f"{c} {s}\n" for c, s in enumerate([*SCIENTIFIC[:3], "Aethia pusilla"], start=1))
    )
    with serve_directory(mirror) as server:
        pin_files(monkeypatch, cub200, mirror, server.url)
        with pytest.raises(HierpipeError, match=r"not nodes of the hierarchy: 'Aethia pusilla'"):
            cub200.CUB200Builder().prepare(tmp_path / "out", cub200.CUB200Builder.Options(), None)
    assert not (tmp_path / "out/samples.parquet").exists()
