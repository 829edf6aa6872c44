"""Embedding networks: a timm backbone with a Euclidean, spherical or Poincaré embedding head."""

from hierpipe.core.catalog import HEADS
from hierpipe.models.embedding_net import (
    EmbeddingNet,
    load_backbone_weights,
    select_device,
)

__all__ = ["HEADS", "EmbeddingNet", "load_backbone_weights", "select_device"]
