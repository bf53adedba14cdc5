"""Consistency losses of weak-to-strong semi-supervised methods (mean teacher, FixMatch, UniMatch, CPS).

- :func:`softmax_mse`: mean squared difference of the student's softmax and a target distribution
  (the mean-teacher consistency, Tarvainen & Valpola 2017).
- :func:`pseudo_labels`: hard labels and their confidence from target probabilities.
- :func:`confident_cross_entropy`: cross-entropy to hard pseudo-labels on the pixels whose confidence
  reaches a threshold τ (FixMatch, UniMatch); the other pixels contribute zero, and the mean runs over
  all valid pixels (as UniMatch's code does), so the loss shrinks when few pixels are confident.

All work for any number of spatial dims: logits ``[B, K, *S]``. Under DDP the means run over the
global batch (:mod:`semiseg.parallel`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from semiseg.core import IGNORE_INDEX
from semiseg.parallel import mean_denominator, share


def softmax_mse(
    logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean over pixels (and classes) of ``(softmax(logits) - target)²``.

    Args:
        logits: Student logits.
        target: Target probabilities (e.g. an EMA teacher's softmax), no gradient expected.
        valid: Optional ``[B, *S]`` bool mask of the pixels that count.

    Shape:
        logits, target ``[B, K, *S]`` → scalar.

    Examples:
        >>> x = torch.zeros(1, 2, 2, 2)
        >>> float(softmax_mse(x, torch.full((1, 2, 2, 2), 0.5)))
        0.0
    """
    if logits.shape != target.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and target {tuple(target.shape)} differ")
    sq = (logits.softmax(1) - target).square().mean(1)  # [B, *S]
    if valid is None:
        valid = torch.ones_like(sq, dtype=torch.bool)
    return (sq * valid).sum() / mean_denominator(valid.sum()).clamp(min=1)


def pseudo_labels(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard labels and their confidence (the maximum probability).

    Shape:
        probs ``[B, K, *S]`` → labels ``[B, *S]`` long, confidence ``[B, *S]`` float.
    """
    confidence, labels = probs.max(1)
    return labels, confidence


def confident_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    confidence: torch.Tensor,
    threshold: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy to ``labels`` on pixels with ``confidence >= threshold``, averaged over all valid
    pixels (``labels != IGNORE_INDEX``); masked pixels get exactly zero gradient.

    Returns:
        ``(loss, ratio)``: the loss and the fraction of valid pixels above the threshold.

    Shape:
        logits ``[B, K, *S]``, labels and confidence ``[B, *S]`` → two scalars.

    Examples:
        >>> logits = torch.zeros(1, 2, 1, 2)
        >>> loss, ratio = confident_cross_entropy(logits, torch.zeros(1, 1, 2, dtype=torch.long),
        ...                                       torch.tensor([[[0.99, 0.5]]]), 0.95)
        >>> round(float(loss), 4), float(ratio)
        (0.3466, 0.5)
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    valid = labels != IGNORE_INDEX
    keep = (confidence >= threshold) & valid
    ce = F.cross_entropy(logits, labels.masked_fill(~valid, 0), reduction="none")
    n_valid = valid.sum()
    loss = (ce * keep).sum() / mean_denominator(n_valid).clamp(min=1)
    return loss, share(keep, valid).detach()  # under DDP: this process's share of the global ratio


class SoftmaxMSE(nn.Module):
    def forward(self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None):
        return softmax_mse(logits, target, valid)


class ConfidentCrossEntropy(nn.Module):
    def __init__(self, threshold: float = 0.95):
        super().__init__()
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.threshold = threshold

    def forward(self, logits: torch.Tensor, labels: torch.Tensor, confidence: torch.Tensor):
        return confident_cross_entropy(logits, labels, confidence, self.threshold)
