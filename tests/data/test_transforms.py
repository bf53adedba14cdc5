"""Augmentations for any spatial dims: geometric / photometric parts, strong views, CutMix boxes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from semiseg.config import AugmentConfig, StrongAugmentConfig
from semiseg.core import IGNORE_INDEX
from semiseg.data.transforms import (
    Geometric,
    apply_geometric,
    augment,
    box_mask,
    draw_box,
    draw_geometric,
    draw_strong,
    gaussian_blur,
    sample_rng,
    strong_views,
    view_rngs,
)

SHAPES = {"2d": (24, 24), "3d": (6, 24, 24)}
NO_PHOTOMETRIC = StrongAugmentConfig(jitter_prob=0.0, blur_prob=0.0, noise_std=0.0)


def sample(spatial, channels=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand((channels, *spatial), generator=gen)
    mask = torch.randint(0, 3, spatial, generator=gen)
    return image, mask


def disc(spatial, radius, centre=None):
    """A binary ball (disc in the H-W plane of every slice); centre defaults to the middle."""
    grids = np.meshgrid(*[np.arange(s) for s in spatial[-2:]], indexing="ij")
    centre = centre or [(s - 1) / 2 for s in spatial[-2:]]
    inside = sum((g - c) ** 2 for g, c in zip(grids, centre)) <= radius**2
    return torch.from_numpy(np.broadcast_to(inside, spatial).copy()).long()


# ------------------------------------------------------------------------------------------ geometric
@pytest.mark.parametrize("dims", list(SHAPES))
@pytest.mark.parametrize(
    "cfg",
    [
        AugmentConfig(hflip=True),
        AugmentConfig(vflip=True),
        AugmentConfig(dflip=True),
        AugmentConfig(rot90=True),
        AugmentConfig(rotate_degrees=30),
        AugmentConfig(scale=[0.7, 1.4]),
        AugmentConfig(brightness=0.2, contrast=0.3, noise_std=0.1),
        AugmentConfig(translate_px=2),
    ],
    ids=["hflip", "vflip", "dflip", "rot90", "rotate", "scale", "photometric", "translate"],
)
def test_every_augmentation_keeps_shapes_in_2d_and_3d(dims, cfg):
    image, mask = sample(SHAPES[dims])
    sizes = torch.tensor([10.0, 20.0, float("nan")])
    for i in range(4):
        out, m, s = augment(image, mask, sizes, cfg, sample_rng(0, 0, i))
        assert out.shape == image.shape and out.dtype == image.dtype
        assert m.shape == mask.shape and m.dtype == torch.long
        assert s.shape == sizes.shape and s[2].isnan()
        assert set(m.unique().tolist()) <= {0, 1, 2, IGNORE_INDEX}


@pytest.mark.parametrize("dims", list(SHAPES))
def test_flips_act_on_their_own_axis(dims):
    image, mask = sample(SHAPES[dims])
    for axis in (-1, -2, -3)[: len(SHAPES[dims])]:
        out, m = apply_geometric(image, mask, Geometric(flips=(axis,)))
        assert torch.equal(out, image.flip(axis)) and torch.equal(m, mask.flip(axis))
    out, m = apply_geometric(image, mask, Geometric(rot90=1))
    assert torch.equal(out, image.rot90(1, (-2, -1))) and torch.equal(m, mask.rot90(1, (-2, -1)))


def test_config_flags_draw_the_right_flips():
    seen = {(): 0, (-1,): 0, (-2,): 0, (-3,): 0}
    for cfg in (AugmentConfig(hflip=True), AugmentConfig(vflip=True), AugmentConfig(dflip=True)):
        for i in range(20):
            seen[draw_geometric(cfg, sample_rng(0, 0, i), (4, 8, 8)).flips] += 1
    assert all(v > 0 for v in seen.values())
    # no depth axis in 2D: dflip draws nothing (and so leaves 2D draws unchanged)
    assert all(
        draw_geometric(AugmentConfig(dflip=True), sample_rng(0, 0, i), (8, 8)).flips == () for i in range(9)
    )


def test_rotation_of_a_volume_is_the_rotation_of_each_slice():
    image, mask = sample(SHAPES["3d"])
    geo = Geometric(angle=math.radians(25), scale=1.2)
    out, m = apply_geometric(image, mask, geo)
    for d in range(image.shape[1]):
        slice_out, slice_m = apply_geometric(image[:, d], mask[d], geo)
        torch.testing.assert_close(out[:, d], slice_out, atol=1e-5, rtol=0)
        assert torch.equal(m[d], slice_m)


@pytest.mark.parametrize("spatial", [(20, 40), (40, 20), (3, 20, 40)])
def test_rotation_of_a_non_square_image_is_a_rotation(spatial):
    """A disc rotated about its centre stays the same disc (no shear from the aspect ratio)."""
    ball = disc(spatial, radius=7)
    image = ball[None].float()
    for degrees in (30, 60, 90):
        out, m = apply_geometric(image, ball, Geometric(angle=math.radians(degrees)))
        inter = ((m == 1) & (ball == 1)).sum().item()
        union = ((m == 1) | (ball == 1)).sum().item()
        assert inter / union > 0.9, f"{degrees}°: IoU {inter / union:.2f}"
        assert torch.equal(m == 1, out[0] > 0.5)


def test_scaling_scales_region_sizes_by_the_area_factor():
    sizes = torch.tensor([100.0, 50.0, 0.0])
    for dims in ((16, 16), (4, 16, 16)):
        image, mask = sample(dims)
        for i in range(3):
            cfg = AugmentConfig(scale=[0.5, 2.0])
            geo = draw_geometric(cfg, sample_rng(0, 0, i), dims)
            _, _, s = augment(image, mask, sizes, cfg, sample_rng(0, 0, i))
            torch.testing.assert_close(s, sizes * geo.scale**2)  # zoom in the H-W plane


@pytest.mark.parametrize("tilt,plane", [((math.pi / 2, 0.0), (0, 1)), ((0.0, math.pi / 2), (0, 2))])
def test_a_quarter_tilt_of_a_cube_turns_depth_into_height_or_width(tilt, plane):
    """affine_3d: a 90° tilt about the W axis rotates the D-H plane, about the H axis the D-W plane,
    voxel for voxel on a cube (no voxel comes from outside)."""
    image, mask = sample((8, 8, 8), channels=1)
    _, m = apply_geometric(image, mask, Geometric(tilt=tilt))
    turned = [mask.rot90(k, plane) for k in (1, -1)]
    assert any(torch.equal(m, t) for t in turned) and not torch.equal(m, mask)


def test_affine_3d_zooms_depth_too_and_region_sizes_by_the_volume_factor():
    """A zoom of 2 along every axis: a centred cube of side 4 in a 16^3 volume becomes one of side 8;
    region sizes follow the volume factor 8 (the in-plane zoom alone would give 4)."""
    mask = torch.zeros(16, 16, 16, dtype=torch.long)
    mask[6:10, 6:10, 6:10] = 1
    _, m = apply_geometric(mask[None].float(), mask, Geometric(scale=2.0, depth_scale=True))
    assert int((m == 1).sum()) == 8**3 and int((m == 1).any(dim=(1, 2)).sum()) == 8
    _, plane = apply_geometric(mask[None].float(), mask, Geometric(scale=2.0))
    assert int((plane == 1).any(dim=(1, 2)).sum()) == 4  # without depth_scale, depth keeps its extent
    cfg = AugmentConfig(scale=[0.5, 2.0], rotate_degrees=10.0, affine_3d=True)
    sizes = torch.tensor([100.0, 50.0])
    for i in range(3):
        geo = draw_geometric(cfg, sample_rng(0, 0, i), (8, 16, 16))
        _, _, s = augment(*sample((8, 16, 16)), sizes, cfg, sample_rng(0, 0, i))
        torch.testing.assert_close(s, sizes * geo.scale**3)


def test_affine_3d_draws_its_tilts_last_and_leaves_images_alone():
    """Turning affine_3d on keeps every other draw of the weak view (the tilts come after them), and
    a 2D image ignores it."""
    image, mask = sample((6, 16, 16))
    nan = torch.full((3,), float("nan"))
    plain = AugmentConfig(hflip=True, rotate_degrees=15.0)
    tilted = AugmentConfig(hflip=True, rotate_degrees=15.0, affine_3d=True)
    for position in range(10):
        a, ma, _ = augment(image, mask, nan, plain, sample_rng(0, 0, position))
        b, mb, _ = augment(image, mask, nan, tilted, sample_rng(0, 0, position))
        rng = sample_rng(0, 0, position)
        geo = draw_geometric(plain, rng, (6, 16, 16))
        tilt = tuple(math.radians(rng.uniform(-15.0, 15.0)) for _ in range(2))
        expected, em = apply_geometric(
            image, mask, Geometric(geo.flips, geo.rot90, geo.angle, geo.scale, tilt=tilt, depth_scale=True)
        )
        torch.testing.assert_close(b, expected)
        assert torch.equal(mb, em) and not torch.equal(mb, ma)
    flat, fmask = sample((16, 16))
    for position in range(5):
        a, ma, _ = augment(flat, fmask, nan, plain, sample_rng(0, 0, position))
        b, mb, _ = augment(flat, fmask, nan, tilted, sample_rng(0, 0, position))
        assert torch.equal(a, b) and torch.equal(ma, mb)


# ------------------------------------------------------------------------------------------ blur
@pytest.mark.parametrize("dims", list(SHAPES))
def test_gaussian_blur_preserves_constants_and_mass(dims):
    spatial = {"2d": (16, 16), "3d": (12, 16, 16)}[dims]  # room for the kernel around the centre
    const = torch.full((2, *spatial), 0.7)
    torch.testing.assert_close(gaussian_blur(const, 1.3), const)
    delta = torch.zeros(1, *spatial)
    centre = tuple(s // 2 for s in spatial)
    delta[(0, *centre)] = 1.0
    out = gaussian_blur(delta, 1.0)
    assert out.shape == delta.shape
    assert out.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert out[(0, *centre)] == out.max()
    for axis in range(len(spatial)):  # variance along every axis close to sigma² (truncated kernel)
        profile = out[0].sum(dim=[a for a in range(len(spatial)) if a != axis])
        pos = torch.arange(spatial[axis], dtype=torch.float32) - centre[axis]
        assert (profile * pos**2).sum().item() == pytest.approx(1.0, rel=0.05)


# ------------------------------------------------------------------------------------------ cutmix boxes
@pytest.mark.parametrize("spatial", [(32, 32), (24, 48), (16, 32, 32)])
def test_cutmix_box_is_inside_and_covers_the_area_range(spatial):
    area, aspect = (0.05, 0.3), (0.3, 3.3)
    total = math.prod(spatial)
    fractions = []
    for i in range(200):
        box = draw_box(spatial, area, aspect, np.random.default_rng(i))
        assert len(box) == len(spatial)
        assert all(0 <= a < b <= s for (a, b), s in zip(box, spatial))
        sides = [b - a for a, b in box]
        # sides are rounded to whole pixels: the unrounded box had an area in range
        assert math.prod(s - 0.5 for s in sides) <= area[1] * total + 1e-9
        assert math.prod(s + 0.5 for s in sides) >= area[0] * total - 1e-9
        fractions.append(math.prod(sides) / total)
        mask = box_mask(spatial, box)
        assert mask.dtype == torch.bool and mask.sum().item() == math.prod(sides)
    assert min(fractions) < 0.1 and max(fractions) > 0.22  # the whole range is drawn


def test_cutmix_box_aspect_ratio_in_2d():
    ratios = []
    for i in range(200):
        (y0, y1), (x0, x1) = draw_box((200, 200), (0.05, 0.1), (0.5, 2.0), np.random.default_rng(i))
        ratios.append((y1 - y0) / (x1 - x0))
    assert 0.45 < min(ratios) < 0.6 and 1.7 < max(ratios) < 2.2


def test_cutmix_prob_zero_gives_empty_boxes_and_one_gives_boxes():
    image, _ = sample((16, 16))
    cfg = StrongAugmentConfig(cutmix_prob=0.0)
    _, boxes = strong_views(image, cfg, view_rngs(0, 0, 0, 5), cutmix=True)
    assert boxes.shape == (5, 16, 16) and boxes.dtype == torch.bool and not boxes.any()
    _, boxes = strong_views(image, StrongAugmentConfig(cutmix_prob=1.0), view_rngs(0, 0, 0, 5), cutmix=True)
    assert all(b.any() for b in boxes)
    _, boxes = strong_views(image, cfg, view_rngs(0, 0, 0, 5), cutmix=False)
    assert boxes is None


# ------------------------------------------------------------------------------------------ strong views
@pytest.mark.parametrize("dims", list(SHAPES))
def test_strong_views_shapes_in_2d_and_3d(dims):
    image, _ = sample(SHAPES[dims], channels=3)
    cfg = StrongAugmentConfig(jitter_prob=1.0, blur_prob=1.0, noise_std=0.05, cutmix_prob=1.0)
    views, boxes = strong_views(image, cfg, view_rngs(1, 2, 3, 2), cutmix=True)
    assert views.shape == (2, *image.shape) and views.dtype == image.dtype
    assert boxes.shape == (2, *SHAPES[dims])
    assert not torch.allclose(views[0], views[1])  # each view has its own draw


def test_strong_view_without_photometric_is_the_weak_view():
    image, _ = sample((16, 16))
    views, _ = strong_views(image, NO_PHOTOMETRIC, view_rngs(0, 0, 0, 3), cutmix=True)
    assert all(torch.equal(v, image) for v in views)


def test_asking_for_boxes_leaves_the_photometric_draws_unchanged():
    cfg = StrongAugmentConfig(noise_std=0.1)
    for i in range(10):
        a = draw_strong(cfg, view_rngs(0, 0, i, 1)[0], (16, 16), cutmix=False)
        b = draw_strong(cfg, view_rngs(0, 0, i, 1)[0], (16, 16), cutmix=True)
        assert a.brightness == b.brightness and a.sigma == b.sigma and a.noise_seed == b.noise_seed


def test_strong_draws_follow_their_probabilities():
    cfg = StrongAugmentConfig()
    draws = [draw_strong(cfg, rng, (32, 32), cutmix=True) for rng in view_rngs(0, 0, 0, 400)]
    assert np.mean([d.brightness is not None for d in draws]) == pytest.approx(0.8, abs=0.06)
    assert np.mean([d.sigma is not None for d in draws]) == pytest.approx(0.5, abs=0.07)
    assert np.mean([d.box is not None for d in draws]) == pytest.approx(0.5, abs=0.07)
    assert all(0.5 <= d.brightness <= 1.5 for d in draws if d.brightness is not None)
    assert all(0.1 <= d.sigma <= 2.0 for d in draws if d.sigma is not None)
    assert all(d.noise_seed is None for d in draws)  # noise_std 0 by default


def test_strong_generators_are_deterministic_and_distinct():
    def first(rngs):
        return [float(r.random()) for r in rngs]

    assert first(view_rngs(0, 1, 2, 3)) == first(view_rngs(0, 1, 2, 3))
    values = first(view_rngs(0, 1, 2, 3)) + first(view_rngs(0, 1, 3, 3)) + [sample_rng(0, 1, 2).random()]
    assert len(set(values)) == len(values)


# ------------------------------------------------------------------------------------------ translations
@pytest.mark.parametrize("dims", list(SHAPES))
def test_integer_shift_moves_content_and_unlabels_the_vacated_pixels(dims):
    image, mask = sample(SHAPES[dims])
    out, m = apply_geometric(image, mask, Geometric(shift=(1, -2)))
    assert torch.equal(out[..., 1:, :-2], image[..., :-1, 2:]) and torch.equal(
        m[..., 1:, :-2], mask[..., :-1, 2:]
    )
    assert (out[..., 0, :] == 0).all() and (out[..., -2:] == 0).all()
    assert (m[..., 0, :] == IGNORE_INDEX).all() and (m[..., -2:] == IGNORE_INDEX).all()


def test_translations_are_drawn_last_and_in_range():
    base = AugmentConfig(hflip=True, rot90=True, brightness=0.1)
    shifted = AugmentConfig(hflip=True, rot90=True, brightness=0.1, translate_px=1)
    image, mask = sample((16, 16))
    nan = torch.full((3,), float("nan"))
    seen = set()
    for position in range(40):
        a, ma, _ = augment(image, mask, nan, base, sample_rng(0, 0, position))
        b, mb, _ = augment(image, mask, nan, shifted, sample_rng(0, 0, position))
        rng = sample_rng(0, 0, position)  # replay: the other draws are those of the unshifted view
        draw_geometric(base, rng, (16, 16))
        rng.uniform(-0.1, 0.1)  # brightness
        dy, dx = int(rng.integers(-1, 2)), int(rng.integers(-1, 2))
        seen.add((dy, dx))
        expected, em = apply_geometric(a, ma, Geometric(shift=(dy, dx)))
        vacated = em == IGNORE_INDEX  # brightness is added after the shift, to vacated pixels too
        torch.testing.assert_close(b[:, ~vacated], expected[:, ~vacated])
        assert torch.equal(mb, em)
    assert len(seen) == 9  # every shift in {-1, 0, 1}^2 occurs


def test_strong_blur_of_a_volume_stays_in_plane():
    """A volume whose slices differ only by a constant keeps that difference: nothing is blurred
    across slices, while each slice is blurred."""
    from semiseg.data.transforms import StrongDraw, apply_strong, gaussian_blur

    sl = torch.rand(1, 1, 9, 9, generator=torch.Generator().manual_seed(0))
    vol = torch.cat([sl, sl + 1.0, sl + 2.0], dim=1)  # [C, D, H, W]
    out = apply_strong(vol, StrongDraw(sigma=1.0))
    torch.testing.assert_close(out[:, 1] - out[:, 0], torch.ones_like(out[:, 0]))
    torch.testing.assert_close(out[:, :1], gaussian_blur(sl, 1.0))
    assert not torch.allclose(out[:, 0], sl[:, 0])


def test_cutmix_boxes_of_a_thin_volume_patch_cover_the_intended_share():
    """Box sides are fractions of each axis in 3D: on 8 x 128 x 128 patches the boxes cover, on
    average, the middle of the area range, as on 2D images (pixel sides would be clipped to the 8
    slices and cover a few % only)."""
    from semiseg.data.transforms import draw_box

    rng = np.random.default_rng(0)
    for shape in ((8, 128, 128), (128, 128)):
        shares = []
        for _ in range(300):
            box = draw_box(shape, (0.02, 0.4), (0.3, 3.3), rng)
            assert all(0 <= a < b <= n for (a, b), n in zip(box, shape))
            shares.append(np.prod([b - a for a, b in box]) / np.prod(shape))
        assert 0.14 < np.mean(shares) < 0.26, (shape, np.mean(shares))
