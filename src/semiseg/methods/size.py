"""Curriculum semi-supervised segmentation with size constraints (Kervadec et al.).

A curriculum of two tasks: first an easy one, regressing each region's size from the image on the
labeled images; then the segmenter is trained with cross-entropy on the labeled images plus
``λ · C`` on the unlabeled images, where ``C`` (eqs. 3–5, :mod:`semiseg.losses.size`) penalises a
soft size ``Σ_p S_p`` outside ``[(1−γ)R, (1+γ)R]`` around the regressed size ``R``.

``source`` selects where the bounds come from:

- ``regressor`` (proposed): phase "regressor" trains a CNN on the labeled images (squared L2 on the
  per-class size, as fractions of the image area, with flips and rotations up to
  ``regressor_rotate_degrees`` drawn anew at every step); it is selected on the validation split by
  its size error and frozen; phase "segmenter" uses its predictions on the unlabeled images.
- ``oracle``: the true size ± γ (the paper's upper bound); needs
  ``data.split.unlabeled_supervision: size``.
- ``fs``: the labeled images only (the paper's full-supervision baseline on the labeled subset).
- ``proposals``: phase "fs" trains on the labeled images and is selected on validation; phase
  "proposals" adds cross-entropy on the pixels the frozen FS model predicts as foreground on the
  unlabeled images (the paper's pseudo-label baseline), continuing from the FS weights. With
  ``fs_epochs: 0`` there is no FS phase: the starting model (``train.init``) is the frozen teacher.

Every source can start from a trained segmenter with ``train.init: <run>/best.pt`` (the benchmark
starts Proposals / Proposed / Oracle from the same seed's FS model).

Optionally (``centroid_margin``) the regressor also predicts each region's centroid and the
segmenter's soft centroid is bounded to ± margin around it (a first shape moment, beyond the
paper's experiments). The size penalty is also a regulariser any method can use:
``regularizers: [{name: size, weight: 0.01, gamma: 0.1}]`` with sizes from the data, or with
``source: regressor`` from a regressor trained like this method's in a phase of its own before the
method's phases (:mod:`semiseg.losses.size`); both share the regressor's training code
(:mod:`semiseg.models.size_regressor`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from semiseg.core import IGNORE_INDEX, Batch
from semiseg.errors import ConfigError
from semiseg.losses.ramp import ramp_weight
from semiseg.losses.size import NORMALIZATIONS, centroid_penalty, image_probs, size_penalty
from semiseg.losses.supervised import masked_cross_entropy
from semiseg.methods import register
from semiseg.methods.base import Phase
from semiseg.methods.supervised import Supervised, SupervisedConfig
from semiseg.models import build_model
from semiseg.models.size_regressor import (  # noqa: F401
    REGRESSOR_AUGMENT_SALT,
    build_size_regressor,
    region_targets,
    regressed_sizes,
    regression_loss,
    regression_metrics,
    rotate_flip,
    split_regression,
)

# the regressor's training pieces, shared with the size regulariser (re-exported: public here before)
from semiseg.ops import class_map

SOURCES = ("regressor", "oracle", "fs", "proposals")


@dataclass
class SizeConfig(SupervisedConfig):
    source: Literal["regressor", "oracle", "fs", "proposals"] = "regressor"
    size_weight: float = 0.01  #: λ
    gamma: float = 0.1  #: relative tolerance of the size bounds
    normalization: Literal["pixels", "none", "area"] = "pixels"  #: see semiseg.losses.size
    classes: list[int] | None = None  #: constrained classes (default: every foreground class)
    ramp_up_steps: int = 0  #: sigmoid ramp-up of λ over the segmenter phase's first steps
    centroid_margin: float | None = None  #: ± bounds on regressed centroids (fraction of each axis)
    centroid_min_size: float = 0.005  #: constrain centroids of regions at least this area fraction
    regressor_epochs: int = 20
    regressor_lr: float | None = None  #: None = train.lr
    regressor_width: int = 16
    regressor_depth: int = 4
    #: "cnn": encoder + pooling + MLP (the paper's design); "density": a UNet density map whose mean is
    #: the area (semiseg.models.regressor.DensityRegressor); both learn from sizes only
    regressor_arch: Literal["cnn", "density"] = "cnn"
    regressor_rotate_degrees: float = 45.0
    regressor_flips: bool = True
    fs_epochs: int | None = None  #: proposals: epochs of the FS phase (None = train.epochs)
    proposal_weight: float = 1.0  #: weight of the cross-entropy on the proposals


@register("size")
class SizeConstrained(Supervised):
    config_class = SizeConfig

    def __init__(self, cfg: SizeConfig, **kwargs):
        super().__init__(cfg, **kwargs)
        if cfg.source not in SOURCES:
            raise ConfigError(f"method.source: must be one of {', '.join(SOURCES)}, got {cfg.source!r}")
        if cfg.normalization not in NORMALIZATIONS:
            raise ConfigError(f"method.normalization: must be one of {', '.join(NORMALIZATIONS)}")
        if cfg.gamma < 0 or cfg.size_weight < 0:
            raise ConfigError("method.gamma and method.size_weight must be >= 0")
        k = self.num_classes
        self.classes = list(range(1, k)) if cfg.classes is None else list(cfg.classes)
        if not self.classes or any(not 0 <= c < k for c in self.classes):
            raise ConfigError(f"method.classes: must list classes in 0..{k - 1}, got {cfg.classes}")
        if cfg.centroid_margin is not None and cfg.source != "regressor":
            raise ConfigError(
                "method.centroid_margin: centroid bounds come from the regressor (source: regressor)"
            )
        self.with_centroid = cfg.centroid_margin is not None
        if self.with_centroid and self.model_cfg.spatial_dims != 2:
            raise ConfigError("method.centroid_margin: centroid bounds are for 2D models only")
        if cfg.source == "regressor":
            try:
                self.regressor = build_size_regressor(
                    cfg.regressor_arch, self.in_channels, len(self.classes), centroids=self.with_centroid,
                    width=cfg.regressor_width, depth=cfg.regressor_depth, norm=self.model_cfg.norm,
                    spatial_dims=self.model_cfg.spatial_dims, inplane_levels=self.model_cfg.inplane_levels,
                )  # fmt: skip
            except ValueError as exc:
                raise ConfigError(f"method.regressor_arch: {exc}") from None
        if cfg.source == "proposals":
            self.teacher = build_model(self.model_cfg, self.in_channels, self.num_classes).requires_grad_(
                False
            )

    def on_phase_start(self, phase):
        if phase == "proposals":  # the frozen teacher: the best FS model (restore_best) or train.init's
            self.teacher.load_state_dict(self.model.state_dict())

    # ------------------------------------------------------------------------------ phases
    def phases(self):
        cfg, extra = self.cfg, self.regularizer_streams()
        both = ("labeled", "unlabeled")
        if cfg.source == "fs":
            return [Phase(optional_streams=extra)]
        if cfg.source == "oracle":
            return [Phase("segmenter", streams=both)]
        if cfg.source == "proposals":
            proposals = Phase("proposals", streams=both)
            if cfg.fs_epochs == 0:  # the teacher is the starting model (e.g. train.init = an FS run)
                return [proposals]
            return [
                Phase("fs", epochs=cfg.fs_epochs, optional_streams=extra, final=False, restore_best=True),
                proposals,
            ]
        return [
            Phase(
                "regressor",
                epochs=cfg.regressor_epochs,
                optimizers=("regressor",),
                val_metric="size_mae",
                val_mode="min",
                final=False,
                restore_best=True,
                lr=cfg.regressor_lr,
            ),  # fmt: skip
            Phase("segmenter", streams=both),
        ]

    def parameters_for(self, phase, optimizer):
        return self.regressor.parameters() if optimizer == "regressor" else self.model.parameters()

    # ------------------------------------------------------------------------------ regressor
    def regress(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Regressed area fractions ``[B, len(classes)]`` and centroids ``[B, len(classes), 2]``."""
        return split_regression(self.regressor(images), len(self.classes), self.with_centroid)

    def _regressor_step(self, labeled: Batch) -> dict:
        cfg = self.cfg
        return regression_loss(self.regress, labeled, self.num_classes, self.classes,
                               degrees=cfg.regressor_rotate_degrees, flips=cfg.regressor_flips)  # fmt: skip

    def validation_metrics(self, phase, records, image_size, device, target_spacing=None):
        if phase != "regressor":
            return None
        return regression_metrics(
            self.regress, records, image_size, device, self.num_classes, self.classes, target_spacing
        )

    def unlabeled_labels_read(self) -> frozenset[str]:
        return super().unlabeled_labels_read() | ({"size"} if self.cfg.source == "oracle" else set())

    def needs_whole_masks(self) -> str | None:
        return (
            "method.source: regressor counts the labeled masks' sizes"
            if self.cfg.source == "regressor"
            else None
        )

    # ------------------------------------------------------------------------------ segmenter
    def _bounds(self, unlabeled: Batch, probs: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Per-class size estimates in pixels ``[B, K]`` (NaN = unconstrained) and centroid bounds."""
        extra: dict = {}
        if self.cfg.source == "oracle":
            sizes = torch.full(probs.shape[:2], math.nan, device=probs.device, dtype=probs.dtype)
            given = unlabeled.sizes.to(probs.dtype)
            if torch.isnan(given[:, self.classes]).any():
                raise ConfigError("method.source: oracle needs data.split.unlabeled_supervision: size")
            sizes[:, self.classes] = given[:, self.classes]
            return sizes, extra
        self.regressor.eval()
        with torch.no_grad():
            area, centroid = self.regress(unlabeled.image)
        sizes = regressed_sizes(area, self.classes, probs)
        if centroid is not None:
            m = self.cfg.centroid_margin
            big = (area >= self.cfg.centroid_min_size)[..., None]
            nan = torch.full_like(centroid, math.nan)
            lo = torch.full((*probs.shape[:2], 2), math.nan, device=probs.device, dtype=probs.dtype)
            hi = lo.clone()
            lo[:, self.classes] = torch.where(big, centroid - m, nan).to(probs.dtype)
            hi[:, self.classes] = torch.where(big, centroid + m, nan).to(probs.dtype)
            extra = {"lower": lo, "upper": hi}
        return sizes, extra

    def _proposal_mask(self, images: torch.Tensor) -> torch.Tensor:
        self.teacher.eval()
        with torch.no_grad():
            pred = class_map(self.teacher(images))
        keep = torch.zeros_like(pred, dtype=torch.bool)
        for c in self.classes:
            keep |= pred == c
        return pred.masked_fill(~keep, IGNORE_INDEX)

    def training_step(self, batch, phase, optimizer):
        if phase == "regressor":
            return self._regressor_step(batch["labeled"])
        if phase not in ("segmenter", "proposals"):
            return super().training_step(batch, phase, optimizer)  # fs
        unl = batch["unlabeled"]
        proposals = unl.ignore_padding(self._proposal_mask(unl.image)) if phase == "proposals" else None
        used = ("labeled", "unlabeled", *self.regularizer_streams())
        logits = {stream: self.model(b.image) for stream, b in batch.items() if stream in used}
        out = self.supervised_loss(logits["labeled"], batch["labeled"].mask)
        if proposals is not None:
            out["proposal_ce"] = masked_cross_entropy(logits["unlabeled"], proposals)
            out["loss"] = out["loss"] + self.cfg.proposal_weight * out["proposal_ce"]
        else:
            probs = image_probs(logits["unlabeled"], unl)  # 0 on 3D patch padding
            sizes, centroid_bounds = self._bounds(unl, probs)
            out["size_penalty"] = size_penalty(
                probs, sizes, self.cfg.gamma, self.classes, self.cfg.normalization
            )
            penalty = out["size_penalty"]
            if centroid_bounds:
                out["centroid_penalty"] = centroid_penalty(probs, centroid_bounds["lower"],
                                                           centroid_bounds["upper"], self.classes)  # fmt: skip
                penalty = penalty + out["centroid_penalty"]
            weight = ramp_weight(self.cfg.size_weight, self.phase_step, self.cfg.ramp_up_steps)
            out["loss"] = out["loss"] + weight * penalty
        if len(self.regularizers):
            reg = self.regularization(logits, batch)
            out["loss"] = out["loss"] + reg.pop("reg_total")
            out.update(reg)
        return out
