"""Self-training with a frozen teacher's confident pseudo-labels, in rounds.

Pseudo-labelling (Lee, "Pseudo-Label: The Simple and Efficient Semi-Supervised Learning Method for
Deep Neural Networks", ICML Workshop on Challenges in Representation Learning, 2013) in the
teacher → student rounds of self-training (Xie, Luong, Hovy and Le, "Self-training with Noisy
Student Improves ImageNet Classification", CVPR 2020; for cardiac MR segmentation, Bai et al.,
"Semi-supervised Learning for Network-based Cardiac MR Image Segmentation", MICCAI 2017, alternate
pseudo-labelling and network updates).

Phases:

1. ``supervised``: the supervised loss on the labeled images (``ce_weight`` · CE + ``dice_weight`` ·
   soft Dice, dense or sparse masks), selected on the validation split (``restore_best``), so the
   next phase starts from its best state. Not ``final`` unless ``rounds: 0``.
2. ``round1`` … ``round<R>``: at the start of each round the current segmenter (the previous phase's
   best, restored by the engine) is copied into a frozen ``teacher``. During the round the teacher
   labels the weak view of every unlabeled image online (eval mode, no gradient,
   :func:`teacher_pseudo_labels`), and the student is trained with

       L = L_s(labeled) + pseudo_weight · CE_τ(student(unlabeled), teacher labels),

   ``CE_τ`` the cross-entropy on the pixels whose teacher confidence (max softmax) is ≥ τ
   (``threshold``), averaged over all unlabeled pixels
   (:func:`~semiseg.losses.consistency.confident_cross_entropy`; the other pixels get zero
   gradient). Each round but the last is selected on validation (``restore_best``: the next round
   starts from its best state); the last round is ``final`` (it alone competes for ``best.pt``) and
   leaves the model as training left it, so ``train.eval_last`` scores the last state.
   Optionally (``reinit_each_round``) the student restarts
   from a fresh initialisation at every round (classic self-training, where the student is
   retrained), drawn deterministically from a seed the method drew at construction (a buffer).

Passes per training step: in a round, one teacher forward (no gradient) on the unlabeled images,
student forwards on the labeled and on the unlabeled images, one backward through the student; in
the supervised phase one forward/backward on the labeled images.

Defaults (no ACDC codebase has a thresholded self-training baseline; these are our choices, to be
calibrated on validation only): ``rounds: 2``; ``threshold: 0.9`` (Lee and Bai et al. keep every
pixel, i.e. τ = 0; FixMatch / UniMatch use 0.95 with strong views, which this method does not use);
``pseudo_weight: 1.0`` (pseudo-labelled pixels count like labeled ones, as in classic
self-training); ``reinit_each_round: false`` (the student fine-tunes from the teacher's weights,
which costs no extra epochs); every phase runs ``train.epochs`` unless ``supervised_epochs`` /
``round_epochs`` say otherwise, with its own learning-rate schedule (each phase builds its
optimizer anew). ``supervised_epochs: 0`` drops the supervised phase: the starting model
(``train.init``, e.g. a supervised run's ``best.pt``) is the first teacher.

Deviations: pseudo-labels are computed online from the current weak view (same augmentation as the
student sees) instead of once per round offline, so they follow the data augmentation and need no
storage; no CRF refinement of the pseudo-labels (Bai et al.); no noise / strong augmentation of the
student beyond the weak view (Noisy Student); hard labels with a confidence threshold (Lee: hard
labels of every pixel, with a weight ramp-up α(t); here each round starts from a trained teacher,
so there is no ramp-up).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from semiseg.config import FieldError
from semiseg.losses.consistency import confident_cross_entropy, pseudo_labels
from semiseg.methods import register
from semiseg.methods.base import Phase
from semiseg.methods.supervised import Supervised, SupervisedConfig
from semiseg.models import build_model

#: names of the self-training phases: "round1", "round2", ...
ROUND = "round"


@dataclass
class PseudoLabelConfig(SupervisedConfig):
    rounds: int = 2  #: self-training rounds after the supervised phase (0 = supervised only)
    threshold: float = 0.9  #: τ: teacher confidence (max softmax) a pixel needs to supervise
    pseudo_weight: float = 1.0  #: weight of the pseudo-label cross-entropy
    supervised_epochs: int | None = None  #: None = train.epochs; 0 = no supervised phase (train.init)
    round_epochs: int | None = None  #: epochs of every round; None = train.epochs
    reinit_each_round: bool = False  #: restart the student from a fresh initialisation every round

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rounds < 0:
            raise FieldError("rounds", f"must be >= 0, got {self.rounds}")
        if not 0.0 <= self.threshold <= 1.0:
            raise FieldError("threshold", f"must be in [0, 1], got {self.threshold}")
        if self.pseudo_weight < 0:
            raise FieldError("pseudo_weight", f"must be >= 0, got {self.pseudo_weight}")
        if self.supervised_epochs is not None and self.supervised_epochs < 0:
            raise FieldError("supervised_epochs", f"must be >= 0, got {self.supervised_epochs}")
        if self.supervised_epochs == 0 and self.rounds == 0:
            raise FieldError("supervised_epochs", "0 needs rounds >= 1 (there would be nothing to train)")
        if self.round_epochs is not None and self.round_epochs < 1:
            raise FieldError("round_epochs", f"must be >= 1, got {self.round_epochs}")


@torch.no_grad()
def teacher_pseudo_labels(teacher: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard pseudo-labels of a frozen teacher: the arg-max class of its softmax and that class's
    probability (the confidence), computed in eval mode (batch-norm running statistics, no dropout)
    without gradient; the teacher's train/eval mode is restored afterwards.

    Returns:
        ``(labels, confidence)``.

    Shape:
        images ``[B, C, *S]`` → labels ``[B, *S]`` long, confidence ``[B, *S]`` float.

    Examples:
        >>> teacher = nn.Conv2d(1, 2, 1)
        >>> labels, confidence = teacher_pseudo_labels(teacher, torch.rand(2, 1, 4, 4))
        >>> tuple(labels.shape), bool((confidence >= 0.5).all())
        ((2, 4, 4), True)
    """
    was_training = teacher.training
    teacher.eval()
    try:
        probs = teacher(images).float().softmax(1)
    finally:
        teacher.train(was_training)
    return pseudo_labels(probs)


