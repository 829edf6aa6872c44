"""Torch dataset over the image table, and the default (ProxyDR-faithful) transform."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from hierpipe.core.errors import HierpipeError

Transform = Callable[[Image.Image], torch.Tensor]


class ImageTableDataset(Dataset):
    """Images ``root / paths[i]`` with labels; items are ``(image, label, sample_id)``.

    ``preload=True`` decodes every image once, up front, and keeps the pixels in memory as
    uint8 arrays (CIFAR-100's 60,000 images take 184 MB): epochs then never touch the disk
    or the decoder, and DataLoader workers share the arrays copy-on-write. A transform that
    does not augment (``random`` False, as ``build_transform`` sets it) is applied once too,
    and its float tensors are kept instead (four bytes a value): an epoch of the default
    experiment's 32 x 32 images then costs no per-image work at all.
    """

    def __init__(
        self,
        root: str | Path,
        sample_ids: Sequence[int] | np.ndarray,
        paths: Sequence[str],
        labels: Sequence[int] | np.ndarray,
        transform: Transform,
        preload: bool = False,
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
        self.pixels: list[np.ndarray] | None = None
        self.tensors: list[torch.Tensor] | None = None
        if preload and not getattr(transform, "random", True):
            self.tensors = [transform(self._decode(i)) for i in range(len(self.paths))]
        elif preload:
            self.pixels = [np.asarray(self._decode(i)) for i in range(len(self.paths))]

    def __len__(self) -> int:
        return len(self.paths)

    def _decode(self, index: int) -> Image.Image:
        path = self.root / self.paths[index]
        try:
            with Image.open(path) as image:
                return image.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise HierpipeError(
                f"sample {int(self.sample_ids[index])}: cannot read image {path} ({exc})"
            ) from exc

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        label, sample_id = int(self.labels[index]), int(self.sample_ids[index])
        if self.tensors is not None:
            return self.tensors[index], label, sample_id
        cached = self.pixels is not None
        rgb = Image.fromarray(self.pixels[index]) if cached else self._decode(index)
        return self.transform(rgb), label, sample_id
