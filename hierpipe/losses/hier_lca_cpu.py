"""HIER's LCA choice as two compiled CPU passes over each triplet's distance rows
(docs/methods/hier.md, "The LCA choice on the CPU").

For a triplet (i, j, k) and each candidate proxy p, HIER scores the pair's LCA by
s_p = max(d_ip, d_jp) and the triple's by max(d_ip, d_jp, d_kp), then takes a hard
Gumbel-softmax sample of -s / tau (the argmin when deterministic). As tensor operations that is
a few dozen passes over (triplets x proxies) arrays per part, plus one uniform draw per element
from torch's sequential CPU generator: most of HIER's time. Here each triplet's three rows are
read while they sit in cache, and the noise is counter-based, so that threads share no
generator and the backward pass regenerates the noise instead of storing it.

Each thread takes one run of triplets; the backward pass sums the threads' gradient
accumulators, so the gradient's last bits depend on the number of threads, as torch's own CPU
reductions do, and the choices do not.

Gumbel-max without the double logarithm: with E_p = -log U_p, an Exp(1) variable, the soft
assignment softmax(-s / tau - log E)_p is w_p / sum_q w_q with
w_p = exp(-(s_p - min s) / tau) / E_p, and its argmax is the sample.
"""

from __future__ import annotations

import numba
import numpy as np
import torch
from torch import Tensor

from hierpipe.core.kernel_threads import thread_runs

# SplitMix64 (Steele, Lea, Flood, "Fast splittable pseudorandom number generators", OOPSLA
# 2014): the generator's output at position n is the finaliser applied to seed + (n + 1) * gamma.
_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)
_ONE = np.uint64(1)
# The top 23 bits: U = (bits + 1/2) 2^-23 is exact in float32 and lies in [2^-24, 1 - 2^-24],
# so E = -log U is finite and positive (with 24 bits, 2^24 - 1/2 would round up to 1).
_TOP_23 = np.uint64(41)
_TWO_TO_MINUS_23 = np.float32(2.0**-23)
_HALF = np.float32(0.5)
# Below this exp(x) is a float32 subnormal; clamping keeps the exponent arithmetic valid.
_EXP_FLOOR = np.float32(-87.0)
_LOG2_E = np.float32(1.44269504088896341)
# ln 2 split in two for an exact range reduction (Cody and Waite).
_LN2_HIGH = np.float32(0.693359375)
_LN2_LOW = np.float32(-2.12194440e-4)
_SQRT_HALF = np.float32(0.70710678)
# Fast-math without reassociation for exp and log: the kernels' loops reassociate their sums
# (so that they vectorise), which would undo the exact range reductions. These two are
# separate functions, so that their instructions keep their own flags when inlined.
_EXACT_STEPS = {"nnan", "ninf", "nsz", "contract"}


@numba.njit(inline="always")
def _uniform(seed: np.uint64, position: np.uint64) -> np.float32:
    z = seed + (position + _ONE) * _GAMMA
    z = (z ^ (z >> np.uint64(30))) * _MIX_1
    z = (z ^ (z >> np.uint64(27))) * _MIX_2
    z = z ^ (z >> np.uint64(31))
    return (np.float32(z >> _TOP_23) + _HALF) * _TWO_TO_MINUS_23


@numba.njit(fastmath=_EXACT_STEPS, error_model="numpy")
def _neg_log(x: np.float32) -> np.float32:
    """-log(x) for a normal float32 x > 0 (within 2 ulp for every uniform the kernels draw):
    x = m 2^e with m in [sqrt(1/2), sqrt(2)), log(m) by the minimax polynomial of Moshier's
    Cephes logf. Written out so
    that the loops that call it vectorise; numba would call libm once per element."""
    bits = np.float32(x).view(np.int32)
    exponent = np.float32(((bits >> 23) & 0xFF) - 126)
    mantissa = np.int32((bits & 0x807FFFFF) | 0x3F000000).view(np.float32)  # in [1/2, 1)
    below = np.float32(mantissa < _SQRT_HALF)  # arithmetic, not a branch: the loop vectorises
    exponent -= below
    mantissa += mantissa * below
    m = mantissa - np.float32(1.0)
    m2 = m * m
    poly = (
        (
            (
                (
                    (
                        (
                            (np.float32(7.0376836292e-2) * m - np.float32(1.1514610310e-1)) * m
                            + np.float32(1.1676998740e-1)
                        )
                        * m
                        - np.float32(1.2420140846e-1)
                    )
                    * m
                    + np.float32(1.4249322787e-1)
                )
                * m
                - np.float32(1.6668057665e-1)
            )
            * m
            + np.float32(2.0000714765e-1)
        )
        * m
        - np.float32(2.4999993993e-1)
    ) * m + np.float32(3.3333331174e-1)
    log_m = m + (poly * m * m2 - _HALF * m2) + exponent * _LN2_LOW
    return -(log_m + exponent * _LN2_HIGH)


