"""Embedding networks: a timm backbone with a linear embedding head."""

from hierpipe.models.embedding_net import EmbeddingNet, load_backbone_weights, select_device

__all__ = ["EmbeddingNet", "load_backbone_weights", "select_device"]
