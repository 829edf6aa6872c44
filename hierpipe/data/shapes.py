"""``shapes``: an embedded synthetic dataset whose visual similarity follows a known tree.

family (outline: circle, square, ...) -> genus (surface pattern: solid, striped, dotted,
checkered) -> species (size x orientation). Siblings share outline and pattern, cousins share
the outline, other families share nothing. Colour and background brightness are drawn per
image, independent of the class: they dominate the features of an untrained network but say
nothing about the tree, so a random backbone's class means barely reflect the hierarchy while
a trained model, which must learn outline, pattern, size and orientation, can recover it.
Per-image jitter (position, size, rotation, brightness) and pixel noise keep the task from
being trivial. Every class draws from ``default_rng([seed, class_id])``, so the same options
give byte-identical files.
"""

from __future__ import annotations

import colorsys
import itertools
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from hierpipe.core.errors import HierpipeError
from hierpipe.core.hierarchy import ClassTree
from hierpipe.data.registry import DatasetBuilder
from hierpipe.data.tables import begin_dataset, write_classes, write_samples


def _ring(count: int, radii: float | list[float] = 1.0, phase: float = 0.0) -> np.ndarray:
    """Polygon vertices (x, y) around the origin, first vertex straight up (image y points down)."""
    angles = phase + 2 * np.pi * np.arange(count) / count
    r = np.resize(np.asarray(radii, dtype=float), count)
    return np.stack([r * np.sin(angles), -r * np.cos(angles)], axis=1)


def _cross(arm: float) -> np.ndarray:
    """Plus sign: the outline of its top arm repeated at four quarter turns."""
    top = np.array([(-arm, -1.0), (arm, -1.0), (arm, -arm)])
    quarter_turn = np.array([[0.0, 1.0], [-1.0, 0.0]])
    return np.concatenate([top @ np.linalg.matrix_power(quarter_turn, k) for k in range(4)])


# Unit-radius outlines, upright; the family order fixes the family ids.
SHAPES: dict[str, np.ndarray] = {
    "circle": _ring(48),
    "square": _ring(4, phase=np.pi / 4),
    "triangle": _ring(3),
    "cross": _cross(0.35),
    "star": _ring(10, [1.0, 0.45]),
    "hexagon": _ring(6),
}
SIZES = {"small": 0.26, "large": 0.4}  # shape radius / image size
TEXTURES = ("solid", "striped", "dotted", "checkered")  # one per genus
ORIENTATIONS = {"": 0.0, "tilted": np.pi / 4}  # upright species carry no orientation suffix


# (size, orientation) of the species of a genus, in order: the default three are small,
# large and small tilted.
SPECIES = tuple((size, orientation) for orientation, size in itertools.product(ORIENTATIONS, SIZES))

_SUPERSAMPLE = 4  # the shape mask is drawn larger and box-filtered down for smooth edges
_POSITION_JITTER = 0.06  # fraction of the image size
_SIZE_JITTER = 0.08
_ROTATION_JITTER = np.deg2rad(5.0)
_BRIGHTNESS_JITTER = 0.08
_PIXEL_NOISE = 0.04
_PATTERN_SHADE = 0.5  # brightness of the dark parts of a pattern


@dataclass(frozen=True)
class _ShapeClass:
    shape: str
    texture: str
    size: str
    orientation: str

    @property
    def path(self) -> tuple[str, str, str]:
        genus = f"{self.shape}-{self.texture}"
        species = "_".join(part for part in (self.size, self.orientation) if part)
        return (self.shape, genus, f"{genus}-{species}")


def _classes(families: int, genera: int, species: int) -> list[_ShapeClass]:
    return [
        _ShapeClass(shape, texture, size, orientation)
        for shape in list(SHAPES)[:families]
        for texture in TEXTURES[:genera]
        for size, orientation in SPECIES[:species]
    ]


def _texture(u: np.ndarray, v: np.ndarray, texture: str) -> np.ndarray:
    """Brightness factor of the pattern in shape coordinates (units of the shape radius)."""
    if texture == "striped":
        return np.where(np.floor(u / 0.25) % 2 == 0, 1.0, _PATTERN_SHADE)
    if texture == "dotted":
        du = (u + 1.0) % 0.5 - 0.25
        dv = (v + 1.0) % 0.5 - 0.25
        return np.where(du**2 + dv**2 < 0.12**2, _PATTERN_SHADE, 1.0)
    if texture == "checkered":
        return np.where((np.floor(u / 0.5) + np.floor(v / 0.5)) % 2 == 0, 1.0, _PATTERN_SHADE)
    return np.ones_like(u)


