"""HIER (hier.md 6.1-6.7, 6.10): hinge terms by hand, gradients, reciprocal mining against a
brute-force definition, Gumbel LCA choice, fallbacks and errors."""

from __future__ import annotations

import math

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
        # The poincare proxies' gradient is deliberately rescaled (hier.md 3.3), not exact.
        proxies = loss.proxies.detach().clone().requires_grad_()
        assert torch.autograd.gradcheck(lambda p: value(embeddings.detach(), p), (proxies,))


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
        assert set(rows[:, 2].tolist()) == set(range(12)) - mutual[a]  # includes a (H6)


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
    """hier.md 6.5-6.6 written as the public code does it: one-hot minus detached soft plus
    soft, multiplied into whole distance rows; Gumbel noise drawn pair first, then triple."""

    def hard_gumbel(max_dist):
        uniform = torch.rand(max_dist.shape, dtype=max_dist.dtype, generator=generator)
        soft = torch.softmax(-max_dist / tau - torch.log(-torch.log(uniform)), dim=1)
        hard = torch.nn.functional.one_hot(soft.argmax(dim=1), max_dist.shape[1])
        return hard - soft.detach() + soft

    d_i, d_j, d_k = dist[triplets[:, 0]], dist[triplets[:, 1]], dist[triplets[:, 2]]
    h_ij = hard_gumbel(torch.maximum(d_i, d_j))
    h_ijk = hard_gumbel(torch.maximum(torch.maximum(d_i, d_j), d_k))
    loss = (
        torch.relu((d_i * h_ij).sum(1) - (d_i * h_ijk).sum(1) + margin)
        + torch.relu((d_j * h_ij).sum(1) - (d_j * h_ijk).sum(1) + margin)
        + torch.relu((d_k * h_ijk).sum(1) - (d_k * h_ij).sum(1) + margin)
    )
    return (loss * (h_ij.argmax(1) != h_ijk.argmax(1))).mean()


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
    assert torch.isfinite(values[0])
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


def test_last_stats_count_triplets_and_masked_fraction():
    loss = HIERLoss(8, num_proxies=32, topk=6, triplets_per_anchor=5)
    loss(_ball_points(20, 8).float(), torch.arange(10).repeat_interleave(2))
    stats = loss.last_stats
    assert stats["sample_triplets"] % 5 == 0 and stats["proxy_triplets"] % 5 == 0
    assert stats["proxy_triplets"] > 0
    assert 0.0 <= stats["sample_masked"] <= 1.0 and 0.0 <= stats["proxy_masked"] <= 1.0


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


@pytest.mark.parametrize("geometry", sorted(GEOMETRIES))
def test_full_size_step_has_finite_gradients(geometry: str):
    loss = HIERLoss(16, num_proxies=64, geometry=geometry)
    embeddings = _ball_points(40, 16).float().requires_grad_()
    value = loss(embeddings, torch.arange(20).repeat_interleave(2))
    value.backward()
    assert value.item() > 0
    assert torch.isfinite(embeddings.grad).all() and torch.isfinite(loss.proxies.grad).all()
    assert loss.proxies.grad.abs().sum() > 0


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
    with pytest.raises(HierpipeError, match="HIER loss is nan"):
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
