"""hierpipe.core.catalog against the classes it names: what params checking knows without torch
must be what the classes do."""

import dataclasses
import importlib
import inspect
import pkgutil

import pytest

import hierpipe.data
from hierpipe.core import catalog
from hierpipe.data.registry import DatasetBuilder, get_dataset
from hierpipe.losses import ProxyClassifierLoss, ScaledCosineProxyLoss
from hierpipe.train.options.base import TrainingOption
from hierpipe.train.options.dynamic_scale import _LOSS_KINDS

COMPONENTS = {
    **{f"loss {n}": e for n, e in catalog.LOSSES.items()},
    **{f"regularizer {n}": e for n, e in catalog.REGULARIZERS.items()},
    **{f"option {n}": e for n, e in catalog.TRAINING_OPTIONS.items()},
}


@pytest.mark.parametrize("name", COMPONENTS)
def test_hyperparameters_and_defaults_are_the_constructors(name):
    entry = COMPONENTS[name]
    parameters = inspect.signature(entry.load()).parameters
    settable = {
        key: parameter.default
        for key, parameter in parameters.items()
        if key not in catalog.SUPPLIED_ARGUMENTS
    }
    assert dict(entry.hyperparameters) == settable
    assert entry.load().__name__ == entry.class_name


@pytest.mark.parametrize("name", catalog.LOSSES)
def test_loss_metadata_matches_the_class(name):
    entry = catalog.LOSSES[name]
    cls = entry.load()
    expected_proxies = (
        "unit"
        if issubclass(cls, ScaledCosineProxyLoss)
        else "weights"
        if issubclass(cls, ProxyClassifierLoss)
        else "none"
    )
    assert entry.proxies == expected_proxies
    # a head other than the one a loss normalises for is only declared when it is required
    assert entry.head == ("sphere" if cls.normalized_embeddings else "euclidean") or (
        entry.head_required and entry.head == "poincare"
    )


def test_dynamic_scale_trains_the_losses_it_has_a_scale_rule_for():
    names = catalog.TRAINING_OPTIONS["dynamic_scale"].losses
    assert {catalog.LOSSES[name].load(): name for name in names} == _LOSS_KINDS


@pytest.mark.parametrize("name", catalog.TRAINING_OPTIONS)
def test_options_are_training_options_that_fix_what_they_freeze(name):
    entry = catalog.TRAINING_OPTIONS[name]
    cls = entry.load()
    assert issubclass(cls, TrainingOption)
    # proxies set once and never moved are proxies the optimiser must not touch
    assert not entry.fixes_proxies or cls.freezes_proxies


@pytest.mark.parametrize("name", sorted(catalog.DATASETS))
def test_each_dataset_entry_is_a_builder_with_frozen_options(name):
    builder = get_dataset(name)
    assert isinstance(builder, DatasetBuilder) and builder.name == name
    assert dataclasses.is_dataclass(builder.Options)
    assert builder.Options.__dataclass_params__.frozen


def test_every_dataset_builder_of_the_package_is_in_the_catalog():
    builders = set()
    for module in pkgutil.iter_modules(hierpipe.data.__path__):
        loaded = importlib.import_module(f"hierpipe.data.{module.name}")
        builders |= {
            f"{loaded.__name__}:{name}"
            for name, value in vars(loaded).items()
            if isinstance(value, type)
            and issubclass(value, DatasetBuilder)
            and value is not DatasetBuilder
            and value.__module__ == loaded.__name__
        }
    assert builders == {entry.target for entry in catalog.DATASETS.values()}


def test_unknown_names_list_the_known_ones():
    with pytest.raises(catalog.HierpipeError, match=r"unknown loss 'arcface'; known losses: corr"):
        catalog.lookup(catalog.LOSSES, "arcface", "loss")


@pytest.mark.parametrize(
    ("space", "curvature", "clip_r", "message"),
    [
        ("hyperbolic", 0.1, 2.3, r"head: unknown 'hyperbolic', expected one of euclidean"),
        ("poincare", 0.0, 2.3, r"curvature: must be > 0, got 0\.0"),
        ("poincare", 0.1, float("nan"), r"clip_r: must be > 0, got nan"),
    ],
)
def test_bad_heads_are_refused(space, curvature, clip_r, message):
    with pytest.raises(catalog.HierpipeError, match=message):
        catalog.check_head(space, curvature, clip_r)
    catalog.check_head("sphere", curvature, clip_r)  # the sphere ignores the ball's settings
