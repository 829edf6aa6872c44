"""Atomic file writes: every output appears under its final name complete or not at all.

A job killed mid-write leaves at most a hidden temporary file, never a truncated output
that a rerun or a downstream rule would take for a finished one. Standard library only:
the workflow's parse-time code writes through it too.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; on success, fsync it and rename it to `path`.

    A sibling keeps the rename on one file system (atomic). Not tempfile.mkstemp: its files
    are mode 0600, and the rename would keep that mode on the output.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(text: str, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
