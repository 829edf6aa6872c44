"""Training options of the ProxyDR code (github.com/hjk92g/ProxyDR, train_cifar100.py: `--ema`,
`--dynamic`, `--mds_W`): EMA, dynamic scale, MDS, their registry, and what each does inside
the training engine."""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import validated
from scipy.optimize import brentq, minimize_scalar

from hierpipe.core.catalog import TRAINING_OPTIONS, check_option_set, proxies_from_hierarchy
from hierpipe.core.config import resolve_run_config
from hierpipe.core.errors import HierpipeError
from hierpipe.core.hierarchy import ClassTree
from hierpipe.data import read_classes
from hierpipe.losses import NormFaceLoss, ProxyClassifierLoss, ProxyDRLoss
from hierpipe.train import engine
from hierpipe.train.artifacts import load_model
from hierpipe.train.engine import train_run
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


def _normface_initial_residual(scale: float, num_classes: int) -> float:
    """The NormFace condition at a target angle of pi/4 and C - 1 orthogonal non-targets."""
    c = s2 = math.sqrt(0.5)  # cos(pi/4), and sin^2(pi/4) = 1/2 below
    return math.exp(scale * c) * (c + scale * s2**2) + (num_classes - 1) * (c - scale * s2**2)


@pytest.mark.parametrize("num_classes", [8, 12])
def test_initial_scale_without_a_root_warns_and_keeps_fsolves_iterate(
    caplog, num_classes: int
) -> None:
    # For NormFace with C <= 22 the exponential target term always wins: the residual has no
    # root, and fsolve stops where it is smallest.
    scales = np.linspace(0.01, 30, 3000)
    assert min(_normface_initial_residual(s, num_classes) for s in scales) > 0
    smallest = minimize_scalar(
        _normface_initial_residual, bounds=(0, 30), args=(num_classes,), method="bounded"
    ).x
    with caplog.at_level(logging.WARNING):
        value = initial_scale("normface", num_classes)
    assert value == pytest.approx(smallest, abs=2e-3)
    assert f"no normface scale solves the initial condition for {num_classes} classes" in (
        caplog.text
    )


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
    before = loss.proxies[0].detach().numpy().astype(np.float64)
    embedding = torch.randn(1, 3)
    resumed.on_batch(embedding, torch.tensor([0]))
    # seen before the interruption: averaged (alpha = 0.01), not re-initialised
    z = _normalize_rows(embedding[0].numpy().astype(np.float64))
    expected = _normalize_rows(0.01 * z + 0.99 * before)
    np.testing.assert_allclose(loss.proxies[0].numpy(), expected, rtol=1e-5)


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
    # In one dimension the unit vectors are +-1, so two of the three rows coincide: a zero
    # chord distance off the diagonal, where sqrt' is infinite. Five small Adam steps flip
    # no sign, so the rows and the stress must stay exactly where they started.
    generator = torch.Generator().manual_seed(0)
    tree_dist = np.array([[0, 2, 4], [2, 0, 4], [4, 4, 0]])
    vectors, stresses = fit_mds(tree_dist, 1, 1.0, 5, 1e-3, generator)
    signs = vectors.numpy()[:, 0]
    np.testing.assert_array_equal(np.abs(signs), 1.0)
    targets = math.sqrt(2) * tree_dist / (1.0 + tree_dist)  # T(D) = sqrt(2) D / (beta + D)
    # off the diagonal the squared chord is clamped to at least 1e-12 before the square
    # root (what keeps the gradient finite), so coinciding rows sit 1e-6 apart
    chords = np.maximum(np.abs(signs[:, None] - signs[None, :]), 1e-6) * (1 - np.eye(3))
    expected = np.linalg.norm(targets - chords) / np.linalg.norm(targets)
    np.testing.assert_allclose(stresses, [expected] * 6, rtol=1e-12)


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


# ---------------------------------------------------------------- inside the engine


EPOCHS = 2


def _train(tiny_params: dict, data_root: Path, tmp_path: Path, model: str, option: str):
    """One run of the real engine; returns its config, trained model and per-epoch log."""
    tiny_params["train"]["epochs"] = EPOCHS
    tiny_params["options"].update(
        ema_dynamic={"ema": {"alpha": 0.01}, "dynamic_scale": {}},
        mds_dynamic={"mds": {"steps": 50}, "dynamic_scale": {}},
    )
    params = validated(tiny_params)
    config = resolve_run_config(params, "shapes", model, option, 1, data_root=str(data_root))
    train_run(config, tmp_path / "model.pt", tmp_path / "log.parquet", tmp_path / "ckpt")
    return config, load_model(tmp_path / "model.pt"), pd.read_parquet(tmp_path / "log.parquet")


@dataclass
class _Step:
    """One training batch as an option saw it, with the loss's state of the forward pass."""

    embeddings: np.ndarray
    labels: np.ndarray
    proxies: np.ndarray
    scale: float
    log_s: float | None  # DynamicScale's log s, and its residual for this batch
    residual: float | None


