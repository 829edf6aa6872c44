"""Training options (proxydr.md section 4): EMA, dynamic scale, MDS, and their registry."""

from __future__ import annotations

import io
import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from hierpipe.core.catalog import TRAINING_OPTIONS, check_option_set, proxies_from_hierarchy
from hierpipe.core.errors import HierpipeError
from hierpipe.core.hierarchy import ClassTree
from hierpipe.losses import NormFaceLoss, ProxyClassifierLoss, ProxyDRLoss, build_loss
from hierpipe.train.options import (
    DynamicScale,
    EMAProxies,
    MDSProxies,
    OptionContext,
    build_options,
)
from hierpipe.train.options.dynamic_scale import initial_scale, scale_residual
from hierpipe.train.options.mds import fit_mds

CPU = torch.device("cpu")


def _context(loss: ProxyClassifierLoss, tree_dist=None, lr: float = 1e-3) -> OptionContext:
    if tree_dist is None:
        tree_dist = np.zeros((loss.num_classes, loss.num_classes))
    return OptionContext(loss=loss, tree_dist=tree_dist, lr=lr, seed=3, device=CPU)


def _roundtrip(state: dict) -> dict:
    """Through torch.save and a weights-only load, as the engine's checkpoint goes."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _tree_distances() -> np.ndarray:
    """2 families x 2 genera x 2 species: siblings at 2, cousins at 4, the rest at 6."""
    paths = [(f"f{f}", f"g{f}{g}", f"s{f}{g}{s}") for f in "01" for g in "01" for s in "01"]
    return ClassTree.from_paths(paths).distance_matrix()


def _batch_at_angle(loss: ProxyClassifierLoss, angle: float, size: int, seed: int = 0):
    """Unit embeddings at `angle` from their own (unit) proxy, in a random direction."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(size) % loss.num_classes
    own = F.normalize(loss.proxies.detach(), dim=1)[labels]
    noise = torch.randn(size, loss.embedding_dim, generator=generator)
    noise = F.normalize(noise - (noise * own).sum(1, keepdim=True) * own, dim=1)
    return math.cos(angle) * own + math.sin(angle) * noise, labels


# ---------------------------------------------------------------- dynamic scale


@pytest.mark.parametrize(
    ("num_classes", "proxydr", "normface"),
    [(52, 6.88, 4.68), (100, 7.90, 5.79), (102, 7.93, 5.83), (109, 8.03, 5.93), (555, 10.60, 8.46)],
)
def test_initial_scale_matches_the_reference_table(
    num_classes: int, proxydr: float, normface: float
) -> None:
    assert initial_scale("proxydr", num_classes) == pytest.approx(proxydr, abs=0.01)
    assert initial_scale("normface", num_classes) == pytest.approx(normface, abs=0.01)


def test_initial_scale_without_a_root_warns_and_keeps_fsolves_iterate(caplog) -> None:
    # For NormFace with C <= 22 the exponential target term always wins.
    with caplog.at_level(logging.WARNING):
        value = initial_scale("normface", 8)
    assert math.isfinite(value)
    assert "no normface scale solves the initial condition for 8 classes" in caplog.text


def test_scale_residual_matches_hand_values() -> None:
    def residual(kind: str, scale: float, theta: float, b_avg: float) -> float:
        values = torch.tensor([scale, theta, b_avg], dtype=torch.float64)
        return scale_residual(kind, *values).item()

    # ProxyDR, theta = pi/3: d^2 = 1, so 0.5 * (2 + 1) * 1 + 1 - 2 = 0.5.
    assert residual("proxydr", 2.0, math.pi / 3, 0.5) == pytest.approx(0.5, rel=1e-9)
    # NormFace, theta = pi/2: cos 0, sin^2 1, so e^0 * 2 + 0.25 * (0 - 2) = 1.5.
    assert residual("normface", 2.0, math.pi / 2, 0.25) == pytest.approx(1.5, rel=1e-9)


