import math

import numpy as np
import pytest

from hierpipe.evaluation.metrics import representative_retrieval


def _brute_force(vectors: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """Section 6.5 per representative: rank the others by chord distance, R = |G| - 1."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    totals, scored = {"precision@1": 0.0, "r_precision": 0.0, "map@r": 0.0}, 0
    for j in range(len(unit)):
        r = int((groups == groups[j]).sum()) - 1
        if r == 0:
            continue  # lone group
        others = [i for i in range(len(unit)) if i != j]
        others.sort(key=lambda i: np.linalg.norm(unit[i] - unit[j]))
        relevant = [groups[i] == groups[j] for i in others]
        totals["precision@1"] += relevant[0]
        totals["r_precision"] += sum(relevant[:r]) / r
        totals["map@r"] += (
            sum(sum(relevant[:k]) / k for k in range(1, r + 1) if relevant[k - 1]) / r
        )
        scored += 1
    return {name: value / scored for name, value in totals.items()}


def test_matches_a_brute_force_loop():
    rng = np.random.default_rng(3)
    groups = rng.integers(0, 6, size=40)
    groups[0] = 6  # a lone group, excluded
    vectors = rng.normal(size=(7, 8))[groups] + 0.8 * rng.normal(size=(40, 8))
    got = representative_retrieval(vectors, groups)
    assert got == pytest.approx(_brute_force(vectors, groups))
    assert 0.2 < got["map@r"] < 0.9


def test_hand_case_and_all_lone_groups():
    # Angles 0, 10, 100, 110 degrees; groups A A B A. Neighbours by angle:
    #   0: 10A 100B 110A  R=2  P@1 1  R-prec 1/2  MAP@R 1/2
    #  10: 0A 100B 110A   R=2  P@1 1  R-prec 1/2  MAP@R 1/2
    # 110: 100B 10A 0A    R=2  P@1 0  R-prec 1/2  MAP@R (1/2)(1/2)
    angles = np.radians([0.0, 10.0, 100.0, 110.0])
    vectors = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    got = representative_retrieval(vectors, np.array([0, 0, 1, 0]))
    assert got == pytest.approx({"precision@1": 2 / 3, "r_precision": 1 / 2, "map@r": 5 / 12})
    lone = representative_retrieval(vectors, np.arange(4))
    assert all(math.isnan(v) for v in lone.values())
