"""GPU readiness check: the CUDA path of training, embedding export and retrieval, for real.

For each paper recipe (params/hier.yaml: ResNet-50 224 px with Proxy Anchor + HIER, DeiT-S and
ViT-S with HIER; params/proxydr.yaml: ProxyDR with ResNet-50), a few hundred steps of
hierpipe's own training step (`hierpipe.train.engine.train_step`: autocast in bfloat16 or
float16 with a GradScaler, channels-last, pinned host batches copied asynchronously) on
synthetic images of the recipe's size and batch, from random weights (no weights file is
needed). It prints images per second, peak GPU memory, the loss trajectory and every
non-finite step. Then it embeds synthetic images through the export's own loop
(`hierpipe.evaluation.export.embed_batches`), maps them into the recipe's space, and checks
that the retrieval measures (Poincaré distance for HIER's ball) and the nearest neighbours are
the same computed on the GPU as on the CPU. Target (issue: speed): at least 2,000 images/s for
the ResNet-50 step on an H100.

Usage: python benchmarks/gpu_check.py [--steps 300] [--recipes NAME ...] [--json OUT]
On a machine without CUDA it runs on the CPU (``--device cpu``), which is what the tests do
with a handful of steps and a small batch: the same code paths except the CUDA-only ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from hierpipe.core.config import resolve_run_config, validate_params
from hierpipe.evaluation.export import embed_batches
from hierpipe.evaluation.metrics import nearest_neighbours, retrieval_metrics
from hierpipe.train.accelerator import Accelerator
from hierpipe.train.artifacts import build_network
from hierpipe.train.engine import build_optimizer, seed_everything, set_learning_rates, train_step
from hierpipe.train.options import build_options

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow/schemas/params.schema.yaml"
# name: (params file, dataset, model) of each paper recipe checked
RECIPES = {
    "resnet50_proxy_anchor_hier": ("params/hier.yaml", "cub200", "hier_r50_cub"),
    "deit_s_hier": ("params/hier.yaml", "cub200", "hier_deit384"),
    "vit_s_hier": ("params/hier.yaml", "cub200", "hier_vit384"),
    "resnet50_proxydr": ("params/proxydr.yaml", "nabirds", "proxydr"),
}
CLASSES = 100  # CUB's training classes; enough for every loss's proxies
DEFAULT_IMAGE_SIZE = 224  # a recipe that keeps the images' own size (CIFAR-100: 32)
TARGET_IMAGES_PER_SECOND = 2000  # the ResNet-50 HIER step on an H100
ATOL = 1e-6  # retrieval measures are means of 0/1 decisions and ranks; equal up to rounding


def recipe_config(name: str, batch_size: int | None = None, image_size: int | None = None):
    """The recipe's run config, from random weights; batch and image size overridable."""
    params_file, dataset, model = RECIPES[name]
    params = validate_params(yaml.safe_load((REPO / params_file).read_text()), SCHEMA)
    config = resolve_run_config(params, dataset, model, "standard", 0)
    train = config.train
    if batch_size is not None:
        train = dataclasses.replace(train, batch_size=batch_size)
    if image_size is not None:
        train = dataclasses.replace(train, image_size=image_size)
    backbone = dataclasses.replace(config.backbone, pretrained=False, weights=None)
    return dataclasses.replace(config, train=train, backbone=backbone)


