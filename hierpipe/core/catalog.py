"""The components params may name, and what params checking needs to know of each.

Snakemake parses the workflow on hosts that have Snakemake and nothing else (with
`--use-singularity` every job runs in the image), so checking params must not import torch.
Each entry therefore declares, without importing its class, where the class lives
(`"module:Class"`), the hyperparameters params may set with their defaults, and the facts
the checks use: the head a loss trains with, whether it needs class-balanced batches, which
losses a training option can train. `tests/test_catalog.py` holds every entry to its class:
the constructor's parameters and defaults, the class attributes, the registered datasets.

Adding a dataset, loss, regulariser, training option or measure: its module, plus one entry
here.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
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
class Dataset(Component):
    """A hierpipe.data.registry.DatasetBuilder; `manual`: how to obtain the files when they
    cannot be downloaded (None: they can). Its prepare options are the builder's `Options`."""

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
    "shapes": Dataset("hierpipe.data.shapes:ShapesBuilder"),
    "cifar100": Dataset("hierpipe.data.cifar100:CIFAR100Builder"),
    "nabirds": Dataset("hierpipe.data.nabirds:NABirdsBuilder"),
    "cub200": Dataset("hierpipe.data.cub200:CUB200Builder"),
    "cars196": Dataset("hierpipe.data.cars196:Cars196Builder"),
    "sop": Dataset("hierpipe.data.sop:SOPBuilder"),
    "inshop": Dataset(
        "hierpipe.data.inshop:InShopBuilder",
        manual="DeepFashion In-shop is behind a license agreement: download img.zip and "
        "list_eval_partition.txt of the In-shop Clothes Retrieval Benchmark by hand from "
        "http://mmlab.ie.cuhk.edu.hk/projects/DeepFashion.html",
    ),
    "imagefolder": Dataset(
        "hierpipe.data.imagefolder:ImageFolderBuilder",
        manual="imagefolder reads a folder tree of your own images",
    ),
}


@dataclass(frozen=True)
class Measure:
    """A measure evaluation writes, as `<group>/<kind>/<name>` (or `<group>/<name>`).
    `label`: its title in tables; `direction`: +1 when higher is better, -1 when lower is
    better (a cost), 0 when the value is not a score (a p-value, a count, a setting), so that
    tables mark no best. Both are documented in docs/methods/measures.md."""

    label: str
    direction: Literal[1, -1, 0]


# Keyed by name; `{k}` and `{level}` stand for a number in the name and the label.
MEASURES: dict[str, Measure] = {
    # classification by the model's classifier or the nearest class prototype
    "top{k}": Measure("top-{k}", 1),
    "level{level}_top1": Measure("level-{level} top-1", 1),
    "ahc": Measure("AHC", -1),
    "ahd@{k}": Measure("AHD@{k}", -1),
    "hp@{k}": Measure("HP@{k}", 1),
    "hp@{k}_devise": Measure("HP@{k} (DeViSE)", 1),
    "mistake_severity": Measure("mistake severity", -1),
    "ece": Measure("ECE", -1),
    "mce": Measure("MCE", -1),
    # retrieval, of the class and of the classes' ancestors at each level
    "recall@{k}": Measure("R@{k}", 1),
    "precision@1": Measure("P@1", 1),
    "r_precision": Measure("R-Precision", 1),
    "map@r": Measure("MAP@R", 1),
    "level{level}_precision@1": Measure("level-{level} P@1", 1),
    "level{level}_r_precision": Measure("level-{level} R-Precision", 1),
    "level{level}_map@r": Measure("level-{level} MAP@R", 1),
    "hs@{k}": Measure("HS@{k}", 1),
    "ahs": Measure("AHS", 1),
    "ahs_k": Measure("AHS depth", 0),
    "h_ap": Measure("H-AP", 1),
    "asi": Measure("ASI", 1),
    "ndcg": Measure("NDCG", 1),
    # class representatives against the true tree
    "classwise_spearman": Measure("classwise rho", 1),
    "classwise_spearman_p": Measure("classwise rho p-value", 0),
    "classwise_spearman_noself": Measure("classwise rho, no self", 1),
    "classwise_spearman_noself_p": Measure("classwise rho, no self, p-value", 0),
    "elementwise_spearman": Measure("elementwise rho", 1),
    "elementwise_spearman_p": Measure("elementwise rho p-value", 0),
    "rf": Measure("RF", -1),
    "norm_rf": Measure("RF (normalised)", -1),
    "num_classes": Measure("classes", 0),
    # a regulariser's hierarchical proxies against the true tree
    "lca_classwise_spearman": Measure("LCA-distance classwise rho", 1),
    "lca_classwise_spearman_noself": Measure("LCA-distance classwise rho, no self", 1),
    "lca_elementwise_spearman": Measure("LCA-distance elementwise rho", 1),
    "induced_classwise_spearman": Measure("induced-tree classwise rho", 1),
    "induced_elementwise_spearman": Measure("induced-tree elementwise rho", 1),
    "induced_rf": Measure("induced-tree RF", -1),
    "induced_norm_rf": Measure("induced-tree RF (normalised)", -1),
    "induced_internal_nodes": Measure("proxies in the induced tree", 0),
}
_MEASURE_PATTERNS = {
    key: re.compile(
        re.escape(key).replace(r"\{k\}", r"(?P<k>\d+)").replace(r"\{level\}", r"(?P<level>\d+)")
    )
    for key in MEASURES
}
# Representatives of random vectors give each measure's chance level, not a model's score.
CHANCE_KIND = "random_vectors"
# The kind a measure's label leaves unsaid: classification by the model's own classifier.
_IMPLIED_KINDS = {"classification": "logits"}


