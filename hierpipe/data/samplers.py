"""Class-balanced batches: a few classes per batch, several samples of each (HIER's sampler)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from hierpipe.core.errors import HierpipeError
from hierpipe.core.validation import check_int


class ClassBalancedBatchSampler(Sampler[list[int]]):
    """Batches of `batch_size / samples_per_class` distinct classes, `samples_per_class` each.

    Like HIER's `UniqueClassSampler` (IPC = 2): the classes of a batch are drawn without
    replacement and a class's samples are consecutive, the layout Hyp's pairwise loss reads.
    Unlike it, a class's samples are drawn without replacement when the class has enough of
    them: HIER's draws with replacement can pair an image with itself, harmless with its
    random crops but a wasted pair without augmentation. `num_batches` batches per epoch; the
    draws come from `generator`, so an epoch's batches are a function of its seed.
    """

    def __init__(
        self,
        labels: np.ndarray,
        batch_size: int,
        samples_per_class: int,
        num_batches: int,
        generator: torch.Generator,
    ) -> None:
        self.samples_per_class = check_int("samples_per_class", samples_per_class, 1)
        batch_size = check_int("batch_size", batch_size, 1)
        self.num_batches = check_int("num_batches", num_batches, 1)
        if batch_size % samples_per_class:
            raise HierpipeError(
                f"batch_size {batch_size} is not a multiple of samples_per_class "
                f"{samples_per_class}"
            )
        labels = np.asarray(labels)
        classes, inverse = np.unique(labels, return_inverse=True)
        self.classes_per_batch = batch_size // samples_per_class
        if self.classes_per_batch > len(classes):
            raise HierpipeError(
                f"a batch of {batch_size} with {samples_per_class} samples per class needs "
                f"{self.classes_per_batch} distinct classes; the training set has "
                f"{len(classes)}: lower batch_size to at most "
                f"{len(classes) * samples_per_class}"
            )
        self.members = [np.flatnonzero(inverse == c) for c in range(len(classes))]
        self.generator = generator

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.num_batches):
            chosen = torch.randperm(len(self.members), generator=self.generator)
            batch: list[int] = []
            for c in chosen[: self.classes_per_batch].tolist():
                members = self.members[c]
                enough = len(members) >= self.samples_per_class
                if enough:
                    picks = torch.randperm(len(members), generator=self.generator)
                    picks = picks[: self.samples_per_class]
                else:
                    picks = torch.randint(
                        len(members), (self.samples_per_class,), generator=self.generator
                    )
                batch.extend(members[picks.numpy()].tolist())
            yield batch
