"""Process-group set-up and the global-batch sampler.

A plain ``python``/``semiseg`` process is a single-process run. Under ``torchrun`` (``WORLD_SIZE``
> 1 in the environment) the run becomes PyTorch DDP: gloo on CPU, NCCL on CUDA. Only rank 0
writes files. The other ranks wait for it at the end (:func:`finish`, a barrier of a gloo group
with a long timeout, since rank 0's final evaluation can take long) before any rank tears the
group down: a rank that left early could be torn down abnormally and make torchrun stop rank 0
in the middle of its evaluation.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

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


def resolve_device(option: str, local_rank: int = 0, where: str = "train.device") -> torch.device:
    """The torch device of ``option`` ("auto", "cpu", "cuda", "cuda:1"); ``where`` names the option in
    errors (``--device`` on the command line)."""
    if option == "auto":
        return _rank_gpu(local_rank, where) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(option)
    except RuntimeError:
        raise ConfigError(f"{where}: invalid device '{option}'") from None
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"{where}: '{option}' is not supported (cpu, cuda or auto)")
    if device.type == "cpu":  # "cpu:0" names the one CPU device too (torch.load's map_location refuses it)
        return torch.device("cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{where}: '{option}' requested but CUDA is not available")
    if device.type == "cuda" and device.index is None:
        device = _rank_gpu(local_rank, where)
    return device


def _rank_gpu(local_rank: int, where: str) -> torch.device:
    """The GPU of local rank ``local_rank``: its index among the visible GPUs, or the only one when a
    launcher gives each process one GPU (``CUDA_VISIBLE_DEVICES`` per process, e.g. SLURM)."""
    count = torch.cuda.device_count()
    if count == 1:
        return torch.device("cuda", 0)
    if local_rank >= count:
        raise ConfigError(f"{where}: local rank {local_rank} has no GPU of its own ({count} visible)")
    return torch.device("cuda", local_rank)


def setup(device_option: str) -> tuple[DistInfo, torch.device]:
    """Join the process group if launched by torchrun; return the rank info and this rank's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    info = DistInfo(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_option, info.local_rank)
    if (
        info.enabled
        and device.type == "cuda"
        and torch.cuda.device_count() > 1
        and device.index != info.local_rank
    ):
        raise ConfigError(
            f"train.device: '{device_option}' names one GPU for all {world} processes; under torchrun each "
            "process takes the GPU of its local rank: use cuda or auto"
        )
    if info.enabled and device.type == "cuda":
        torch.cuda.set_device(device)  # also when the group exists: collectives run on the current device
    if info.enabled and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
        global _FINAL_GROUP
        _FINAL_GROUP = dist.new_group(backend="gloo", timeout=FINAL_TIMEOUT)
    return info, device


#: how long the other ranks wait for rank 0's final evaluation and files (:func:`finish`)
FINAL_TIMEOUT = timedelta(days=2)
_FINAL_GROUP = None


def finish(info: DistInfo) -> None:
    """Every rank waits here until all reach it (rank 0 after writing its results)."""
    if info.enabled and dist.is_initialized() and _FINAL_GROUP is not None:
        dist.barrier(group=_FINAL_GROUP)


@contextlib.contextmanager
def main_first(info: DistInfo) -> Iterator[None]:
    """Rank 0 runs the block first, then the other ranks (at once): work whose results rank 0 leaves
    on disk for the others, such as the on-disk store's entries of volumes on their training grid,
    which every rank would otherwise build at the same time (correct, since the first rename wins,
    but each rank repeating the work). Rank 0 releases the others when it leaves the block, also on
    an error, so that they fail on their own (the same data error) instead of waiting. The barrier
    is that of the long-timeout group of :func:`finish` (a first build of a large dataset can take
    longer than the default 30 minutes), or the default group when :func:`setup` did not make it.
    The cost: data that needs no store (2D images read eagerly) is read by rank 0, then by the
    others, instead of by all at once."""
    if not info.enabled or not dist.is_initialized():
        yield
        return
    if not info.is_main:
        dist.barrier(group=_FINAL_GROUP)
        yield
        return
    try:
        yield
    finally:
        dist.barrier(group=_FINAL_GROUP)


def teardown() -> None:
    global _FINAL_GROUP
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _FINAL_GROUP = None


def comm_device() -> torch.device:
    """The device the default process group's collectives take tensors on: this rank's CUDA device
    under NCCL (which refuses CPU tensors), else the CPU (gloo)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_mean(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The mean of ``values`` over the processes, on ``values``' device (reduced on :func:`comm_device`)."""
    if not info.enabled:
        return values
    reduced = values.to(comm_device(), copy=True)
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return (reduced / info.world_size).to(values.device)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def broadcast_flag(flag: bool, info: DistInfo) -> bool:
    if not info.enabled:
        return flag
    t = torch.tensor([int(flag)], device=comm_device())
    dist.broadcast(t, src=0)
    return bool(t.item())


def epoch_batches(
    n_items: int,
    global_batch: int,
    iters: int,
    *,
    seed: int,
    epoch: int,
    stream: int,
    info: DistInfo,
    positions: bool = False,
) -> list[list[int]] | list[list[tuple[int, int]]]:
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
    out = []
    for b in range(iters):
        first = b * global_batch + start
        chunk = order[first : first + per_rank]
        out.append([(i, first + j) for j, i in enumerate(chunk)] if positions else chunk)
    return out


class SyncBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """Batch norm whose training statistics are those of the global batch (all DDP processes).

    Works on CPU (gloo) and GPU, for any number of spatial dims; torch's ``nn.SyncBatchNorm`` is
    CUDA-only. Mean and variance are reduced in two passes (as a single process computes them)
    with a differentiable all-reduce, so gradients flow through the global statistics exactly as
    in one process. Its ``state_dict`` is a plain ``BatchNorm``'s: checkpoints load into models
    without it. Outside training, or in one process, it is plain batch norm.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {x.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (
            self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        ):
            return super().forward(x)
        from semiseg.parallel import differentiable_all_reduce as all_reduce

        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        # statistics in float32 at least: under autocast x may be float16, whose largest value (65504)
        # a per-process voxel count exceeds (4 x 128 x 128), and whose sums of squares overflow
        dtype = x.dtype
        x = x.float() if dtype in (torch.float16, torch.bfloat16) else x
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        stats = all_reduce(torch.cat([x.sum(dims), count]))
        n = stats[-1].detach()
        mean = stats[:-1] / n
        var = all_reduce((x - mean.view(shape)).square().sum(dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * n / (n - 1).clamp(min=1), alpha=m)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(dtype)


def convert_sync_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """Replace every batch-norm layer of ``module`` (in place) by :class:`SyncBatchNorm`, keeping its
    parameters (the same ``Parameter`` objects) and statistics."""
    for name, child in list(module.named_children()):
        if isinstance(child, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(child, SyncBatchNorm):
            sync = SyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                 child.track_running_stats)  # fmt: skip
            if child.affine:
                sync.weight, sync.bias = child.weight, child.bias
            if child.track_running_stats:
                sync.running_mean, sync.running_var = child.running_mean, child.running_var
                sync.num_batches_tracked = child.num_batches_tracked
            sync.train(child.training)
            setattr(module, name, sync)
        else:
            convert_sync_batchnorm(child)
    return module
