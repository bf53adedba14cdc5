"""Joint augmentations for any number of spatial dimensions, and the paired views of a sample.

Shapes: an image is ``[C, *S]`` and its mask ``[*S]`` with ``S = (H, W)`` or ``(D, H, W)``.

A sample's augmentation has two parts, drawn and applied separately:

- **Geometric** (:class:`Geometric`: flips, 90° rotations, rotation, scaling, integer shifts) moves image and mask
  together; the mask is resampled with nearest neighbour and pixels that come from outside the image
  become ``IGNORE_INDEX`` (their label is unknown). Region sizes follow the area change of scaling;
  image tags are unchanged. Rotation, 90° rotations and scaling act in the H-W plane (the last two
  axes), also for volumes, unless ``affine_3d`` (volumes): then the rotation also tilts out of the
  slice plane (about the H and W axes) and the scaling includes depth.
- **Photometric** (:class:`Photometric`: contrast, brightness, noise) touches the image only.

:func:`augment` applies both to a sample (the weak view). Strong views (:func:`strong_views`) start
from the weak view, so they share its geometric transform exactly (pixel correspondence with the
weak view and its mask), and add strong photometric perturbations (:class:`StrongDraw`: jitter,
blur, noise) and optionally a CutMix box mask.

Random parameters come from generators seeded by ``(seed, epoch, position)`` (:func:`sample_rng`,
:func:`view_rngs`), so a sample's augmentation does not depend on worker count, process rank or
resumption.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from semiseg.config import AugmentConfig, StrongAugmentConfig
from semiseg.core import IGNORE_INDEX


def sample_rng(seed: int, epoch: int, position: int) -> np.random.Generator:
    """The generator of a sample's weak view (geometric, then photometric draws)."""
    return np.random.default_rng([seed, epoch, position])


def view_rngs(seed: int, epoch: int, position: int, k: int) -> list[np.random.Generator]:
    """``k`` generators for a sample's strong views, independent of each other and of
    :func:`sample_rng` (children of the same seed sequence)."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence([seed, epoch, position]).spawn(k)]


# ------------------------------------------------------------------------------------------ geometric
@dataclass(frozen=True)
class Geometric:
    """One draw of the geometric transform.

    Attributes:
        flips: Axes flipped (negative, counted from the last spatial axis: -1 = W, -2 = H, -3 = D).
        rot90: Number of 90° rotations in the H-W plane.
        angle: Rotation in the H-W plane, radians.
        scale: Zoom factor in the H-W plane (> 1 magnifies).
        shift: Integer shift (H, W) in pixels, applied last; vacated pixels are zero in the image and
            ``IGNORE_INDEX`` in the mask.
        tilt: Volumes: rotations about the W axis (the D-H plane) and the H axis (the D-W plane),
            radians, after the in-plane rotation (``affine_3d``).
        depth_scale: Volumes: ``scale`` also zooms the depth axis (``affine_3d``).
    """

    flips: tuple[int, ...] = ()
    rot90: int = 0
    angle: float = 0.0
    scale: float = 1.0
    shift: tuple[int, int] = (0, 0)
    tilt: tuple[float, float] = (0.0, 0.0)
    depth_scale: bool = False

    @property
    def resamples(self) -> bool:
        """Whether the transform interpolates (rotation or scaling)."""
        return self.angle != 0.0 or self.scale != 1.0 or any(self.tilt)

    @property
    def volume_affine(self) -> bool:
        """Whether the resampling leaves the H-W plane (tilts, or scaling along depth)."""
        return any(self.tilt) or (self.depth_scale and self.scale != 1.0)

    @property
    def size_factor(self) -> float:
        """How region sizes change: the area (H-W) or volume (``depth_scale``) zoom factor."""
        return self.scale ** (3 if self.depth_scale else 2)


def draw_geometric(cfg: AugmentConfig, rng: np.random.Generator, spatial_shape: Sequence[int]) -> Geometric:
    """Draws a geometric transform for an image of spatial shape ``spatial_shape``.

    Draw order (fixed, the same as before the split into geometric and photometric parts): hflip,
    vflip, dflip (volumes only), rot90 (when H == W), angle, scale; a draw is made only when its
    option is on.
    """
    flips = []
    if cfg.hflip and rng.random() < 0.5:
        flips.append(-1)
    if cfg.vflip and rng.random() < 0.5:
        flips.append(-2)
    if cfg.dflip and len(spatial_shape) >= 3 and rng.random() < 0.5:
        flips.append(-3)
    k = 0
    if cfg.rot90 and spatial_shape[-1] == spatial_shape[-2]:
        k = int(rng.integers(0, 4))
    angle = math.radians(rng.uniform(-cfg.rotate_degrees, cfg.rotate_degrees)) if cfg.rotate_degrees else 0.0
    scale = rng.uniform(cfg.scale[0], cfg.scale[1]) if cfg.scale[0] != cfg.scale[1] else cfg.scale[0]
    return Geometric(tuple(flips), k, angle, float(scale))


def draw_tilt(cfg: AugmentConfig, rng: np.random.Generator) -> tuple[float, float]:
    """The out-of-plane rotations of ``affine_3d`` (about W, then H), each from ±``rotate_degrees``.
    Drawn after every other parameter of the weak view (turning it on leaves their draws unchanged)."""
    if not cfg.rotate_degrees:
        return (0.0, 0.0)
    return tuple(math.radians(rng.uniform(-cfg.rotate_degrees, cfg.rotate_degrees)) for _ in range(2))  # type: ignore[return-value]


def _affine(
    image: torch.Tensor, mask: torch.Tensor, angle: float, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation by ``angle`` and zoom by ``scale`` in the H-W plane, about the centre, in pixel units."""
    n = image.ndim - 1
    height, width = image.shape[-2], image.shape[-1]
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    # normalised coordinates (x = W, y = H, z = D): undo the aspect ratio so that a rotation of the
    # grid is a rotation of the pixels (factors are exactly 1 for square images)
    theta = [[float(i == j) for j in range(n + 1)] for i in range(n)]
    theta[0][:2] = [cos, -sin * (height / width)]
    theta[1][:2] = [sin * (width / height), cos]
    return _resample(image, mask, torch.tensor(theta, dtype=image.dtype))


