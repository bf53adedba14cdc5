"""Training a region-size regressor: the curriculum paper's first, "easy" task, as reusable pieces.

Kervadec et al. (curriculum semi-supervised segmentation) first regress each region's size from the
image on the labeled images, then bound the segmenter's soft sizes around the regressed ones. Both
the ``size`` method (:mod:`semiseg.methods.size`) and the ``size`` regulariser with
``source: regressor`` (:mod:`semiseg.losses.size`) train their regressor with these functions:

- :func:`build_size_regressor`: the network (``cnn`` = encoder + pooling + MLP as in the paper,
  ``density`` = a UNet density map whose mean is the area, :mod:`semiseg.models.regressor`);
- :func:`split_regression`: its output → area fractions ``[B, n]`` (and centroids ``[B, n, 2]``);
- :func:`rotate_flip`: the per-sample augmentation drawn anew at every step;
- :func:`region_targets`: per-class area fractions and centroids of a mask;
- :func:`regression_loss`: one training step's loss (squared L2 on area fractions, size labels
  used where the data has them);
- :func:`regression_metrics`: its validation error in pixels at the training size (``size_mae``);
- :func:`regressed_sizes`: its prediction as per-class size estimates in pixels, the centre of the
  size bounds on the segmenter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from semiseg.core import IGNORE_INDEX, Batch, Supervision
from semiseg.errors import ConfigError
from semiseg.models.regressor import DensityRegressor, Regressor
from semiseg.ops import soft_centroid

__all__ = [
    "ARCHS",
    "REGRESSOR_AUGMENT_SALT",
    "build_size_regressor",
    "region_targets",
    "regression_loss",
    "regression_metrics",
    "regressed_sizes",
    "rotate_flip",
    "split_regression",
]

#: regressor architectures: "cnn" (the paper's design) and "density" (:class:`DensityRegressor`)
ARCHS = ("cnn", "density")
#: salt of the regressor's per-sample rotate/flip draws (keyed by Batch.key, like the data's)
REGRESSOR_AUGMENT_SALT = 7331

#: images → (area fractions ``[B, n]``, centroids ``[B, n, 2]`` or None)
Regress = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


def build_size_regressor(
    arch: str,
    in_channels: int,
    regions: int,
    *,
    centroids: bool = False,
    width: int = 16,
    depth: int = 4,
    norm: str = "batch",
    spatial_dims: int = 2,
    inplane_levels: int = 0,
) -> nn.Module:
    """The regressor network of ``regions`` region sizes (and centroids): ``arch`` is one of
    :data:`ARCHS`; its output is read with :func:`split_regression`.

    Shape:
        ``[B, C, H, W]`` → ``[B, regions]``, or ``[B, 3·regions]`` with ``centroids`` (2D only);
        volumes ``[B, C, D, H, W]`` with ``spatial_dims=3``.

    Raises:
        ValueError: ``arch`` is not one of :data:`ARCHS`, or centroids are asked of a 3D regressor.
    """
    if centroids and spatial_dims != 2:
        raise ValueError("centroids are regressed for 2D images only")
    dims = {"spatial_dims": spatial_dims, "inplane_levels": inplane_levels}
    if arch == "density":
        return DensityRegressor(in_channels, regions, centroids, width, depth, norm, **dims)
    if arch == "cnn":
        return Regressor(in_channels, regions * (3 if centroids else 1), width, depth, norm, **dims)
    raise ValueError(f"must be {' or '.join(ARCHS)}, got {arch!r}")


def split_regression(
    out: torch.Tensor, regions: int, centroids: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Area fractions and (with ``centroids``) centroids from a regressor's output.

    Shape:
        ``[B, regions]`` or ``[B, 3·regions]`` → ``[B, regions]`` and ``[B, regions, 2]`` or None.

    Examples:
        >>> area, centroid = split_regression(torch.zeros(4, 6), 2, centroids=True)
        >>> tuple(area.shape), tuple(centroid.shape)
        ((4, 2), (4, 2, 2))
    """
    return out[:, :regions], (out[:, regions:].reshape(-1, regions, 2) if centroids else None)


