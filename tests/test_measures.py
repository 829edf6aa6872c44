"""The measure registry (hierpipe.core.catalog.MEASURES): every measure evaluation writes is
declared there, with the direction that tables and comparisons use."""

import pytest

from hierpipe.core import catalog
from hierpipe.core.errors import HierpipeError


@pytest.mark.parametrize(
    ("measure", "expected"),
    [
        ("retrieval/recall@1", 1),
        ("retrieval/recall@100", 1),
        ("retrieval/ahs", 1),
        ("retrieval/level1_map@r", 1),
        ("classification/logits/hp@5", 1),
        ("hierarchy/proxy/classwise_spearman", 1),
        ("classification/logits/ahc", -1),
        ("classification/prototype/ahd@5", -1),
        ("classification/logits/ece", -1),
        ("hierarchy/prototype/norm_rf", -1),
        ("hierarchy/hier_proxy/induced_norm_rf", -1),
        ("hierarchy/proxy/classwise_spearman_p", 0),
        ("hierarchy/proxy/num_classes", 0),
        ("retrieval/ahs_k", 0),
        # random vectors give the chance level of a measure, not a score to rank
        ("hierarchy/random_vectors/classwise_spearman", 0),
    ],
)
def test_direction_of_measures(measure, expected):
    assert catalog.measure_direction(measure) == expected


@pytest.mark.parametrize(
    ("measure", "label"),
    [
        ("classification/logits/top5", "top-5"),  # the model's own classifier: implied
        ("classification/prototype/top1", "top-1 (prototype)"),
        ("classification/logits/hp@10_devise", "HP@10 (DeViSE)"),
        ("retrieval/recall@4", "R@4"),
        ("retrieval/level2_precision@1", "level-2 P@1"),
        ("hierarchy/proxy/classwise_spearman", "classwise rho (proxy)"),
    ],
)
def test_labels_fill_in_numbers_and_the_kind(measure, label):
    assert catalog.measure_label(measure) == label


def test_an_unknown_measure_fails_naming_it():
    with pytest.raises(HierpipeError, match=r"unknown measure 'retrieval/mrr'; known measures"):
        catalog.measure_direction("retrieval/mrr")
