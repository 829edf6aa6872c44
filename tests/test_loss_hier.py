"""HIER (Kim, Jeong, Kwak, CVPR 2023; github.com/tjddus9597/HIER-CVPR23, hier/losses.py,
HIERLoss): hinge terms by hand, the whole loss and its gradients against the public code's
formulation (tests/public_hier_formulation.py), gradients, reciprocal mining against a
brute-force definition, Gumbel LCA choice, fallbacks and errors."""

from __future__ import annotations

import math

import geoopt
import numpy as np
import public_hier_formulation as public
import pytest
import torch
from torch.func import functional_call

from hierpipe.core.errors import HierpipeError
from hierpipe.core.geometry import pairwise_distances, to_poincare
from hierpipe.losses import HIERLoss
from hierpipe.losses.hier import GEOMETRIES

# Four proxies and three samples in the plane, with their Euclidean distances (rows: samples).
_PROXY_POINTS = torch.tensor([[2.0, 0.0], [2.0, -3.0], [-1.0, -1.0], [3.0, 1.0]])
_SAMPLE_POINTS = torch.tensor([[2.0, 3.0], [2.0, -1.0], [3.0, -3.0]])
_R5, _R10, _R20 = math.sqrt(5), math.sqrt(10), math.sqrt(20)
_DIST = torch.tensor(
    [
        [3.0, 6.0, 5.0, _R5],  # s0 = (2, 3)
        [1.0, 2.0, 3.0, _R5],  # s1 = (2, -1)
        [_R10, 1.0, _R20, 4.0],  # s2 = (3, -3)
    ],
    dtype=torch.float64,
)
# (0, 1, 2): max(d0, d1) = (3, 6, 5, r5) -> pair LCA p3; with d2: (r10, 6, 5, 4) -> triple LCA
# p0. (0, 2, 1): max(d0, d2) = (r10, 6, 5, 4) -> p0, and d1 changes no maximum -> p0 again,
# so that triplet is masked.
_TRIPLETS = torch.tensor([[0, 1, 2], [0, 2, 1]])


def _hinges(margin: float) -> list[float]:
    """The three hinge terms of triplet (0, 1, 2): pair LCA p3, triple LCA p0."""
    return [
        max(0.0, _R5 - 3.0 + margin),  # d(s0, p3) - d(s0, p0) + margin
        max(0.0, _R5 - 1.0 + margin),  # d(s1, p3) - d(s1, p0) + margin
        max(0.0, _R10 - 4.0 + margin),  # d(s2, p0) - d(s2, p3) + margin
    ]


def _ball_points(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    tangent = torch.randn(n, dim, dtype=torch.float64, generator=generator)
    return to_poincare(tangent, curvature=0.1, clip_r=2.3)


def test_hand_distances_come_from_the_plane_points():
    computed = pairwise_distances(_SAMPLE_POINTS.double(), _PROXY_POINTS.double(), "euclidean")
    torch.testing.assert_close(computed, _DIST)


@pytest.mark.parametrize("margin", [0.1, 1.0])
def test_triplet_loss_matches_hand_computed_hinges(margin: float):
    loss = HIERLoss(2, num_proxies=4, topk=2, margin=margin)
    # margin 0.1: only s1's hinge is active (r5 - 0.9); margin 1: all three are.
    expected = sum(_hinges(margin)) / 2  # the masked triplet counts as a zero in the mean
    assert loss.triplet_loss(_DIST, _TRIPLETS).item() == pytest.approx(expected, rel=1e-12)
    assert loss.triplet_loss(_DIST, _TRIPLETS[:1]).item() == pytest.approx(2 * expected)
    assert loss.triplet_loss(_DIST, _TRIPLETS[1:]).item() == 0.0


def test_triplet_loss_gradcheck():
    loss = HIERLoss(2, num_proxies=4, topk=2, margin=1.0)
    dist = _DIST.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda d: loss.triplet_loss(d, _TRIPLETS), (dist,))


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_forward_gradcheck_deterministic(geometry: str):
    generator = torch.Generator()
    loss = HIERLoss(
        3,
        num_proxies=6,
        topk=3,
        triplets_per_anchor=4,
        margin=1.0,
        stochastic=False,
        geometry=geometry,
        generator=generator,
    ).double()
    labels = torch.arange(4).repeat_interleave(2)
    embeddings = _ball_points(8, 3).requires_grad_()

    def value(z: torch.Tensor, proxies: torch.Tensor = loss.proxies) -> torch.Tensor:
        generator.manual_seed(1)  # the same triplets on every evaluation
        return functional_call(loss, {"proxies": proxies}, (z, labels))

    assert value(embeddings).item() > 0
    assert torch.autograd.gradcheck(value, (embeddings,))
    if geometry != "poincare":
        # The poincare proxies' gradient is deliberately rescaled, not exact: the public code
        # maps them with ToPoincare(riemannian=True) (hier/hyptorch/pmath.py,
        # RiemannianGradient).
        proxies = loss.proxies.detach().clone().requires_grad_()
        assert torch.autograd.gradcheck(lambda p: value(embeddings.detach(), p), (proxies,))


