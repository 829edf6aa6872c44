"""The training engine: one run from its config to model.pt and a per-epoch log.

Resumable: after every epoch the full state (network, loss, optimiser, RNG, log, best
state) is written atomically to a checkpoint directory that is not a declared output of
the workflow rule, so an interrupted job continues where it stopped when it is rerun and
finishes with the same bits as an uninterrupted one.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from hierpipe.artifacts import build_network, load_torch, save_model, save_torch_atomic
from hierpipe.config import RunConfig
from hierpipe.data import ImageTableDataset, read_dataset, read_split
from hierpipe.data.transforms import build_transform
from hierpipe.errors import HierpipeError
from hierpipe.io import write_parquet_atomic
from hierpipe.models import select_device
from hierpipe.train.options import OptionContext, build_options

log = logging.getLogger(__name__)

LOG_COLUMNS = {"epoch": "int64", "train_loss": "float64", "val_top1": "float64"}


@dataclass
class TrainingData:
    train: ImageTableDataset
    val: ImageTableDataset | None
    class_ids: list[int]
    tree_dist: np.ndarray  # between the classifier's classes, in proxy-row order


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def load_training_data(config: RunConfig) -> TrainingData:
    """Train and validation sets, labels remapped to the rows of the classifier.

    The classifier has one row per class seen in training (all classes for a by-image split,
    the training classes for a class-disjoint one); validation keeps only those classes.
    """
    samples, tree = read_dataset(config.data_dir)
    split, _ = read_split(config.split_path)
    table = samples.merge(split, on="sample_id", how="inner", validate="one_to_one")
    train = table[table["subset"] == "train"]
    if train.empty:
        raise HierpipeError(f"{config.split_path}: no samples in subset 'train'")
    class_ids = sorted(int(c) for c in train["label"].unique())
    val = table[(table["subset"] == "val") & table["label"].isin(class_ids)]
    train_transform = build_transform(config.train.augment)
    eval_transform = build_transform("none")
    return TrainingData(
        train=_image_dataset(config, train, class_ids, train_transform),
        val=_image_dataset(config, val, class_ids, eval_transform) if len(val) else None,
        class_ids=class_ids,
        tree_dist=tree.distance_matrix()[np.ix_(class_ids, class_ids)],
    )


def _image_dataset(
    config: RunConfig, table: pd.DataFrame, class_ids: list[int], transform
) -> ImageTableDataset:
    rows = np.searchsorted(np.asarray(class_ids), table["label"].to_numpy())
    return ImageTableDataset(
        config.data_dir,
        table["sample_id"].to_numpy(),
        table["path"].tolist(),
        rows,
        transform,
    )


def train_run(
    config: RunConfig,
    model_path: str | Path,
    log_path: str | Path,
    checkpoint_dir: str | Path,
) -> None:
    """Train (or, for the untrained baseline, initialise) one run and write its outputs."""
    seed_everything(config.seed)
    device = select_device()
    data = load_training_data(config)
    net, loss = build_network(config, len(data.class_ids))
    net.to(device)
    if loss is None:
        save_model(model_path, config, net.state_dict(), None, data.class_ids, epoch=0)
        _write_log([], log_path)
        return
    loss.to(device)
    options = build_options(config.training_options)
    context = OptionContext(loss, data.tree_dist, config.train.lr, config.seed, device)
    for option in options:
        option.setup(context)  # may freeze the proxies: the optimiser takes what still learns
    optimizer = torch.optim.Adam(
        [p for p in (*net.parameters(), *loss.parameters()) if p.requires_grad],
        lr=config.train.lr,
        weight_decay=config.train.weight_decay,
    )
    checkpoint_path = Path(checkpoint_dir) / "last.pt"
    state = _resume(checkpoint_path, config, net, loss, optimizer, options)

    epochs = range(state["epoch"], config.train.epochs)
    for epoch in tqdm(epochs, desc=config.run_id, disable=None, initial=state["epoch"]):
        started = time.perf_counter()
        train_loss = _train_epoch(config, data, net, loss, optimizer, options, device, epoch)
        val_top1 = _validate(data, net, loss, device)
        option_values = {k: v for option in options for k, v in option.log_values().items()}
        state["log"].append(
            {"epoch": epoch + 1, "train_loss": train_loss, "val_top1": val_top1, **option_values}
        )
        # '>' keeps the earliest of equally good epochs; without validation the last one wins
        if math.isnan(val_top1) or val_top1 > state["best_val"]:
            state["best_val"] = val_top1
            state["best_epoch"] = epoch + 1
            state["best_net"] = copy.deepcopy(net.state_dict())
            state["best_loss"] = copy.deepcopy(loss.state_dict())
        state["epoch"] = epoch + 1
        _save_checkpoint(checkpoint_path, config, net, loss, optimizer, options, state)
        log.info(
            "%s epoch %d/%d loss %.4f val_top1 %.4f (%.1fs)",
            config.run_id,
            epoch + 1,
            config.train.epochs,
            train_loss,
            val_top1,
            time.perf_counter() - started,
        )

    save_model(
        model_path,
        config,
        state["best_net"],
        state["best_loss"],
        data.class_ids,
        epoch=state["best_epoch"],
    )
    _write_log(state["log"], log_path)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)


def _train_epoch(config, data, net, loss, optimizer, options, device, epoch: int) -> float:
    net.train()
    loss.train()
    # a generator per epoch makes the batch order a function of (seed, epoch): resumable
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
    loader = DataLoader(
        data.train,
        batch_size=config.train.batch_size,
        shuffle=True,
        generator=generator,
        num_workers=config.train.num_workers,
        # BatchNorm cannot train on a last batch of one sample
        drop_last=len(data.train) > config.train.batch_size,
    )
    total, count = 0.0, 0
    for step, (images, labels, _) in enumerate(loader):
        images, labels = images.to(device), labels.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            embeddings = net(images)
        # losses stay in float32 even under autocast
        value = loss(embeddings.float(), labels)
        if not torch.isfinite(value):
            raise HierpipeError(
                f"{config.run_id}: non-finite loss {value.item()} at epoch {epoch + 1}, "
                f"step {step + 1} (loss {config.loss}); the last good checkpoint is kept"
            )
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        for option in options:
            option.on_batch(embeddings.detach().float(), labels)
        optimizer.step()
        total += value.item() * len(labels)
        count += len(labels)
    return total / count


@torch.no_grad()
def _validate(data: TrainingData, net, loss, device) -> float:
    """Top-1 accuracy of the loss's classifier (its proxies) on the validation set."""
    if data.val is None:
        return math.nan
    net.eval()
    loss.eval()
    correct = 0
    for images, labels, _ in DataLoader(data.val, batch_size=256):
        logits = loss.logits(net(images.to(device)).float())
        correct += (logits.argmax(dim=1).cpu() == labels).sum().item()
    return correct / len(data.val)


