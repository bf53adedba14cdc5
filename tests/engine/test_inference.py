"""Sliding-window inference: window placement, trim blending equals whole-input inference for a
network whose receptive field is inside the overlap, Gaussian blending through MONAI, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from semiseg.engine.inference import Inferer, window_starts


def conv_net(dims: int, seed: int = 0) -> nn.Module:
    """Two 3-wide convolutions: receptive-field radius 2 voxels."""
    torch.manual_seed(seed)
    conv = nn.Conv2d if dims == 2 else nn.Conv3d
    return nn.Sequential(conv(1, 4, 3, padding=1), nn.Tanh(), conv(4, 3, 3, padding=1)).eval()


@pytest.mark.parametrize(
    "size,roi,overlap", [(10, 4, 0.5), (17, 8, 0.5), (8, 8, 0.5), (5, 8, 0.25), (30, 8, 0.75)]
)
def test_windows_cover_the_axis_and_end_flush(size, roi, overlap):
    starts = window_starts(size, roi, overlap)
    assert starts[0] == 0 and starts == sorted(set(starts))
    assert starts[-1] + roi >= size and (roi >= size or starts[-1] + roi == size)
    step = max(1, int(roi * (1 - overlap)))
    assert all(b - a <= step for a, b in zip(starts, starts[1:]))


@pytest.mark.parametrize("shape,roi", [((1, 1, 12, 20, 23), (6, 10, 10)), ((2, 1, 5, 16, 16), (8, 8, 8))])
def test_trim_blend_equals_whole_input_when_the_receptive_field_is_inside_the_overlap(shape, roi):
    """With overlap 0.7, consecutive windows share at least 5 voxels (window 6, step 1) or 7 (window
    10, step 3; window 8, step 2: 6), so each cuts at least 2 voxels at an inner border, the net's
    receptive-field radius; an axis shorter than its window (D = 5 < 8) is one window."""
    net = conv_net(3)
    x = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
    whole = Inferer("whole")(net, x)
    slid = Inferer("sliding", roi=roi, overlap=0.7, blend="trim", batch_size=3)(net, x)
    assert slid.shape == whole.shape
    torch.testing.assert_close(slid, whole, rtol=0, atol=1e-5)


def test_gaussian_blend_differs_at_window_borders_and_trim_does_not():
    net = conv_net(2)
    x = torch.rand(1, 1, 40, 40, generator=torch.Generator().manual_seed(2))
    whole = Inferer("whole")(net, x)
    trim = Inferer("sliding", roi=(16, 16), overlap=0.5, blend="trim")(net, x)
    gauss = Inferer("sliding", roi=(16, 16), overlap=0.5, blend="gaussian")(net, x)
    assert (trim - whole).abs().max() < 1e-5
    assert (gauss - whole).abs().max() > 1e-3  # the padded window borders are blended in


def test_sliding_window_on_a_2d_image_with_monai_constant_blend_keeps_the_shape():
    net = conv_net(2)
    x = torch.rand(2, 1, 19, 27)
    out = Inferer("sliding", roi=(8, 8), overlap=0.5, blend="constant")(net, x)
    assert out.shape == (2, 3, 19, 27) and torch.isfinite(out).all()


def test_an_input_shorter_than_its_window_is_padded_with_zeros_as_training_patches_are():
    """A 6-slice volume under an 8-slice window: the network sees the 6 slices and 2 slices of zeros
    (training crops fill past a volume's end with 0, semiseg.data.patches.crop), not repeated edges."""
    seen = []

    def predict(w: torch.Tensor) -> torch.Tensor:
        seen.append(w.clone())
        return w.repeat(1, 2, 1, 1, 1)

    x = torch.rand(1, 1, 6, 8, 8) + 0.5
    out = Inferer("sliding", roi=(8, 8, 8), overlap=0.5, blend="gaussian")(predict, x)
    assert out.shape == (1, 2, 6, 8, 8)
    window = seen[0][0, 0]
    assert window.shape == (8, 8, 8)
    real = window.abs().sum(dim=(1, 2)) > 0
    assert int(real.sum()) == 6 and (window[~real] == 0).all()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"mode": "tiles"}, "mode must be"),
        ({"mode": "sliding"}, "needs a window size"),
        ({"mode": "sliding", "roi": (4, 4), "overlap": 1.0}, "overlap must be"),
        ({"mode": "sliding", "roi": (4, 4), "blend": "max"}, "blend must be"),
    ],
)
def test_bad_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Inferer(**kwargs)


