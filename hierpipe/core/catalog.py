"""The components params may name, and what params checking needs to know of each.

Snakemake parses the workflow on hosts that have Snakemake and nothing else (with
`--use-singularity` every job runs in the image), so checking params must not import torch.
Each entry therefore declares, without importing its class, where the class lives
(`"module:Class"`), the hyperparameters params may set with their defaults, and the facts
the checks use: the head a loss trains with, whether it needs class-balanced batches, which
losses a training option can train. `tests/test_catalog.py` holds every entry to its class:
the constructor's parameters and defaults, the class attributes, the registered datasets.

Adding a loss, regulariser or training option: its module, plus one entry here.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from hierpipe.core.errors import HierpipeError

# What the caller supplies itself, to the constructors that take it: the sizes, and the
# geometry of the embedding head (one curvature for the head and everything measuring in it).
# `generator` is the regulariser's random source, chosen by the engine.
SUPPLIED_ARGUMENTS = ("num_classes", "embedding_dim", "curvature", "clip_r", "generator")

# The embedding spaces of hierpipe.models.EmbeddingNet.
HEADS = ("euclidean", "sphere", "poincare")

# Multiple-comparison corrections of hierpipe.reporting.statistics.adjust_p_values.
CORRECTIONS = ("holm", "bonferroni", "bh", "none")

Proxies = Literal["none", "weights", "unit"]


@dataclass(frozen=True)
class Component:
    """A class params can name: `target` is "module:Class", `hyperparameters` what params
    may set, with the constructor's defaults."""

    target: str
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)

    @property
    def class_name(self) -> str:
        return self.target.split(":")[1]

    def load(self) -> type:
        """The class itself (imports its module, and with it torch)."""
        module, name = self.target.split(":")
        return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Loss(Component):
    """`head`: the embedding space the loss trains in unless params choose one, and the only
    one it accepts when `head_required`. `proxies`: none (pair-based), classifier `weights`,
    or `unit`-length class embeddings. `needs_class_groups`: every class of a batch must come
    with several samples (the class-balanced sampler). `needs_fixed_proxies`: the class
    embeddings must be fixed by a training option before training (CORR)."""

    head: str = "sphere"
    head_required: bool = False
    proxies: Proxies = "unit"
    needs_class_groups: bool = False
    needs_fixed_proxies: bool = False


@dataclass(frozen=True)
class TrainingOption(Component):
    """`losses`: the losses the option can train, and `refusal` why it cannot train another
    (a template of {option}, {loss}, {cls}: the loss's class, {accepted}: the classes it can);
    `fixes_proxies`: the class embeddings are set once and never move; `proxies_from_hierarchy`:
    they are fitted to the true class tree, so their hierarchy scores measure that fit."""

    losses: tuple[str, ...] = ()
    refusal: str = ""
    fixes_proxies: bool = False
    proxies_from_hierarchy: bool = False


@dataclass(frozen=True)
class Dataset:
    """`manual`: how to obtain the files when they cannot be downloaded (None: they can)."""

    manual: str | None = None


_UNIT_PROXY_LOSSES = ("normface", "proxydr", "corr")
_UNIT_PROXIES = (
    "training option {option!r} places unit-length proxies, but loss {loss!r} ({cls}) uses "
    "unnormalised classifier weights"
)

LOSSES: dict[str, Loss] = {
    "softmax": Loss("hierpipe.losses.softmax:SoftmaxLoss", head="euclidean", proxies="weights"),
    "normface": Loss("hierpipe.losses.normface:NormFaceLoss", {"scale": 10.0}),
    "proxydr": Loss("hierpipe.losses.proxydr:ProxyDRLoss", {"scale": 10.0}),
    "corr": Loss(
        "hierpipe.losses.corr:CORRLoss",
        {"scale": 10.0, "reduction": "sum"},
        needs_fixed_proxies=True,
    ),
    "proxy_anchor": Loss(
        "hierpipe.losses.proxy_anchor:ProxyAnchorLoss",
        {"margin": 0.1, "alpha": 32.0},
        proxies="weights",
    ),
    "multi_similarity": Loss(
        "hierpipe.losses.multi_similarity:MultiSimilarityLoss",
        {"alpha": 2.0, "beta": 50.0, "base": 0.5},
        proxies="none",
    ),
    "hyp_pairwise": Loss(
        "hierpipe.losses.hyp_pairwise:HypPairwiseLoss",
        {"temperature": 0.2},
        head="poincare",
        head_required=True,
        proxies="none",
        needs_class_groups=True,
    ),
}

# Terms added to any loss with a weight; HIERsph and the Euclidean variant are HIER with
# `geometry: sphere | euclidean`.
REGULARIZERS: dict[str, Component] = {
    "hier": Component(
        "hierpipe.losses.hier:HIERLoss",
        {
            "num_proxies": 512,
            "margin": 0.1,
            "tau": 0.1,
            "topk": 20,
            "triplets_per_anchor": 50,
            "same_label_bonus": True,
            "stochastic": True,
            "geometry": "poincare",
        },
    ),
}

# In the order the engine runs their hooks: dynamic scale reads the proxies before EMA moves
# them, as the public code computes its statistics from the forward pass.
TRAINING_OPTIONS: dict[str, TrainingOption] = {
    "dynamic_scale": TrainingOption(
        "hierpipe.train.options.dynamic_scale:DynamicScale",
        {"dr_numerator": "public_code"},
        losses=("normface", "proxydr"),
        refusal="training option {option!r} adapts the scale of a cross-entropy over scaled "
        "logits ({accepted}); loss {loss!r} ({cls}) has no such scale in its training loss",
    ),
    "ema": TrainingOption(
        "hierpipe.train.options.ema:EMAProxies",
        {"alpha": 0.01},
        losses=_UNIT_PROXY_LOSSES,
        refusal=_UNIT_PROXIES,
    ),
    "mds": TrainingOption(
        "hierpipe.train.options.mds:MDSProxies",
        {"beta": 1.0, "steps": 1000, "lr": 0.001},
        losses=_UNIT_PROXY_LOSSES,
        refusal=_UNIT_PROXIES,
        fixes_proxies=True,
        proxies_from_hierarchy=True,
    ),
}

