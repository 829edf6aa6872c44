"""Shared fixtures: tiny params that run the whole pipeline in seconds."""

import copy
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]

TINY_PARAMS = {
    "experiment": "tiny",
    "seeds": [1],
    "datasets": {
        "shapes": {
            "prepare": {
                "image_size": 16,
                "images_per_class": 8,
                "families": 2,
                "genera_per_family": 2,
                "species_per_genus": 2,
                "seed": 0,
            },
            "split": {
                "scheme": "by_image",
                "fractions": {"train": 0.5, "val": 0.25, "test": 0.25},
                "seed": 0,
            },
        }
    },
    "backbone": {"name": "test_resnet", "pretrained": False, "embedding_dim": 8},
    "train": {"epochs": 2, "batch_size": 8, "lr": 1.0e-3},
    "models": {
        "softmax": {"loss": "softmax"},
        "normface": {"loss": "normface", "hyperparameters": {"scale": 10.0}},
        "proxydr": {"loss": "proxydr", "hyperparameters": {"scale": 10.0}},
        "corr": {"loss": "corr"},
        "pa_hier": {
            "loss": "proxy_anchor",
            "head": {"space": "poincare"},
            "regularizer": {
                "name": "hier",
                "hyperparameters": {"num_proxies": 8, "topk": 4, "triplets_per_anchor": 5},
            },
            "train": {
                "samples_per_class": 2,
                "optimizer": "adamw",
                "weight_decay": 1.0e-2,
                "lr_multipliers": {"proxies": 100.0, "regularizer": 50.0},
                "warmup_epochs": 1,
                "freeze_bn": True,
                "grad_clamp": 10.0,
            },
        },
        "proxydr_hiersph": {
            "loss": "proxydr",
            "regularizer": {
                "name": "hier",
                "weight": 1.0,
                "hyperparameters": {"geometry": "sphere", "num_proxies": 8, "topk": 4},
            },
        },
        "ms": {"loss": "multi_similarity", "train": {"samples_per_class": 2}},
        "hyp": {"loss": "hyp_pairwise", "train": {"samples_per_class": 2}},
        "random": {"loss": None},
    },
    "options": {
        "ema": {"ema": {"alpha": 0.01}},
        "dynamic": {"dynamic_scale": {}},
        "mds": {"mds": {"steps": 50}},
    },
    "runs": [
        {"model": "softmax"},
        {"model": "normface", "options": ["standard", "dynamic"]},
        {"model": "proxydr", "options": ["standard", "ema", "dynamic", "mds"]},
        {"model": "corr", "options": ["mds"]},
        {"model": "pa_hier"},
        {"model": "proxydr_hiersph", "options": ["standard", "dynamic"]},
        {"model": "ms"},
        {"model": "hyp"},
        {"model": "random"},
    ],
    "evaluate": {"retrieval_ks": [1, 2]},
}


@pytest.fixture
def tiny_params() -> dict:
    return copy.deepcopy(TINY_PARAMS)


def validated(params: dict) -> dict:
    """Params as the workflow sees them: validated against the schema, defaults filled in."""
    from hierpipe.core.config import validate_params

    return validate_params(copy.deepcopy(params), REPO / "workflow/schemas/params.schema.yaml")


def write_yaml(data: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


def nodes_per_level(tree) -> list[int]:
    """How many distinct nodes each level of `tree` has (a class shallower than a level counts
    as its own node there), counted from the class paths."""
    return [len({path[: level + 1] for path in tree.paths}) for level in range(tree.max_depth)]


@pytest.fixture(scope="session")
def tiny_run_on_host(tmp_path_factory) -> Path:
    """The real runtimes' tiny experiment run plainly on this machine, once for every test
    that compares a run in the Apptainer image or through SLURM with it."""
    from real_runtimes import run_tiny_on_host

    return run_tiny_on_host(tmp_path_factory.mktemp("tiny_on_host") / "checkout")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    """The tiny experiment's generated `shapes` dataset, prepared and split, under a root."""
    from hierpipe.core.config import SplitConfig
    from hierpipe.data import make_split, prepare_dataset

    root = tmp_path_factory.mktemp("data")
    shapes = TINY_PARAMS["datasets"]["shapes"]
    prepare_dataset("shapes", root / "shapes", shapes["prepare"])
    split = SplitConfig(**shapes["split"])
    make_split(root / "shapes", split.name, split.scheme, split.fractions, split.seed)
    return root


def one_line_error(capsys, argv: list[str]) -> str:
    """The `hierpipe` command's error for `argv`: exit status 1 and exactly one line."""
    from hierpipe.cli import main

    assert main(argv) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]
