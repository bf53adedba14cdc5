"""Total variation of softmax probability maps: the unsupervised spatial loss of the TV paper.

The unsupervised loss of Javanmardi et al., "Unsupervised Total Variation Loss for
Semi-supervised Deep Learning of Semantic Segmentation" (eqs. 7–13): for every class map ``P_c``
of every image, the L1 norm of its spatial gradient,
computed with the Sobel operators of eq. 11,

    TV(P) = Σ_c Σ_pixels |∇_X P_c| + |∇_Y P_c|,

over *all* pixels (labeled and unlabeled images alike). Autograd of this sum gives exactly the
sub-gradient of eq. 15: the coefficient at neighbour ``i`` of pixel ``k`` is
``sign(∇_X P(k))·∇_X(i) + sign(∇_Y P(k))·∇_Y(i)`` (with ``sign(0) = 0``).

Options beyond the paper: ``operator="forward"`` uses plain forward differences
``P[y+1, x] − P[y, x]`` and ``P[y, x+1] − P[y, x]``; ``norm="l2"`` is the isotropic variant
``sqrt(∇_X² + ∇_Y² + eps)`` instead of ``|∇_X| + |∇_Y|``. Borders are replicated, so a constant
map has zero TV everywhere.

3D (``[B, K, D, H, W]``, beyond the paper): one derivative per axis, the Sobel derivative along an
axis smoothed (1, 2, 1) along both others; ``axis_weights`` multiplies each axis's derivative, for
anisotropic voxels (e.g. ``[0.2, 1, 1]`` when slices are 5× thicker than pixels are wide).

Reduction: ``"mean"`` divides the sum over classes and pixels by the number of pixels
``B·H·W`` (not by the number of classes), so the value is "TV per pixel" and does not depend on
image size or batch size; ``"sum"`` is the paper's plain sum; ``"none"`` returns one value per image.
With a ``valid`` map (3D patch padding, :attr:`semiseg.core.Batch.valid`) only the voxels whose
3×3×3 neighbourhood is valid count, and means are over them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from semiseg.config import FieldError
from semiseg.core import Batch
from semiseg.errors import ConfigError
from semiseg.losses.regularizers import RegularizerSpec, register_regularizer
from semiseg.parallel import mean_denominator

#: eq. 11 of the paper, applied as a cross-correlation (row-major neighbourhood, eq. 13)
SOBEL_X = ((-1.0, -2.0, -1.0), (0.0, 0.0, 0.0), (1.0, 2.0, 1.0))
SOBEL_Y = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))


def _check_maps(probs: torch.Tensor) -> int:
    if probs.ndim not in (4, 5):
        raise ValueError(
            "total variation expects [B, K, H, W] or [B, K, D, H, W] probabilities, "
            f"got shape {tuple(probs.shape)}"
        )
    return probs.ndim - 2


def spatial_gradients(probs: torch.Tensor, operator: str = "sobel") -> tuple[torch.Tensor, ...]:
    """Per-pixel (per-voxel) derivatives of every channel, one per spatial axis.

    The Sobel derivative along an axis is the central difference along it, smoothed by (1, 2, 1)
    along every other spatial axis (eq. 11 in 2D; its usual separable extension in 3D).

    Shape:
        probs ``[B, K, H, W]`` → (∇_X, ∇_Y) of the paper's eq. 11 (along rows, along columns), each
        ``[B, K, H, W]``; probs ``[B, K, D, H, W]`` → three ``[B, K, D, H, W]`` (along D, H, W).
    """
    dims = _check_maps(probs)
    axes = range(2, 2 + dims)
    sizes = probs.shape[2:]
    if operator == "sobel":
        # Differencing first, then smoothing, keeps flat regions exactly 0 in floating point (a 3x3
        # conv2d leaves ~1e-8 residues on e.g. a constant 0.7 map, whose sign(·) = ±1 would break
        # eq. 15's sign(0) = 0 and give a constant map non-zero TV and gradient).
        padded = F.pad(probs, (1, 1) * dims, mode="replicate")
        grads = []
        for a in axes:
            g = padded.narrow(a, 2, sizes[a - 2]) - padded.narrow(a, 0, sizes[a - 2])
            for b in axes:
                if b != a:
                    n = sizes[b - 2]
                    g = g.narrow(b, 0, n) + 2 * g.narrow(b, 1, n) + g.narrow(b, 2, n)
            grads.append(g)
        return tuple(grads)
    if operator == "forward":
        padded = F.pad(probs, (0, 1) * dims, mode="replicate")

        def crop(a: int, start: int) -> torch.Tensor:  # offset `start` on axis a, 0 on the others
            x = padded
            for b in axes:
                x = x.narrow(b, start if b == a else 0, sizes[b - 2])
            return x

        return tuple(crop(a, 1) - crop(a, 0) for a in axes)
    raise ValueError(f"operator must be 'sobel' or 'forward', got {operator!r}")


def _weighted(
    grads: tuple[torch.Tensor, ...], axis_weights: Sequence[float] | None
) -> tuple[torch.Tensor, ...]:
    if axis_weights is None:
        return grads
    if len(axis_weights) != len(grads):
        raise ValueError(
            f"axis_weights needs one weight per spatial axis ({len(grads)}), got {len(axis_weights)}"
        )
    return tuple(g * float(w) if float(w) != 1.0 else g for g, w in zip(grads, axis_weights))


def edge_weights(image: torch.Tensor, sigma: float, operator: str = "sobel",
                 axis_weights: Sequence[float] | None = None) -> torch.Tensor:  # fmt: skip
    """``exp(-|∇I|² / (2σ²))`` of the channel-mean image: ~1 in flat regions, ~0 across strong edges.

    Shape:
        image ``[B, C, *S]`` → ``[B, 1, *S]``.
    """
    grads = _weighted(spatial_gradients(image.mean(dim=1, keepdim=True), operator), axis_weights)
    return torch.exp(-sum(g * g for g in grads) / (2.0 * sigma * sigma))


def _interior(valid: torch.Tensor) -> torch.Tensor:
    """The valid pixels whose 3×3 (3×3×3) neighbourhood inside the map is valid: where neither
    derivative reaches a padded one. Shape: ``[B, *S]`` bool → ``[B, *S]`` bool."""
    pool = F.max_pool3d if valid.dim() == 4 else F.max_pool2d
    return pool((~valid).unsqueeze(1).float(), 3, 1, 1).squeeze(1) == 0


def _masked_reduction(per_pixel: torch.Tensor, keep: torch.Tensor, reduction: str) -> torch.Tensor:
    kept = per_pixel * keep
    if reduction == "mean":  # over the counted voxels of the global batch under DDP, as in one process
        return kept.sum() / mean_denominator(keep.sum()).clamp(min=1)
    if reduction == "sum":
        return kept.sum()
    if reduction == "none":
        return kept.flatten(1).sum(1) / keep.flatten(1).sum(1).clamp(min=1)
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def total_variation(
    probs: torch.Tensor,
    operator: str = "sobel",
    norm: str = "l1",
    reduction: str = "mean",
    eps: float = 1e-6,
    image: torch.Tensor | None = None,
    edge_sigma: float | None = None,
    axis_weights: Sequence[float] | None = None,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Total variation of probability maps, summed over classes.

    Args:
        probs: Softmax probabilities (any real maps work), 2D or 3D.
        operator: "sobel" (the paper) or "forward" differences.
        norm: "l1" = ``Σ_axes |∇_a|`` (the paper) or "l2" = ``sqrt(Σ_axes ∇_a² + eps)`` (isotropic).
        reduction: "mean" (per pixel: sum / (B·H·W), or per voxel; per counted voxel with ``valid``),
            "sum", or "none" (per image, mean over its pixels).
        eps: Smoothing of the isotropic norm at zero gradient.
        image: The input images; with ``edge_sigma``, each pixel's TV is weighted by
            :func:`edge_weights` so label changes are cheap where the image has an edge
            (an edge-aware variant beyond the paper; ``None`` = the paper's plain TV).
        edge_sigma: ``σ`` of the edge weights, in image-gradient units.
        axis_weights: One factor per spatial axis multiplying its derivative (e.g. ``1 / spacing``
            relative to the in-plane spacing for anisotropic voxels: ``[0.2, 1, 1]`` for 5 mm slices
            of 1 mm pixels); ``None`` = all 1 (the paper).
        valid: Optional bool mask of the image's pixels (False on 3D patch padding,
            :attr:`semiseg.core.Batch.valid`): only pixels whose 3×3 (3×3×3) neighbourhood is valid
            count, so the jump from the image to the padding costs nothing; means are over them.

    Shape:
        probs ``[B, K, *S]``, image ``[B, C, *S]``, valid ``[B, *S]`` (S = H, W or D, H, W) → scalar,
        or ``[B]`` for ``reduction="none"``.
    """
    grads = _weighted(spatial_gradients(probs, operator), axis_weights)
    if norm == "l1":
        tv = grads[0].abs()
        for g in grads[1:]:
            tv = tv + g.abs()
    elif norm == "l2":
        tv = torch.sqrt(sum(g * g for g in grads) + eps) - eps**0.5
    else:
        raise ValueError(f"norm must be 'l1' or 'l2', got {norm!r}")
    if edge_sigma is not None:
        if image is None or image.shape[0] != probs.shape[0] or image.shape[2:] != probs.shape[2:]:
            raise ValueError("edge_sigma needs the images, same batch and spatial size as probs")
        if edge_sigma <= 0:
            raise ValueError(f"edge_sigma must be positive, got {edge_sigma}")
        tv = tv * edge_weights(image, edge_sigma, operator, axis_weights)
    per_pixel = tv.sum(dim=1)  # [B, *S]
    if valid is not None:
        return _masked_reduction(per_pixel, _interior(valid), reduction)
    if reduction == "mean":
        return per_pixel.mean()
    if reduction == "sum":
        return per_pixel.sum()
    if reduction == "none":
        return per_pixel.flatten(1).mean(1)
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