class _OptionSpy:
    """Records what the engine hands every instance of an option class: the loss at setup,
    and each batch with the proxies and scale the forward pass used (read before the
    option's own update)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, cls: type) -> None:
        self.steps: list[_Step] = []
        real_setup, real_on_batch = cls.setup, cls.on_batch

        def setup(option, context: OptionContext) -> None:
            real_setup(option, context)
            self.loss = context.loss
            self.initial_proxies = self._proxies()
            self.initial_scale = float(context.loss.scale)

        def on_batch(option, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
            log_s = residual = None
            if isinstance(option, DynamicScale):
                log_s = option.log_s.item()
                residual = option.batch_residual(embeddings, labels).item()
            step = _Step(
                embeddings.double().numpy().copy(),
                labels.numpy().copy(),
                self._proxies(),
                float(self.loss.scale),
                log_s,
                residual,
            )
            self.steps.append(step)
            real_on_batch(option, embeddings, labels)

        monkeypatch.setattr(cls, "setup", setup)
        monkeypatch.setattr(cls, "on_batch", on_batch)

    def _proxies(self) -> np.ndarray:
        return self.loss.proxies.detach().double().numpy().copy()

    def epoch_ends(self) -> list[int]:
        """Index of the last step of every epoch."""
        per_epoch, rest = divmod(len(self.steps), EPOCHS)
        assert per_epoch > 0 and rest == 0
        return [per_epoch * (epoch + 1) - 1 for epoch in range(EPOCHS)]


# ProxyDR with MDS alone is the second case without the dynamic scale.
@pytest.mark.parametrize(("model", "option"), [("corr", "mds"), ("proxydr", "mds_dynamic")])
def test_engine_keeps_the_proxies_at_the_mds_solution(
    tiny_params, data_root, tmp_path, monkeypatch, model: str, option: str
) -> None:
    # the proxies at the end of every epoch but the last, as checkpointed (the last epoch's
    # state is the model's)
    seen = []
    save = engine._save_checkpoint

    def save_and_record(path, config, net, objective, *rest) -> None:
        seen.append(objective.loss.proxies.detach().clone())
        save(path, config, net, objective, *rest)

    monkeypatch.setattr(engine, "_save_checkpoint", save_and_record)
    config, trained, _ = _train(tiny_params, data_root, tmp_path, model, option)
    assert trained.class_ids == list(range(8))
    tree_dist = read_classes(config.data_dir).distance_matrix()
    generator = torch.Generator().manual_seed(config.seed)
    expected, _ = fit_mds(tree_dist, config.backbone.embedding_dim, 1.0, 50, 1e-3, generator)
    assert len(seen) == EPOCHS - 1
    for proxies in [*seen, trained.objective.loss.proxies.detach()]:
        torch.testing.assert_close(proxies, expected.float(), rtol=0, atol=0)


def _ema_states(start: np.ndarray, steps: list[_Step], alpha: float) -> list[np.ndarray]:
    """Proxies after every step by the EMA rule of the ProxyDR code (train_cifar100.py,
    update_proxy): w_c = m_c the first time class c is in a batch, then
    w_c <- normalize(alpha m_c + (1 - alpha) w_c), with m_c the normalised mean of the
    batch's normalised class-c embeddings."""
    proxies, seen, states = start.copy(), set(), []
    for step in steps:
        z = _normalize_rows(step.embeddings)
        for c in np.unique(step.labels):
            mean = _normalize_rows(z[step.labels == c].mean(axis=0))
            moved = alpha * mean + (1 - alpha) * proxies[c]
            proxies[c] = _normalize_rows(moved) if c in seen else mean
            seen.add(c)
        states.append(proxies.copy())
    return states


@pytest.mark.parametrize(("model", "option"), [("proxydr", "ema"), ("normface", "ema_dynamic")])
def test_engine_moves_the_proxies_only_by_the_ema_rule(
    tiny_params, data_root, tmp_path, monkeypatch, model: str, option: str
) -> None:
    spy = _OptionSpy(monkeypatch, EMAProxies)
    _, trained, _ = _train(tiny_params, data_root, tmp_path, model, option)
    states = _ema_states(spy.initial_proxies, spy.steps, alpha=0.01)
    # Before each batch the proxies are where the EMA rule left them: the optimiser, which
    # takes its step between two batches, never touches them.
    for step, state in zip(spy.steps, [spy.initial_proxies, *states[:-1]], strict=True):
        np.testing.assert_allclose(step.proxies, state, rtol=1e-5, atol=1e-6)
    best = spy.epoch_ends()[trained.epoch - 1]
    saved = trained.objective.loss.proxies.detach().double().numpy()
    np.testing.assert_allclose(saved, states[best], rtol=1e-5, atol=1e-6)
    assert not np.allclose(states[best], spy.initial_proxies, atol=1e-3)


