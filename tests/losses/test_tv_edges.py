"""Edge-aware total variation (beyond the paper): ``edge_weights``, ``total_variation(image=, edge_sigma=)``,
the ``tv`` regulariser's and the ``tv`` method's ``edge_sigma``."""

from __future__ import annotations

import math

import pytest
import torch

from semiseg.config import ModelConfig
from semiseg.core import Batch
from semiseg.errors import ConfigError
from semiseg.losses.regularizers import Regularizer
from semiseg.losses.tv import edge_weights, spatial_gradients, total_variation
from semiseg.methods import build_method


def rand(*shape, seed=0, dtype=torch.float64):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def step_image(contrast: float = 1.0, size: int = 8, channels: int = 1) -> torch.Tensor:
    """``[1, C, size, size]``: 0 left of column size/2, ``contrast`` from it on."""
    img = torch.zeros(1, channels, size, size, dtype=torch.float64)
    img[..., size // 2 :] = contrast
    return img


def step_probs(size: int = 8) -> torch.Tensor:
    """Two-class probabilities ``[1, 2, size, size]`` with the label edge where :func:`step_image` has its."""
    p1 = step_image(size=size)[:, 0]
    return torch.stack([1 - p1, p1], dim=1)


# ------------------------------------------------------------------------------------ edge_weights
@pytest.mark.parametrize("sigma", [0.1, 1.0, 10.0])
@pytest.mark.parametrize("operator", ["sobel", "forward"])
def test_edge_weights_are_one_on_a_constant_image(sigma, operator):
    image = torch.full((2, 3, 5, 6), 0.37, dtype=torch.float64)
    w = edge_weights(image, sigma, operator)
    assert w.shape == (2, 1, 5, 6)
    assert (w == 1).all()


@pytest.mark.parametrize("sigma", [0.5, 1.0, 4.0])
def test_edge_weights_in_unit_interval_and_small_across_a_strong_edge(sigma):
    image = step_image(contrast=1.0) + 0.05 * rand(1, 1, 8, 8, seed=1)
    w = edge_weights(image, sigma)
    assert ((w > 0) & (w <= 1)).all()
    # Sobel across the step: |∇I| ≈ 4 at columns 3 and 4, ≈ 0 (noise only) elsewhere
    across, flat = w[..., 3:5], torch.cat([w[..., :2], w[..., 6:]], dim=-1)
    assert across.max() <= math.exp(-(3.5**2) / (2 * sigma**2))
    assert flat.min() > across.max()
    if sigma <= 1.0:
        assert across.max() < 1e-3


def test_edge_weights_known_value_and_channel_mean():
    # gy = 4 · contrast across the step (see test_tv.py's hand computation), gx = 0
    sigma = 2.0
    w = edge_weights(step_image(contrast=0.5), sigma)
    expected = math.exp(-((4 * 0.5) ** 2) / (2 * sigma**2))
    torch.testing.assert_close(w[0, 0, :, 3:5], torch.full((8, 2), expected, dtype=torch.float64))
    torch.testing.assert_close(w[0, 0, :, :3], torch.ones(8, 3, dtype=torch.float64))
    # the mean over channels is used: channels (0, 1) of the step = one channel of contrast 0.5
    two = torch.cat([step_image(contrast=0.0), step_image(contrast=1.0)], dim=1)
    torch.testing.assert_close(edge_weights(two, sigma), w)


# ------------------------------------------------------------------------------------ edge-aware TV
@pytest.mark.parametrize("norm", ["l1", "l2"])
@pytest.mark.parametrize("operator", ["sobel", "forward"])
def test_label_edge_on_an_image_edge_is_cheap(norm, operator):
    probs, image = step_probs(), step_image(contrast=1.0)
    plain = total_variation(probs, operator, norm)
    # |∇I| across the step: 4 (Sobel) or 1 (forward) → weight exp(-200) or exp(-12.5)
    aware = total_variation(probs, operator, norm, image=image, edge_sigma=0.2)
    assert plain > 0.1
    assert aware < 1e-3 * plain


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_constant_image_gives_plain_tv(reduction, norm):
    probs = rand(2, 3, 6, 7, seed=2).softmax(1)
    image = torch.full((2, 1, 6, 7), 0.8, dtype=torch.float64)
    plain = total_variation(probs, "sobel", norm, reduction)
    aware = total_variation(probs, "sobel", norm, reduction, image=image, edge_sigma=0.3)
    assert torch.equal(aware, plain)


def test_edge_aware_tv_lies_between_zero_and_plain_tv_and_grows_with_sigma():
    probs, image = rand(2, 2, 6, 6, seed=3).softmax(1), rand(2, 1, 6, 6, seed=4)
    plain = total_variation(probs)
    values = [total_variation(probs, image=image, edge_sigma=s).item() for s in (0.1, 0.5, 2.0, 100.0)]
    assert all(0 < v <= plain.item() for v in values)
    assert values == sorted(values)
    assert values[-1] == pytest.approx(plain.item(), rel=1e-2)


def test_edge_aware_tv_batched_equals_per_sample():
    probs, image = rand(3, 2, 5, 6, seed=5).softmax(1), rand(3, 2, 5, 6, seed=6)
    batched = total_variation(probs, reduction="none", image=image, edge_sigma=0.4)
    single = torch.cat(
        [total_variation(probs[i : i + 1], reduction="none", image=image[i : i + 1], edge_sigma=0.4)
         for i in range(3)]
    )  # fmt: skip
    torch.testing.assert_close(batched, single)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"edge_sigma": 1.0}, "needs the images"),
        ({"edge_sigma": 1.0, "image": torch.rand(3, 1, 6, 6)}, "same batch"),  # batch size
        ({"edge_sigma": 1.0, "image": torch.rand(2, 1, 6, 5)}, "same batch"),  # width
        ({"edge_sigma": 1.0, "image": torch.rand(2, 1, 5, 6)}, "same batch"),  # height
        ({"edge_sigma": 0.0, "image": torch.rand(2, 1, 6, 6)}, "positive"),
        ({"edge_sigma": -1.0, "image": torch.rand(2, 1, 6, 6)}, "positive"),
    ],
    ids=["no-image", "batch", "width", "height", "zero-sigma", "negative-sigma"],
)
def test_bad_edge_options_raise(kwargs, match):
    probs = torch.rand(2, 2, 6, 6).softmax(1)
    with pytest.raises(ValueError, match=match):
        total_variation(probs, **kwargs)


