"""Experiment params and the resolved configuration of one run.

Params (params/*.yaml) describe a whole grid; Snakemake validates them against
workflow/schemas/params.schema.yaml and then calls `check_params` for what a schema cannot
express (names that must exist in the registries). Each run gets a `RunConfig`: everything
that determines its outputs, written next to them as config.yaml.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hierpipe.core import catalog
from hierpipe.core.atomic import write_text_atomic
from hierpipe.core.errors import HierpipeError
from hierpipe.core.questions import questions_from_params, statistics_settings

# libyaml's safe loader where PyYAML was built with it: the same documents and refusals, and
# the workflow parses its params and schema several times faster.
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

RUN_ID_PATTERN = r"[a-z0-9_]+-[a-z0-9_]+-s[0-9]+"
# The option set every params file has: training without any option.
STANDARD_OPTION = "standard"


@dataclass(frozen=True)
class SplitConfig:
    scheme: str = "by_image"
    fractions: dict[str, float] = field(
        default_factory=lambda: {"train": 0.6, "val": 0.2, "test": 0.2}
    )
    seed: int = 0
    predefined: str | None = None

    @property
    def name(self) -> str:
        """Readable and unique per split: experiments that split differently never share it."""
        if self.scheme == "predefined":
            return f"predefined-{self.predefined}"
        fractions = "-".join(
            f"{subset}{fraction * 100:g}" for subset, fraction in self.fractions.items()
        )
        return f"{self.scheme}-{fractions}-seed{self.seed}"

    @property
    def fractions_arg(self) -> str:
        """The fractions as `hierpipe data split --fractions` takes them."""
        return ",".join(f"{subset}={fraction!r}" for subset, fraction in self.fractions.items())


@dataclass(frozen=True)
class BackboneConfig:
    name: str = "resnet10t"
    pretrained: bool = False
    weights: str | None = None
    embedding_dim: int = 128


# Parameter groups of the optimiser, each with its own lr multiplier (docs/methods/hier.md).
LR_GROUPS = ("backbone", "head", "proxies", "regularizer")


# What a step with a non-finite loss or gradient does: stop the run, or skip the step.
NONFINITE_POLICIES = ("stop", "skip")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1.0e-4
    weight_decay: float = 0.0
    num_workers: int = 0
    augment: str = "none"
    image_size: int | None = None
    crop_scale_min: float = 0.08
    normalize: str = "none"
    preload_images: bool = False
    optimizer: str = "adam"
    lr_multipliers: dict[str, float] = field(default_factory=dict)
    lr_decay_every: int | None = None
    lr_decay_gamma: float = 1.0
    warmup_epochs: int = 0
    freeze_bn: bool = False
    grad_clamp: float | None = None
    samples_per_class: int | None = None
    on_nonfinite: str = "stop"

    def __post_init__(self) -> None:
        if self.on_nonfinite not in NONFINITE_POLICIES:
            raise HierpipeError(
                f"train.on_nonfinite: expected one of {', '.join(NONFINITE_POLICIES)}, "
                f"got {self.on_nonfinite!r}"
            )
        unknown = sorted(set(self.lr_multipliers) - set(LR_GROUPS))
        if unknown:
            raise HierpipeError(
                f"train.lr_multipliers: unknown group(s) {unknown}; expected {list(LR_GROUPS)}"
            )
        # every group listed, so a run's config.yaml shows all of its learning rates
        full = {group: float(self.lr_multipliers.get(group, 1.0)) for group in LR_GROUPS}
        object.__setattr__(self, "lr_multipliers", full)


@dataclass(frozen=True)
class HeadConfig:
    """The embedding space (hierpipe.core.catalog.HEADS); curvature and clip_r apply to poincare."""

    space: str = "sphere"
    curvature: float = 0.1
    clip_r: float = 2.3


@dataclass(frozen=True)
class RegularizerConfig:
    """A term added to the loss with weight `weight` (hierpipe.core.catalog.REGULARIZERS)."""

    name: str
    weight: float = 0.5
    hyperparameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EvaluateConfig:
    subset: str = "test"
    gallery: str | None = None
    retrieval_ks: tuple[int, ...] = (1, 2, 4, 8)
    distance: str = "auto"
    hs_ks: tuple[int, ...] = (1, 50, 100, 150, 200, 250)
    ahs_k_max: int = 250
    # ProxyDR's code by default (docs/methods/classification_measures.md, hierarchy_measures.md)
    calibration_bins: str = "public_code"
    tree_linkage: str = "wpgma"
    # H-AP's relevance of a shared depth l: (l / L) ** relevance_alpha, divided by the number
    # of references at that depth with the population schedule, HAPPIER's default
    # (docs/methods/hierarchical_ranking_measures.md)
    relevance_schedule: str = "population"
    relevance_alpha: float = 1.0


@dataclass(frozen=True)
class RunConfig:
    """Everything one (dataset, model, option set, seed) run depends on."""

    experiment: str
    dataset: str
    data_dir: str
    split: SplitConfig
    model: str
    loss: str | None
    hyperparameters: dict[str, Any]
    option: str
    training_options: dict[str, dict[str, Any]]
    seed: int
    head: HeadConfig = field(default_factory=HeadConfig)
    regularizer: RegularizerConfig | None = None
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    @property
    def run_id(self) -> str:
        return run_id(self.model, self.option, self.seed)

    @property
    def split_path(self) -> Path:
        return Path(self.data_dir) / "splits" / f"{self.split.name}.parquet"

    @property
    def trained(self) -> bool:
        """False for the random-weights baseline, which is evaluated untrained."""
        return self.loss is not None

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "run config") -> RunConfig:
        return _build(cls, data, source)


def run_id(model: str, option: str, seed: int) -> str:
    return f"{model}-{option}-s{seed}"


def grid(params: Mapping[str, Any]) -> list[tuple[str, str, str, int]]:
    """Every (dataset, model, option set, seed) of the params, in params order.

    A runs entry covers every dataset unless it lists its own `datasets`.
    """
    return [
        (dataset, entry["model"], option, seed)
        for entry in params["runs"]
        for dataset in entry.get("datasets") or params["datasets"]
        for option in entry.get("options", [STANDARD_OPTION])
        for seed in params.get("seeds", [1])
    ]


def option_set(params: Mapping[str, Any], name: str) -> dict[str, dict[str, Any]]:
    """The training options of option set `name`; `standard` needs no definition."""
    options = params.get("options", {})
    if name not in options and name != STANDARD_OPTION:
        raise HierpipeError(
            f"params: runs use option set {name!r}, which is not defined under options "
            f"(defined: {sorted(options)})"
        )
    return {k: dict(v) for k, v in options.get(name, {}).items()}


def check_params(params: Mapping[str, Any]) -> None:
    """Check what the JSON schema cannot: names must exist in hierpipe's catalog, and each
    model's loss, head, regulariser, training options and settings must work together.

    Needs no torch (hierpipe.core.catalog declares what the checks use): Snakemake runs it while
    parsing the workflow. What only the classes can check (hyperparameter values, the timm
    backbone name) `hierpipe config run` checks in each run's first job.
    """
    for dataset in params["datasets"]:
        catalog.lookup(catalog.DATASETS, dataset, "dataset")
    runs = grid(params)
    for entry in params["runs"]:
        unknown = sorted(set(entry.get("datasets") or []) - set(params["datasets"]))
        if unknown:
            raise HierpipeError(
                f"params: runs of model {entry['model']!r} name dataset(s) {unknown}, which "
                f"are not defined under datasets (defined: {sorted(params['datasets'])})"
            )
    for _, model, _, _ in runs:
        if model not in params["models"]:
            raise HierpipeError(
                f"params: runs lists model {model!r}, which is not defined under models "
                f"(defined: {sorted(params['models'])})"
            )
    # every model with the settings of each dataset it runs on (unused models: all datasets)
    pairs = dict.fromkeys((dataset, model) for dataset, model, _, _ in runs)
    used = {model for _, model in pairs}
    pairs.update(
        dict.fromkeys((d, m) for m in params["models"] if m not in used for d in params["datasets"])
    )
    for dataset, model in pairs:
        try:
            _check_model(params, dataset, model)
        except HierpipeError as error:
            raise HierpipeError(f"params: models.{model} on {dataset}: {error}") from error
    for _, model, option, _ in runs:
        training_options = option_set(params, option)
        loss = params["models"][model]["loss"]
        if loss is None and training_options:
            raise HierpipeError(
                f"params: model {model!r} is untrained (loss null); option set {option!r} "
                "would have nothing to act on"
            )
        if loss is not None:
            try:
                catalog.check_option_set(training_options, loss)
            except HierpipeError as error:
                message = f"params: model {model!r} with option set {option!r}: {error}"
                raise HierpipeError(message) from error
    statistics_settings(params)
    questions_from_params(params)
    fractions = [d.get("split", {}).get("fractions") for d in params["datasets"].values()]
    for dataset, fraction in zip(params["datasets"], fractions, strict=True):
        if fraction is not None and abs(sum(fraction.values()) - 1.0) > 1e-6:
            raise HierpipeError(
                f"params: datasets.{dataset}.split.fractions sum to {sum(fraction.values())}; "
                "expected 1"
            )


def check_datasets_obtainable(params: Mapping[str, Any], data_root: str | Path = "data") -> None:
    """Each dataset that cannot be downloaded is prepared already or has a `source`.

    Checked before any job: otherwise the workflow would queue every job of the grid and stop
    at that dataset's first one.
    """
    for name, settings in params["datasets"].items():
        manual = catalog.lookup(catalog.DATASETS, name, "dataset").manual
        prepared = (Path(data_root) / name / "samples.parquet").is_file()
        if manual and not prepared and not settings.get("source"):
            raise HierpipeError(
                f"params: datasets.{name}: {data_root}/{name} is not prepared and cannot be "
                f"downloaded: {manual}. Then set datasets.{name}.source to where they are (a "
                f"folder or an archive), or run `hierpipe data prepare {name} --source <where> "
                f"--out {data_root}/{name}`"
            )


def _check_model(params: Mapping[str, Any], dataset: str, model: str) -> None:
    definition = params["models"][model]
    loss = definition["loss"]
    if loss is not None and loss not in catalog.LOSSES:
        raise HierpipeError(
            f"loss is {loss!r}; expected one of {sorted(catalog.LOSSES)} or null "
            "(the untrained baseline)"
        )
    head = model_head(params, model)
    catalog.check_head(head.space, head.curvature, head.clip_r)
    train = run_train(params, dataset, model)
    if loss is None:
        if definition.get("regularizer") is not None or definition.get("train"):
            raise HierpipeError("an untrained model (loss null) takes no regularizer or train")
        return
    entry = catalog.LOSSES[loss]
    catalog.check_hyperparameters(entry, definition.get("hyperparameters"), f"loss {loss!r}")
    if entry.head_required and head.space != entry.head:
        raise HierpipeError(f"loss {loss!r} needs head space {entry.head!r}, got {head.space!r}")
    if train.samples_per_class is not None and train.batch_size % train.samples_per_class:
        raise HierpipeError(
            f"train.batch_size {train.batch_size} is not a multiple of "
            f"train.samples_per_class {train.samples_per_class}"
        )
    if entry.needs_class_groups and not train.samples_per_class:
        raise HierpipeError(
            f"loss {loss!r} pairs the samples of each class in a batch; set "
            "train.samples_per_class (2 or more)"
        )
    regularizer = regularizer_config(params, model)
    if regularizer is not None:
        term = catalog.lookup(catalog.REGULARIZERS, regularizer.name, "regularizer")
        settings = catalog.check_hyperparameters(
            term, regularizer.hyperparameters, f"regularizer {regularizer.name!r}"
        )
        if settings.get("geometry") == "poincare" and head.space != "poincare":
            raise HierpipeError(
                f"regularizer {regularizer.name!r} measures in the Poincaré ball; set "
                "head.space to poincare (or the regulariser's geometry to sphere or euclidean)"
            )
        topk = settings.get("topk", 0)
        if topk > train.batch_size:
            raise HierpipeError(
                f"regularizer {regularizer.name!r} mines each sample's top-{topk} neighbours, "
                f"more than the batch of {train.batch_size}; lower topk or raise batch_size"
            )
    distance = run_evaluate(params, dataset, head).distance
    if distance == "poincare" and head.space != "poincare":
        raise HierpipeError(
            f"evaluate.distance is poincare but the head space is {head.space!r}; use auto"
        )


def model_head(params: Mapping[str, Any], model: str) -> HeadConfig:
    """The model's head: as params set it, else the space its loss trains in."""
    definition = params["models"][model]
    head = dict(definition.get("head") or {})
    if "space" not in head:
        loss = definition["loss"]
        # the untrained baseline is judged by directions only, like the normalised models
        head["space"] = (
            "sphere" if loss is None else catalog.lookup(catalog.LOSSES, loss, "loss").head
        )
    return _build(HeadConfig, head, f"models.{model}.head")


