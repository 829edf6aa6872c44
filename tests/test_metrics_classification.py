import numpy as np
import pytest
import torch

from hierpipe.core.errors import HierpipeError
from hierpipe.evaluation.metrics import calibration_errors, level_accuracy, topk_accuracy

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
        (SCORES[:, :2], TARGET, (1,), "scores matrix whose width differs from the number of"),
        (SCORES, TARGET.astype(float), (1,), "target: expected integer"),
        (SCORES[0], TARGET, (1,), "scores: expected a non-empty"),
        (np.zeros((0, 3)), np.zeros(0, dtype=int), (1,), "scores: expected a non-empty"),
        (np.full((4, 4), np.nan), TARGET, (1,), "scores: expected no NaN"),
        (SCORES, TARGET, (0,), "ks: expected an integer >= 1"),
    ],
)
def test_bad_input(scores, target, ks, match):
    with pytest.raises(HierpipeError, match=match):
        topk_accuracy(scores, target, ks)


def _in_bin(confidence: float, b: int, n_bins: int, bins: str) -> bool:
    low, high = b / n_bins, (b + 1) / n_bins
    if bins == "public_code":
        return low <= confidence < high
    return low < confidence <= high or (b == 0 and confidence == 0)


def _brute_force_calibration(probabilities, target, n_bins, bins):
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == target
    ece, mce = 0.0, 0.0
    for b in range(n_bins):
        members = [i for i in range(len(target)) if _in_bin(confidence[i], b, n_bins, bins)]
        if members:
            gap = abs(np.mean(correct[members]) - np.mean(confidence[members]))
            ece += len(members) / len(target) * gap
            mce = max(mce, gap)
    return {"ece": ece, "mce": mce}


@pytest.mark.parametrize("bins", ["public_code", "upper_closed"])
@pytest.mark.parametrize("n_bins", [15, 4])
def test_calibration_matches_a_brute_force_loop(n_bins, bins):
    rng = np.random.default_rng(2)
    logits = 3 * rng.normal(size=(400, 6))
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    # Over-confident on purpose: targets drawn from flatter probabilities than reported.
    flat = np.exp(logits / 3) / np.exp(logits / 3).sum(axis=1, keepdims=True)
    target = np.array([rng.choice(6, p=row) for row in flat])
    # confidences on the edges: 1, 0.5 and 0.25 (one-hot rows and ties of two or four)
    probabilities[:3] = [[1, 0, 0, 0, 0, 0], [0.5, 0.5, 0, 0, 0, 0], [0.25] * 4 + [0, 0]]
    got = calibration_errors(probabilities, target, n_bins=n_bins, bins=bins)
    assert got == pytest.approx(_brute_force_calibration(probabilities, target, n_bins, bins))
    assert 0.05 < got["ece"] < got["mce"]


def test_calibration_hand_case():
    # Confidences 0.9 (right), 0.9 (wrong), 0.6 (right) in two bins of width 1/2:
    # bin (1/2, 1]: acc 2/3, conf 0.8 -> ECE = |2/3 - 0.8| = 2/15 = MCE.
    probabilities = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4]])
    for bins in ("public_code", "upper_closed"):
        got = calibration_errors(probabilities, np.array([0, 0, 0]), n_bins=2, bins=bins)
        assert got == pytest.approx({"ece": 2 / 15, "mce": 2 / 15})


def test_a_confidence_of_one_is_in_no_bin_of_the_public_code_but_counts_in_n():
    # Confidences 1.0 (right) and 0.75 (wrong), two bins of width 1/2.
    probabilities = np.array([[1.0, 0.0], [0.25, 0.75]])
    target = np.array([0, 0])
    # public code: [1/2, 1) holds only 0.75: gap 0.75, weighted 1/2 (N = 2 counts the 1.0)
    public = calibration_errors(probabilities, target, n_bins=2, bins="public_code")
    assert public == pytest.approx({"ece": 0.375, "mce": 0.75})
    # upper-closed: (1/2, 1] holds both: acc 1/2, conf 0.875 -> gap 0.375
    closed = calibration_errors(probabilities, target, n_bins=2, bins="upper_closed")
    assert closed == pytest.approx({"ece": 0.375, "mce": 0.375})


def test_level_accuracy_hand_case():
    # Classes 0, 1 under ancestor 0; class 2 under ancestor 1.
    level = np.array([0, 0, 1])
    pred = np.array([0, 1, 2, 0])
    target = np.array([0, 0, 1, 2])  # right, sibling, other ancestor, other ancestor
    assert level_accuracy(pred, target, level) == pytest.approx(2 / 4)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: calibration_errors(np.full((2, 2), 1.5), np.array([0, 1])), "in \\[0, 1\\]"),
        (lambda: calibration_errors(np.ones(2), np.array([0, 1])), "probabilities: expected"),
        (lambda: calibration_errors(np.eye(2), np.array([0])), "target: expected 2 labels"),
        (lambda: calibration_errors(np.eye(2), np.array([0, 2])), "target: expected labels in"),
        (lambda: calibration_errors(np.eye(2), np.array([0, 1]), n_bins=0), "n_bins: expected"),
        (lambda: calibration_errors(np.eye(2), np.array([0, 1]), bins="open"), "bins: expected"),
        (lambda: level_accuracy(np.array([3]), np.array([0]), np.array([0, 0, 1])), "pred: exp"),
        (lambda: level_accuracy(np.array([0]), np.array([0, 1]), np.array([0, 1])), "same len"),
        (lambda: level_accuracy(np.array([0]), np.array([0]), np.array([0.0])), "level_labels"),
    ],
)
def test_calibration_and_level_bad_input(call, match):
    with pytest.raises(HierpipeError, match=match):
        call()