@pytest.mark.parametrize(("cls", "s0"), [(ProxyDRLoss, 7.90), (NormFaceLoss, 5.79)])
def test_setup_writes_the_initial_scale_into_the_loss(cls: type, s0: float) -> None:
    loss = cls(num_classes=100, embedding_dim=8)
    option = DynamicScale()
    option.setup(_context(loss))
    assert loss.scale.item() == pytest.approx(s0, abs=0.01)
    assert option.log_values() == {"scale": pytest.approx(loss.scale.item())}
    assert loss.proxies.requires_grad  # dynamic scale leaves the proxies learnable


@pytest.mark.parametrize(
    ("cls", "dr_numerator", "angle"),
    [
        (ProxyDRLoss, "public_code", 0.6),
        (ProxyDRLoss, "consistent", 0.6),
        # NormFace has a root only with the target angle at the pi/4 cap
        (NormFaceLoss, "public_code", 1.0),
    ],
)
def test_scale_updates_drive_the_residual_to_zero(
    cls: type, dr_numerator: str, angle: float
) -> None:
    torch.manual_seed(0)
    loss = cls(num_classes=100, embedding_dim=128)
    embeddings, labels = _batch_at_angle(loss, angle, size=64)
    option = DynamicScale(dr_numerator=dr_numerator)
    option.setup(_context(loss, lr=0.05))
    before = abs(option.batch_residual(embeddings, labels).item())
    for _ in range(300):
        option.on_batch(embeddings, labels)
    after = abs(option.batch_residual(embeddings, labels).item())
    assert after <= before / 10
    assert loss.scale.item() == option.log_s.exp().item()


