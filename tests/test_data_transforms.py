"""The recipes' image transforms, checked on images with known content."""

import numpy as np
import pytest
import torch
from PIL import Image

from hierpipe.core.config import TrainConfig
from hierpipe.core.errors import HierpipeError
from hierpipe.data.transforms import build_transform, recipe_transforms


def _image(width: int, height: int) -> Image.Image:
    # a horizontal ramp: column x has value x, so crops and flips show in the pixels
    ramp = np.tile(np.arange(width, dtype=np.uint8), (height, 1))
    return Image.fromarray(np.stack([ramp] * 3, axis=2))


def test_hier_evaluation_resizes_to_256_and_takes_the_central_224():
    evaluate = build_transform("random_resized_crop", 224, training=False)
    out = evaluate(_image(512, 256))
    assert out.shape == (3, 224, 224)
    # 512x256 -> 512x256 (short side 256) -> central 224 columns start at (512 - 224) / 2
    expected = build_transform("none")(_image(512, 256).crop((144, 16, 368, 240)))
    torch.testing.assert_close(out, expected, atol=2 / 255, rtol=0)


def test_hier_training_crops_to_the_size_and_normalises():
    torch.manual_seed(0)
    train = build_transform("random_resized_crop", 32, crop_scale_min=0.2, normalize="half")
    out = train(_image(100, 60))
    assert out.shape == (3, 32, 32)
    assert out.min() >= -1 and out.max() <= 1 and out.min() < 0  # (x - 0.5) / 0.5


def test_imagenet_normalisation_uses_its_statistics():
    out = build_transform("none", 4, normalize="imagenet")(Image.new("RGB", (8, 8), (255, 0, 0)))
    expected = torch.tensor([(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0 - 0.406) / 0.225])
    torch.testing.assert_close(out[:, 0, 0], expected)


def test_evaluation_never_augments_and_training_follows_the_settings():
    settings = TrainConfig(augment="affine", image_size=16)
    train, evaluate = recipe_transforms(settings)
    image = _image(40, 20)
    assert evaluate(image).shape == train(image).shape == (3, 16, 16)
    torch.testing.assert_close(evaluate(image), evaluate(image))  # deterministic


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"augment": "mixup"}, "unknown augmentation 'mixup'"),
        ({"augment": "random_resized_crop"}, "needs an image_size"),
        ({"normalize": "zscore"}, "unknown normalization 'zscore'"),
        ({"crop_scale_min": 0.0}, r"crop_scale_min must lie in \(0, 1\]"),
    ],
)
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(HierpipeError, match=message):
        build_transform(**kwargs)


@pytest.mark.parametrize(
    ("augment", "training", "random"),
    [
        ("none", True, False),
        ("flip", True, True),
        ("affine", True, True),
        ("flip", False, False),
        ("affine", False, False),
    ],
)
def test_a_transform_says_whether_it_augments(augment, training, random):
    transform = build_transform(augment, 8, training=training)
    assert transform.random is random
    image = _image(12, 10)
    # a fixed transform gives one tensor per image, whatever the random state
    if not random:
        torch.manual_seed(0)
        first = transform(image)
        torch.manual_seed(1)
        torch.testing.assert_close(transform(image), first, rtol=0, atol=0)


def test_random_resized_crop_augments_in_training_only():
    assert build_transform("random_resized_crop", 16, training=True).random
    assert not build_transform("random_resized_crop", 16, training=False).random
