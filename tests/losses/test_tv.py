"""Total variation (eqs. 7–15 of the TV paper): known values, invariants, batching, reductions,
bad input, float64 gradcheck, and the sub-gradient pattern of eq. 15."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from semiseg.losses.tv import SOBEL_X, SOBEL_Y, TotalVariationLoss, spatial_gradients, total_variation

OPERATORS = ("sobel", "forward")
NORMS = ("l1", "l2")
EPS_ROOT = math.sqrt(1e-6)  # the l2 norm is sqrt(gx² + gy² + eps) − sqrt(eps), eps = 1e-6


def rand(*shape, seed=0, dtype=torch.float64):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def vertical_step(k: int = 1) -> torch.Tensor:
    """[1, k, 6, 6]: channel 0 is 0 in columns 0–2 and 1 in columns 3–5; channel 1 (if any) is 1 − it."""
    p = torch.zeros(1, 1, 6, 6, dtype=torch.float64)
    p[..., 3:] = 1.0
    return torch.cat([p, 1 - p], dim=1)[:, :k]


# ------------------------------------------------------------------------------------ known values
@pytest.mark.parametrize("value", [0.0, 0.7, 1 / 3, 1.0, -2.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("operator", OPERATORS)
@pytest.mark.parametrize("norm", NORMS)
def test_constant_map_has_exactly_zero_tv_and_gradient(value, dtype, operator, norm):
    # non-dyadic values (0.7, 1/3) too: flat regions must give exactly 0, borders included
    p = torch.full((2, 3, 5, 7), value, dtype=dtype, requires_grad=True)
    gx, gy = spatial_gradients(p, operator)
    assert (gx == 0).all() and (gy == 0).all()
    for reduction in ("mean", "sum", "none"):
        tv = total_variation(p, operator, norm, reduction)
        assert (tv == 0).all(), (reduction, tv)
    # l1: sign(0) = 0 everywhere (eq. 15); l2: smooth, with zero gradient at ∇ = 0
    total_variation(p, operator, norm, "sum").backward()
    assert (p.grad == 0).all()


def test_sobel_l1_vertical_step_by_hand():
    # 6x6 map, columns 0–2 = 0, columns 3–5 = 1 (replicate padding).
    # SOBEL_X differences rows (y+1 minus y−1): every column is constant in y → gx = 0 everywhere,
    #   including the top and bottom rows, whose padded neighbours are copies of themselves.
    # SOBEL_Y (cross-correlation) at (y, x) = Σ_{dy} w(dy)·(P[y+dy, x+1] − P[y+dy, x−1]) with
    #   w = (1, 2, 1); P depends on x only, so gy = 4·(P[x+1] − P[x−1]):
    #   x = 0: P[1]−P[0] (replicate) = 0;  x = 1: P[2]−P[0] = 0;  x = 2: P[3]−P[1] = 1 → 4;
    #   x = 3: P[4]−P[2] = 1 → 4;          x = 4: P[5]−P[3] = 0;  x = 5: P[5]−P[4] (replicate) = 0.
    # Per row |gx| + |gy| = 4 + 4 = 8; 6 rows → sum = 48; mean over 36 pixels = 48/36 = 4/3.
    p = vertical_step()
    gx, gy = spatial_gradients(p, "sobel")
    assert (gx == 0).all()
    expected_gy = torch.zeros(6, 6, dtype=torch.float64)
    expected_gy[:, 2:4] = 4.0
    assert torch.equal(gy[0, 0], expected_gy)
    assert total_variation(p, "sobel", "l1", "sum").item() == 48.0
    assert total_variation(p, "sobel", "l1", "mean").item() == pytest.approx(4 / 3, rel=1e-15)
    assert total_variation(p, "sobel", "l1", "none").tolist() == pytest.approx([4 / 3], rel=1e-15)
    # l2: 12 edge pixels with |∇| = 4 → 12·(sqrt(16 + eps) − sqrt(eps))
    assert total_variation(p, "sobel", "l2", "sum").item() == pytest.approx(
        12 * (math.sqrt(16 + 1e-6) - EPS_ROOT), rel=1e-12
    )
    # two classes (P, 1 − P): the second map has the same |∇| → everything doubles (sum over classes,
    # mean still divides by the number of pixels only, not by classes)
    p2 = vertical_step(k=2)
    assert total_variation(p2, "sobel", "l1", "sum").item() == 96.0
    assert total_variation(p2, "sobel", "l1", "mean").item() == pytest.approx(8 / 3, rel=1e-15)


def test_forward_differences_vertical_step_by_hand():
    # forward differences: gy[y, x] = P[y, x+1] − P[y, x] (column 5 replicated → 0), gx = 0.
    # Only x = 2 has a jump (0 → 1): one 1 per row → sum = 6, mean = 6/36 = 1/6.
    p = vertical_step()
    gx, gy = spatial_gradients(p, "forward")
    assert (gx == 0).all()
    expected_gy = torch.zeros(6, 6, dtype=torch.float64)
    expected_gy[:, 2] = 1.0
    assert torch.equal(gy[0, 0], expected_gy)
    assert total_variation(p, "forward", "l1", "sum").item() == 6.0
    assert total_variation(p, "forward", "l1", "mean").item() == pytest.approx(1 / 6, rel=1e-15)
    assert total_variation(p, "forward", "l2", "sum").item() == pytest.approx(
        6 * (math.sqrt(1 + 1e-6) - EPS_ROOT), rel=1e-12
    )


@pytest.mark.parametrize("operator", OPERATORS)
def test_horizontal_step_swaps_the_derivatives(operator):
    # the transposed step varies along rows: same TV, now all of it in gx (the paper's ∇_X)
    p = vertical_step()
    t = p.transpose(-1, -2)
    gx, gy = spatial_gradients(p, operator)
    tx, ty = spatial_gradients(t, operator)
    assert (ty == 0).all()
    assert torch.equal(tx, gy.transpose(-1, -2))
    assert total_variation(t, operator, "l1", "sum") == total_variation(p, operator, "l1", "sum")


def test_sobel_is_eq11_as_cross_correlation():
    # the implementation is separable (difference, then 1-2-1 smoothing); it must equal a 3x3
    # cross-correlation with the kernels of eq. 11 on replicate-padded maps
    p = rand(2, 3, 5, 7)
    weight = torch.tensor([SOBEL_X, SOBEL_Y], dtype=p.dtype)[:, None].repeat(3, 1, 1, 1)
    conv = F.conv2d(F.pad(p, (1, 1, 1, 1), mode="replicate"), weight, groups=3)
    gx, gy = spatial_gradients(p, "sobel")
    torch.testing.assert_close(gx, conv[:, 0::2], rtol=0, atol=1e-14)
    torch.testing.assert_close(gy, conv[:, 1::2], rtol=0, atol=1e-14)


# ------------------------------------------------------------------------------ batching, reductions
@pytest.mark.parametrize("operator", OPERATORS)
@pytest.mark.parametrize("norm", NORMS)
def test_batched_equals_per_image(operator, norm):
    p = rand(3, 2, 5, 7, seed=1)
    per_mean = torch.stack([total_variation(p[i : i + 1], operator, norm, "mean") for i in range(3)])
    per_sum = torch.stack([total_variation(p[i : i + 1], operator, norm, "sum") for i in range(3)])
    none = total_variation(p, operator, norm, "none")
    assert none.shape == (3,)
    torch.testing.assert_close(none, per_mean, rtol=1e-12, atol=0)
    torch.testing.assert_close(
        total_variation(p, operator, norm, "mean"), per_mean.mean(), rtol=1e-12, atol=0
    )
    torch.testing.assert_close(total_variation(p, operator, norm, "sum"), per_sum.sum(), rtol=1e-12, atol=0)
    # "mean" is per pixel: sum / (B·H·W), independent of the number of classes
    torch.testing.assert_close(
        total_variation(p, operator, norm, "mean"), per_sum.sum() / (3 * 5 * 7), rtol=1e-12, atol=0
    )


# ------------------------------------------------------------------------------------- invariants
@pytest.mark.parametrize("operator", OPERATORS)
def test_l2_is_at_most_l1(operator):
    p = torch.cat([rand(4, 2, 6, 6, seed=2), vertical_step(k=2)])
    l1 = total_variation(p, operator, "l1", "none")
    l2 = total_variation(p, operator, "l2", "none")
    assert (l2 <= l1).all() and (l2 > 0).all()
    # per pixel as well: sqrt(gx² + gy² + eps) − sqrt(eps) ≤ |gx| + |gy|
    gx, gy = spatial_gradients(p, operator)
    assert (torch.sqrt(gx**2 + gy**2 + 1e-6) - EPS_ROOT <= gx.abs() + gy.abs()).all()


@pytest.mark.parametrize(
    ("operator", "norm"), [("sobel", "l1"), ("sobel", "l2"), ("forward", "l1")], ids=lambda x: x
)
def test_rotations_and_flips_leave_tv_unchanged(operator, norm):
    # Sobel: rot90 maps SOBEL_Y onto ∓SOBEL_X and replicate padding is rotation-equivariant, so the
    # per-pixel (|gx|, |gy|) pairs are permuted/swapped → l1 and l2 invariant. Forward l1: a rotation
    # turns some forward differences into backward ones, but the set of neighbour pairs is the same.
    p = rand(2, 2, 5, 7, seed=3)
    tv = total_variation(p, operator, norm, "sum")
    for k in (1, 2, 3):
        torch.testing.assert_close(total_variation(p.rot90(k, (-2, -1)), operator, norm, "sum"), tv)
    for dims in ((-1,), (-2,)):
        torch.testing.assert_close(total_variation(p.flip(dims), operator, norm, "sum"), tv)


def test_forward_l2_is_not_rotation_invariant():
    # forward l2 pairs P[y+1,x]−P[y,x] with P[y,x+1]−P[y,x] at one pixel; after a rotation the pairs
    # differ, so only l1 (and Sobel) is exactly invariant
    p = rand(1, 1, 5, 5, seed=4)
    a = total_variation(p, "forward", "l2", "sum")
    b = total_variation(p.rot90(1, (-2, -1)), "forward", "l2", "sum")
    assert abs(a - b) > 1e-3


def test_from_logits_is_tv_of_softmax():
    logits = torch.randn(2, 3, 6, 5, generator=torch.Generator().manual_seed(5))
    for operator in OPERATORS:
        for norm in NORMS:
            for reduction in ("mean", "sum", "none"):
                loss = TotalVariationLoss(operator, norm, reduction, from_logits=True)
                assert torch.equal(
                    loss(logits), total_variation(logits.softmax(1), operator, norm, reduction)
                )
    assert torch.equal(TotalVariationLoss(from_logits=False)(logits), total_variation(logits))
    assert torch.equal(TotalVariationLoss()(logits), total_variation(logits.softmax(1)))  # default


# ------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"operator": "prewitt"}, "operator"),
        ({"norm": "l3"}, "norm"),
        ({"reduction": "max"}, "reduction"),
    ],
)
def test_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        total_variation(torch.rand(1, 2, 4, 4), **kwargs)
    with pytest.raises(ValueError, match=match):
        TotalVariationLoss(**kwargs)(torch.rand(1, 2, 4, 4))


@pytest.mark.parametrize("shape", [(4, 4), (2, 4, 4), (1, 2, 3, 4, 4, 4)])
def test_bad_shape_raises(shape):
    for operator in OPERATORS:
        with pytest.raises(ValueError, match=r"\[B, K, H, W\]"):
            total_variation(torch.rand(*shape), operator)


# ------------------------------------------------------------------------------------- gradients
def away_from_kinks(p: torch.Tensor, operator: str) -> None:
    """l1 is differentiable where no derivative is 0; forward differences at the last row/column
    are identically 0 (replicated neighbour), which is not a kink."""
    gx, gy = spatial_gradients(p, operator)
    if operator == "forward":
        gx, gy = gx[..., :-1, :], gy[..., :, :-1]
    assert gx.abs().min() > 1e-3 and gy.abs().min() > 1e-3


@pytest.mark.parametrize("operator", OPERATORS)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck_float64(operator, norm, reduction):
    p = rand(2, 2, 4, 5, seed=6)
    if norm == "l1":
        away_from_kinks(p, operator)
    p.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda x: total_variation(x, operator, norm, reduction), (p,), eps=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("norm", NORMS)
def test_gradcheck_from_logits(norm):
    logits = torch.randn(1, 3, 4, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    if norm == "l1":
        away_from_kinks(logits.softmax(1), "sobel")
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(TotalVariationLoss(norm=norm), (logits,), eps=1e-6, atol=1e-6)


def zero_band_map() -> torch.Tensor:
    """7x7: random 3x3 interior, zero band of width 2 → many Sobel derivatives are exactly 0."""
    p = torch.zeros(7, 7, dtype=torch.float64)
    p[2:5, 2:5] = rand(3, 3, seed=8) + 0.1
    return p


@pytest.mark.parametrize("make", [zero_band_map, lambda: rand(7, 7, seed=9)], ids=["zero_band", "random"])
def test_gradient_follows_eq15(make):
    """∂TV/∂f_i(x_k) = sign(∇_X f(x_k))·∇_X(i) + sign(∇_Y f(x_k))·∇_Y(i) (eq. 15), sign(0) = 0,
    accumulated over all pixels k and their 3x3 neighbours i; a neighbour outside the map is the
    replicated border pixel, so its coefficient goes to the clamped position."""
    p = make()
    h, w = p.shape
    values = p.tolist()

    def at(y, x):
        return values[min(max(y, 0), h - 1)][min(max(x, 0), w - 1)]

    def correlate(kernel, y, x):  # eq. 13: row-major 3x3 neighbourhood
        return sum(kernel[i][j] * at(y + i - 1, x + j - 1) for i in range(3) for j in range(3))

    hand_gx = [[correlate(SOBEL_X, y, x) for x in range(w)] for y in range(h)]
    hand_gy = [[correlate(SOBEL_Y, y, x) for x in range(w)] for y in range(h)]
    gx, gy = spatial_gradients(p[None, None])
    torch.testing.assert_close(gx[0, 0], torch.tensor(hand_gx, dtype=p.dtype), rtol=0, atol=1e-14)
    torch.testing.assert_close(gy[0, 0], torch.tensor(hand_gy, dtype=p.dtype), rtol=0, atol=1e-14)

    def sign(v):
        return (v > 0) - (v < 0)

    expected = [[0.0] * w for _ in range(h)]
    for y in range(h):
        for x in range(w):
            sx, sy = sign(hand_gx[y][x]), sign(hand_gy[y][x])
            for i in range(3):
                for j in range(3):
                    yy, xx = min(max(y + i - 1, 0), h - 1), min(max(x + j - 1, 0), w - 1)
                    expected[yy][xx] += sx * SOBEL_X[i][j] + sy * SOBEL_Y[i][j]
    if make is zero_band_map:
        assert sum(v == 0 for row in hand_gx + hand_gy for v in row) > 20  # sign(0) = 0 exercised

    p.requires_grad_(True)
    total_variation(p[None, None], "sobel", "l1", "sum").backward()
    assert torch.equal(p.grad, torch.tensor(expected, dtype=p.dtype))  # integer sums: exact


@pytest.mark.parametrize("operator", OPERATORS)
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("from_logits", [False, True])
def test_gradient_step_reduces_tv(operator, norm, from_logits):
    g = torch.Generator().manual_seed(10)
    x = (0.5 + 0.1 * torch.randn(2, 2, 8, 8, generator=g, dtype=torch.float64)).requires_grad_(True)
    loss = TotalVariationLoss(operator, norm, "mean", from_logits=from_logits)
    before = loss(x)
    before.backward()
    with torch.no_grad():
        after = loss(x - 1e-3 * x.grad)
    assert after < before


# ------------------------------------------------------------------------------------------- 3D
@pytest.mark.parametrize("operator", OPERATORS)
@pytest.mark.parametrize("norm", NORMS)
def test_constant_volume_has_zero_tv_and_gradient(operator, norm):
    p = torch.full((2, 3, 4, 5, 6), 0.7, requires_grad=True)
    tv = total_variation(p, operator, norm, axis_weights=[0.2, 1.0, 1.0])
    (grad,) = torch.autograd.grad(tv, p)
    assert tv.item() == 0.0 and torch.count_nonzero(grad) == 0


@pytest.mark.parametrize("operator", OPERATORS)
def test_volume_constant_along_depth_is_the_2d_tv_of_its_slice(operator):
    """Sobel in 3D smooths (1, 2, 1) along D: for a map constant along D, ∇_D = 0 and the in-plane
    derivatives are 4× the 2D ones (forward differences: equal)."""
    sl = rand(1, 2, 7, 9)
    vol = sl[:, :, None].expand(1, 2, 5, 7, 9).contiguous()
    factor = 4.0 if operator == "sobel" else 1.0
    g3 = spatial_gradients(vol, operator)
    g2 = spatial_gradients(sl, operator)
    assert float(g3[0].abs().max()) == 0.0
    for a, b in zip(g3[1:], g2):
        torch.testing.assert_close(a, factor * b[:, :, None].expand_as(a))
    torch.testing.assert_close(total_variation(vol, operator), factor * total_variation(sl, operator))


@pytest.mark.parametrize("operator", OPERATORS)
def test_depth_step_counts_only_along_depth_and_axis_weights_scale_it(operator):
    p = torch.zeros(1, 1, 6, 4, 4, dtype=torch.float64)
    p[:, :, 3:] = 1.0
    gd, gh, gw = spatial_gradients(p, operator)
    assert float(gh.abs().max()) == 0.0 and float(gw.abs().max()) == 0.0 and float(gd.abs().max()) > 0
    full = total_variation(p, operator, "l1", reduction="sum")
    half = total_variation(p, operator, "l1", reduction="sum", axis_weights=[0.5, 1.0, 1.0])
    torch.testing.assert_close(half, full / 2)
    # in-plane weights do not touch a depth step
    torch.testing.assert_close(
        total_variation(p, operator, "l1", reduction="sum", axis_weights=[1, 3, 3]), full
    )


def test_3d_rotation_in_plane_leaves_tv_unchanged():
    p = rand(1, 2, 4, 6, 6)
    for norm in NORMS:
        torch.testing.assert_close(
            total_variation(p, "sobel", norm), total_variation(p.rot90(1, (3, 4)), "sobel", norm)
        )


def test_axis_weights_need_one_per_axis():
    with pytest.raises(ValueError, match="one weight per spatial axis"):
        total_variation(torch.rand(1, 2, 3, 4, 4), axis_weights=[1.0, 1.0])


def test_axis_weights_that_do_not_fit_the_model_are_a_config_error_naming_the_regulariser():
    from semiseg.config import ModelConfig
    from semiseg.errors import ConfigError
    from semiseg.methods import build_method

    with pytest.raises(
        ConfigError,
        match=r"method.regularizers\[0\].axis_weights: needs one weight per spatial axis of the 3D",
    ):
        build_method({"name": "supervised", "regularizers": [{"name": "tv", "axis_weights": [1.0, 1.0]}]},
                     ModelConfig(width=4, depth=2, spatial_dims=3), in_channels=1, num_classes=2)  # fmt: skip


@pytest.mark.parametrize("operator", ["sobel", "forward"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_padding_outside_valid_costs_nothing_and_all_valid_changes_nothing(operator, reduction):
    """3D patch padding (``valid`` False): the maps are constant on the image and anything on the
    padding, so only the jump into the padding and the padding itself vary; neither counts."""
    g = torch.Generator().manual_seed(0)
    probs = torch.full((2, 2, 5, 6, 6), 0.5)
    valid = torch.ones(2, 5, 6, 6, dtype=torch.bool)
    valid[:, 3:] = False  # the last two slices: padding past the volume's end
    valid[1, :, :, 4:] = False
    probs = torch.where(valid[:, None], probs, torch.rand(probs.shape, generator=g))
    assert total_variation(probs, operator, reduction=reduction).abs().sum() > 0
    assert float(total_variation(probs, operator, reduction=reduction, valid=valid).abs().sum()) == 0.0
    everywhere = torch.ones_like(valid)
    torch.testing.assert_close(
        total_variation(probs, operator, reduction=reduction, valid=everywhere),
        total_variation(probs, operator, reduction=reduction),
    )