def synthetic_batch(config, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images of the recipe's size and labels in its batch structure (classes x
    samples per class), on the host, pinned when a GPU will copy them."""
    settings = config.train
    per_class = settings.samples_per_class or 1
    classes = torch.randperm(CLASSES, generator=generator)[: settings.batch_size // per_class]
    labels = classes.repeat_interleave(per_class)
    size = settings.image_size or DEFAULT_IMAGE_SIZE
    images = torch.randn(len(labels), 3, size, size, generator=generator)
    if torch.cuda.is_available():
        images = images.pin_memory()
    return images, labels


def train_recipe(name: str, device: torch.device, steps: int, warmup: int, **sizes) -> dict:
    """Images per second, peak memory and the loss of every step of one recipe."""
    config = recipe_config(name, **sizes)
    seed_everything(config.seed)
    accelerator = Accelerator.for_device(device)
    net, objective = build_network(config, CLASSES)
    accelerator.prepare(net)
    objective.to(device)
    options = build_options(config.training_options, config.loss)
    optimizer = build_optimizer(config.train, net, objective)
    # past the backbone's warm-up epochs, so that every parameter group learns
    set_learning_rates(optimizer, config.train, config.train.warmup_epochs)
    net.train()
    objective.train()
    generator = torch.Generator().manual_seed(config.seed)
    batches = [synthetic_batch(config, generator) for _ in range(4)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    losses: list[float | None] = []
    started = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            _synchronize(device)
            started = time.perf_counter()
        images, labels = batches[step % len(batches)]
        value = train_step(
            config, net, objective, optimizer, options, accelerator, images, labels, f"step {step}"
        )
        losses.append(None if value is None else value.item())
    _synchronize(device)
    seconds = time.perf_counter() - started
    timed = losses[warmup:]
    return {
        "recipe": name,
        "backbone": config.backbone.name,
        "loss": config.loss + (f" + {config.regularizer.name}" if config.regularizer else ""),
        "batch": config.train.batch_size,
        "image_size": config.train.image_size or DEFAULT_IMAGE_SIZE,
        "amp": str(accelerator.amp_dtype).removeprefix("torch.")
        if accelerator.amp_dtype
        else "off",
        "images_per_second": steps * config.train.batch_size / seconds,
        "peak_memory_gb": torch.cuda.max_memory_allocated(device) / 2**30
        if device.type == "cuda"
        else float("nan"),
        "losses": losses,
        "nonfinite_steps": [i for i, v in enumerate(losses) if v is None or not math.isfinite(v)],
        "first_loss": timed[0] if timed else None,
        "last_loss": timed[-1] if timed else None,
        "net": net,
        "config": config,
    }


def compare_devices(
    embedding: torch.Tensor, labels: torch.Tensor, device: torch.device, space: dict[str, Any]
) -> dict[str, Any]:
    """The retrieval measures and the 10 nearest neighbours of the same embeddings, computed
    on ``device`` and on the CPU; ``equal`` when every measure agrees to ATOL and the
    neighbour lists agree (a tie may swap two equally distant neighbours)."""
    on_device = retrieval_metrics(embedding.to(device), labels.to(device), **space)
    on_cpu = retrieval_metrics(embedding.cpu(), labels.cpu(), **space)
    differences = {k: abs(on_device[k] - on_cpu[k]) for k in on_cpu}
    neighbours_device = nearest_neighbours(embedding.to(device), 10, **space)
    neighbours_cpu = nearest_neighbours(embedding.cpu(), 10, **space)
    same_neighbours = float(np.mean(neighbours_device == neighbours_cpu))
    return {
        "device": on_device,
        "cpu": on_cpu,
        "largest_difference": max(differences.values()),
        "same_neighbour_fraction": same_neighbours,
        "equal": max(differences.values()) <= ATOL and same_neighbours >= 0.999,
    }


def export_and_retrieve(result: dict, device: torch.device, items: int) -> dict[str, Any]:
    """Embed ``items`` synthetic images of the recipe's size through the export loop on
    ``device``, then compare retrieval on ``device`` with the CPU in the recipe's space."""
    config, net = result["config"], result["net"].eval()
    generator = torch.Generator().manual_seed(1)
    size = config.train.image_size or DEFAULT_IMAGE_SIZE
    labels = torch.randint(0, CLASSES, (items,), generator=generator)
    batches = (
        torch.randn(min(256, items - start), 3, size, size, generator=generator)
        for start in range(0, items, 256)
    )
    _synchronize(device)
    started = time.perf_counter()
    embedding, _ = embed_batches(net, None, batches, device)
    _synchronize(device)
    seconds = time.perf_counter() - started
    # random weights embed every image alike; spreading them by class keeps retrieval honest
    embedding = embedding + 0.5 * torch.randn(CLASSES, embedding.shape[1])[labels]
    head = config.head
    if head.space == "poincare":
        from hierpipe.core.geometry import to_poincare

        embedding = to_poincare(embedding.double(), head.curvature, clip_r=head.clip_r)
        space = {"distance": "poincare", "curvature": head.curvature}
    else:
        space = {"distance": "cosine"}
    return {
        "export_images_per_second": items / seconds,
        "distance": space["distance"],
        **compare_devices(embedding, labels, device, space),
    }


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--recipes", nargs="+", choices=sorted(RECIPES), default=list(RECIPES))
    parser.add_argument("--batch-size", type=int, help="instead of the recipe's (CPU tests)")
    parser.add_argument("--image-size", type=int, help="instead of the recipe's (CPU tests)")
    parser.add_argument("--export-items", type=int, default=2048, help="images embedded")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)}, torch {torch.__version__}")
    else:
        print(f"device: CPU ({torch.get_num_threads()} threads), torch {torch.__version__}")
    header = f"{'recipe':<28}{'batch':>6}{'px':>5}{'amp':>10}{'img/s':>9}{'peak GB':>9}"
    print(header + f"{'loss first -> last':>24}{'non-finite':>11}")
    report, failures = [], []
    sizes = {"batch_size": args.batch_size, "image_size": args.image_size}
    for name in args.recipes:
        result = train_recipe(name, device, args.steps, args.warmup, **sizes)
        retrieval = export_and_retrieve(result, device, args.export_items)
        print(
            f"{name:<28}{result['batch']:>6}{result['image_size']:>5}{result['amp']:>10}"
            f"{result['images_per_second']:>9.1f}{result['peak_memory_gb']:>9.2f}"
            f"{result['first_loss']:>12.4f} -> {result['last_loss']:<9.4f}"
            f"{len(result['nonfinite_steps']):>11}"
        )
        trajectory = result["losses"][args.warmup :: max(1, args.steps // 10)]
        print(
            "  loss every tenth:", " ".join("nan" if v is None else f"{v:.3f}" for v in trajectory)
        )
        print(
            f"  export {retrieval['export_images_per_second']:.0f} img/s; {retrieval['distance']}"
            f" retrieval on {device.type} vs CPU: largest difference "
            f"{retrieval['largest_difference']:.1e}, same neighbours "
            f"{retrieval['same_neighbour_fraction']:.4f}"
        )
        if result["nonfinite_steps"]:
            failures.append(f"{name}: non-finite steps {result['nonfinite_steps'][:10]}")
        if not retrieval["equal"]:
            failures.append(f"{name}: retrieval differs between {device.type} and the CPU")
        result = {k: v for k, v in result.items() if k not in ("net", "config")}
        report.append({**result, "retrieval": retrieval})
    resnet = [r for r in report if r["recipe"] == "resnet50_proxy_anchor_hier"]
    if resnet and device.type == "cuda":
        rate = resnet[0]["images_per_second"]
        print(
            f"ResNet-50 HIER step: {rate:.0f} img/s, target {TARGET_IMAGES_PER_SECOND}: "
            f"{'met' if rate >= TARGET_IMAGES_PER_SECOND else 'NOT met'}"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    for failure in failures:
        print("FAILED:", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
