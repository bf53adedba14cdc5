"""Inequality constraints on soft region attributes: the size penalty of the curriculum paper.

Kervadec et al. (curriculum semi-supervised segmentation, eqs. 3–5) constrain the *soft size* of a
region, ``t = Σ_p S_p`` (the sum of its softmax probabilities over the image), to lie within
``[(1−γ)R, (1+γ)R]`` around a size estimate ``R``, with the penalty

    C(t) = (t − (1−γ)R)²   if t ≤ (1−γ)R
           (t − (1+γ)R)²   if t ≥ (1+γ)R
           0               otherwise.

Written generally, any soft attribute ``a`` with bounds ``[lo, hi]`` costs
``relu(lo − a)² + relu(a − hi)²`` (:func:`bounds_penalty`); the size and the centroid (first shape
moment, named in the paper as a further region attribute) are two such attributes here. New
attributes need a function ``probs → [B, K, D]`` and their bounds.

Normalisation (the paper is silent): ``"pixels"`` divides the squared pixel-count difference by the
number of pixels ``H·W`` (as the authors' code does), ``"none"`` is eq. 5 verbatim, ``"area"`` measures
sizes as fractions of the image (squared difference / (H·W)²), which makes λ independent of the image
size. Reductions: the penalty is summed over classes and averaged over the images that have at least
one bound (``"mean"``) or summed (``"sum"``); unknown bounds (NaN) cost nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn

from semiseg.config import FieldError
from semiseg.core import Batch
from semiseg.losses.regularizers import RegularizerSpec, register_regularizer
from semiseg.ops import soft_centroid, soft_size
from semiseg.parallel import mean_denominator

NORMALIZATIONS = ("pixels", "none", "area")


def bounds_penalty(values: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    """``relu(lower − v)² + relu(v − upper)²`` elementwise; NaN bounds give 0 (no constraint)."""
    lo = torch.nan_to_num(lower, nan=-math.inf)
    hi = torch.nan_to_num(upper, nan=math.inf)
    below = torch.clamp(lo - values, min=0.0)
    above = torch.clamp(values - hi, min=0.0)
    return below * below + above * above


def size_bounds(sizes: torch.Tensor, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``[(1−γ)R, (1+γ)R]`` clipped at 0 (a regressor may predict a negative size)."""
    if not 0.0 <= gamma:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    r = sizes.clamp(min=0.0)
    return (1.0 - gamma) * r, (1.0 + gamma) * r


def _reduce(per_image: torch.Tensor, constrained: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return per_image
    if reduction == "sum":
        return per_image.sum()
    if reduction == "mean":
        n = constrained.sum()
        return per_image.sum() / mean_denominator(n).clamp(min=1)
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def size_penalty(
    probs: torch.Tensor,
    sizes: torch.Tensor,
    gamma: float = 0.1,
    classes: list[int] | None = None,
    normalization: str = "pixels",
    reduction: str = "mean",
    lower: torch.Tensor | None = None,
    upper: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. 4–5: quadratic penalty on soft sizes outside ``[(1−γ)R, (1+γ)R]``.

    Args:
        probs: Softmax probabilities ``[B, K, *spatial]``.
        sizes: Size estimates ``R`` in pixels ``[B, K]``; NaN = no constraint for that class/image.
            Ignored where ``lower`` / ``upper`` are given.
        gamma: Relative tolerance γ of the bounds.
        classes: Classes constrained (default: all but 0, the background).
        normalization: "pixels" (/ H·W, the authors' code), "none" (eq. 5 verbatim) or "area"
            (sizes as fractions of the image).
        reduction: "mean" over constrained images, "sum", or "none" (``[B]``).
        lower, upper: Explicit bounds in pixels ``[B, K]`` instead of ``sizes`` ± γ (NaN = open).

    Shape:
        → scalar, or ``[B]`` for ``reduction="none"``.
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {normalization!r}")
    k = probs.shape[1]
    classes = list(range(1, k)) if classes is None else list(classes)
    if any(not 0 <= c < k for c in classes):
        raise ValueError(f"classes must be in 0..{k - 1}, got {classes}")
    if lower is None or upper is None:
        if sizes.shape != probs.shape[:2]:
            raise ValueError(f"sizes must have shape {tuple(probs.shape[:2])}, got {tuple(sizes.shape)}")
        lower, upper = size_bounds(sizes.to(probs.dtype), gamma)
    n_pixels = math.prod(probs.shape[2:])
    t = soft_size(probs)[:, classes]
    lo, hi = lower[:, classes].to(probs.dtype), upper[:, classes].to(probs.dtype)
    if normalization == "area":
        t, lo, hi = t / n_pixels, lo / n_pixels, hi / n_pixels
    pen = bounds_penalty(t, lo, hi)
    if normalization == "pixels":
        pen = pen / n_pixels
    constrained = (~torch.isnan(lo) | ~torch.isnan(hi)).any(dim=1)
    return _reduce(pen.sum(dim=1), constrained, reduction)


def centroid_penalty(
    probs: torch.Tensor,
    lower: torch.Tensor,
    upper: torch.Tensor,
    classes: list[int] | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Quadratic penalty on soft centroids outside ``[lower, upper]`` (fractions of each axis).

    Shape:
        probs ``[B, K, *spatial]``, lower/upper ``[B, K, D]`` (NaN = open) → scalar or ``[B]``.
    """
    k = probs.shape[1]
    classes = list(range(1, k)) if classes is None else list(classes)
    c = soft_centroid(probs)[:, classes]
    lo, hi = lower[:, classes].to(probs.dtype), upper[:, classes].to(probs.dtype)
    pen = bounds_penalty(c, lo, hi).sum(dim=(1, 2))
    constrained = (~torch.isnan(lo) | ~torch.isnan(hi)).flatten(1).any(dim=1)
    return _reduce(pen, constrained, reduction)


class SizePenalty(nn.Module):
    """Module form of :func:`size_penalty`; ``from_logits`` applies the softmax first."""

    def __init__(
        self,
        gamma: float = 0.1,
        classes: list[int] | None = None,
        normalization: str = "pixels",
        reduction: str = "mean",
        from_logits: bool = True,
    ):
        super().__init__()
        self.gamma, self.classes, self.normalization = gamma, classes, normalization
        self.reduction, self.from_logits = reduction, from_logits

    def forward(self, x: torch.Tensor, sizes: torch.Tensor) -> torch.Tensor:
        probs = x.softmax(dim=1) if self.from_logits else x
        return size_penalty(probs, sizes, self.gamma, self.classes, self.normalization, self.reduction)


@register_regularizer("size")
@dataclass
class SizeSpec(RegularizerSpec):
    """Spec of the ``size`` regulariser: :func:`size_penalty` with bounds from the batch's ``sizes``
    (pixels at the training size; NaN = unknown), e.g. given as size supervision or filled in by a
    method's size estimator.

    ``method.regularizers: [{name: size, weight: 0.01, gamma: 0.1, streams: [unlabeled]}]``
    """

    gamma: float = 0.1  #: relative tolerance γ of the bounds
    classes: list[int] | None = None  #: constrained classes (default: all but the background)
    normalization: Literal["pixels", "none", "area"] = "pixels"
    #: a regulariser gives a scalar (streams of different batch sizes): no "none"
    reduction: Literal["mean", "sum"] = "mean"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.gamma >= 0:
            raise FieldError("gamma", f"must be >= 0, got {self.gamma}")

    def loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        return size_penalty(
            logits.softmax(dim=1), batch.sizes, self.gamma, self.classes, self.normalization, self.reduction
        )
