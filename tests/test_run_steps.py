"""The steps of one run (train -> embed -> evaluate) on tiny shapes data, checked by value."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import validated

from hierpipe.artifacts import load_model
from hierpipe.config import SplitConfig, resolve_run_config
from hierpipe.data import make_split, prepare_dataset, read_classes
from hierpipe.embed import export_embeddings
from hierpipe.embeddings import read_embeddings, read_representatives, write_embeddings
from hierpipe.errors import HierpipeError
from hierpipe.evaluate import evaluate_run
from hierpipe.metrics import classwise_spearman, retrieval_metrics
from hierpipe.train import engine
from hierpipe.train.engine import train_run


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    from conftest import TINY_PARAMS

    root = tmp_path_factory.mktemp("data")
    shapes = TINY_PARAMS["datasets"]["shapes"]
    prepare_dataset("shapes", root / "shapes", shapes["prepare"])
    split = SplitConfig(**shapes["split"])
    make_split(root / "shapes", split.name, split.scheme, split.fractions, split.seed)
    return root


def _config(tiny_params, data_root, model="proxydr", epochs=2, option="standard"):
    tiny_params["train"]["epochs"] = epochs
    params = validated(tiny_params)
    return resolve_run_config(params, "shapes", model, option, 1, data_root=str(data_root))


def _state_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    ("model", "option"),
    [
        ("proxydr", "standard"),
        ("proxydr", "ema"),
        ("proxydr", "dynamic"),
        ("proxydr", "mds"),
        ("pa_hier", "standard"),  # Gumbel draws, hierarchical proxies, warm-up, BN freezing
        ("hyp", "standard"),  # class-balanced batches, validation by retrieval
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
