"""Statistics across seeds for result tables: confidence intervals, paired tests, corrections.

Every test pairs runs by seed: ``treatment[i]`` and ``control[i]`` come from the same seed, and a
pair with a NaN on either side (a run that did not produce the measure) is dropped. The numbers
match scipy.stats (ttest_rel, wilcoxon, false_discovery_control), which the tests check; scipy is
used here only for the t and normal distribution functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from hierpipe.core.catalog import CORRECTIONS
from hierpipe.core.errors import HierpipeError

# scipy.stats.wilcoxon(method="auto") gives up the exact null distribution above this many pairs.
_EXACT_MAX_PAIRS = 50
# With ties or zeros, scipy enumerates all 2**n sign flips while 2**n is below its default
# 9999 resamples, i.e. up to this many pairs; beyond it, it uses the normal approximation.
_PERMUTATION_MAX_PAIRS = 13


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` values with their sample sd and a t confidence interval [low, high]."""

    n: int
    mean: float
    sd: float
    low: float
    high: float


@dataclass(frozen=True)
class PairedTest:
    """Paired t-test of treatment - control; effect_size is Cohen's d_z."""

    n: int
    mean_difference: float
    sd_difference: float
    ci_low: float
    ci_high: float
    t: float
    p: float
    effect_size: float


@dataclass(frozen=True)
class SignedRankTest:
    """Wilcoxon signed-rank test; ``n`` counts the non-zero differences."""

    n: int
    statistic: float
    p: float
    method: str


