"""Where a dataset builder finds its raw files: always `<out_dir>/raw`, whatever the source.

Sample paths in samples.parquet are relative to the dataset directory (`raw/...`), so an
extracted directory given as the source is linked there rather than copied.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from hierpipe.core.errors import HierpipeError
from hierpipe.data.fetch import RemoteFile, fetch


def raw_dir(files: Sequence[RemoteFile], source: str | None, out_dir: Path) -> Path:
    """`<out_dir>/raw` holding the dataset's raw files, fetched (see `fetch`) or linked."""
    raw = fetch(files, source, out_dir)
    link = out_dir / "raw"
    if raw.resolve() != link.resolve():
        # an extracted directory given as source: reach it from the dataset directory
        if link.is_symlink():
            link.unlink()
        elif link.exists():
            raise HierpipeError(
                f"{link} exists and is not a link; remove it to use {raw} as the source"
            )
        os.symlink(raw.resolve(), link, target_is_directory=True)
    return link
