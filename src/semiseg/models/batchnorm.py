"""Batch-norm helpers for methods that pass perturbed images through a network.

Strong photometric views (jitter, blur, noise, CutMix) have other intensity statistics than the
images a model is evaluated on. In training mode, batch norm normalises each batch with its own
statistics either way, but every pass also moves the running statistics that evaluation uses.
:func:`frozen_running_stats` lets a pass use batch statistics without updating them (FixMatch /
UniMatch's ``strong_bn_stats: false``). Whether that helps is not established: in two quick ACDC
development runs it did not (``benchmarks/dev/semi-acdc-dev.md``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn as nn


@contextlib.contextmanager
def frozen_running_stats(module: nn.Module) -> Iterator[None]:
    """Within this block, batch-norm layers of ``module`` normalise with batch statistics as usual
    (training mode) but leave their running statistics (and counters) exactly unchanged.

    Examples:
        >>> bn = nn.BatchNorm1d(2).train()
        >>> with frozen_running_stats(bn):
        ...     _ = bn(torch.randn(8, 2) + 5)
        >>> bn.running_mean.tolist(), int(bn.num_batches_tracked)
        ([0.0, 0.0], 0)
    """
    layers = [
        m
        for m in module.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats and m.training
    ]
    saved = [(m.momentum, m.num_batches_tracked.clone()) for m in layers]
    for m in layers:
        m.momentum = 0.0  # running = (1 - 0) · running + 0 · batch: unchanged
    try:
        yield
    finally:
        with torch.no_grad():
            for m, (momentum, tracked) in zip(layers, saved):
                m.momentum = momentum
                m.num_batches_tracked.copy_(tracked)
