import pytest

from hierpipe.evaluation.measures import direction


@pytest.mark.parametrize(
    ("measure", "expected"),
    [
        ("retrieval/recall@1", 1),
        ("retrieval/ahs", 1),
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
        ("hierarchy/random_vectors/classwise_spearman", 0),
    ],
)
def test_direction_of_measures(measure, expected):
    assert direction(measure) == expected