def _initial_state() -> dict:
    return {
        "epoch": 0,
        "log": [],
        "best_val": -math.inf,
        "best_epoch": 0,
        "best_net": None,
        "best_loss": None,
    }


def _resume(path: Path, config: RunConfig, net, loss, optimizer, options) -> dict:
    if not path.exists():
        return _initial_state()
    checkpoint = load_torch(path, "training checkpoint")
    if checkpoint.get("config") != config.to_dict():
        # the rule reran because its params changed: the old state belongs to another run
        log.warning("%s: checkpoint is from another config; starting from scratch", path)
        return _initial_state()
    try:
        net.load_state_dict(checkpoint["net"])
        loss.load_state_dict(checkpoint["loss"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        for option, option_state in zip(options, checkpoint["options"], strict=True):
            option.load_state_dict(option_state)
    except (RuntimeError, ValueError, KeyError) as error:
        raise HierpipeError(
            f"{path}: checkpoint does not fit the configured model ({str(error).splitlines()[0]})"
        ) from error
    torch.set_rng_state(checkpoint["torch_rng"])
    log.info("%s: resuming after epoch %d", path, checkpoint["state"]["epoch"])
    return checkpoint["state"]


def _save_checkpoint(
    path: Path, config: RunConfig, net, loss, optimizer, options, state: dict
) -> None:
    save_torch_atomic(
        {
            "config": config.to_dict(),
            "net": net.state_dict(),
            "loss": loss.state_dict(),
            "optimizer": optimizer.state_dict(),
            "options": [option.state_dict() for option in options],
            "torch_rng": torch.get_rng_state(),
            "state": state,
        },
        path,
    )


def _write_log(rows: list[dict], path: str | Path) -> None:
    """Per-epoch log: the engine's columns plus whatever the training options report."""
    frame = pd.DataFrame(rows) if rows else pd.DataFrame(columns=list(LOG_COLUMNS))
    write_parquet_atomic(frame.astype(LOG_COLUMNS), path)
