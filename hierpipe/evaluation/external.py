"""hierpipe's measures on embeddings from any model (`hierpipe measure`).

Embeddings come as
- Parquet: hierpipe's own embeddings.parquet, or any file with an integer `label` column and
  an `embedding` column of equal-length float lists, optionally `sample_id` (integers) and
  `split` (the subset each sample belongs to; `--subset` picks the evaluated one);
- NumPy `.npz`: arrays `embedding` (N, D) and `label` (N,), optionally `sample_id` and
  `split`; or `.npy`: a structured array of N records with those fields (`embedding` a
  D-element float field).

The class tree comes as a prepared dataset's directory (or its `classes.parquet`), or a CSV
file with the columns `node,parent,label`: one row per node of the tree, the root with an
empty parent, and each class (a leaf) with its label, the integer the embeddings use (labels
0..C-1). Representatives (`--representatives`, hierpipe's representatives.parquet layout) are
taken from the file when given; otherwise every class gets its prototype, the renormalised
mean of its samples (the gyromidpoint with a Poincaré distance).

Every measure that needs no classifier is computed, with hierpipe's evaluation of a run
(hierpipe.evaluation.evaluate) on a run config that describes the file.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from hierpipe.core.config import (
    BackboneConfig,
    EvaluateConfig,
    HeadConfig,
    RunConfig,
    SplitConfig,
    write_run_config,
)
from hierpipe.core.errors import HierpipeError
from hierpipe.core.hierarchy import ClassTree
from hierpipe.core.io import write_parquet_atomic
from hierpipe.data.tables import CLASSES_FILE, read_classes, write_classes
from hierpipe.evaluation.embedding_files import (
    Embeddings,
    class_prototypes,
    read_representatives,
    representatives_table,
    write_embeddings,
)
from hierpipe.evaluation.evaluate import evaluate_run

# The head space a distance implies, for the measures that depend on it.
_SPACES = {"cosine": "sphere", "euclidean": "euclidean", "poincare": "poincare"}


def read_any_embeddings(path: str | Path, subset: str) -> Embeddings:
    """Embeddings of a Parquet or .npz file (module docstring), checked row by row."""
    path = Path(path)
    if not path.is_file():
        raise HierpipeError(f"{path}: embeddings file not found")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as arrays:
            columns = {name: arrays[name] for name in arrays.files}
    elif path.suffix == ".npy":
        try:
            records = np.load(path, allow_pickle=False)
        except ValueError as error:
            raise HierpipeError(f"{path}: not a readable .npy file ({error})") from error
        if records.dtype.names is None:
            raise HierpipeError(
                f"{path}: a plain array has no labels; expected a structured array with the "
                "fields embedding and label (optionally sample_id, split), or an .npz file"
            )
        columns = {name: records[name] for name in records.dtype.names}
    elif path.suffix == ".parquet":
        try:
            table = pq.read_table(path)
        except (pa.ArrowException, OSError) as error:
            raise HierpipeError(f"{path}: not a readable Parquet file ({error})") from error
        columns = {
            name: _embedding_rows(table[name], path)
            if name == "embedding"
            else table[name].to_numpy(zero_copy_only=False)
            for name in table.column_names
        }
    else:
        raise HierpipeError(f"{path}: expected a .parquet, .npz or .npy embeddings file")
    for name in ("embedding", "label"):
        if name not in columns:
            raise HierpipeError(
                f"{path}: no {name!r} column; expected 'embedding' (N x D floats) and 'label' "
                "(N integers), optionally 'sample_id' and 'split'"
            )
    try:
        embedding = np.asarray(columns["embedding"], dtype=np.float64)
    except ValueError as error:
        raise HierpipeError(f"{path}: 'embedding' rows must have one length ({error})") from error
    if embedding.ndim != 2 or len(embedding) == 0 or embedding.shape[1] == 0:
        raise HierpipeError(f"{path}: 'embedding' must be N x D with N, D >= 1")
    bad = np.flatnonzero(~np.isfinite(embedding).all(axis=1))
    if bad.size:
        raise HierpipeError(
            f"{path}: {bad.size} embedding row(s) with NaN or Inf, first row {bad[0]}"
        )
    label = np.asarray(columns["label"])
    if label.shape != (len(embedding),) or not np.issubdtype(label.dtype, np.integer):
        raise HierpipeError(f"{path}: 'label' must be {len(embedding)} integers, one per row")
    sample_id = np.asarray(columns.get("sample_id", np.arange(len(embedding))))
    if sample_id.shape != label.shape or not np.issubdtype(sample_id.dtype, np.integer):
        raise HierpipeError(f"{path}: 'sample_id' must be {len(embedding)} integers, one per row")
    if len(np.unique(sample_id)) != len(sample_id):
        raise HierpipeError(f"{path}: 'sample_id' values must be unique")
    split = np.asarray(columns.get("split", [subset] * len(embedding)), dtype=object)
    if subset not in set(split):
        raise HierpipeError(f"{path}: no sample in subset {subset!r} (column 'split')")
    return Embeddings(
        sample_id.astype(np.int64), split, label.astype(np.int64), embedding, None, None
    )


def _embedding_rows(column: pa.ChunkedArray, path: Path) -> np.ndarray:
    """An N x D array from a column of equal-length float lists, without a Python object per
    value (SOP-size files hold tens of millions)."""
    column = column.combine_chunks()
    if not (pa.types.is_list(column.type) or pa.types.is_fixed_size_list(column.type)):
        raise HierpipeError(f"{path}: 'embedding' must be a column of float lists")
    if column.null_count:
        raise HierpipeError(f"{path}: 'embedding' has {column.null_count} null row(s)")
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths != lengths[0]).any():
        raise HierpipeError(f"{path}: 'embedding' rows must have one length")
    values = column.flatten().to_numpy(zero_copy_only=False).astype(np.float64)
    return values.reshape(len(column), -1 if len(column) else 0)


def read_tree(spec: str | Path) -> ClassTree:
    """The class tree of a dataset directory, a classes.parquet or a node,parent,label CSV."""
    path = Path(spec)
    if path.is_dir() or path.name == CLASSES_FILE:
        return read_classes(path if path.is_dir() else path.parent)
    if path.suffix != ".csv":
        raise HierpipeError(
            f"{spec}: expected a prepared dataset directory (data/<name>), its {CLASSES_FILE}, "
            "or a CSV file of node,parent,label"
        )
    if not path.is_file():
        raise HierpipeError(f"{path}: tree file not found")
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"node", "parent", "label"} <= set(rows[0]):
        raise HierpipeError(f"{path}: expected the header node,parent,label and a row per node")
    parents: dict[str, str | None] = {}
    classes: dict[int, str] = {}
    for line, row in enumerate(rows, start=2):
        node, parent, label = row["node"].strip(), row["parent"].strip(), row["label"].strip()
        if not node or node in parents:
            raise HierpipeError(f"{path}, line {line}: node names must be non-empty and unique")
        parents[node] = parent or None
        if label:
            if not label.isdigit() or int(label) in classes:
                raise HierpipeError(
                    f"{path}, line {line}: label {label!r}; expected a class's integer label, "
                    "each used once"
                )
            classes[int(label)] = node
    if sorted(classes) != list(range(len(classes))):
        raise HierpipeError(f"{path}: labels must be 0..{len(classes) - 1}, each once")
    try:
        return ClassTree.from_parents(parents, [classes[i] for i in range(len(classes))])
    except HierpipeError as error:
        raise HierpipeError(f"{path}: {error}") from None


def _tree_name(spec: Path) -> str:
    """The dataset name tables show: the dataset folder's, or the tree file's."""
    if spec.is_dir():
        return spec.name
    return spec.parent.name if spec.name == CLASSES_FILE else spec.stem


def measure_embeddings(
    embeddings_path: str | Path,
    tree_spec: str | Path,
    out_dir: str | Path,
    *,
    name: str | None = None,
    representatives_path: str | Path | None = None,
    subset: str = "test",
    distance: str = "cosine",
    curvature: float = 0.1,
    seed: int = 0,
) -> Path:
    """Every classifier-free measure of the embeddings against the tree, into
    `out_dir`/metrics.json (with the embeddings, representatives and tree it measured, in
    hierpipe's layout); returns the metrics file."""
    if distance not in _SPACES:
        raise HierpipeError(f"distance {distance!r}; expected one of {', '.join(_SPACES)}")
    embeddings = read_any_embeddings(embeddings_path, subset)
    tree = read_tree(tree_spec)
    outside = sorted(set(embeddings.label.tolist()) - set(range(tree.num_classes)))
    if outside:
        raise HierpipeError(
            f"{embeddings_path}: label(s) {outside[:10]} are not classes of the tree "
            f"{tree_spec} (labels 0..{tree.num_classes - 1})"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_classes(out_dir, tree)
    write_embeddings(embeddings, out_dir / "embeddings.parquet")
    representatives = out_dir / "representatives.parquet"
    ball = curvature if distance == "poincare" else None
    if representatives_path is None:
        ids, vectors, sources = class_prototypes(
            embeddings.embedding, embeddings.label, embeddings.split, ball
        )
        kind = "ball_prototype" if ball is not None else "prototype"
        parts = [(kind, ids, vectors, list(sources))]
        write_parquet_atomic(representatives_table(parts), representatives)
    else:
        given = read_representatives(representatives_path)
        unknown = sorted(set(given["class_id"]) - set(range(tree.num_classes)))
        if unknown:
            raise HierpipeError(
                f"{representatives_path}: class_id(s) {unknown[:10]} are not classes of the tree"
            )
        shutil.copyfile(representatives_path, representatives)
    config = RunConfig(
        experiment="measure",
        dataset=_tree_name(Path(tree_spec)),
        data_dir=str(out_dir),
        split=SplitConfig(),
        model=name or Path(embeddings_path).stem,
        loss="external",
        hyperparameters={},
        option="standard",
        training_options={},
        seed=seed,
        head=HeadConfig(space=_SPACES[distance], curvature=curvature),
        backbone=BackboneConfig(name="external", embedding_dim=embeddings.embedding.shape[1]),
        evaluate=EvaluateConfig(subset=subset, distance=distance),
    )
    # the run's settings, as a run directory holds them, for the figures
    write_run_config(config, out_dir / "config.yaml")
    metrics = out_dir / "metrics.json"
    evaluate_run(config, out_dir / "embeddings.parquet", representatives, metrics)
    return metrics