def run_train(params: Mapping[str, Any], dataset: str, model: str) -> TrainConfig:
    """The training settings of `model` on `dataset`: the experiment's, then the dataset's
    overrides, then the model's."""
    merged = {
        **params.get("train", {}),
        **(params["datasets"][dataset].get("train") or {}),
        **(params["models"][model].get("train") or {}),
    }
    return _build(TrainConfig, merged, f"train (datasets.{dataset}.train, models.{model}.train)")


def model_backbone(params: Mapping[str, Any], model: str) -> BackboneConfig:
    """The experiment's backbone with the model's overrides (Table 1 varies it per model)."""
    merged = {**params.get("backbone", {}), **(params["models"][model].get("backbone") or {})}
    return _build(BackboneConfig, merged, f"backbone (with models.{model}.backbone)")


def fetched_weights(params: Mapping[str, Any]) -> dict[str, str]:
    """The pretrained weights files params' models load that the workflow fetches: file ->
    backbone, for the backbones with a known source (catalog.PRETRAINED_WEIGHTS)."""
    files = {}
    for model in params["models"]:
        backbone = model_backbone(params, model)
        if backbone.pretrained and backbone.weights and backbone.name in catalog.PRETRAINED_WEIGHTS:
            known = files.setdefault(backbone.weights, backbone.name)
            if known != backbone.name:
                raise HierpipeError(
                    f"params: backbone.weights {backbone.weights!r} is named for both "
                    f"{known!r} and {backbone.name!r}; give each backbone its own file"
                )
    return files


