import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from hierpipe.core.errors import HierpipeError
from hierpipe.reporting.statistics import (
    CORRECTIONS,
    Interval,
    adjust_p_values,
    mean_confidence_interval,
    paired_t_test,
    wilcoxon_signed_rank,
)

REL = 1e-10

PAIRED = {
    "n3-positive": ([0.61, 0.64, 0.70], [0.55, 0.60, 0.58]),
    "n5-negative": ([0.41, 0.39, 0.45, 0.40, 0.38], [0.44, 0.45, 0.46, 0.47, 0.40]),
    "n10-positive": (
        [0.71, 0.69, 0.74, 0.70, 0.73, 0.68, 0.75, 0.72, 0.70, 0.71],
        [0.70, 0.70, 0.71, 0.69, 0.70, 0.69, 0.71, 0.70, 0.69, 0.70],
    ),
    "n10-negative": (
        [1.2, -0.4, 0.3, 2.2, -1.0, 0.1, 0.7, -0.2, 0.5, 0.0],
        [1.9, 0.4, 0.2, 2.5, -0.1, 1.1, 0.6, 0.8, 0.9, 0.3],
    ),
}


# --- mean_confidence_interval -----------------------------------------------------------------


@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_interval_matches_scipy_t_interval(confidence):
    values = np.array([0.61, 0.64, 0.70, 0.66, 0.59])
    result = mean_confidence_interval(values, confidence=confidence)
    low, high = stats.t.interval(
        confidence, len(values) - 1, loc=values.mean(), scale=stats.sem(values)
    )
    assert result.n == 5
    assert result.mean == pytest.approx(values.mean(), rel=REL)
    assert result.sd == pytest.approx(values.std(ddof=1), rel=REL)
    assert (result.low, result.high) == pytest.approx((low, high), rel=REL)


def test_interval_drops_nan():
    result = mean_confidence_interval([1.0, math.nan, 2.0, 3.0])
    assert result.n == 3
    assert result.mean == 2.0
    assert result.sd == 1.0
    half = stats.t.ppf(0.975, 2) / math.sqrt(3)
    assert (result.low, result.high) == pytest.approx((2.0 - half, 2.0 + half), rel=REL)


def test_interval_small_samples():
    empty = mean_confidence_interval([math.nan])
    assert empty.n == 0
    assert all(math.isnan(x) for x in (empty.mean, empty.sd, empty.low, empty.high))
    single = mean_confidence_interval([0.7])
    assert (single.n, single.mean) == (1, 0.7)
    assert all(math.isnan(x) for x in (single.sd, single.low, single.high))
    assert mean_confidence_interval([2.0, 2.0, 2.0]) == Interval(3, 2.0, 0.0, 2.0, 2.0)


@pytest.mark.parametrize("confidence", [0.0, 1.0, 95, -0.5, math.nan])
def test_interval_rejects_bad_confidence(confidence):
    with pytest.raises(HierpipeError, match=r"confidence .*expected .*\(0, 1\)"):
        mean_confidence_interval([1.0, 2.0], confidence=confidence)


