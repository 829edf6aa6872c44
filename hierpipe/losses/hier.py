"""The HIER regulariser: hierarchical proxies as learned LCAs (docs/methods/hier.md)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hierpipe.core.errors import HierpipeError
from hierpipe.core.geometry import pairwise_distances, to_poincare
from hierpipe.core.validation import check_batch, check_in_ball, check_int, check_number

# geometry -> pairwise_distances metric. "sphere" is hierpipe's HIERsph (unit proxies,
# 2 - 2cos); "euclidean" is a hierpipe variant. Neither exists in the public code.
GEOMETRIES = {"poincare": "poincare", "sphere": "squared_chord", "euclidean": "euclidean"}

# Initial tangent-space length of a proxy, as a fraction of clip_r (the released hier/losses.py).
_INIT_FRACTION = 0.9


class HIERLoss(nn.Module):
    """HIER (Kim, Jeong, Kwak, CVPR 2023): `L = L_part(samples) + L_part(proxies)`.

    `num_proxies` hierarchical proxies are stored as tangent vectors (parameter `proxies`,
    initialised `N(0, I) * 0.9 clip_r / sqrt(D)`) and mapped into the ball by `to_poincare`
    (with the Riemannian gradient scaling) on every forward. Each part mines
    triplets (i, j, k) from reciprocal top-k neighbours, picks the pair's and the triple's LCA
    among the proxies and applies three margin hinges, as the released hier/losses.py does
    (formulas and differences: docs/methods/hier.md).

    Embeddings are points of the ball (poincare), or any vectors (sphere, euclidean). Mining
    positives are mutual neighbours, not same-class pairs: with one sample per class the
    same-label bonus touches only the diagonal and mining runs on distances alone, as in the
    public code. A part with no valid anchor (no sample with two mutual neighbours) contributes
    0, where the public code crashes; `last_stats` reports the triplet counts and the fraction
    masked because both LCAs coincide (masked triplets still count in the mean). The public
    code's `topk` does not adapt to the batch, so `topk` larger than the batch is an error, not
    clamped.

    Randomness (triplet sampling, Gumbel noise) draws from `generator` when given, on the
    generator's device, else from torch's global RNG; for float32 on the CPU the Gumbel noise
    is counter-based under one seed drawn per part (hier_lca_cpu). The LCA choice is the
    Gumbel sample in training with `stochastic=True`, else the argmin. The two differ beyond
    noise on exact ties, which proxy triplets have by construction: proxies i and j both
    score d(i, j) as candidates for their own pair's LCA; the argmin takes the lower index.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_proxies: int = 512,
        curvature: float = 0.1,
        clip_r: float = 2.3,
        margin: float = 0.1,
        tau: float = 0.1,
        topk: int = 20,
        triplets_per_anchor: int = 50,
        same_label_bonus: bool = True,
        stochastic: bool = True,
        geometry: str = "poincare",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.embedding_dim = check_int("embedding_dim", embedding_dim, 1)
        self.topk = check_int("topk", topk, 1)
        self.num_proxies = check_int("num_proxies", num_proxies, max(self.topk, 2))
        self.triplets_per_anchor = check_int("triplets_per_anchor", triplets_per_anchor, 1)
        self.curvature = check_number("curvature", curvature, positive=True)
        self.clip_r = check_number("clip_r", clip_r, positive=True)
        self.margin = check_number("margin", margin)
        self.tau = check_number("tau", tau, positive=True)
        for name, flag in (("same_label_bonus", same_label_bonus), ("stochastic", stochastic)):
            if not isinstance(flag, bool):
                raise HierpipeError(f"{name} must be True or False, got {flag!r}")
        if geometry not in GEOMETRIES:
            raise HierpipeError(
                f"geometry must be one of {', '.join(GEOMETRIES)}, got {geometry!r}"
            )
        if generator is not None and not isinstance(generator, torch.Generator):
            raise HierpipeError(f"generator must be a torch.Generator or None, got {generator!r}")
        self.same_label_bonus = same_label_bonus
        self.stochastic = stochastic
        self.geometry = geometry
        self.generator = generator
        scale = _INIT_FRACTION * self.clip_r / math.sqrt(embedding_dim)
        self.proxies = nn.Parameter(torch.randn(num_proxies, embedding_dim) * scale)
        self.last_stats: dict[str, float] = {}

    def hierarchical_proxies(self) -> Tensor:
        """The proxies as used by the loss (M, D): ball points, unit vectors or raw; detached."""
        with torch.no_grad():
            return self._mapped_proxies()

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """HIER term of a batch (scalar): sample part + proxy part."""
        check_batch(embeddings, labels)
        if embeddings.shape[1] != self.embedding_dim:
            raise HierpipeError(
                f"embeddings must have shape (N, {self.embedding_dim}), "
                f"got {tuple(embeddings.shape)}"
            )
        if self.geometry == "poincare":
            check_in_ball("embeddings", embeddings, self.curvature)
        elif not bool(torch.isfinite(embeddings).all()):
            raise HierpipeError("embeddings must be finite")
        proxies = self._mapped_proxies()
        with torch.no_grad():
            similarities = torch.exp(-self._distances(embeddings, embeddings))
            if self.same_label_bonus:
                # Ranks same-class samples first among the neighbours, as the released mining does.
                similarities += labels[:, None] == labels[None, :]
        to_proxies = self._distances(embeddings, proxies)
        between_proxies = self._distances(proxies, proxies)
        # The embeddings are checked: a distance that is not finite comes from the proxies,
        # and would make the loss NaN (the CPU kernels assume finite distances).
        if not (
            bool(torch.isfinite(to_proxies).all()) and bool(torch.isfinite(between_proxies).all())
        ):
            raise HierpipeError(
                "HIER's distances to its hierarchical proxies are not finite for finite "
                "embeddings: the proxies are no longer finite (training diverged)"
            )
        # Both mining draws come before any Gumbel draw, so that a seeded generator gives the
        # same triplets in training and in eval mode.
        sample_triplets = self.mine_triplets(similarities)
        proxy_triplets = self.mine_triplets(torch.exp(-between_proxies.detach()))
        stochastic = self.stochastic and self.training
        sample_part, sample_masked = self._triplet_loss(to_proxies, sample_triplets, stochastic)
        proxy_part, proxy_masked = self._triplet_loss(between_proxies, proxy_triplets, stochastic)
        self.last_stats = {
            "sample_triplets": len(sample_triplets),
            "sample_masked": sample_masked,
            "proxy_triplets": len(proxy_triplets),
            "proxy_masked": proxy_masked,
        }
        return sample_part + proxy_part

    def mine_triplets(self, similarities: Tensor) -> Tensor:
        """Triplets (T, 3) of row indices from reciprocal top-k neighbours.

        Anchors i with at least two mutual top-k neighbours (themselves excluded) get
        `triplets_per_anchor` triplets; j is drawn uniformly with replacement from i's mutual
        neighbours, k from all other rows, i itself included as the public code does.
        """
        n = len(similarities)
        if self.topk > n:
            raise HierpipeError(
                f"topk={self.topk} exceeds the {n} rows to mine from; use a batch of at least "
                f"{self.topk} samples or a smaller topk"
            )
        device = self.generator.device if self.generator is not None else similarities.device
        nearest = similarities.detach().to(device).topk(self.topk, dim=1).indices
        knn = torch.zeros(n, n, dtype=torch.bool, device=device).scatter_(1, nearest, True)
        mutual = knn & knn.T
        mutual.fill_diagonal_(False)
        anchors = (mutual.sum(dim=1) >= 2).nonzero().squeeze(1)
        if len(anchors) == 0:
            return torch.empty(0, 3, dtype=torch.long, device=similarities.device)
        draws = (self.triplets_per_anchor,)
        positives = torch.multinomial(
            mutual[anchors].float(), *draws, replacement=True, generator=self.generator
        )
        negatives = torch.multinomial(
            (~mutual[anchors]).float(), *draws, replacement=True, generator=self.generator
        )
        triplets = torch.stack(
            [
                anchors.repeat_interleave(self.triplets_per_anchor),
                positives.flatten(),
                negatives.flatten(),
            ],
            dim=1,
        )
        return triplets.to(similarities.device)

    def triplet_loss(self, dist_to_proxies: Tensor, triplets: Tensor) -> Tensor:
        """Mean hinge loss of `triplets` (T, 3) with deterministic argmin LCAs.

        `dist_to_proxies[x, p]` is the distance of node x to proxy p; each LCA is the proxy
        minimising the largest distance to the pair (or triple).
        """
        if dist_to_proxies.dim() != 2:
            raise HierpipeError(
                f"dist_to_proxies must have shape (N, M), got {tuple(dist_to_proxies.shape)}"
            )
        if triplets.dim() != 2 or triplets.shape[1] != 3 or triplets.dtype != torch.long:
            raise HierpipeError(
                f"triplets must be a (T, 3) int64 tensor, got {tuple(triplets.shape)} "
                f"{triplets.dtype}"
            )
        n = len(dist_to_proxies)
        if triplets.numel() and (triplets.min() < 0 or triplets.max() >= n):
            raise HierpipeError(f"triplets must index rows 0..{n - 1} of dist_to_proxies")
        return self._triplet_loss(dist_to_proxies, triplets, stochastic=False)[0]

    def _mapped_proxies(self) -> Tensor:
        if self.geometry == "poincare":
            return to_poincare(self.proxies, self.curvature, self.clip_r, riemannian=True)
        if self.geometry == "sphere":
            return F.normalize(self.proxies, dim=1)
        return self.proxies

    def _distances(self, x: Tensor, y: Tensor) -> Tensor:
        curvature = self.curvature if self.geometry == "poincare" else None
        return pairwise_distances(x, y, GEOMETRIES[self.geometry], curvature=curvature)

    def _triplet_loss(
        self, dist: Tensor, triplets: Tensor, stochastic: bool
    ) -> tuple[Tensor, float]:
        if len(triplets) == 0:
            # A zero that stays attached to the graph, so backward() still works.
            return dist[:0].sum(), 0.0
        lcas, straight_through = self._choose_lcas(dist, triplets, stochastic)
        # Gradient reaches `dist` through the distances to the chosen LCAs, read from `dist`
        # itself, and (stochastic only) through the straight-through term's soft assignment.
        to_pair, to_triple = (dist[triplets.T, lca] for lca in lcas)
        if straight_through is not None:
            to_pair, to_triple = to_pair + straight_through[0], to_triple + straight_through[1]
        hinges = (
            F.relu(to_pair[0] - to_triple[0] + self.margin)
            + F.relu(to_pair[1] - to_triple[1] + self.margin)
            + F.relu(to_triple[2] - to_pair[2] + self.margin)
        )
        # Masked triplets still count in the mean, as in the public code.
        distinct = lcas[0] != lcas[1]
        masked = 1.0 - float(distinct.float().mean())
        return (hinges * distinct).mean(), masked

    def _choose_lcas(
        self, dist: Tensor, triplets: Tensor, stochastic: bool
    ) -> tuple[Tensor, Tensor | None]:
        """Each triplet's pair LCA and triple LCA (2, T), and when `stochastic` the
        straight-through term (2, 3, T) to add to the members' distances to them.

        The LCA minimises the largest distance to the pair (or triple), or when `stochastic`
        is a hard Gumbel-softmax sample of -that / tau. The public code's straight-through
        `sum_p d[p] (hard - soft.detach() + soft)[p]` is the chosen distance plus a term
        whose value is 0 and whose gradient gives d to the soft assignment and nothing to d:
        the same value and gradients, in fewer passes. float32 on the CPU runs the fused
        kernels of hier_lca_cpu (their own counter-based noise); other types and devices run
        tensor operations with noise from torch's generator.
        """
        if dist.device.type == "cpu" and dist.dtype == torch.float32:
            # Imported here: only HIER on the CPU needs numba, which takes ~0.5 s to load.
            from hierpipe.losses.hier_lca_cpu import choose_lcas

            return choose_lcas(dist, triplets, self.tau, self._seed() if stochastic else None)
        # Rows of i, j, k (T, M) each, without gradient: gradient reaches the maxima only
        # through `_RoutedMax`, when stochastic.
        members = [dist.detach()[index] for index in triplets.T]
        pair_max = torch.maximum(members[0], members[1])
        triple_max = torch.maximum(pair_max, members[2])
        if not stochastic:
            return torch.stack([pair_max.argmin(dim=1), triple_max.argmin(dim=1)]), None
        # the row each maximum came from: ties go to the earlier member, whose row then
        # takes the whole gradient (torch.maximum would split it; the sum is the same)
        pair_rows = torch.where(members[1] > members[0], triplets[:, 1:2], triplets[:, :1])
        triple_rows = torch.where(members[2] > pair_max, triplets[:, 2:3], pair_rows)
        softs = [
            self._gumbel_softmax(_RoutedMax.apply(dist, maxima, rows))
            for maxima, rows in ((pair_max, pair_rows), (triple_max, triple_rows))
        ]
        lcas = torch.stack([soft.argmax(dim=1) for soft in softs])
        return lcas, torch.stack([_StraightThrough.apply(soft, *members) for soft in softs])

    def _seed(self) -> int:
        """A 63-bit seed for the CPU kernels' noise, from `generator` or torch's global RNG."""
        device = self.generator.device if self.generator is not None else "cpu"
        return int(torch.randint(2**63 - 1, (), generator=self.generator, device=device))

    def _gumbel_softmax(self, max_dist: Tensor) -> Tensor:
        """softmax(-max_dist / tau + Gumbel noise) per row; its argmax samples
        softmax(-max_dist / tau) (Gumbel-max), as `F.gumbel_softmax` with hard=True does."""
        device = self.generator.device if self.generator is not None else max_dist.device
        uniform = torch.rand(
            max_dist.shape, dtype=max_dist.dtype, device=device, generator=self.generator
        )
        # -log(-log U) is Gumbel(0, 1); U = 0 gives -inf noise, a proxy that is never chosen.
        # In place: these (T, M) passes are a good part of HIER's time.
        gumbel = uniform.log_().neg_().log_().neg_().to(max_dist.device)
        return torch.softmax(gumbel.add_(max_dist, alpha=-1 / self.tau), dim=1)

    def extra_repr(self) -> str:
        return (
            f"embedding_dim={self.embedding_dim}, num_proxies={self.num_proxies}, "
            f"geometry={self.geometry}, curvature={self.curvature:g}, clip_r={self.clip_r:g}, "
            f"margin={self.margin:g}, tau={self.tau:g}, topk={self.topk}, "
            f"triplets_per_anchor={self.triplets_per_anchor}, "
            f"same_label_bonus={self.same_label_bonus}, stochastic={self.stochastic}"
        )


