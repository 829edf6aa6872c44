"""The training engine: one run from its config to model.pt and a per-epoch log.

Resumable: after every epoch the full state (network, objective with its proxies,
optimiser, RNG, log, best state) is written atomically to a checkpoint directory that is not
a declared output of the workflow rule, so an interrupted job continues where it stopped
when it is rerun and finishes with the same bits as an uninterrupted one.
"""

from __future__ import annotations

import copy
import logging
import math
import random
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from hierpipe.core.config import LR_GROUPS, RunConfig, TrainConfig
from hierpipe.core.errors import HierpipeError
from hierpipe.core.io import write_parquet_atomic
from hierpipe.data import ImageTableDataset, read_dataset, read_split
from hierpipe.data.samplers import ClassBalancedBatchSampler
from hierpipe.data.transforms import recipe_transforms
from hierpipe.evaluation.metrics import retrieval_metrics
from hierpipe.losses import Objective
from hierpipe.models import EmbeddingNet, select_device
from hierpipe.runtime.tracking import NullTracker, RunTracker, run_tracker
from hierpipe.train.accelerator import Accelerator
from hierpipe.train.artifacts import (
    build_network,
    load_torch,
    save_model,
    save_torch_atomic,
    state_dict_problem,
)
from hierpipe.train.check import check_run_components
from hierpipe.train.options import OptionContext, build_options

log = logging.getLogger(__name__)


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
    train_transform, eval_transform = recipe_transforms(config.train)
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
        preload=config.train.preload_images,
    )


def train_run(
    config: RunConfig,
    model_path: str | Path,
    log_path: str | Path,
    checkpoint_dir: str | Path,
) -> None:
    """Train (or, for the untrained baseline, initialise) one run and write its outputs.

    Inside the workflow the run is also an MLflow child run (hierpipe.runtime.tracking): params, one
    metric batch per epoch, then the config, the log and the model as artifacts.
    """
    check_run_components(config)
    with run_tracker(config, "train") as tracker:
        _train_run(config, model_path, log_path, checkpoint_dir, tracker)
        tracker.log_config(config)
        tracker.log_artifact(log_path)
        tracker.log_model(model_path)


def _train_run(
    config: RunConfig,
    model_path: str | Path,
    log_path: str | Path,
    checkpoint_dir: str | Path,
    tracker: RunTracker | NullTracker,
) -> None:
    seed_everything(config.seed)
    accelerator = Accelerator.for_device(select_device())
    device = accelerator.device
    data = load_training_data(config)
    net, objective = build_network(config, len(data.class_ids))
    accelerator.prepare(net)
    if objective is None:
        save_model(model_path, config, net.state_dict(), None, data.class_ids, epoch=0)
        _write_log([], log_path, "val_top1")
        return
    objective.to(device)
    options = build_options(config.training_options, config.loss)
    context = OptionContext(objective.loss, data.tree_dist, config.train.lr, config.seed, device)
    for option in options:
        option.setup(context)  # may freeze the proxies: the optimiser takes what still learns
    optimizer = build_optimizer(config.train, net, objective)
    # a classifier is validated by its top-1 accuracy, a pair-based loss by retrieval
    val_column = "val_top1" if objective.classifies else "val_recall_at_1"
    checkpoint_path = Path(checkpoint_dir) / "last.pt"
    scaler = accelerator.scaler
    state = _resume(checkpoint_path, config, net, objective, optimizer, scaler, options)
    for row in state["log"]:  # a resumed job's run gets the history of the interrupted one too
        tracker.log_metrics(_epoch_metrics(row), step=row["epoch"])

    epochs = range(state["epoch"], config.train.epochs)
    try:
        for epoch in tqdm(epochs, desc=config.run_id, disable=None, initial=state["epoch"]):
            started = time.perf_counter()
            set_learning_rates(optimizer, config.train, epoch)
            train_values = _train_epoch(
                config, data, net, objective, optimizer, options, accelerator, epoch
            )
            val_score = _validate(config, data, net, objective, device)
            option_values = {k: v for option in options for k, v in option.log_values().items()}
            state["log"].append(
                {"epoch": epoch + 1, **train_values, val_column: val_score, **option_values}
            )
            tracker.log_metrics(_epoch_metrics(state["log"][-1]), step=epoch + 1)
            # '>' keeps the earliest of equally good epochs; without validation the last one wins
            if math.isnan(val_score) or val_score > state["best_val"]:
                state["best_val"] = val_score
                state["best_epoch"] = epoch + 1
                if math.isnan(val_score):
                    # without validation every epoch is the best so far: the final state is
                    # the best one, and no copy of it is needed
                    state["best_net"] = state["best_objective"] = None
                else:
                    state["best_net"] = copy.deepcopy(net.state_dict())
                    state["best_objective"] = copy.deepcopy(objective.state_dict())
            state["epoch"] = epoch + 1
            # The last epoch's state goes straight into the model file: a run stopped before
            # that is written resumes from the epoch before and repeats the last, to the same
            # bits, instead of waiting here for a checkpoint that is deleted right after.
            if state["epoch"] < config.train.epochs:
                _save_checkpoint(
                    checkpoint_path, config, net, objective, optimizer, scaler, options, state
                )
            log.info(
                "%s epoch %d/%d loss %.4f %s %.4f (%.1fs)",
                config.run_id,
                epoch + 1,
                config.train.epochs,
                train_values["train_loss"],
                val_column,
                val_score,
                time.perf_counter() - started,
            )
    finally:
        # a run that stops on an error still leaves its last checkpoint complete
        write_error = _CHECKPOINTS.finish()
    if write_error is not None:
        raise write_error
    best_is_last = state["best_net"] is None
    save_model(
        model_path,
        config,
        net.state_dict() if best_is_last else state["best_net"],
        objective.state_dict() if best_is_last else state["best_objective"],
        data.class_ids,
        epoch=state["best_epoch"],
    )
    _write_log(state["log"], log_path, val_column)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)


