"""Joint augmentations: one random draw applied to the image and to every kind of supervision.

Geometric transforms (flips, 90° rotations, rotation, scaling) move image and mask together; the
mask is resampled with nearest neighbour and pixels that come from outside the image become
``IGNORE_INDEX`` (their label is unknown). Region sizes follow the area change of scaling; image
tags are unchanged. Intensity transforms touch the image only. Random parameters come from a
generator seeded by ``(seed, epoch, index)``, so a sample's augmentation does not depend on worker
count, process rank or resumption.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from semiseg.config import AugmentConfig
from semiseg.data.records import IGNORE_INDEX


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


def _affine(
    image: torch.Tensor, mask: torch.Tensor, angle: float, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], dtype=image.dtype)[None]
    grid = F.affine_grid(theta, [1, *image.shape], align_corners=False)
    image = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
    # shift mask by one so that out-of-image pixels (0 after zero padding) can be recognised
    m = (mask.to(image.dtype) + 1)[None, None]
    m = F.grid_sample(m, grid, mode="nearest", padding_mode="zeros", align_corners=False)[0, 0]
    m = m.round().long() - 1
    m[m < 0] = IGNORE_INDEX
    return image, m


def augment(
    image: torch.Tensor, mask: torch.Tensor, sizes: torch.Tensor, cfg: AugmentConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Augment one sample.

    Shape:
        image: ``[C, H, W]`` float; mask: ``[H, W]`` long (``IGNORE_INDEX`` = unlabeled);
        sizes: ``[K]`` float region sizes (NaN when unknown). Returns the same shapes.
    """
    if cfg.hflip and rng.random() < 0.5:
        image, mask = image.flip(-1), mask.flip(-1)
    if cfg.vflip and rng.random() < 0.5:
        image, mask = image.flip(-2), mask.flip(-2)
    if cfg.rot90 and image.shape[-1] == image.shape[-2]:
        k = int(rng.integers(0, 4))
        if k:
            image, mask = image.rot90(k, (-2, -1)), mask.rot90(k, (-2, -1))
    angle = math.radians(rng.uniform(-cfg.rotate_degrees, cfg.rotate_degrees)) if cfg.rotate_degrees else 0.0
    scale = rng.uniform(cfg.scale[0], cfg.scale[1]) if cfg.scale[0] != cfg.scale[1] else cfg.scale[0]
    if angle != 0.0 or scale != 1.0:
        image, mask = _affine(image, mask, angle, scale)
        sizes = sizes * scale**2
    if cfg.contrast:
        mean = image.mean()
        image = (image - mean) * rng.uniform(1 - cfg.contrast, 1 + cfg.contrast) + mean
    if cfg.brightness:
        image = image + rng.uniform(-cfg.brightness, cfg.brightness)
    if cfg.noise_std:
        gen = torch.Generator().manual_seed(int(rng.integers(0, 2**31)))
        image = image + cfg.noise_std * torch.randn(image.shape, generator=gen, dtype=image.dtype)
    return image.contiguous(), mask.contiguous(), sizes


def is_identity(cfg: AugmentConfig) -> bool:
    return not (
        cfg.hflip
        or cfg.vflip
        or cfg.rot90
        or cfg.rotate_degrees
        or cfg.scale[0] != 1.0
        or cfg.scale[1] != 1.0
        or cfg.brightness
        or cfg.contrast
        or cfg.noise_std
    )
