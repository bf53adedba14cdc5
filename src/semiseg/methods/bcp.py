"""Bidirectional copy-paste (BCP: Bai, Chen, Li, Shen & Wang, "Bidirectional Copy-Paste for
Semi-Supervised Medical Image Segmentation", CVPR 2023; code: DeepMed-Lab-ECNU/BCP).

Two phases:

1. ``pretrain``: supervised training on copy-pasted labeled images. A box ``M`` (side
   ``box_ratio`` of each image side, 2/3 in the paper) of one labeled image is pasted into another
   and the masks are mixed the same way. Selected on validation, and the next phase starts from the
   best state (``restore_best``; the phase's validations do not compete for ``best.pt``).
2. ``selftrain``: a mean teacher. Student and EMA teacher both start from the pre-trained model
   (:meth:`BCP.on_phase_start`); the teacher (a submodule without gradients) follows the student
   after every step (:meth:`BCP.on_step_end`, decay ``ema_decay``). For each pair of a labeled
   image ``a`` (mask ``y_a``) and an unlabeled image ``u`` (teacher pseudo-label ``ŷ_u``)::

       x_in  = paste(u, a, M)      y_in  = paste(ŷ_u, y_a, M)    labeled box in the unlabeled image
       x_out = paste(a, u, M)      y_out = paste(y_a, ŷ_u, M)    unlabeled box in the labeled image

   (:func:`semiseg.ops.paste`: the second argument inside the box.) The student's loss on each
   mixed image is ``L(labeled-origin pixels) + alpha · L(unlabeled-origin pixels)`` with
   ``L = ce_weight · CE + dice_weight · Dice`` (paper §3, ``alpha = 0.5``); the two images'
   losses add up, with no ramp-up (the code computes a consistency ramp but does not use it).
   The student is the model that is validated and predicts.

Pseudo-labels are the teacher's argmax on the (weak view of the) unlabeled image, reduced per
foreground class to its largest connected component (``largest_component``; class 0 is taken as
background, where the other components go), as the public code does on ACDC. The teacher normalises
with its batch's statistics (``teacher_batch_stats``): the public code runs it in train mode.

Defaults and their sources. The public ACDC script (``ACDC_BCP_train.py``): box 2/3 of each side
at a random position, alpha 0.5, EMA decay 0.99 without warm-up, ``(CE + Dice) / 2`` (so
``ce_weight = dice_weight = 0.5``), largest connected components, copy-paste of labeled pairs in
pre-training with weight 1 on both regions. Pre-training 10k iterations and self-training 30k are
recalled from the paper's implementation details (§4; not verified against its text here) and
match the script's ``--pre_iterations 10000`` / ``--max_iterations 30000``, although the script's
pre-training loop in fact runs ``max_iterations`` (30k). The ACDC recipe uses 10k.

Deviations from the public code (paper details that could not be checked are stated as such):

- Box position: drawn per sample from ``Batch.generators`` (``box_placement: random``; the code
  draws one position per batch with the global NumPy RNG) or the centre of the image
  (``center``; the paper calls M "zero-centred", which could mean a centred box, while its
  abstract speaks of "a random crop" and the code places the box at random). Side =
  ``int(box_ratio · size)`` as the code, at least 1 pixel.
- Pairing: each labeled image ``i`` is mixed with unlabeled image ``i`` in both directions, so a
  step feeds ``2B`` mixed images to the student (the code splits each stream into halves,
  labeled half 1 ↔ unlabeled half 1 inwards and half 2 ↔ half 2 outwards: ``B`` mixed images;
  the paper's Fig. 3 also mixes two labeled and two unlabeled images). When the streams' batches
  differ in size (never in the engine, whose streams share ``train.batch_size``), the shorter
  one is cycled. In pre-training, labeled images are paired with their neighbour in the batch
  (0↔1, 2↔3, …; an odd last image is pasted into itself, i.e. not mixed), so every image is
  background once and box once; under DDP the pairs stay within a process's share of the batch
  and equal one process's when each process's share is even (the code: half 1 ↔ half 2).
- Losses: each region's loss is its own per-pixel mean (the code's ``mix_loss``), with the
  library's losses (:func:`~semiseg.losses.supervised.masked_cross_entropy`,
  :func:`~semiseg.losses.supervised.masked_dice_loss`: Dice over foreground classes,
  non-squared denominator), not the code's Dice with squared denominators over all classes.
  Unlabeled pixels of sparse masks stay ``IGNORE_INDEX`` through the paste.
- The EMA copies the student's buffers (batch-norm statistics) into the teacher
  (:func:`~semiseg.models.ema.ema_update_`); the code averages them like the weights (its EMA runs
  over the whole ``state_dict``). With ``teacher_batch_stats`` they do not enter the teacher's
  predictions.
- Where the paper's text could not be checked here (whether "zero-centred" means a centred box,
  how Fig. 3 pairs its two labeled and two unlabeled images, the pre-training length), the public
  code is followed, except for the pairing above.
- The self-training optimizer starts fresh (the code also restores the pre-training optimizer's
  state with the weights). One optimizer (the student's); the optimizer and learning rate are the
  run's (``train.*``); the code uses SGD, lr 0.01, momentum 0.9, weight decay 1e-4, no schedule.
- ``pretrain_epochs: 0`` skips pre-training: the starting model (e.g. ``train.init``) is then the
  initial student and teacher.

Configured regularisers (``method.regularizers``) act on the student's predictions of the
unmixed labeled images and of the weak view of the unlabeled images (extra forward passes, only
when a regulariser is configured).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from semiseg.config import FieldError, check_weights
from semiseg.core import IGNORE_INDEX, Batch, ignore_padding
from semiseg.methods import register
from semiseg.methods.base import Phase
from semiseg.methods.supervised import Supervised, SupervisedConfig
from semiseg.models.ema import ema_copy, ema_update_
from semiseg.ops import class_map, paste

#: salt of the per-sample box draws (Batch.generators)
BOX_SALT = 4217
PLACEMENTS = ("random", "center")


@dataclass
class BCPConfig(SupervisedConfig):
    ce_weight: float = 0.5  #: public code: (CE + Dice) / 2
    dice_weight: float = 0.5
    #: epochs of the copy-paste pre-training (None = train.epochs; 0 = none, start from train.init)
    pretrain_epochs: int | None = None
    box_ratio: float = 2 / 3  #: β: box side / image side, per axis (paper and code: 2/3)
    box_placement: Literal["random", "center"] = "random"  #: per-sample random position, or centred
    alpha: float = 0.5  #: weight of the unlabeled-origin pixels (paper and code: 0.5)
    ema_decay: float = 0.99  #: EMA decay of the teacher (code: 0.99)
    largest_component: bool = True  #: keep each class's largest connected component in pseudo-labels
    teacher_batch_stats: bool = True  #: teacher normalises with its batch's statistics (train mode)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.box_ratio <= 1.0:
            raise FieldError("box_ratio", f"must be in (0, 1], got {self.box_ratio}")
        if self.box_placement not in PLACEMENTS:
            raise FieldError("box_placement", f"must be one of {', '.join(PLACEMENTS)}")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise FieldError("ema_decay", f"must be in [0, 1], got {self.ema_decay}")
        check_weights(self, "alpha")
        if self.pretrain_epochs is not None and self.pretrain_epochs < 0:
            raise FieldError("pretrain_epochs", f"must be >= 0, got {self.pretrain_epochs}")


def box_masks(
    n: int,
    spatial: Sequence[int],
    ratio: float,
    rngs: Sequence[np.random.Generator] | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Box masks, True inside a box of side ``max(1, int(ratio · size))`` along every spatial axis.

    Args:
        n: Number of masks.
        spatial: Spatial shape ``S``.
        ratio: Box side / image side.
        rngs: One generator per mask: the box's start along each axis is uniform among the
            positions where it fits; ``None`` = every box centred.
        device: Device of the result.

    Shape:
        → ``[n, *S]`` bool.

    Examples:
        >>> box_masks(1, (6, 6), 2 / 3)[0].int().sum().item()
        16
        >>> box_masks(1, (4, 4), 0.5)[0].int().tolist()  # centred
        [[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    """
    sides = [max(1, int(ratio * s)) for s in spatial]
    out = torch.zeros((n, *spatial), dtype=torch.bool)
    for i in range(n):
        if rngs is None:
            starts = [(s - side) // 2 for s, side in zip(spatial, sides)]
        else:
            starts = [int(rngs[i].integers(0, s - side + 1)) for s, side in zip(spatial, sides)]
        out[(i, *(slice(a, a + side) for a, side in zip(starts, sides)))] = True
    return out.to(device) if device is not None else out


def largest_components(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Per image and foreground class (1..K-1), the largest connected component (full
    connectivity, as ``skimage.measure.label``'s default); other pixels become class 0.

    Shape:
        labels ``[B, *S]`` long → same.

    Examples:
        >>> x = torch.tensor([[[1, 1, 0, 1]]])
        >>> largest_components(x, 2).tolist()
        [[[1, 1, 0, 0]]]
    """
    from scipy import ndimage

    arr = labels.detach().cpu().numpy()
    out = np.zeros_like(arr)
    structure = ndimage.generate_binary_structure(arr.ndim - 1, arr.ndim - 1)
    for i in range(arr.shape[0]):
        for c in range(1, num_classes):
            components, count = ndimage.label(arr[i] == c, structure)
            if count:
                sizes = np.bincount(components.ravel())[1:]
                out[i][components == 1 + int(sizes.argmax())] = c
    return torch.from_numpy(out).to(labels.device)


def bidirectional_copy_paste(
    labeled: torch.Tensor,
    labeled_target: torch.Tensor,
    unlabeled: torch.Tensor,
    unlabeled_target: torch.Tensor,
    box: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The inward and outward mixes of BCP (paper §3): ``x_in`` has the labeled image inside
    the box and the unlabeled one outside; ``x_out`` the reverse. Targets are mixed alike.

    Returns:
        ``(x_in, y_in, x_out, y_out)``.

    Shape:
        labeled, unlabeled ``[B, C, *S]``; targets ``[B, *S]``; box ``[B, *S]`` bool → images
        ``[B, C, *S]`` and targets ``[B, *S]``.

    Examples:
        >>> a, u = torch.ones(1, 1, 1, 2), torch.zeros(1, 1, 1, 2)
        >>> box = torch.tensor([[[True, False]]])
        >>> x_in, _, x_out, _ = bidirectional_copy_paste(a, a[:, 0].long(), u, u[:, 0].long(), box)
        >>> x_in.flatten().tolist(), x_out.flatten().tolist()
        ([1.0, 0.0], [0.0, 1.0])
    """
    return (
        paste(unlabeled, labeled, box),
        paste(unlabeled_target, labeled_target, box),
        paste(labeled, unlabeled, box),
        paste(labeled_target, unlabeled_target, box),
    )


def neighbour_index(n: int) -> torch.Tensor:
    """Partner of each item: 0↔1, 2↔3, …; an odd last item is its own partner.

    Examples:
        >>> neighbour_index(5).tolist()
        [1, 0, 3, 2, 4]
    """
    idx = torch.arange(n) ^ 1
    return torch.where(idx < n, idx, torch.arange(n))


@register("bcp")
class BCP(Supervised):
    """Student (``model``, trained) and EMA teacher (``teacher``, a submodule without gradients)."""

    config_class = BCPConfig

    def __init__(self, cfg: BCPConfig, **kwargs):
        super().__init__(cfg, **kwargs)
        self.teacher = ema_copy(self.model)

    # ------------------------------------------------------------------------------ phases, hooks
    def phases(self):
        selftrain = Phase("selftrain", streams=("labeled", "unlabeled"))
        if self.cfg.pretrain_epochs == 0:
            return [selftrain]
        pretrain = Phase(
            "pretrain",
            epochs=self.cfg.pretrain_epochs,
            optional_streams=self.regularizer_streams(),
            final=False,
            restore_best=True,
        )
        return [pretrain, selftrain]

    def on_phase_start(self, phase):
        if phase == "selftrain":  # teacher = the (best) pre-trained student, or train.init's model
            self.teacher.load_state_dict(self.model.state_dict())

    def on_step_end(self, phase, optimizer):
        if phase == "selftrain":
            ema_update_(self.teacher, self.model, self.cfg.ema_decay)

    # ------------------------------------------------------------------------------ building blocks
    def boxes(self, keyed: Batch, n: int, spatial: Sequence[int], device) -> torch.Tensor:
        """``n`` box masks ``[n, *S]``, drawn from the samples of ``keyed`` (cycled) or centred."""
        rngs = None
        if self.cfg.box_placement == "random":
            gens = keyed.generators(BOX_SALT)
            rngs = [gens[i % len(gens)] for i in range(n)]
        return box_masks(n, spatial, self.cfg.box_ratio, rngs, device)

    @torch.no_grad()
    def teacher_labels(self, images: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """The teacher's pseudo-labels, ``IGNORE_INDEX`` outside ``valid`` (3D patch padding, which
        is background when the largest components are kept, so that no component lies on it).

        Shape:
            images ``[B, C, *S]``, valid ``[B, *S]`` bool → ``[B, *S]`` long.
        """
        self.teacher.train(self.cfg.teacher_batch_stats)
        labels = class_map(self.teacher(images))
        if valid is not None:
            labels = labels.masked_fill(~valid, 0)
        if self.cfg.largest_component:
            labels = largest_components(labels, self.num_classes)
        return ignore_padding(labels, valid)

    def region_loss(
        self, logits: torch.Tensor, target: torch.Tensor, region: torch.Tensor, outside_weight: float
    ) -> dict[str, torch.Tensor]:
        """``L(pixels in region) + outside_weight · L(the other pixels)``, each a per-pixel mean of
        :meth:`~semiseg.methods.supervised.Supervised.supervised_loss` (BCP's ``mix_loss``).

        Shape:
            logits ``[B, K, *S]``, target ``[B, *S]`` long, region ``[B, *S]`` bool → scalars.
        """
        inside = self.supervised_loss(logits, target.masked_fill(~region, IGNORE_INDEX))
        outside = self.supervised_loss(logits, target.masked_fill(region, IGNORE_INDEX))
        return {k: inside[k] + outside_weight * outside[k] for k in inside}

    def _regularize(self, out: dict, batch: dict[str, Batch]) -> dict:
        """Adds the configured regularisers on the student's predictions of the unmixed images."""
        if not len(self.regularizers):
            return out
        streams = sorted({s for r in self.regularizers for s in r.streams} & set(batch))
        reg = self.regularization({s: self.model(batch[s].image) for s in streams}, batch)
        out["loss"] = out["loss"] + reg.pop("reg_total")
        out.update(reg)
        return out

    # ------------------------------------------------------------------------------ steps
    def _pretrain_step(self, batch: dict[str, Batch]) -> dict:
        lab = batch["labeled"]
        n, spatial = len(lab), lab.image.shape[2:]
        box = self.boxes(lab, n, spatial, lab.image.device)
        partner = neighbour_index(n).to(lab.image.device)
        image = paste(lab.image, lab.image[partner], box)
        target = paste(lab.mask, lab.mask[partner], box)
        out = self.region_loss(self.model(image), target, box, 1.0)
        return self._regularize(out, batch)

    def _selftrain_step(self, batch: dict[str, Batch]) -> dict:
        lab, unl = batch["labeled"], batch["unlabeled"]
        n, spatial, device = max(len(lab), len(unl)), lab.image.shape[2:], lab.image.device
        li = torch.arange(n, device=device) % len(lab)
        ui = torch.arange(n, device=device) % len(unl)
        pseudo = self.teacher_labels(unl.image, unl.valid)  # padding stays ignored when pasted
        box = self.boxes(unl, n, spatial, device)
        x_in, y_in, x_out, y_out = bidirectional_copy_paste(
            lab.image[li], lab.mask[li], unl.image[ui], pseudo[ui], box
        )
        alpha = self.cfg.alpha
        inward = self.region_loss(self.model(x_in), y_in, box, alpha)  # labeled inside the box
        outward = self.region_loss(self.model(x_out), y_out, ~box, alpha)  # labeled outside
        out = {k: inward[k] + outward[k] for k in inward}
        out["loss_in"], out["loss_out"] = inward["loss"].detach(), outward["loss"].detach()
        return self._regularize(out, batch)

    def training_step(self, batch, phase, optimizer):
        if phase == "pretrain":
            return self._pretrain_step(batch)
        return self._selftrain_step(batch)