def measure_key(path: str) -> str:
    """The MEASURES key that measure `path` (`<group>/<kind>/<name>` or `<group>/<name>`) is
    an instance of; unknown names fail with the known ones."""
    name = path.rsplit("/", 1)[-1]
    for key, pattern in _MEASURE_PATTERNS.items():
        if pattern.fullmatch(name):
            return key
    raise HierpipeError(f"unknown measure {path!r}; known measures: {', '.join(MEASURES)}")


def measure(path: str) -> Measure:
    """The entry of measure `path`, its label's numbers filled in from the name."""
    key = measure_key(path)
    numbers = _MEASURE_PATTERNS[key].fullmatch(path.rsplit("/", 1)[-1]).groupdict()
    return replace(MEASURES[key], label=MEASURES[key].label.format(**numbers))


def measure_direction(path: str) -> Literal[1, -1, 0]:
    """+1 when higher is better, -1 when lower is better, 0 when `path` is not a score."""
    parts = path.split("/")
    if len(parts) == 3 and parts[1] == CHANCE_KIND:
        return 0
    return measure(path).direction


def measure_label(path: str) -> str:
    """`path`'s title where nothing else says which representatives it measures: the label,
    and the kind unless it is implied ("classwise rho (prototype)", "top-1")."""
    label = measure(path).label
    parts = path.split("/")
    if len(parts) == 3 and _IMPLIED_KINDS.get(parts[0]) != parts[1]:
        return f"{label} ({parts[1]})"
    return label


@dataclass(frozen=True)
class PretrainedWeights:
    """Where a backbone's pretrained weights come from: the file the papers' code loaded.
    `sha256_prefix`: the leading hex digits of its sha256 that the file name carries (the
    PyTorch hub convention), checked on download; `origin` says what the file is."""

    url: str
    origin: str
    sha256_prefix: str | None = None


# Keyed by timm model name (params' backbone.name); `hierpipe weights fetch` converts each
# file to the timm backbone's own state dict (num_classes=0).
PRETRAINED_WEIGHTS: dict[str, PretrainedWeights] = {
    "resnet50": PretrainedWeights(
        "https://download.pytorch.org/models/resnet50-0676ba61.pth",
        "torchvision's ImageNet-1k ResNet-50 (IMAGENET1K_V1), which ProxyDR's and HIER's code load",
        "0676ba61",
    ),
    "deit_small_distilled_patch16_224": PretrainedWeights(
        "https://dl.fbaipublicfiles.com/deit/deit_small_distilled_patch16_224-649709d9.pth",
        "Facebook's distilled DeiT-S release, what HIER's timm 0.4.12 loads",
        "649709d9",
    ),
    "vit_small_patch16_224.dino": PretrainedWeights(
        "https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth",
        "DINO's ViT-S/16 release, what HIER's torch.hub dino_vits16 loads",
    ),
    "vit_small_patch16_224.augreg_in21k": PretrainedWeights(
        "https://huggingface.co/timm/vit_small_patch16_224.augreg_in21k/resolve/main/model.safetensors",
        "timm's AugReg ImageNet-21k ViT-S/16",
    ),
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