def _batch_statistics(option, loss, embeddings, labels) -> tuple[float, np.ndarray, float]:
    """Scale, cosines to the proxies and the capped lower-median target angle, in NumPy."""
    s = option.log_s.exp().item()
    z = F.normalize(embeddings.double(), dim=1).numpy()
    w = F.normalize(loss.proxies.detach().double(), dim=1).numpy()
    cos = z @ w.T
    target = np.arccos(0.999999 * np.clip(cos[np.arange(len(labels)), labels.numpy()], -1, 1))
    return s, cos, min(math.pi / 4, np.sort(target)[(len(target) - 1) // 2])  # lower median


@pytest.mark.parametrize("dr_numerator", ["public_code", "consistent"])
def test_proxydr_residual_and_gradient_match_hand_computation(dr_numerator: str) -> None:
    torch.manual_seed(1)
    loss = ProxyDRLoss(num_classes=5, embedding_dim=4)
    embeddings, labels = torch.randn(7, 4), torch.tensor([0, 1, 2, 3, 4, 0, 1])
    option = DynamicScale(dr_numerator=dr_numerator)
    option.setup(_context(loss))
    residual = option.batch_residual(embeddings, labels)
    residual.backward()

    s, cos, theta_med = _batch_statistics(option, loss, embeddings, labels)
    rows = np.arange(len(labels))
    exponent = math.sqrt(s) if dr_numerator == "public_code" else s / 2
    numerators = (2 - 2 * cos) ** -exponent
    numerators[rows, labels.numpy()] = 0
    b_avg = numerators.sum() / len(labels)
    d_med_sq = 2 - 2 * math.cos(theta_med) + 1e-12
    expected = b_avg * (s + 1) * d_med_sq ** (s / 2) + 1 - s
    # B_avg and theta_med are constants of the scale step (public code), so
    # dr/dlog_s = s * (B_avg (d^s + (s + 1) d^s ln(d^2) / 2) - 1).
    d_s = d_med_sq ** (s / 2)
    expected_grad = s * (b_avg * (d_s + (s + 1) * d_s * math.log(d_med_sq) / 2) - 1)

    assert residual.item() == pytest.approx(expected, rel=1e-6)
    assert option.log_s.grad.item() == pytest.approx(expected_grad, rel=1e-5)


def test_normface_residual_matches_hand_computation() -> None:
    torch.manual_seed(2)
    loss = NormFaceLoss(num_classes=4, embedding_dim=3)
    embeddings, labels = torch.randn(5, 3), torch.tensor([0, 1, 2, 3, 2])
    option = DynamicScale()
    option.setup(_context(loss))

    s, cos, theta = _batch_statistics(option, loss, embeddings, labels)
    rows = np.arange(len(labels))
    numerators = np.exp(s * cos)
    numerators[rows, labels.numpy()] = 0
    b_avg = numerators.sum() / len(labels)
    c, sin_sq = math.cos(theta), math.sin(theta) ** 2
    expected = math.exp(s * c) * (c + s * sin_sq) + b_avg * (c - s * sin_sq)

    assert option.batch_residual(embeddings, labels).item() == pytest.approx(expected, rel=1e-6)


def test_dynamic_scale_resumes_bitwise_from_its_state_dict() -> None:
    torch.manual_seed(4)
    batches = [(torch.randn(16, 8), torch.randint(0, 30, (16,))) for _ in range(10)]

    def fresh() -> tuple[ProxyDRLoss, DynamicScale]:
        torch.manual_seed(5)
        loss = ProxyDRLoss(num_classes=30, embedding_dim=8)
        option = DynamicScale()
        option.setup(_context(loss, lr=0.01))
        return loss, option

    loss, straight = fresh()
    for batch in batches:
        straight.on_batch(*batch)

    _, first = fresh()
    for batch in batches[:5]:
        first.on_batch(*batch)
    state = _roundtrip(first.state_dict())
    resumed_loss, resumed = fresh()
    resumed.load_state_dict(state)
    for batch in batches[5:]:
        resumed.on_batch(*batch)

    assert torch.equal(resumed.log_s, straight.log_s)
    assert torch.equal(resumed_loss.scale, loss.scale)


# ---------------------------------------------------------------- EMA


def _normalize_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_ema_initialises_from_the_first_batch_and_then_averages() -> None:
    torch.manual_seed(6)
    loss = NormFaceLoss(num_classes=3, embedding_dim=4)
    option = EMAProxies(alpha=0.1)
    option.setup(_context(loss))
    untouched = loss.proxies.detach().clone()

    first_z, first_y = torch.randn(3, 4), torch.tensor([0, 0, 2])
    option.on_batch(first_z, first_y)
    z = _normalize_rows(first_z.numpy().astype(np.float64))
    w0 = _normalize_rows(z[0] + z[1])  # the normalised mean of a class seen twice
    w2 = z[2]
    np.testing.assert_allclose(loss.proxies[0].numpy(), w0, rtol=1e-5)
    np.testing.assert_allclose(loss.proxies[2].numpy(), w2, rtol=1e-5)
    assert torch.equal(loss.proxies[1], untouched[1])

    second_z, second_y = torch.randn(3, 4), torch.tensor([0, 1, 0])
    option.on_batch(second_z, second_y)
    z = _normalize_rows(second_z.numpy().astype(np.float64))
    m0 = _normalize_rows(z[0] + z[2])
    np.testing.assert_allclose(
        loss.proxies[0].numpy(), _normalize_rows(0.1 * m0 + 0.9 * w0), rtol=1e-5
    )
    np.testing.assert_allclose(loss.proxies[1].numpy(), z[1], rtol=1e-5)  # first time seen
    np.testing.assert_allclose(loss.proxies[2].numpy(), w2, rtol=1e-5)  # absent: unchanged


def test_ema_proxies_are_frozen_against_the_optimiser() -> None:
    torch.manual_seed(7)
    net = torch.nn.Linear(5, 4)
    loss = ProxyDRLoss(num_classes=3, embedding_dim=4)
    options = build_options({"ema": {}}, "proxydr")
    for option in options:
        option.setup(_context(loss))
    assert options[0].freezes_proxies
    assert loss.proxies.requires_grad is False

    # the engine's recipe: only what still requires a gradient goes to the optimiser
    params = [p for p in [*net.parameters(), *loss.parameters()] if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=0.1)
    before = loss.proxies.detach().clone()
    value = loss(F.normalize(net(torch.randn(6, 5)), dim=1), torch.tensor([0, 1, 2, 0, 1, 2]))
    value.backward()
    optimizer.step()
    assert torch.equal(loss.proxies, before)


def test_ema_resumes_with_its_seen_markers() -> None:
    torch.manual_seed(8)
    loss = NormFaceLoss(num_classes=2, embedding_dim=3)
    option = EMAProxies()
    option.setup(_context(loss))
    option.on_batch(torch.randn(1, 3), torch.tensor([0]))

    resumed = EMAProxies()
    resumed.setup(_context(loss))
    resumed.load_state_dict(_roundtrip(option.state_dict()))
    before = loss.proxies[0].clone()
    resumed.on_batch(torch.randn(1, 3), torch.tensor([0]))
    # seen before the interruption: averaged, not re-initialised
    assert F.cosine_similarity(loss.proxies[0], before, dim=0).item() > 0.99


# ---------------------------------------------------------------- MDS


def test_mds_fits_the_tree() -> None:
    tree_dist = _tree_distances()
    vectors, stresses = fit_mds(
        tree_dist, dim=16, beta=1.0, steps=1000, lr=1e-3, generator=torch.Generator().manual_seed(0)
    )
    assert len(stresses) == 1001
    assert stresses[0] > 0.1
    assert stresses[-1] < 0.01  # the 8-class tree embeds almost exactly
    torch.testing.assert_close(vectors.norm(dim=1), torch.ones(8, dtype=torch.float64))

    chords = torch.cdist(vectors, vectors).numpy()
    mean_at = {d: chords[tree_dist == d].mean() for d in (2, 4, 6)}
    assert mean_at[2] < mean_at[4] < mean_at[6]
    # T(D) = sqrt(2) D / (1 + D)
    for d, chord in mean_at.items():
        assert chord == pytest.approx(math.sqrt(2) * d / (1 + d), abs=0.02)


def test_mds_is_a_function_of_the_seed() -> None:
    def fit(seed: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed)
        return fit_mds(_tree_distances(), 8, 1.0, 50, 1e-3, generator)[0]

    assert torch.equal(fit(1), fit(1))
    assert not torch.equal(fit(1), fit(2))


def test_mds_gradient_stays_finite_for_coinciding_vectors() -> None:
    # two equal rows put a zero chord distance off the diagonal, where sqrt' is infinite
    generator = torch.Generator().manual_seed(0)
    tree_dist = np.array([[0, 2, 4], [2, 0, 4], [4, 4, 0]])
    vectors, stresses = fit_mds(tree_dist, 1, 1.0, 5, 1e-3, generator)
    assert all(math.isfinite(s) for s in stresses)
    assert torch.isfinite(vectors).all()


def test_mds_option_fixes_the_proxies() -> None:
    loss = ProxyDRLoss(num_classes=8, embedding_dim=16)
    option = MDSProxies(steps=200)
    context = _context(loss, tree_dist=_tree_distances())
    option.setup(context)
    expected, stresses = fit_mds(
        _tree_distances(), 16, 1.0, 200, 1e-3, torch.Generator().manual_seed(context.seed)
    )
    torch.testing.assert_close(loss.proxies.detach(), expected.float())
    assert loss.proxies.requires_grad is False
    assert option.log_values() == {"mds_stress": stresses[-1]}


def test_mds_option_rejects_a_tree_of_the_wrong_size() -> None:
    loss = ProxyDRLoss(num_classes=4, embedding_dim=3)
    with pytest.raises(HierpipeError, match=r"shape \(8, 8\), expected \(4, 4\)"):
        MDSProxies(steps=1).setup(_context(loss, tree_dist=_tree_distances()))


# ---------------------------------------------------------------- registry and checks


def test_build_options_runs_in_registry_order() -> None:
    options = build_options({"mds": {"beta": 2.0}, "dynamic_scale": None}, "proxydr")
    assert [type(o) for o in options] == [DynamicScale, MDSProxies]
    assert options[1].beta == 2.0
    assert list(TRAINING_OPTIONS) == ["dynamic_scale", "ema", "mds"]


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (
            {"warmup": {}},
            r"unknown training option\(s\) 'warmup'; known options: "
            r"dynamic_scale, ema, mds",
        ),
        (
            {"ema": {"beta": 0.5}},
            r"unknown hyperparameter\(s\) 'beta' for training option "
            r"'ema'; accepted: alpha",
        ),
        ({"ema": {}, "mds": {}}, r"ema and mds cannot be combined: EMA would move"),
        ({"ema": {"alpha": 0.0}}, r"ema alpha: expected a positive finite number <= 1, got 0.0"),
        ({"mds": {"steps": 2.5}}, r"mds steps: expected an integer >= 1, got 2.5"),
        ({"dynamic_scale": {"dr_numerator": "x"}}, r"dr_numerator must be one of"),
        ({"ema": [0.1]}, r"hyperparameters of training option 'ema' must be a mapping"),
    ],
)
def test_build_options_rejects_bad_specs(spec: dict, match: str) -> None:
    with pytest.raises(HierpipeError, match=match):
        build_options(spec, "proxydr")