def build_optimizer(
    settings: TrainConfig, net: EmbeddingNet, objective: Objective
) -> torch.optim.Optimizer:
    """One optimiser with a parameter group per LR_GROUPS entry (as HIER's hier/train.py).

    Each group remembers its multiplier; `set_learning_rates` derives its lr every epoch.
    Parameters a training option froze (EMA, MDS proxies) are left out.
    """
    head = [p for name, p in net.named_parameters() if not name.startswith("backbone.")]
    regularizer = objective.regularizer
    members = {
        "backbone": list(net.backbone.parameters()),
        "head": head,
        "proxies": list(objective.loss.parameters()),
        "regularizer": list(regularizer.parameters()) if regularizer is not None else [],
    }
    groups = []
    for name in LR_GROUPS:
        params = [p for p in members[name] if p.requires_grad]
        if params:
            multiplier = settings.lr_multipliers[name]
            groups.append({"params": params, "name": name, "multiplier": multiplier})
    optimizers = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    # fused: each step is one kernel over the parameters instead of a dozen tensor operations
    # per parameter, on the CPU too (a fifth of the time for the default network)
    return optimizers[settings.optimizer](
        groups, lr=settings.lr, weight_decay=settings.weight_decay, fused=True
    )


def set_learning_rates(optimizer: torch.optim.Optimizer, settings: TrainConfig, epoch: int) -> None:
    """Step decay every `lr_decay_every` epochs; the backbone stands still while warming up."""
    decay = 1.0
    if settings.lr_decay_every:
        decay = settings.lr_decay_gamma ** (epoch // settings.lr_decay_every)
    for group in optimizer.param_groups:
        warming_up = group["name"] == "backbone" and epoch < settings.warmup_epochs
        group["lr"] = 0.0 if warming_up else settings.lr * group["multiplier"] * decay


def _batches(config: RunConfig, data: TrainingData, epoch: int, pin_memory: bool) -> DataLoader:
    # a generator per epoch makes the batch order a function of (seed, epoch): resumable
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
    settings = config.train
    loading = {"num_workers": settings.num_workers, "pin_memory": pin_memory}
    if settings.samples_per_class:
        sampler = ClassBalancedBatchSampler(
            data.train.labels,
            settings.batch_size,
            settings.samples_per_class,
            num_batches=max(1, len(data.train) // settings.batch_size),
            generator=generator,
        )
        return DataLoader(data.train, batch_sampler=sampler, **loading)
    return DataLoader(
        data.train,
        batch_size=settings.batch_size,
        shuffle=True,
        generator=generator,
        **loading,
        # BatchNorm cannot train on a last batch of one sample
        drop_last=len(data.train) > settings.batch_size,
    )


def _train_epoch(
    config, data, net, objective, optimizer, options, accelerator: Accelerator, epoch: int
) -> dict[str, float]:
    """One epoch; returns the means of the logged training values (and, when non-finite
    steps are skipped, how many were)."""
    net.train()
    objective.train()
    if config.train.freeze_bn:
        # statistics and running averages stay as loaded; the affine parameters still learn
        for module in net.backbone.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    sums: dict[str, float] = {}
    count = 0
    batches = _batches(config, data, epoch, accelerator.pin_memory)
    skipped = 0
    for step, (images, labels, _) in enumerate(batches):
        where = f"{config.run_id}: epoch {epoch + 1}, step {step + 1}"
        value = train_step(
            config, net, objective, optimizer, options, accelerator, images, labels, where
        )
        if value is None:
            skipped += 1
            continue
        values = {"train_loss": value.item(), **_regularizer_values(objective)}
        for key, item in values.items():
            sums[key] = sums.get(key, 0.0) + item * len(labels)
        count += len(labels)
    if count == 0:
        raise HierpipeError(
            f"{config.run_id}: epoch {epoch + 1}: every step was skipped (non-finite loss or "
            "gradients)"
        )
    means = {key: total / count for key, total in sums.items()}
    if config.train.on_nonfinite == "skip":
        means["skipped_steps"] = float(skipped)
    return means


def train_step(
    config: RunConfig,
    net: EmbeddingNet,
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    options: list,
    accelerator: Accelerator,
    images: torch.Tensor,
    labels: torch.Tensor,
    where: str,
) -> torch.Tensor | None:
    """One optimisation step on a batch (host tensors); returns the loss, or None when the
    step was skipped for a non-finite loss or gradients (train.on_nonfinite: skip)."""
    images, labels = accelerator.images(images), labels.to(accelerator.device)
    with accelerator.autocast():
        embeddings = net(images)
    # losses stay in float32 even under autocast
    value = objective(embeddings.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    scaler = accelerator.scaler
    problem = None if torch.isfinite(value) else _nonfinite_loss(config, objective, value)
    if problem is None:
        scaler.scale(value).backward()
        scaler.unscale_(optimizer)
        # float16's scaler skips steps whose gradients overflowed by itself
        problem = None if scaler.is_enabled() else _nonfinite_gradient(optimizer)
    if problem is not None:
        if config.train.on_nonfinite == "stop":
            raise HierpipeError(
                f"{where}: {problem}; the last good checkpoint is kept (set "
                "train.on_nonfinite: skip to skip such steps)"
            )
        log.warning("%s: %s; step skipped", where, problem)
        optimizer.zero_grad(set_to_none=True)
        return None
    if config.train.grad_clamp is not None:
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.grad.clamp_(-config.train.grad_clamp, config.train.grad_clamp)
    for option in options:
        option.on_batch(embeddings.detach().float(), labels)
    scaler.step(optimizer)
    scaler.update()
    return value.detach()


def _regularizer_values(objective: Objective) -> dict[str, float]:
    """The two terms of a regularised objective and the regulariser's own statistics."""
    if objective.regularizer is None:
        return {}
    values = {f"train_{term}_term": value for term, value in objective.last_terms.items()}
    stats = getattr(objective.regularizer, "last_stats", {})
    return {**values, **{f"regularizer_{key}": float(v) for key, v in stats.items()}}


def _nonfinite_loss(config: RunConfig, objective: Objective, value: torch.Tensor) -> str:
    """What was not finite, naming the loss and, for a regularised objective, its terms."""
    terms = ", ".join(f"{term} {v:g}" for term, v in objective.last_terms.items())
    return f"non-finite loss {value.item()} (loss {config.loss}{'; ' + terms if terms else ''})"


def _nonfinite_gradient(optimizer: torch.optim.Optimizer) -> str | None:
    """A finite loss can still have non-finite gradients; name the first such parameter."""
    # A sum is NaN or Inf when any element is, and one pass cheaper than a norm; a finite
    # sum clears every gradient, a non-finite one (which overflow can also give) is resolved
    # by the element-wise search below.
    sums = [
        p.grad.sum()
        for group in optimizer.param_groups
        for p in group["params"]
        if p.grad is not None
    ]
    if not sums or torch.isfinite(torch.stack(sums).sum()):
        return None
    for group in optimizer.param_groups:
        for index, p in enumerate(group["params"]):
            if p.grad is not None and not torch.isfinite(p.grad).all():
                return (
                    f"non-finite gradient in parameter group {group['name']!r} "
                    f"(parameter {index}, shape {tuple(p.shape)})"
                )
    return None


@torch.no_grad()
def _validate(config: RunConfig, data: TrainingData, net, objective: Objective, device) -> float:
    """Top-1 accuracy of the classifier, or Recall@1 among the validation samples."""
    if data.val is None:
        return math.nan
    net.eval()
    objective.eval()
    parts = []
    for images, _, _ in DataLoader(data.val, batch_size=256):
        parts.append(net(images.to(device)).float())
    embeddings = torch.cat(parts)
    labels = torch.as_tensor(data.val.labels)
    if objective.classifies:
        predicted = objective.loss.logits(embeddings).argmax(dim=1).cpu()
        return (predicted == labels).float().mean().item()
    distance = config.evaluate.distance
    curvature = config.head.curvature if distance == "poincare" else None
    recall = retrieval_metrics(
        embeddings.cpu(), labels.numpy(), ks=(1,), distance=distance, curvature=curvature
    )
    return float(recall["recall@1"])


def _initial_state() -> dict:
    return {
        "epoch": 0,
        "log": [],
        "best_val": -math.inf,
        "best_epoch": 0,
        "best_net": None,
        "best_objective": None,
    }


def _resume(path: Path, config: RunConfig, net, objective, optimizer, scaler, options) -> dict:
    if not path.exists():
        return _initial_state()
    try:
        checkpoint = load_torch(path, "training checkpoint")
    except HierpipeError as error:
        # writes are atomic, so only damage from outside gets here; nothing in it is usable
        log.warning("%s; starting from scratch", error)
        return _initial_state()
    if checkpoint.get("config") != config.to_dict():
        # the rule reran because its params changed: the old state belongs to another run
        log.warning("%s: checkpoint is from another config; starting from scratch", path)
        return _initial_state()
    try:
        net.load_state_dict(checkpoint["net"])
        objective.load_state_dict(checkpoint["objective"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scaler.load_state_dict(checkpoint["scaler"])
        for option, option_state in zip(options, checkpoint["options"], strict=True):
            option.load_state_dict(option_state)
    except (RuntimeError, ValueError, KeyError) as error:
        raise HierpipeError(
            f"{path}: checkpoint does not fit the configured model ({state_dict_problem(error)})"
        ) from error
    torch.set_rng_state(checkpoint["torch_rng"])
    state = checkpoint["state"]
    if state["best_net"] is None and state["best_epoch"] == state["epoch"] > 0:
        state["best_net"] = copy.deepcopy(net.state_dict())
        state["best_objective"] = copy.deepcopy(objective.state_dict())
    log.info("%s: resuming after epoch %d", path, state["epoch"])
    return state


def _save_checkpoint(
    path: Path, config: RunConfig, net, objective, optimizer, scaler, options, state: dict
) -> None:
    """Write, in the background, a copy of everything a resumed run needs."""
    payload = copy.deepcopy(
        {
            "config": config.to_dict(),
            "net": net.state_dict(),
            "objective": objective.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scaler": scaler.state_dict(),
            "options": [option.state_dict() for option in options],
            "torch_rng": torch.get_rng_state(),
            # the best state of this very epoch is the state above: not written twice
            "state": {**state, "best_net": None, "best_objective": None}
            if state["best_epoch"] == state["epoch"]
            else state,
        }
    )
    _CHECKPOINTS.write(payload, path)


class _BackgroundWriter:
    """Writes each checkpoint on a thread of its own, so that the next epoch trains while the
    last one is serialised and synced (a few percent of a small model's epoch). One write at a
    time. The thread is not a daemon, so a run that stops on an error still finishes its last
    write; a killed one leaves the previous checkpoint in place (save_torch_atomic)."""

    def __init__(self) -> None:
        self._pending: threading.Thread | None = None
        self._error: BaseException | None = None

    def write(self, payload: dict, path: Path) -> None:
        """Start writing ``payload`` (which nothing else may change) to ``path``, once the
        previous write is done; raise that write's error, if it failed."""
        error = self.finish()
        if error is not None:
            raise error
        self._pending = threading.Thread(target=self._save, args=(payload, path))
        self._pending.start()

    def _save(self, payload: dict, path: Path) -> None:
        try:
            save_torch_atomic(payload, path)
        except BaseException as error:  # handed to the training thread by finish()
            self._error = error

    def finish(self) -> BaseException | None:
        """Let the pending write finish; return (and forget) the error of a failed one."""
        if self._pending is not None:
            self._pending.join()
            self._pending = None
        error, self._error = self._error, None
        return error


_CHECKPOINTS = _BackgroundWriter()


def _epoch_metrics(row: dict) -> dict[str, float]:
    return {key: value for key, value in row.items() if key != "epoch"}


def _write_log(rows: list[dict], path: str | Path, val_column: str) -> None:
    """Per-epoch log: epoch, train_loss, the validation score, then what the regulariser and
    the training options report."""
    columns = {"epoch": "int64", "train_loss": "float64", val_column: "float64"}
    frame = pd.DataFrame(rows) if rows else pd.DataFrame(columns=list(columns))
    write_parquet_atomic(frame.astype(columns), path)
