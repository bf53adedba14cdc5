"""SSLDEC: semi-supervised learning with deep embedded clustering (Enguehard, O'Halloran and
Gholipour, "Semi-Supervised Learning With Deep Embedded Clustering for Image Classification and
Segmentation", IEEE Access 7, 2019; DEC: Xie, Girshick and Farhadi, ICML 2016).

A network's last layer (one unit per class) is the embedding z; a clustering head
(``model.head: clustering``, :class:`~semiseg.models.heads.ClusteringHead`) turns it into the
Student-t soft assignment q to one learnable centroid per class (eq. 1), cluster j = class j. The
method's output is log q, so softmax / argmax of it are q and the class, per image (classification
data) or per pixel (segmentation data). Algorithm 1 as the engine's phases:

1. ``pretrain`` (``pretrain_epochs``): the labeled items, KL(onehot(y) ‖ q) = cross-entropy of q
   (centroids trained too), learning rate linear from ``pretrain_lr`` to ``pretrain_lr ·
   pretrain_end_factor`` (the paper: 1e-3 → 1e-4 over 100 epochs).
   Optional ``pretrain_fit`` (``pretrain_threshold`` set; not in the paper): the pre-training
   goes on at its last rate (``pretrain_lr · pretrain_end_factor``), with its Adam state (a fresh
   one when ``pretrain_epochs`` is 0), until the labeled training accuracy reaches
   ``pretrain_threshold`` (checked before each epoch as in ``labeled<r>``; at most
   ``max_pretrain_fit_epochs``). With ``max_rounds: 0`` both pre-training phases are ``final``.
   The paper stresses that the targets of eq. 2 come from this model, which "needs to be as
   accurate as possible" (§III-A); a fixed epoch count fits a narrow network's labeled items less
   well (``benchmarks/dev/ssldec-dev.md``).
2. For r = 1 … ``max_rounds``, two phases, constant learning rate ``lr`` (the paper: 1e-4), one
   Adam state handed on through all of them (``OptimizerSpec.persist``, as a re-fitted Keras model):

   - ``dec<r>``: before its one epoch (:meth:`SSLDEC.plan_epoch`) the current model predicts q on
     every item of the unlabeled stream (clean images, eval mode; with ``data.split.unlabeled:
     all``, the recipes' setting, that is L ∪ U as in Alg. 1), the target distribution
     P = eq. 2 with the cluster frequency f over all of them, and the items' predicted classes.
     *Image mode*: when fewer than ``change_tol`` of the items changed class since the previous
     round, training ends (DEC's stopping rule; the remaining phases are skipped). Else the
     epoch draws from P′, ``n_min`` items per predicted class at random (``n_min`` = the smallest
     predicted class's count; ``balance: false`` = every item), trained with KL(P ‖ Q) (eq. 3) on
     their augmented view (Q taken on the clean image, trained on another view, §III-A).
     *Pixel mode*: the model is copied into a frozen ``teacher``; each step the teacher's q on the
     student's view gives P per pixel (f over the whole sweep), and each pixel counts with
     probability ``n_min / n_c`` of its predicted class c (so every class contributes about as
     many pixels, the per-pixel balanced subset), drawn from the batch's keys.
   - ``labeled<r>``: before every epoch the training accuracy on the labeled items (clean images,
     eval mode; ``retrain_metric``) is measured; the phase ends once it reaches
     ``retrain_threshold`` (the paper: 100 %), else trains one more epoch on the labeled items
     (at most ``max_retrain_epochs``).

``targets: hard`` replaces P with one-hot arg-max labels: the paper's "pseudo model" (use it with
``model.head: linear``, the same network without the clustering layer). ``max_rounds: 0`` is the
pre-training alone: the supervised lower bound, bitwise the first phase of an SSLDEC run.
``targets: none`` skips every unlabeled epoch (no sweep, no targets): the rounds only retrain on the
labeled items, with the same rate, threshold and caps (all ``max_rounds``; SSLDEC may stop earlier on
``change_tol``), and the run sees no unlabeled image: the supervised control for the unlabeled epochs.
Not an exactly equal budget: a round retrains until the training accuracy reaches the threshold, and
without the unlabeled epochs that lower it the control may retrain less than SSLDEC (not at all when
the threshold already holds; then no phase after pre-training validates, no ``best.pt`` is written
and the run is scored as pre-training left it). The bench records each run's steps by phase.

Every loss adds ``l2_weight`` · Σ w² over the convolution and dense weights of the network (the
paper's Keras kernel regulariser, 1e-4; not biases, normalisation parameters or centroids).
Configured regularisers (``method.regularizers``) act on the logits of the stream each phase
trains on (labeled in ``pretrain`` / ``labeled<r>``, unlabeled in ``dec<r>``).

Passes per step: one forward/backward on the phase's batch; in pixel mode's ``dec<r>`` also one
teacher forward (no gradient). Sweeps: one forward over the unlabeled stream per round and one
over the labeled items per retraining epoch.

Judgement calls (unspecified in the paper): Q is predicted in eval mode on clean images; the
training accuracy is checked before each labeled epoch (``while`` semantics) in eval mode; the
end condition is ``max_rounds`` plus ``change_tol`` (image mode only: per-pixel assignments of a
whole dataset are not kept); a class that no item is predicted as is left out of ``n_min``; the
KL is a mean over the items (pixels) that count (Keras's ``kld``), not the paper's sum; the second
part starts a fresh Adam state (the paper changes the learning rate between the parts), which its
phases then share; items held out for validation (``data.split.val_from_labeled``) are not in the
sweep; every phase of the rounds is ``final``, the pre-training phases only with ``max_rounds: 0``
(best validation over rounds goes to ``best.pt``; the classification tables score the last state,
``train.eval_last``, since 10 validation digits cannot select).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from semiseg.config import FieldError, OptimizerConfig
from semiseg.core import IGNORE_INDEX, Batch
from semiseg.errors import ConfigError
from semiseg.losses.dec import cluster_frequency, dec_kl, target_distribution
from semiseg.losses.supervised import masked_cross_entropy
from semiseg.methods import register
from semiseg.methods.base import EpochPlan, Method, MethodConfig, OptimizerSpec, Phase
from semiseg.models import build_model
from semiseg.parallel import batch_sum, mean_denominator

#: the key under which the second part's phases share one optimizer state
SECOND = "ssldec"
#: the optional phase that pre-trains on until the labeled items are fitted, and its optimizer key
FIT = "pretrain_fit"
#: salts of the method's keyed draws
SUBSET_SALT, PIXEL_SALT = 0x5D, 0x5E


@dataclass
class SSLDECConfig(MethodConfig):
    #: "hard" = one-hot arg-max targets (the pseudo model); "none" = no unlabeled epochs (the
    #: supervised control with SSLDEC's labeled schedule)
    targets: Literal["dec", "hard", "none"] = "dec"
    pretrain_epochs: int = 100  #: epochs of supervised pre-training on the labeled items
    pretrain_lr: float | None = 1e-3  #: None = train.lr
    pretrain_end_factor: float = 0.1  #: pre-training lr falls linearly to pretrain_lr · this
    #: after ``pretrain``, a ``pretrain_fit`` phase trains the labeled items on (lr pretrain_lr ·
    #: pretrain_end_factor, pre-training's Adam state) until their training accuracy
    #: (``retrain_metric``) reaches this, at most ``max_pretrain_fit_epochs``; None = no such phase
    pretrain_threshold: float | None = None
    max_pretrain_fit_epochs: int = 300
    lr: float | None = 1e-4  #: constant lr of the rounds; None = train.lr
    max_rounds: int = 100  #: rounds of (unlabeled epoch, labeled retraining); 0 = pre-training only
    #: image mode: stop when fewer than this share of the items change class between rounds (DEC's
    #: rule; the recipes: 0.001); None = max_rounds only (required in pixel mode)
    change_tol: float | None = None
    balance: bool = True  #: P′ = n_min items (pixels) per predicted class; False = all
    dec_iters: int | None = None  #: iterations of each unlabeled epoch; None = one pass over P′
    retrain_threshold: float = 1.0  #: labeled training accuracy that ends a retraining phase
    retrain_metric: Literal["accuracy", "balanced_accuracy"] = "accuracy"
    max_retrain_epochs: int = 50  #: cap on the epochs of one retraining phase
    #: iterations per pre-training / retraining epoch: "pass" = one pass over the labeled items,
    #: "run" = train.iters_per_epoch
    epoch_iters: Literal["pass", "run"] = "pass"
    l2_weight: float = 1e-4  #: Σ w² over conv / dense weights, added to every loss
    sweep_batch_size: int = 256  #: batch size of the prediction sweeps
    #: validate during training (monitoring, and ``best.pt`` over the rounds); False = no phase
    #: validates, the model as training left it is the one evaluated (no validation labels needed)
    validate: bool = True

    def __post_init__(self) -> None:
        for name in ("pretrain_epochs", "max_rounds"):
            if getattr(self, name) < 0:
                raise FieldError(name, f"must be >= 0, got {getattr(self, name)}")
        if self.pretrain_epochs == 0 and self.max_rounds == 0 and self.pretrain_threshold is None:
            raise FieldError("pretrain_epochs", "0 needs max_rounds >= 1 (there would be nothing to train)")
        for name in ("pretrain_lr", "lr"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise FieldError(name, f"must be > 0, got {value}")
        if not 0 < self.pretrain_end_factor <= 1:
            raise FieldError("pretrain_end_factor", f"must be in (0, 1], got {self.pretrain_end_factor}")
        if self.change_tol is not None and not 0 <= self.change_tol < 1:
            raise FieldError("change_tol", f"must be in [0, 1), got {self.change_tol}")
        if self.dec_iters is not None and self.dec_iters < 1:
            raise FieldError("dec_iters", f"must be >= 1, got {self.dec_iters}")
        if self.pretrain_threshold is not None and self.pretrain_lr is None:
            raise FieldError(
                "pretrain_threshold",
                "needs a pretrain_lr (pretrain_fit trains at pretrain_lr · pretrain_end_factor)",
            )
        if self.pretrain_threshold is not None and not 0 <= self.pretrain_threshold <= 1:
            raise FieldError(
                "pretrain_threshold", f"must be in [0, 1] or null, got {self.pretrain_threshold}"
            )
        if not 0 <= self.retrain_threshold <= 1:
            raise FieldError("retrain_threshold", f"must be in [0, 1], got {self.retrain_threshold}")
        for name in ("max_retrain_epochs", "max_pretrain_fit_epochs", "sweep_batch_size"):
            if getattr(self, name) < 1:
                raise FieldError(name, f"must be >= 1, got {getattr(self, name)}")
        if self.l2_weight < 0:
            raise FieldError("l2_weight", f"must be >= 0, got {self.l2_weight}")


def round_of(phase: str) -> tuple[str, int] | None:
    """``"dec3"`` → ``("dec", 3)``, ``"labeled2"`` → ``("labeled", 2)``; other names → None."""
    for kind in ("dec", "labeled"):
        suffix = phase[len(kind) :]
        if phase.startswith(kind) and suffix.isdigit():
            return kind, int(suffix)
    return None


def balanced_subset(assign: torch.Tensor, rng: np.random.Generator) -> list[int]:
    """Positions of a class-balanced subset: for every class some item is assigned to, ``n_min`` of
    its items at random, ``n_min`` the smallest such class's count; in increasing order.

    Examples:
        >>> balanced_subset(torch.tensor([0, 0, 0, 1, 2, 2]), np.random.default_rng(0))[-3:]
        [3, 4, 5]
    """
    assign = assign.cpu()
    groups = [torch.nonzero(assign == c).flatten().numpy() for c in torch.unique(assign).tolist()]
    n_min = min(len(g) for g in groups)
    chosen = [g[rng.permutation(len(g))[:n_min]] for g in groups]
    return sorted(int(i) for i in np.concatenate(chosen))


def accuracy_counts(logits: torch.Tensor, truth: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per true class, the correctly predicted and the labeled items (pixels) of one batch.

    Shape:
        logits ``[B, K, *S]``, truth ``[B, *S]`` (``IGNORE_INDEX`` = unlabeled) → ``[B, 2, K]``.
    """
    pred = logits.argmax(1)
    valid = truth != IGNORE_INDEX
    cls = torch.where(valid, truth, torch.zeros_like(truth))
    one_hot = F.one_hot(cls, num_classes).to(logits.dtype) * valid.unsqueeze(-1)  # [B, *S, K]
    correct = one_hot * (pred == truth).unsqueeze(-1)
    dims = tuple(range(1, one_hot.ndim - 1))
    return torch.stack([correct.sum(dims) if dims else correct, one_hot.sum(dims) if dims else one_hot], 1)


