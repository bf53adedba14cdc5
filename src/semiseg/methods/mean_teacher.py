"""Mean teacher (Tarvainen & Valpola, "Mean teachers are better role models", NeurIPS 2017).

A student segmenter learns from the labeled pixels and, on every unlabeled image, matches the
softmax of a teacher whose weights are an exponential moving average (EMA) of the student's
(:mod:`semiseg.models.ema`, updated after every optimizer step in :meth:`MeanTeacher.on_step_end`)::

    loss = ce_weight · CE(labeled) + dice_weight · Dice(labeled)
           + w(t) · mean_pixels ‖softmax(f_θ(u)) − softmax(f_θ'(u + ε))‖²,  ε = clip(N(0, σ²), ±c)
    θ' ← d · θ' + (1 − d) · θ

(the paper's consistency cost J(θ) and EMA of §2, squared error of the class probabilities)

with ``w(t)`` a sigmoid ramp-up (``exp(-5 (1 - t/T)²)``, Laine & Aila) of ``consistency_weight``
over the first ``ramp_up_steps`` steps of the phase (:func:`semiseg.losses.ramp.ramp_weight`,
counted by ``phase_step``). With ``perturbation: noise`` (the default, SSL4MIS) the student sees
the weak view ``u`` of each unlabeled image and the teacher the same view plus Gaussian noise
(σ = ``teacher_noise_std`` 0.1, clipped to ± ``teacher_noise_clip`` 0.2, drawn per sample from the
batch's keys); with ``perturbation: strong`` the student sees a strong view (``train.strong_augment``,
the engine's ``ViewSpec(strong=1)``, same geometry) and the teacher the weak view. Either way the
two predictions are pixel-aligned. The student is the model that is validated and predicts.

The student's labeled and unlabeled images go through the network in separate forward passes
(``joint_batch: false``), so each batch is normalised with its own statistics. SSL4MIS forwards
them as one batch; in semiseg's quick ACDC setting (from scratch, 1,000 iterations) that one
change roughly halved the validation Dice of the first 10 epochs in one diagnostic run (one draw,
one seed, consistency weight at zero), and separate passes tracked supervised training
(``benchmarks/dev/semi-acdc-dev.md``).
``joint_batch: true`` restores SSL4MIS's single batch.

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

- Separate forward passes for the labeled and unlabeled images (above); SSL4MIS: one batch.
- The teacher's noise is added to the weak (geometrically augmented) view, as SSL4MIS adds it to
  its augmented batch; the paper perturbs both models' inputs independently and adds dropout.
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
from typing import Literal

import torch

from semiseg.config import FieldError, check_weights
from semiseg.core import Batch, ViewSpec
from semiseg.losses.consistency import softmax_mse
from semiseg.losses.ramp import ramp_weight
from semiseg.methods import register
from semiseg.methods.base import Phase, forward_streams
from semiseg.methods.supervised import Supervised, SupervisedConfig
from semiseg.models.ema import ema_copy, ema_update_

#: salt of the per-sample generators of the teacher's input noise
NOISE_SALT = 0x4D54


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
    #: the two views: "noise" = the student sees the clean weak view and the teacher the weak view
    #: plus clipped Gaussian noise (SSL4MIS); "strong" = the student sees a strong view
    #: (``train.strong_augment``) and the teacher the weak view
    perturbation: Literal["noise", "strong"] = "noise"
    teacher_noise_std: float = 0.1  #: SSL4MIS: N(0, 0.1²) ...
    teacher_noise_clip: float = 0.2  #: ... clipped to ±0.2, added to the teacher's input
    #: one student forward over the labeled and unlabeled images together (SSL4MIS); default: one
    #: forward per stream, so each is normalised with its own batch's statistics (benchmarks/dev:
    #: from scratch at the quick budget the joint batch halved the early validation Dice)
    joint_batch: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.ema_decay <= 1.0:
            raise FieldError("ema_decay", f"must be in [0, 1], got {self.ema_decay}")
        check_weights(self, "consistency_weight")
        for name in ("ramp_up_steps", "consistency_start_step", "teacher_noise_std", "teacher_noise_clip"):
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
        views = {}
        if self.cfg.perturbation == "strong":
            views["unlabeled"] = ViewSpec(strong=1)
            if self.cfg.labeled_consistency:
                views["labeled"] = ViewSpec(strong=1)
        return [Phase(streams=("labeled", "unlabeled"), views=views)]

    def noisy(self, batch: Batch) -> torch.Tensor:
        """The batch's images plus Gaussian noise clipped to ±``teacher_noise_clip``, drawn per
        sample from the batch's keys (the same whatever the worker count or resumption).

        Shape: ``[B, C, *S]`` → ``[B, C, *S]``.
        """
        cfg = self.cfg
        noise = batch.randn(NOISE_SALT, batch.image.shape[1:])
        noise = (noise * cfg.teacher_noise_std).clamp(-cfg.teacher_noise_clip, cfg.teacher_noise_clip)
        return batch.image + noise.to(batch.image)

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
        cfg = self.cfg
        consistency_streams = ("unlabeled", "labeled") if cfg.labeled_consistency else ("unlabeled",)
        inputs = {"labeled": lab.image}
        if cfg.perturbation == "strong":
            # the student's strong views; regularisers see the student on the weak view
            inputs.update({f"{s}_strong": batch[s].strong[:, 0] for s in consistency_streams})
            if "unlabeled" in self.regularizer_streams():
                inputs["unlabeled"] = unl.image
            teacher_in = [batch[s].image for s in consistency_streams]
            student_keys = [f"{s}_strong" for s in consistency_streams]
        else:  # the student's clean weak views, the teacher's noisy ones
            inputs["unlabeled"] = unl.image
            teacher_in = [self.noisy(batch[s]) for s in consistency_streams]
            student_keys = list(consistency_streams)
        logits = forward_streams(self.model, inputs, cfg.joint_batch)

        out = self.supervised_loss(logits["labeled"], lab.mask)
        if cfg.joint_batch:
            target = self.teacher_probs(torch.cat(teacher_in))
        else:  # each stream through the teacher alone, as through the student
            target = torch.cat([self.teacher_probs(x) for x in teacher_in])
        valid = torch.cat([batch[s].valid_mask() for s in consistency_streams])  # not 3D patch padding
        out["consistency"] = softmax_mse(torch.cat([logits[k] for k in student_keys]), target, valid)
        weight = self.current_consistency_weight(self.phase_step)
        out["loss"] = out["loss"] + weight * out["consistency"]
        out["consistency_weight"] = torch.tensor(weight)
        if len(self.regularizers):
            streams = {"labeled", *self.regularizer_streams()}
            reg = self.regularization({s: v for s, v in logits.items() if s in streams}, batch)
            out["loss"] = out["loss"] + reg.pop("reg_total")
            out.update(reg)
        return out