def rotate_flip(
    image: torch.Tensor, mask: torch.Tensor, degrees: float, flips: bool, rngs: list[np.random.Generator]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flips and a rotation in ``[-degrees, degrees]`` per sample, drawn from that sample's
    generator (:meth:`semiseg.core.Batch.generators`, so the draws do not depend on the process
    count); mask pixels from outside the image become ``IGNORE_INDEX``. Volumes are flipped and
    rotated in-plane (every slice alike).

    Shape:
        image ``[B, C, *S]``, mask ``[B, *S]`` (S = H, W or D, H, W) → same.
    """
    b = image.shape[0]
    lead = (-1,) + (1,) * (mask.ndim - 1)  # broadcast a per-sample flag over a mask; image: one more
    draws = torch.tensor([[g.random(), g.random(), g.uniform(-1, 1)] for g in rngs], dtype=torch.float64)
    if flips:
        h = draws[:, 0] < 0.5
        v = draws[:, 1] < 0.5
        image = torch.where(h.view(*lead, 1).to(image.device), image.flip(-1), image)
        mask = torch.where(h.view(*lead).to(mask.device), mask.flip(-1), mask)
        image = torch.where(v.view(*lead, 1).to(image.device), image.flip(-2), image)
        mask = torch.where(v.view(*lead).to(mask.device), mask.flip(-2), mask)
    if degrees <= 0:
        return image, mask
    angle = (draws[:, 2] * math.radians(degrees)).float()
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack(
        [torch.stack([cos, -sin, torch.zeros(b)], 1), torch.stack([sin, cos, torch.zeros(b)], 1)], 1
    )
    shape = image.shape
    image = image.reshape(b, -1, *shape[-2:])  # a volume's channels and slices share the rotation
    grid = F.affine_grid(theta.to(image), list(image.shape), align_corners=False)
    image = F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)
    shifted = (mask.clamp(min=-1) + 1).masked_fill(mask == IGNORE_INDEX, 0).to(image.dtype)
    shifted = shifted.reshape(b, -1, *shape[-2:])
    m = F.grid_sample(shifted, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    m = m.round().long().reshape(mask.shape) - 1
    return image.reshape(shape), m.masked_fill(m < 0, IGNORE_INDEX)


def region_targets(mask: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Area fractions ``[B, K]`` and centroids ``[B, K, len(S)]`` of each class (ignored pixels count
    as no class).

    Shape:
        mask ``[B, *S]`` → ``[B, K]`` and ``[B, K, len(S)]`` (row, column (, ...) as fractions of each
        axis; 3D: depth, row, column).
    """
    valid = mask != IGNORE_INDEX
    onehot = F.one_hot(mask.clamp(min=0) * valid, num_classes).movedim(-1, 1).float()
    onehot = onehot * valid[:, None]
    area = math.prod(mask.shape[1:])
    return onehot.flatten(2).sum(-1) / area, soft_centroid(onehot)


def regression_loss(
    regress: Regress,
    labeled: Batch,
    num_classes: int,
    classes: Sequence[int],
    *,
    degrees: float,
    flips: bool,
    where: str = "method.source",
) -> dict[str, torch.Tensor]:
    """One training step of the regressor on the labeled images: ``{"loss", "size_loss"[,
    "centroid_loss"]}``.

    Each image is flipped and rotated (:func:`rotate_flip`, draws from
    ``labeled.generators(REGRESSOR_AUGMENT_SALT)``); the targets are the area fractions of its
    (augmented) mask, or its size labels where the data has them. ``size_loss`` is the squared L2
    distance of the predicted area fractions of ``classes``, summed over them and averaged over
    the images; ``centroid_loss`` (when ``regress`` gives centroids) the squared distance of the
    centroids of the regions present in dense masks.

    Raises:
        ConfigError: a labeled image has neither a dense mask nor size labels (named ``where``).
    """
    if not bool(labeled.has(Supervision.DENSE, Supervision.SIZE).all()):
        raise ConfigError(f"{where}: regressor needs dense masks or size labels on the labeled images")
    rngs = labeled.generators(REGRESSOR_AUGMENT_SALT)
    image, mask = rotate_flip(labeled.image, labeled.mask, degrees, flips, rngs)
    area, centroid = region_targets(mask, num_classes)
    given = labeled.sizes / math.prod(mask.shape[1:])
    area = torch.where(torch.isnan(given), area, given)  # size labels when the data has them
    classes = list(classes)
    pred_area, pred_centroid = regress(image)
    loss = (pred_area - area[:, classes]).square().sum(1).mean()
    out = {"size_loss": loss}
    if pred_centroid is not None:
        present = labeled.has(Supervision.DENSE)[:, None] & (area[:, classes] > 0)
        err = (pred_centroid - centroid[:, classes]).square().sum(-1) * present
        out["centroid_loss"] = err.sum(1).mean()
        loss = loss + out["centroid_loss"]
    return {"loss": loss, **out}


@torch.no_grad()
def regression_metrics(
    regress: Regress,
    records,
    image_size: Sequence[int],
    device: torch.device,
    num_classes: int,
    classes: Sequence[int],
    target_spacing: Sequence[float] | None = None,
) -> dict[str, float]:
    """Validation error of the regressor on ``records`` (images and masks resized to
    ``image_size``, the training size; volumes whole, to their training grid with ``target_spacing``):
    ``size_mae`` (mean absolute size error in pixels over the
    images and ``classes``), ``size_mae_fraction`` (the same as a fraction of the image) and, when
    ``regress`` gives centroids, ``centroid_error`` (mean distance over the regions present)."""
    from semiseg.data.records import record_slices
    from semiseg.data.views import record_grid, resize_image, resize_mask

    classes = list(classes)
    errors, fractions, centroid_errors = [], [], []
    for r in records:
        masks = torch.from_numpy(r.mask)
        if len(image_size) == 3:  # a 3D regressor: the whole volume, resized to its training grid
            images, masks = torch.from_numpy(r.image)[None], masks[None]
            grid = record_grid(r, image_size, target_spacing)
        else:
            masks = masks[None] if masks.ndim == 2 else masks
            images = torch.stack(record_slices(r))
            grid = tuple(image_size)
        n_pix = math.prod(grid)
        x = resize_image(images.float(), grid).to(device)
        m = resize_mask(masks, grid).to(device)
        area, centroid = region_targets(m, num_classes)
        pred_area, pred_centroid = regress(x)
        fractions.append((pred_area - area[:, classes]).abs().cpu())
        errors.append(fractions[-1] * n_pix)
        if pred_centroid is not None:
            present = area[:, classes] > 0
            d = (pred_centroid - centroid[:, classes]).square().sum(-1).sqrt()
            centroid_errors.append(d[present].cpu())
    err = torch.cat(errors)
    out = {"size_mae": err.mean().item(), "size_mae_fraction": torch.cat(fractions).mean().item()}
    if centroid_errors:
        out["centroid_error"] = torch.cat(centroid_errors).mean().item()
    return out


def regressed_sizes(area: torch.Tensor, classes: Sequence[int], probs: torch.Tensor) -> torch.Tensor:
    """Size estimates in pixels (voxels) at the size of ``probs`` from regressed area fractions of
    ``classes`` (negative predictions clipped at 0); the other classes are NaN (unconstrained).

    Shape:
        area ``[B, len(classes)]``, probs ``[B, K, *S]`` → ``[B, K]`` in ``probs``'s dtype.

    Examples:
        >>> regressed_sizes(torch.tensor([[0.25, -0.1]]), [1, 2], torch.zeros(1, 3, 4, 4)).tolist()
        [[nan, 4.0, 0.0]]
    """
    n_pix = math.prod(probs.shape[2:])
    sizes = torch.full(probs.shape[:2], math.nan, device=probs.device, dtype=probs.dtype)
    sizes[:, list(classes)] = area.clamp(min=0).to(probs.dtype) * n_pix
    return sizes