def run_evaluate(params: Mapping[str, Any], dataset: str, head: HeadConfig) -> EvaluateConfig:
    """The evaluation settings on `dataset` (its overrides on top), `auto` distance resolved."""
    merged = {**params.get("evaluate", {}), **(params["datasets"][dataset].get("evaluate") or {})}
    if merged.get("distance", EvaluateConfig.distance) == "auto":
        merged["distance"] = "poincare" if head.space == "poincare" else "cosine"
    return _build(EvaluateConfig, merged, f"evaluate (with datasets.{dataset}.evaluate)")


def regularizer_config(params: Mapping[str, Any], model: str) -> RegularizerConfig | None:
    regularizer = params["models"][model].get("regularizer")
    if regularizer is None:
        return None
    return _build(RegularizerConfig, regularizer, f"models.{model}.regularizer")


def split_config(params: Mapping[str, Any], dataset: str) -> SplitConfig:
    """How params split `dataset`; every run on the dataset uses this split."""
    return _build(SplitConfig, params["datasets"][dataset].get("split", {}), "split")


def resolve_run_config(
    params: Mapping[str, Any],
    dataset: str,
    model: str,
    option: str,
    seed: int,
    data_root: str = "data",
) -> RunConfig:
    """The run's config from validated params (schema defaults already filled in)."""
    if dataset not in params["datasets"]:
        raise HierpipeError(f"params: no dataset {dataset!r} (have {sorted(params['datasets'])})")
    if model not in params["models"]:
        raise HierpipeError(f"params: no model {model!r} (have {sorted(params['models'])})")
    definition = params["models"][model]
    head = model_head(params, model)
    return RunConfig(
        experiment=params["experiment"],
        dataset=dataset,
        data_dir=f"{data_root}/{dataset}",
        split=split_config(params, dataset),
        model=model,
        loss=definition["loss"],
        hyperparameters=dict(definition.get("hyperparameters", {})),
        option=option,
        training_options=option_set(params, option),
        seed=int(seed),
        head=head,
        regularizer=regularizer_config(params, model),
        backbone=model_backbone(params, model),
        train=run_train(params, dataset, model),
        evaluate=run_evaluate(params, dataset, head),
    )


