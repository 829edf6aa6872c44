"""The steps of one run (train -> embed -> evaluate) on tiny shapes data, checked by value."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import validated

from hierpipe.cli import main as cli_main
from hierpipe.core import catalog
from hierpipe.core.config import resolve_run_config
from hierpipe.core.errors import HierpipeError
from hierpipe.data import read_classes
from hierpipe.evaluation.embedding_files import (
    read_embeddings,
    read_representatives,
    write_embeddings,
)
from hierpipe.evaluation.evaluate import evaluate_run
from hierpipe.evaluation.export import export_embeddings
from hierpipe.evaluation.metrics import classwise_spearman, retrieval_metrics
from hierpipe.train import engine
from hierpipe.train.artifacts import load_model
from hierpipe.train.engine import train_run


def _config(tiny_params, data_root, model="proxydr", epochs=2, option="standard"):
    tiny_params["train"]["epochs"] = epochs
    params = validated(tiny_params)
    return resolve_run_config(params, "shapes", model, option, 1, data_root=str(data_root))


def _state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_that_cannot_be_written_stops_the_run(
    tiny_params, data_root, tmp_path, monkeypatch
):
    # checkpoints are written on a background thread: its error reaches the run, once
    def disk_full(payload, path):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(engine, "save_torch_atomic", disk_full)
    config = _config(tiny_params, data_root, epochs=2)
    with pytest.raises(OSError, match="No space left on device"):
        train_run(config, tmp_path / "model.pt", tmp_path / "log.parquet", tmp_path / "ckpt")
    assert not (tmp_path / "model.pt").exists()
    monkeypatch.undo()
    # the error does not outlive its run: the next one trains and writes its model
    train_run(config, tmp_path / "model.pt", tmp_path / "log.parquet", tmp_path / "ckpt")
    assert (tmp_path / "model.pt").is_file()


@pytest.mark.parametrize(
    ("model", "option"),
    [
        ("proxydr", "standard"),
        ("proxydr", "ema"),
        ("proxydr", "dynamic"),
        ("proxydr", "mds"),
        ("pa_hier", "standard"),  # Gumbel draws, hierarchical proxies, warm-up, BN freezing
        ("hyp", "standard"),  # class-balanced batches, validation by retrieval
        ("proxydr_hiersph", "dynamic"),  # HIER on the sphere, beside a training option
    ],
)
def test_training_is_deterministic_and_resumes_bitwise(
    tiny_params, data_root, tmp_path, monkeypatch, model, option
):
    config = _config(tiny_params, data_root, epochs=3, model=model, option=option)
    train_run(config, tmp_path / "a/model.pt", tmp_path / "a/log.parquet", tmp_path / "a/ckpt")
    train_run(config, tmp_path / "b/model.pt", tmp_path / "b/log.parquet", tmp_path / "b/ckpt")
    first = torch.load(tmp_path / "a/model.pt", weights_only=True)
    assert _state_equal(first["net"], torch.load(tmp_path / "b/model.pt", weights_only=True)["net"])
    # the files too, byte for byte (DVC hashes them)
    assert (tmp_path / "a/model.pt").read_bytes() == (tmp_path / "b/model.pt").read_bytes()

    # interrupt the third run after its second epoch's checkpoint, then rerun it
    real_save = engine._save_checkpoint

    def save_then_die(*args):
        real_save(*args)
        if args[-1]["epoch"] == 2:  # the engine's state, saved after the second epoch
            raise KeyboardInterrupt("simulated kill")

    monkeypatch.setattr(engine, "_save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_run(config, tmp_path / "c/model.pt", tmp_path / "c/log.parquet", tmp_path / "c/ckpt")
    assert not (tmp_path / "c/model.pt").exists()
    assert (tmp_path / "c/ckpt/last.pt").exists()
    monkeypatch.setattr(engine, "_save_checkpoint", real_save)
    train_run(config, tmp_path / "c/model.pt", tmp_path / "c/log.parquet", tmp_path / "c/ckpt")

    resumed = torch.load(tmp_path / "c/model.pt", weights_only=True)
    assert _state_equal(first["net"], resumed["net"])
    assert _state_equal(first["objective"], resumed["objective"])
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "a/log.parquet"), pd.read_parquet(tmp_path / "c/log.parquet")
    )
    assert not (tmp_path / "c/ckpt").exists()


def test_model_selection_keeps_the_best_validation_epoch(tiny_params, data_root, tmp_path):
    config = _config(tiny_params, data_root, epochs=3)
    train_run(config, tmp_path / "model.pt", tmp_path / "log.parquet", tmp_path / "ckpt")
    log = pd.read_parquet(tmp_path / "log.parquet")
    assert log["epoch"].tolist() == [1, 2, 3]
    best = int(log.loc[log["val_top1"].idxmax(), "epoch"])  # idxmax: the first of equal maxima
    assert load_model(tmp_path / "model.pt").epoch == best


@pytest.fixture(scope="module")
def exported(data_root, tmp_path_factory):
    import copy

    from conftest import TINY_PARAMS

    config = _config(copy.deepcopy(TINY_PARAMS), data_root)
    out = tmp_path_factory.mktemp("run")
    train_run(config, out / "model.pt", out / "log.parquet", out / "ckpt")
    export_embeddings(out / "model.pt", out / "embeddings.parquet", out / "representatives.parquet")
    return config, out


def test_embeddings_cover_the_split_and_match_the_network(exported):
    config, out = exported
    embeddings = read_embeddings(out / "embeddings.parquet")
    split = pd.read_parquet(config.split_path)
    assert sorted(embeddings.sample_id) == sorted(split["sample_id"])
    assert embeddings.embedding.dtype == np.float32
    assert embeddings.embedding.shape[1] == config.backbone.embedding_dim
    np.testing.assert_allclose(np.linalg.norm(embeddings.embedding, axis=1), 1.0, atol=1e-5)
    # logits are the loss's own scores of the stored embeddings
    trained = load_model(out / "model.pt")
    with torch.no_grad():
        logits = trained.objective.loss.logits(torch.from_numpy(embeddings.embedding)).numpy()
    np.testing.assert_allclose(embeddings.logits, logits, rtol=1e-4, atol=1e-4)


def test_prototypes_are_renormalised_means_of_training_embeddings(exported):
    _, out = exported
    embeddings = read_embeddings(out / "embeddings.parquet")
    reps = read_representatives(out / "representatives.parquet")
    prototypes = reps[reps["kind"] == "prototype"].set_index("class_id")
    for class_id in np.unique(embeddings.label):
        rows = (embeddings.label == class_id) & (embeddings.split == "train")
        mean = embeddings.embedding[rows].astype(np.float64).mean(axis=0)
        np.testing.assert_allclose(
            prototypes.loc[class_id, "vector"], mean / np.linalg.norm(mean), atol=1e-6
        )
    assert set(reps["kind"]) == {"proxy", "prototype"}


def test_metrics_agree_with_direct_computations(exported, tmp_path):
    config, out = exported
    metrics = evaluate_run(
        config, out / "embeddings.parquet", out / "representatives.parquet", tmp_path / "m.json"
    )
    embeddings = read_embeddings(out / "embeddings.parquet")
    test = embeddings.split == "test"
    predicted = np.asarray(embeddings.classifier_class_ids)[embeddings.logits[test].argmax(axis=1)]
    labels = embeddings.label[test]
    assert metrics["classification/logits/top1"] == pytest.approx(np.mean(predicted == labels))
    tree_dist = read_classes(config.data_dir).distance_matrix()
    assert metrics["classification/logits/ahc"] == pytest.approx(
        tree_dist[predicted, labels].mean()
    )
    retrieval = retrieval_metrics(embeddings.embedding[test], labels, ks=(1, 2))
    assert metrics["retrieval/recall@1"] == pytest.approx(retrieval["recall@1"])
    reps = read_representatives(out / "representatives.parquet")
    proxies = np.stack(reps[reps["kind"] == "proxy"]["vector"].to_numpy()).astype(np.float64)
    chord = np.sqrt(np.clip(2 - 2 * proxies @ proxies.T, 0, None))
    rho, _ = classwise_spearman(chord, tree_dist, include_self=True)
    assert metrics["hierarchy/proxy/classwise_spearman"] == pytest.approx(rho, abs=1e-6)
    written = json.loads((tmp_path / "m.json").read_text())
    assert (
        written["run"] == "proxydr-standard-s1"
        and written["metrics"]["retrieval/recall@1"] is not None
    )


def test_every_measure_evaluation_writes_is_declared(exported, exported_hier, tmp_path):
    """The measure registry (hierpipe.core.catalog.MEASURES) that gives tables their column
    titles and directions declares each measure written, and nothing never written."""
    written = set()
    for index, (config, out) in enumerate((exported, exported_hier)):
        representatives = out / "representatives.parquet"
        metrics = tmp_path / f"{index}.json"
        written |= set(evaluate_run(config, out / "embeddings.parquet", representatives, metrics))
    assert {catalog.measure_key(measure) for measure in written} == set(catalog.MEASURES)


def test_measure_reproduces_a_runs_classifier_free_measures(exported, tmp_path):
    """`hierpipe measure` on a run's own exported files: the measures that need no classifier
    equal the run's evaluation, value for value, and the tables and tree figure are written."""
    config, out = exported
    run_metrics = evaluate_run(
        config, out / "embeddings.parquet", out / "representatives.parquet", tmp_path / "m.json"
    )
    measured = tmp_path / "measured"
    argv = ["measure", str(out / "embeddings.parquet"), "--tree", config.data_dir]
    argv += ["--out-dir", str(measured), "--representatives", str(out / "representatives.parquet")]
    assert cli_main([*argv, "--seed", str(config.seed), "--name", "proxydr"]) == 0
    got = json.loads((measured / "metrics.json").read_text())["metrics"]
    expected = {
        name: value
        for name, value in run_metrics.items()
        if not name.startswith("classification/logits/")
    }
    assert expected.keys() <= got.keys()  # and Recall@k for more k, by measure's defaults
    for name, value in expected.items():
        assert got[name] == (None if math.isnan(value) else value), name
    assert "| proxydr (standard) |" in (measured / "summary.md").read_text()
    assert (measured / "figures/tree_comparison.png").stat().st_size > 0


