import pytest
from conftest import validated

from hierpipe.core.config import (
    RunConfig,
    check_params,
    read_run_config,
    resolve_run_config,
    write_run_config,
)
from hierpipe.core.errors import HierpipeError


def test_resolved_config_round_trips_through_yaml(tiny_params, tmp_path):
    config = resolve_run_config(validated(tiny_params), "shapes", "proxydr", "dynamic", 1)
    assert config.run_id == "proxydr-dynamic-s1"
    assert config.training_options == {"dynamic_scale": {}}
    assert config.hyperparameters == {"scale": 10.0}
    assert config.train.epochs == 2 and config.train.weight_decay == 0.0  # schema default
    split_name = "by_image-train50-val25-test25-seed0"
    assert str(config.split_path) == f"data/shapes/splits/{split_name}.parquet"
    write_run_config(config, tmp_path / "config.yaml")
    assert read_run_config(tmp_path / "config.yaml") == config
    # dict equality ignores order, but the split's name (and content) depend on it
    assert read_run_config(tmp_path / "config.yaml").split_path == config.split_path


def test_untrained_baseline_has_no_loss(tiny_params):
    config = resolve_run_config(validated(tiny_params), "shapes", "random", "standard", 1)
    assert not config.trained


def test_unknown_key_in_run_config_is_named(tiny_params):
    data = resolve_run_config(validated(tiny_params), "shapes", "softmax", "standard", 1).to_dict()
    data["train"]["learning_rate"] = 0.1
    with pytest.raises(HierpipeError, match=r"unknown key\(s\) \['learning_rate'\]"):
        RunConfig.from_dict(data)


def test_valid_params_pass(tiny_params):
    check_params(validated(tiny_params))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda p: p["models"]["softmax"].update(loss="arcface"),
            r"models\.softmax on shapes: loss is 'arcface'",
        ),
        (lambda p: p["runs"].append({"model": "hier"}), r"runs lists model 'hier'"),
        (
            lambda p: p["runs"].append({"model": "proxydr", "options": ["warmup"]}),
            r"option set 'warmup', which is not defined",
        ),
        (
            lambda p: p["runs"].append({"model": "corr"}),
            r"model 'corr' with option set 'standard'",
        ),
        (
            lambda p: p["runs"].append({"model": "random", "options": ["ema"]}),
            r"model 'random' is untrained",
        ),
        (
            lambda p: (
                p["options"].update(ema_mds={"ema": {}, "mds": {}})
                or p["runs"].append({"model": "proxydr", "options": ["ema_mds"]})
            ),
            r"ema",
        ),
        (lambda p: p["datasets"].update(imagenet21k={}), r"unknown dataset 'imagenet21k'"),
        (
            lambda p: p["models"]["proxydr"]["hyperparameters"].update(margin=0.1),
            r"models\.proxydr on shapes: unknown hyperparameter\(s\) 'margin'",
        ),
        (
            lambda p: p["datasets"]["shapes"]["split"]["fractions"].update(test=0.5),
            r"fractions sum to 1\.25",
        ),
    ],
)
def test_params_naming_things_that_do_not_exist_are_refused(tiny_params, edit, message):
    edit(tiny_params)
    with pytest.raises(HierpipeError, match=message):
        check_params(validated(tiny_params))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda p: p["backbone"].update(name="resnet9000"),
            r"shapes/softmax-standard-s1: models\.softmax: backbone\.name 'resnet9000' is not "
            r"a timm model name",
        ),
        (
            lambda p: p["models"]["softmax"].update(loss="normface", hyperparameters={"scale": -1}),
            r"shapes/softmax-standard-s1: models\.softmax: .*scale",
        ),
    ],
)
def test_values_only_the_classes_check_are_refused_before_training(tiny_params, edit, message):
    """Parsing (check_params) passes these: the catalog knows names, not valid values."""
    from hierpipe.train.check import check_run_components

    edit(tiny_params)
    params = validated(tiny_params)
    check_params(params)
    with pytest.raises(HierpipeError, match=message):
        check_run_components(resolve_run_config(params, "shapes", "softmax", "standard", 1))


def test_training_checks_the_components_before_it_reads_any_data(tiny_params, tmp_path):
    from hierpipe.train.engine import train_run

    tiny_params["backbone"]["name"] = "resnet9000"
    params = validated(tiny_params)
    config = resolve_run_config(params, "shapes", "softmax", "standard", 1, str(tmp_path))
    assert not (tmp_path / "shapes").exists()  # no data: reading it would fail differently
    with pytest.raises(HierpipeError, match=r"backbone\.name 'resnet9000' is not a timm model"):
        train_run(config, tmp_path / "model.pt", tmp_path / "log.parquet", tmp_path / "ckpt")
    assert not (tmp_path / "model.pt").exists()