@numba.njit(fastmath=_EXACT_STEPS, error_model="numpy")
def _exp_nonpositive(x: np.float32) -> np.float32:
    """exp(x) for x <= 0, within 2 ulp down to exp(-87) (where it stays): x = n ln 2 + r,
    e^r by the minimax polynomial of Moshier's Cephes expf, 2^n added to the exponent bits."""
    x = max(x, _EXP_FLOOR)
    n = np.floor(x * _LOG2_E + _HALF)
    r = x - n * _LN2_HIGH - n * _LN2_LOW
    poly = (
        (
            (np.float32(1.9875691500e-4) * r + np.float32(1.3981999507e-3)) * r
            + np.float32(8.3334519073e-3)
        )
        * r
        + np.float32(4.1665795894e-2)
    ) * r + np.float32(1.6666665459e-1)
    e_r = (poly * r + _HALF) * r * r + r + np.float32(1.0)
    return np.int32(np.float32(e_r).view(np.int32) + (np.int32(n) << 23)).view(np.float32)


@numba.njit(inline="always", fastmath=True, error_model="numpy")
def _scores(dist: np.ndarray, i: int, j: int, k: int, triple: bool, out: np.ndarray) -> float:
    """max(d_i, d_j) (pair) or max(d_i, d_j, d_k) (triple) into `out`; returns its minimum."""
    # The minimum over an integer key with the floats' order (sign-magnitude bits turned
    # two's complement): it vectorises where a float minimum does not.
    least_key = np.int32(0x7FFFFFFF)
    for p in range(dist.shape[1]):
        score = max(dist[i, p], dist[j, p])
        if triple:
            score = max(score, dist[k, p])
        out[p] = score
        key = _order_key(score)
        least_key = key if key < least_key else least_key
    return _from_order_key(least_key)


@numba.njit(inline="always", fastmath=True, error_model="numpy")
def _order_key(value: np.float32) -> np.int32:
    """The float's bits as an int32 in the floats' order: sign-magnitude to two's complement."""
    bits = np.float32(value).view(np.int32)
    return np.int32(bits ^ ((bits >> 31) & 0x7FFFFFFF))


@numba.njit(inline="always", fastmath=True, error_model="numpy")
def _from_order_key(key: np.int32) -> np.float32:
    return np.int32(key ^ ((key >> 31) & 0x7FFFFFFF)).view(np.float32)


@numba.njit(inline="always", fastmath=True, error_model="numpy")
def _soft_weights(
    scores: np.ndarray, lowest: float, inv_tau: np.float32, seed: np.uint64, start: np.uint64
) -> tuple[float, float]:
    """scores -> w_p = exp(-(s_p - lowest) / tau) / E_p in place, E_p from positions start + p;
    returns the sum and the largest of w."""
    lowest32 = np.float32(lowest)
    total = np.float32(0.0)
    # w >= 0, whose float order is the order of its bits as integers: an integer maximum
    # vectorises, a float one (NaN rules) does not, and costs 5x the whole loop.
    largest_bits = np.int32(0)
    for p in range(len(scores)):
        noise = _neg_log(_uniform(seed, start + np.uint64(p)))
        weight = _exp_nonpositive((lowest32 - scores[p]) * inv_tau) / noise
        scores[p] = weight
        total += weight
        bits = np.float32(weight).view(np.int32)
        largest_bits = bits if bits > largest_bits else largest_bits
    return total, np.int32(largest_bits).view(np.float32)