def round_index(phase: str) -> int | None:
    """``"round2"`` → 2; other phase names → None."""
    suffix = phase[len(ROUND) :]
    return int(suffix) if phase.startswith(ROUND) and suffix.isdigit() else None


@register("pseudo_label")
class PseudoLabel(Supervised):
    """Supervised phase, then rounds of self-training of ``model`` on a frozen ``teacher``'s labels."""

    config_class = PseudoLabelConfig

    def __init__(self, cfg: PseudoLabelConfig, **kwargs):
        super().__init__(cfg, **kwargs)
        if cfg.rounds > 0:
            self.teacher = build_model(self.model_cfg, self.in_channels, self.num_classes).requires_grad_(
                False
            )
        if cfg.reinit_each_round:
            # drawn from the run's seeded RNG at construction and checkpointed: re-initialisations
            # are a function of train.seed and the round, whatever the resumption
            self.register_buffer("reinit_seed", torch.randint(0, 2**62, (), dtype=torch.long))

    # ------------------------------------------------------------------------------ phases
    def phases(self):
        cfg, extra = self.cfg, self.regularizer_streams()
        phases = []
        if cfg.supervised_epochs != 0:
            phases.append(Phase("supervised", epochs=cfg.supervised_epochs, optional_streams=extra,
                                final=cfg.rounds == 0, restore_best=cfg.rounds > 0))  # fmt: skip
        for r in range(1, cfg.rounds + 1):
            phases.append(Phase(f"{ROUND}{r}", epochs=cfg.round_epochs, streams=("labeled", "unlabeled"),
                                final=r == cfg.rounds, restore_best=r < cfg.rounds))  # fmt: skip
        return phases

    def on_phase_start(self, phase):
        r = round_index(phase)
        if r is None:
            return
        # the previous phase's best (restored by the engine) or the starting model becomes the teacher
        self.teacher.load_state_dict(self.model.state_dict())
        if self.cfg.reinit_each_round:
            self.reinit_student(r)

    def reinit_student(self, round_number: int) -> None:
        """Fresh weights for the student, a function of the method's ``reinit_seed`` and the round
        only (the global RNG is left untouched)."""
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only (the network is built on the CPU): torch.manual_seed would also
            # reseed every GPU's generator, which fork_rng(devices=[]) does not restore
            torch.default_generator.manual_seed(int(self.reinit_seed) + round_number)
            fresh = build_model(self.model_cfg, self.in_channels, self.num_classes)
        self.model.load_state_dict(fresh.state_dict())

    # ------------------------------------------------------------------------------ training
    def training_step(self, batch, phase, optimizer):
        if round_index(phase) is None:
            return super().training_step(batch, phase, optimizer)  # the supervised phase
        lab, unl = batch["labeled"], batch["unlabeled"]
        labels, confidence = teacher_pseudo_labels(self.teacher, unl.image)
        labels = unl.ignore_padding(labels)  # no pseudo-label on 3D patch padding
        logits = {"labeled": self.model(lab.image), "unlabeled": self.model(unl.image)}
        out = self.supervised_loss(logits["labeled"], lab.mask)
        pseudo, ratio = confident_cross_entropy(logits["unlabeled"], labels, confidence, self.cfg.threshold)
        out["pseudo_ce"], out["confident_ratio"] = pseudo, ratio
        out["loss"] = out["loss"] + self.cfg.pseudo_weight * pseudo
        if len(self.regularizers):  # the student's predictions: labeled images, weak unlabeled views
            reg = self.regularization(logits, batch)
            out["loss"] = out["loss"] + reg.pop("reg_total")
            out.update(reg)
        return out