def _hier(params: dict) -> dict:
    return params["models"]["pa_hier"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda p: _hier(p)["regularizer"]["hyperparameters"].update(topk=9, num_proxies=16),
            r"models\.pa_hier on shapes: regularizer 'hier' mines each sample's top-9 "
            r"neighbours, more than the batch of 8",
        ),
        (
            lambda p: _hier(p).update(head={"space": "sphere"}),
            r"models\.pa_hier on shapes: regularizer 'hier' measures in the Poincaré ball; "
            r"set head\.space",
        ),
        (
            lambda p: _hier(p)["regularizer"].update(name="hierarchy"),
            r"unknown regularizer 'hierarchy'; known regularizers: hier",
        ),
        (
            lambda p: _hier(p)["regularizer"]["hyperparameters"].update(curvature=0.5),
            r"unknown hyperparameter\(s\) 'curvature' for regularizer 'hier'",
        ),
        (
            lambda p: _hier(p)["train"].update(samples_per_class=3),
            r"batch_size 8 is not a multiple of train\.samples_per_class 3",
        ),
        (
            lambda p: p["models"]["hyp"].update(train={}),
            r"models\.hyp on shapes: loss 'hyp_pairwise' pairs the samples of each class",
        ),
        (
            lambda p: p["models"]["hyp"].update(head={"space": "sphere"}),
            r"loss 'hyp_pairwise' needs head space 'poincare', got 'sphere'",
        ),
        (
            lambda p: p["runs"].append({"model": "ms", "options": ["ema"]}),
            r"model 'ms' with option set 'ema': training options act on class proxies",
        ),
        (
            lambda p: p["models"]["random"].update(regularizer={"name": "hier"}),
            r"models\.random on shapes: an untrained model \(loss null\) takes no regularizer",
        ),
        (
            lambda p: p["evaluate"].update(distance="poincare"),
            r"models\.softmax on shapes: evaluate\.distance is poincare but the head space "
            r"is 'euclidean'",
        ),
    ],
)
def test_inconsistent_models_are_refused_before_any_job(tiny_params, edit, message):
    edit(tiny_params)
    with pytest.raises(HierpipeError, match=message):
        check_params(validated(tiny_params))


def test_curvature_of_the_head_must_be_positive(tiny_params):
    _hier(tiny_params)["head"]["curvature"] = 0.0
    with pytest.raises(HierpipeError, match=r"params: models\.pa_hier\.head\.curvature: 0\.0 is"):
        validated(tiny_params)  # the schema refuses it
    # and so does check_params, for params that did not pass through the schema
    _hier(tiny_params)["head"]["curvature"] = 0.1
    params = validated(tiny_params)
    _hier(params)["head"]["curvature"] = -1.0
    with pytest.raises(HierpipeError, match=r"models\.pa_hier on shapes: curvature: must be > 0"):
        check_params(params)


def test_model_settings_resolve_into_the_run_config(tiny_params):
    config = resolve_run_config(validated(tiny_params), "shapes", "pa_hier", "standard", 1)
    assert config.head.space == "poincare" and config.head.curvature == 0.1
    assert config.evaluate.distance == "poincare"
    assert config.regularizer.name == "hier" and config.regularizer.weight == 0.5
    # the model's train overrides the experiment's, key by key; unset groups default to 1
    assert config.train.optimizer == "adamw" and config.train.lr == 1.0e-3
    assert config.train.lr_multipliers == {
        "backbone": 1.0,
        "head": 1.0,
        "proxies": 100.0,
        "regularizer": 50.0,
    }
    softmax = resolve_run_config(validated(tiny_params), "shapes", "softmax", "standard", 1)
    assert softmax.head.space == "euclidean" and softmax.evaluate.distance == "cosine"
    assert softmax.regularizer is None and softmax.train.optimizer == "adam"


def test_datasets_and_models_override_settings_and_runs_pick_datasets(tiny_params):
    from hierpipe.core.config import grid

    shapes = tiny_params["datasets"]["shapes"]
    tiny_params["datasets"]["small"] = {**shapes, "train": {"epochs": 7, "lr": 0.5}}
    tiny_params["datasets"]["small"]["evaluate"] = {"subset": "val", "gallery": "test"}
    tiny_params["models"]["pa_hier"]["backbone"] = {"embedding_dim": 16}
    tiny_params["runs"] = [
        {"model": "pa_hier", "datasets": ["small"]},
        {"model": "softmax"},
    ]
    params = validated(tiny_params)
    assert [(d, m) for d, m, _, _ in grid(params)] == [
        ("small", "pa_hier"),
        ("shapes", "softmax"),
        ("small", "softmax"),
    ]
    config = resolve_run_config(params, "small", "pa_hier", "standard", 1)
    # experiment lr 1e-3 < dataset 0.5; the model's own train keys (optimizer) win over both
    assert (config.train.epochs, config.train.lr, config.train.optimizer) == (7, 0.5, "adamw")
    assert (config.evaluate.subset, config.evaluate.gallery) == ("val", "test")
    assert config.evaluate.distance == "poincare"
    assert config.backbone.embedding_dim == 16 and config.backbone.name == "test_resnet"
    softmax = resolve_run_config(params, "shapes", "softmax", "standard", 1)
    assert softmax.train.epochs == 2 and softmax.backbone.embedding_dim == 8
    del tiny_params["datasets"]["small"]  # not a registered dataset: only for resolving
    tiny_params["runs"][0]["datasets"] = ["cub"]
    with pytest.raises(HierpipeError, match=r"runs of model 'pa_hier' name dataset\(s\) \['cub'\]"):
        check_params(validated(tiny_params))