def _recorded_mining(loss: HIERLoss, monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """The triplets `loss` mines, sample triplets first (forward mines samples, then proxies)."""
    mined: list[torch.Tensor] = []
    mine = loss.mine_triplets
    monkeypatch.setattr(loss, "mine_triplets", lambda s: mined.append(mine(s)) or mined[-1])
    return mined


def _reference_loss(
    embeddings: torch.Tensor,
    tangent_proxies: torch.Tensor,
    geometry: str,
    triplets: list[torch.Tensor],
    margin: float,
) -> torch.Tensor:
    """HIER by the public code's formulation on the given triplets, deterministic (argmin).

    poincare: the public Möbius distance matrix of the node set [z; rho], rho the proxies
    through ToPoincare(riemannian=True) as in the public HIERLoss.forward. sphere (hierpipe's
    HIERsph, not in the public code): 2 - 2cos between unit rows, as the public HIERLoss uses
    for hyp_c = 0, with the proxies normalised.
    """
    if geometry == "poincare":
        rho = to_poincare(tangent_proxies, 0.1, 2.3, riemannian=True)
        distances = public.node_distances(embeddings, rho, 0.1)
    else:
        nodes = torch.cat([embeddings, tangent_proxies])
        unit = nodes / nodes.norm(dim=1, keepdim=True)
        distances = 2 - 2 * unit @ unit.T
    batch = len(embeddings)
    # Proxies i and j both score d(i, j) as candidates for their own pair's LCA: an exact tie
    # in hierpipe's distances, which are symmetric, resolved to the lower index by the argmin.
    # The public Möbius sums round d(i, j) and d(j, i) differently and would break the tie
    # at random; symmetrising restores it, which the public argmin resolves the same way.
    between = distances[batch:, batch:]
    between = (between + between.T) / 2
    return public.triplet_part(
        distances[:batch, batch:], triplets[0], margin, tau=0.1, stochastic=False
    ) + public.triplet_part(between, triplets[1], margin, tau=0.1, stochastic=False)


def _value_and_gradients(
    loss: HIERLoss, embeddings: torch.Tensor, labels: torch.Tensor
) -> tuple[float, torch.Tensor, torch.Tensor]:
    z = embeddings.clone().requires_grad_()
    loss.zero_grad()
    value = loss(z, labels)
    value.backward()
    return value.item(), z.grad, loss.proxies.grad.clone()


@pytest.mark.parametrize("seed", range(4))
def test_forward_and_gradients_equal_the_public_formulation(
    seed: int, monkeypatch: pytest.MonkeyPatch
):
    # Without the + 1e-5 guard of the public Möbius denominator, which hierpipe's closed form
    # leaves out on purpose (it shortens distances by ~2e-5 relative; benchmarks/hier_loss.py
    # measures it), the two distance matrices agree to rounding.
    monkeypatch.setattr(public, "MOBIUS_EPS", 0.0)
    torch.manual_seed(seed)  # the proxies' initialisation
    loss = HIERLoss(
        6,
        num_proxies=32,
        topk=6,
        margin=0.5,
        stochastic=False,
        generator=torch.Generator().manual_seed(seed),
    ).double()
    mined = _recorded_mining(loss, monkeypatch)
    labels = torch.arange(12).repeat_interleave(2)
    embeddings = _ball_points(24, 6, seed)
    value, z_grad, proxy_grad = _value_and_gradients(loss, embeddings, labels)

    ref_z = embeddings.clone().requires_grad_()
    ref_proxies = loss.proxies.detach().clone().requires_grad_()
    expected = _reference_loss(ref_z, ref_proxies, "poincare", mined, margin=0.5)
    expected.backward()
    assert len(mined[0]) > 0 and len(mined[1]) > 0 and value > 0
    assert value == pytest.approx(expected.item(), rel=1e-12)
    torch.testing.assert_close(z_grad, ref_z.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(proxy_grad, ref_proxies.grad, rtol=1e-9, atol=1e-12)

    # The public NumPy mining on its own distances finds the same anchors and positives (50
    # draws per anchor from at most 5 mutual neighbours cover them all), and negatives
    # outside them. The draws themselves differ, so the losses above share hierpipe's.
    np.random.seed(seed)
    rho = to_poincare(loss.proxies.detach(), 0.1, 2.3)
    theirs = public.mine(public.node_distances(embeddings, rho, 0.1), labels, 6, 50)
    for ours, reference in zip(mined, theirs, strict=True):
        pairs = {tuple(t) for t in ours[:, :2].tolist()}
        assert pairs == {tuple(t) for t in reference[:, :2].tolist()}
        for i, _, k in [*ours.tolist(), *reference.tolist()]:
            assert (i, k) not in pairs


@pytest.mark.parametrize("geometry", ["poincare", "sphere"])
def test_full_size_forward_and_gradients_equal_the_public_formulation(
    geometry: str, monkeypatch: pytest.MonkeyPatch
):
    # The released sizes but for the batch, proxies and dimension: top-20 neighbours, 50
    # triplets per anchor, margin 0.1.
    monkeypatch.setattr(public, "MOBIUS_EPS", 0.0)
    torch.manual_seed(0)
    loss = HIERLoss(
        16,
        num_proxies=64,
        geometry=geometry,
        stochastic=False,
        generator=torch.Generator().manual_seed(0),
    ).double()
    # the premise of the reference's tie handling: exactly symmetric proxy distances
    proxies = loss.hierarchical_proxies()
    between = pairwise_distances(
        proxies, proxies, GEOMETRIES[geometry], curvature=0.1 if geometry == "poincare" else None
    )
    assert torch.equal(between, between.T)
    mined = _recorded_mining(loss, monkeypatch)
    embeddings = _ball_points(40, 16)
    value, z_grad, proxy_grad = _value_and_gradients(
        loss, embeddings, torch.arange(20).repeat_interleave(2)
    )

    ref_z = embeddings.clone().requires_grad_()
    ref_proxies = loss.proxies.detach().clone().requires_grad_()
    expected = _reference_loss(ref_z, ref_proxies, geometry, mined, margin=0.1)
    expected.backward()
    assert len(mined[0]) > 0 and len(mined[1]) > 0 and value > 0
    assert value == pytest.approx(expected.item(), rel=1e-12)
    torch.testing.assert_close(z_grad, ref_z.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(proxy_grad, ref_proxies.grad, rtol=1e-9, atol=1e-12)


def _mutual_neighbours(similarities: torch.Tensor, k: int) -> list[set[int]]:
    """Brute force: b is a mutual neighbour of a != b if each is in the other's top k."""
    n = len(similarities)
    top = [set(sorted(range(n), key=lambda b: -similarities[a, b].item())[:k]) for a in range(n)]
    return [{b for b in range(n) if b != a and b in top[a] and a in top[b]} for a in range(n)]


@pytest.mark.parametrize("symmetric", [True, False])
def test_mining_returns_only_reciprocal_pairs(symmetric: bool):
    generator = torch.Generator().manual_seed(3)
    similarities = torch.rand(30, 30, generator=generator)
    if symmetric:
        similarities = (similarities + similarities.T) / 2
    loss = HIERLoss(2, num_proxies=6, topk=6, triplets_per_anchor=7, generator=generator)
    triplets = loss.mine_triplets(similarities)
    mutual = _mutual_neighbours(similarities, 6)

    valid = {a for a in range(30) if len(mutual[a]) >= 2}
    assert valid  # the configuration must exercise the sampling
    anchors = triplets[:, 0].tolist()
    assert set(anchors) == valid
    assert all(anchors.count(a) == 7 for a in valid)
    for i, j, k in triplets.tolist():
        assert j in mutual[i]
        assert k not in mutual[i]


def test_mining_covers_every_mutual_neighbour_and_may_draw_the_anchor_as_k():
    generator = torch.Generator().manual_seed(0)
    similarities = torch.rand(12, 12, generator=generator)
    similarities = (similarities + similarities.T) / 2
    loss = HIERLoss(2, num_proxies=5, topk=5, triplets_per_anchor=400, generator=generator)
    triplets = loss.mine_triplets(similarities)
    mutual = _mutual_neighbours(similarities, 5)
    for a in set(triplets[:, 0].tolist()):
        rows = triplets[triplets[:, 0] == a]
        assert set(rows[:, 1].tolist()) == mutual[a]
        assert (
            set(rows[:, 2].tolist()) == set(range(12)) - mutual[a]
        )  # includes a, as the public code does


def test_same_label_bonus_enters_the_sample_similarities(monkeypatch: pytest.MonkeyPatch):
    embeddings = _ball_points(6, 3).float()
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    seen = []
    for bonus in (True, False):
        loss = HIERLoss(3, num_proxies=8, topk=3, same_label_bonus=bonus)
        mine = loss.mine_triplets
        monkeypatch.setattr(loss, "mine_triplets", lambda s, mine=mine: seen.append(s) or mine(s))
        loss(embeddings, labels)
    with_bonus, without = seen[0], seen[2]  # the first call of each forward mines samples
    same = (labels[:, None] == labels[None, :]).float()
    torch.testing.assert_close(with_bonus, without + same)
    distances = pairwise_distances(embeddings, embeddings, "poincare", curvature=0.1)
    torch.testing.assert_close(without, torch.exp(-distances))


def test_gumbel_choice_equals_argmin_as_tau_goes_to_zero():
    # Samples to proxies: no exact ties. (Proxy triplets have them by construction: proxies i
    # and j both score d(i, j) as pair LCA candidates, and the argmin takes the lower index
    # where the Gumbel choice takes either.)
    torch.manual_seed(0)  # the proxies' initialisation; no test order may change it
    generator = torch.Generator().manual_seed(0)
    loss = HIERLoss(3, num_proxies=8, topk=4, tau=1e-8, generator=generator).double()
    embeddings = _ball_points(12, 3, seed=5)
    dist = pairwise_distances(embeddings, loss.hierarchical_proxies(), "poincare", curvature=0.1)
    triplets = loss.mine_triplets(
        torch.exp(-pairwise_distances(embeddings, embeddings, "euclidean"))
    )
    deterministic = loss.triplet_loss(dist, triplets).item()
    assert deterministic > 0
    for _ in range(50):
        stochastic, _ = loss._triplet_loss(dist, triplets, stochastic=True)
        assert stochastic.item() == pytest.approx(deterministic, abs=1e-12)


def test_eval_mode_takes_the_argmin():
    embeddings = _ball_points(12, 3, seed=5).float()
    labels = torch.arange(6).repeat_interleave(2)
    values = []
    for stochastic in (True, False):
        torch.manual_seed(0)
        generator = torch.Generator().manual_seed(0)
        loss = HIERLoss(3, num_proxies=8, topk=4, stochastic=stochastic, generator=generator)
        values.append(loss.eval()(embeddings, labels).item())
    assert values[0] == values[1]


def test_gumbel_choice_samples_the_softmax_of_negative_max_distance():
    generator = torch.Generator().manual_seed(0)
    loss = HIERLoss(2, num_proxies=3, topk=2, tau=0.1, generator=generator)
    max_dist = torch.tensor([[0.0, 0.1, 0.3]]).expand(40000, 3)
    choices = loss._gumbel_softmax(max_dist).argmax(dim=1)
    frequencies = torch.bincount(choices, minlength=3) / 40000
    torch.testing.assert_close(frequencies, torch.softmax(-max_dist[0] / 0.1, 0), atol=0.01, rtol=0)


def _public_straight_through(dist, triplets, tau, margin, generator):
    """HIERLoss.compute_gHHC of the public code (public.triplet_part) with its Gumbel noise
    drawn from `generator`, pair first, then triple, as hierpipe's tensor path draws it."""
    shape = (len(triplets), dist.shape[1])
    uniforms = tuple(torch.rand(shape, dtype=dist.dtype, generator=generator) for _ in range(2))
    return public.triplet_part(dist, triplets, margin, tau, True, uniforms=uniforms)


def test_straight_through_value_and_gradient_equal_the_public_formula():
    generator = torch.Generator().manual_seed(0)
    dist = (torch.rand(10, 6, dtype=torch.float64, generator=generator) * 3).requires_grad_()
    triplets = torch.randint(0, 10, (40, 3), generator=generator)
    loss = HIERLoss(2, num_proxies=6, topk=2, margin=0.5, tau=0.5, generator=generator)
    for seed in range(5):
        generator.manual_seed(seed)
        value, _ = loss._triplet_loss(dist, triplets, stochastic=True)
        (grad,) = torch.autograd.grad(value, dist)
        generator.manual_seed(seed)
        expected = _public_straight_through(dist, triplets, 0.5, 0.5, generator)
        (expected_grad,) = torch.autograd.grad(expected, dist)
        assert value.item() == pytest.approx(expected.item(), abs=1e-12)
        torch.testing.assert_close(grad, expected_grad, atol=1e-12, rtol=0)
    # Unlike the argmin, the soft assignment passes gradient to proxies that were not chosen.
    (deterministic_grad,) = torch.autograd.grad(loss.triplet_loss(dist, triplets), dist)
    assert (grad != 0).sum() > (deterministic_grad != 0).sum()


def test_one_sample_per_class_mines_on_distances_alone():
    embeddings = _ball_points(24, 4).float()
    labels = torch.arange(24)
    values = []
    for bonus in (True, False):
        generator = torch.Generator().manual_seed(0)
        loss = HIERLoss(4, num_proxies=16, topk=5, same_label_bonus=bonus, generator=generator)
        torch.manual_seed(0)
        loss.proxies.data.copy_(torch.randn(16, 4))
        values.append(loss(embeddings, labels))
        assert loss.last_stats["sample_triplets"] > 0
    # The bonus then only raises the diagonal, which already ranks first.
    assert values[0].item() == values[1].item()


def test_no_valid_anchor_gives_an_attached_zero():
    # With topk = 2 a row's neighbours are itself and one other: nobody has 2 mutual ones.
    loss = HIERLoss(3, num_proxies=8, topk=2)
    embeddings = _ball_points(6, 3).float().requires_grad_()
    value = loss(embeddings, torch.arange(3).repeat_interleave(2))
    assert value.item() == 0.0
    assert loss.last_stats == {
        "sample_triplets": 0,
        "sample_masked": 0.0,
        "proxy_triplets": 0,
        "proxy_masked": 0.0,
    }
    value.backward()
    assert torch.equal(embeddings.grad, torch.zeros_like(embeddings))


def _masked_fraction(dist: np.ndarray, triplets: list[list[int]]) -> float:
    """Fraction of triplets whose pair LCA, argmin_p max(d_i, d_j), is also the triple's."""
    same = 0
    for i, j, k in triplets:
        pair = np.maximum(dist[i], dist[j])
        same += int(pair.argmin() == np.maximum(pair, dist[k]).argmin())
    return same / len(triplets)


def test_last_stats_count_triplets_and_masked_fraction(monkeypatch: pytest.MonkeyPatch):
    loss = HIERLoss(8, num_proxies=32, topk=6, triplets_per_anchor=5, stochastic=False).double()
    mined = _recorded_mining(loss, monkeypatch)
    embeddings, labels = _ball_points(20, 8), torch.arange(10).repeat_interleave(2)
    loss(embeddings, labels)

    ball = geoopt.PoincareBall(c=torch.tensor(0.1, dtype=torch.float64))
    proxies = loss.hierarchical_proxies()
    to_proxies = ball.dist(embeddings[:, None], proxies[None]).numpy()
    between = ball.dist(proxies[:, None], proxies[None]).numpy()
    between = (between + between.T) / 2  # the exact ties of the proxy pairs, as hierpipe's
    same_label = (labels[:, None] == labels[None]).double()
    sample_similarities = torch.exp(-ball.dist(embeddings[:, None], embeddings[None])) + same_label
    parts = (
        ("sample", sample_similarities, to_proxies, mined[0]),
        ("proxy", torch.from_numpy(np.exp(-between)), between, mined[1]),
    )
    for part, similarities, dist, triplets in parts:
        anchors = sum(len(m) >= 2 for m in _mutual_neighbours(similarities, 6))
        assert anchors > 0
        assert loss.last_stats[f"{part}_triplets"] == 5 * anchors
        expected = _masked_fraction(dist, triplets.tolist())
        # the loss averages the masked flags in float32
        assert loss.last_stats[f"{part}_masked"] == pytest.approx(expected, abs=1e-6)
    assert loss.last_stats["proxy_masked"] > 0  # the fraction is not trivially 0 here


def test_default_proxies_follow_the_public_initialisation():
    torch.manual_seed(0)
    loss = HIERLoss(128)
    assert loss.proxies.shape == (512, 128)
    assert "proxies" in loss.state_dict()
    ball = loss.hierarchical_proxies()
    assert not ball.requires_grad
    # Tangent length ~ 0.9 * 2.3 = 2.07, so ball norm ~ tanh(sqrt(0.1) * 2.07) / sqrt(0.1).
    norms = ball.norm(dim=1)
    assert norms.max().item() < 1 / math.sqrt(0.1)
    expected = math.tanh(math.sqrt(0.1) * 2.07) / math.sqrt(0.1)
    assert norms.mean().item() == pytest.approx(expected, abs=0.02)


def test_sphere_and_euclidean_proxies():
    sphere = HIERLoss(5, num_proxies=20, geometry="sphere")
    torch.testing.assert_close(sphere.hierarchical_proxies().norm(dim=1), torch.ones(20))
    euclidean = HIERLoss(5, num_proxies=20, geometry="euclidean")
    assert torch.equal(euclidean.hierarchical_proxies(), euclidean.proxies.detach())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"curvature": 0.0}, "curvature: expected a positive finite number"),
        ({"curvature": -0.1}, "curvature: expected a positive finite number"),
        ({"clip_r": math.nan}, "clip_r: expected a positive finite number"),
        ({"tau": 0}, "tau: expected a positive finite number"),
        ({"num_proxies": 10, "topk": 20}, "num_proxies: expected an integer >= 20"),
        ({"triplets_per_anchor": 0}, "triplets_per_anchor: expected an integer >= 1"),
        ({"geometry": "hyperboloid"}, "geometry must be one of poincare, sphere, euclidean"),
        ({"stochastic": 1}, "stochastic must be True or False"),
        ({"generator": 0}, "generator must be a torch.Generator or None"),
    ],
)
def test_constructor_arguments_are_validated(kwargs: dict, match: str):
    with pytest.raises(HierpipeError, match=match):
        HIERLoss(4, **kwargs)


