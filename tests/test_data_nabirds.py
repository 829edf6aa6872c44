"""NABirds from a tiny archive in the official layout, served over 127.0.0.1."""

import io
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import nodes_per_level
from dataset_fixtures import assert_pinned_checksum_refused, jpeg_bytes, pin_files
from http_server import serve_directory

from hierpipe.cli import main
from hierpipe.core.errors import HierpipeError
from hierpipe.data import make_split, nabirds, read_dataset, read_split

# classes.txt: the root, internal nodes, leaves with images, two leaves sharing a name, and a
# branch (Owls) whose only leaf has no image and must be dropped.
CLASSES = {
    0: "Birds",
    1: "Perching Birds",
    2: "Finches, Euphonias, and Allies",
    3: "House Finch",
    4: "House Finch (Adult Male)",
    5: "House Finch (Female/immature)",
    6: "Ducks, Geese, and Swans",
    7: "Mallard",
    8: "Mallard (Breeding male)",
    9: "Mallard (Female/Eclipse male)",
    10: "Wood Duck",
    11: "Owls",
    12: "Snowy Owl",
    13: "Juvenile",
    14: "Juvenile",
}
PARENTS = {1: 0, 2: 1, 3: 2, 4: 3, 5: 3, 13: 3, 6: 0, 7: 6, 8: 7, 9: 7, 14: 7, 10: 6, 11: 0, 12: 11}
LEAVES = [4, 5, 8, 9, 10, 13, 14]  # the classes with images, by class id = label order
IMAGES_PER_CLASS = 10


def _lines(rows) -> bytes:
    return "".join(f"{key} {value}\n" for key, value in rows).encode()


def _members() -> tuple[dict[str, bytes], list[tuple]]:
    """The archive's members by name, and (uuid, path, class id, subset) per images.txt row.

    Classes are interleaved in images.txt, and train_test_split.txt lists the images in
    another order, as nothing promises the same order in every file.
    """
    rng = np.random.default_rng(0)
    classes = rng.permutation(np.repeat(LEAVES, IMAGES_PER_CLASS))
    rows, seen = [], dict.fromkeys(LEAVES, 0)
    for i, class_id in enumerate(classes.tolist()):
        uuid = f"{i:08x}-21dc-4d0c-bfe1-{class_id:012x}"
        subset = "train" if seen[class_id] % 2 == 0 else "test"
        seen[class_id] += 1
        rows.append((uuid, f"{class_id:04d}/{uuid.replace('-', '')}.jpg", class_id, subset))
    members = {f"nabirds/images/{path}": jpeg_bytes(i) for i, (_, path, _, _) in enumerate(rows)}
    members["nabirds/images.txt"] = _lines((u, p) for u, p, _, _ in rows)
    members["nabirds/image_class_labels.txt"] = _lines((u, c) for u, _, c, _ in rows)
    members["nabirds/train_test_split.txt"] = _lines(
        (u, int(s == "train")) for u, _, _, s in reversed(rows)
    )
    members["nabirds/classes.txt"] = _lines(CLASSES.items())
    members["nabirds/hierarchy.txt"] = _lines(PARENTS.items())
    return members, rows


