"""Embedding networks: a timm backbone with a Euclidean, spherical or Poincaré embedding head."""

from hierpipe.models.embedding_net import (
    HEADS,
    EmbeddingNet,
    check_head,
    load_backbone_weights,
    select_device,
)

__all__ = ["HEADS", "EmbeddingNet", "check_head", "load_backbone_weights", "select_device"]
