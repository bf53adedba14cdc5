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

As a regulariser any method can use (:class:`SizeSpec`, ``method.regularizers: [{name: size, ...}]``)
the size estimates ``R`` come from one of two sources:

- ``source: data`` (default): the batch's ``sizes``, i.e. the data's size labels (with
  ``data.split.unlabeled_supervision: size``, the paper's oracle), NaN = unconstrained;
- ``source: regressor`` (the paper's "Proposed"): a size regressor owned by the regulariser. It is
  trained in a phase of its own, ``size_regressor``, run before the method's phases on the labeled
  images exactly as the ``size`` method trains its regressor (:mod:`semiseg.models.size_regressor`:
  squared L2 on area fractions, flips and rotations, selected on the validation split by
  ``size_mae`` and restored at its best); afterwards it is frozen (evaluation mode, no gradient,
  not in the segmenter's optimizer) and ``R`` is its prediction on each stream's ``batch.image``
  (the weak view for FixMatch-like methods) in pixels at the training size. Its weights are part of
  the method's state, so checkpoints and ``--resume`` cover them. Its phase's steps count in the
  run's: a ramp-up meant to start with the method's training counts ``ramp_from: phase``. The
  regressor's initial weights are drawn from a stream of their own (seeded by the run's seed), so
  the segmenter starts from the same weights as without the regulariser.

``method.regularizers: [{name: size, weight: 0.001, gamma: 0.1, streams: [unlabeled], source:
regressor, regressor_epochs: 10, regressor_arch: density, regressor_width: 8}]``
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn

from semiseg.config import FieldError
from semiseg.core import Batch
from semiseg.errors import ConfigError
from semiseg.losses.regularizers import (
    PhasedLoss,
    RegularizerContext,
    RegularizerSpec,
    register_regularizer,
)
from semiseg.models.size_regressor import (
    ARCHS,
    build_size_regressor,
    regressed_sizes,
    regression_loss,
    regression_metrics,
    split_regression,
)
from semiseg.ops import soft_centroid, soft_size
from semiseg.parallel import mean_denominator
from semiseg.phases import Phase

NORMALIZATIONS = ("pixels", "none", "area")
#: the phase (and its optimizer) in which ``source: regressor`` trains its regressor
REGRESSOR_PHASE = "size_regressor"
#: offset of the regressor's initialisation seed from the run's (``torch.initial_seed()``)
REGRESSOR_INIT_SALT = 7349


def image_probs(logits: torch.Tensor, batch: Batch) -> torch.Tensor:
    """The softmax of ``logits``, 0 on 3D patch padding (outside ``batch.valid``), so a soft size
    counts only the voxels of the image.

    Shape:
        logits ``[B, K, *S]`` → ``[B, K, *S]``.
    """
    probs = logits.softmax(dim=1)
    return probs if batch.valid is None else probs * batch.valid.unsqueeze(1).to(probs.dtype)


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
    """Spec of the ``size`` regulariser: :func:`size_penalty` on the soft sizes of ``classes``,
    with bounds ``[(1−γ)R, (1+γ)R]`` around size estimates ``R`` from ``source`` (see the module
    docstring): "data" = the batch's ``sizes`` (pixels at the training size; NaN = unknown),
    "regressor" = a regressor trained first in phase ``size_regressor`` (options ``regressor_*``,
    with the defaults of the ``size`` method's). On 3D patches the soft size leaves out the padding
    past the volume's end (the batch's ``valid``).

    ``method.regularizers: [{name: size, weight: 0.01, gamma: 0.1, streams: [unlabeled]}]``
    """

    spatial_dims = (2, 3)

    gamma: float = 0.1  #: relative tolerance γ of the bounds
    classes: list[int] | None = None  #: constrained classes (default: all but the background)
    normalization: Literal["pixels", "none", "area"] = "pixels"
    #: a regulariser gives a scalar (streams of different batch sizes): no "none"
    reduction: Literal["mean", "sum"] = "mean"
    #: where R comes from: the data's size labels or a regressor trained in phase size_regressor
    source: Literal["data", "regressor"] = "data"
    regressor_epochs: int = 20  #: epochs of phase size_regressor
    regressor_lr: float | None = None  #: learning rate of phase size_regressor; None = train.lr
    regressor_width: int = 16
    regressor_depth: int = 4
    #: "cnn": encoder + pooling + MLP (the paper's design); "density": a UNet density map whose mean
    #: is the area (semiseg.models.regressor)
    regressor_arch: Literal["cnn", "density"] = "cnn"
    regressor_rotate_degrees: float = 45.0  #: rotations of the regressor's images, ± degrees
    regressor_flips: bool = True  #: random horizontal and vertical flips of the regressor's images

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.gamma >= 0:
            raise FieldError("gamma", f"must be >= 0, got {self.gamma}")
        if self.classes is not None and not self.classes:
            raise FieldError("classes", "must list at least one class (or be left out: all but 0)")
        if self.source not in ("data", "regressor"):
            raise FieldError("source", f"must be 'data' or 'regressor', got {self.source!r}")
        if self.source != "regressor":
            for f in dataclasses.fields(self):
                if f.name.startswith("regressor_") and getattr(self, f.name) != f.default:
                    raise FieldError(f.name, "is an option of source: regressor (source is 'data')")
            return
        if self.regressor_arch not in ARCHS:
            raise FieldError(
                "regressor_arch", f"must be one of {' | '.join(ARCHS)}, got {self.regressor_arch!r}"
            )
        for name in ("regressor_epochs", "regressor_width", "regressor_depth"):
            if getattr(self, name) < 1:
                raise FieldError(name, f"must be >= 1, got {getattr(self, name)}")
        if self.regressor_lr is not None and not self.regressor_lr > 0:
            raise FieldError("regressor_lr", f"must be positive, got {self.regressor_lr}")
        if not self.regressor_rotate_degrees >= 0:
            raise FieldError("regressor_rotate_degrees", f"must be >= 0, got {self.regressor_rotate_degrees}")

    def weak_labels(self) -> tuple[str, ...]:
        return ("size",) if self.source == "data" else ()

    def needs_whole_masks(self) -> str | None:
        return "source: regressor counts the labeled masks' sizes" if self.source == "regressor" else None

    def loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The penalty with ``R`` = ``batch.sizes`` (``source: data``)."""
        return size_penalty(
            image_probs(logits, batch),
            batch.sizes,
            self.gamma,
            self.classes,
            self.normalization,
            self.reduction,
        )

    def build(self):
        if self.source == "regressor":
            raise ValueError(
                "source: regressor builds a network: use build_for(context) with the run's context"
            )
        return self.loss

    def build_for(self, context: RegularizerContext):
        if self.source == "data":
            return self.loss
        return RegressedSizePenalty(self, context)

    def phases(self) -> list[Phase]:
        """``source: regressor``: phase ``size_regressor`` (the labeled stream, its own optimizer,
        selected by the regressor's validation error and restored at its best); else none."""
        if self.source != "regressor":
            return []
        return [
            Phase(
                REGRESSOR_PHASE,
                epochs=self.regressor_epochs,
                optimizers=(REGRESSOR_PHASE,),
                streams=("labeled",),
                lr=self.regressor_lr,
                val_metric="size_mae",
                val_mode="min",
                final=False,
                restore_best=True,
            )
        ]


class RegressedSizePenalty(PhasedLoss):
    """The ``size`` regulariser with ``source: regressor``: owns the regressor, trains it in phase
    ``size_regressor`` and, in the method's phases, bounds the soft sizes around its (frozen)
    predictions.

    Args:
        spec: The regulariser's spec (``source: regressor``).
        context: The run's channels, classes and model norm (the regressor's normalisation).
    """

    def __init__(self, spec: SizeSpec, context: RegularizerContext):
        super().__init__()
        k, where = context.num_classes, context.where
        self.spec = spec
        self.num_classes = k
        self.classes = list(range(1, k)) if spec.classes is None else list(spec.classes)
        if not self.classes or any(not 0 <= c < k for c in self.classes):
            raise ConfigError(f"{where}.classes: must list classes in 0..{k - 1}, got {spec.classes}")
        self.where = where
        # drawn from its own stream, so adding the regulariser leaves the segmenter's initialisation
        # (drawn after it from the global RNG) as it is without it
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed((torch.initial_seed() + REGRESSOR_INIT_SALT) % 2**63)
            self.regressor = build_size_regressor(
                spec.regressor_arch, context.in_channels, len(self.classes),
                width=spec.regressor_width, depth=spec.regressor_depth, norm=context.model.norm,
                spatial_dims=context.model.spatial_dims, inplane_levels=context.model.inplane_levels,
            )  # fmt: skip

    def regress(self, images: torch.Tensor) -> torch.Tensor:
        """Regressed area fractions of the constrained classes. Shape: ``[B, C, H, W]`` → ``[B, n]``."""
        area, _ = split_regression(self.regressor(images), len(self.classes))
        return area

    # ------------------------------------------------------------------ phase size_regressor
    def parameters_for(self, phase: str, optimizer: str) -> Iterator[nn.Parameter]:
        return self.regressor.parameters()

    def training_step(self, batch: dict[str, Batch], phase: str, optimizer: str) -> dict:
        s = self.spec
        return regression_loss(
            lambda x: (self.regress(x), None), batch["labeled"], self.num_classes, self.classes,
            degrees=s.regressor_rotate_degrees, flips=s.regressor_flips, where=f"{self.where}.source",
        )  # fmt: skip

    def validation_metrics(self, phase, records, image_size, device, target_spacing=None) -> dict[str, float]:
        return regression_metrics(lambda x: (self.regress(x), None), records, image_size, device,
                                  self.num_classes, self.classes, target_spacing)  # fmt: skip

    # ------------------------------------------------------------------ the method's phases
    def sizes(self, images: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """Size estimates ``R`` in pixels at the size of ``probs`` from the frozen regressor's
        prediction on ``images`` (NaN for unconstrained classes).

        Shape:
            images ``[B, C, H, W]``, probs ``[B, K, H, W]`` → ``[B, K]``.
        """
        self.regressor.eval()
        with torch.no_grad():
            area = self.regress(images)
        return regressed_sizes(area, self.classes, probs)

    def forward(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        probs = image_probs(logits, batch)
        s = self.spec
        return size_penalty(probs, self.sizes(batch.image, probs), s.gamma, self.classes, s.normalization,
                            s.reduction)  # fmt: skip