def _affine_3d(image: torch.Tensor, mask: torch.Tensor, geo: Geometric) -> tuple[torch.Tensor, torch.Tensor]:
    """A volume's rotation (in-plane ``angle``, then the two ``tilt`` angles) and zoom (``scale`` on H
    and W, and on D with ``depth_scale``) about its centre, in voxel units (each output voxel samples the
    input at M · its offset from the centre, M = R / zoom, as :func:`_affine` in the plane)."""

    def rotation(a: float, i: int, j: int) -> np.ndarray:
        r = np.eye(3)
        r[i, i] = r[j, j] = math.cos(a)
        r[i, j], r[j, i] = -math.sin(a), math.sin(a)
        return r

    # axes (x, y, z) = (W, H, D); the in-plane rotation as _affine's, then about W (y-z), then about H (x-z)
    m = rotation(geo.angle, 0, 1) @ rotation(geo.tilt[0], 1, 2) @ rotation(geo.tilt[1], 0, 2)
    m = m @ np.diag([1 / geo.scale, 1 / geo.scale, 1 / geo.scale if geo.depth_scale else 1.0])
    half = np.array([image.shape[-1], image.shape[-2], image.shape[-3]], dtype=np.float64) / 2
    linear = np.diag(1 / half) @ m @ np.diag(half)  # in affine_grid's normalised coordinates
    theta = np.concatenate([linear, np.zeros((3, 1))], axis=1)
    return _resample(image, mask, torch.tensor(theta, dtype=image.dtype))


