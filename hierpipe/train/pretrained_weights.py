"""A backbone's pretrained weights, fetched once into the file that training loads.

Training never downloads: params' `backbone.weights` names a local file, and the workflow's
`fetch_weights` rule (or `hierpipe weights fetch`) writes it from the source the papers' code
loaded (hierpipe.core.catalog.PRETRAINED_WEIGHTS). The download goes through hierpipe's
dataset fetcher (resumable, retried); its sha256 must start with the digits the published
file name carries, where it carries some, and is recorded beside the weights
(`<file>.sha256`), so that a later fetch verifies it too. timm itself then turns the
published checkpoint into the backbone's state dict without classifier, the layout
`EmbeddingNet` loads.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import timm

from hierpipe.core import catalog
from hierpipe.core.errors import HierpipeError
from hierpipe.data.fetch import DownloadError, download
from hierpipe.train.artifacts import save_torch_atomic

_CHUNK = 1 << 20


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_weights(backbone: str, out: str | Path, url: str | None = None) -> Path:
    """Write `backbone`'s pretrained state dict (num_classes=0) to `out`; `url` replaces the
    catalog's source (a mirror of the same file). Returns `out`."""
    out = Path(out)
    source = catalog.PRETRAINED_WEIGHTS.get(backbone)
    if source is None and url is None:
        raise HierpipeError(
            f"backbone {backbone!r}: no known source of pretrained weights (known: "
            f"{', '.join(sorted(catalog.PRETRAINED_WEIGHTS))}); pass --url, or save the state "
            f"dict of timm.create_model({backbone!r}, num_classes=0) at {out} yourself"
        )
    url = url or source.url
    published = out.parent / ".downloads" / url.rsplit("/", 1)[-1].split("?")[0]
    how = f"download {url} by hand and pass it as --url file://<path>"
    try:
        download(url, published)
    except DownloadError as error:
        raise HierpipeError(f"{error}; {how}") from error
    actual = _sha256(published)
    prefix = source.sha256_prefix if source is not None else None
    if prefix is not None and not actual.startswith(prefix):
        published.unlink()
        raise HierpipeError(
            f"{url}: sha256 {actual} does not start with {prefix}, the digits its published "
            f"name carries: not the file the papers used; {how}"
        )
    recorded = out.with_name(out.name + ".sha256")
    if recorded.is_file():
        expected = recorded.read_text().split()[0]
        if actual != expected:
            raise HierpipeError(
                f"{published}: sha256 {actual}, but {recorded} recorded {expected} when the "
                f"weights were first fetched; delete {recorded} to accept the new file, or {how}"
            )
    try:
        model = timm.create_model(
            backbone,
            pretrained=True,
            # the downloaded file, not timm's own hub source
            pretrained_cfg_overlay={"file": str(published), "source": ""},
            num_classes=0,
        )
    except (RuntimeError, KeyError, ValueError, OSError) as error:
        raise HierpipeError(
            f"{published}: timm cannot load it into {backbone!r} ({error}); {how}"
        ) from error
    save_torch_atomic(model.state_dict(), out)
    recorded.write_text(f"{actual}  {url}\n")
    return out