class TotalVariationLoss(nn.Module):
    """Module form of :func:`total_variation`; ``from_logits`` applies the softmax first."""

    def __init__(
        self, operator: str = "sobel", norm: str = "l1", reduction: str = "mean", from_logits: bool = True
    ):
        super().__init__()
        self.operator, self.norm, self.reduction, self.from_logits = operator, norm, reduction, from_logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = x.softmax(dim=1) if self.from_logits else x
        return total_variation(probs, self.operator, self.norm, self.reduction)


@register_regularizer("tv")
@dataclass
class TVSpec(RegularizerSpec):
    """Spec of the ``tv`` regulariser: :func:`total_variation` of the softmax of the segmenter's logits
    (edge-aware with ``edge_sigma``, weighted by the batch's images); on 3D patches, not over the
    padding past the volume's end (the batch's ``valid``).

    ``method.regularizers: [{name: tv, weight: 0.1, operator: sobel, norm: l1}]``
    """

    spatial_dims = (2, 3)

    operator: Literal["sobel", "forward"] = "sobel"
    norm: Literal["l1", "l2"] = "l1"
    #: a regulariser gives a scalar (streams of different batch sizes): no "none"
    reduction: Literal["mean", "sum"] = "mean"
    edge_sigma: float | None = None
    #: one factor per spatial axis on its derivative (3D anisotropic voxels, e.g. [0.2, 1, 1]); null = 1
    axis_weights: list[float] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.edge_sigma is not None and not self.edge_sigma > 0:
            raise FieldError("edge_sigma", f"must be positive, got {self.edge_sigma}")
        if self.axis_weights is not None and (
            len(self.axis_weights) not in (2, 3) or any(not w >= 0 for w in self.axis_weights)
        ):
            raise FieldError("axis_weights", f"needs 2 or 3 non-negative weights, got {self.axis_weights}")

    def build_for(self, context):
        dims = context.model.spatial_dims
        if self.axis_weights is not None and len(self.axis_weights) != dims:
            raise ConfigError(
                f"{context.where}.axis_weights: needs one weight per spatial axis of the {dims}D model, "
                f"got {self.axis_weights}"
            )
        return self.build()

    def loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return total_variation(
            logits.softmax(dim=1),
            self.operator,
            self.norm,
            self.reduction,
            image=batch.image,
            edge_sigma=self.edge_sigma,
            axis_weights=self.axis_weights,
            valid=batch.valid,
        )
