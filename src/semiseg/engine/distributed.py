"""Process-group set-up and the global-batch sampler.

A plain ``python``/``semiseg`` process is a single-process run. Under ``torchrun`` (``WORLD_SIZE``
> 1 in the environment) the run becomes PyTorch DDP: gloo on CPU, NCCL on CUDA. Only rank 0
writes files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from semiseg.errors import ConfigError


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(option: str, local_rank: int = 0) -> torch.device:
    if option == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(option)
    except RuntimeError:
        raise ConfigError(f"train.device: invalid device '{option}'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device: '{option}' requested but CUDA is not available")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def setup(device_option: str) -> tuple[DistInfo, torch.device]:
    """Join the process group if launched by torchrun; return the rank info and this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    info = DistInfo(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_option, info.local_rank)
    if info.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
    return info, device


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if not info.enabled:
        return values
    values = values.clone()
    dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values / info.world_size


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_flag(flag: bool, info: DistInfo) -> bool:
    if not info.enabled:
        return flag
    t = torch.tensor([int(flag)])
    dist.broadcast(t, src=0)
    return bool(t.item())


def epoch_batches(
    n_items: int, global_batch: int, iters: int, *, seed: int, epoch: int, stream: int, info: DistInfo
) -> list[list[int]]:
    """This rank's index lists for ``iters`` global batches of one epoch.

    The global order is a chain of seeded permutations of ``range(n_items)`` (re-shuffled each time
    the data runs out, so small labeled sets fill large batches). Global batch ``b`` is split into
    ``world_size`` equal consecutive chunks; rank ``r`` takes chunk ``r``. With equal per-rank batches
    and per-sample-mean losses, DDP's gradient average equals the single-process gradient of the
    global batch.
    """
    if global_batch % info.world_size:
        raise ConfigError(
            f"train.batch_size: {global_batch} is not divisible by the number of processes ({info.world_size})"
        )
    need = iters * global_batch
    order: list[int] = []
    cycle = 0
    while len(order) < need:
        rng = np.random.default_rng([seed, epoch, stream, cycle])
        order.extend(rng.permutation(n_items).tolist())
        cycle += 1
    per_rank = global_batch // info.world_size
    start = info.rank * per_rank
    return [order[b * global_batch + start : b * global_batch + start + per_rank] for b in range(iters)]
