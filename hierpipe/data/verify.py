"""Check that image files exist and decode, before a dataset table is written that lists them.

A corrupt file found at prepare time names its culprit once; found during training it would
kill a run hours in, inside a data-loader worker.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from hierpipe.core.errors import HierpipeError

log = logging.getLogger(__name__)

ON_BAD_IMAGE = ("error", "skip")

# Decoders release the GIL, so threads decode in parallel; files are submitted in batches so
# that millions of paths do not become millions of pending futures at once.
_WORKERS = min(8, os.cpu_count() or 1)
_BATCH = 1024
_SHOWN = 10  # culprits named in an error message

# PIL reports truncated and corrupt files mostly as OSError (UnidentifiedImageError included),
# but some plugins let ValueError, SyntaxError or EOFError through; oversized images raise
# DecompressionBombError, which is none of these.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def _problem(path: Path) -> str | None:
    """Why ``path`` cannot be used as an image, or None when it decodes fully."""
    if not path.exists():
        return "missing"
    try:
        with Image.open(path) as image:
            # open() reads only the header; load() decodes every pixel, which finds truncation.
            image.load()
    except _DECODE_ERRORS as exc:
        return f"cannot decode: {exc}"
    return None


def check_images(root: Path, paths: Sequence[str], on_bad_image: str = "error") -> list[int]:
    """Indices of the ``paths`` (relative to ``root``) that exist and decode fully with PIL.

    ``on_bad_image="error"`` raises naming the bad files; ``"skip"`` logs them as a warning and
    leaves them out. Indices are in input order.
    """
    if on_bad_image not in ON_BAD_IMAGE:
        raise HierpipeError(
            f"on_bad_image={on_bad_image!r}; expected one of {', '.join(ON_BAD_IMAGE)}"
        )
    root = Path(root)
    problems: list[str | None] = []
    with ThreadPoolExecutor(max_workers=_WORKERS) as pool:
        for start in range(0, len(paths), _BATCH):
            batch = [root / path for path in paths[start : start + _BATCH]]
            problems.extend(pool.map(_problem, batch))

    bad = [f"{path} ({problem})" for path, problem in zip(paths, problems, strict=True) if problem]
    if bad and on_bad_image == "error":
        more = f"; and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else ""
        raise HierpipeError(
            f"{root}: {len(bad)} of {len(paths)} image(s) cannot be used: "
            f"{'; '.join(bad[:_SHOWN])}{more}; fix or remove them, or set on_bad_image=skip "
            "to leave them out"
        )
    if bad:
        log.warning(
            "%s: leaving out %d of %d image(s) that cannot be used: %s",
            root,
            len(bad),
            len(paths),
            "; ".join(bad),
        )
    return [index for index, problem in enumerate(problems) if problem is None]