def test_nan_embeddings_are_refused_at_evaluation(exported, tmp_path):
    import pyarrow.parquet as pq

    config, out = exported
    table = pq.read_table(out / "embeddings.parquet")
    embeddings = read_embeddings(out / "embeddings.parquet")
    embeddings.embedding[3] = np.nan

    write_embeddings(embeddings, tmp_path / "bad.parquet")
    assert pq.read_table(tmp_path / "bad.parquet").num_rows == table.num_rows
    with pytest.raises(
        HierpipeError, match=r"bad\.parquet column 'embedding': 1 row\(s\) with NaN"
    ):
        evaluate_run(
            config, tmp_path / "bad.parquet", out / "representatives.parquet", tmp_path / "m.json"
        )
    assert not (tmp_path / "m.json").exists()


def test_corrupt_png_fails_training_naming_the_file(tiny_params, data_root, tmp_path):
    import shutil

    copy_root = tmp_path / "data"
    shutil.copytree(data_root, copy_root)
    samples = pd.read_parquet(copy_root / "shapes/samples.parquet")
    split = pd.read_parquet(_config(tiny_params, copy_root).split_path)
    train_ids = split.loc[split["subset"] == "train", "sample_id"]
    victim = copy_root / "shapes" / samples.set_index("sample_id").loc[train_ids.iloc[0], "path"]
    victim.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    config = _config(tiny_params, copy_root)
    with pytest.raises(HierpipeError, match=rf"cannot read image .*{victim.name}"):
        train_run(config, tmp_path / "model.pt", tmp_path / "log.parquet", tmp_path / "ckpt")
    assert not (tmp_path / "model.pt").exists() and not (tmp_path / "log.parquet").exists()


