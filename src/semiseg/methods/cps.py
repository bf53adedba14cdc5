"""Cross pseudo supervision (CPS): two segmenters teach each other with hard pseudo-labels.

Chen, Yuan, Zeng and Wang, "Semi-Supervised Semantic Segmentation with Cross Pseudo Supervision",
CVPR 2021. Two networks of the same architecture, initialised differently (``model`` = A,
``model_b`` = B), see the same (weak-view) images. Each network's hard prediction
``Y = argmax(P)`` (no gradient) supervises the other with cross-entropy (Sec. 3.1, eqs. 2–4):

    L = L_s(A) + L_s(B) + λ(t) · [CE(P_A, Y_B) + CE(P_B, Y_A)],

with ``L_s`` the supervised loss on the labeled pixels (``ce_weight`` · CE + ``dice_weight`` · soft
Dice, :class:`~semiseg.methods.supervised.Supervised`) and ``λ(t)`` a sigmoid ramp-up
(:func:`~semiseg.losses.ramp.ramp_weight`). The configured regularisers act on both networks'
predictions of the labeled images and of the weak view of the unlabeled images.

Passes per training step: each network forwards the labeled and the unlabeled batch (separately,
as the CPS paper's code; ``joint_batch: true`` = one batch of ``B_l + B_u`` images, as SSL4MIS) and
one backward runs through both networks; the pseudo-labels are the arg-max of these same forward
passes (detached), so no extra pass is made. Separate passes normalise each stream with its own
batch statistics: in semiseg's quick ACDC setting the joint batch roughly halved a from-scratch
student's early validation Dice in one diagnostic run (mean teacher with its consistency off,
``benchmarks/dev/semi-acdc-dev.md``; CPS itself was not run that way).

Optimisation: one optimizer over both networks ("main"; :meth:`CPS.parameters_for` gives A's and
B's parameters). The loss is a sum of one term per network and each term depends on its own
network's parameters only (the pseudo-labels carry no gradient), so this equals SSL4MIS's two SGD
optimizers with the same settings (per-parameter updates; only ``train.grad_clip``, if set, clips
the joint norm of both) at half the forward passes that two optimizer steps would need.

Prediction (validation, ``best.pt``, evaluation): network A, as SSL4MIS validates and tests
``model1``; ``predict_mean: true`` predicts with the mean of both networks' softmax instead (the
returned logits are its log, so softmax / argmax of them are the ensemble's).

Defaults: the ACDC code of SSL4MIS (Luo et al., ``train_cross_pseudo_supervision_2D.py``):
``L_s = 0.5 · (CE + Dice)``, λ = 0.1 (``--consistency``; the CPS paper uses 1.5 on Cityscapes and
PASCAL VOC), ramped up with ``exp(-5 (1 - t)²)`` over 200 "epochs" of 150 iterations = 30 000
iterations (``--consistency_rampup 200``, ``iter_num // 150``), the cross supervision on the
unlabeled images only (``outputs[labeled_bs:]``), batches of 12 labeled + 12 unlabeled slices, SGD
lr 0.01, momentum 0.9, weight decay 1e-4, poly schedule (power 0.9), 30 000 iterations (the recipe
``configs/cps-acdc.yaml``).

Deviations:

- Separate forward passes per stream (above; SSL4MIS: one batch).
- The ramp-up advances every iteration (SSL4MIS steps it every 150 iterations); ``ramp_up_steps``
  is in iterations (the quick recipe ramps over its whole, shorter run, as SSL4MIS does).
- ``cps_on_labeled: true`` adds the cross supervision on the labeled images too, as the CPS paper
  does (``L_cps^l + L_cps^u``, Sec. 3.1); the default follows SSL4MIS (unlabeled images only).
- The supervised loss is the library's (masked CE and foreground soft Dice, which skip
  ``IGNORE_INDEX``), so sparse labels work; SSL4MIS's Dice includes the background class.
- No SSL4MIS step decay every 2 500 iterations: in its code that decay is overwritten by the poly
  schedule at the next iteration, so it lasts one step.
- With ``train.init`` only network A starts from the given weights; B keeps its own initialisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from semiseg.config import FieldError
from semiseg.core import ignore_padding
from semiseg.losses.ramp import ramp_weight
from semiseg.losses.supervised import masked_cross_entropy
from semiseg.methods import register
from semiseg.methods.base import Phase, forward_streams
from semiseg.methods.supervised import Supervised, SupervisedConfig
from semiseg.models import build_model
from semiseg.ops import class_map
from semiseg.parallel import share

STREAMS = ("labeled", "unlabeled")


@dataclass
class CPSConfig(SupervisedConfig):
    ce_weight: float = 0.5  #: SSL4MIS: 0.5 · (CE + Dice) per network
    dice_weight: float = 0.5
    cps_weight: float = 0.1  #: λ after the ramp-up (SSL4MIS --consistency 0.1; the paper: 1.5)
    ramp_up_steps: int = 30000  #: iterations of the λ ramp-up (SSL4MIS: 200 x 150); 0 = constant λ
    ramp_shape: Literal["sigmoid", "linear"] = "sigmoid"  #: SSL4MIS: sigmoid, exp(-5 (1 - t)²)
    cps_on_labeled: bool = False  #: cross supervision on the labeled images too (the paper: yes)
    predict_mean: bool = False  #: predict with the mean softmax of A and B (default: A alone)
    #: one forward per network over the labeled and unlabeled images together (SSL4MIS); default:
    #: one forward per stream (the CPS paper's code), each with its own batch statistics
    joint_batch: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.cps_weight < 0:
            raise FieldError("cps_weight", f"must be >= 0, got {self.cps_weight}")
        if self.ramp_up_steps < 0:
            raise FieldError("ramp_up_steps", f"must be >= 0, got {self.ramp_up_steps}")


def cross_pseudo_supervision(
    logits_a: torch.Tensor, logits_b: torch.Tensor, valid: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The two cross terms of CPS (Chen et al. 2021, eqs. 2–3): each network's logits against the
    other's hard arg-max prediction, which carries no gradient.

    Args:
        valid: Optional mask of the pixels that get a pseudo-label (False on 3D patch padding,
            :attr:`semiseg.core.Batch.valid`); ``None`` = all.

    Returns:
        ``(CE(logits_a, argmax b), CE(logits_b, argmax a))``, each a mean over the valid pixels
        (over the global batch under DDP).

    Shape:
        logits_a, logits_b ``[B, K, *S]``, valid ``[B, *S]`` bool → two scalars.

    Examples:
        >>> a = torch.tensor([[[[2.0]], [[0.0]]]])  # A says class 0, B says class 1
        >>> ce_a, ce_b = cross_pseudo_supervision(a, a.flip(1))
        >>> round(float(ce_a), 4), round(float(ce_b), 4)
        (2.1269, 2.1269)
    """
    if logits_a.shape != logits_b.shape:
        raise ValueError(f"logits {tuple(logits_a.shape)} and {tuple(logits_b.shape)} differ")
    labels_a = class_map(logits_a.detach())
    labels_b = class_map(logits_b.detach())
    labels_a, labels_b = ignore_padding(labels_a, valid), ignore_padding(labels_b, valid)
    return masked_cross_entropy(logits_a, labels_b), masked_cross_entropy(logits_b, labels_a)