@numba.njit(inline="always", fastmath=True, error_model="numpy")
def _first_index_of(values: np.ndarray, target: float) -> int:
    """The lowest p with values[p] == target, as an integer minimum, which vectorises."""
    target32 = np.float32(target)
    count = len(values)
    first = count
    for p in range(count):
        candidate = p if values[p] == target32 else count
        first = candidate if candidate < first else first
    return first


@numba.njit(cache=True, parallel=True, fastmath=True, error_model="numpy")
def _choose(
    dist: np.ndarray,
    triplets: np.ndarray,
    inv_tau: np.float32,
    seed: np.uint64,
    stochastic: bool,
    bounds: np.ndarray,
    chosen: np.ndarray,
    lowest: np.ndarray,
    total: np.ndarray,
) -> None:
    """Each triplet's pair LCA (kind 0) and triple LCA (kind 1) into `chosen` (2, T); when
    stochastic, the min score and sum of w that the backward pass needs into `lowest`, `total`."""
    count, proxies = triplets.shape[0], dist.shape[1]
    for chunk in numba.prange(len(bounds) - 1):
        work = np.empty(proxies, np.float32)
        for t in range(bounds[chunk], bounds[chunk + 1]):
            i, j, k = triplets[t, 0], triplets[t, 1], triplets[t, 2]
            for kind in range(2):
                least = _scores(dist, i, j, k, kind == 1, work)
                if not stochastic:
                    chosen[kind, t] = _first_index_of(work, least)
                    continue
                start = np.uint64((kind * count + t) * proxies)
                total[kind, t], largest = _soft_weights(work, least, inv_tau, seed, start)
                chosen[kind, t] = _first_index_of(work, largest)
                lowest[kind, t] = least


@numba.njit(cache=True, parallel=True, fastmath=True, error_model="numpy")
def _soft_gradient(
    dist: np.ndarray,
    triplets: np.ndarray,
    inv_tau: np.float32,
    seed: np.uint64,
    bounds: np.ndarray,
    lowest: np.ndarray,
    total: np.ndarray,
    grad: np.ndarray,
    out: np.ndarray,
) -> None:
    """Gradient of `sum_{kind, m} grad[kind, m, t] * sum_p soft[kind, t, p] d_{m, p}` (the
    straight-through term) with respect to `dist`, through the softmax and the maxima, each
    maximum's gradient to the row it came from (ties to the earlier member); one (N, M)
    accumulator per chunk in `out`."""
    count, proxies = triplets.shape[0], dist.shape[1]
    for chunk in numba.prange(len(bounds) - 1):
        soft = np.empty(proxies, np.float32)
        weighted = np.empty(proxies, np.float32)
        # the gradient each member's row gets, summed over the triplet's two LCAs
        to_i = np.empty(proxies, np.float32)
        to_j = np.empty(proxies, np.float32)
        to_k = np.empty(proxies, np.float32)
        acc = out[chunk]
        for t in range(bounds[chunk], bounds[chunk + 1]):
            i, j, k = triplets[t, 0], triplets[t, 1], triplets[t, 2]
            touched = False
            for kind in range(2):
                g_i, g_j, g_k = grad[kind, 0, t], grad[kind, 1, t], grad[kind, 2, t]
                # Most triplets' hinges are inactive or masked: nothing flows back.
                if g_i == 0 and g_j == 0 and g_k == 0:
                    continue
                if not touched:
                    to_i[:] = 0
                    to_j[:] = 0
                    to_k[:] = 0
                    touched = True
                triple = kind == 1
                _scores(dist, i, j, k, triple, soft)
                start = np.uint64((kind * count + t) * proxies)
                _soft_weights(soft, lowest[kind, t], inv_tau, seed, start)
                scale = np.float32(1.0) / total[kind, t]
                dot = np.float32(0.0)
                for p in range(proxies):
                    soft[p] *= scale
                    weighted[p] = g_i * dist[i, p] + g_j * dist[j, p] + g_k * dist[k, p]
                    dot += soft[p] * weighted[p]
                for p in range(proxies):
                    # d(soft . weighted)/d(score_p) through softmax(-score / tau + noise),
                    # to the member the maximum came from (ties to the earlier one)
                    g = soft[p] * (dot - weighted[p]) * inv_tau
                    a, b = dist[i, p], dist[j, p]
                    g_to_k = g if triple and dist[k, p] > max(a, b) else np.float32(0.0)
                    g_to_j = g - g_to_k if b > a else np.float32(0.0)
                    to_k[p] += g_to_k
                    to_j[p] += g_to_j
                    to_i[p] += g - g_to_k - g_to_j
            if touched:
                # one row at a time: k may be i
                for p in range(proxies):
                    acc[i, p] += to_i[p]
                for p in range(proxies):
                    acc[j, p] += to_j[p]
                for p in range(proxies):
                    acc[k, p] += to_k[p]


