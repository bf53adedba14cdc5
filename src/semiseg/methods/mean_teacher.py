"""Mean teacher (Tarvainen & Valpola, "Mean teachers are better role models", NeurIPS 2017).

A student segmenter learns from the labeled pixels and, on every unlabeled image, matches the
softmax of a teacher whose weights are an exponential moving average (EMA) of the student's
(:mod:`semiseg.models.ema`, updated after every optimizer step in :meth:`MeanTeacher.on_step_end`)::

    loss = ce_weight · CE(labeled) + dice_weight · Dice(labeled)
           + w(t) · mean_pixels ‖softmax(f_θ(strong(u))) − softmax(f_θ'(weak(u)))‖²
    θ' ← d · θ' + (1 − d) · θ

(the paper's consistency cost J(θ) and EMA of §2, squared error of the class probabilities)

with ``w(t)`` a sigmoid ramp-up (``exp(-5 (1 - t/T)²)``, Laine & Aila) of ``consistency_weight``
over the first ``ramp_up_steps`` steps of the phase (:func:`semiseg.losses.ramp.ramp_weight`,
counted by ``phase_step``). The student sees a strong view of each unlabeled image and the teacher
its weak view; both share one geometric transform (the engine's ``ViewSpec(strong=1)``), so the
two predictions are pixel-aligned. The student is the model that is validated and predicts.

Defaults follow the ACDC setting of SSL4MIS (Luo et al., ``train_mean_teacher_2D.py``), the
codebase the common ACDC tables come from: EMA decay 0.99 with Tarvainen's warm-up
(``min(1 − 1/(t+1), d)``, so the teacher is the true average early on), consistency weight 0.1,
supervised loss ``0.5 · (CE + Dice)``, consistency off for the first 1000 iterations, and a
sigmoid ramp-up over 200 "epochs" of 150 iterations = 30 000 iterations, i.e. SSL4MIS's whole
run. ``ramp_up_steps`` states that length in steps (default 30 000); a recipe with another run
length sets it to its own length (the ACDC recipe's quick section does), so the ramp keeps
spanning the run as in SSL4MIS. The teacher normalises with the statistics of its own batch
(``teacher_batch_stats``): SSL4MIS (and the original code) run the EMA model in train mode.

Deviations from SSL4MIS / the paper:

- The perturbations are the engine's strong view for the student and the weak view for the
  teacher (SSL4MIS: the clean image for the student and the image plus clipped Gaussian noise,
  σ = 0.1 in ±0.2, for the teacher; the paper: independent input noise and dropout for both).
- The ramp-up advances every step (SSL4MIS: in whole blocks of 150 iterations).
- The EMA also copies the student's buffers (batch-norm statistics) into the teacher
  (:func:`~semiseg.models.ema.ema_update_`); SSL4MIS averages parameters only. With
  ``teacher_batch_stats`` the teacher's running statistics do not enter its predictions.
- The soft Dice is the library's (:func:`~semiseg.losses.supervised.masked_dice_loss`: foreground
  classes, batch-wise) rather than SSL4MIS's per-class Dice with squared denominators including
  the background.
- ``labeled_consistency`` (off by default, as SSL4MIS) adds the same consistency on the labeled
  images, as the paper applies it to every image.
- The teacher starts as a copy of the student at the start of the phase (so also of a
  ``train.init`` model).

Configured regularisers (``method.regularizers``) act on the student's predictions of the labeled
images and of the weak view of the unlabeled images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from semiseg.config import FieldError, check_weights
from semiseg.core import ViewSpec
from semiseg.losses.consistency import softmax_mse
from semiseg.losses.ramp import ramp_weight
from semiseg.methods import register
from semiseg.methods.base import Phase
from semiseg.methods.supervised import Supervised, SupervisedConfig
from semiseg.models.ema import ema_copy, ema_update_


@dataclass
class MeanTeacherConfig(SupervisedConfig):
    ce_weight: float = 0.5  #: SSL4MIS: 0.5 · (CE + Dice)
    dice_weight: float = 0.5
    ema_decay: float = 0.99  #: d of the EMA teacher (SSL4MIS ACDC)
    #: decay min(1 - 1/(t+1), d) at phase step t: the teacher is the plain average of the first
    #: students (Tarvainen & Valpola's code, SSL4MIS)
    ema_warmup: bool = True
    consistency_weight: float = 0.1  #: w after the ramp-up (SSL4MIS ACDC)
    #: steps of the sigmoid ramp-up of w, counted from the start of the phase; SSL4MIS: 200 x 150 =
    #: 30k iterations, its whole run (set it to the run's length)
    ramp_up_steps: int = 30000
    consistency_start_step: int = 1000  #: w = 0 before this phase step (SSL4MIS: 1000)
    labeled_consistency: bool = False  #: consistency also on the labeled images (the paper's setting)
    #: teacher normalises with its batch's statistics (train mode), as SSL4MIS's EMA model
    teacher_batch_stats: bool = True

    def __post_init__(self) -> None:
        if not 0.0 <= self.ema_decay <= 1.0:
            raise FieldError("ema_decay", f"must be in [0, 1], got {self.ema_decay}")
        check_weights(self, "ce_weight", "dice_weight", "consistency_weight")
        for name in ("ramp_up_steps", "consistency_start_step"):
            if getattr(self, name) < 0:
                raise FieldError(name, f"must be >= 0, got {getattr(self, name)}")


@register("mean_teacher")
class MeanTeacher(Supervised):
    """Student (``model``, trained) and EMA teacher (``teacher``, a submodule without gradients)."""

    config_class = MeanTeacherConfig

    def __init__(self, cfg: MeanTeacherConfig, **kwargs):
        super().__init__(cfg, **kwargs)
        self.teacher = ema_copy(self.model)

    def phases(self):
        views = {"unlabeled": ViewSpec(strong=1)}
        if self.cfg.labeled_consistency:
            views["labeled"] = ViewSpec(strong=1)
        return [Phase(streams=("labeled", "unlabeled"), views=views)]

    def on_phase_start(self, phase):
        self.teacher.load_state_dict(self.model.state_dict())

    def on_step_end(self, phase, optimizer):
        ema_update_(self.teacher, self.model, self.current_ema_decay(self.phase_step))

    def current_ema_decay(self, step: int) -> float:
        """The EMA decay after phase step ``step`` (0-based), with the optional warm-up."""
        if self.cfg.ema_warmup:
            return min(1.0 - 1.0 / (step + 1), self.cfg.ema_decay)
        return self.cfg.ema_decay

    def current_consistency_weight(self, step: int) -> float:
        """w at phase step ``step``: 0 before ``consistency_start_step``, then the sigmoid ramp-up."""
        if step < self.cfg.consistency_start_step:
            return 0.0
        return ramp_weight(self.cfg.consistency_weight, step, self.cfg.ramp_up_steps)

    @torch.no_grad()
    def teacher_probs(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's softmax. Shape: ``[B, C, *S]`` → ``[B, K, *S]``."""
        self.teacher.train(self.cfg.teacher_batch_stats)
        return self.teacher(images).softmax(1)

    def training_step(self, batch, phase, optimizer):
        lab, unl = batch["labeled"], batch["unlabeled"]
        labeled_consistency = self.cfg.labeled_consistency
        # one student forward over every input (labeled and unlabeled images in one batch, as SSL4MIS)
        inputs = {"labeled": lab.image, "unlabeled_strong": unl.strong[:, 0]}
        if labeled_consistency:
            inputs["labeled_strong"] = lab.strong[:, 0]
        if "unlabeled" in self.regularizer_streams():
            inputs["unlabeled"] = unl.image  # regularisers see the student on the weak view
        student = self.model(torch.cat(list(inputs.values())))
        logits = dict(zip(inputs, student.split([len(x) for x in inputs.values()])))

        out = self.supervised_loss(logits["labeled"], lab.mask)
        weak = torch.cat([unl.image, lab.image]) if labeled_consistency else unl.image
        target = self.teacher_probs(weak)
        strong = logits["unlabeled_strong"]
        if labeled_consistency:
            strong = torch.cat([strong, logits["labeled_strong"]])
        out["consistency"] = softmax_mse(strong, target)
        weight = self.current_consistency_weight(self.phase_step)
        out["loss"] = out["loss"] + weight * out["consistency"]
        out["consistency_weight"] = torch.tensor(weight)
        if len(self.regularizers):
            streams = {"labeled", *self.regularizer_streams()}
            reg = self.regularization({s: v for s, v in logits.items() if s in streams}, batch)
            out["loss"] = out["loss"] + reg.pop("reg_total")
            out.update(reg)
        return out