def test_image_without_edge_sigma_is_plain_tv():
    probs = rand(1, 2, 6, 6, seed=7).softmax(1)
    assert torch.equal(total_variation(probs, image=step_image(size=6)), total_variation(probs))


@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_gradcheck_float64_with_image(norm):
    probs, image = rand(2, 2, 4, 5, seed=8), rand(2, 1, 4, 5, seed=9)
    if norm == "l1":  # differentiable only where no derivative is 0
        gx, gy = spatial_gradients(probs)
        assert gx.abs().min() > 1e-3 and gy.abs().min() > 1e-3
    probs.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: total_variation(x, norm=norm, image=image, edge_sigma=0.5), (probs,), eps=1e-6, atol=1e-6
    )


# ------------------------------------------------------------------------------------ regulariser
def test_tv_regularizer_weights_by_the_batch_image():
    reg = Regularizer({"name": "tv", "edge_sigma": 0.5})
    logits = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(10))
    image = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(11))
    value = reg({"labeled": logits}, {"labeled": Batch.of(image)})
    expected = total_variation(logits.softmax(1), image=image, edge_sigma=0.5)
    torch.testing.assert_close(value, expected)
    other = reg({"labeled": logits}, {"labeled": Batch.of(torch.zeros(2, 1, 8, 8))})
    torch.testing.assert_close(other, total_variation(logits.softmax(1)))  # flat image: plain TV
    assert not torch.allclose(value, other)


@pytest.mark.parametrize("sigma", [0, -0.5])
def test_tv_regularizer_rejects_bad_sigma_at_build(sigma):
    with pytest.raises(ConfigError, match="edge_sigma' must be positive"):
        Regularizer({"name": "tv", "edge_sigma": sigma})


# ------------------------------------------------------------------------------------ method
def test_tv_method_with_edge_sigma_trains_one_step():
    torch.manual_seed(0)
    k = 3
    method = build_method(
        {"name": "tv", "tv_weight": 0.5, "edge_sigma": 0.3}, ModelConfig(width=4, depth=2),
        in_channels=1, num_classes=k,
    ).train()  # fmt: skip
    g = torch.Generator().manual_seed(12)
    batch = {
        "labeled": Batch.of(torch.rand(2, 1, 16, 16, generator=g), torch.randint(0, k, (2, 16, 16), generator=g)),
        "unlabeled": Batch.of(torch.rand(2, 1, 16, 16, generator=g)),
    }  # fmt: skip
    opt = torch.optim.SGD(method.parameters(), lr=0.1)
    out = method.training_step(batch, "train", "main")
    assert set(out) == {"loss", "ce", "reg/tv"}
    assert torch.isfinite(out["loss"]) and out["reg/tv"] > 0
    with torch.no_grad():
        tv = torch.stack(
            [total_variation(method.model(b.image).softmax(1), image=b.image, edge_sigma=0.3)
             for b in batch.values()]
        ).mean()  # fmt: skip
        plain = torch.stack(
            [total_variation(method.model(b.image).softmax(1)) for b in batch.values()]
        ).mean()
    torch.testing.assert_close(out["reg/tv"].detach(), tv)
    assert tv < plain
    torch.testing.assert_close(out["loss"], out["ce"] + 0.5 * out["reg/tv"])
    opt.zero_grad()
    out["loss"].backward()
    grads = [p.grad for p in method.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    before = [p.detach().clone() for p in method.parameters()]
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, method.parameters()))


def test_tv_method_rejects_bad_edge_sigma():
    with pytest.raises(ConfigError, match="edge_sigma"):
        build_method(
            {"name": "tv", "edge_sigma": -1.0}, ModelConfig(width=4, depth=2), in_channels=1, num_classes=2
        )