@register("cps")
class CPS(Supervised):
    """Cross pseudo supervision between ``model`` (A, the predictor) and ``model_b`` (B)."""

    config_class = CPSConfig

    def __init__(self, cfg: CPSConfig, **kwargs):
        super().__init__(cfg, **kwargs)  # builds self.model (A) from the global RNG
        self.model_b = build_model(self.model_cfg, self.in_channels, self.num_classes)  # next draws

    def phases(self):
        return [Phase(streams=STREAMS)]

    def parameters_for(self, phase, optimizer):
        return [*self.model.parameters(), *self.model_b.parameters()]

    def current_cps_weight(self) -> float:
        """λ at the current step of the phase (the ramp-up)."""
        cfg = self.cfg
        return ramp_weight(cfg.cps_weight, self.phase_step, cfg.ramp_up_steps, cfg.ramp_shape)

    def training_step(self, batch, phase, optimizer):
        lab, unl = batch["labeled"], batch["unlabeled"]
        images = {"labeled": lab.image, "unlabeled": unl.image}
        joint = self.cfg.joint_batch
        by_stream = {
            "a": forward_streams(self.model, images, joint),
            "b": forward_streams(self.model_b, images, joint),
        }
        sup_a = self.supervised_loss(by_stream["a"]["labeled"], lab.mask)
        sup_b = self.supervised_loss(by_stream["b"]["labeled"], lab.mask)
        cps_a, cps_b = cross_pseudo_supervision(
            by_stream["a"]["unlabeled"], by_stream["b"]["unlabeled"], unl.valid
        )
        if self.cfg.cps_on_labeled:  # the paper: L_cps^l + L_cps^u, each a mean over its images
            lab_a, lab_b = cross_pseudo_supervision(
                by_stream["a"]["labeled"], by_stream["b"]["labeled"], lab.valid
            )
            cps_a, cps_b = cps_a + lab_a, cps_b + lab_b
        weight = self.current_cps_weight()
        loss = sup_a["loss"] + sup_b["loss"] + weight * (cps_a + cps_b)
        with torch.no_grad():
            agree = class_map(by_stream["a"]["unlabeled"]) == class_map(by_stream["b"]["unlabeled"])
            image = unl.valid_mask()
            agreement = share(agree & image, image)
        out = {
            "sup_a": sup_a["loss"],
            "sup_b": sup_b["loss"],
            "cps_a": cps_a,
            "cps_b": cps_b,
            "cps_weight": weight,
            "agreement": agreement,  # fraction of unlabeled pixels (not padding) where A and B agree
        }
        if len(self.regularizers):  # on both networks, labeled images and weak unlabeled views
            for name in ("a", "b"):
                reg = self.regularization(by_stream[name], batch)
                loss = loss + reg.pop("reg_total")
                out.update({f"{k}_{name}": v for k, v in reg.items()})
        return {"loss": loss, **out}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Network A's logits, or with ``predict_mean`` the log of the mean of A's and B's softmax.

        Shape:
            ``[B, C, H, W]`` → ``[B, K, H, W]``.
        """
        if not self.cfg.predict_mean:
            return self.model(images)
        return ((self.model(images).softmax(1) + self.model_b(images).softmax(1)) / 2).log()
