"""`hierpipe measure`: any model's embeddings (.npz or Parquet) against a class tree given as a
node,parent,label CSV; values against direct computations, and bad input refused in one line
before anything is written."""

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import one_line_error

from hierpipe.cli import main

# A binary tree, so that its splits are all resolved: (((cat, dog), cow), ((car, van), bus))
TREE_CSV = """node,parent,label
root,,
animal,root,
pets,animal,
vehicle,root,
cars,vehicle,
cat,pets,0
dog,pets,1
cow,animal,2
car,cars,3
van,cars,4
bus,vehicle,5
"""


def _tree(tmp_path: Path, text: str = TREE_CSV) -> Path:
    path = tmp_path / "tree.csv"
    path.write_text(text)
    return path


def _embeddings(tmp_path: Path, **changes) -> Path:
    """Four samples per class around a class centre placed as the tree nests the classes."""
    rng = np.random.default_rng(0)
    centres = np.array([[5, 2, 0], [5, 2, 0.5], [5, -2, 0], [-5, 2, 0], [-5, 2, 0.5], [-5, -2, 0]])
    label = np.repeat(np.arange(6), 4)
    arrays = {
        "embedding": centres[label] + 0.05 * rng.normal(size=(24, 3)),
        "label": label,
        "sample_id": np.arange(100, 124),
    }
    arrays.update(changes)
    path = tmp_path / "model.npz"
    np.savez(path, **arrays)
    return path


def _brute_force_recall_at_1(embedding: np.ndarray, label: np.ndarray) -> float:
    unit = embedding / np.linalg.norm(embedding, axis=1, keepdims=True)
    cosine = unit @ unit.T
    np.fill_diagonal(cosine, -np.inf)
    return float(np.mean(label[cosine.argmax(axis=1)] == label))


def test_npz_embeddings_and_a_csv_tree(tmp_path):
    path = _embeddings(tmp_path)
    out = tmp_path / "out"
    assert main(["measure", str(path), "--tree", str(_tree(tmp_path)), "--out-dir", str(out)]) == 0
    document = json.loads((out / "metrics.json").read_text())
    metrics = document["metrics"]
    arrays = np.load(path)
    expected = _brute_force_recall_at_1(arrays["embedding"], arrays["label"])
    assert metrics["retrieval/recall@1"] == pytest.approx(expected)
    # prototypes placed as the tree nests the classes: the prototype tree is the true tree
    assert metrics["hierarchy/prototype/rf"] == 0
    assert document["model"] == "model" and document["embedding_dim"] == 3
    assert not any(name.startswith("classification/") for name in metrics)  # no classifier
    assert (out / "summary.md").is_file()
    # the figures of a run that need neither images nor training
    for kind in ("embedding_map", "tree_comparison", "affinity", "hs_curves"):
        for extension in ("png", "pdf"):
            assert (out / "figures" / f"{kind}.{extension}").stat().st_size > 0, kind


