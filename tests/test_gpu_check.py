"""benchmarks/gpu_check.py, the CUDA readiness check, on the CPU: every paper recipe trains
through hierpipe's own step, embeds through the export loop and retrieves, with the recipe's
settings; on a GPU machine the same script measures the CUDA path (docs/benchmarks.md)."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
gpu_check = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_check)


@pytest.mark.parametrize(
    "recipe,backbone,loss,batch,pixels,space",
    [
        ("resnet50_proxy_anchor_hier", "resnet50", "proxy_anchor", 180, 224, "poincare"),
        ("deit_s_hier", "deit_small_distilled_patch16_224", "proxy_anchor", 180, 224, "poincare"),
        ("vit_s_hier", "vit_small_patch16_224.augreg_in21k", "proxy_anchor", 180, 224, "poincare"),
        ("resnet50_proxydr", "resnet50", "proxydr", 32, 128, "sphere"),
    ],
)
def test_each_recipe_is_the_papers(recipe, backbone, loss, batch, pixels, space):
    config = gpu_check.recipe_config(recipe)
    assert (config.backbone.name, config.loss, config.head.space) == (backbone, loss, space)
    assert (config.train.batch_size, config.train.image_size) == (batch, pixels)
    assert (config.regularizer is not None) == (space == "poincare")  # HIER on the ball
    assert not config.backbone.pretrained and config.backbone.weights is None


@pytest.mark.slow
def test_the_check_runs_every_recipe_on_the_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    # batch 24: HIER mines its top 20 per row; one warm-up and one timed step each
    arguments = ["--device", "cpu", "--steps", "1", "--warmup", "1", "--batch-size", "24"]
    assert gpu_check.main([*arguments, "--export-items", "64", "--json", str(out)]) == 0
    report = {entry["recipe"]: entry for entry in json.loads(out.read_text())}
    assert set(report) == set(gpu_check.RECIPES)
    for entry in report.values():
        assert entry["amp"] == "off" and entry["batch"] == 24  # the CPU step is plain float32
        assert len(entry["losses"]) == 2 and all(math.isfinite(v) for v in entry["losses"])
        assert entry["nonfinite_steps"] == [] and entry["images_per_second"] > 0
        retrieval = entry["retrieval"]
        assert retrieval["equal"] and retrieval["device"] == retrieval["cpu"]
        assert 0 <= retrieval["cpu"]["map@r"] <= 1
    assert report["resnet50_proxy_anchor_hier"]["retrieval"]["distance"] == "poincare"
    assert report["resnet50_proxydr"]["retrieval"]["distance"] == "cosine"