def test_untrained_baseline_writes_initial_weights(tiny_params, data_root, tmp_path):
    config = _config(tiny_params, data_root, model="random")
    train_run(config, tmp_path / "model.pt", tmp_path / "log.parquet", tmp_path / "ckpt")
    trained = load_model(tmp_path / "model.pt")
    assert trained.objective is None and trained.epoch == 0
    assert pd.read_parquet(tmp_path / "log.parquet").empty


@pytest.fixture(scope="module")
def exported_hier(data_root, tmp_path_factory):
    import copy

    from conftest import TINY_PARAMS

    config = _config(copy.deepcopy(TINY_PARAMS), data_root, model="pa_hier")
    out = tmp_path_factory.mktemp("hier_run")
    train_run(config, out / "model.pt", out / "log.parquet", out / "ckpt")
    export_embeddings(out / "model.pt", out / "embeddings.parquet", out / "representatives.parquet")
    return config, out


def test_hier_run_exports_its_hierarchical_proxies_and_ball_prototypes(exported_hier):
    from hierpipe.core.geometry import poincare_ball

    config, out = exported_hier
    trained = load_model(out / "model.pt")
    reps = read_representatives(out / "representatives.parquet")
    assert set(reps["kind"]) == {"proxy", "prototype", "ball_prototype", "hier_proxy"}
    hier = reps[reps["kind"] == "hier_proxy"]
    np.testing.assert_array_equal(hier["class_id"], np.arange(8))  # num_proxies in tiny params
    expected = trained.objective.regularizer.hierarchical_proxies().numpy()
    np.testing.assert_allclose(np.stack(hier["vector"].to_numpy()), expected, atol=1e-6)
    # the head maps into the ball of curvature 0.1: every embedding is inside it
    embeddings = read_embeddings(out / "embeddings.parquet")
    assert (np.linalg.norm(embeddings.embedding, axis=1) < 1 / np.sqrt(0.1)).all()
    ball = poincare_ball(config.head.curvature)
    balls = reps[reps["kind"] == "ball_prototype"].set_index("class_id")
    for class_id in np.unique(embeddings.label):
        rows = (embeddings.label == class_id) & (embeddings.split == "train")
        points = torch.from_numpy(embeddings.embedding[rows]).double()
        midpoint = ball.weighted_midpoint(points, reducedim=[0]).numpy()
        np.testing.assert_allclose(balls.loc[class_id, "vector"], midpoint, atol=1e-6)


