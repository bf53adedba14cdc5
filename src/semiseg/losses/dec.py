"""Deep embedded clustering targets and loss (Xie et al. 2016, DEC; Enguehard et al. 2019, SSLDEC).

A clustering head gives each item (an image's embedding or a pixel's) a Student-t soft assignment
q over the clusters (:func:`semiseg.ops.student_t_log_assignment`, SSLDEC eq. 1). Training pulls q
toward a sharpened target distribution p that also divides by each cluster's frequency, so large
clusters do not swallow the others (eq. 2):

    p_ij = (q_ij² / f_j) / Σ_j' (q_ij'² / f_j'),   f_j = Σ_i q_ij   (over all items predicted),

and the loss is KL(P ‖ Q) = Σ_i Σ_j p_ij log(p_ij / q_ij) (eq. 3), with P held fixed. With a
one-hot P (labeled items) it is the cross-entropy of q. Reductions: ``"mean"`` over the items (and
pixels) that count (Keras's ``kld``, which the SSLDEC code used, takes the batch mean; the paper
writes a sum), ``"sum"``, or ``"none"``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn as nn

from semiseg.core import Batch
from semiseg.losses.regularizers import RegularizerSpec, register_regularizer
from semiseg.parallel import batch_sum

__all__ = ["DECLoss", "DECSpec", "DECTarget", "cluster_frequency", "dec_kl", "target_distribution"]


def cluster_frequency(q: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """f_j = Σ_i q_ij: each cluster's soft count over the items (and pixels) of ``q``.

    Shape:
        q ``[B, K, *S]`` → ``[K]``.
    """
    return q.movedim(dim, -1).reshape(-1, q.shape[dim]).sum(0)


def target_distribution(q: torch.Tensor, frequency: torch.Tensor | None = None, dim: int = 1) -> torch.Tensor:
    """DEC's target p (SSLDEC eq. 2): q squared, divided by the cluster frequency f, renormalised
    over the clusters. ``frequency`` = f over everything predicted (e.g. labeled + unlabeled items,
    accumulated over batches); None = f of ``q`` itself. Carries no gradient.

    Shape:
        q ``[B, K, *S]`` (rows sum to 1 over ``dim``), frequency ``[K]`` → p ``[B, K, *S]``.

    Examples:
        >>> q = torch.tensor([[2 / 3, 1 / 3], [1 / 3, 2 / 3]])
        >>> target_distribution(q)
        tensor([[0.8000, 0.2000],
                [0.2000, 0.8000]])
    """
    q = q.detach()
    if (q < 0).any():
        raise ValueError("q must be a probability distribution (non-negative)")
    f = cluster_frequency(q, dim) if frequency is None else frequency.detach().to(q)
    if f.shape != (q.shape[dim],):
        raise ValueError(f"frequency must be [{q.shape[dim]}], got {tuple(f.shape)}")
    shape = [1] * q.ndim
    shape[dim] = -1
    weight = q.pow(2) / f.clamp_min(torch.finfo(q.dtype).tiny).view(shape)
    return weight / weight.sum(dim, keepdim=True)


def dec_kl(
    log_q: torch.Tensor,
    p: torch.Tensor,
    weight: torch.Tensor | None = None,
    reduction: str = "mean",
    dim: int = 1,
) -> torch.Tensor:
    """KL(P ‖ Q) per item (SSLDEC eq. 3), P fixed (no gradient), with an optional per-item weight
    (0 = the item / pixel does not count, e.g. outside a balanced subset).

    Args:
        log_q: log q (e.g. :func:`semiseg.ops.student_t_log_assignment`), clusters on ``dim``.
        p: The target distribution (or a one-hot label distribution), the same shape.
        weight: ``[B, *S]`` non-negative weights; None = every item counts 1.
        reduction: ``"mean"`` (weighted mean over the items that count), ``"sum"`` or ``"none"``
            (``[B, *S]``).

    Shape:
        log_q, p ``[B, K, *S]`` → scalar (or ``[B, *S]`` with ``"none"``).

    Examples:
        >>> q = torch.tensor([[2 / 3, 1 / 3], [1 / 3, 2 / 3]])
        >>> round(float(dec_kl(q.log(), target_distribution(q), reduction="sum")), 6)
        0.087384
    """
    if log_q.shape != p.shape:
        raise ValueError(f"log_q {tuple(log_q.shape)} and p {tuple(p.shape)} differ")
    p = p.detach()
    per_item = torch.xlogy(p, p).sum(dim) - (p * log_q).sum(dim)
    if weight is not None:
        if weight.shape != per_item.shape:
            raise ValueError(f"weight must be {tuple(per_item.shape)}, got {tuple(weight.shape)}")
        per_item = per_item * weight
    if reduction == "none":
        return per_item
    if reduction == "sum":
        return per_item.sum()
    if reduction == "mean":
        count = per_item.numel() if weight is None else weight.sum()
        return per_item.sum() / torch.as_tensor(count, dtype=per_item.dtype).clamp_min(1e-12)
    raise ValueError(f"unknown reduction {reduction!r} (mean, sum or none)")


class DECTarget(nn.Module):
    """Module form of :func:`target_distribution`."""

    def __init__(self, dim: int = 1):
        super().__init__()
        self.dim = dim

    def forward(self, q: torch.Tensor, frequency: torch.Tensor | None = None) -> torch.Tensor:
        return target_distribution(q, frequency, self.dim)


class DECLoss(nn.Module):
    """Module form of :func:`dec_kl`."""

    def __init__(self, reduction: str = "mean", dim: int = 1):
        super().__init__()
        self.reduction, self.dim = reduction, dim

    def forward(
        self, log_q: torch.Tensor, p: torch.Tensor, weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        return dec_kl(log_q, p, weight, self.reduction, self.dim)


@register_regularizer("dec")
@dataclass
class DECSpec(RegularizerSpec):
    """Spec of the ``dec`` regulariser: KL(P ‖ Q) of the segmenter's (or classifier's) q toward DEC's
    target distribution P computed from the detached q of the same batch, with the cluster frequency
    f over the batch (all processes' under DDP). q = softmax of the logits, so it works on a plain
    softmax (a sharpening, class-balancing prior) and on a clustering head (``model.head:
    clustering``, whose output is log q). Per pixel for segmenters, per image for classifiers.

    ``method.regularizers: [{name: dec, weight: 0.1, streams: [unlabeled]}]``
    """

    streams: list[Literal["labeled", "unlabeled"]] = None  # type: ignore[assignment]
    reduction: Literal["mean", "sum"] = "mean"
    tasks: ClassVar[tuple[str, ...]] = ("segment", "classify")

    def __post_init__(self) -> None:
        if self.streams is None:
            self.streams = ["unlabeled"]  # DEC's targets are for the images without labels
        super().__post_init__()

    def loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        log_q = logits.log_softmax(dim=1)
        q = log_q.detach().exp()
        p = target_distribution(q, batch_sum(cluster_frequency(q)))
        return dec_kl(log_q, p, reduction=self.reduction)
