"""Backbone plus linear embedding head: ProxyDR's linear layer, or HIER's Poincaré head.

The Poincaré head and its source: docs/methods/poincare_ball.md.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hierpipe.core.catalog import HEADS
from hierpipe.core.errors import HierpipeError
from hierpipe.core.geometry import ToPoincare
from hierpipe.core.io import torch_load_problem
from hierpipe.core.validation import check_int

# How many offending state-dict keys an error message lists before summarising.
_KEYS_SHOWN = 5


def select_device() -> torch.device:
    """The first CUDA device when one is available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _create_backbone(name: str, in_chans: int) -> nn.Module:
    try:
        return timm.create_model(name, num_classes=0, in_chans=in_chans)
    except RuntimeError as err:
        if "Unknown model" not in str(err):
            raise
        raise HierpipeError(
            f"unknown backbone {name!r}; see timm.list_models() for the available names"
        ) from err


def _format_keys(keys: list[str]) -> str:
    shown = ", ".join(keys[:_KEYS_SHOWN])
    more = len(keys) - _KEYS_SHOWN
    return f"{shown} (and {more} more)" if more > 0 else shown


def load_backbone_weights(backbone: nn.Module, path: str | Path, backbone_name: str) -> None:
    """Load a local state-dict file into `backbone`, requiring an exact key and shape match."""
    path = Path(path)
    hint = (
        f"expected the state dict of timm.create_model({backbone_name!r}, num_classes=0), "
        "saved with torch.save"
    )
    if not path.is_file():
        raise HierpipeError(f"backbone weights file {str(path)!r} does not exist; {hint}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as err:
        raise HierpipeError(
            f"cannot read backbone weights file {str(path)!r} ({torch_load_problem(err)}); {hint}"
        ) from err
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise HierpipeError(
            f"backbone weights file {str(path)!r} holds a {type(state).__name__}, "
            f"not a flat mapping of names to tensors; {hint}"
        )

    expected = backbone.state_dict()
    problems = []
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_format_keys(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_format_keys(unexpected)}")
    if mismatched:
        problems.append(f"{len(mismatched)} shape mismatch(es): {_format_keys(mismatched)}")
    if problems:
        raise HierpipeError(
            f"backbone weights file {str(path)!r} does not fit backbone {backbone_name!r}: "
            f"{'; '.join(problems)}; {hint}"
        )
    backbone.load_state_dict(state, strict=True)


class _UnitSphere(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=1)


def _to_space(head: str, curvature: float, clip_r: float) -> nn.Module:
    """The map from the linear head's output into the embedding space named by `head`."""
    if head == "euclidean":
        return nn.Identity()
    if head == "sphere":
        return _UnitSphere()
    if head == "poincare":
        return ToPoincare(curvature, clip_r, riemannian=True)
    raise HierpipeError(f"head: unknown {head!r}, expected one of {', '.join(HEADS)}")


class EmbeddingNet(nn.Module):
    """A timm backbone without classifier, followed by a linear head to `embedding_dim`.

    `head` picks the embedding space: "euclidean" (the linear output as is), "sphere"
    (L2-normalised) or "poincare", HIER's head (hier/models/model.py): LayerNorm without affine
    parameters -> Linear (orthogonal weight, zero bias) -> `ToPoincare` with `curvature`,
    `clip_r` and the Riemannian gradient rescaling. All heads keep the linear layer's
    state-dict keys `head.weight` and `head.bias`.

    Weights are never downloaded here: `pretrained=True` loads the local state-dict file
    `weights` into the backbone (`hierpipe weights fetch` writes it).
    """

    def __init__(
        self,
        backbone: str,
        embedding_dim: int,
        head: str,
        pretrained: bool = False,
        weights: str | Path | None = None,
        in_chans: int = 3,
        curvature: float = 0.1,
        clip_r: float = 2.3,
    ) -> None:
        super().__init__()
        check_int("embedding_dim", embedding_dim, 1)
        check_int("in_chans", in_chans, 1)
        # built before the backbone, so that a bad head setting fails fast
        to_space = _to_space(head, curvature, clip_r)
        if weights is not None and not pretrained:
            # A weights file with pretrained=False is contradictory; refuse rather than guess
            # which one the configuration meant.
            raise HierpipeError(
                f"weights={str(weights)!r} was given with pretrained=False; "
                "set pretrained=True to load it, or drop weights for a random backbone"
            )
        if pretrained and weights is None:
            # compute nodes and containers rarely reach the hub, so training never downloads
            raise HierpipeError(
                f"pretrained=True for backbone {backbone!r} needs a weights file: set "
                "backbone.weights (the workflow fetches it) or write it with `hierpipe weights "
                f"fetch {backbone} --out weights/{backbone}.pth`"
            )

        self.backbone = _create_backbone(backbone, in_chans)
        if weights is not None:
            load_backbone_weights(self.backbone, weights, backbone)
        num_features = self.backbone.num_features
        self.feature_norm: nn.Module = nn.Identity()
        self.head = nn.Linear(num_features, embedding_dim)
        if head == "poincare":
            # as released with HIER (hier/models/model.py); the other heads keep the ProxyDR setup
            self.feature_norm = nn.LayerNorm(num_features, elementwise_affine=False)
            nn.init.orthogonal_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        self.to_space = to_space

    def forward(self, images: Tensor) -> Tensor:
        """Embeddings (N, embedding_dim) of images (N, in_chans, H, W)."""
        return self.to_space(self.head(self.feature_norm(self.backbone(images))))
