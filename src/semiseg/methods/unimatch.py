"""UniMatch: unified dual-stream perturbations for weak-to-strong consistency.

Yang, Qi, Feng, Zhang and Shi, "Revisiting Weak-to-Strong Consistency in Semi-Supervised Semantic
Segmentation", CVPR 2023 (public code LiheYoung/UniMatch, ``more-scenarios/medical/unimatch.py``
for ACDC). FixMatch (:mod:`semiseg.methods.fixmatch`) with two additions:

- **Dual strong views**: two strong views of each unlabeled image (independent photometric draws
  and CutMix boxes, as the engine delivers them), both trained towards the pseudo-labels of the
  one weak view, each mixed inside its own box with the partner's pseudo-labels.
- **Feature perturbation**: the weak view's encoder features (``model.encode``), passed through
  channel dropout (``nn.Dropout2d(fp_dropout)`` on every level), decoded (``model.decode``) and
  trained towards the weak pseudo-labels on the confident pixels.

The paper's objective (Sec. 3), with ``L_s`` the supervised loss and ``k`` strong views:

    loss = supervised_weight · L_s
         + unlabeled_weight · (fp_weight · L_fp + strong_weight / k · Σ_j L_sj)
         + configured regularisers

which with the defaults is ``(L_s + 0.5·L_fp + 0.25·L_s1 + 0.25·L_s2) / 2``. Each unlabeled term is
the confident loss of :meth:`FixMatch.unlabeled_loss` at threshold τ.

Passes: the labeled images and the weak views are encoded together (training mode, as UniMatch),
and one decoder call decodes the clean features of both plus the dropped-out features of the weak
views; the weak views' clean logits give the (detached) pseudo-labels, and with their gradient
they are what the configured regularisers see for the unlabeled stream. Per training step
(``B_l`` labeled, ``B_u`` unlabeled images, ``k = strong_views``):
    with gradient: encoder on ``B_l + B_u`` images, decoder on ``B_l + 2·B_u``, the whole network on
    ``k·B_u`` mixed strong views (one pass), i.e. about ``B_l + (k + 1.5)·B_u`` image passes
    (``B_l + 3.5·B_u`` with ``k = 2``); without gradient: none. (UniMatch's script also decodes
    the dropped-out features of the labeled images, discarded, and runs an eval-mode pass over a
    second unlabeled batch for the CutMix partners.) With ``pseudo_source: ema`` (FixMatch's option:
    an EMA teacher gives the pseudo-labels, as in UniMatch V2) the decoder skips the clean weak
    features unless a regulariser looks at the unlabeled stream: with gradient, encoder on
    ``B_l + B_u``, decoder on ``B_l + B_u``, ``k·B_u`` strong views; without gradient, ``B_u`` weak
    views through the teacher.

Defaults and their sources: τ = 0.95 (UniMatch's ``configs/acdc.yaml``); ``fp_weight`` (λ) =
``strong_weight`` (μ) = 0.5 and the overall ``/ 2`` (``supervised_weight = unlabeled_weight =
0.5``) from the paper and the ACDC script; ``fp_dropout = 0.5`` (the script's
``nn.Dropout2d(0.5)``); ``ce_weight = dice_weight = 0.5`` (the ACDC script's ``(CE + Dice) / 2``).

Deviations from the paper / the ACDC script (besides FixMatch's, see :mod:`semiseg.methods.fixmatch`:
CutMix partner within the batch, confident CE by default where the ACDC script uses Dice, Dice over
the foreground classes):
    - The decoder's batch holds the labeled, weak (not with ``pseudo_source: ema`` unless a
      regulariser needs them) and perturbed weak features (the script also perturbs and decodes the
      labeled features), so the decoder's batch-norm statistics are over a slightly different batch.
    - The network is the library's UNet (``model.*``); the script's UNet has per-level dropout
      (0.05–0.5), LeakyReLU and a 3×3 output convolution.
    - ``strong_views`` may differ from the paper's 2 (1 = FixMatch + feature perturbation), and
      ``fp_weight: 0`` drops the feature stream (then any model works, e.g. ``monai_unet``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from semiseg.config import FieldError, check_weights
from semiseg.errors import ConfigError
from semiseg.methods import register
from semiseg.methods.fixmatch import FixMatch, FixMatchConfig


@dataclass
class UniMatchConfig(FixMatchConfig):
    strong_views: int = 2  #: image-level strong views per unlabeled image (the paper's dual stream)
    fp_weight: float = 0.5  #: λ, feature-perturbation stream
    strong_weight: float = 0.5  #: μ, shared evenly by the strong views
    fp_dropout: float = 0.5  #: channel-dropout rate of the feature perturbation

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.strong_views < 1:
            raise FieldError("strong_views", f"must be at least 1, got {self.strong_views}")
        check_weights(self, "fp_weight", "strong_weight")
        if not 0.0 <= self.fp_dropout < 1.0:
            raise FieldError("fp_dropout", f"must be in [0, 1), got {self.fp_dropout}")


@register("unimatch")
class UniMatch(FixMatch):
    """UniMatch (dual strong views + feature perturbation); see the module docstring."""

    config_class = UniMatchConfig

    def __init__(self, cfg: UniMatchConfig, **kwargs):
        super().__init__(cfg, **kwargs)
        if cfg.fp_weight > 0 and not (hasattr(self.model, "encode") and hasattr(self.model, "decode")):
            raise ConfigError(
                f"model.name: '{self.model_cfg.name}' has no encode/decode for UniMatch's feature "
                "perturbation (use model.name: unet, or method.fp_weight: 0)"
            )
        self.feature_dropout = nn.Dropout2d(cfg.fp_dropout)

    def _drop_channels(self, f: torch.Tensor) -> torch.Tensor:
        """The feature perturbation: whole channels dropped (``Dropout2d``; ``dropout3d`` on volumes)."""
        if f.ndim == 5:
            return F.dropout3d(f, self.cfg.fp_dropout, self.training)
        return self.feature_dropout(f)

    def strong_views(self) -> int:
        return self.cfg.strong_views

    def consistency_step(self, batch):
        cfg = self.cfg
        lab, unl = batch["labeled"], batch["unlabeled"]
        n_l, n_u = len(lab), len(unl)
        if cfg.fp_weight > 0:
            images = torch.cat([lab.image, unl.image])
            weak = self.student_weak_pass()  # clean logits of the weak views wanted from the student
            features = self.model.encode(images)
            # clean features (of the weak views only when wanted) + channel-dropped features of the
            # weak views, one decode
            features = [torch.cat([f if weak else f[:n_l], self._drop_channels(f[n_l:])]) for f in features]
            logits = self.model.decode(features, tuple(images.shape[2:]))
            logits_labeled, logits_weak, logits_fp = logits.split([n_l, n_u if weak else 0, n_u])
            logits_weak = logits_weak if weak else None
        else:
            logits_labeled, logits_weak = self.student_logits(lab, unl)
        labels, confidence = self.weak_targets(unl, logits_weak)
        strong = self.strong_losses(unl, labels, confidence)
        components = {f"strong{j + 1}": s for j, s in enumerate(strong)}
        unlabeled = cfg.strong_weight / len(strong) * sum(strong)
        if cfg.fp_weight > 0:
            fp = self.unlabeled_loss(logits_fp, labels, confidence)[0]
            unlabeled = unlabeled + cfg.fp_weight * fp
            components["fp"] = fp
        return self.finish(batch, logits_labeled, logits_weak, unlabeled, labels, confidence, components)