def test_interval_rejects_non_vector():
    with pytest.raises(HierpipeError, match="values: expected a 1-D"):
        mean_confidence_interval([[1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(HierpipeError, match="values: expected a sequence of numbers"):
        mean_confidence_interval(["a", "b"])


# --- paired_t_test ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", PAIRED)
def test_t_test_matches_scipy(name):
    treatment, control = PAIRED[name]
    result = paired_t_test(treatment, control)
    expected = stats.ttest_rel(treatment, control)
    differences = np.subtract(treatment, control)
    assert result.n == len(treatment)
    assert result.t == pytest.approx(expected.statistic, rel=REL)
    assert result.p == pytest.approx(expected.pvalue, rel=REL)
    assert result.mean_difference == pytest.approx(differences.mean(), rel=REL)
    assert result.sd_difference == pytest.approx(differences.std(ddof=1), rel=REL)
    assert result.effect_size == pytest.approx(
        differences.mean() / differences.std(ddof=1), rel=REL
    )
    assert np.sign(result.t) == np.sign(differences.mean())


@pytest.mark.parametrize("name", PAIRED)
@pytest.mark.parametrize("confidence", [0.9, 0.95])
def test_t_test_confidence_interval(name, confidence):
    treatment, control = PAIRED[name]
    result = paired_t_test(treatment, control, confidence=confidence)
    differences = np.subtract(treatment, control)
    n = len(differences)
    half = stats.t.ppf((1 + confidence) / 2, n - 1) * differences.std(ddof=1) / math.sqrt(n)
    by_hand = (differences.mean() - half, differences.mean() + half)
    scipy_ci = stats.ttest_rel(treatment, control).confidence_interval(confidence_level=confidence)
    assert (result.ci_low, result.ci_high) == pytest.approx(by_hand, rel=REL)
    assert (result.ci_low, result.ci_high) == pytest.approx(tuple(scipy_ci), rel=REL)


def test_t_test_drops_pairs_with_nan():
    result = paired_t_test([0.5, math.nan, 0.7, 0.9, 0.6], [0.4, 0.3, math.nan, 0.6, 0.5])
    expected = stats.ttest_rel([0.5, 0.9, 0.6], [0.4, 0.6, 0.5])
    assert result.n == 3
    assert (result.t, result.p) == pytest.approx((expected.statistic, expected.pvalue), rel=REL)


@pytest.mark.parametrize("difference", [1.0, -2.0])
# scipy warns that constant differences lose precision; they are exact here.
@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")
def test_t_test_constant_nonzero_difference_matches_scipy(difference):
    control = np.array([3.0, 5.0, 7.0])
    result = paired_t_test(control + difference, control)
    expected = stats.ttest_rel(control + difference, control)
    assert result.t == expected.statistic == math.copysign(math.inf, difference)
    assert result.p == expected.pvalue == 0.0
    assert result.effect_size == math.copysign(math.inf, difference)
    assert result.sd_difference == 0.0
    assert (result.ci_low, result.ci_high) == (difference, difference)
    assert tuple(expected.confidence_interval()) == (difference, difference)


def test_t_test_all_zero_differences_matches_scipy():
    result = paired_t_test([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    expected = stats.ttest_rel([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert math.isnan(expected.statistic) and math.isnan(expected.pvalue)
    assert math.isnan(result.t) and math.isnan(result.p) and math.isnan(result.effect_size)
    assert (result.mean_difference, result.sd_difference) == (0.0, 0.0)
    assert (result.ci_low, result.ci_high) == (0.0, 0.0)


def test_t_test_too_few_pairs():
    single = paired_t_test([0.7, math.nan], [0.5, 0.4])
    assert single.n == 1
    assert single.mean_difference == pytest.approx(0.2)
    fields = ("sd_difference", "ci_low", "ci_high", "t", "p", "effect_size")
    assert all(math.isnan(getattr(single, field)) for field in fields)
    empty = paired_t_test([], [])
    assert empty.n == 0 and math.isnan(empty.mean_difference)


def test_t_test_rejects_length_mismatch():
    with pytest.raises(HierpipeError, match="treatment has 3 values but control has 2"):
        paired_t_test([1.0, 2.0, 3.0], [1.0, 2.0])


def test_t_test_rejects_bad_confidence():
    with pytest.raises(HierpipeError, match=r"confidence 1\.5"):
        paired_t_test([1.0, 2.0], [0.0, 0.0], confidence=1.5)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(-10, 10, allow_subnormal=False), st.floats(-10, 10, allow_subnormal=False)
        ),
        min_size=3,
        max_size=20,
    )
)
def test_t_test_matches_scipy_on_random_data(pairs):
    treatment, control = map(np.array, zip(*pairs, strict=True))
    differences = treatment - control
    # Near-constant differences make both t statistics rounding noise.
    if differences.std(ddof=1) <= 1e-6 * max(1.0, abs(differences.mean())):
        return
    result = paired_t_test(treatment, control)
    expected = stats.ttest_rel(treatment, control)
    assert result.t == pytest.approx(expected.statistic, rel=1e-8)
    assert result.p == pytest.approx(expected.pvalue, rel=1e-8, abs=1e-300)


# --- wilcoxon_signed_rank ---------------------------------------------------------------------


def _check_wilcoxon(treatment, control, method):
    result = wilcoxon_signed_rank(treatment, control)
    expected = stats.wilcoxon(treatment, control)
    assert result.method == method
    assert result.statistic == pytest.approx(expected.statistic, rel=REL)
    assert result.p == pytest.approx(expected.pvalue, rel=REL)
    return result


@pytest.mark.parametrize("n", range(3, 13))
def test_wilcoxon_exact_without_ties(n):
    rng = np.random.default_rng(n)
    control = rng.normal(size=n)
    # Distinct magnitudes, a shift and random signs so W+ varies from case to case.
    differences = rng.permutation(np.arange(1, n + 1)) * 0.1 * rng.choice([-1, 1], size=n) + 0.03
    result = _check_wilcoxon(control + differences, control, "exact")
    assert result.n == n


def test_wilcoxon_exact_by_hand():
    # d = [1, 2, 3]: W+ = 6, W- = 0; only 1 of the 8 sign patterns has W- <= 0, so p = 2/8.
    result = wilcoxon_signed_rank([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
    assert (result.n, result.statistic, result.p, result.method) == (3, 0.0, 0.25, "exact")
    # d = [-1, 2, 3, 4]: W- = 1; subsets of {1..4} with sum <= 1 are {} and {1}: p = 2 * 2/16.
    result = wilcoxon_signed_rank([-1.0, 2.0, 3.0, 4.0], [0.0] * 4)
    assert (result.statistic, result.p) == (1.0, 0.25)
    # A single non-zero difference: W+ or W- is 0 with probability 1/2, p = 1.
    assert wilcoxon_signed_rank([1.0], [0.0]).p == 1.0


@pytest.mark.parametrize(
    "differences",
    [
        [1.0, 1.0, 2.0, -3.0, 4.0, 4.0, 5.0],
        [0.5, -0.5, 1.0, 2.0, 2.0, 2.0, -3.0, 4.0, 5.0, 6.0, 7.0, 8.0],
        [2.0, 2.0, 2.0, 2.0],
    ],
)
def test_wilcoxon_ties_small(differences):
    result = _check_wilcoxon(np.array(differences), np.zeros(len(differences)), "permutation")
    assert result.n == len(differences)


@pytest.mark.parametrize(
    "differences",
    [
        [0.0, 1.0, 2.0, 3.0, -4.0, 5.0],
        [0.0, 0.0, 1.0, -2.0, 3.0, 4.0, 5.0, 6.0, 7.0, -8.0, 9.0, 10.0, 11.0],
        [0.0, 1.0, 1.0, -2.0],
        [0.0, 1.0],
    ],
)
def test_wilcoxon_zeros_small(differences):
    result = _check_wilcoxon(np.array(differences), np.zeros(len(differences)), "permutation")
    assert result.n == np.count_nonzero(differences)


def test_wilcoxon_ties_and_zeros_medium_use_normal():
    # 14 to 50 pairs with ties or zeros: scipy's "auto" falls back to the normal approximation.
    rng = np.random.default_rng(7)
    tied = rng.integers(-6, 9, size=30).astype(float)
    _check_wilcoxon(tied, np.zeros(30), "normal")
    zero_only = np.concatenate(([0.0], np.arange(1.0, 20.0) * rng.choice([-1, 1], size=19)))
    _check_wilcoxon(zero_only, np.zeros(20), "normal")


def test_wilcoxon_exact_up_to_fifty_pairs():
    rng = np.random.default_rng(50)
    differences = rng.permutation(np.arange(1.0, 51.0)) * rng.choice([-1, 1], size=50) + 0.1
    _check_wilcoxon(differences, np.zeros(50), "exact")


@pytest.mark.parametrize("ties", [False, True])
def test_wilcoxon_normal_above_fifty_pairs(ties):
    rng = np.random.default_rng(51)
    if ties:
        differences = rng.integers(-10, 14, size=80).astype(float)  # ties and zeros
    else:
        differences = rng.normal(0.2, 1.0, size=60)
    result = _check_wilcoxon(differences, np.zeros(differences.size), "normal")
    assert result.n == np.count_nonzero(differences)


def test_wilcoxon_counts_zeros_in_the_fifty_pair_threshold():
    # 50 distinct non-zero differences plus one zero: 51 pairs, so normal, as scipy.
    differences = np.concatenate(([0.0], np.arange(1.0, 51.0) * np.tile([1, -1, 1], 17)[:50]))
    result = _check_wilcoxon(differences, np.zeros(51), "normal")
    assert result.n == 50


def test_wilcoxon_drops_pairs_with_nan():
    treatment = [1.0, math.nan, 3.5, 4.0, 2.0, 7.0]
    control = [0.5, 2.0, 3.0, math.nan, 2.4, 6.2]
    result = wilcoxon_signed_rank(treatment, control)
    expected = stats.wilcoxon([1.0, 3.5, 2.0, 7.0], [0.5, 3.0, 2.4, 6.2])
    assert result.n == 4
    assert (result.statistic, result.p) == pytest.approx(
        (expected.statistic, expected.pvalue), rel=REL
    )


def test_wilcoxon_without_nonzero_differences():
    for treatment, control in ([[1.0, 2.0], [1.0, 2.0]], [[], []], [[math.nan], [1.0]]):
        result = wilcoxon_signed_rank(treatment, control)
        assert result.n == 0 and result.method == "none"
        assert math.isnan(result.statistic) and math.isnan(result.p)


def test_wilcoxon_rejects_length_mismatch():
    with pytest.raises(HierpipeError, match="treatment has 2 values but control has 3"):
        wilcoxon_signed_rank([1.0, 2.0], [1.0, 2.0, 3.0])


# --- adjust_p_values --------------------------------------------------------------------------


def test_holm_by_hand():
    adjusted = adjust_p_values([0.01, 0.04, 0.03, 0.005], "holm")
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02], rtol=REL)


def test_holm_is_the_default_and_capped():
    np.testing.assert_allclose(adjust_p_values([0.5, 0.2, 0.3]), [0.6, 0.6, 0.6], rtol=REL)
    np.testing.assert_allclose(adjust_p_values([0.9, 0.8]), [1.0, 1.0])


def test_bonferroni():
    adjusted = adjust_p_values([0.01, 0.04, 0.3], "bonferroni")
    np.testing.assert_allclose(adjusted, [0.03, 0.12, 0.9], rtol=REL)
    np.testing.assert_allclose(adjust_p_values([0.5, 0.2], "bonferroni"), [1.0, 0.4], rtol=REL)


@pytest.mark.parametrize(
    "p_values",
    [
        [0.01, 0.04, 0.03, 0.005],
        [0.001, 0.008, 0.039, 0.041, 0.042, 0.06, 0.074, 0.205, 0.212, 0.216],
        [0.5, 0.5, 0.01, 0.9, 0.02],
        [0.7],
    ],
)
def test_bh_matches_scipy(p_values):
    np.testing.assert_allclose(
        adjust_p_values(p_values, "bh"), stats.false_discovery_control(p_values), rtol=REL
    )


def test_none_returns_a_copy():
    raw = np.array([0.01, math.nan, 0.5])
    adjusted = adjust_p_values(raw, "none")
    np.testing.assert_array_equal(adjusted, raw)
    assert adjusted is not raw


@pytest.mark.parametrize("method", CORRECTIONS)
def test_nan_p_values_stay_nan_and_do_not_count(method):
    adjusted = adjust_p_values([0.01, math.nan, 0.04, math.nan], method)
    assert np.isnan(adjusted[[1, 3]]).all()
    np.testing.assert_allclose(adjusted[[0, 2]], adjust_p_values([0.01, 0.04], method), rtol=REL)


@pytest.mark.parametrize("method", CORRECTIONS)
def test_empty_family(method):
    assert adjust_p_values([], method).shape == (0,)


def test_unknown_correction():
    with pytest.raises(HierpipeError, match="correction 'fdr': expected one of holm, bonferroni"):
        adjust_p_values([0.1], "fdr")


def test_p_values_out_of_range():
    with pytest.raises(HierpipeError, match=r"expected probabilities in \[0, 1\]"):
        adjust_p_values([0.1, 1.2])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 1.0) | st.just(math.nan), max_size=25))
def test_corrections_properties(p_values):
    raw = np.array(p_values, dtype=float)
    present = ~np.isnan(raw)
    holm = adjust_p_values(raw, "holm")
    bonferroni = adjust_p_values(raw, "bonferroni")
    for method in CORRECTIONS:
        adjusted = adjust_p_values(raw, method)
        np.testing.assert_array_equal(np.isnan(adjusted), ~present)
        assert (adjusted[present] >= raw[present]).all()
        assert (adjusted[present] <= 1.0).all()
        # Adjustment keeps the order of the raw p-values.
        order = np.argsort(raw[present], kind="stable")
        assert (np.diff(adjusted[present][order]) >= 0).all()
    assert (holm[present] <= bonferroni[present]).all()
