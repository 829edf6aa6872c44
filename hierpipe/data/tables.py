"""The on-disk dataset schema shared by every dataset, with validating readers and atomic writers.

``<root>/samples.parquet``        sample_id int64 (unique), path string (relative POSIX),
                                  label int64 (class id)
``<root>/classes.parquet``        class_id int64 (0..C-1 in order), class_name string (unique),
                                  ancestors list<string> (level-0 ancestor down to the parent)
``<root>/splits/<name>.parquet``  sample_id int64, subset string; schema metadata
                                  ``hierpipe.split`` holds the split's description as JSON
``<root>/predefined_splits.parquet``  (datasets with official splits) sample_id int64 and
                                  one string column of subset names per predefined split
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from hierpipe.core.config import json_mapping
from hierpipe.core.errors import HierpipeError
from hierpipe.core.hierarchy import ClassTree
from hierpipe.core.io import read_parquet, write_parquet_atomic

SAMPLES_FILE = "samples.parquet"
CLASSES_FILE = "classes.parquet"
SPLITS_DIR = "splits"
PREDEFINED_SPLITS_FILE = "predefined_splits.parquet"
SPLIT_METADATA_KEY = b"hierpipe.split"

SAMPLES_SCHEMA = pa.schema(
    [("sample_id", pa.int64()), ("path", pa.string()), ("label", pa.int64())]
)
CLASSES_SCHEMA = pa.schema(
    [("class_id", pa.int64()), ("class_name", pa.string()), ("ancestors", pa.list_(pa.string()))]
)
SPLIT_SCHEMA = pa.schema([("sample_id", pa.int64()), ("subset", pa.string())])


def _compatible(actual: pa.DataType, expected: pa.DataType) -> bool:
    if pa.types.is_integer(expected):
        return pa.types.is_integer(actual)
    if pa.types.is_string(expected):
        return pa.types.is_string(actual) or pa.types.is_large_string(actual)
    return (pa.types.is_list(actual) or pa.types.is_large_list(actual)) and _compatible(
        actual.value_type, expected.value_type
    )


def _conform(table: pa.Table, schema: pa.Schema, where: str | Path) -> pa.Table:
    """Check columns, types and nulls, and cast to ``schema`` (e.g. int32 -> int64)."""
    for field in schema:
        if field.name not in table.column_names:
            raise HierpipeError(
                f"{where}: missing column {field.name!r}; expected columns {schema.names}"
            )
        actual = table.schema.field(field.name).type
        if not _compatible(actual, field.type):
            raise HierpipeError(
                f"{where}: column {field.name!r} has type {actual}; expected {field.type}"
            )
        column = table.column(field.name)
        nulls = column.null_count
        if pa.types.is_list(field.type) and not nulls:
            nulls = pc.list_flatten(column).null_count
        if nulls:
            raise HierpipeError(f"{where}: column {field.name!r} has {nulls} null value(s)")
    try:
        return table.select(schema.names).cast(schema)
    except pa.ArrowInvalid as exc:
        raise HierpipeError(f"{where}: cannot convert to {schema}: {exc}") from exc


def _read_table(path: Path, schema: pa.Schema) -> pa.Table:
    """Read ``path`` and return it conformed to ``schema``, keeping the file's schema metadata."""
    table = read_parquet(path)
    return _conform(table, schema, path).replace_schema_metadata(table.schema.metadata)


def _check_unique(ids: np.ndarray, column: str, where: str | Path) -> None:
    values, counts = np.unique(ids, return_counts=True)
    duplicates = values[counts > 1]
    if duplicates.size:
        shown = ", ".join(map(str, duplicates[:10]))
        raise HierpipeError(
            f"{where}: {duplicates.size} duplicate {column} value(s): {shown}; expected unique ids"
        )


def _check_samples(table: pa.Table, where: str | Path) -> None:
    _check_unique(table.column("sample_id").to_numpy(), "sample_id", where)
    labels = table.column("label").to_numpy()
    if labels.size and labels.min() < 0:
        raise HierpipeError(f"{where}: negative label {labels.min()}; expected class ids >= 0")
    for text in table.column("path").to_pylist():
        path = PurePosixPath(text)
        if not text or path.is_absolute() or ".." in path.parts or "\\" in text:
            raise HierpipeError(
                f"{where}: path {text!r} is not a relative POSIX path inside the dataset root"
            )