def write_run_config(config: RunConfig, path: str | Path) -> None:
    write_yaml_atomic(config.to_dict(), path)


def read_run_config(path: str | Path) -> RunConfig:
    return RunConfig.from_dict(read_yaml_mapping(path, "run settings"), source=str(path))


def read_yaml_mapping(path: str | Path, what: str) -> dict[str, Any]:
    """A YAML file whose top level is a mapping (of `what`), loaded safely."""
    path = Path(path)
    if not path.is_file():
        raise HierpipeError(f"{path}: file not found (expected {what})")
    try:
        data = yaml.load(path.read_text(), Loader=_SAFE_LOADER)
    except yaml.YAMLError as error:
        raise HierpipeError(
            f"{path}: not valid YAML ({_yaml_problem(error)}); expected {what} as plain YAML"
        ) from error
    if not isinstance(data, dict):
        raise HierpipeError(f"{path}: expected a mapping of {what}")
    return data


def json_mapping(text: str | bytes, what: str) -> dict[str, Any]:
    """`text` parsed as a JSON object; anything else fails naming `what`."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise HierpipeError(f"{what}: not valid JSON ({error})") from error
    if not isinstance(value, dict):
        raise HierpipeError(f"{what}: expected a JSON object, got {type(value).__name__}")
    return value


def _yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's reason on one line; its own message spans lines to draw the offending text."""
    problem = getattr(error, "problem", None)
    mark = getattr(error, "problem_mark", None)
    if problem is None:
        return " ".join(str(error).split())
    where = "" if mark is None else f" at line {mark.line + 1}, column {mark.column + 1}"
    context = getattr(error, "context", None)
    return f"{context + ': ' if context else ''}{problem}{where}"


