"""Size and centroid inequality penalties (curriculum paper eqs. 3–5)."""

from __future__ import annotations

import math

import pytest
import torch

from semiseg.core import Batch
from semiseg.losses.regularizers import build_regularizers
from semiseg.losses.size import (
    SizePenalty,
    bounds_penalty,
    centroid_penalty,
    size_bounds,
    size_penalty,
    soft_centroid,
    soft_size,
)


def two_class(fg: torch.Tensor) -> torch.Tensor:
    """Foreground probability maps ``[B, H, W]`` → 2-class probabilities ``[B, 2, H, W]``."""
    return torch.stack([1 - fg, fg], dim=1)


def uniform(b: int, h: int, w: int, p: float, dtype=torch.float32) -> torch.Tensor:
    return two_class(torch.full((b, h, w), p, dtype=dtype))


def test_soft_size_sums_probabilities_2d_and_3d():
    probs = uniform(2, 4, 5, 0.25)
    assert torch.allclose(soft_size(probs), torch.tensor([[15.0, 5.0], [15.0, 5.0]]))
    vol = torch.rand(1, 3, 2, 3, 4).softmax(1)
    assert torch.allclose(soft_size(vol).sum(1), torch.tensor([24.0]))


def test_zero_inside_the_bounds():
    probs = uniform(1, 10, 10, 0.5)  # soft size 50
    for r in (50.0, 46.0, 54.0, 50 / 0.9 - 0.01, 50 / 1.1 + 0.01):
        sizes = torch.tensor([[math.nan, r]])
        assert size_penalty(probs, sizes, gamma=0.1, normalization="none").item() == 0.0


@pytest.mark.parametrize("r", [30.0, 80.0])
def test_exact_quadratic_values_outside(r):
    probs = uniform(1, 10, 10, 0.5)  # t = 50
    lo, hi = 0.9 * r, 1.1 * r
    expected = (50 - hi) ** 2 if 50 > hi else (lo - 50) ** 2
    sizes = torch.tensor([[math.nan, r]])
    got = size_penalty(probs, sizes, gamma=0.1, normalization="none")
    assert got.item() == pytest.approx(expected, rel=1e-5)
    assert size_penalty(probs, sizes, 0.1, normalization="pixels").item() == pytest.approx(
        expected / 100, rel=1e-5
    )
    area = ((50 - hi) / 100) ** 2 if 50 > hi else ((lo - 50) / 100) ** 2
    assert size_penalty(probs, sizes, 0.1, normalization="area").item() == pytest.approx(area, rel=1e-5)


@pytest.mark.parametrize("r, direction", [(20.0, -1), (90.0, +1)])
def test_gradient_pushes_the_size_toward_the_interval(r, direction):
    logits = torch.zeros(1, 2, 10, 10, requires_grad=True)  # t = 50
    size_penalty(logits.softmax(1), torch.tensor([[math.nan, r]]), gamma=0.1).backward()
    # gradient descent moves the foreground logits by -grad: the size must move in `direction`
    step = -logits.grad[0, 1]
    assert (torch.sign(step) == direction).all()
    with torch.no_grad():
        t_after = soft_size((logits - 10 * logits.grad).softmax(1))[0, 1]
    assert (t_after - 50) * direction > 0


