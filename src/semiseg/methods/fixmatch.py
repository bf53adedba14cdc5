"""FixMatch for segmentation: weak-to-strong consistency with confident pseudo-labels and CutMix.

Sohn et al., "FixMatch: Simplifying Semi-Supervised Learning with Consistency and Confidence",
NeurIPS 2020, as adapted to segmentation by the "FixMatch" baseline of UniMatch (Yang et al.,
CVPR 2023; public code LiheYoung/UniMatch, ``fixmatch.py``). The network's prediction on the weak
view of an unlabeled image gives per-pixel pseudo-labels ``ŷ = argmax p`` and confidences
``max p``; the strong view is trained towards ``ŷ`` on the pixels whose confidence reaches τ
(FixMatch's unlabeled loss ``ℓ_u = mean_p 1[max p ≥ τ] · H(ŷ, f(A(u)))``, Sec. 2 of the paper):

    loss = supervised_weight · (ce_weight · CE + dice_weight · Dice)(labeled)
         + unlabeled_weight · ℓ_u(CutMix of the strong views, mixed pseudo-labels)
         + configured regularisers

CutMix (UniMatch): inside its box (``Batch.cutmix``, drawn by the engine) the strong view of each
unlabeled image shows the strong view of the previous image of the batch
(:func:`cutmix_partner`), and the pseudo-labels and confidences are mixed with exactly the same
box, so every pixel is supervised by the weak prediction of the image it shows.

Weak prediction: in training mode, in one forward pass together with the labeled images (as
UniMatch's code does: batch-norm statistics over labeled + weak images, model dropout active), then
detached for the pseudo-labels. That same prediction, with its gradient, is what the configured
regularisers (``method.regularizers``, e.g. TV or size) see for the unlabeled stream, so they cost
no extra pass.

Pseudo-labels from an EMA teacher (``pseudo_source: ema``; UniMatch V2, Yang, Zhao, Ouyang and Zhao
2024, also labels with an EMA teacher, here with BCP's and mean teacher's settings): a copy of the
student, set to the student at the start of the phase and updated after every step as
``teacher ← d·teacher + (1 − d)·student`` (constant ``ema_decay``, buffers copied), predicts the
weak views without gradient (training-mode batch norm) and gives the pseudo-labels and confidences; the student then predicts
the weak views only if a regulariser looks at the unlabeled stream. A slower-moving teacher breaks
the loop in which the student's own confident background on the unlabeled images feeds itself (on
the 2-core ACDC budget the student-labelled variant shrinks the foreground of the unlabeled images;
``benchmarks/dev/semi-acdc-dev.md``).

Forward passes per training step (``B_l`` labeled, ``B_u`` unlabeled images):
    with gradient: ``B_l + B_u`` (labeled and weak views, one pass) + ``B_u`` (mixed strong views,
    one pass) = ``B_l + 2·B_u`` images; without gradient: none. With ``pseudo_source: ema`` and no
    regulariser on the unlabeled stream: ``B_l + B_u`` with gradient (labeled, strong views) and
    ``B_u`` without (the teacher's weak views). (UniMatch's script adds an
    eval-mode pass without gradient over a second unlabeled batch for the mix partners; here the
    partners are the batch's own images, whose weak predictions already exist.)

Defaults and their sources (paths in LiheYoung/UniMatch): τ = 0.95 (``conf_thresh`` of
``more-scenarios/medical/configs/acdc.yaml``); ``supervised_weight = unlabeled_weight = 0.5``
(``fixmatch.py``: ``loss = (loss_x + loss_u_s) / 2``); ``ce_weight = dice_weight = 0.5`` (the ACDC
supervised loss ``(CE + Dice) / 2`` of ``more-scenarios/medical/unimatch.py``; the repository has no
ACDC FixMatch script); the strong views' photometric perturbations and CutMix boxes are
``train.strong_augment`` (UniMatch's defaults: jitter p = 0.8, blur p = 0.5, CutMix p = 0.5).

Deviations from the papers:
    - CutMix partner: the previous image of the same batch (``roll(1, 0)``) instead of an image of a
      second unlabeled batch; its pseudo-labels come from the same weak prediction as the batch's
      own (the student's training-mode pass, or the EMA teacher) rather than UniMatch's extra
      eval-mode pass. With a batch of one image the partner is the image
      itself. Under DDP the partner comes from the same process's share of the batch (as with
      UniMatch's per-GPU mix loader), so the pairing of each share's first image differs from a
      one-process run.
    - Unlabeled loss: confident cross-entropy averaged over all pixels (UniMatch's natural-image
      code; in 3D over the voxels that are not patch padding, as its ``ignore_mask``) by default;
      UniMatch's ACDC code uses Dice on the confident pixels instead, available
      as ``unlabeled_loss: dice``; ``ce_dice`` applies the supervised loss's CE + Dice mix to the
      confident pixels (cross-entropy alone lets small foreground classes shrink on the unlabeled
      images, see ``benchmarks/dev/semi-acdc-dev.md``).
    - Dice (supervised and ``unlabeled_loss: dice``) is the library's ``masked_dice_loss``, which
      averages over the foreground classes; UniMatch's ``DiceLoss`` also averages the background.
    - Classification FixMatch uses RandAugment / CTAugment and no CutMix; this is the segmentation
      variant of UniMatch's baseline.
    - ``warmup_epochs`` (default 0 = the papers): a supervised phase "warmup" on the labeled stream
      before the unlabeled loss starts, so that the first pseudo-labels come from a trained network
      rather than a random one (short CPU schedules; see ``benchmarks/dev/semi-acdc-dev.md``).
      ``pseudo_foreground`` (logged) is the share of weak-view pixels pseudo-labelled foreground: a
      fall towards 0 shows the collapse to background.
    - ``strong_bn_stats: false`` (not the default) keeps the strong views' pass out of the batch-norm
      running statistics. UniMatch's code lets it update them, and so does the default here: in two
      quick ACDC development runs, freezing them changed neither the collapse nor the gap between
      running and batch statistics (``benchmarks/dev/semi-acdc-dev.md``).
    - ``pseudo_source: ema`` differs from UniMatch V2's teacher, which runs in eval mode, averages
      the buffers too and uses the decay ``min(1 − 1/(t+1), 0.996)``. Without the student's weak
      pass, the student's batch-norm statistics come from the labeled images and the strong views
      only.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal

import torch

from semiseg.config import FieldError, check_weights
from semiseg.core import IGNORE_INDEX, Batch, ViewSpec
from semiseg.losses.consistency import confident_cross_entropy, pseudo_labels
from semiseg.losses.supervised import masked_cross_entropy, masked_dice_loss
from semiseg.methods import register
from semiseg.methods.base import Phase
from semiseg.methods.supervised import Supervised, SupervisedConfig
from semiseg.models.batchnorm import frozen_running_stats
from semiseg.models.ema import ema_copy, ema_update_
from semiseg.ops import paste
from semiseg.parallel import share

STREAMS = ("labeled", "unlabeled")


@dataclass
class FixMatchConfig(SupervisedConfig):
    ce_weight: float = 0.5  #: UniMatch ACDC: supervised loss (CE + Dice) / 2
    dice_weight: float = 0.5
    threshold: float = 0.95  #: τ, confidence a pseudo-label needs to count
    supervised_weight: float = 0.5  #: UniMatch: loss = (supervised + unlabeled) / 2
    unlabeled_weight: float = 0.5
    #: "ce": confident cross-entropy (FixMatch, UniMatch's natural-image code); "dice": Dice on the
    #: confident pixels (UniMatch's ACDC code); "ce_dice": the supervised loss's mix on the confident
    #: pixels (ce_weight · CE + dice_weight · Dice, the CE averaged over the confident pixels)
    unlabeled_loss: Literal["ce", "dice", "ce_dice"] = "ce"
    #: let the strong views' passes update the batch-norm running statistics (UniMatch's code does);
    #: false keeps them out (semiseg.models.batchnorm.frozen_running_stats)
    strong_bn_stats: bool = True
    #: epochs of a supervised warm-up phase ("warmup", labeled stream only) before the unlabeled
    #: loss starts, so the first pseudo-labels come from a trained network; 0 = none (the papers)
    warmup_epochs: int = 0
    #: where the pseudo-labels come from: "student" = the student's training-mode weak pass
    #: (FixMatch, UniMatch); "ema" = an EMA teacher of the student on the weak view, no gradient
    #: (UniMatch V2; as BCP and mean teacher)
    pseudo_source: Literal["student", "ema"] = "student"
    ema_decay: float = 0.99  #: decay of the EMA teacher (pseudo_source: ema)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.ema_decay <= 1.0:
            raise FieldError("ema_decay", f"must be in [0, 1], got {self.ema_decay}")
        if not 0.0 <= self.threshold <= 1.0:
            raise FieldError("threshold", f"must be in [0, 1], got {self.threshold}")
        if self.warmup_epochs < 0:
            raise FieldError("warmup_epochs", f"must be >= 0, got {self.warmup_epochs}")
        check_weights(self, "supervised_weight", "unlabeled_weight")


def cutmix_partner(x: torch.Tensor) -> torch.Tensor:
    """The image (or map) each sample receives inside its CutMix box: the previous sample's.

    Shape:
        ``[B, ...]`` → ``[B, ...]`` (sample ``i`` gets sample ``i - 1``; sample 0 gets ``B - 1``).

    Examples:
        >>> cutmix_partner(torch.tensor([0, 1, 2])).tolist()
        [2, 0, 1]
    """
    return x.roll(1, 0)


def mix_with_partner(x: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """``x`` with its :func:`cutmix_partner` pasted inside ``box`` (images, labels, confidences).

    Shape:
        x ``[B, C, *S]`` or ``[B, *S]``; box ``[B, *S]`` bool → like ``x``.

    Examples:
        >>> x = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
        >>> mix_with_partner(x, torch.tensor([[True, False], [True, False]])).tolist()
        [[1.0, 0.0], [0.0, 1.0]]
    """
    return paste(x, cutmix_partner(x), box)


@register("fixmatch")
class FixMatch(Supervised):
    """FixMatch with CutMix (UniMatch's segmentation baseline); see the module docstring."""

    config_class = FixMatchConfig

    def __init__(self, cfg: FixMatchConfig, **kwargs):
        super().__init__(cfg, **kwargs)
        #: the EMA teacher that gives the pseudo-labels (pseudo_source: ema), else None
        self.teacher = ema_copy(self.model) if cfg.pseudo_source == "ema" else None

    def on_phase_start(self, phase):
        if self.teacher is not None and phase != "warmup":
            self.teacher.load_state_dict(self.model.state_dict())

    def on_step_end(self, phase, optimizer):
        if self.teacher is not None and phase != "warmup":
            ema_update_(self.teacher, self.model, self.cfg.ema_decay)

    def student_weak_pass(self) -> bool:
        """Whether the student must predict the weak views: for the pseudo-labels (no EMA teacher)
        or for regularisers on the unlabeled stream; otherwise the pass would be wasted."""
        return self.teacher is None or "unlabeled" in self.regularizer_streams()

    def student_logits(self, lab: Batch, unl: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The student's logits of the labeled images and (when :meth:`student_weak_pass`) of the
        weak views, in one training-mode pass (batch norm over both, as UniMatch's code); else None."""
        if not self.student_weak_pass():
            return self.model(lab.image), None
        logits_labeled, logits_weak = self.model(torch.cat([lab.image, unl.image])).split(
            [len(lab), len(unl)]
        )
        return logits_labeled, logits_weak

    def weak_targets(
        self, unlabeled: Batch, logits_weak: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Pseudo-labels and confidences of the weak views: the student's weak logits (detached),
        or the EMA teacher's prediction (training-mode batch norm, as BCP's and mean teacher's).
        Voxels outside ``unlabeled.valid`` (3D patch padding) get no label and confidence 0, so every unlabeled
        loss (strong views, CutMix-ed with the same boxes, and UniMatch's feature perturbation)
        skips them, as UniMatch's own ``ignore_mask`` does.

        Shape:
            logits_weak ``[B_u, K, *S]`` (None with an EMA teacher) → labels, confidence ``[B_u, *S]``.
        """
        if self.teacher is not None:
            with torch.no_grad():
                probs = self.teacher.train()(unlabeled.image).softmax(1)
        else:
            probs = logits_weak.detach().softmax(1)
        labels, confidence = pseudo_labels(probs)
        if unlabeled.valid is not None:  # padding past a 3D volume's end is no image: no pseudo-label
            labels = unlabeled.ignore_padding(labels)
            confidence = confidence.masked_fill(~unlabeled.valid, 0.0)
        return labels, confidence

    def strong_views(self) -> int:
        """Strong views asked of the unlabeled stream."""
        return 1

    def phases(self):
        views = {"unlabeled": ViewSpec(strong=self.strong_views(), cutmix=True)}
        train = Phase(streams=STREAMS, views=views)
        if not self.cfg.warmup_epochs:
            return [train]
        warmup = Phase("warmup", epochs=self.cfg.warmup_epochs, optional_streams=self.regularizer_streams(),
                       final=False)  # fmt: skip
        return [warmup, train]

    # ------------------------------------------------------------------ losses
    def unlabeled_loss(
        self, logits: torch.Tensor, labels: torch.Tensor, confidence: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Loss of ``logits`` towards the pseudo-labels on pixels with ``confidence >= threshold``
        (the others get zero gradient), and the fraction of such pixels.

        Shape:
            logits ``[B, K, *S]``, labels and confidence ``[B, *S]`` → two scalars.
        """
        cfg = self.cfg
        if cfg.unlabeled_loss == "ce":
            return confident_cross_entropy(logits, labels, confidence, cfg.threshold)
        keep = confidence >= cfg.threshold
        target = labels.masked_fill(~keep, IGNORE_INDEX)
        loss = masked_dice_loss(logits, target)
        if cfg.unlabeled_loss == "ce_dice":
            loss = cfg.ce_weight * masked_cross_entropy(logits, target) + cfg.dice_weight * loss
        return loss, keep.float().mean()

    def strong_losses(
        self, unlabeled: Batch, labels: torch.Tensor, confidence: torch.Tensor
    ) -> list[torch.Tensor]:
        """One unlabeled loss per strong view: each view CutMix-ed with its partner inside its own
        box, the pseudo-labels and confidences mixed with the same box; all views in one pass.

        Shape:
            ``unlabeled.strong`` ``[B, k, C, *S]``, ``unlabeled.cutmix`` ``[B, k, *S]``; labels and
            confidence ``[B, *S]`` (of the weak views) → ``k`` scalars.
        """
        strong, boxes = unlabeled.strong, unlabeled.cutmix
        if strong is None or boxes is None:
            raise ValueError("the unlabeled stream carries no strong views / CutMix boxes")
        k = strong.shape[1]
        mixed = torch.cat([mix_with_partner(strong[:, j], boxes[:, j]) for j in range(k)])
        stats = contextlib.nullcontext() if self.cfg.strong_bn_stats else frozen_running_stats(self.model)
        with stats:
            logits = self.model(mixed).chunk(k)
        return [
            self.unlabeled_loss(
                logits[j], mix_with_partner(labels, boxes[:, j]), mix_with_partner(confidence, boxes[:, j])
            )[0]
            for j in range(k)
        ]

    def finish(
        self,
        batch: dict[str, Batch],
        logits_labeled: torch.Tensor,
        logits_weak: torch.Tensor | None,
        unlabeled: torch.Tensor,
        labels: torch.Tensor,
        confidence: torch.Tensor,
        components: dict[str, torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """``supervised_weight · supervised + unlabeled_weight · unlabeled`` + regularisers (on the
        labeled logits and, when the student predicted them, the weak views' logits, with gradient),
        with the logged components."""
        cfg = self.cfg
        has_label = labels != IGNORE_INDEX  # all but 3D patch padding (Batch.valid)
        sup = self.supervised_loss(logits_labeled, batch["labeled"].mask)
        supervised = sup.pop("loss")
        out = {
            "loss": cfg.supervised_weight * supervised + cfg.unlabeled_weight * unlabeled,
            "supervised": supervised,
            **sup,
            **components,
            # fraction of weak-view pixels whose pseudo-label is confident (UniMatch's mask ratio)
            "confident": share((confidence >= cfg.threshold) & has_label, has_label),
            # fraction of weak-view pixels pseudo-labelled as foreground (a collapse to background shows)
            "pseudo_foreground": share((labels != 0) & has_label, has_label),
        }
        if len(self.regularizers):
            logits = {"labeled": logits_labeled, "unlabeled": logits_weak}
            reg = self.regularization({k: v for k, v in logits.items() if v is not None}, batch)
            out["loss"] = out["loss"] + reg.pop("reg_total")
            out.update(reg)
        return out

    def training_step(self, batch, phase, optimizer):
        if phase == "warmup":  # the optional supervised warm-up
            return super().training_step(batch, phase, optimizer)
        return self.consistency_step(batch)

    def consistency_step(self, batch: dict[str, Batch]) -> dict[str, torch.Tensor]:
        """One step of the phase with the unlabeled loss (subclasses replace it, not the dispatch)."""
        lab, unl = batch["labeled"], batch["unlabeled"]
        logits_labeled, logits_weak = self.student_logits(lab, unl)
        labels, confidence = self.weak_targets(unl, logits_weak)
        (strong,) = self.strong_losses(unl, labels, confidence)
        return self.finish(batch, logits_labeled, logits_weak, strong, labels, confidence, {"strong": strong})
