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

Reduction: ``"mean"`` divides the sum over classes and pixels by the number of pixels
``B·H·W`` (not by the number of classes), so the value is "TV per pixel" and does not depend on
image size or batch size; ``"sum"`` is the paper's plain sum; ``"none"`` returns one value per image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from semiseg.config import FieldError
from semiseg.core import Batch
from semiseg.losses.regularizers import RegularizerSpec, register_regularizer

#: eq. 11 of the paper, applied as a cross-correlation (row-major neighbourhood, eq. 13)
SOBEL_X = ((-1.0, -2.0, -1.0), (0.0, 0.0, 0.0), (1.0, 2.0, 1.0))
SOBEL_Y = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))


def spatial_gradients(probs: torch.Tensor, operator: str = "sobel") -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel derivatives of every channel.

    Shape:
        probs ``[B, K, H, W]`` → two tensors ``[B, K, H, W]`` (∇_X, ∇_Y of the paper's eq. 11).
    """
    if probs.ndim != 4:
        raise ValueError(
            f"total variation expects [B, K, H, W] probabilities, got shape {tuple(probs.shape)}"
        )
    if operator == "sobel":
        # SOBEL_X / SOBEL_Y as separable sums: a central difference, then a (1, 2, 1) smoothing
        # across it. Differencing first keeps flat regions exactly 0 in floating point (a 3x3
        # conv2d leaves ~1e-8 residues on e.g. a constant 0.7 map, whose sign(·) = ±1 would break
        # eq. 15's sign(0) = 0 and give a constant map non-zero TV and gradient).
        padded = F.pad(probs, (1, 1, 1, 1), mode="replicate")
        d_rows = padded[:, :, 2:] - padded[:, :, :-2]  # P[y+1] − P[y−1]: [B, K, H, W+2]
        d_cols = padded[..., 2:] - padded[..., :-2]  # P[x+1] − P[x−1]: [B, K, H+2, W]
        gx = d_rows[..., :-2] + 2 * d_rows[..., 1:-1] + d_rows[..., 2:]
        gy = d_cols[:, :, :-2] + 2 * d_cols[:, :, 1:-1] + d_cols[:, :, 2:]
        return gx, gy
    if operator == "forward":
        padded = F.pad(probs, (0, 1, 0, 1), mode="replicate")
        gx = padded[:, :, 1:, :-1] - padded[:, :, :-1, :-1]  # along rows, like SOBEL_X
        gy = padded[:, :, :-1, 1:] - padded[:, :, :-1, :-1]  # along columns, like SOBEL_Y
        return gx, gy
    raise ValueError(f"operator must be 'sobel' or 'forward', got {operator!r}")


def edge_weights(image: torch.Tensor, sigma: float, operator: str = "sobel") -> torch.Tensor:
    """``exp(-|∇I|² / (2σ²))`` of the channel-mean image: ~1 in flat regions, ~0 across strong edges.

    Shape:
        image ``[B, C, H, W]`` → ``[B, 1, H, W]``.
    """
    gx, gy = spatial_gradients(image.mean(dim=1, keepdim=True), operator)
    return torch.exp(-(gx * gx + gy * gy) / (2.0 * sigma * sigma))


def total_variation(
    probs: torch.Tensor,
    operator: str = "sobel",
    norm: str = "l1",
    reduction: str = "mean",
    eps: float = 1e-6,
    image: torch.Tensor | None = None,
    edge_sigma: float | None = None,
) -> torch.Tensor:
    """Total variation of probability maps, summed over classes.

    Args:
        probs: Softmax probabilities (any real maps work).
        operator: "sobel" (the paper) or "forward" differences.
        norm: "l1" = ``|∇_X| + |∇_Y|`` (the paper) or "l2" = ``sqrt(∇_X² + ∇_Y² + eps)`` (isotropic).
        reduction: "mean" (per pixel: sum / (B·H·W)), "sum", or "none" (per image, mean over its pixels).
        eps: Smoothing of the isotropic norm at zero gradient.
        image: The input images; with ``edge_sigma``, each pixel's TV is weighted by
            :func:`edge_weights` so label changes are cheap where the image has an edge
            (an edge-aware variant beyond the paper; ``None`` = the paper's plain TV).
        edge_sigma: ``σ`` of the edge weights, in image-gradient units.

    Shape:
        probs ``[B, K, H, W]``, image ``[B, C, H, W]`` → scalar, or ``[B]`` for ``reduction="none"``.
    """
    gx, gy = spatial_gradients(probs, operator)
    if norm == "l1":
        tv = gx.abs() + gy.abs()
    elif norm == "l2":
        tv = torch.sqrt(gx * gx + gy * gy + eps) - eps**0.5
    else:
        raise ValueError(f"norm must be 'l1' or 'l2', got {norm!r}")
    if edge_sigma is not None:
        if image is None or image.shape[0] != probs.shape[0] or image.shape[-2:] != probs.shape[-2:]:
            raise ValueError("edge_sigma needs the images, same batch and spatial size as probs")
        if edge_sigma <= 0:
            raise ValueError(f"edge_sigma must be positive, got {edge_sigma}")
        tv = tv * edge_weights(image, edge_sigma, operator)
    per_pixel = tv.sum(dim=1)  # [B, H, W]
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
    (edge-aware with ``edge_sigma``, weighted by the batch's images).

    ``method.regularizers: [{name: tv, weight: 0.1, operator: sobel, norm: l1}]``
    """

    operator: Literal["sobel", "forward"] = "sobel"
    norm: Literal["l1", "l2"] = "l1"
    #: a regulariser gives a scalar (streams of different batch sizes): no "none"
    reduction: Literal["mean", "sum"] = "mean"
    edge_sigma: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.edge_sigma is not None and not self.edge_sigma > 0:
            raise FieldError("edge_sigma", f"must be positive, got {self.edge_sigma}")

    def loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return total_variation(
            logits.softmax(dim=1),
            self.operator,
            self.norm,
            self.reduction,
            image=batch.image,
            edge_sigma=self.edge_sigma,
        )
