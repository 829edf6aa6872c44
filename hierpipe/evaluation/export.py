"""Embedding export: every sample of the run's split through the trained network, to Parquet
(the files' layout: hierpipe.evaluation.embedding_files)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch.utils.data import DataLoader

from hierpipe.core.io import write_parquet_atomic
from hierpipe.data import ImageTableDataset, read_dataset, read_split
from hierpipe.data.transforms import recipe_transforms
from hierpipe.evaluation.embedding_files import (
    Embeddings,
    class_prototypes,
    representatives_table,
    write_embeddings,
)
from hierpipe.models import select_device
from hierpipe.train.artifacts import TrainedModel, load_model


@torch.no_grad()
def export_embeddings(
    model_path: str | Path,
    embeddings_path: str | Path,
    representatives_path: str | Path,
    batch_size: int = 256,
) -> None:
    trained = load_model(model_path)
    config = trained.config
    samples, _ = read_dataset(config.data_dir)
    split, _ = read_split(config.split_path)
    table = samples.merge(split, on="sample_id", how="inner", validate="one_to_one")
    table = table.sort_values("sample_id", kind="stable").reset_index(drop=True)
    dataset = ImageTableDataset(
        config.data_dir,
        table["sample_id"].to_numpy(),
        table["path"].tolist(),
        table["label"].to_numpy(),
        recipe_transforms(config.train)[1],
    )
    device = select_device()
    net = trained.net.to(device).eval()
    objective = trained.objective.to(device).eval() if trained.objective is not None else None
    classifier = objective.loss if objective is not None and objective.classifies else None
    batches = (images for images, _, _ in DataLoader(dataset, batch_size=batch_size))
    embedding, logits = embed_batches(net, classifier, batches, device)
    embeddings = Embeddings(
        sample_id=table["sample_id"].to_numpy(),
        split=table["subset"].to_numpy(),
        label=table["label"].to_numpy(),
        embedding=embedding.numpy(),
        logits=logits.numpy() if logits is not None else None,
        classifier_class_ids=trained.class_ids if classifier is not None else None,
    )
    write_embeddings(embeddings, embeddings_path)
    write_parquet_atomic(representatives(trained, embeddings), representatives_path)


@torch.no_grad()
def embed_batches(
    net: torch.nn.Module,
    classifier: torch.nn.Module | None,
    batches: Iterable[torch.Tensor],
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The float32 embeddings (and the classifier's logits) of batches of images, on the
    host; ``net`` (and the classifier) in eval mode on ``device``."""
    embedding_parts, logit_parts = [], []
    for images in batches:
        embeddings = net(images.to(device)).float()
        embedding_parts.append(embeddings.cpu())
        if classifier is not None:
            logit_parts.append(classifier.logits(embeddings).cpu())
    logits = torch.cat(logit_parts) if logit_parts else None
    return torch.cat(embedding_parts), logits


def representatives(trained: TrainedModel, embeddings: Embeddings) -> pa.Table:
    """Every kind of class representative the run has (described in
    hierpipe.evaluation.embedding_files)."""
    values = (embeddings.embedding, embeddings.label, embeddings.split)
    parts = [("prototype", *class_prototypes(*values))]
    config = trained.config
    if config.head.space == "poincare":
        parts.append(
            ("ball_prototype", *class_prototypes(*values, curvature=config.head.curvature))
        )
    objective = trained.objective
    if objective is not None and objective.classifies:
        proxies = objective.loss.representatives().cpu().numpy()
        parts.insert(
            0, ("proxy", np.asarray(trained.class_ids), proxies, ["learned"] * len(proxies))
        )
    if objective is not None and objective.regularizer is not None:
        proxies = objective.regularizer.hierarchical_proxies().cpu().numpy()
        parts.append(("hier_proxy", np.arange(len(proxies)), proxies, ["learned"] * len(proxies)))
    return representatives_table(parts)