def begin_dataset(out_dir: str | Path) -> Path:
    """Create `out_dir` and remove its samples.parquet, the mark of a complete dataset that
    every builder writes last: a failed or interrupted prepare never leaves an old table
    beside new files."""
    out_dir = Path(out_dir)
    (out_dir / SAMPLES_FILE).unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    return out_dir


def write_samples(root: str | Path, df: pd.DataFrame) -> Path:
    """Write ``<root>/samples.parquet`` from a frame with columns sample_id, path, label."""
    path = Path(root) / SAMPLES_FILE
    missing = [name for name in SAMPLES_SCHEMA.names if name not in df.columns]
    if missing:
        raise HierpipeError(f"{path}: cannot write, missing column(s) {missing}")
    try:
        table = pa.Table.from_pandas(
            df[SAMPLES_SCHEMA.names], schema=SAMPLES_SCHEMA, preserve_index=False
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise HierpipeError(f"{path}: cannot write samples: {exc}") from exc
    _conform(table, SAMPLES_SCHEMA, path)
    _check_samples(table, path)
    # Drop the pandas metadata: the file should depend on the data, not on the pandas version.
    write_parquet_atomic(table.replace_schema_metadata(None), path)
    return path


def write_predefined_splits(
    root: str | Path, sample_ids: Sequence[int] | np.ndarray, splits: dict[str, Sequence[str]]
) -> Path:
    """Write the dataset's own splits (e.g. official train/test): a subset per sample each.

    Prepare writes it before samples.parquet; `make_split(..., scheme="predefined")` turns a
    column into a split file like any other.
    """
    path = Path(root) / PREDEFINED_SPLITS_FILE
    columns = {"sample_id": pa.array(np.asarray(sample_ids)).cast(pa.int64())}
    for name, subsets in splits.items():
        if len(subsets) != len(columns["sample_id"]):
            raise HierpipeError(
                f"{path}: split {name!r} has {len(subsets)} subsets for "
                f"{len(columns['sample_id'])} samples; expected one each"
            )
        columns[name] = pa.array(list(subsets), type=pa.string())
    write_parquet_atomic(pa.table(columns), path)
    return path


def read_predefined_split(root: str | Path, name: str) -> pd.DataFrame:
    """sample_id and subset of the dataset's predefined split ``name``."""
    path = Path(root) / PREDEFINED_SPLITS_FILE
    if not path.is_file():
        raise HierpipeError(
            f"{path}: missing; this dataset defines no splits of its own (use by_image or by_class)"
        )
    table = read_parquet(path)
    names = [c for c in table.column_names if c != "sample_id"]
    if name not in names:
        raise HierpipeError(
            f"{path}: no predefined split {name!r}; this dataset has {', '.join(names) or 'none'}"
        )
    frame = table.select(["sample_id", name]).to_pandas()
    return frame.rename(columns={name: "subset"})


def read_samples(root: str | Path) -> pd.DataFrame:
    """Read and validate ``<root>/samples.parquet``."""
    path = Path(root) / SAMPLES_FILE
    table = _read_table(path, SAMPLES_SCHEMA)
    _check_samples(table, path)
    return table.replace_schema_metadata(None).to_pandas()


def write_classes(root: str | Path, tree: ClassTree) -> Path:
    """Write ``<root>/classes.parquet`` describing ``tree``."""
    path = Path(root) / CLASSES_FILE
    table = pa.table(
        {
            "class_id": np.arange(tree.num_classes, dtype=np.int64),
            "class_name": list(tree.classes),
            "ancestors": [list(p[:-1]) for p in tree.paths],
        },
        schema=CLASSES_SCHEMA,
    )
    write_parquet_atomic(table, path)
    return path


def read_classes(root: str | Path) -> ClassTree:
    """Read and validate ``<root>/classes.parquet`` into a ClassTree."""
    path = Path(root) / CLASSES_FILE
    table = _read_table(path, CLASSES_SCHEMA)
    ids = table.column("class_id").to_numpy()
    if not np.array_equal(ids, np.arange(len(ids))):
        raise HierpipeError(f"{path}: class_id must be 0..{len(ids) - 1} in order")
    names = table.column("class_name").to_pylist()
    ancestors = table.column("ancestors").to_pylist()
    try:
        return ClassTree.from_paths([[*a, name] for a, name in zip(ancestors, names, strict=True)])
    except HierpipeError as exc:
        raise HierpipeError(f"{path}: {exc}") from exc


def read_dataset(root: str | Path) -> tuple[pd.DataFrame, ClassTree]:
    """Read samples and classes, check labels are class ids and no class is empty."""
    root = Path(root)
    samples = read_samples(root)
    tree = read_classes(root)
    labels = samples["label"].to_numpy()
    outside = labels >= tree.num_classes
    if outside.any():
        first = samples[outside].iloc[0]
        raise HierpipeError(
            f"{root / SAMPLES_FILE}: {int(outside.sum())} label(s) outside "
            f"0..{tree.num_classes - 1}, e.g. sample {first.sample_id} has label {first.label}"
        )
    try:
        tree.require_samples(np.bincount(labels, minlength=tree.num_classes))
    except HierpipeError as exc:
        raise HierpipeError(f"{root}: {exc}") from exc
    return samples, tree


def write_split(
    path: str | Path,
    sample_ids: Sequence[int] | np.ndarray,
    subsets: Sequence[str] | np.ndarray,
    description: dict,
) -> Path:
    """Write a split file: one subset name per sample id, ``description`` as JSON metadata."""
    path = Path(path)
    if len(sample_ids) != len(subsets):
        raise HierpipeError(
            f"{path}: {len(sample_ids)} sample ids but {len(subsets)} subsets; expected one each"
        )
    if not isinstance(description, dict):
        raise HierpipeError(f"{path}: split description must be a dict, got {description!r}")
    try:
        metadata = json.dumps(description)
        # pa.array(..., type=int64) would truncate 1.5 to 1; a safe cast raises instead.
        ids = pa.array(np.asarray(sample_ids)).cast(pa.int64())
        table = pa.table(
            [ids, pa.array(subsets, type=pa.string())],
            schema=SPLIT_SCHEMA,
        )
    except (TypeError, ValueError, pa.ArrowException) as exc:
        raise HierpipeError(f"{path}: cannot write split: {exc}") from exc
    _conform(table, SPLIT_SCHEMA, path)
    _check_split(table, path)
    write_parquet_atomic(table.replace_schema_metadata({SPLIT_METADATA_KEY: metadata}), path)
    return path


def _check_split(table: pa.Table, where: str | Path) -> None:
    _check_unique(table.column("sample_id").to_numpy(), "sample_id", where)
    if pc.any(pc.equal(pc.utf8_length(table.column("subset")), 0)).as_py():
        raise HierpipeError(f"{where}: empty subset name; expected e.g. train / val / test")


def read_split(path: str | Path, sample_ids: np.ndarray | None = None) -> tuple[pd.DataFrame, dict]:
    """Read and validate a split file; returns (frame of sample_id, subset) and its description.

    Sample ids are checked against ``sample_ids``, by default those of the dataset the split
    belongs to (``<root>/splits/<name>.parquet`` -> ``<root>/samples.parquet``).
    """
    path = Path(path)
    table = _read_table(path, SPLIT_SCHEMA)
    _check_split(table, path)
    raw = (table.schema.metadata or {}).get(SPLIT_METADATA_KEY)
    if raw is None:
        raise HierpipeError(
            f"{path}: missing split description (schema metadata {SPLIT_METADATA_KEY.decode()!r})"
        )
    description = json_mapping(raw, f"{path}: split description")

    if sample_ids is None:
        sample_ids = read_samples(path.parent.parent)["sample_id"].to_numpy()
    ids = table.column("sample_id").to_numpy()
    unknown = ids[~np.isin(ids, sample_ids)]
    if unknown.size:
        shown = ", ".join(map(str, unknown[:10]))
        raise HierpipeError(f"{path}: {unknown.size} unknown sample id(s): {shown}")
    return table.replace_schema_metadata(None).to_pandas(), description
