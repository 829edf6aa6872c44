"""A run's metrics.json: what evaluation measured, and which run it measured.

Reading it needs no torch, so aggregating runs and drawing figures do not pay for it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hierpipe.core.atomic import write_text_atomic
from hierpipe.core.config import json_mapping
from hierpipe.core.errors import HierpipeError


def write_metrics(document: dict[str, Any], path: str | Path) -> None:
    write_text_atomic(json.dumps(document, indent=2, sort_keys=True) + "\n", path)


def read_metrics(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise HierpipeError(f"{path}: metrics file not found")
    document = json_mapping(path.read_text(), str(path))
    for key in ("run", "dataset", "model", "option", "seed", "trained", "metrics"):
        if key not in document:
            raise HierpipeError(f"{path}: missing key {key!r}")
    for key in ("backbone", "embedding_dim", "space"):
        if key not in document:
            raise HierpipeError(
                f"{path}: missing key {key!r}; written by an older hierpipe, so evaluate again "
                "(snakemake --forcerun evaluate)"
            )
    return document
