"""Torch files of a run: atomic writes, safe loads, and the trained-model artefact (model.pt).

model.pt holds the network and objective state (loss and regulariser, with their class and
hierarchical proxies) of the selected epoch, the class ids of the classifier's rows, and the
resolved run config, so embedding export needs nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from hierpipe.core.atomic import atomic_path
from hierpipe.core.config import RunConfig
from hierpipe.core.errors import HierpipeError
from hierpipe.core.io import torch_load_problem
from hierpipe.losses import Objective, build_loss, build_regularizer
from hierpipe.models import EmbeddingNet

MODEL_FORMAT = "hierpipe.model/2"


def save_torch_atomic(obj: Any, path: str | Path) -> None:
    # torch.save names the records of its zip archive after the file it is given, here a
    # random temporary name; written through an open file they are named "archive", so the
    # same contents give the same bytes (and DVC the same hash) on every run.
    with atomic_path(path) as tmp, Path(tmp).open("wb") as handle:
        torch.save(obj, handle)


def load_torch(path: str | Path, what: str) -> dict[str, Any]:
    """Load tensors and plain containers only (weights_only): no pickle from files on disk."""
    path = Path(path)
    if not path.is_file():
        raise HierpipeError(f"{path}: {what} not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise HierpipeError(
            f"{path}: cannot read {what} ({torch_load_problem(error)}); expected a {what} "
            "written by hierpipe"
        ) from error
    if not isinstance(data, dict):
        raise HierpipeError(f"{path}: expected a {what} dictionary, got {type(data).__name__}")
    return data


def build_network(
    config: RunConfig, num_classes: int, initial_weights: bool = True
) -> tuple[EmbeddingNet, Objective | None]:
    """The embedding network and (for trained models) the objective that owns the proxies.

    initial_weights=False skips pretrained weights, for a network whose state is loaded next.
    """
    head = config.head
    geometry = {
        "embedding_dim": config.backbone.embedding_dim,
        "curvature": head.curvature,
        "clip_r": head.clip_r,
    }
    objective = None
    if config.loss is not None:
        loss = build_loss(config.loss, config.hyperparameters, num_classes=num_classes, **geometry)
        regularizer = config.regularizer
        if regularizer is None:
            objective = Objective(loss)
        else:
            term = build_regularizer(regularizer.name, regularizer.hyperparameters, **geometry)
            objective = Objective(loss, term, regularizer.weight)
    net = EmbeddingNet(
        config.backbone.name,
        config.backbone.embedding_dim,
        head=head.space,
        pretrained=config.backbone.pretrained and initial_weights,
        weights=config.backbone.weights if initial_weights else None,
        curvature=head.curvature,
        clip_r=head.clip_r,
    )
    return net, objective


@dataclass
class TrainedModel:
    config: RunConfig
    net: EmbeddingNet
    objective: Objective | None
    class_ids: list[int]
    epoch: int


def save_model(
    path: str | Path,
    config: RunConfig,
    net_state: dict[str, torch.Tensor],
    objective_state: dict[str, torch.Tensor] | None,
    class_ids: list[int],
    epoch: int,
) -> None:
    save_torch_atomic(
        {
            "format": MODEL_FORMAT,
            "config": config.to_dict(),
            "net": net_state,
            "objective": objective_state,
            "class_ids": list(class_ids),
            "epoch": epoch,
        },
        path,
    )


def load_model(path: str | Path) -> TrainedModel:
    data = load_torch(path, "model file")
    if data.get("format") != MODEL_FORMAT:
        raise HierpipeError(f"{path}: not a hierpipe model (format {data.get('format')!r})")
    config = RunConfig.from_dict(data["config"], source=f"{path} config")
    net, objective = build_network(config, len(data["class_ids"]), initial_weights=False)
    _load_state(net, data["net"], path, "network")
    if objective is not None:
        _load_state(objective, data["objective"], path, "loss")
    return TrainedModel(config, net, objective, list(data["class_ids"]), int(data["epoch"]))


def _load_state(module: torch.nn.Module, state: dict, path: str | Path, what: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise HierpipeError(
            f"{path}: {what} state does not match the configured model "
            f"({state_dict_problem(error)})"
        ) from error


def state_dict_problem(error: BaseException) -> str:
    """load_state_dict's error on one line: its headline and the first mismatch it lists,
    which names the tensor and both shapes."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    more = f" (and {len(lines) - 2} more)" if len(lines) > 2 else ""
    return " ".join(lines[:2]) + more