@pytest.mark.parametrize(
    ("spec", "loss_name", "match"),
    [
        ({"dynamic_scale": {}}, "softmax", r"'dynamic_scale'.*loss 'softmax' \(SoftmaxLoss\)"),
        ({"dynamic_scale": {}, "mds": {}}, "corr", r"'dynamic_scale'.*loss 'corr' \(CORRLoss\)"),
        ({"ema": {}}, "softmax", r"'ema' places unit-length proxies, but loss 'softmax'"),
        ({"mds": {}}, "softmax", r"'mds' places unit-length proxies, but loss 'softmax'"),
        ({}, "corr", r"loss 'corr' trains against fixed class embeddings.*option 'mds'"),
        ({"ema": {}}, "corr", r"loss 'corr' trains against fixed class embeddings"),
        ({}, "arcface", r"unknown loss 'arcface'"),
    ],
)
def test_check_option_set_rejects_bad_combinations(spec: dict, loss_name: str, match: str) -> None:
    with pytest.raises(HierpipeError, match=match):
        check_option_set(spec, loss_name)


@pytest.mark.parametrize(
    ("spec", "loss_name"),
    [
        ({}, "softmax"),
        ({"ema": {}, "dynamic_scale": {}}, "normface"),
        ({"mds": {"beta": 1.0}, "dynamic_scale": {}}, "proxydr"),
        ({"mds": {}}, "corr"),
    ],
)
def test_check_option_set_accepts_the_papers_grid(spec: dict, loss_name: str) -> None:
    check_option_set(spec, loss_name)


