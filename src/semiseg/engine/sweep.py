"""Sweeps: a function over every item of a data stream, for methods that plan their epochs.

:class:`TrainerSweep` implements :class:`semiseg.phases.Sweep` for the trainer: it is what
``Method.plan_epoch`` receives (e.g. SSLDEC's soft assignments and targets over the labeled and
unlabeled images before each of its unlabeled epochs).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader

from semiseg.core import Batch
from semiseg.errors import ConfigError
from semiseg.phases import Phase, StreamSpec

if TYPE_CHECKING:
    from semiseg.engine.trainer import Trainer


class TrainerSweep:
    """``sweep(stream, fn)`` over the streams of ``phase`` (or the split sources "labeled" /
    "unlabeled"): clean images in item order, the method in eval mode (its mode restored), no
    gradient. Under DDP process ``r`` of ``W`` takes items ``r, r + W, ...`` (the last item repeated to
    even the shares), and the results are gathered, so every process gets the whole, in order.

    Shape:
        ``fn``: a :class:`~semiseg.core.Batch` of ``b`` items → a tensor ``[b, ...]``; the sweep →
        ``[N, ...]`` for the stream's ``N`` items, on the trainer's device.
    """

    def __init__(self, trainer: Trainer, phase: Phase):
        self.trainer, self.phase = trainer, phase

    def spec(self, stream: str) -> StreamSpec:
        for spec in self.trainer.stream_specs(self.phase):
            if spec.name == stream:
                return spec
        if stream in ("labeled", "unlabeled"):
            return StreamSpec(stream, source=stream)
        names = ", ".join(s.name for s in self.trainer.stream_specs(self.phase))
        raise ConfigError(f"phase '{self.phase.name}': no stream '{stream}' to sweep (streams: {names})")

    @torch.no_grad()
    def __call__(
        self, stream: str, fn: Callable[[Batch], torch.Tensor], *, batch_size: int | None = None
    ) -> torch.Tensor:
        t = self.trainer
        ds = t.stream_set(self.spec(stream)).clean()
        n = len(ds)
        world = t.info.world_size
        positions = share_positions(n, world, t.info.rank)
        size = batch_size or t.cfg.train.batch_size
        chunks = [positions[i : i + size] for i in range(0, len(positions), size)]
        loader = DataLoader(ds, batch_sampler=chunks, num_workers=t.cfg.train.num_workers)
        method = t.method
        was_training = method.training
        method.eval()
        try:
            parts = [fn(t.to_batch(raw)) for raw in loader]
        finally:
            method.train(was_training)
        mine = torch.cat(parts) if parts else torch.empty(0, device=t.device)
        if world == 1:
            return mine[:n]
        from semiseg.parallel import all_gather_cat

        return merge_shares(all_gather_cat(mine), world, n)


def share_positions(n: int, world: int, rank: int) -> list[int]:
    """The items process ``rank`` of ``world`` sweeps: ``rank, rank + world, ...``, padded with the last
    item so that every process has ``ceil(n / world)``.

    Examples:
        >>> share_positions(5, 2, 0), share_positions(5, 2, 1)
        ([0, 2, 4], [1, 3, 4])
    """
    return [min(rank + world * j, n - 1) for j in range(math.ceil(n / world))] if n else []


def merge_shares(gathered: torch.Tensor, world: int, n: int) -> torch.Tensor:
    """The ``n`` items' results in item order, from the processes' shares concatenated in rank order
    (:func:`share_positions`).

    Examples:
        >>> shares = [torch.tensor(share_positions(5, 2, r)) for r in range(2)]
        >>> merge_shares(torch.cat(shares), 2, 5)
        tensor([0, 1, 2, 3, 4])
    """
    share = len(gathered) // world
    rest = gathered.shape[1:]
    return gathered.view(world, share, *rest).transpose(0, 1).reshape(world * share, *rest)[:n]