def _resample(
    image: torch.Tensor, mask: torch.Tensor, theta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``image`` (bilinear, border) and ``mask`` (nearest; from outside: ``IGNORE_INDEX``) sampled on the
    affine grid of ``theta`` (``[n, n + 1]``, normalised coordinates)."""
    grid = F.affine_grid(theta[None], [1, *image.shape], align_corners=False)
    image = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
    # shift mask by one so that out-of-image pixels (0 after zero padding) can be recognised
    m = (mask.to(image.dtype) + 1)[None, None]
    m = F.grid_sample(m, grid, mode="nearest", padding_mode="zeros", align_corners=False)[0, 0]
    m = m.round().long() - 1
    m[m < 0] = IGNORE_INDEX
    return image, m


def apply_geometric(
    image: torch.Tensor, mask: torch.Tensor, geo: Geometric
) -> tuple[torch.Tensor, torch.Tensor]:
    """Applies ``geo`` to an image and its mask.

    Shape:
        image: ``[C, *S]`` float; mask: ``[*S]`` long. Returns the same shapes.

    Examples:
        >>> image, mask = torch.rand(1, 4, 4), torch.zeros(4, 4, dtype=torch.long)
        >>> out, m = apply_geometric(image, mask, Geometric(flips=(-1,)))
        >>> torch.equal(out, image.flip(-1))
        True
    """
    for axis in geo.flips:
        image, mask = image.flip(axis), mask.flip(axis)
    if geo.rot90:
        image, mask = image.rot90(geo.rot90, (-2, -1)), mask.rot90(geo.rot90, (-2, -1))
    if geo.resamples:
        if geo.volume_affine and image.ndim == 4:
            image, mask = _affine_3d(image, mask, geo)
        else:
            image, mask = _affine(image, mask, geo.angle, geo.scale)
    if any(geo.shift):
        image, mask = _shift(image, mask, geo.shift)
    return image, mask


def draw_shift(cfg: AugmentConfig, rng: np.random.Generator) -> tuple[int, int]:
    """An integer (H, W) shift in −``translate_px`` … ``translate_px`` (no draw when it is 0). Drawn after
    every other parameter of the weak view, so that turning it on leaves the others' draws unchanged."""
    t = cfg.translate_px
    return (int(rng.integers(-t, t + 1)), int(rng.integers(-t, t + 1))) if t else (0, 0)


def _shift(
    image: torch.Tensor, mask: torch.Tensor, shift: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Content moved by ``shift`` = (dy, dx) pixels in the H-W plane; vacated pixels: 0 / IGNORE_INDEX.

    Examples:
        >>> image, mask = _shift(torch.arange(4.0).view(1, 2, 2), torch.zeros(2, 2, dtype=torch.long), (0, 1))
        >>> image.tolist(), mask.tolist()
        ([[[0.0, 0.0], [0.0, 2.0]]], [[255, 0], [255, 0]])
    """
    out_image, out_mask = torch.zeros_like(image), torch.full_like(mask, IGNORE_INDEX)
    src, dst = [], []
    for d, size in zip(shift, image.shape[-2:]):
        if abs(d) >= size:
            return out_image, out_mask
        src.append(slice(max(0, -d), size - max(0, d)))
        dst.append(slice(max(0, d), size - max(0, -d)))
    out_image[..., dst[0], dst[1]] = image[..., src[0], src[1]]
    out_mask[..., dst[0], dst[1]] = mask[..., src[0], src[1]]
    return out_image, out_mask


# ------------------------------------------------------------------------------------------ photometric
@dataclass(frozen=True)
class Photometric:
    """One draw of the weak photometric transform; ``None`` = not applied.

    Attributes:
        contrast: Factor on the deviation from the image mean.
        brightness: Additive shift.
        noise_seed: Seed of the Gaussian noise (of standard deviation ``noise_std``).
    """

    contrast: float | None = None
    brightness: float | None = None
    noise_seed: int | None = None
    noise_std: float = 0.0


def draw_photometric(cfg: AugmentConfig, rng: np.random.Generator) -> Photometric:
    """Draws contrast, brightness, noise seed (in this order; each only when its option is on)."""
    contrast = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast) if cfg.contrast else None
    brightness = rng.uniform(-cfg.brightness, cfg.brightness) if cfg.brightness else None
    noise_seed = int(rng.integers(0, 2**31)) if cfg.noise_std else None
    return Photometric(contrast, brightness, noise_seed, cfg.noise_std)


def _noise(image: torch.Tensor, seed: int, std: float) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return image + std * torch.randn(image.shape, generator=gen, dtype=image.dtype)


def apply_photometric(image: torch.Tensor, photo: Photometric) -> torch.Tensor:
    """Applies ``photo`` to an image of any shape (contrast, then brightness, then noise)."""
    if photo.contrast is not None:
        mean = image.mean()
        image = (image - mean) * photo.contrast + mean
    if photo.brightness is not None:
        image = image + photo.brightness
    if photo.noise_seed is not None:
        image = _noise(image, photo.noise_seed, photo.noise_std)
    return image


def augment(
    image: torch.Tensor, mask: torch.Tensor, sizes: torch.Tensor, cfg: AugmentConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Augments one sample: geometric, then photometric transform (the weak view).

    Shape:
        image: ``[C, *S]`` float; mask: ``[*S]`` long (``IGNORE_INDEX`` = unlabeled);
        sizes: ``[K]`` float region sizes (NaN when unknown). Returns the same shapes.

    Examples:
        >>> cfg = AugmentConfig(hflip=True, rotate_degrees=10, noise_std=0.1)
        >>> image, mask = torch.rand(1, 8, 16, 16), torch.zeros(8, 16, 16, dtype=torch.long)
        >>> out, m, s = augment(image, mask, torch.full((2,), float("nan")), cfg, sample_rng(0, 0, 0))
        >>> out.shape, m.shape
        (torch.Size([1, 8, 16, 16]), torch.Size([8, 16, 16]))
    """
    geo = draw_geometric(cfg, rng, image.shape[1:])
    photo = draw_photometric(cfg, rng)
    if cfg.translate_px:
        geo = replace(geo, shift=draw_shift(cfg, rng))
    if cfg.affine_3d and image.ndim == 4:
        geo = replace(geo, tilt=draw_tilt(cfg, rng), depth_scale=True)
    image, mask = apply_geometric(image, mask, geo)
    if geo.resamples:
        sizes = sizes * geo.size_factor  # zoom in the H-W plane (and along depth with affine_3d)
    image = apply_photometric(image, photo)
    return image.contiguous(), mask.contiguous(), sizes


def is_identity(cfg: AugmentConfig) -> bool:
    return not (
        cfg.hflip
        or cfg.vflip
        or cfg.dflip
        or cfg.rot90
        or cfg.rotate_degrees
        or cfg.scale[0] != 1.0
        or cfg.scale[1] != 1.0
        or cfg.brightness
        or cfg.contrast
        or cfg.noise_std
        or cfg.translate_px
    )


# ------------------------------------------------------------------------------------------ strong views
@dataclass(frozen=True)
class StrongDraw:
    """One strong view's perturbations; ``None`` = not applied.

    Attributes:
        brightness: Multiplicative factor.
        contrast: Factor on the deviation from the image mean.
        sigma: Gaussian blur standard deviation (pixels, in the H-W plane).
        noise_seed: Seed of the Gaussian noise (of standard deviation ``noise_std``).
        box: CutMix box, ``(start, stop)`` per spatial axis; ``None`` when not drawn.
    """

    brightness: float | None = None
    contrast: float | None = None
    sigma: float | None = None
    noise_seed: int | None = None
    noise_std: float = 0.0
    box: tuple[tuple[int, int], ...] | None = None


def draw_box(
    spatial_shape: Sequence[int], area: Sequence[float], aspect: Sequence[float], rng: np.random.Generator
) -> tuple[tuple[int, int], ...]:
    """A random axis-aligned box in N-D (UniMatch's CutMix box, for any dimension).

    The box covers a fraction ``U(*area)`` of the image; each side but the last is ``U(*aspect)``
    times the last one (in 2D: H / W of the box). In 3D the sides are fractions of each axis (each
    but the last ``U(*aspect)`` times the last fraction), so a thin patch (e.g. 8 x 128 x 128) gets
    boxes of the intended share of its voxels. Side lengths are rounded to whole pixels (at least 1);
    a shape that does not fit is redrawn (up to 100 times, then clipped to the image). The position
    is uniform among the positions where the box fits.

    Returns:
        ``(start, stop)`` per spatial axis.

    Examples:
        >>> box = draw_box((32, 32), (0.1, 0.2), (0.5, 2.0), np.random.default_rng(0))
        >>> all(0 <= a < b <= 32 for a, b in box)
        True
    """
    n = len(spatial_shape)
    relative = n == 3  # sides as fractions of each axis (volumes); 2D as before, in pixels
    volume = rng.uniform(area[0], area[1]) * (1.0 if relative else math.prod(spatial_shape))
    for _ in range(100):
        ratios = [rng.uniform(aspect[0], aspect[1]) for _ in range(n - 1)] + [1.0]
        last = (volume / math.prod(ratios)) ** (1 / n)
        if relative:
            sides = [max(1, round(r * last * size)) for r, size in zip(ratios, spatial_shape)]
        else:
            sides = [max(1, round(r * last)) for r in ratios]
        if all(s <= size for s, size in zip(sides, spatial_shape)):
            break
    sides = [min(s, size) for s, size in zip(sides, spatial_shape)]
    starts = [int(rng.integers(0, size - s + 1)) for s, size in zip(sides, spatial_shape)]
    return tuple((a, a + s) for a, s in zip(starts, sides))


def box_mask(spatial_shape: Sequence[int], box: tuple[tuple[int, int], ...] | None) -> torch.Tensor:
    """Shape: ``[*S]`` bool, True inside ``box`` (all False for ``None``)."""
    out = torch.zeros(tuple(spatial_shape), dtype=torch.bool)
    if box is not None:
        out[tuple(slice(a, b) for a, b in box)] = True
    return out


def draw_strong(
    cfg: StrongAugmentConfig, rng: np.random.Generator, spatial_shape: Sequence[int], cutmix: bool = False
) -> StrongDraw:
    """Draws one strong view's perturbations.

    Draw order: jitter coin, brightness, contrast; blur coin, sigma; noise seed; CutMix coin, box
    (only with ``cutmix``, so asking for boxes leaves the photometric draws unchanged).
    """
    brightness = contrast = sigma = noise_seed = box = None
    if rng.random() < cfg.jitter_prob:
        if cfg.brightness:
            brightness = float(rng.uniform(1 - cfg.brightness, 1 + cfg.brightness))
        if cfg.contrast:
            contrast = float(rng.uniform(1 - cfg.contrast, 1 + cfg.contrast))
    if rng.random() < cfg.blur_prob:
        sigma = float(rng.uniform(cfg.blur_sigma[0], cfg.blur_sigma[1]))
    if cfg.noise_std:
        noise_seed = int(rng.integers(0, 2**31))
    if cutmix and rng.random() < cfg.cutmix_prob:
        box = draw_box(spatial_shape, cfg.cutmix_area, cfg.cutmix_aspect, rng)
    return StrongDraw(brightness, contrast, sigma, noise_seed, cfg.noise_std, box)


def gaussian_blur(image: torch.Tensor, sigma: float, inplane: bool = False) -> torch.Tensor:
    """Separable Gaussian blur along every spatial axis, or with ``inplane`` the last two (H, W) only
    (kernel radius ``ceil(3 sigma)``, borders replicated).

    Shape:
        image: ``[C, *S]``. Returns the same shape.

    Examples:
        >>> x = torch.ones(1, 5, 6, 7)
        >>> torch.allclose(gaussian_blur(x, 1.5), x)
        True
    """
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=image.dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = (kernel / kernel.sum()).view(1, 1, -1)
    out = image
    for axis in range(max(1, image.ndim - 2) if inplane else 1, image.ndim):
        moved = out.movedim(axis, -1)
        flat = F.pad(moved.reshape(-1, 1, moved.shape[-1]), (radius, radius), mode="replicate")
        out = F.conv1d(flat, kernel).reshape(moved.shape).movedim(-1, axis)
    return out


def apply_strong(image: torch.Tensor, draw: StrongDraw) -> torch.Tensor:
    """Applies a strong view's photometric perturbations (brightness, contrast, blur, noise). The blur
    acts in the H-W plane (of each slice of a volume: slices are often much thicker than pixels).
    The result is not clipped (UniMatch's PIL views are, to [0, 255]): inputs may be z-scored, with no
    fixed range to clip to, so a view may leave the weak view's intensity range.

    Shape:
        image: ``[C, *S]``. Returns the same shape.
    """
    if draw.brightness is not None:
        image = image * draw.brightness
    if draw.contrast is not None:
        mean = image.mean()
        image = (image - mean) * draw.contrast + mean
    if draw.sigma is not None:
        image = gaussian_blur(image, draw.sigma, inplane=True)
    if draw.noise_seed is not None:
        image = _noise(image, draw.noise_seed, draw.noise_std)
    return image


def strong_views(
    image: torch.Tensor, cfg: StrongAugmentConfig, rngs: Sequence[np.random.Generator], cutmix: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Strong views of a (weak-view) image, one per generator, and their CutMix box masks.

    The views are photometric perturbations of ``image`` only, so they keep its geometry: a
    pseudo-label computed on the weak view fits every strong view pixel for pixel.

    Shape:
        image: ``[C, *S]``. Returns views ``[k, C, *S]`` and, with ``cutmix``, boxes ``[k, *S]``
        bool (all False for a view whose box was not drawn), else ``None``.

    Examples:
        >>> views, boxes = strong_views(torch.rand(3, 16, 16), StrongAugmentConfig(), view_rngs(0, 0, 0, 2), True)
        >>> views.shape, boxes.shape, boxes.dtype
        (torch.Size([2, 3, 16, 16]), torch.Size([2, 16, 16]), torch.bool)
    """
    spatial = tuple(image.shape[1:])
    draws = [draw_strong(cfg, rng, spatial, cutmix) for rng in rngs]
    views = torch.stack([apply_strong(image, d) for d in draws])
    boxes = torch.stack([box_mask(spatial, d.box) for d in draws]) if cutmix else None
    return views, boxes