def validate_params(
    params: dict[str, Any], schema: str | Path, source: str = "params"
) -> dict[str, Any]:
    """Check `params` against the JSON schema file `schema` and fill in its defaults, in place,
    as Snakemake's `validate` does; returns `params`.

    A violation is one HierpipeError line naming the key's path and what the schema expects
    (Snakemake's own message prints the whole sub-schema over dozens of lines).
    """
    import jsonschema
    from jsonschema import Draft202012Validator, validators

    definition = read_yaml_mapping(schema, "a JSON schema")
    check_properties = Draft202012Validator.VALIDATORS["properties"]

    def properties_with_defaults(validator, properties, instance, subschema):
        if validator.is_type(instance, "object"):
            for name, spec in properties.items():
                if "default" in spec:
                    # a copy: a shared default dict edited for one entry would change all
                    instance.setdefault(name, copy.deepcopy(spec["default"]))
        yield from check_properties(validator, properties, instance, subschema)

    validator = validators.extend(Draft202012Validator, {"properties": properties_with_defaults})
    error = jsonschema.exceptions.best_match(validator(definition).iter_errors(params))
    if error is None:
        return params
    where = ".".join(str(part) for part in error.absolute_path) or "top level"
    problem = " ".join(error.message.split())
    known = error.schema.get("properties") if isinstance(error.schema, dict) else None
    if error.validator == "additionalProperties" and isinstance(known, dict):
        unknown = sorted(set(error.instance) - set(known))
        if unknown:
            problem = f"unknown key(s) {unknown}; expected {sorted(known)}"
    raise HierpipeError(f"{source}: {where}: {problem}")


def write_resolved_params(params: Mapping[str, Any], path: str | Path) -> None:
    """The experiment's params as the workflow ran them, and under `resolved_runs` every
    run's complete settings (defaults filled in), keyed `<dataset>/<run id>`."""
    runs = {
        f"{dataset}/{run_id(model, option, seed)}": resolve_run_config(
            params, dataset, model, option, seed
        ).to_dict()
        for dataset, model, option, seed in grid(params)
    }
    write_yaml_atomic({**params, "resolved_runs": runs}, path)


def write_yaml_atomic(data: Any, path: str | Path) -> None:
    # insertion order, not sorted: the order of split fractions decides the split
    write_text_atomic(yaml.safe_dump(data, sort_keys=False), path)


def _build(cls: type, data: Mapping[str, Any], source: str) -> Any:
    """Instantiate a config dataclass strictly: unknown keys are an error, nested ones too."""
    if not isinstance(data, Mapping):
        raise HierpipeError(f"{source}: expected a mapping for {cls.__name__}, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise HierpipeError(
            f"{source}: unknown key(s) {unknown} in {cls.__name__}; expected {sorted(fields)}"
        )
    values = {}
    for name, value in data.items():
        nested = _NESTED.get((cls.__name__, name))
        if nested is not None and value is not None:
            value = _build(nested, value, f"{source}.{name}")
        elif name in ("retrieval_ks", "hs_ks"):
            value = tuple(value)
        values[name] = value
    try:
        return cls(**values)
    except TypeError as error:
        raise HierpipeError(f"{source}: {error}") from error


_NESTED = {
    ("RunConfig", "split"): SplitConfig,
    ("RunConfig", "head"): HeadConfig,
    ("RunConfig", "regularizer"): RegularizerConfig,
    ("RunConfig", "backbone"): BackboneConfig,
    ("RunConfig", "train"): TrainConfig,
    ("RunConfig", "evaluate"): EvaluateConfig,
}


def _plain(value: Any) -> Any:
    """Tuples to lists and NumPy scalars to Python ones, so YAML/JSON/MLflow take it as is."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value
