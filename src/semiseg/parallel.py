"""Cross-process reductions for losses and method state (a low layer: imports nothing from semiseg).

Under DDP every process sees a slice of the global batch and DDP averages the gradients. A loss
that is a mean over *items* (images) then equals the single-process loss, but a mean over a
*varying* count (labeled pixels of sparse or rotated masks) or a ratio of batch sums (soft Dice)
does not. Losses call :func:`mean_denominator` and :func:`batch_sum`, which are the identity in
one process and, inside :func:`global_reduction` (the trainer enters it around every training
step under DDP), make each process's loss the share of the global-batch loss that DDP's gradient
averaging needs. Outside training steps (validation on rank 0 only) they never communicate.

:func:`all_gather_cat` and :func:`all_reduce_` are for method state that must be the same on all
processes (a pseudo-label cache, cluster centres).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist

_reducing = False


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


@contextlib.contextmanager
def global_reduction(enabled: bool = True) -> Iterator[None]:
    """Within this block (and under DDP) losses reduce over the global batch."""
    global _reducing
    previous, _reducing = _reducing, enabled and is_distributed()
    try:
        yield
    finally:
        _reducing = previous


def reducing() -> bool:
    return _reducing


def mean_denominator(count: torch.Tensor) -> torch.Tensor:
    """The denominator that turns a local sum into this process's share of a global mean.

    One process: ``count``. Under DDP: global count / world size, so that DDP's average of the
    processes' gradients is the gradient of ``global sum / global count``.
    """
    if not _reducing:
        return count
    total = count.detach().to(torch.float64).clone()
    dist.all_reduce(total)
    return (total / dist.get_world_size()).to(count.dtype if count.is_floating_point() else torch.float32)


def share(hits: torch.Tensor, among: torch.Tensor) -> torch.Tensor:
    """The fraction of the ``among`` pixels that are ``hits`` (0 when there are none), for logged
    statistics: under DDP this process's share of the global fraction, so that the trainer's average
    of the logged values over processes is the fraction over the global batch (the processes' batches
    hold different numbers of ``among`` pixels, e.g. 3D patch padding).

    Examples:
        >>> float(share(torch.tensor([True, False, False]), torch.tensor([True, True, False])))
        0.5
        >>> float(share(torch.tensor([False]), torch.tensor([False])))
        0.0
    """
    return hits.sum() / mean_denominator(among.sum()).clamp(min=1e-6)


def batch_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum of ``values`` over all processes, differentiable (one process: ``values``).

    For losses built from batch sums (soft Dice): every process then computes the global-batch loss
    L; the all-reduce's backward sends each process the sum of all processes' gradients (W·dL), and
    DDP's average over the W processes leaves exactly dL.
    """
    if not _reducing:
        return values
    return differentiable_all_reduce(values)


def differentiable_all_reduce(values: torch.Tensor) -> torch.Tensor:
    """The sum of ``values`` over all processes with gradient (the backward all-reduces the gradients):
    ``torch.distributed.nn.functional.all_reduce``, whose deprecation notice (a FutureWarning pointing to
    a private API) is silenced here rather than printed by every process of every run."""
    import warnings

    from torch.distributed.nn.functional import all_reduce

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*all_reduce is deprecated", category=FutureWarning)
        return all_reduce(values)


def all_reduce_(values: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce (sum or mean) of method state; no-op in one process."""
    if is_distributed():
        dist.all_reduce(values)
        if op == "mean":
            values /= dist.get_world_size()
    return values


def all_gather_cat(values: torch.Tensor) -> torch.Tensor:
    """Concatenate ``values`` (same shape on every process) along dim 0 in rank order."""
    if not is_distributed():
        return values
    parts = [torch.empty_like(values) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, values.contiguous())
    return torch.cat(parts)
