"""Images per second of the training data loader against a bare torchvision ImageFolder.

Both decode the same JPEGs (written to a temporary image folder: `--classes` x `--per-class`
images of `--size` px) with the same HIER training transform (RandomResizedCrop 224 + flip +
ImageNet normalisation), through a DataLoader with `--workers` workers and `--batch-size`;
hierpipe's side is `imagefolder` prepare -> ImageTableDataset, the way a training run reads
a real dataset. Each figure is the best of `--repeats` full passes after one warm-up pass.
Usage: python benchmarks/data_loader.py [--workers 2] [--per-class 50] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from hierpipe.data import ImageTableDataset, prepare_dataset, read_dataset
from hierpipe.data.transforms import build_transform


def _write_images(root: Path, classes: int, per_class: int, size: int) -> None:
    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / f"class{c:03d}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, (size, size * 4 // 3, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:04d}.jpg", quality=90)


def _images_per_second(dataset, batch_size: int, workers: int, repeats: int) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)
    best = float("inf")
    for attempt in range(repeats + 1):
        started = time.perf_counter()
        for _ in loader:
            pass
        if attempt:  # the first pass warms the page cache and the workers' imports
            best = min(best, time.perf_counter() - started)
    return len(dataset) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=8)
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--size", type=int, default=300)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    transform = build_transform("random_resized_crop", 224, normalize="imagenet")
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "folder"
        _write_images(folder, args.classes, args.per_class, args.size)
        prepare_dataset("imagefolder", Path(tmp) / "prepared", source=str(folder))
        samples, _ = read_dataset(Path(tmp) / "prepared")
        ours = ImageTableDataset(
            Path(tmp) / "prepared",
            samples["sample_id"].to_numpy(),
            samples["path"].tolist(),
            samples["label"].to_numpy(),
            transform,
        )
        bare = ImageFolder(str(folder), transform=transform)
        measure = {"batch_size": args.batch_size, "workers": args.workers}
        baseline = _images_per_second(bare, repeats=args.repeats, **measure)
        hierpipe = _images_per_second(ours, repeats=args.repeats, **measure)
    print(
        f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; "
        f"{len(bare)} JPEGs of {args.size * 4 // 3}x{args.size}, {args.workers} workers"
    )
    print(f"{'loader':<36}{'images/s':>10}{'ratio':>8}")
    print(f"{'torchvision ImageFolder (baseline)':<36}{baseline:>10.1f}{1.0:>8.2f}")
    print(f"{'hierpipe ImageTableDataset':<36}{hierpipe:>10.1f}{hierpipe / baseline:>8.2f}")


if __name__ == "__main__":
    main()
