"""EmbeddingNet on timm's tiny `test_resnet`, and its offline weight handling."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import timm
import torch

from hierpipe.core.errors import HierpipeError
from hierpipe.core.geometry import to_poincare
from hierpipe.models import HEADS, EmbeddingNet, select_device

BACKBONE = "test_resnet"


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def backbone_weights(tmp_path: Path) -> Path:
    path = tmp_path / "backbone.pt"
    torch.save(timm.create_model(BACKBONE, num_classes=0).state_dict(), path)
    return path


def test_sphere_head_has_unit_norm(images: torch.Tensor) -> None:
    embeddings = EmbeddingNet(BACKBONE, embedding_dim=16, head="sphere")(images)
    assert embeddings.shape == (2, 16)
    torch.testing.assert_close(embeddings.norm(dim=1), torch.ones(2))


def test_euclidean_head_is_the_plain_linear_output(images: torch.Tensor) -> None:
    net = EmbeddingNet(BACKBONE, embedding_dim=16, head="euclidean")
    embeddings = net(images)
    assert embeddings.shape == (2, 16)
    assert not torch.allclose(embeddings.norm(dim=1), torch.ones(2))
    torch.testing.assert_close(embeddings, net.head(net.backbone(images)))


def test_poincare_head_is_layernorm_linear_to_poincare(images: torch.Tensor) -> None:
    curvature, clip_r = 0.5, 1.7
    net = EmbeddingNet(BACKBONE, 16, head="poincare", curvature=curvature, clip_r=clip_r)
    torch.testing.assert_close(net.head.bias, torch.zeros(16))
    weight = net.head.weight.detach()
    torch.testing.assert_close(weight @ weight.T, torch.eye(16))  # orthogonal rows
    features = net.backbone(images)
    normed = (features - features.mean(1, keepdim=True)) / torch.sqrt(
        features.var(1, unbiased=False, keepdim=True) + 1e-5
    )
    embeddings = net(images)
    torch.testing.assert_close(embeddings, to_poincare(net.head(normed), curvature, clip_r))
    assert (embeddings.norm(dim=1) < curvature**-0.5).all()


def test_poincare_head_backpropagates_the_riemannian_gradient(images: torch.Tensor) -> None:
    net = EmbeddingNet(BACKBONE, 16, head="poincare")
    features = net.head(net.feature_norm(net.backbone(images))).detach().requires_grad_(True)
    ball = net.to_space(features)
    ball.sum().backward()
    plain = features.detach().requires_grad_(True)
    unscaled = to_poincare(plain, 0.1, 2.3)
    # the head's gradient is the plain one with each row's upstream gradient scaled
    weights = ((1 - 0.1 * ball.detach().pow(2).sum(1, keepdim=True)) ** 2 / 4).expand_as(ball)
    torch.autograd.backward(unscaled, weights)
    torch.testing.assert_close(features.grad, plain.grad)


def test_heads_share_the_linear_state_dict_keys() -> None:
    keys = {
        head: {k for k in EmbeddingNet(BACKBONE, 8, head=head).state_dict() if "backbone" not in k}
        for head in HEADS
    }
    assert all(k == {"head.weight", "head.bias"} for k in keys.values())


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"head": "hyperbolic"}, r"head: unknown 'hyperbolic', expected one of euclidean, sphere"),
        ({"head": "poincare", "curvature": 0.0}, r"curvature: must be > 0, got 0\.0"),
        ({"head": "poincare", "clip_r": -1.0}, r"clip_r: must be > 0, got -1\.0"),
    ],
)
def test_bad_head_settings(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(HierpipeError, match=match):
        EmbeddingNet(BACKBONE, 8, **kwargs)


def test_single_channel_input() -> None:
    net = EmbeddingNet(BACKBONE, embedding_dim=4, head="sphere", in_chans=1)
    assert net(torch.rand(2, 1, 32, 32)).shape == (2, 4)


def test_local_weights_round_trip(images: torch.Tensor, tmp_path: Path) -> None:
    source = EmbeddingNet(BACKBONE, embedding_dim=8, head="sphere").eval()
    path = tmp_path / "backbone.pt"
    torch.save(source.backbone.state_dict(), path)

    loaded = EmbeddingNet(BACKBONE, embedding_dim=8, head="sphere", pretrained=True, weights=path)
    loaded.head.load_state_dict(source.head.state_dict())
    loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), source(images), rtol=0, atol=0)


def test_weights_with_wrong_shape_name_the_file_and_key(
    backbone_weights: Path, tmp_path: Path
) -> None:
    state = torch.load(backbone_weights, weights_only=True)
    key = next(iter(state))
    state[key] = torch.zeros(1, *state[key].shape)
    path = tmp_path / "wrong_shape.pt"
    torch.save(state, path)
    with pytest.raises(HierpipeError) as info:
        EmbeddingNet(BACKBONE, 8, head="sphere", pretrained=True, weights=path)
    assert str(path) in str(info.value)
    assert f"shape mismatch(es): {key}" in str(info.value)


def test_weights_with_missing_and_unexpected_keys(backbone_weights: Path, tmp_path: Path) -> None:
    state = torch.load(backbone_weights, weights_only=True)
    missing_key = next(iter(state))
    del state[missing_key]
    state["fc.weight"] = torch.zeros(10, 96)
    path = tmp_path / "with_head.pt"
    torch.save(state, path)
    with pytest.raises(
        HierpipeError, match=rf"1 missing key.*{re.escape(missing_key)}.*unexpected.*fc\.weight"
    ):
        EmbeddingNet(BACKBONE, 8, head="sphere", pretrained=True, weights=path)


def test_missing_weights_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.pt"
    with pytest.raises(HierpipeError, match=rf"{re.escape(str(path))}.*does not exist"):
        EmbeddingNet(BACKBONE, 8, head="sphere", pretrained=True, weights=path)


def test_unreadable_weights_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(
        HierpipeError, match=rf"cannot read backbone weights file.*{re.escape(path.name)}"
    ):
        EmbeddingNet(BACKBONE, 8, head="sphere", pretrained=True, weights=path)


def test_weights_file_that_is_not_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(HierpipeError, match="holds a list, not a flat mapping"):
        EmbeddingNet(BACKBONE, 8, head="sphere", pretrained=True, weights=path)


def test_weights_without_pretrained_is_refused(backbone_weights: Path) -> None:
    with pytest.raises(HierpipeError, match="pretrained=False"):
        EmbeddingNet(BACKBONE, 8, head="sphere", weights=backbone_weights)


def test_unknown_backbone() -> None:
    with pytest.raises(HierpipeError, match=r"unknown backbone 'no_such_net'.*timm.list_models"):
        EmbeddingNet("no_such_net", 8, head="sphere")


def test_pretrained_without_a_weights_file_fails_and_never_downloads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("timm.create_model must not be reached")

    monkeypatch.setattr(timm, "create_model", no_model)
    with pytest.raises(HierpipeError, match=r"needs a weights file: .*hierpipe weights fetch"):
        EmbeddingNet(BACKBONE, 8, head="sphere", pretrained=True)


@pytest.mark.parametrize(("embedding_dim", "in_chans"), [(0, 3), (8, 0)])
def test_constructor_arguments_are_validated(embedding_dim: int, in_chans: int) -> None:
    with pytest.raises(HierpipeError, match="expected an integer >= 1"):
        EmbeddingNet(BACKBONE, embedding_dim, head="sphere", in_chans=in_chans)


def test_select_device() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert select_device().type == expected