@register("ssldec")
class SSLDEC(Method):
    """Pre-training, then rounds of DEC targets on P′ and labeled retraining (Alg. 1)."""

    config_class = SSLDECConfig
    tasks = ("segment", "classify")

    def __init__(self, cfg: SSLDECConfig, **kwargs):
        super().__init__(cfg, **kwargs)
        self.model = build_model(self.model_cfg, self.in_channels, self.num_classes)
        # pixel mode's frozen snapshot of the model at each round's refresh (a copy draws no RNG, so
        # the model's initialisation equals that of any other method with the same seed)
        self.teacher = copy.deepcopy(self.model).requires_grad_(False)
        k = self.num_classes
        self.register_buffer("draw_seed", torch.randint(0, 2**62, (), dtype=torch.long))
        #: DEC's stopping rule fired: every later phase is skipped
        self.register_buffer("stopped", torch.zeros((), dtype=torch.bool))
        #: f over the last sweep (pixel mode's targets), and the pixels' keep rates per class
        self.register_buffer("frequency", torch.zeros(k))
        self.register_buffer("keep_rate", torch.ones(k))
        #: image mode: every item's predicted class at the previous refresh (-1 = none yet)
        self.register_buffer("previous_assign", torch.empty(0, dtype=torch.long))
        self.targets: torch.Tensor | None = None  # image mode's P [N, K] of this round (recomputed)
        self.pixelwise: bool | None = None  # set by the first sweep (the output's dims)
        #: what the last plan measured (subset size, class changes, training accuracy), logged with
        #: the losses of the epoch it planned; recomputed by every plan, so also after a resumption
        self.round_stats: dict[str, float] = {}

    # ------------------------------------------------------------------------------ state
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # previous_assign's length is the unlabeled stream's, unknown until the first refresh
        key = prefix + "previous_assign"
        if key in state_dict:
            self.previous_assign = torch.empty_like(state_dict[key], device=self.previous_assign.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    # ------------------------------------------------------------------------------ phases
    def phases(self) -> list[Phase]:
        cfg = self.cfg
        phases = []
        fit = cfg.pretrain_threshold is not None
        keep = FIT if fit else None  # pre-training's Adam state goes on into pretrain_fit
        if cfg.pretrain_epochs:
            pre = OptimizerConfig(lr=cfg.pretrain_lr, scheduler="linear", end_factor=cfg.pretrain_end_factor)
            phases.append(Phase("pretrain", epochs=cfg.pretrain_epochs, optimizers=(OptimizerSpec("main", pre, keep),),
                                epoch_iters=cfg.epoch_iters, final=cfg.max_rounds == 0, validate=cfg.validate))  # fmt: skip
        if fit:
            end = OptimizerConfig(lr=cfg.pretrain_lr * cfg.pretrain_end_factor, scheduler="none")
            phases.append(Phase(FIT, epochs=cfg.max_pretrain_fit_epochs, optimizers=(OptimizerSpec("main", end, keep),),
                                epoch_iters=cfg.epoch_iters, final=cfg.max_rounds == 0, validate=cfg.validate))  # fmt: skip
        second = (OptimizerSpec("main", OptimizerConfig(lr=cfg.lr, scheduler="none"), persist=SECOND),)
        for r in range(1, cfg.max_rounds + 1):
            phases.append(Phase(f"dec{r}", epochs=1, optimizers=second, streams=("unlabeled",), epoch_iters="pass",
                                validate=cfg.validate))  # fmt: skip
            phases.append(Phase(f"labeled{r}", epochs=cfg.max_retrain_epochs, optimizers=second,
                                epoch_iters=cfg.epoch_iters, validate=cfg.validate))  # fmt: skip
        return phases

    def planned_iterations(self, phase):
        where = round_of(phase)
        if where is None or where[0] != "dec":
            return None
        return 0 if self.cfg.targets == "none" else self.cfg.dec_iters  # see plan_epoch / _refresh

    def plan_epoch(self, phase, epoch, sweep):
        where = round_of(phase)
        self.round_stats = {}
        if phase == FIT:
            return self._fit_until(self.cfg.pretrain_threshold, sweep)
        if where is None:
            return None
        if bool(self.stopped):
            return EpochPlan(done=True)
        kind, r = where
        if kind == "labeled":
            return self._fit_until(self.cfg.retrain_threshold, sweep)
        if self.cfg.targets == "none":
            return EpochPlan(done=True)
        return self._refresh(r, sweep) if epoch == 0 else None

    def _fit_until(self, threshold: float, sweep) -> EpochPlan | None:
        """Ends the phase once the labeled items' training accuracy (``retrain_metric``, clean
        images, eval mode) reaches ``threshold``; else one more epoch."""
        counts = sweep("labeled", self._accuracy_counts, batch_size=self.cfg.sweep_batch_size).sum(0)
        correct, total = counts[0], counts[1]
        if self.cfg.retrain_metric == "accuracy":
            score = float(correct.sum() / total.sum().clamp_min(1))
        else:
            seen = total > 0
            score = float((correct[seen] / total[seen]).mean()) if seen.any() else 0.0
        self.round_stats = {"train_accuracy": score}  # logged with this epoch's losses
        return EpochPlan(done=True) if score >= threshold else None

    def _refresh(self, r: int, sweep) -> EpochPlan:
        """Round ``r``'s targets from a sweep over the unlabeled stream (see the module docstring)."""
        summary = sweep("unlabeled", self._summary, batch_size=self.cfg.sweep_batch_size)  # [N, 2, K]
        mass, counts = summary[:, 0], summary[:, 1]
        n_c = counts.sum(0)
        predicted = n_c > 0
        self.frequency.copy_(mass.sum(0))
        stats = {"predicted_classes": float(predicted.sum())}
        iters = self.cfg.dec_iters
        if self.pixelwise:
            if self.cfg.change_tol is not None:
                raise ConfigError(
                    "method.change_tol: per-pixel SSLDEC does not keep every pixel's class between rounds; set "
                    "change_tol: null (max_rounds ends the rounds)"
                )
            rate = torch.where(predicted, n_c[predicted].min() / n_c.clamp_min(1), torch.zeros_like(n_c))
            self.keep_rate.copy_(rate if self.cfg.balance else torch.ones_like(rate))
            self.teacher.load_state_dict(self.model.state_dict())
            self.round_stats = stats
            return EpochPlan(iters=iters)
        assign = counts.argmax(1)
        if len(self.previous_assign) == len(assign):
            change = float((assign != self.previous_assign).float().mean())
            stats["assign_change"] = change
            if self.cfg.change_tol is not None and change < self.cfg.change_tol:
                self.stopped.fill_(True)
                self.round_stats = stats
                return EpochPlan(done=True)
        self.previous_assign = assign.clone()
        self.targets = (
            target_distribution(mass, self.frequency)
            if self.cfg.targets == "dec"
            else F.one_hot(assign, self.num_classes).to(mass.dtype)
        )
        subset = list(range(len(assign)))
        if self.cfg.balance:
            subset = balanced_subset(assign, np.random.default_rng([int(self.draw_seed), r, SUBSET_SALT]))
        stats["subset"] = float(len(subset))
        self.round_stats = stats
        return EpochPlan(subsets={"unlabeled": subset}, iters=iters)

    def _summary(self, b: Batch) -> torch.Tensor:
        """Per item: q (summed over its pixels) and the count of its pixels per predicted class."""
        q = self.model(b.image).float().softmax(1)
        self.pixelwise = q.ndim > 2
        counts = F.one_hot(q.argmax(1), q.shape[1]).movedim(-1, 1).to(q.dtype)
        dims = tuple(range(2, q.ndim))
        return torch.stack([q.sum(dims) if dims else q, counts.sum(dims) if dims else counts], 1)

    def _accuracy_counts(self, b: Batch) -> torch.Tensor:
        logits = self.model(b.image)
        return accuracy_counts(logits, b.label if logits.ndim == 2 else b.mask, self.num_classes)

    # ------------------------------------------------------------------------------ training
    def l2_penalty(self) -> torch.Tensor:
        """Σ w² over the weights of the network's convolutions and dense layers."""
        weights = [
            m.weight for m in self.model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))
        ]
        return torch.stack([w.pow(2).sum() for w in weights]).sum()

    def training_step(self, batch, phase, optimizer):
        where = round_of(phase)
        if where is not None and where[0] == "dec":
            stream = "unlabeled"
            unl = batch[stream]
            logits = self.model(unl.image)
            out = self.dec_loss(logits, unl)
        else:
            stream = "labeled"
            lab = batch[stream]
            logits = self.model(lab.image)
            out = {"ce": masked_cross_entropy(logits, lab.label if logits.ndim == 2 else lab.mask)}
            out["loss"] = out["ce"]
        out.update({k: torch.tensor(v) for k, v in self.round_stats.items()})
        if self.cfg.l2_weight:
            out["l2"] = self.l2_penalty()
            out["loss"] = out["loss"] + self.cfg.l2_weight * out["l2"]
        if len(self.regularizers):
            reg = self.regularization({stream: logits}, batch)
            out["loss"] = out["loss"] + reg.pop("reg_total")
            out.update(reg)
        return out

    def dec_loss(self, logits: torch.Tensor, unl: Batch) -> dict[str, torch.Tensor]:
        """KL(P ‖ Q) of an unlabeled batch: P from the round's sweep (image mode) or from the frozen
        teacher on the same view (pixel mode). Outside the engine (no sweep yet), P comes from the
        batch's own detached q with the batch's cluster frequency."""
        log_q = logits.log_softmax(1)
        if logits.ndim == 2:
            if self.targets is not None:
                p = self.targets.to(logits.device)[unl.index.to(logits.device)]
            else:
                p = self._targets_of(log_q.detach().exp(), None)
            kl = dec_kl(log_q, p)
            return {"loss": kl, "kl": kl}
        if bool(self.frequency.sum() > 0):
            with torch.no_grad():
                was_training = self.teacher.training
                self.teacher.eval()
                try:
                    q_t = self.teacher(unl.image).float().softmax(1)
                finally:
                    self.teacher.train(was_training)
            p = self._targets_of(q_t, self.frequency)
        else:
            q_t = log_q.detach().float().exp()
            p = self._targets_of(q_t, None)
        keep = self._pixel_keep(q_t.argmax(1), unl)
        per_pixel = dec_kl(log_q, p.to(log_q.dtype), reduction="none")
        kl = (per_pixel * keep).sum() / mean_denominator(keep.sum()).clamp_min(1.0)
        return {"loss": kl, "kl": kl, "kept": keep.mean()}

    def _targets_of(self, q: torch.Tensor, frequency: torch.Tensor | None) -> torch.Tensor:
        if self.cfg.targets == "hard":
            return F.one_hot(q.argmax(1), q.shape[1]).movedim(-1, 1).to(q.dtype)
        if frequency is None:
            frequency = batch_sum(cluster_frequency(q))
        return target_distribution(q, frequency)

    def _pixel_keep(self, predicted: torch.Tensor, unl: Batch) -> torch.Tensor:
        """1 for the pixels of the balanced subset: each kept with its predicted class's keep rate, the
        draw keyed by the batch's samples (the same under resumption and DDP)."""
        rate = self.keep_rate.to(predicted.device)[predicted]
        if bool((rate >= 1).all()):
            return torch.ones_like(rate)
        shape = tuple(predicted.shape[1:])
        uniform = np.stack([g.random(shape, dtype=np.float32) for g in unl.generators(PIXEL_SALT)])
        return (torch.from_numpy(uniform).to(rate.device) < rate).to(rate.dtype)