def test_hier_run_is_evaluated_in_the_ball(exported_hier, tmp_path):
    from hierpipe.evaluation.metrics import induced_tree_measures

    config, out = exported_hier
    assert config.evaluate.distance == "poincare"  # `auto` for a Poincaré head
    metrics = evaluate_run(
        config, out / "embeddings.parquet", out / "representatives.parquet", tmp_path / "m.json"
    )
    embeddings = read_embeddings(out / "embeddings.parquet")
    test = embeddings.split == "test"
    retrieval = retrieval_metrics(
        embeddings.embedding[test],
        embeddings.label[test],
        ks=(1, 2),
        distance="poincare",
        curvature=0.1,
        dtype=torch.float64,
    )
    assert metrics["retrieval/recall@1"] == pytest.approx(retrieval["recall@1"])
    reps = read_representatives(out / "representatives.parquet")
    tree = read_classes(config.data_dir)
    ball = reps[reps["kind"] == "ball_prototype"].sort_values("class_id")
    induced = induced_tree_measures(
        np.stack(ball["vector"].to_numpy()),
        np.stack(reps[reps["kind"] == "hier_proxy"]["vector"].to_numpy()),
        tree,
        "poincare",
        0.1,
    )
    for name, value in induced.items():
        got = metrics[f"hierarchy/hier_proxy/{name}"]
        assert got == pytest.approx(value, nan_ok=True), name
    assert "hierarchy/ball_prototype/classwise_spearman" in metrics