def _as_vector(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as error:
        raise HierpipeError(f"{name}: expected a sequence of numbers ({error})") from error
    if array.ndim != 1:
        raise HierpipeError(f"{name}: expected a 1-D sequence, got shape {array.shape}")
    return array


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise HierpipeError(f"confidence {confidence!r}: expected a number strictly in (0, 1)")


def _t_half_width(sd: float, n: int, confidence: float) -> float:
    return float(stats.t.ppf((1.0 + confidence) / 2.0, n - 1)) * sd / math.sqrt(n)


def mean_confidence_interval(
    values: Sequence[float] | np.ndarray, confidence: float = 0.95
) -> Interval:
    """Mean, sample sd (ddof=1) and Student-t confidence interval of the non-NaN ``values``.

    With no values everything is NaN; with one value the mean is that value and sd, low and high
    are NaN. With sd 0 the interval collapses to the mean.
    """
    _check_confidence(confidence)
    array = _as_vector(values, "values")
    array = array[~np.isnan(array)]
    n = int(array.size)
    if n == 0:
        return Interval(0, math.nan, math.nan, math.nan, math.nan)
    mean = float(array.mean())
    if n == 1:
        return Interval(1, mean, math.nan, math.nan, math.nan)
    sd = float(array.std(ddof=1))
    half = _t_half_width(sd, n, confidence)
    return Interval(n, mean, sd, mean - half, mean + half)


def _paired_differences(
    treatment: Sequence[float] | np.ndarray, control: Sequence[float] | np.ndarray
) -> np.ndarray:
    treated = _as_vector(treatment, "treatment")
    controls = _as_vector(control, "control")
    if treated.size != controls.size:
        raise HierpipeError(
            f"treatment has {treated.size} values but control has {controls.size}: "
            "expected one value per seed on each side"
        )
    differences = treated - controls
    return differences[~(np.isnan(treated) | np.isnan(controls))]


def paired_t_test(
    treatment: Sequence[float] | np.ndarray,
    control: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
) -> PairedTest:
    """Two-sided paired t-test of d = treatment - control, as scipy.stats.ttest_rel.

    t = mean(d) / (sd(d) / sqrt(n)) with sd at ddof=1, p from Student t with n - 1 dof, the
    confidence interval is that of mean(d), effect_size = mean(d) / sd(d) (Cohen's d_z).

    Edge cases, following scipy.stats.ttest_rel and its confidence_interval():

    - n < 2: t, p, sd, the interval and effect_size are NaN; mean_difference is d itself when
      n == 1 and NaN when n == 0.
    - every difference equal and non-zero (sd 0): t and effect_size are +-inf, p is 0.0 and the
      interval collapses to the mean difference.
    - every difference zero: t, p and effect_size are NaN (scipy gives p NaN, not 1.0) and the
      interval is [0, 0].
    """
    _check_confidence(confidence)
    differences = _paired_differences(treatment, control)
    n = int(differences.size)
    if n == 0:
        return PairedTest(0, *[math.nan] * 7)
    mean = float(differences.mean())
    if n == 1:
        return PairedTest(1, mean, *[math.nan] * 6)
    sd = float(differences.std(ddof=1))
    half = _t_half_width(sd, n, confidence)
    if sd == 0.0:
        # Dividing by zero here would only warn; the limits are what scipy reports.
        t = math.copysign(math.inf, mean) if mean != 0.0 else math.nan
        effect_size = t
    else:
        t = mean / (sd / math.sqrt(n))
        effect_size = mean / sd
    p = 2.0 * float(stats.t.sf(abs(t), n - 1))
    return PairedTest(n, mean, sd, mean - half, mean + half, t, p, effect_size)


def _doubled_average_ranks(magnitudes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Twice the average ranks (integers, since tied ranks average to halves) and tie sizes."""
    order = np.argsort(magnitudes, kind="stable")
    ordered = magnitudes[order]
    breaks = np.flatnonzero(np.diff(ordered) != 0) + 1
    starts = np.concatenate(([0], breaks))
    ends = np.concatenate((breaks, [ordered.size]))
    sizes = ends - starts
    # A group at sorted positions start..end-1 holds ranks start+1..end, averaging (start+1+end)/2.
    doubled = np.empty(ordered.size, dtype=np.int64)
    doubled[order] = np.repeat(starts + 1 + ends, sizes)
    return doubled, sizes


def _signed_rank_exact_p(doubled_ranks: np.ndarray, doubled_smaller: int) -> float:
    """Two-sided p of the smaller rank sum under all 2**n equally likely sign assignments."""
    # counts[s] = number of sign assignments whose positive (doubled) ranks sum to s. At most
    # 2**50 assignments, so int64 holds every count.
    counts = np.zeros(int(doubled_ranks.sum()) + 1, dtype=np.int64)
    counts[0] = 1
    for rank in doubled_ranks:
        counts[rank:] = counts[rank:] + counts[:-rank]
    lower_tail = int(counts[: doubled_smaller + 1].sum())
    # The null is symmetric, so P(W+ <= min) doubles into the two-sided p.
    return min(1.0, 2 * lower_tail / 2 ** int(doubled_ranks.size))


def wilcoxon_signed_rank(
    treatment: Sequence[float] | np.ndarray, control: Sequence[float] | np.ndarray
) -> SignedRankTest:
    """Two-sided Wilcoxon signed-rank test of d = treatment - control, as scipy.stats.wilcoxon.

    Zero differences are dropped (zero_method="wilcox") and ``n`` counts the rest; |d| is ranked
    with average ranks for ties; statistic = min(W+, W-). The method follows scipy 1.17's
    method="auto", which decides on the number of pairs *including* zero differences:

    - more than 50 pairs: "normal";
    - otherwise, no zeros and no ties among |d|: "exact", the null distribution of W+ over all
      2**n sign assignments of ranks 1..n;
    - otherwise, at most 13 pairs: "permutation", the same sign-flip distribution but over the
      tied average ranks (scipy runs an exhaustive permutation_test here);
    - otherwise: "normal".

    "normal" is z = (W+ - n(n+1)/4) / sqrt(n(n+1)(2n+1)/24 - sum(t^3 - t)/48) over tie groups
    of the non-zero |d|, without continuity correction, p = 2 * sf(|z|).

    With no non-zero difference left, statistic and p are NaN and method is "none"; scipy instead
    reports statistic 0 with p 1.0 (up to 13 pairs) or NaN, an artefact of its method switch.
    """
    differences = _paired_differences(treatment, control)
    pairs = int(differences.size)
    nonzero = differences[differences != 0]
    n = int(nonzero.size)
    if n == 0:
        return SignedRankTest(0, math.nan, math.nan, "none")
    doubled, tie_sizes = _doubled_average_ranks(np.abs(nonzero))
    doubled_plus = int(doubled[nonzero > 0].sum())
    doubled_minus = int(doubled.sum()) - doubled_plus
    doubled_smaller = min(doubled_plus, doubled_minus)
    statistic = doubled_smaller / 2
    has_ties = bool((tie_sizes > 1).any())
    if pairs <= _EXACT_MAX_PAIRS and not has_ties and n == pairs:
        return SignedRankTest(n, statistic, _signed_rank_exact_p(doubled, doubled_smaller), "exact")
    if pairs <= _PERMUTATION_MAX_PAIRS:
        p = _signed_rank_exact_p(doubled, doubled_smaller)
        return SignedRankTest(n, statistic, p, "permutation")
    variance = n * (n + 1) * (2 * n + 1) / 24 - float((tie_sizes**3 - tie_sizes).sum()) / 48
    z = (doubled_plus / 2 - n * (n + 1) / 4) / math.sqrt(variance)
    p = min(1.0, 2.0 * float(stats.norm.sf(abs(z))))
    return SignedRankTest(n, statistic, p, "normal")


def adjust_p_values(p_values: Sequence[float] | np.ndarray, method: str = "holm") -> np.ndarray:
    """Adjust a family of p-values for multiple comparisons, in their original order.

    "holm" is the Holm-Bonferroni step-down, "bonferroni" multiplies by m, "bh" is the
    Benjamini-Hochberg step-up (as scipy.stats.false_discovery_control), "none" returns a copy.
    Adjusted values are monotone in the raw ones and capped at 1. NaN p-values stay NaN and do
    not count in the family size m.
    """
    if method not in CORRECTIONS:
        raise HierpipeError(f"correction {method!r}: expected one of {', '.join(CORRECTIONS)}")
    raw = _as_vector(p_values, "p_values")
    present = ~np.isnan(raw)
    if ((raw[present] < 0) | (raw[present] > 1)).any():
        raise HierpipeError(f"p_values {raw.tolist()}: expected probabilities in [0, 1] or NaN")
    adjusted = raw.copy()
    if method == "none":
        return adjusted
    family = raw[present]
    m = family.size
    if method == "bonferroni":
        adjusted[present] = np.minimum(1.0, family * m)
        return adjusted
    order = np.argsort(family, kind="stable")
    ordered = family[order]
    position = np.arange(1, m + 1)
    if method == "holm":
        # Step-down: a hypothesis is rejected only if every smaller p was, hence the running max.
        stepped = np.maximum.accumulate(np.minimum(1.0, ordered * (m - position + 1)))
    else:
        # Step-up: a hypothesis is rejected if any larger p was, hence the running min from the top.
        stepped = np.minimum.accumulate(np.minimum(1.0, ordered * (m / position))[::-1])[::-1]
    in_family_order = np.empty(m)
    in_family_order[order] = stepped
    adjusted[present] = in_family_order
    return adjusted
