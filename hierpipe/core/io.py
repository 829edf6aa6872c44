"""Parquet and vector I/O with atomic writes (hierpipe.core.atomic), and torch.load's refusals
on one line."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from hierpipe.core.atomic import atomic_path
from hierpipe.core.errors import HierpipeError


def write_parquet_atomic(data: pd.DataFrame | pa.Table, path: str | Path) -> None:
    table = data if isinstance(data, pa.Table) else pa.Table.from_pandas(data, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_parquet(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    """Read a Parquet file, naming it when it is missing, unreadable or lacks `columns`."""
    path = Path(path)
    if not path.is_file():
        raise HierpipeError(f"{path}: missing file")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as error:
        raise HierpipeError(f"{path}: not a readable Parquet file ({error})") from error
    missing = [c for c in columns or [] if c not in table.column_names]
    if missing:
        raise HierpipeError(f"{path}: missing column(s) {missing}; expected {columns}")
    return table


def vectors_to_arrow(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """N x D floats as a fixed-size list<float32> column (one vector per row)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])


def arrow_to_vectors(column: pa.ChunkedArray | pa.Array, source: str) -> np.ndarray:
    """The inverse of vectors_to_arrow, refusing ragged, null or non-finite rows."""
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not pa.types.is_fixed_size_list(column.type):
        raise HierpipeError(f"{source}: expected a fixed-size list column, got {column.type}")
    if column.null_count:
        raise HierpipeError(f"{source}: {column.null_count} null vector(s)")
    width = column.type.list_size
    # a writable copy: Arrow's buffers are read-only, and torch.from_numpy needs writable
    vectors = np.array(column.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
    vectors = vectors.reshape(len(column), width)
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        first = int(bad.argmax())
        raise HierpipeError(
            f"{source}: {int(bad.sum())} row(s) with NaN/Inf (first: row {first}); "
            "expected finite vectors"
        )
    return vectors


def torch_load_problem(error: BaseException) -> str:
    """Why torch.load(weights_only=True) refused a file, on one line.

    torch's message spans lines and advises retrying with weights_only=False, which would run
    whatever code the file holds; only its reason is kept.
    """
    text = str(error)
    refused = re.search(r"GLOBAL (\S+)", text)
    if refused:
        return (
            f"it holds the Python object {refused.group(1)}, where only tensors and plain "
            "containers are allowed"
        )
    reason = text.split("WeightsUnpickler error:", 1)[-1].split("Check the documentation")[0]
    return f"{type(error).__name__}: {' '.join(reason.split())}"
