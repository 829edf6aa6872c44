"""The training engine: optimiser, epochs, checkpoints and resume, model selection."""

from hierpipe.train.engine import train_run

__all__ = ["train_run"]
