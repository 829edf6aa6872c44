"""What only the classes can check of a run's settings, before any data is read."""

from __future__ import annotations

from hierpipe.core.config import RunConfig
from hierpipe.core.errors import HierpipeError


def check_run_components(config: RunConfig) -> None:
    """Build a throwaway of the run's loss, regulariser and training options, and look its
    backbone up in timm: a bad value fails here, before training reads any data, naming the
    run and the model.

    Parsing the workflow checks names and combinations without torch (hierpipe.core.config.
    check_params); values are the classes' own business.
    """
    import timm

    from hierpipe.losses import build_loss, build_regularizer
    from hierpipe.train.options import build_options

    try:
        if not timm.is_model(config.backbone.name):
            raise HierpipeError(f"backbone.name {config.backbone.name!r} is not a timm model name")
        if config.loss is None:
            return
        geometry = {
            "embedding_dim": config.backbone.embedding_dim,
            "curvature": config.head.curvature,
            "clip_r": config.head.clip_r,
        }
        build_loss(config.loss, config.hyperparameters, num_classes=2, **geometry)
        if config.regularizer is not None:
            regularizer = config.regularizer
            build_regularizer(regularizer.name, regularizer.hyperparameters, **geometry)
        build_options(config.training_options, config.loss)
    except HierpipeError as error:
        where = f"{config.dataset}/{config.run_id}: models.{config.model}"
        raise HierpipeError(f"{where}: {error}") from error