_GRID = [
    (loss, spec)
    for loss in ("normface", "proxydr")
    for spec in (
        {},
        {"ema": {}},
        {"dynamic_scale": {}},
        {"ema": {}, "dynamic_scale": {}},
        {"mds": {"steps": 20}},
        {"mds": {"steps": 20}, "dynamic_scale": {}},
    )
] + [("softmax", {}), ("corr", {"mds": {"steps": 20}})]


@pytest.mark.parametrize(("loss_name", "spec"), _GRID)
def test_every_run_of_the_papers_grid_trains_like_the_engine(loss_name: str, spec: dict) -> None:
    """The engine's recipe (section 4.5 grid) on a toy problem: finite, checkpointable."""
    check_option_set(spec, loss_name)
    torch.manual_seed(9)
    net = torch.nn.Linear(6, 16)
    loss = build_loss(loss_name, num_classes=8, embedding_dim=16)
    options = build_options(spec, loss_name)
    for option in options:
        option.setup(_context(loss, tree_dist=_tree_distances(), lr=1e-2))
    params = [p for p in [*net.parameters(), *loss.parameters()] if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-2)
    for _ in range(5):
        embeddings = net(torch.randn(16, 6))
        if loss.normalized_embeddings:
            embeddings = F.normalize(embeddings, dim=1)
        labels = torch.randint(0, 8, (16,))
        value = loss(embeddings, labels)
        assert torch.isfinite(value)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        for option in options:
            option.on_batch(embeddings.detach(), labels)
    for option in options:
        option.load_state_dict(_roundtrip(option.state_dict()))
        assert all(math.isfinite(v) for v in option.log_values().values())


@pytest.mark.parametrize(
    ("spec", "expected"),
    [({}, False), ({"ema": {}, "dynamic_scale": {}}, False), ({"mds": {}}, True)],
)
def test_only_mds_fits_the_proxies_to_the_tree(spec: dict, expected: bool) -> None:
    assert proxies_from_hierarchy(spec) is expected


def test_building_refuses_an_incompatible_loss() -> None:
    with pytest.raises(HierpipeError, match="'ema' places unit-length proxies"):
        build_options({"ema": {}}, "softmax")