def _scale_condition(kind: str, s: float, step: _Step) -> tuple[float, float]:
    """The dynamic-scale residual r of one batch and dr/dlog s, B_avg and theta_med held
    constant (ProxyDR code, train_cifar100.py, `--dynamic`)."""
    n = len(step.labels)
    rows = np.arange(n)
    cos = _normalize_rows(step.embeddings) @ _normalize_rows(step.proxies).T
    angles = np.arccos(0.999999 * np.clip(cos[rows, step.labels], -1, 1))
    theta = min(math.pi / 4, np.sort(angles)[(n - 1) // 2])  # the lower median
    non_target = np.ones_like(cos, dtype=bool)
    non_target[rows, step.labels] = False
    if kind == "proxydr":
        # the public code raises d^2 to -sqrt(s): the numerators at scale 2 sqrt(s)
        numerators = np.clip(2 - 2 * cos, 1e-12, None) ** -math.sqrt(s)
        b_avg = numerators[non_target].sum() / n
        d2 = 2 - 2 * math.cos(theta) + 1e-12
        d_s = d2 ** (s / 2)
        slope = s * (b_avg * (d_s + (s + 1) * d_s * math.log(d2) / 2) - 1)
        return b_avg * (s + 1) * d_s + 1 - s, slope
    b_avg = np.exp(s * cos)[non_target].sum() / n
    c, sin2 = math.cos(theta), math.sin(theta) ** 2
    target = math.exp(s * c)
    residual = target * (c + s * sin2) + b_avg * (c - s * sin2)
    return residual, s * (target * (c * (c + s * sin2) + sin2) - b_avg * sin2)


def _proxydr_initial_residual(s: float, num_classes: int) -> float:
    """The ProxyDR condition at a target angle of pi/4, C - 1 orthogonal non-targets."""
    return (num_classes - 1) * 2 ** (-s / 2) * (s + 1) * (2 - math.sqrt(2)) ** (s / 2) - s + 1


@pytest.mark.parametrize("model", ["proxydr", "normface"])
def test_engine_steps_the_scale_by_adam_on_the_squared_residual(
    tiny_params, data_root, tmp_path, monkeypatch, model: str
) -> None:
    spy = _OptionSpy(monkeypatch, DynamicScale)
    config, trained, log = _train(tiny_params, data_root, tmp_path, model, "dynamic")
    if model == "proxydr":
        s0 = brentq(_proxydr_initial_residual, 1.0, 30.0, args=(8,))
        assert spy.initial_scale == pytest.approx(s0, rel=1e-6)

    # Adam (torch's defaults) on log s with the training lr, one step per batch on r^2
    lr, beta1, beta2, eps = config.train.lr, 0.9, 0.999, 1e-8
    log_s, m, v, scales = spy.steps[0].log_s, 0.0, 0.0, []
    assert math.exp(log_s) == pytest.approx(spy.initial_scale, rel=1e-6)
    for t, step in enumerate(spy.steps, start=1):
        # log s is float32 in the option: a step's rounding is ~1e-7, far below lr
        assert step.log_s == pytest.approx(log_s, abs=1e-6)
        # the forward pass used the current scale, and the residual is the formula's (up to
        # the cosines, which the option takes in float32 from the loss)
        assert step.scale == pytest.approx(math.exp(step.log_s), rel=1e-6)
        assert step.residual == pytest.approx(
            _scale_condition(model, math.exp(step.log_s), step)[0], rel=1e-6
        )
        residual, slope = _scale_condition(model, math.exp(log_s), step)
        gradient = 2 * residual * slope
        m = beta1 * m + (1 - beta1) * gradient
        v = beta2 * v + (1 - beta2) * gradient**2
        log_s -= lr * (m / (1 - beta1**t)) / (math.sqrt(v / (1 - beta2**t)) + eps)
        scales.append(math.exp(log_s))

    ends = spy.epoch_ends()
    # float32 log s against the float64 chain: up to ~1e-6 apart after the last step
    assert log["scale"].tolist() == pytest.approx([scales[i] for i in ends], rel=1e-5)
    saved = trained.objective.loss.scale.item()
    assert saved == pytest.approx(scales[ends[trained.epoch - 1]], rel=1e-5)
    assert abs(scales[-1] / spy.initial_scale - 1) > 1e-3  # the scale did move


@pytest.mark.parametrize(
    ("spec", "expected"),
    [({}, False), ({"ema": {}, "dynamic_scale": {}}, False), ({"mds": {}}, True)],
)
def test_only_mds_fits_the_proxies_to_the_tree(spec: dict, expected: bool) -> None:
    assert proxies_from_hierarchy(spec) is expected


def test_building_refuses_an_incompatible_loss() -> None:
    with pytest.raises(HierpipeError, match="'ema' places unit-length proxies"):
        build_options({"ema": {}}, "softmax")
