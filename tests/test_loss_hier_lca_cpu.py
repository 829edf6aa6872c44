"""HIER's LCA choice in compiled CPU passes (hierpipe/losses/hier_lca_cpu.py) against
independent computations: its noise against the uniform distribution, its exp and log against
float64 NumPy, its stochastic choices and gradients against the public code's straight-through
formula (tests/public_hier_formulation.py) in float64 on the same uniforms, the frequencies of
its choices against the softmax they sample, and its deterministic choice against torch's
argmin."""

from __future__ import annotations

import numba
import numpy as np
import public_hier_formulation as public
import pytest
import scipy.stats
import torch

from hierpipe.losses import HIERLoss, hier_lca_cpu
from hierpipe.losses.hier_lca_cpu import choose_lcas, counter_uniforms


@numba.njit(fastmath=True)
def _each(function, x: np.ndarray) -> np.ndarray:
    """`function` on each element, called from fast-math code as the kernels call it."""
    out = np.empty_like(x)
    for n in range(len(x)):
        out[n] = function(x[n])
    return out


def _ulps(approximate: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """Errors in units in the last place of the float32 nearest the exact value."""
    return np.abs(approximate - exact) / np.spacing(exact.astype(np.float32)).astype(np.float64)


def test_counter_uniforms_are_uniform_repeatable_and_independent_of_neighbours():
    u = counter_uniforms(seed=3, kind=0, count=1000, proxies=512)
    assert u.dtype == np.float32 and u.shape == (1000, 512)
    assert u.min() > 0 and u.max() < 1
    assert scipy.stats.kstest(u.ravel(), "uniform").pvalue > 1e-3
    flat = u.ravel().astype(np.float64)
    assert abs(np.corrcoef(flat[:-1], flat[1:])[0, 1]) < 0.01
    for other in (counter_uniforms(3, 1, 1000, 512), counter_uniforms(4, 0, 1000, 512)):
        assert abs(np.corrcoef(flat, other.ravel())[0, 1]) < 0.01
    assert np.array_equal(u, counter_uniforms(3, 0, 1000, 512))


def test_noise_logarithm_is_within_two_ulp_over_every_uniform_the_kernels_draw():
    # every value U = (b + 1/2) 2^-23 can take, b < 2^23, is a normal float32 in (0, 1)
    u = ((np.arange(2**23, dtype=np.float64) + 0.5) * 2.0**-23).astype(np.float32)
    exact = -np.log(u.astype(np.float64))
    assert _ulps(_each(hier_lca_cpu._neg_log, u).astype(np.float64), exact).max() <= 2


def test_exponential_is_within_two_ulp_down_to_its_floor():
    x = np.linspace(-87.0, 0.0, 1_000_001, dtype=np.float32)
    exact = np.exp(x.astype(np.float64))
    assert _ulps(_each(hier_lca_cpu._exp_nonpositive, x).astype(np.float64), exact).max() <= 2
    # below the floor it stays at exp(-87), a weight no proxy of a finite score gets beaten by
    below = _each(hier_lca_cpu._exp_nonpositive, np.array([-87.5, -200.0, -1e30], dtype=np.float32))
    assert np.all(
        below == _each(hier_lca_cpu._exp_nonpositive, np.array([-87.0], dtype=np.float32))[0]
    )


def test_deterministic_choice_is_torch_argmin_with_ties_to_the_lower_index():
    generator = torch.Generator().manual_seed(0)
    dist = torch.randint(0, 4, (30, 40), generator=generator).float()  # many exact ties
    triplets = torch.randint(0, 30, (500, 3), generator=generator)
    lcas, straight_through = choose_lcas(dist, triplets, tau=0.1, seed=None)
    _, pair_max, triple_max = public.lca_scores(dist, triplets)
    assert straight_through is None
    for chosen, scores in zip(lcas, (pair_max, triple_max), strict=True):
        assert ((scores == scores.min(dim=1, keepdim=True).values).sum(dim=1) > 1).any()
        # torch.argmin returns the first minimal index
        assert torch.equal(chosen, scores.argmin(dim=1))


@pytest.mark.parametrize("seed", range(3))
def test_stochastic_value_and_gradients_equal_the_public_straight_through_on_the_same_noise(
    seed: int, monkeypatch: pytest.MonkeyPatch
):
    generator = torch.Generator().manual_seed(seed)
    count, proxies = 300, 64
    dist = torch.rand(40, proxies, generator=generator) * 3
    # random rows: k = i and j = i occur, so that the kernel's row updates alias
    triplets = torch.randint(0, 40, (count, 3), generator=generator)
    assert (triplets[:, 2] == triplets[:, 0]).any()
    loss = HIERLoss(2, num_proxies=proxies, topk=2, margin=0.5, tau=0.5)
    monkeypatch.setattr(loss, "_seed", lambda: 1234 + seed)
    ours = dist.clone().requires_grad_()
    value, _ = loss._triplet_loss(ours, triplets, stochastic=True)
    value.backward()

    uniforms = tuple(
        torch.from_numpy(counter_uniforms(1234 + seed, kind, count, proxies)).double()
        for kind in (0, 1)
    )
    reference = dist.double().requires_grad_()
    # hierpipe gives a maximum's gradient to the earlier member at exact ties, which k = i
    # makes at every proxy; torch.maximum would halve it between the two
    expected = public.triplet_part(
        reference,
        triplets,
        0.5,
        0.5,
        True,
        uniforms=uniforms,
        maximum=public.maximum_to_first_at_ties,
    )
    expected.backward()
    assert value.item() > 0
    assert value.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(ours.grad.double(), reference.grad, rtol=1e-4, atol=1e-6)
    # the soft assignment reaches proxies that were not chosen, as the public gradient does
    (chosen_only,) = torch.autograd.grad(loss.triplet_loss(dist.requires_grad_(), triplets), dist)
    assert (ours.grad != 0).sum() > (chosen_only != 0).sum()


def test_stochastic_choice_samples_the_softmax_of_negative_max_distance():
    dist = torch.tensor([[0.0, 0.1, 0.3], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    triplets = torch.tensor([[0, 1, 2]]).expand(40_000, 3)
    lcas, _ = choose_lcas(dist, triplets, tau=0.1, seed=7)
    expected = torch.softmax(-dist[0] / 0.1, dim=0)
    for chosen in lcas:  # pair and triple: max with zero rows changes nothing
        frequencies = torch.bincount(chosen, minlength=3) / len(chosen)
        torch.testing.assert_close(frequencies, expected, atol=0.01, rtol=0)


def test_same_seed_same_choice_and_gradient_and_another_seed_another_choice():
    generator = torch.Generator().manual_seed(0)
    dist = torch.rand(50, 128, generator=generator)
    triplets = torch.randint(0, 50, (400, 3), generator=generator)
    upstream = torch.randn(2, 3, 400, generator=generator)

    def run(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        leaf = dist.clone().requires_grad_()
        lcas, straight_through = choose_lcas(leaf, triplets, tau=0.1, seed=seed)
        assert torch.equal(straight_through, torch.zeros(2, 3, 400))
        (straight_through * upstream).sum().backward()
        return lcas, leaf.grad

    first, again, other = run(5), run(5), run(6)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])