def test_topk_larger_than_the_batch_is_an_error():
    loss = HIERLoss(4, num_proxies=32, topk=20)
    with pytest.raises(HierpipeError, match="topk=20 exceeds the 10 rows to mine from"):
        loss(_ball_points(10, 4).float(), torch.arange(5).repeat_interleave(2))


def test_bad_embeddings_are_errors():
    loss = HIERLoss(2, num_proxies=8, topk=2)
    labels = torch.tensor([0, 0, 1])
    with pytest.raises(HierpipeError, match="got row 1 with norm"):
        loss(torch.tensor([[0.0, 0.0], [3.2, 0.0], [0.1, 0.1]]), labels)
    with pytest.raises(HierpipeError, match="got row 2 with norm"):
        loss(torch.tensor([[0.0, 0.0], [0.2, 0.0], [math.nan, 0.1]]), labels)
    with pytest.raises(HierpipeError, match=r"embeddings must have shape \(N, 2\)"):
        loss(torch.zeros(3, 4), labels)
    with pytest.raises(HierpipeError, match="embeddings must be finite"):
        HIERLoss(2, num_proxies=8, topk=2, geometry="euclidean")(
            torch.tensor([[0.0, 0.0], [math.inf, 0.0], [0.1, 0.1]]), labels
        )


def test_non_finite_proxies_raise_instead_of_returning_nan():
    loss = HIERLoss(3, num_proxies=8, topk=3, geometry="euclidean")
    loss.proxies.data[2] = math.nan
    with pytest.raises(HierpipeError, match="the proxies are no longer finite"):
        loss(_ball_points(8, 3).float(), torch.arange(4).repeat_interleave(2))


@pytest.mark.parametrize(
    ("triplets", "match"),
    [
        (torch.tensor([[0, 1]]), r"triplets must be a \(T, 3\) int64 tensor"),
        (torch.tensor([[0.0, 1.0, 2.0]]), r"triplets must be a \(T, 3\) int64 tensor"),
        (torch.tensor([[0, 1, 3]]), "triplets must index rows 0..2"),
    ],
)
def test_triplet_loss_inputs_are_validated(triplets: torch.Tensor, match: str):
    with pytest.raises(HierpipeError, match=match):
        HIERLoss(2, num_proxies=4, topk=2).triplet_loss(_DIST, triplets)
