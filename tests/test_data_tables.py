"""On-disk tables: round trips, validation errors naming the file, atomic writes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import hierpipe.core.io
from hierpipe.core.errors import HierpipeError
from hierpipe.core.hierarchy import ClassTree
from hierpipe.data.tables import (
    read_classes,
    read_dataset,
    read_samples,
    read_split,
    write_classes,
    write_samples,
    write_split,
)

TREE = ClassTree.from_paths(
    [("animal", "mammal", "cat"), ("animal", "bird"), ("plant", "tree", "oak"), ("fungus",)]
)


def _samples(labels: list[int]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sample_id": np.arange(100, 100 + len(labels)),
            "path": [f"images/{i}.png" for i in range(len(labels))],
            "label": labels,
        }
    )


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    write_classes(tmp_path, TREE)
    write_samples(tmp_path, _samples([0, 1, 2, 3, 3, 0]))
    return tmp_path


def test_samples_round_trip(tmp_path: Path) -> None:
    frame = _samples([2, 0, 1])
    write_samples(tmp_path, frame)
    back = read_samples(tmp_path)
    pd.testing.assert_frame_equal(back, frame, check_dtype=False)
    assert back["sample_id"].dtype == np.int64
    assert back["label"].dtype == np.int64
    assert back["path"].tolist() == ["images/0.png", "images/1.png", "images/2.png"]
    assert pq.read_schema(tmp_path / "samples.parquet").metadata is None


def test_classes_round_trip(tmp_path: Path) -> None:
    write_classes(tmp_path, TREE)
    assert read_classes(tmp_path) == TREE
    table = pq.read_table(tmp_path / "classes.parquet")
    assert table.column("ancestors").to_pylist() == [
        ["animal", "mammal"],
        ["animal"],
        ["plant", "tree"],
        [],
    ]
    assert table.schema.field("ancestors").type == pa.list_(pa.string())


def test_split_round_trip(dataset: Path) -> None:
    description = {"scheme": "by_image", "seed": 3, "fractions": {"train": 0.5, "test": 0.5}}
    path = write_split(
        dataset / "splits" / "s.parquet", [100, 101, 105], ["train", "test", "train"], description
    )
    frame, back = read_split(path)
    assert back == description
    assert list(back["fractions"]) == ["train", "test"]  # order kept: it decides the split
    assert frame["sample_id"].tolist() == [100, 101, 105]
    assert frame["subset"].tolist() == ["train", "test", "train"]


def test_read_dataset(dataset: Path) -> None:
    samples, tree = read_dataset(dataset)
    assert tree == TREE
    assert samples["label"].tolist() == [0, 1, 2, 3, 3, 0]


def test_narrower_integer_columns_are_accepted(tmp_path: Path) -> None:
    table = pa.table(
        {
            "sample_id": pa.array([5, 6], pa.int32()),
            "path": ["a.png", "b.png"],
            "label": pa.array([0, 0], pa.int16()),
        }
    )
    pq.write_table(table, tmp_path / "samples.parquet")
    assert read_samples(tmp_path)["sample_id"].dtype == np.int64


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(HierpipeError, match=r"samples.parquet: missing file"):
        read_samples(tmp_path)


def test_corrupt_parquet(tmp_path: Path) -> None:
    (tmp_path / "classes.parquet").write_bytes(b"\x00garbage, not parquet" * 20)
    with pytest.raises(HierpipeError, match=r"classes.parquet: not a readable Parquet file"):
        read_classes(tmp_path)


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"sample_id": [1], "path": ["a.png"]}, "missing column 'label'"),
        (
            {"sample_id": [1], "path": ["a.png"], "label": ["cat"]},
            "column 'label' has type string; expected int64",
        ),
        (
            {"sample_id": [1.0], "path": ["a.png"], "label": [0]},
            "column 'sample_id' has type double",
        ),
        (
            {"sample_id": [1, 1], "path": ["a.png", "b.png"], "label": [0, 0]},
            "1 duplicate sample_id value.*: 1",
        ),
        (
            {"sample_id": [1, None], "path": ["a.png", "b.png"], "label": [0, 0]},
            "column 'sample_id' has 1 null",
        ),
        (
            {"sample_id": [1], "path": ["/abs/a.png"], "label": [0]},
            "'/abs/a.png' is not a relative POSIX path",
        ),
        ({"sample_id": [1], "path": ["../a.png"], "label": [0]}, "not a relative POSIX path"),
        ({"sample_id": [1], "path": ["a.png"], "label": [-1]}, "negative label -1"),
    ],
)
def test_invalid_samples_file(tmp_path: Path, columns: dict, message: str) -> None:
    pq.write_table(pa.table(columns), tmp_path / "samples.parquet")
    with pytest.raises(HierpipeError, match=rf"samples\.parquet: .*{message}"):
        read_samples(tmp_path)


def test_write_samples_validates(tmp_path: Path) -> None:
    with pytest.raises(HierpipeError, match=r"duplicate sample_id"):
        write_samples(tmp_path, _samples([0, 0]).assign(sample_id=[7, 7]))
    with pytest.raises(HierpipeError, match=r"missing column"):
        write_samples(tmp_path, _samples([0]).drop(columns="path"))
    with pytest.raises(HierpipeError, match=r"cannot write samples"):
        write_samples(tmp_path, _samples([0]).assign(label=["cat"]))
    assert list(tmp_path.iterdir()) == []


def test_invalid_classes_file(tmp_path: Path) -> None:
    def write(**columns: list) -> None:
        base = {"class_id": [0, 1], "class_name": ["a", "b"], "ancestors": [["g"], ["g"]]}
        pq.write_table(pa.table({**base, **columns}), tmp_path / "classes.parquet")

    write(class_id=[1, 0])
    with pytest.raises(HierpipeError, match=r"class_id must be 0..1 in order"):
        read_classes(tmp_path)
    write(class_name=["a", "a"])
    with pytest.raises(HierpipeError, match=r"classes.parquet: duplicate class name 'a'"):
        read_classes(tmp_path)
    write(ancestors=[["g"], ["g", None]])
    with pytest.raises(HierpipeError, match=r"'ancestors' has 1 null"):
        read_classes(tmp_path)


def test_labels_outside_classes(dataset: Path) -> None:
    write_samples(dataset, _samples([0, 1, 2, 3, 4]))
    with pytest.raises(
        HierpipeError, match=r"samples.parquet: 1 label.*outside 0..3.*sample 104 has label 4"
    ):
        read_dataset(dataset)


def test_empty_class(dataset: Path) -> None:
    write_samples(dataset, _samples([0, 0, 3]))
    with pytest.raises(HierpipeError, match=r"2 empty class.*1 'bird', 2 'oak'"):
        read_dataset(dataset)


def test_split_errors(dataset: Path) -> None:
    path = dataset / "splits" / "s.parquet"
    write_split(path, [100, 999, 998], ["train"] * 3, {"seed": 1})
    with pytest.raises(HierpipeError, match=r"s.parquet: 2 unknown sample id.*999, 998"):
        read_split(path)
    pq.write_table(pa.table({"sample_id": [100], "subset": ["train"]}), path)
    with pytest.raises(HierpipeError, match=r"missing split description"):
        read_split(path)
    with pytest.raises(HierpipeError, match=r"2 sample ids but 1 subsets"):
        write_split(path, [1, 2], ["train"], {})
    with pytest.raises(HierpipeError, match=r"empty subset name"):
        write_split(path, [1], [""], {})
    with pytest.raises(HierpipeError, match=r"cannot write split"):
        write_split(path, [1.5], ["train"], {})
    with pytest.raises(HierpipeError, match=r"cannot write split"):
        write_split(path, [1], ["train"], {"seed": object()})


def test_split_checked_against_given_ids(tmp_path: Path) -> None:
    path = write_split(tmp_path / "s.parquet", [1, 2], ["a", "b"], {})
    assert read_split(path, sample_ids=np.array([1, 2, 3]))[0]["subset"].tolist() == ["a", "b"]
    with pytest.raises(HierpipeError, match=r"1 unknown sample id.*: 2"):
        read_split(path, sample_ids=np.array([1]))


def test_writes_leave_no_temporary_files(dataset: Path) -> None:
    write_split(dataset / "splits" / "s.parquet", [100], ["train"], {})
    assert sorted(p.name for p in dataset.iterdir()) == [
        "classes.parquet",
        "samples.parquet",
        "splits",
    ]
    assert [p.name for p in (dataset / "splits").iterdir()] == ["s.parquet"]
    # Permissions follow the umask like any new file (tempfile.mkstemp would give 0600).
    (dataset / "plain").touch()
    assert (dataset / "samples.parquet").stat().st_mode == (dataset / "plain").stat().st_mode


def test_failed_write_keeps_previous_file(dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def write_half_then_fail(table: pa.Table, where: Path, **kwargs: object) -> None:
        where.write_bytes(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(hierpipe.core.io.pq, "write_table", write_half_then_fail)
    with pytest.raises(OSError, match=r"disk full"):
        write_samples(dataset, _samples([1, 1]))
    monkeypatch.undo()
    assert read_samples(dataset)["label"].tolist() == [0, 1, 2, 3, 3, 0]
    assert sorted(p.name for p in dataset.iterdir()) == ["classes.parquet", "samples.parquet"]
