"""The pieces of HIER's training recipe: class-balanced batches, parameter groups, schedule."""

import numpy as np
import pytest
import torch

from hierpipe.core.config import TrainConfig
from hierpipe.core.errors import HierpipeError
from hierpipe.data.samplers import ClassBalancedBatchSampler
from hierpipe.losses import HIERLoss, Objective, ProxyAnchorLoss
from hierpipe.models import EmbeddingNet
from hierpipe.train.engine import build_optimizer, set_learning_rates


def _sampler(labels, batch_size=6, samples_per_class=2, num_batches=20, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return ClassBalancedBatchSampler(
        np.asarray(labels), batch_size, samples_per_class, num_batches, generator
    )


def test_batches_hold_distinct_classes_each_with_consecutive_samples():
    labels = np.repeat(np.arange(5), 4)
    batches = list(_sampler(labels, batch_size=6))
    assert len(batches) == 20
    for batch in batches:
        batch_labels = labels[batch]
        groups = batch_labels.reshape(3, 2)
        assert (groups == groups[:, :1]).all()  # a class's samples are consecutive
        assert len(set(groups[:, 0])) == 3  # three distinct classes
        assert len(set(batch)) == 6  # enough samples: no image twice
    # over many batches every class is drawn
    assert set(labels[np.concatenate(batches)]) == set(range(5))


def test_batches_are_a_function_of_the_generator_seed():
    labels = np.repeat(np.arange(6), 3)
    assert list(_sampler(labels, seed=3)) == list(_sampler(labels, seed=3))
    assert list(_sampler(labels, seed=3)) != list(_sampler(labels, seed=4))


def test_a_class_with_too_few_samples_draws_with_replacement():
    labels = np.array([0, 1, 1, 1, 2, 2, 2])
    for batch in _sampler(labels, batch_size=9, samples_per_class=3):
        assert sorted(labels[batch].tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]


@pytest.mark.parametrize(
    ("batch_size", "samples_per_class", "match"),
    [
        (7, 2, "batch_size 7 is not a multiple of samples_per_class 2"),
        (12, 2, "needs 6 distinct classes; the training set has 5: lower batch_size to at most 10"),
        (4, 0, "samples_per_class: expected an integer >= 1"),
    ],
)
def test_impossible_batches_are_refused(batch_size, samples_per_class, match):
    with pytest.raises(HierpipeError, match=match):
        _sampler(np.repeat(np.arange(5), 4), batch_size, samples_per_class)


def _net_and_objective(regularised: bool = True):
    net = EmbeddingNet("test_resnet", 8, head="poincare")
    regularizer = HIERLoss(8, num_proxies=6, topk=3) if regularised else None
    return net, Objective(ProxyAnchorLoss(4, 8), regularizer)


def test_every_parameter_is_in_exactly_one_group_with_its_multiplier():
    net, objective = _net_and_objective()
    settings = TrainConfig(
        optimizer="adamw", lr=1e-4, lr_multipliers={"proxies": 1e4, "regularizer": 50.0}
    )
    optimizer = build_optimizer(settings, net, objective)
    assert isinstance(optimizer, torch.optim.AdamW)
    grouped = {g["name"]: {id(p) for p in g["params"]} for g in optimizer.param_groups}
    assert grouped["backbone"] == {id(p) for p in net.backbone.parameters()}
    assert grouped["head"] == {id(net.head.weight), id(net.head.bias)}
    assert grouped["proxies"] == {id(objective.loss.proxies)}
    assert grouped["regularizer"] == {id(objective.regularizer.proxies)}
    everything = [*net.parameters(), *objective.parameters()]
    assert sum(len(ids) for ids in grouped.values()) == len(everything)
    set_learning_rates(optimizer, settings, epoch=0)
    rates = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert rates == pytest.approx(
        {"backbone": 1e-4, "head": 1e-4, "proxies": 1.0, "regularizer": 5e-3}
    )


def test_frozen_parameters_stay_out_of_the_optimiser():
    net, objective = _net_and_objective(regularised=False)
    objective.loss.proxies.requires_grad_(False)  # as EMA or MDS leave them
    optimizer = build_optimizer(TrainConfig(), net, objective)
    assert isinstance(optimizer, torch.optim.Adam)
    assert [g["name"] for g in optimizer.param_groups] == ["backbone", "head"]


@pytest.mark.parametrize(
    ("epoch", "backbone", "others"),
    [(0, 0.0, 1.0), (1, 0.0, 1.0), (2, 1.0, 1.0), (4, 0.5, 0.5), (9, 0.125, 0.125)],
)
def test_warm_up_and_step_decay(epoch, backbone, others):
    net, objective = _net_and_objective()
    settings = TrainConfig(lr=1.0, warmup_epochs=2, lr_decay_every=3, lr_decay_gamma=0.5)
    optimizer = build_optimizer(settings, net, objective)
    set_learning_rates(optimizer, settings, epoch)
    rates = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert rates.pop("backbone") == pytest.approx(backbone)
    assert list(rates.values()) == pytest.approx([others] * 3)


def test_unknown_learning_rate_group_is_named():
    with pytest.raises(HierpipeError, match=r"unknown group\(s\) \['proxy'\]"):
        TrainConfig(lr_multipliers={"proxy": 10.0})


def test_objective_adds_the_weighted_regulariser():
    torch.manual_seed(0)
    loss, regularizer = ProxyAnchorLoss(4, 8), HIERLoss(8, num_proxies=6, topk=3, stochastic=False)
    objective = Objective(loss, regularizer, weight=0.25).eval()
    embeddings = torch.nn.functional.normalize(torch.randn(8, 8), dim=1) * 0.5
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    torch.manual_seed(1)
    total = objective(embeddings, labels)
    torch.manual_seed(1)  # the same triplet draws
    expected = loss(embeddings, labels) + 0.25 * regularizer(embeddings, labels)
    assert total.item() == pytest.approx(expected.item())
    assert objective.last_terms["loss"] == pytest.approx(loss(embeddings, labels).item())
    with pytest.raises(HierpipeError, match="weight: expected a positive finite number"):
        Objective(loss, regularizer, weight=0.0)
