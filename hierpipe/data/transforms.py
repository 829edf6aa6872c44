"""Image transforms of the papers' recipes: PIL image -> float tensor.

ProxyDR feeds [0, 1] inputs, resized to a fixed size, with its affine augmentation (`--aug`
of train_cifar100.py); HIER trains on RandomResizedCrop(224) + flip and tests on
Resize(256) -> CenterCrop(224), with ImageNet (or 0.5) normalisation (hier/utils.py,
MultiTransforms).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from PIL import Image
from torchvision import transforms

from hierpipe.core.errors import HierpipeError

if TYPE_CHECKING:
    from hierpipe.core.config import TrainConfig

AUGMENTATIONS = ("none", "flip", "affine", "random_resized_crop")
NORMALIZATIONS: dict[str, tuple[tuple[float, ...], tuple[float, ...]] | None] = {
    "none": None,
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),  # the ViT backbones' (hier/models/model.py)
}
# HIER's test images: resized to 256, then the central 224 (hier/helpers.py, get_emb)
_EVAL_RESIZE_RATIO = 256 / 224


@dataclass(frozen=True)
class ImageTransform:
    """A recipe's transform, PIL image -> float tensor. ``random`` when it augments: a fixed
    one gives the same tensor for an image every time, which a dataset may keep."""

    steps: Callable[[Image.Image], torch.Tensor]
    random: bool

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.steps(image)


def build_transform(
    augment: str = "none",
    image_size: int | None = None,
    *,
    training: bool = True,
    crop_scale_min: float = 0.08,
    normalize: str = "none",
) -> ImageTransform:
    """The training (`training=True`) or evaluation transform of a recipe.

    `image_size` None keeps images at their size (the generated `shapes` are all alike);
    real datasets need one. Evaluation never augments: `random_resized_crop` becomes
    Resize(image_size * 256/224) -> CenterCrop(image_size), the others a plain resize.
    """
    if augment not in AUGMENTATIONS:
        raise HierpipeError(f"unknown augmentation {augment!r}; expected one of {AUGMENTATIONS}")
    if normalize not in NORMALIZATIONS:
        raise HierpipeError(
            f"unknown normalization {normalize!r}; expected one of {list(NORMALIZATIONS)}"
        )
    if augment == "random_resized_crop" and image_size is None:
        raise HierpipeError("augment 'random_resized_crop' needs an image_size (HIER: 224)")
    if not 0 < crop_scale_min <= 1:
        raise HierpipeError(f"crop_scale_min must lie in (0, 1], got {crop_scale_min!r}")
    steps: list[Callable] = []
    bicubic = transforms.InterpolationMode.BICUBIC
    if augment == "random_resized_crop":
        if training:
            steps += [
                transforms.RandomResizedCrop(
                    image_size, scale=(crop_scale_min, 1.0), interpolation=bicubic
                ),
                transforms.RandomHorizontalFlip(),
            ]
        else:
            resize = round(image_size * _EVAL_RESIZE_RATIO)
            steps += [
                transforms.Resize(resize, interpolation=bicubic),
                transforms.CenterCrop(image_size),
            ]
    else:
        if image_size is not None:
            steps.append(transforms.Resize((image_size, image_size)))
        if training and augment == "flip":
            steps.append(transforms.RandomHorizontalFlip())
        if training and augment == "affine":
            steps += [
                transforms.RandomAffine(
                    degrees=15, translate=(0.1, 0.1), scale=(0.9, 1.1), shear=10
                ),
                transforms.RandomHorizontalFlip(),
            ]
    steps.append(transforms.ToTensor())
    statistics = NORMALIZATIONS[normalize]
    if statistics is not None:
        steps.append(transforms.Normalize(*statistics))
    return ImageTransform(transforms.Compose(steps), random=training and augment != "none")


def recipe_transforms(settings: TrainConfig) -> tuple[ImageTransform, ImageTransform]:
    """(training, evaluation) transforms of a run's train settings."""
    options = {
        "image_size": settings.image_size,
        "crop_scale_min": settings.crop_scale_min,
        "normalize": settings.normalize,
    }
    return (
        build_transform(settings.augment, training=True, **options),
        build_transform(settings.augment, training=False, **options),
    )