def test_window_dimensions_must_match_the_input():
    with pytest.raises(ValueError, match="does not match"):
        Inferer("sliding", roi=(4, 4))(conv_net(3), torch.rand(1, 1, 4, 4, 4))


def _ramp(x: torch.Tensor) -> torch.Tensor:
    """Not flip-equivariant: two classes from the input plus a ramp along every spatial axis."""
    ramp = sum(torch.arange(n, dtype=x.dtype).view(*([1] * a), n, *([1] * (x.ndim - 3 - a))) for a, n in
               enumerate(x.shape[2:]))  # fmt: skip
    return torch.cat([x[:, :1] + ramp, -x[:, :1]], dim=1)


@pytest.mark.parametrize("shape", [(2, 1, 5, 7), (1, 1, 3, 4, 6)])
def test_flip_tta_is_the_mean_over_every_flip_combination_flipped_back(shape):
    import itertools

    from semiseg.engine.inference import FlipAverage

    x = torch.randn(shape)
    axes = range(2, x.ndim)
    combos = [c for n in range(len(axes) + 1) for c in itertools.combinations(axes, n)]
    assert len(combos) == 2 ** (x.ndim - 2)
    expected = sum(_ramp(x.flip(c)).flip(c) for c in combos) / len(combos)
    got = FlipAverage(_ramp)(x)
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, _ramp(x))  # the ramp is not equivariant: the average differs
    conv = nn.Conv2d(1, 2, 3, padding=1) if x.ndim == 4 else nn.Conv3d(1, 2, 3, padding=1)
    with torch.no_grad():  # a symmetric kernel commutes with flips: the average is the network's output
        conv.weight.copy_(torch.ones_like(conv.weight))
        torch.testing.assert_close(FlipAverage(conv)(x), conv(x))


def test_flip_tta_refuses_class_vectors():
    from semiseg.engine.inference import FlipAverage
    from semiseg.errors import ConfigError

    with pytest.raises(ConfigError, match=r"inference.tta: 'flip' flips class maps back.*use tta none"):
        FlipAverage(lambda x: x.mean(dim=(2, 3)))(torch.zeros(1, 3, 4, 4))


def test_build_predict_applies_tta_to_evaluation_not_to_validation_and_per_window():
    from semiseg.config import build_config
    from semiseg.engine.inference import build_predict

    calls = []

    def predict(x):
        calls.append(tuple(x.shape))
        return _ramp(x)

    cfg = build_config({"inference": {"tta": "flip"}})
    x = torch.randn(1, 1, 8, 8)
    build_predict(predict, cfg, validation=True)(x)
    assert len(calls) == 1
    calls.clear()
    build_predict(predict, cfg)(x)
    assert len(calls) == 4
    calls.clear()
    cfg = build_config({"inference": {"tta": "flip", "overlap": 0.0, "batch_size": 1}, "model": {"spatial_dims": 3},
                        "data": {"image_size": [4, 8, 8], "patch_size": [4, 4, 8]}})  # fmt: skip
    out = build_predict(predict, cfg)(torch.randn(1, 1, 4, 8, 8))  # a 3D model: sliding windows
    assert len(calls) == 16 and set(calls) == {(1, 1, 4, 4, 8)}  # 2 windows x 8 flips
    assert out.shape == (1, 2, 4, 8, 8)
    calls.clear()
    assert build_predict(predict, build_config({}))(x).shape == (1, 2, 8, 8) and len(calls) == 1
