"""Torch dataset over the image table, and the default (ProxyDR-faithful) transform."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from hierpipe.errors import HierpipeError

Transform = Callable[[Image.Image], torch.Tensor]


class ImageTableDataset(Dataset):
    """Images ``root / paths[i]`` with labels; items are ``(image, label, sample_id)``."""

    def __init__(
        self,
        root: str | Path,
        sample_ids: Sequence[int] | np.ndarray,
        paths: Sequence[str],
        labels: Sequence[int] | np.ndarray,
        transform: Transform,
    ) -> None:
        if not len(sample_ids) == len(paths) == len(labels):
            raise HierpipeError(
                f"{len(sample_ids)} sample ids, {len(paths)} paths and {len(labels)} labels; "
                "expected one of each per sample"
            )
        self.root = Path(root)
        self.sample_ids = np.asarray(sample_ids, dtype=np.int64)
        self.paths = list(paths)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        path = self.root / self.paths[index]
        sample_id = int(self.sample_ids[index])
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise HierpipeError(f"sample {sample_id}: cannot read image {path} ({exc})") from exc
        return self.transform(rgb), int(self.labels[index]), sample_id