def test_regularised_log_reports_both_terms(exported_hier):
    _, out = exported_hier
    log = pd.read_parquet(out / "log.parquet")
    terms = log["train_loss_term"] + 0.5 * log["train_regularizer_term"]
    np.testing.assert_allclose(log["train_loss"], terms, rtol=1e-5)
    assert (log["regularizer_sample_triplets"] > 0).all()


def test_pair_based_loss_is_validated_by_retrieval(tiny_params, data_root, tmp_path):
    config = _config(tiny_params, data_root, model="ms", epochs=2)
    train_run(config, tmp_path / "model.pt", tmp_path / "log.parquet", tmp_path / "ckpt")
    log = pd.read_parquet(tmp_path / "log.parquet")
    assert "val_top1" not in log and log["val_recall_at_1"].between(0, 1).all()
    export_embeddings(
        tmp_path / "model.pt", tmp_path / "embeddings.parquet", tmp_path / "reps.parquet"
    )
    assert read_embeddings(tmp_path / "embeddings.parquet").logits is None
    assert set(read_representatives(tmp_path / "reps.parquet")["kind"]) == {"prototype"}
    metrics = evaluate_run(
        config, tmp_path / "embeddings.parquet", tmp_path / "reps.parquet", tmp_path / "m.json"
    )
    assert "classification/prototype/top1" in metrics
    assert not any(name.startswith("classification/logits") for name in metrics)


def _initial_network(config):
    from hierpipe.train.artifacts import build_network

    engine.seed_everything(config.seed)
    return build_network(config, 8)[0].state_dict()


def test_warm_up_keeps_the_backbone_and_freeze_bn_its_statistics(tiny_params, data_root, tmp_path):
    tiny_params["models"]["pa_hier"]["train"].update(warmup_epochs=1, freeze_bn=True)
    config = _config(tiny_params, data_root, model="pa_hier", epochs=1)
    train_run(config, tmp_path / "model.pt", tmp_path / "log.parquet", tmp_path / "ckpt")
    initial = _initial_network(config)
    trained = torch.load(tmp_path / "model.pt", weights_only=True)["net"]
    backbone = [k for k in initial if k.startswith("backbone.")]
    assert any("running_mean" in k for k in backbone)
    assert all(torch.equal(initial[k], trained[k]) for k in backbone)
    assert not torch.equal(initial["head.weight"], trained["head.weight"])

    # without either, the backbone's weights and BatchNorm statistics move
    tiny_params["models"]["pa_hier"]["train"].update(warmup_epochs=0, freeze_bn=False)
    config = _config(tiny_params, data_root, model="pa_hier", epochs=1)
    train_run(config, tmp_path / "b/model.pt", tmp_path / "b/log.parquet", tmp_path / "b/ckpt")
    trained = torch.load(tmp_path / "b/model.pt", weights_only=True)["net"]
    moved = [k for k in backbone if not torch.equal(initial[k], trained[k])]
    assert any("running_mean" in k for k in moved) and any(k.endswith("weight") for k in moved)


def test_gradient_elements_are_clamped_before_the_step(
    tiny_params, data_root, tmp_path, monkeypatch
):
    bound = 2.0**-10  # exact in float32
    tiny_params["models"]["pa_hier"]["train"]["grad_clamp"] = bound
    config = _config(tiny_params, data_root, model="pa_hier", epochs=1)
    largest = []
    real_step = torch.optim.AdamW.step

    def record_then_step(self, *args, **kwargs):
        grads = [p.grad.abs().max() for g in self.param_groups for p in g["params"]]
        largest.append(max(float(g) for g in grads))
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", record_then_step)
    train_run(config, tmp_path / "model.pt", tmp_path / "log.parquet", tmp_path / "ckpt")
    assert largest and max(largest) == bound  # some elements were larger, all are clamped


