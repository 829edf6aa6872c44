"""The released HIER loss's formulation, re-written as a baseline and a reference for tests.

Source: github.com/tjddus9597/HIER-CVPR23, hier/losses.py (HIERLoss.forward,
HIERLoss.get_reciprocal_triplets, HIERLoss.compute_gHHC) and hier/hyptorch/pmath.py
(_mobius_addition_batch, _dist_matrix).

Written from the formulas, not optimised: the full (B + M)^2 x D tensor of Möbius additions
for the distance matrix, triplet mining in a Python loop over anchors with NumPy sampling,
and hard Gumbel-softmax LCAs over every proxy. `hier_loss_parts` with `triplets` given is
the deterministic variant: those triplets, and the argmin instead of the Gumbel sample.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

# the denominator's guard in the batched Möbius addition, and the artanh input clamp (pmath.py,
# _mobius_addition_batch and Artanh.forward)
MOBIUS_EPS = 1e-5
ARTANH_EPS = 1e-5


def mobius_addition_batch(x: Tensor, y: Tensor, c: float) -> Tensor:
    """x_i (+)_c y_j for every pair (N, M, D), with the + 1e-5 in the denominator (pmath.py,
    _mobius_addition_batch)."""
    xy = x @ y.T
    x2 = x.pow(2).sum(dim=1, keepdim=True)
    y2 = y.pow(2).sum(dim=1, keepdim=True).T
    numerator = (1 + 2 * c * xy + c * y2)[:, :, None] * x[:, None, :]
    numerator = numerator + (1 - c * x2)[:, :, None] * y[None, :, :]
    denominator = 1 + 2 * c * xy + c**2 * x2 * y2
    return numerator / (denominator[:, :, None] + MOBIUS_EPS)


def distance_matrix(x: Tensor, y: Tensor, c: float) -> Tensor:
    """d_c(x_i, y_j) = 2/sqrt(c) artanh(sqrt(c) ||(-x_i) (+)_c y_j||) for every pair (N, M)."""
    norm = mobius_addition_batch(-x, y, c).norm(dim=-1)
    # The public Artanh passes the gradient through its clamp; torch's clamp zeroes it there.
    # The two agree here: clipped to tangent norm 2.3, embeddings stop at
    # tanh(sqrt(0.1) * 2.3) = 62% of the radius, far inside it.
    argument = (c**0.5 * norm).clamp(-1 + ARTANH_EPS, 1 - ARTANH_EPS)
    return 2 / c**0.5 * torch.atanh(argument)


def mine_triplets(similarities: Tensor, topk: int, per_anchor: int) -> Tensor:
    """Triplets (T, 3) from reciprocal top-k neighbours, drawn by NumPy
    (HIERLoss.get_reciprocal_triplets).

    Raises when no anchor has two mutual neighbours, as the public code does (its
    np.concatenate of an empty list).
    """
    nearest = similarities.topk(topk, dim=1).indices
    knn = torch.zeros_like(similarities).scatter_(1, nearest, 1.0)
    reciprocal = (knn + knn.T) / 2
    reciprocal.fill_diagonal_(-1)
    triplets = []
    for anchor, row in enumerate(reciprocal.numpy()):
        positives = np.flatnonzero(row == 1)
        if len(positives) < 2:
            continue
        negatives = np.flatnonzero(row < 1)  # the anchor itself included, as in the public code
        triplets.append(
            np.stack(
                [
                    np.full(per_anchor, anchor),
                    np.random.choice(positives, per_anchor, replace=True),
                    np.random.choice(negatives, per_anchor, replace=True),
                ],
                axis=1,
            )
        )
    return torch.from_numpy(np.concatenate(triplets))


def node_distances(z: Tensor, rho: Tensor, c: float) -> Tensor:
    """The full distance matrix ((B + M) x (B + M)) of the node set [z; rho] (HIERLoss.forward)."""
    nodes = torch.cat([z, rho])
    return distance_matrix(nodes, nodes, c)


def mine(distances: Tensor, labels: Tensor, topk: int, per_anchor: int) -> tuple[Tensor, Tensor]:
    """Sample triplets (rows of D_sp) and proxy triplets (rows of D_pp) from the node
    distances, samples first; similarities exp(-d), + 1 for same-label samples
    (HIERLoss.forward)."""
    batch = len(labels)
    with torch.no_grad():
        sample_similarities = torch.exp(-distances[:batch, :batch])
        sample_similarities += (labels[:, None] == labels[None, :]).float()
        proxy_similarities = torch.exp(-distances[batch:, batch:])
    return (
        mine_triplets(sample_similarities, topk, per_anchor),
        mine_triplets(proxy_similarities, topk, per_anchor),
    )


def lca_scores(
    distances: Tensor, triplets: Tensor, maximum: Callable[[Tensor, Tensor], Tensor] = torch.maximum
) -> tuple[list[Tensor], Tensor, Tensor]:
    """The members' rows of `distances` (three (T, M)) and each triplet's pair and triple
    scores per candidate LCA: the largest distance to the pair, and to all three
    (HIERLoss.compute_gHHC). `maximum` may replace torch.maximum, whose gradient splits at
    exact ties, by one that gives it to the first argument, as hierpipe does."""
    rows = [distances[triplets[:, column]] for column in range(3)]
    pair_max = maximum(rows[0], rows[1])
    return rows, pair_max, maximum(pair_max, rows[2])


def maximum_to_first_at_ties(a: Tensor, b: Tensor) -> Tensor:
    """max(a, b) whose gradient goes wholly to `a` at exact ties (torch.maximum halves it)."""
    return torch.where(b > a, b, a)


def triplet_part(
    distances: Tensor,
    triplets: Tensor,
    margin: float,
    tau: float,
    stochastic: bool,
    uniforms: tuple[Tensor, Tensor] | None = None,
    maximum: Callable[[Tensor, Tensor], Tensor] = torch.maximum,
) -> Tensor:
    """Mean over all triplets of the three LCA hinges, 0 where both LCAs coincide
    (HIERLoss.compute_gHHC).

    `distances[x, p]` is node x's distance to proxy p. The LCA assignment h is a hard
    Gumbel-softmax sample over -max distance / tau, or with `stochastic=False` the one-hot
    argmin; each member's distance to an LCA is sum_p D[x, p] h[p]. `uniforms` (pair, triple;
    (T, M) each) fixes the Gumbel noise, -log(-log U), which F.gumbel_softmax draws itself;
    `maximum` is lca_scores'.
    """
    rows, pair_max, triple_max = lca_scores(distances, triplets, maximum)
    assignments = []
    for kind, max_distance in enumerate((pair_max, triple_max)):
        if stochastic and uniforms is None:
            assignments.append(F.gumbel_softmax(logits=-max_distance / tau, hard=True))
        elif stochastic:
            gumbels = -torch.log(-torch.log(uniforms[kind]))
            # F.gumbel_softmax(hard=True) with these gumbels: straight-through one-hot
            soft = torch.softmax(-max_distance / tau + gumbels, dim=1)
            hard = F.one_hot(soft.argmax(dim=1), distances.shape[1]).to(soft.dtype)
            assignments.append(hard - soft.detach() + soft)
        else:
            lca = max_distance.argmin(dim=1)
            assignments.append(F.one_hot(lca, distances.shape[1]).to(distances.dtype))
    to_pair, to_triple = ([(row * h).sum(dim=1) for row in rows] for h in assignments)
    hinges = (
        F.relu(to_pair[0] - to_triple[0] + margin)
        + F.relu(to_pair[1] - to_triple[1] + margin)
        + F.relu(to_triple[2] - to_pair[2] + margin)
    )
    distinct = assignments[0].argmax(dim=1) != assignments[1].argmax(dim=1)
    return (hinges * distinct).mean()


def hier_loss_parts(
    z: Tensor,
    rho: Tensor,
    labels: Tensor,
    c: float = 0.1,
    margin: float = 0.1,
    tau: float = 0.1,
    topk: int = 20,
    per_anchor: int = 50,
    triplets: tuple[Tensor, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """Sample part and proxy part for ball embeddings z (B, D) and ball proxies rho (M, D);
    HIER is their sum (HIERLoss.forward). Mines, and samples the LCAs by Gumbel-softmax; with
    `triplets` (sample triplets, proxy triplets) given, uses those and the argmin LCAs."""
    distances = node_distances(z, rho, c)
    stochastic = triplets is None
    if stochastic:
        triplets = mine(distances, labels, topk, per_anchor)
    batch = len(z)
    sample_triplets, proxy_triplets = triplets
    return (
        triplet_part(distances[:batch, batch:], sample_triplets, margin, tau, stochastic),
        triplet_part(distances[batch:, batch:], proxy_triplets, margin, tau, stochastic),
    )
