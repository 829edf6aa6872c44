"""Which figures an experiment gets, decided from params alone."""

import copy

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, validated

from hierpipe.reporting.plots.plan import KINDS, figure_plan

DEFAULT = validated(yaml.safe_load((REPO / "params/default.yaml").read_text()))


def _kinds_by_row(plan):
    rows = {}
    for figure in plan:
        rows.setdefault(figure.label, set()).add(figure.kind)
    return rows


def test_default_experiment_plan():
    plan = figure_plan(DEFAULT)
    rows = _kinds_by_row(plan)
    per_run = {"embedding_map", "tree_comparison", "retrieval_examples"}
    assert rows["all models"] == {"affinity", "hs_curves"}  # one embedding dimension
    assert rows["random (standard)"] == per_run  # untrained: no training curves
    assert rows["proxydr (ema)"] == per_run | {"training_curves"}
    # only a Poincaré model with hierarchical proxies has proxies near a boundary
    assert rows["proxy_anchor_hier (standard)"] == per_run | {"training_curves", "boundary_proxies"}
    assert len({figure.stem for figure in plan}) == len(plan)
    assert {figure.group for figure in plan} == {"maps", "plots"}


def test_runs_shown_are_the_first_seed_and_every_seed_for_training_curves():
    params = copy.deepcopy(DEFAULT)
    params["seeds"] = [3, 1, 2]
    plan = figure_plan(params)
    by_key = {(f.kind, f.label): f for f in plan}
    assert by_key[("embedding_map", "softmax (standard)")].runs == ("softmax-standard-s1",)
    curves = by_key[("training_curves", "softmax (standard)")].runs
    assert curves == ("softmax-standard-s1", "softmax-standard-s2", "softmax-standard-s3")


def test_a_grid_over_embedding_dimensions_gets_recall_against_dimension():
    params = copy.deepcopy(DEFAULT)
    params["models"]["softmax_128"] = {"loss": "softmax", "backbone": {"embedding_dim": 128}}
    params["runs"].append({"model": "softmax_128"})
    kinds = {figure.kind for figure in figure_plan(params)}
    assert kinds == set(KINDS)


def test_rendering_names_a_missing_run_output(tmp_path):
    from hierpipe.core.errors import HierpipeError
    from hierpipe.reporting.plots.render import render_figures

    missing = tmp_path / "shapes/softmax-standard-s1/config.yaml"
    with pytest.raises(HierpipeError, match=f"{missing}: file not found"):
        render_figures(DEFAULT, tmp_path, "plots")


def test_recall_against_dimension_draws_one_line_per_method_and_option(tmp_path):
    from PIL import Image

    from hierpipe.reporting.plots.canvas import save_figure
    from hierpipe.reporting.plots.plan import Figure
    from hierpipe.reporting.plots.render import DRAWERS, Experiment

    rows = [
        ("hier_deit128", "standard", "deit_small_patch16_224", 128, 0.70),
        ("hier_deit384", "standard", "deit_small_patch16_224", 384, 0.78),
        ("pa_deit128", "standard", "deit_small_patch16_224", 128, 0.65),
        ("pa_deit384", "standard", "deit_small_patch16_224", 384, 0.74),
    ]
    summary = pd.DataFrame(
        [
            {
                "dataset": "cub200",
                "model": model,
                "option": option,
                "loss": "proxy_anchor",
                "regularizer": "hier" if model.startswith("hier") else None,
                "backbone": backbone,
                "embedding_dim": dim,
                "retrieval/recall@1/mean": r1,
            }
            for model, option, backbone, dim, r1 in rows
        ]
    )
    summary.to_parquet(tmp_path / "summary.parquet")
    figure = Figure("recall_vs_dimension", "cub200", "figures/cub200/recall_vs_dimension")
    drawn = DRAWERS["recall_vs_dimension"](Experiment(tmp_path), figure)
    (axes,) = drawn.axes
    lines = {line.get_label(): line.get_xydata().tolist() for line in axes.get_lines()}
    assert lines == {"HIER De": [[128, 0.70], [384, 0.78]], "PA De": [[128, 0.65], [384, 0.74]]}
    png, _ = save_figure(drawn, tmp_path / "recall")
    with Image.open(png) as image:
        assert np.asarray(image.convert("L"), dtype=float).std() > 10