class _StraightThrough(torch.autograd.Function):
    """Zero (3, T) whose gradient gives the soft assignment (T, M) the member distances:
    d/d soft[t, p] of `sum_m g[m, t] * zero[m, t]` is `sum_m g[m, t] * d_m[t, p]`.

    The autograd form `(d.detach() * (soft - soft.detach())).sum(dim=2)` materialises three
    (T, M) products in forward and again in backward; this reads each member once.
    """

    @staticmethod
    def forward(ctx, soft: Tensor, *members: Tensor) -> Tensor:
        ctx.save_for_backward(*members)
        return soft.new_zeros((len(members), soft.shape[0]))

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        members = ctx.saved_tensors
        grad_soft = members[0] * grad[0, :, None]
        for row, member in enumerate(members[1:], start=1):
            grad_soft.addcmul_(member, grad[row, :, None])
        return (grad_soft, *(None for _ in members))


class _RoutedMax(torch.autograd.Function):
    """Maxima (T, M) over member rows of `dist` (N, M), already computed, with the gradient
    routed to the row each came from (`rows`, (T, M)): one scatter-add into `dist` instead
    of torch.maximum's masked gradients and an index-put per member."""

    @staticmethod
    def forward(ctx, dist: Tensor, maxima: Tensor, rows: Tensor) -> Tensor:
        ctx.save_for_backward(rows)
        ctx.shape = dist.shape
        return maxima.clone()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, ...]:
        (rows,) = ctx.saved_tensors
        grad_dist = grad.new_zeros(ctx.shape).scatter_add_(0, rows, grad)
        return grad_dist, None, None