def _draw(spec: _ShapeClass, size: int, rng: np.random.Generator) -> Image.Image:
    radius = SIZES[spec.size] * size * (1 + rng.uniform(-_SIZE_JITTER, _SIZE_JITTER))
    centre = size / 2 + rng.uniform(-_POSITION_JITTER, _POSITION_JITTER, 2) * size
    angle = ORIENTATIONS[spec.orientation] + rng.uniform(-_ROTATION_JITTER, _ROTATION_JITTER)
    # colour and background are nuisance: independent of the class
    hue = rng.uniform(0.0, 360.0)
    value = 0.85 * (1 + rng.uniform(-_BRIGHTNESS_JITTER, _BRIGHTNESS_JITTER))
    background = rng.uniform(0.2, 0.6)

    cos, sin = np.cos(angle), np.sin(angle)
    outline = SHAPES[spec.shape] @ np.array([[cos, sin], [-sin, cos]]) * radius + centre
    big = Image.new("L", (size * _SUPERSAMPLE, size * _SUPERSAMPLE))
    ImageDraw.Draw(big).polygon([tuple(p) for p in outline * _SUPERSAMPLE], fill=255)
    mask = np.asarray(big.resize((size, size), Image.Resampling.BOX), dtype=float)[..., None] / 255

    # Pixel centres in the shape's own frame, so texture and shading rotate with the shape.
    y, x = (np.mgrid[0:size, 0:size] + 0.5 - centre[::-1, None, None]) / radius
    u = cos * x + sin * y
    v = -sin * x + cos * y
    # Light from the shape's top: makes orientation visible even on a solid circle.
    shading = 1.0 - 0.2 * np.clip(v, -1.0, 1.0)
    colour = np.array(colorsys.hsv_to_rgb(hue / 360, 0.85, value))
    shape = (_texture(u, v, spec.texture) * shading)[..., None] * colour

    pixels = mask * shape + (1 - mask) * background
    pixels += rng.normal(0.0, _PIXEL_NOISE, pixels.shape)
    return Image.fromarray(np.round(np.clip(pixels, 0, 1) * 255).astype(np.uint8), "RGB")


class ShapesBuilder(DatasetBuilder):
    """Synthetic shapes with a 3-level tree: outline / surface pattern / size and tilt."""

    @dataclass(frozen=True)
    class Options:
        image_size: int = 32
        images_per_class: int = 40
        families: int = 4
        genera_per_family: int = 2
        species_per_genus: int = 3
        seed: int = 0

        def __post_init__(self) -> None:
            limits = {
                "image_size": (16, None),
                "images_per_class": (1, None),
                "families": (1, len(SHAPES)),
                "genera_per_family": (1, len(TEXTURES)),
                "species_per_genus": (1, len(SPECIES)),
                "seed": (0, None),
            }
            for key, (low, high) in limits.items():
                value = getattr(self, key)
                if value < low or (high is not None and value > high):
                    expected = f">= {low}" if high is None else f"in {low}..{high}"
                    raise HierpipeError(f"dataset 'shapes': {key}={value}; expected {expected}")

    def prepare(self, out_dir: Path, options: ShapesBuilder.Options, source: str | None) -> None:
        """Draw the images into ``out_dir/images`` and write the tables."""
        if source is not None:
            raise HierpipeError(
                f"dataset 'shapes' is generated and takes no source (got {source!r})"
            )
        out_dir = begin_dataset(out_dir)
        classes = _classes(options.families, options.genera_per_family, options.species_per_genus)
        tree = ClassTree.from_paths([c.path for c in classes])

        staging = Path(tempfile.mkdtemp(prefix=".images-", dir=out_dir))
        try:
            rows = []
            for class_id, (spec, name) in enumerate(zip(classes, tree.classes, strict=True)):
                rng = np.random.default_rng([options.seed, class_id])
                (staging / name).mkdir()
                for index in range(options.images_per_class):
                    relative = f"{name}/{index:04d}.png"
                    _draw(spec, options.image_size, rng).save(staging / relative)
                    rows.append((len(rows), f"images/{relative}", class_id))
            shutil.rmtree(out_dir / "images", ignore_errors=True)
            staging.rename(out_dir / "images")
        finally:
            shutil.rmtree(staging, ignore_errors=True)

        write_classes(out_dir, tree)
        write_samples(out_dir, pd.DataFrame(rows, columns=["sample_id", "path", "label"]))
