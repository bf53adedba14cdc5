"""Supervised losses on labeled pixels: cross-entropy and soft Dice that skip ``IGNORE_INDEX``.

Both work for dense masks and sparse masks alike (a sparse mask is a dense one where most pixels
are ``IGNORE_INDEX``); ignored pixels receive exactly zero gradient.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from semiseg.core import IGNORE_INDEX
from semiseg.parallel import batch_sum, mean_denominator


def masked_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = IGNORE_INDEX, reduction: str = "mean"
) -> torch.Tensor:
    """Cross-entropy over labeled pixels only.

    Args:
        logits: Class scores.
        target: Class indices, ``ignore_index`` for unlabeled pixels.
        ignore_index: Value marking unlabeled pixels.
        reduction: "mean" (over labeled pixels of the batch; 0 if there are none) or "sum".
            Under DDP (inside :func:`semiseg.parallel.global_reduction`) the mean is over the labeled
            pixels of the global batch, as in one process.

    Shape:
        logits ``[B, K, *spatial]``, target ``[B, *spatial]`` → scalar.
    """
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    total = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum")
    if reduction == "sum":
        return total
    n = (target != ignore_index).sum()
    return total / mean_denominator(n).clamp(min=1)


def masked_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
    include_background: bool = False,
    smooth: float = 1e-5,
) -> torch.Tensor:
    """1 − soft Dice of the softmax over labeled pixels, batch-wise per class, averaged over classes.

    Classes absent from both prediction and target on the labeled pixels contribute a Dice of ~1
    (loss ~0) through ``smooth``. Under DDP the sums run over the global batch.

    Shape:
        logits ``[B, K, *spatial]``, target ``[B, *spatial]`` → scalar.
    """
    k = logits.shape[1]
    valid = (target != ignore_index).unsqueeze(1).to(logits.dtype)
    probs = logits.softmax(dim=1) * valid
    onehot = (
        F.one_hot(target.masked_fill(target == ignore_index, 0), k).movedim(-1, 1).to(logits.dtype) * valid
    )
    dims = [0] + list(range(2, logits.ndim))
    inter = batch_sum((probs * onehot).sum(dims))
    denom = batch_sum(probs.sum(dims) + onehot.sum(dims))
    dice = (2 * inter + smooth) / (denom + smooth)
    if not include_background and k > 1:
        dice = dice[1:]
    return 1.0 - dice.mean()


class MaskedCrossEntropy(nn.Module):
    def __init__(self, ignore_index: int = IGNORE_INDEX, reduction: str = "mean"):
        super().__init__()
        self.ignore_index, self.reduction = ignore_index, reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return masked_cross_entropy(logits, target, self.ignore_index, self.reduction)


class MaskedDice(nn.Module):
    def __init__(
        self, ignore_index: int = IGNORE_INDEX, include_background: bool = False, smooth: float = 1e-5
    ):
        super().__init__()
        self.ignore_index, self.include_background, self.smooth = ignore_index, include_background, smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return masked_dice_loss(logits, target, self.ignore_index, self.include_background, self.smooth)
