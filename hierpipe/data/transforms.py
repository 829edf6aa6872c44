"""Image transforms. Inputs stay in [0, 1] without ImageNet normalisation, as ProxyDR does."""

from __future__ import annotations

from collections.abc import Callable

from torchvision import transforms

from hierpipe.errors import HierpipeError

AUGMENTATIONS: dict[str, list[Callable]] = {
    "none": [],
    "flip": [transforms.RandomHorizontalFlip()],
    # ProxyDR's CIFAR-100 / NABirds augmentation (proxydr.md section 8.3)
    "affine": [
        transforms.RandomAffine(degrees=15, translate=(0.1, 0.1), scale=(0.9, 1.1), shear=10),
        transforms.RandomHorizontalFlip(),
    ],
}


def build_transform(augment: str = "none", image_size: int | None = None) -> Callable:
    """PIL image -> float tensor in [0, 1], resized when image_size is given."""
    if augment not in AUGMENTATIONS:
        raise HierpipeError(
            f"unknown augmentation {augment!r}; expected one of {list(AUGMENTATIONS)}"
        )
    resize = [] if image_size is None else [transforms.Resize((image_size, image_size))]
    return transforms.Compose([*resize, *AUGMENTATIONS[augment], transforms.ToTensor()])