def test_non_finite_gradient_is_an_error_before_the_step(
    tiny_params, data_root, tmp_path, monkeypatch
):
    from hierpipe.train import artifacts

    config = _config(tiny_params, data_root, model="pa_hier", epochs=1)
    real_build = artifacts.build_network

    def poisoned(*args, **kwargs):
        net, objective = real_build(*args, **kwargs)
        # a finite loss whose gradient is NaN, as at a point on the ball's boundary
        net.head.weight.register_hook(lambda grad: grad * math.nan)
        return net, objective

    monkeypatch.setattr(engine, "build_network", poisoned)
    with pytest.raises(HierpipeError, match=r"step 1: non-finite gradient in .*'head'"):
        train_run(config, tmp_path / "model.pt", tmp_path / "log.parquet", tmp_path / "ckpt")
    assert not (tmp_path / "model.pt").exists()


def test_queries_retrieve_from_a_gallery_subset(exported, tmp_path):
    from dataclasses import replace

    config, out = exported
    config = replace(config, evaluate=replace(config.evaluate, subset="test", gallery="val"))
    metrics = evaluate_run(
        config, out / "embeddings.parquet", out / "representatives.parquet", tmp_path / "m.json"
    )
    embeddings = read_embeddings(out / "embeddings.parquet")
    query, gallery = embeddings.split == "test", embeddings.split == "val"
    expected = retrieval_metrics(
        embeddings.embedding[query],
        embeddings.label[query],
        embeddings.embedding[gallery],
        embeddings.label[gallery],
        ks=(1, 2),
    )
    assert metrics["retrieval/recall@1"] == pytest.approx(expected["recall@1"])
    assert metrics["retrieval/map@r"] == pytest.approx(expected["map@r"])
    # every gallery item can be a neighbour: nothing is excluded as "self"
    assert metrics["retrieval/ahs_k"] == min(250, gallery.sum())
    with pytest.raises(HierpipeError, match=r"evaluate\.gallery: no samples in subset 'query'"):
        evaluate_run(
            replace(config, evaluate=replace(config.evaluate, gallery="query")),
            out / "embeddings.parquet",
            out / "representatives.parquet",
            tmp_path / "m2.json",
        )


def _poison_regularizer_once(monkeypatch, call: int) -> None:
    """The HIER term is NaN on its `call`-th evaluation (counting from 1), finite otherwise."""
    from hierpipe.losses.hier import HIERLoss

    real_forward = HIERLoss.forward
    calls = []

    def forward(self, embeddings, labels):
        calls.append(1)
        value = real_forward(self, embeddings, labels)
        return value * math.nan if len(calls) == call else value

    monkeypatch.setattr(HIERLoss, "forward", forward)


def test_non_finite_loss_stops_naming_epoch_step_and_terms(
    tiny_params, data_root, tmp_path, monkeypatch
):
    config = _config(tiny_params, data_root, model="pa_hier", epochs=2)
    steps_per_epoch = len(pd.read_parquet(config.split_path).query("subset == 'train'")) // 8
    _poison_regularizer_once(monkeypatch, call=steps_per_epoch + 2)  # epoch 2, step 2
    with pytest.raises(
        HierpipeError,
        match=r"epoch 2, step 2: non-finite loss nan \(loss proxy_anchor; loss [0-9.]+, "
        r"regularizer nan\); the last good checkpoint is kept",
    ):
        train_run(config, tmp_path / "model.pt", tmp_path / "log.parquet", tmp_path / "ckpt")
    assert not (tmp_path / "model.pt").exists()
    kept = torch.load(tmp_path / "ckpt/last.pt", weights_only=True)
    assert kept["state"]["epoch"] == 1  # the checkpoint of the last completed epoch


def test_skip_policy_leaves_non_finite_steps_out_and_counts_them(
    tiny_params, data_root, tmp_path, monkeypatch
):
    tiny_params["models"]["pa_hier"]["train"]["on_nonfinite"] = "skip"
    config = _config(tiny_params, data_root, model="pa_hier", epochs=2)
    _poison_regularizer_once(monkeypatch, call=1)
    train_run(config, tmp_path / "model.pt", tmp_path / "log.parquet", tmp_path / "ckpt")
    log = pd.read_parquet(tmp_path / "log.parquet")
    assert log["skipped_steps"].tolist() == [1.0, 0.0]
    assert np.isfinite(log["train_loss"]).all()