def _serve_files(tmp_path: Path, members: dict[str, bytes]) -> Path:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with tarfile.open(mirror / "nabirds.tar.gz", "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return mirror


def _prepare(tmp_path: Path, monkeypatch, members: dict[str, bytes], **options) -> Path:
    mirror = _serve_files(tmp_path, members)
    with serve_directory(mirror) as server:
        pin_files(monkeypatch, nabirds, mirror, server.url)
        builder = nabirds.NABirdsBuilder()
        builder.prepare(tmp_path / "out", builder.Options(**options), None)
    return tmp_path / "out"


def test_prepare_downloads_verifies_and_writes_the_tables(tmp_path, monkeypatch):
    members, rows = _members()
    mirror = _serve_files(tmp_path, members)
    out = tmp_path / "nabirds"
    with serve_directory(mirror) as server:
        pin_files(monkeypatch, nabirds, mirror, server.url)
        assert main(["data", "prepare", "nabirds", "--out", str(out)]) == 0
    samples, tree = read_dataset(out)
    assert samples["sample_id"].tolist() == list(range(1, len(rows) + 1))
    assert samples["path"].tolist() == [f"raw/nabirds/images/{r[1]}" for r in rows]
    assert samples["label"].tolist() == [LEAVES.index(r[2]) for r in rows]
    assert all((out / p).is_file() for p in samples["path"])
    assert tree.classes == (
        "House Finch (Adult Male)",
        "House Finch (Female/immature)",
        "Mallard (Breeding male)",
        "Mallard (Female/Eclipse male)",
        "Wood Duck",
        "Juvenile [13]",
        "Juvenile [14]",
    )
    assert tree.paths[0] == (
        "Perching Birds",
        "Finches, Euphonias, and Allies",
        "House Finch",
        "House Finch (Adult Male)",
    )
    assert tree.paths[4] == ("Ducks, Geese, and Swans", "Wood Duck")
    assert tree.paths[6] == ("Ducks, Geese, and Swans", "Mallard", "Juvenile [14]")
    # the Owls branch has no image below it: gone
    assert nodes_per_level(tree) == [2, 3, 5, 7]

    make_split(out, "official", "predefined", {}, 0, predefined="official")
    official, _ = read_split(out / "splits/official.parquet")
    assert official["subset"].tolist() == [r[3] for r in rows]
    make_split(out, "proxydr", "predefined", {}, 0, predefined="proxydr")
    proxydr, description = read_split(out / "splits/proxydr.parquet")
    assert description == {"scheme": "predefined", "predefined": "proxydr"}
    per_class = pd.crosstab(samples["label"], proxydr["subset"])
    # 70 / 10 / 20 of every class
    assert per_class[["train", "val", "test"]].drop_duplicates().values.tolist() == [[7, 1, 2]]


def test_same_archive_gives_byte_identical_tables(tmp_path, monkeypatch):
    members, _ = _members()
    mirror = _serve_files(tmp_path, members)
    with serve_directory(mirror) as server:
        pin_files(monkeypatch, nabirds, mirror, server.url)
        for out in ("a", "b"):
            builder = nabirds.NABirdsBuilder()
            builder.prepare(tmp_path / out, builder.Options(), None)
    for name in ("samples.parquet", "classes.parquet", "predefined_splits.parquet"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_checksum_mismatch_extracts_nothing(tmp_path):
    mirror = _serve_files(tmp_path, _members()[0])
    # the real pinned md5 against the fixture archive
    assert_pinned_checksum_refused(
        nabirds.NABirdsBuilder(),
        tmp_path / "nabirds",
        mirror,
        "nabirds.tar.gz",
        "df21a9e4db349a14e2b08adfd45873bd",
    )


def test_missing_image_is_named(tmp_path, monkeypatch):
    members, rows = _members()
    absent = rows[3][1]
    del members[f"nabirds/images/{absent}"]
    with pytest.raises(HierpipeError, match=r"1 of 70 image\(s\)") as error:
        _prepare(tmp_path, monkeypatch, members)
    assert absent in str(error.value)
    assert not (tmp_path / "out/samples.parquet").exists()


def test_skipping_every_image_of_a_class_drops_it_from_the_tree(tmp_path, monkeypatch):
    members, rows = _members()
    for _, path, class_id, _ in rows:
        if class_id == 10:  # Wood Duck
            del members[f"nabirds/images/{path}"]
    out = _prepare(tmp_path, monkeypatch, members, on_bad_image="skip")
    samples, tree = read_dataset(out)
    assert len(samples) == 60 and "Wood Duck" not in tree.classes
    kept = [r for r in rows if r[2] != 10]
    assert samples["label"].tolist() == [[4, 5, 8, 9, 13, 14].index(r[2]) for r in kept]
    make_split(out, "proxydr", "predefined", {}, 0, predefined="proxydr")
    assert len(read_split(out / "splits/proxydr.parquet")[0]) == 60


def _relabel(members: dict[str, bytes], old: int, new: int) -> None:
    text = members["nabirds/image_class_labels.txt"].decode()
    members["nabirds/image_class_labels.txt"] = text.replace(f" {old}\n", f" {new}\n").encode()


def test_images_labelled_with_an_internal_node_are_refused(tmp_path, monkeypatch):
    members, _ = _members()
    _relabel(members, 8, 7)  # Mallard, the parent of other classes with images
    with pytest.raises(HierpipeError, match=r"hierarchy.txt: class\(es\) 7 'Mallard' have images"):
        _prepare(tmp_path, monkeypatch, members)
    assert not (tmp_path / "out/samples.parquet").exists()


def test_class_outside_the_hierarchy_is_refused(tmp_path, monkeypatch):
    members, _ = _members()
    members["nabirds/classes.txt"] += b"15 Rock Pigeon\n"
    _relabel(members, 10, 15)  # a class with images but no line in hierarchy.txt
    with pytest.raises(HierpipeError, match=r"hierarchy.txt: .* lead up to 2 roots \(0 'Birds'"):
        _prepare(tmp_path, monkeypatch, members)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("hierarchy.txt", "1 0\n2 one\n", r"hierarchy.txt, line 2: expected '<child id> <pa"),
        ("hierarchy.txt", "1 0\n1 2\n", r"hierarchy.txt, line 2: 1 appears more than once"),
        ("hierarchy.txt", "1 0\n99 1\n", r"hierarchy.txt: class ids not in classes.txt: \[99\]"),
        (
            "hierarchy.txt",
            "".join(f"{c} {p}\n" for c, p in PARENTS.items()) + "0 4\n",
            r"hierarchy.txt: the parent links above class 4 loop",
        ),
        ("train_test_split.txt", "x 2\n", r"train_test_split.txt, line 1: expected '<image id>"),
        ("image_class_labels.txt", "", r"image_class_labels.txt: its image ids differ .* 70 mis"),
    ],
)
def test_malformed_metadata_is_refused_naming_the_file(tmp_path, monkeypatch, name, text, message):
    members, _ = _members()
    members[f"nabirds/{name}"] = text.encode()
    with pytest.raises(HierpipeError, match=message):
        _prepare(tmp_path, monkeypatch, members)
