"""Pieces of the datasets' fixture archives, shared by the tests of every dataset builder."""

import hashlib
import io
import tarfile
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from http_server import serve_directory
from PIL import Image

from hierpipe.core.errors import HierpipeError


def jpeg_bytes(seed: int) -> bytes:
    """A real 8x8 JPEG of random pixels."""
    pixels = np.random.default_rng(seed).integers(0, 255, (8, 8, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def add_member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    """Write `data` into the open tar `archive` as the file `name`."""
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def pin_files(monkeypatch, builder: ModuleType, mirror: Path, base_url: str) -> None:
    """The builder's official files at the local server, pinned to the fixture's checksums."""
    files = tuple(
        replace(
            f,
            url=f"{base_url}/{f.name}",
            checksum="sha256:" + hashlib.sha256((mirror / f.name).read_bytes()).hexdigest(),
        )
        for f in builder.FILES
    )
    monkeypatch.setattr(builder, "FILES", files)


def assert_pinned_checksum_refused(
    builder, out: Path, mirror: Path, archive: str, digest: str
) -> None:
    """Prepare from the fixture archive in `mirror` against the real pinned digest: the
    error names the archive and the digest, and nothing is extracted or written."""
    with serve_directory(mirror) as server, pytest.raises(HierpipeError) as error:
        builder.prepare(out, builder.Options(), server.url)
    message = str(error.value)
    assert archive in message and digest in message
    assert not (out / "raw").exists() and not (out / "samples.parquet").exists()