def test_embeddings_in_the_poincare_ball(tmp_path):
    """Ball embeddings: their gyromidpoints stand for the classes, every figure is drawn."""
    arrays = np.load(_embeddings(tmp_path))
    unit = arrays["embedding"] / np.linalg.norm(arrays["embedding"], axis=1, keepdims=True)
    path = tmp_path / "ball.npz"
    np.savez(path, embedding=2.0 * unit, label=arrays["label"])  # radius 1/sqrt(0.1) = 3.16
    out = tmp_path / "out"
    argv = ["measure", str(path), "--tree", str(_tree(tmp_path)), "--out-dir", str(out)]
    assert main([*argv, "--distance", "poincare"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    # classes placed as the tree nests them: the gyromidpoints' tree is the true tree
    assert metrics["hierarchy/ball_prototype/rf"] == 0
    assert not any(name.startswith("hierarchy/prototype/") for name in metrics)
    assert 0 < metrics["retrieval/h_ap"] <= 1
    for kind in ("embedding_map", "tree_comparison", "affinity", "hs_curves"):
        assert (out / "figures" / f"{kind}.png").stat().st_size > 0, kind


def test_parquet_embeddings_with_a_split_measure_the_chosen_subset(tmp_path):
    arrays = np.load(_embeddings(tmp_path))
    split = np.where(np.arange(24) % 4 < 2, "query", "rest")
    frame = pd.DataFrame(
        {"embedding": list(arrays["embedding"]), "label": arrays["label"], "split": split}
    )
    path = tmp_path / "model.parquet"
    frame.to_parquet(path)
    out = tmp_path / "out"
    argv = ["measure", str(path), "--tree", str(_tree(tmp_path)), "--out-dir", str(out)]
    assert main([*argv, "--subset", "query"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())["metrics"]
    query = split == "query"
    expected = _brute_force_recall_at_1(arrays["embedding"][query], arrays["label"][query])
    assert metrics["retrieval/recall@1"] == pytest.approx(expected)


def test_a_structured_npy_file_measures_like_the_npz(tmp_path):
    arrays = np.load(_embeddings(tmp_path))
    fields = [("sample_id", "i8"), ("label", "i8"), ("embedding", "f8", (3,))]
    records = np.zeros(24, dtype=fields)
    for name in ("sample_id", "label", "embedding"):
        records[name] = arrays[name]
    np.save(tmp_path / "model.npy", records)
    tree = str(_tree(tmp_path))
    for name in ("model.npz", "model.npy"):
        out = str(tmp_path / f"out-{name}")
        assert main(["measure", str(tmp_path / name), "--tree", tree, "--out-dir", out]) == 0
    npz, npy = (
        json.loads((tmp_path / f"out-{n}/metrics.json").read_text())
        for n in ("model.npz", "model.npy")
    )
    assert npy["metrics"] == npz["metrics"]


def test_a_plain_npy_array_is_refused_for_lack_of_labels(tmp_path, capsys):
    np.save(tmp_path / "plain.npy", np.ones((4, 3)))
    argv = ["measure", str(tmp_path / "plain.npy"), "--tree", str(_tree(tmp_path))]
    line = one_line_error(capsys, [*argv, "--out-dir", str(tmp_path / "out")])
    assert "a plain array has no labels; expected a structured array" in line


@pytest.mark.parametrize(
    ("change", "tree", "message"),
    [
        ({"label": np.repeat(np.arange(6), 4) + 1}, TREE_CSV, r"label\(s\) \[6\] are not classes"),
        (
            {"embedding": np.where(np.arange(72).reshape(24, 3) == 31, np.nan, 1.0)},
            TREE_CSV,
            r"1 embedding row\(s\) with NaN or Inf, first row 10",
        ),
        ({"sample_id": np.zeros(24, dtype=int)}, TREE_CSV, "'sample_id' values must be unique"),
        ({"label": np.arange(24) * 0.5}, TREE_CSV, "'label' must be 24 integers"),
        ({}, TREE_CSV.replace("animal,root,", "animal,pets,"), "cycle in the parent links"),
        ({}, TREE_CSV.replace("van,cars,4", "van,cars,"), "labels must be 0..4, each once"),
        ({}, "node,label\nroot,\n", "expected the header node,parent,label"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, change, tree, message):
    path = _embeddings(tmp_path, **change)
    out = tmp_path / "out"
    argv = ["measure", str(path), "--tree", str(_tree(tmp_path, tree)), "--out-dir", str(out)]
    line = one_line_error(capsys, argv)
    assert line.startswith("hierpipe measure: error:")
    assert re.search(message, line), line
    assert not out.exists()


def test_representatives_of_unknown_classes_are_refused(tmp_path, capsys):
    from hierpipe.core.io import write_parquet_atomic
    from hierpipe.evaluation.embedding_files import representatives_table

    vectors = np.eye(3, dtype=np.float32)
    table = representatives_table([("proxy", np.array([0, 1, 9]), vectors, ["train"] * 3)])
    representatives = tmp_path / "representatives.parquet"
    write_parquet_atomic(table, representatives)
    argv = ["measure", str(_embeddings(tmp_path)), "--tree", str(_tree(tmp_path))]
    argv += ["--out-dir", str(tmp_path / "out"), "--representatives", str(representatives)]
    assert "class_id(s) [9] are not classes of the tree" in one_line_error(capsys, argv)