# Option sets that params may not combine, with the reason given to the user.
EXCLUSIVE_OPTIONS: list[tuple[frozenset[str], str]] = [
    (
        frozenset({"ema", "mds"}),
        "EMA would move the class embeddings that MDS fixes; the public code silently "
        "ignores EMA under MDS (github.com/hjk92g/ProxyDR), so drop 'ema'",
    ),
]

DATASETS: dict[str, Dataset] = {
    "shapes": Dataset(),
    "cifar100": Dataset(),
    "nabirds": Dataset(),
    "cub200": Dataset(),
    "cars196": Dataset(),
    "sop": Dataset(),
    "inshop": Dataset(
        manual="DeepFashion In-shop is behind a license agreement: download img.zip and "
        "list_eval_partition.txt of the In-shop Clothes Retrieval Benchmark by hand from "
        "http://mmlab.ie.cuhk.edu.hk/projects/DeepFashion.html"
    ),
    "imagefolder": Dataset(manual="imagefolder reads a folder tree of your own images"),
}


def lookup(registry: Mapping[str, Any], name: str, what: str) -> Any:
    """The entry `name` of `registry` (of `what`s); unknown names fail with the known ones."""
    if name not in registry:
        plural = "losses" if what == "loss" else f"{what}s"
        raise HierpipeError(
            f"unknown {what} {name!r}; known {plural}: {', '.join(sorted(registry))}"
        )
    return registry[name]


def check_hyperparameters(
    component: Component, hyperparameters: Mapping[str, Any] | None, what: str
) -> dict[str, Any]:
    """The component's hyperparameters with params' values on top of the defaults; a key the
    component does not take fails, naming the accepted ones."""
    if hyperparameters is None:
        hyperparameters = {}
    if not isinstance(hyperparameters, Mapping):
        raise HierpipeError(f"hyperparameters of {what} must be a mapping, got {hyperparameters!r}")
    unknown = sorted(set(hyperparameters) - set(component.hyperparameters))
    if unknown:
        raise HierpipeError(
            f"unknown hyperparameter(s) {', '.join(map(repr, unknown))} for {what}; "
            f"accepted: {', '.join(component.hyperparameters) or 'none'}"
        )
    return {**component.hyperparameters, **hyperparameters}


def check_option_set(spec: Mapping[str, Mapping[str, Any] | None], loss: str) -> None:
    """Raise unless the training options `spec` (name -> hyperparameters) can train `loss`:
    known names and hyperparameters, no exclusive pair, each option fit for the loss, and
    the fixed class embeddings a loss like CORR needs."""
    if not isinstance(spec, Mapping):
        raise HierpipeError(
            f"training options must be a mapping of name -> hyperparameters, got {spec!r}"
        )
    unknown = sorted(set(spec) - set(TRAINING_OPTIONS))
    if unknown:
        raise HierpipeError(
            f"unknown training option(s) {', '.join(map(repr, unknown))}; "
            f"known options: {', '.join(sorted(TRAINING_OPTIONS))}"
        )
    for name, hyperparameters in spec.items():
        check_hyperparameters(TRAINING_OPTIONS[name], hyperparameters, f"training option {name!r}")
    for names, reason in EXCLUSIVE_OPTIONS:
        if names <= set(spec):
            raise HierpipeError(
                f"training options {' and '.join(sorted(names))} cannot be combined: {reason}"
            )
    entry = lookup(LOSSES, loss, "loss")
    if entry.proxies == "none" and spec:
        raise HierpipeError(
            f"training options act on class proxies; loss {loss!r} is pair-based and has none"
        )
    for name in spec:
        option = TRAINING_OPTIONS[name]
        if loss not in option.losses:
            accepted = ", ".join(LOSSES[other].class_name for other in option.losses)
            raise HierpipeError(
                option.refusal.format(
                    option=name, loss=loss, cls=entry.class_name, accepted=accepted
                )
            )
    if entry.needs_fixed_proxies and not any(TRAINING_OPTIONS[n].fixes_proxies for n in spec):
        fixing = sorted(name for name, option in TRAINING_OPTIONS.items() if option.fixes_proxies)
        raise HierpipeError(
            f"loss {loss!r} trains against fixed class embeddings; "
            f"add the training option {' or '.join(map(repr, fixing))}"
        )


def proxies_from_hierarchy(spec: Mapping[str, Any]) -> bool:
    """Whether the option set fits the proxies to the true class tree (MDS)."""
    return any(
        lookup(TRAINING_OPTIONS, name, "training option").proxies_from_hierarchy for name in spec
    )


def check_head(space: str, curvature: float, clip_r: float) -> None:
    """Raise unless `space` is a known head; the Poincaré ball needs curvature and clip
    radius > 0."""
    if space not in HEADS:
        raise HierpipeError(f"head: unknown {space!r}, expected one of {', '.join(HEADS)}")
    if space == "poincare":
        for key, value in (("curvature", curvature), ("clip_r", clip_r)):
            if not value > 0:  # also rejects NaN
                raise HierpipeError(f"{key}: must be > 0, got {value!r}")