def counter_uniforms(seed: int, kind: int, count: int, proxies: int) -> np.ndarray:
    """The uniforms (count, proxies) that the kernels draw for the pair (kind 0) or triple
    (kind 1) LCAs of `count` triplets under `seed`: the noise to give the tensor formulation
    for the same choice."""
    positions = np.arange(kind * count * proxies, (kind + 1) * count * proxies, dtype=np.uint64)
    return _uniforms(np.uint64(seed), positions).reshape(count, proxies)


@numba.njit(cache=True)
def _uniforms(seed: np.uint64, positions: np.ndarray) -> np.ndarray:
    out = np.empty(len(positions), np.float32)
    for n in range(len(positions)):
        out[n] = _uniform(seed, positions[n])
    return out


class _SoftChoice(torch.autograd.Function):
    """Zero (2, 3, T) whose gradient is the straight-through term's: member m's distance to
    the kind's LCA gets `grad[kind, m, t] * sum_p soft[kind, t, p] d_m[p]`, differentiated
    through the soft assignment only (the chosen distance's own gradient flows elsewhere)."""

    @staticmethod
    def forward(ctx, dist: Tensor, kernel_args: tuple) -> Tensor:
        """`kernel_args`: _soft_gradient's (triplets, inv_tau, seed, bounds, lowest, total)."""
        ctx.save_for_backward(dist)
        ctx.kernel_args = kernel_args
        return dist.new_zeros((2, 3, len(kernel_args[0])))

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        (dist,) = ctx.saved_tensors
        bounds = ctx.kernel_args[3]
        out = np.zeros((len(bounds) - 1, *dist.shape), np.float32)
        matrix = dist.detach().contiguous().numpy()
        _soft_gradient(matrix, *ctx.kernel_args, grad.contiguous().numpy(), out)
        return torch.from_numpy(out.sum(axis=0)), None


def choose_lcas(
    dist: Tensor, triplets: Tensor, tau: float, seed: int | None
) -> tuple[Tensor, Tensor | None]:
    """LCA indices (2, T) of each triplet's pair and triple among the columns of `dist`
    ((N, M), float32 on the CPU, finite: the kernels compile with fast-math), and the
    straight-through term (2, 3, T) to add to the members' distances to them: a hard
    Gumbel-softmax sample under `seed`, or the argmin (lowest index at ties) and no term
    when `seed` is None."""
    matrix = dist.detach().contiguous().numpy()
    rows = triplets.contiguous().numpy()
    count = len(rows)
    stochastic = seed is not None
    chosen = np.empty((2, count), np.int64)
    lowest = np.empty((2, count), np.float32)
    total = np.empty((2, count), np.float32)
    bounds = thread_runs(count)
    inv_tau = np.float32(1.0 / tau)
    seed64 = np.uint64(seed % 2**64) if stochastic else np.uint64(0)
    _choose(matrix, rows, inv_tau, seed64, stochastic, bounds, chosen, lowest, total)
    indices = torch.from_numpy(chosen)
    if not stochastic:
        return indices, None
    return indices, _SoftChoice.apply(dist, (rows, inv_tau, seed64, bounds, lowest, total))