def test_float64_gradcheck():
    logits = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    sizes = torch.tensor([[0.0, 3.0, 15.0], [0.0, math.nan, 1.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: size_penalty(x.softmax(1), sizes, 0.1), (logits,))
    lo = torch.tensor([[[0.0, 0.0], [0.6, 0.1], [0.0, 0.7]]] * 2, dtype=torch.float64)
    hi = lo + 0.1
    assert torch.autograd.gradcheck(lambda x: centroid_penalty(x.softmax(1), lo, hi), (logits,))


def test_batched_equals_per_image():
    probs = torch.rand(4, 3, 6, 7).softmax(1)
    sizes = torch.rand(4, 3) * 42
    per_image = size_penalty(probs, sizes, 0.1, reduction="none")
    assert per_image.shape == (4,)
    for i in range(4):
        assert torch.allclose(per_image[i], size_penalty(probs[i : i + 1], sizes[i : i + 1], 0.1))
    assert torch.allclose(size_penalty(probs, sizes, 0.1), per_image.mean())
    assert torch.allclose(size_penalty(probs, sizes, 0.1, reduction="sum"), per_image.sum())


def test_per_class_sum_and_unknown_sizes_cost_nothing():
    probs = torch.rand(2, 3, 5, 5).softmax(1)
    sizes = torch.tensor([[0.0, 1.0, 2.0], [math.nan, math.nan, math.nan]])
    per_class = [size_penalty(probs[:1], sizes[:1], 0.1, classes=[c]) for c in (1, 2)]
    assert torch.allclose(size_penalty(probs[:1], sizes[:1], 0.1), per_class[0] + per_class[1])
    # the second image has no bounds: mean over the one constrained image only
    assert torch.allclose(size_penalty(probs, sizes, 0.1), size_penalty(probs[:1], sizes[:1], 0.1))
    assert size_penalty(probs[1:], sizes[1:], 0.1).item() == 0.0


def test_negative_regressed_size_gives_zero_bounds():
    lo, hi = size_bounds(torch.tensor([-5.0, 10.0]), 0.1)
    assert lo.tolist() == [0.0, 9.0] and hi.tolist() == pytest.approx([0.0, 11.0])
    with pytest.raises(ValueError, match="gamma"):
        size_bounds(torch.tensor([1.0]), -0.1)


def test_explicit_bounds_and_bad_arguments():
    probs = uniform(1, 10, 10, 0.5)
    lower, upper = torch.tensor([[math.nan, 60.0]]), torch.tensor([[math.nan, math.nan]])
    got = size_penalty(probs, torch.empty(0), lower=lower, upper=upper, normalization="none")
    assert got.item() == pytest.approx(100.0)
    with pytest.raises(ValueError, match="normalization"):
        size_penalty(probs, torch.zeros(1, 2), normalization="nope")
    with pytest.raises(ValueError, match="sizes must have shape"):
        size_penalty(probs, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="classes"):
        size_penalty(probs, torch.zeros(1, 2), classes=[2])


def test_soft_centroid_of_a_square_and_its_penalty():
    fg = torch.zeros(1, 11, 21)
    fg[0, 0:3, 15:21] = 1.0  # rows 0..2 → mean row 1/10; columns 15..20 → mean 17.5/20
    c = soft_centroid(two_class(fg))[0, 1]
    assert c.tolist() == pytest.approx([0.1, 0.875], abs=1e-5)
    lo = torch.tensor([[[math.nan, math.nan], [0.3, 0.0]]])
    hi = torch.tensor([[[math.nan, math.nan], [0.5, 0.8]]])
    expected = (0.3 - 0.1) ** 2 + (0.875 - 0.8) ** 2
    assert centroid_penalty(two_class(fg), lo, hi).item() == pytest.approx(expected, abs=1e-5)


def test_bounds_penalty_nan_is_open():
    v = torch.tensor([1.0, 5.0, 9.0])
    got = bounds_penalty(v, torch.tensor([2.0, math.nan, 0.0]), torch.tensor([math.nan, 4.0, 8.0]))
    assert got.tolist() == [1.0, 1.0, 1.0]


def test_module_matches_function():
    logits = torch.randn(2, 2, 6, 6)
    sizes = torch.tensor([[0.0, 5.0], [0.0, 20.0]])
    assert torch.allclose(SizePenalty(gamma=0.2)(logits, sizes), size_penalty(logits.softmax(1), sizes, 0.2))


def test_size_regularizer_reads_the_batch_sizes():
    (reg,) = build_regularizers([{"name": "size", "weight": 2.0, "gamma": 0.1, "streams": ["unlabeled"]}])
    logits = torch.randn(2, 2, 6, 6)
    sizes = torch.tensor([[math.nan, 3.0], [math.nan, 30.0]])
    got = reg({"unlabeled": logits}, {"unlabeled": Batch.of(torch.rand(2, 1, 6, 6), sizes=sizes)})
    assert torch.allclose(got, size_penalty(logits.softmax(1), sizes, 0.1))  # the method applies the weight
    assert reg.current_weight(0) == 2.0
