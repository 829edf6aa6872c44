"""Datasets: registry and builders, on-disk tables, splits and the torch image dataset."""

from __future__ import annotations

from typing import Any

from hierpipe.data.registry import get_dataset, prepare_dataset
from hierpipe.data.splits import make_split
from hierpipe.data.tables import read_classes, read_dataset, read_split

__all__ = [
    "ImageTableDataset",
    "get_dataset",
    "make_split",
    "prepare_dataset",
    "read_classes",
    "read_dataset",
    "read_split",
]


def __getattr__(name: str) -> Any:
    # torch takes seconds to import; preparing and splitting data must not pay for it.
    if name == "ImageTableDataset":
        from hierpipe.data.images import ImageTableDataset

        return ImageTableDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
