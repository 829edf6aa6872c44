import numpy as np
import pytest
import torch

from hierpipe.errors import HierpipeError
from hierpipe.metrics import topk_accuracy

SCORES = np.array(
    [
        [0.1, 0.5, 0.3, 0.0],  # ranking 1, 2, 0, 3
        [0.9, 0.2, 0.4, 0.8],  # ranking 0, 3, 2, 1
        [0.2, 0.1, 0.0, 0.3],  # ranking 3, 0, 1, 2
        [-1.0, -3.0, -2.0, -0.5],  # ranking 3, 0, 2, 1
    ]
)
TARGET = np.array([1, 2, 2, 0])  # ranks of the target: 1, 3, 4, 2


def test_hand_computed_topk():
    got = topk_accuracy(SCORES, TARGET, ks=(1, 2, 3, 4))
    assert got == {"top1": 1 / 4, "top2": 2 / 4, "top3": 3 / 4, "top4": 1.0}


def test_k_larger_than_classes_is_clamped_and_keeps_its_name():
    assert topk_accuracy(SCORES, TARGET) == {"top1": 0.25, "top5": 1.0}


def test_torch_input_and_inf_scores():
    scores = torch.tensor([[0.0, -float("inf"), 1.0], [float("inf"), 0.0, 1.0]])
    assert topk_accuracy(scores, torch.tensor([0, 0]), ks=(1, 2)) == {"top1": 0.5, "top2": 1.0}


@pytest.mark.parametrize(
    ("scores", "target", "ks", "match"),
    [
        (SCORES, TARGET[:3], (1,), r"target: expected shape \(4,\)"),
        (SCORES, np.array([1, 2, 4, 0]), (1,), r"target: expected labels in \[0, 3\]"),
        (SCORES, TARGET.astype(float), (1,), "target: expected integer"),
        (SCORES[0], TARGET, (1,), "scores: expected a non-empty"),
        (np.zeros((0, 3)), np.zeros(0, dtype=int), (1,), "scores: expected a non-empty"),
        (np.full((4, 4), np.nan), TARGET, (1,), "scores: expected no NaN"),
        (SCORES, TARGET, (0,), "ks: expected integers >= 1"),
    ],
)
def test_bad_input(scores, target, ks, match):
    with pytest.raises(HierpipeError, match=match):
        topk_accuracy(scores, target, ks)
