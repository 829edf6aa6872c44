"""Training throughput of `hierpipe train` against a bare PyTorch loop doing the same work.

Both train the default experiment's softmax model (resnet10t, 64-d sphere head, Adam, batch
64) on the same `shapes` training images for the same epochs, one thread each. The bare loop
is the baseline measured in the same run: the same dataset object, network and loss, a
shuffled DataLoader, forward, backward, step. hierpipe adds what a real run needs: finite
loss and gradient checks, per-epoch checkpoints, the kept best state, the training log.
Target (issue: speed): hierpipe at least 0.97 of the bare loop's images per second.
Each is run `--repeats` times in adjacent pairs, the order swapped from pair to pair; the
ratio is the median of the pairs' ratios, so that the machine's drift over minutes (10 % on a
shared 2-core machine) cancels within a pair. The fastest run of each is printed too.
Usage: python benchmarks/training_loop.py [--epochs 6] [--threads 1] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from hierpipe.core.config import SplitConfig, resolve_run_config
from hierpipe.data import make_split, prepare_dataset
from hierpipe.train.artifacts import build_network
from hierpipe.train.engine import load_training_data, seed_everything, train_run

REPO = Path(__file__).resolve().parents[1]
TARGET_RATIO = 0.97


def _params() -> dict:
    """The default experiment without a validation subset: the bare loop validates nothing,
    so neither does hierpipe here."""
    params = yaml.safe_load((REPO / "params/default.yaml").read_text())
    params["datasets"]["shapes"]["split"]["fractions"] = {"train": 0.8, "test": 0.2}
    return params


def _run_config(data_root: Path, epochs: int):
    params = _params()
    params["train"]["epochs"] = epochs
    return resolve_run_config(params, "shapes", "softmax", "standard", 1, data_root=str(data_root))


def _bare_loop(config) -> float:
    """Seconds for the same epochs as a plain loop over the same data, network and loss,
    from reading the data on, as `hierpipe train` is timed."""
    started = time.perf_counter()
    seed_everything(config.seed)
    data = load_training_data(config)
    net, objective = build_network(config, len(data.class_ids))
    # the optimiser as hierpipe builds it (fused), so that the ratio is hierpipe's own cost
    optimizer = torch.optim.Adam(
        [*net.parameters(), *objective.parameters()], lr=config.train.lr, fused=True
    )
    generator = torch.Generator().manual_seed(config.seed)
    for _ in range(config.train.epochs):
        net.train()
        batches = torch.utils.data.DataLoader(
            data.train,
            batch_size=config.train.batch_size,
            shuffle=True,
            generator=generator,
            drop_last=True,
        )
        for images, labels, _ in batches:
            loss = objective(net(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return time.perf_counter() - started


def _hierpipe(config, workdir: Path) -> float:
    started = time.perf_counter()
    train_run(config, workdir / "model.pt", workdir / "log.parquet", workdir / "checkpoint")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=5, help="pairs of runs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="hierpipe-bench-") as tmp:
        root = Path(tmp)
        params = _params()["datasets"]["shapes"]
        prepare_dataset("shapes", root / "shapes", params["prepare"])
        split = SplitConfig(**params["split"])
        make_split(root / "shapes", split.name, split.scheme, split.fractions, split.seed)
        config = _run_config(root, args.epochs)
        images = len(load_training_data(config).train) * args.epochs
        bare_times, our_times = [], []
        for repeat in range(args.repeats):
            # bare first in even pairs, hierpipe first in odd ones: a steady drift favours
            # neither
            first_bare = repeat % 2 == 0
            if first_bare:
                bare_times.append(_bare_loop(config))
            our_times.append(_hierpipe(config, root / f"run{repeat}"))
            if not first_bare:
                bare_times.append(_bare_loop(config))
    # the bare loop drops the last partial batch, as hierpipe does for this batch size
    bare_rate, our_rate = images / min(bare_times), images / min(our_times)
    ratio = statistics.median(b / o for b, o in zip(bare_times, our_times, strict=True))
    print(
        f"machine: {os.cpu_count()} cores, torch {torch.__version__} with {args.threads} "
        f"thread(s), Python {sys.version.split()[0]}"
    )
    print(f"{images} training images ({args.epochs} epochs), batch {config.train.batch_size}")
    pairs = ", ".join(f"{b / o:.3f}" for b, o in zip(bare_times, our_times, strict=True))
    print(f"{'measure':<34}{'images/s (fastest run)':>24}")
    print(f"{'bare PyTorch loop (baseline)':<34}{bare_rate:>24.1f}")
    print(f"{'hierpipe train':<34}{our_rate:>24.1f}")
    print(f"hierpipe / bare loop, images/s, per pair: {pairs}")
    print(f"median of {args.repeats} pairs: {ratio:.3f}")
    print(f"at least {TARGET_RATIO:.2f} of the bare loop: {ratio >= TARGET_RATIO}")


if __name__ == "__main__":
    main()
