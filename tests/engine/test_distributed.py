"""Distributed training: the global-batch sampler; torchrun (2 CPU processes, gloo) vs one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from semiseg.cli import main
from semiseg.engine.distributed import DistInfo, epoch_batches, main_first
from semiseg.errors import ConfigError


def batches(world: int, rank: int, n=10, gb=4, iters=7, seed=0, epoch=0, stream=0):
    return epoch_batches(
        n, gb, iters, seed=seed, epoch=epoch, stream=stream, info=DistInfo(rank, world, rank)
    )


@pytest.mark.parametrize("n, gb", [(10, 4), (3, 8), (17, 8)])  # n < global batch: the order is re-shuffled
@pytest.mark.parametrize("world", [2, 4])
def test_ranks_split_global_batches_equally_and_cover_the_single_process_batch(n, gb, world):
    single = batches(1, 0, n=n, gb=gb)
    per_rank = [batches(world, r, n=n, gb=gb) for r in range(world)]
    assert len(single) == 7 and all(len(b) == gb for b in single)
    for r in range(world):
        assert len(per_rank[r]) == 7 and all(len(b) == gb // world for b in per_rank[r])
    for i in range(7):
        assert sum((per_rank[r][i] for r in range(world)), []) == single[i]
    # every index appears before any appears twice (epoch = chained permutations)
    flat = sum(single, [])
    assert sorted(flat[:n]) == list(range(n))


def test_batches_are_deterministic_and_vary_with_epoch_and_stream():
    assert batches(2, 1) == batches(2, 1)
    assert batches(1, 0) != batches(1, 0, epoch=1)
    assert batches(1, 0) != batches(1, 0, stream=1)
    assert batches(1, 0) != batches(1, 0, seed=1)


def test_global_batch_must_divide_among_ranks():
    with pytest.raises(
        ConfigError, match=r"train.batch_size: 6 is not divisible by the number of processes \(4\)"
    ):
        batches(4, 0, gb=6)


def _main_first_worker(rank: int, folder: str) -> None:
    import time
    from datetime import timedelta

    import torch.distributed as dist

    root = Path(folder)
    dist.init_process_group("gloo", init_method=f"file://{root / 'store'}", rank=rank, world_size=2,
                            timeout=timedelta(seconds=60))  # a deadlock fails instead of hanging  # fmt: skip
    info = DistInfo(rank=rank, world_size=2)
    try:
        with main_first(info):  # rank 0 leaves a file for the others, slowly
            if rank == 0:
                time.sleep(0.5)
                (root / "built").write_text("0")
            else:
                (root / "seen").write_text(str((root / "built").is_file()))
        try:  # an error in rank 0's block releases the others, which then run theirs
            with main_first(info):
                if rank == 0:
                    raise ValueError("bad data")
                (root / "released").write_text("1")
        except ValueError:
            pass
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_main_first_runs_rank_0_before_the_others_and_releases_them_on_an_error(tmp_path):
    import torch.multiprocessing as mp

    try:
        mp.spawn(_main_first_worker, args=(str(tmp_path),), nprocs=2, join=True)
    except mp.ProcessExitedException:  # gloo's teardown abort after the work (see below)
        assert (tmp_path / "released").is_file()
    assert (tmp_path / "seen").read_text() == "True"
    assert (tmp_path / "released").read_text() == "1"
    with main_first(DistInfo()):  # one process: just the block
        pass


# ------------------------------------------------------------------------------------------ torchrun
RECIPE = {
    "data": {
        "dataset": "shapes",
        "image_size": [32, 32],
        "num_images": 20,
        # sparse masks + rotation: the labeled-pixel count differs between the processes' halves
        "split": {"labeled": 6, "supervision": "sparse", "sparse_pixels": 30},
    },
    "model": {"name": "unet", "width": 4, "depth": 2, "norm": "batch"},  # cross-sample statistics
    "method": {"name": "supervised", "ce_weight": 1.0, "dice_weight": 0.5},
    "train": {
        "epochs": 3,
        "batch_size": 4,
        "iters_per_epoch": 7,
        "lr": 0.01,
        "progress": False,
        "plots": False,
        "device": "cpu",
        "log_every": 1,
        "augment": {"hflip": True, "rotate_degrees": 30.0},
        # NCHW: channels-last CPU convolutions sum in an order that depends on the batch size, so
        # there 1 and 2 processes agree to ~1e-4 rather than 1e-5
        "channels_last": False,
    },
}


def torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    return subprocess.run(
        [sys.executable, *launcher, "-m", "semiseg.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_torchrun_two_processes_matches_single_process(tmp_path):
    """Batch norm (synchronised), sparse masks, rotation, soft Dice: per-step losses of 2 gloo processes
    equal one process's over 21 steps."""
    recipe = tmp_path / "ddp.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert main(["train", "-c", str(recipe), "-o", str(single)]) == 0  # single process, in this one
    b = torchrun("train", "-c", str(recipe), "-o", str(ddp))
    if b.returncode != 0:
        # gloo's teardown occasionally aborts a process after all the work is done ("terminate called
        # without an active exception"); the ranks wait for rank 0's files before tearing down, so
        # they must be complete then
        assert "terminate called without an active exception" in b.stderr, b.stderr
        assert (ddp / "metrics.json").is_file(), b.stderr

    def steps(out):
        return [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]

    one, two = steps(single), steps(ddp)  # rank 0 wrote everything, once
    assert len(one) == len(two) == 21
    for a, b_ in zip(one, two):
        assert a["step"] == b_["step"]
        # the first epoch agrees to ~1e-7; later steps carry float32 sums made in another order (the
        # convolution kernels' blocking depends on the per-process batch size and on the CPU: on an
        # Intel Xeon the last epoch drifts to ~2e-5, on an AMD EPYC it stayed under 1e-5), which
        # training amplifies; a wrong reduction (gradients, batch-norm statistics, masked means)
        # differs by far more from the first steps on
        rel = 1e-5 if a["step"] <= RECIPE["train"]["iters_per_epoch"] else 1e-4
        for key in ("loss", "ce", "dice"):
            assert a[key] == pytest.approx(b_[key], rel=rel, abs=1e-6), (a["step"], key)
    assert one[0]["loss"] != pytest.approx(one[-1]["loss"], rel=1e-3)  # the runs really trained
    assert json.loads((ddp / "metrics.json").read_text())["val"]["dice/mean"] == pytest.approx(
        json.loads((single / "metrics.json").read_text())["val"]["dice/mean"], abs=1e-4
    )


def _volumes(root, depths=(6, 3, 5, 3, 6, 4, 3, 5, 6, 4)):
    """NIfTI volumes (x, y, z) of several depths, some below the patch depth (4): their patches are
    padded. A bright box labeled 1 in each; the last two have no mask (unlabeled)."""
    import numpy as np

    nib = pytest.importorskip("nibabel")
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i, depth in enumerate(depths):
        image = rng.random((20, 16, depth)).astype(np.float32) * 100
        mask = np.zeros(image.shape, np.uint8)
        mask[2 + i % 5 : 10 + i % 5, 4:11, :] = 1
        image[mask == 1] += 150
        affine = np.diag([0.8, 0.8, 3.0, 1.0])
        nib.save(nib.Nifti1Image(image, affine), str(root / "images" / f"case{i}.nii.gz"))
        if i < len(depths) - 2:
            nib.save(nib.Nifti1Image(mask, affine), str(root / "masks" / f"case{i}.nii.gz"))
    return root


def test_torchrun_two_processes_match_one_on_3d_patches_with_padding(tmp_path):
    """3D: FixMatch (pseudo-labels from the weak view, strong view without CutMix, whose partner is
    per process) + the TV regulariser on both streams, on patches deeper than some volumes. The
    padding is left out of every loss with DDP-global denominators, so per-step losses of 2 gloo
    processes equal one process's, and so do the logged shares of confident / foreground pseudo-labels."""
    data = _volumes(tmp_path / "vols")
    recipe = {
        "data": {"dataset": "folder", "path": str(data), "image_size": [-1, 16, 16], "patch_size": [4, 16, 16],
                 "split": {"labeled": 4, "val_fraction": 0.2, "test_fraction": 0.0, "unlabeled": "rest"}},
        "model": {"name": "unet", "width": 4, "depth": 2, "spatial_dims": 3, "inplane_levels": 1, "norm": "batch"},
        "method": {"name": "fixmatch", "threshold": 0.6,
                   "regularizers": [{"name": "tv", "weight": 0.1, "streams": ["labeled", "unlabeled"]}]},
        "inference": {"blend": "trim", "overlap": 0.5},
        "train": {"epochs": 2, "batch_size": 4, "iters_per_epoch": 4, "lr": 0.001, "progress": False,
                  "plots": False, "device": "cpu", "log_every": 1, "channels_last": False,
                  "augment": {"hflip": True, "dflip": True},
                  "strong_augment": {"jitter_prob": 0.8, "brightness": 0.5, "contrast": 0.5, "cutmix_prob": 0.0}},
    }  # fmt: skip
    path = tmp_path / "ddp3d.yaml"
    path.write_text(yaml.safe_dump(recipe))
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    assert main(["train", "-c", str(path), "-o", str(single), "--no-test"]) == 0
    done = torchrun("train", "-c", str(path), "-o", str(ddp), "--no-test")
    if done.returncode != 0:  # gloo's teardown abort after the work (see the 2D test)
        assert "terminate called without an active exception" in done.stderr, done.stderr
        assert (ddp / "metrics.json").is_file(), done.stderr

    def steps(out):
        return [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]

    one, two = steps(single), steps(ddp)
    assert len(one) == len(two) == 8
    # continuous losses to 1e-4; the strong-view loss (and the total) sums over the voxels whose
    # confidence passes the threshold, which a 1e-7 difference between 1 and 2 processes can flip
    # for a voxel (~1e-3 of it); the logged shares to ~4 voxels of the 3840 (an average of per-process
    # shares is off by more: tests/test_parallel.py checks share itself)
    exact = {"supervised", "ce", "dice", "reg/tv"}
    for a, b in zip(one, two):
        assert a["step"] == b["step"]
        for key in exact:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["step"], key)
        for key in ("strong", "loss"):
            assert a[key] == pytest.approx(b[key], rel=2e-3), (a["step"], key)
        for key in ("confident", "pseudo_foreground"):
            assert a[key] == pytest.approx(b[key], abs=1e-3), (a["step"], key)
    # every step trains on pseudo-labels, foreground among them, and not on every voxel
    assert all(0.1 < s["confident"] < 0.9 and s["pseudo_foreground"] > 0.1 for s in one), one


def test_a_logger_failing_on_rank_0_ends_the_torchrun_run_instead_of_hanging(tmp_path, monkeypatch):
    """Rank 0 builds the logger; its one-line error must not leave it waiting for ranks stuck in training."""
    pytest.importorskip("mlflow")
    recipe = tmp_path / "ddp.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, "train": {**RECIPE["train"], "logger": "mlflow"}}))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "bogus://x")
    done = torchrun("train", "-c", str(recipe), "-o", str(tmp_path / "ddp"))  # (a 300 s timeout)
    assert done.returncode != 0
    assert "train.logger: mlflow cannot start a run at bogus://x" in done.stderr


def test_collectives_use_the_cuda_device_under_nccl_and_the_cpu_under_gloo(monkeypatch):
    import torch
    import torch.distributed as dist

    from semiseg.engine import distributed as D

    monkeypatch.setattr(dist, "get_backend", lambda *a, **k: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert D.comm_device() == torch.device("cuda", 1)  # NCCL refuses CPU tensors
    monkeypatch.setattr(dist, "get_backend", lambda *a, **k: "gloo")
    assert D.comm_device() == torch.device("cpu")


def test_one_explicit_gpu_for_every_torchrun_process_is_a_config_error(monkeypatch):
    import torch

    from semiseg.engine import distributed as D

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match=r"train.device: 'cuda:0' names one GPU for all 2 processes"):
        D.setup("cuda:0")


class _Joined(Exception):
    pass


@pytest.mark.parametrize("option", ["cuda:0", "cuda", "auto"])
def test_one_visible_gpu_per_process_is_that_processs_gpu(monkeypatch, option):
    """A launcher that gives each process one GPU (CUDA_VISIBLE_DEVICES per process) shows every rank
    its GPU as cuda:0: that is the rank's device, set as current before the group is joined."""
    import torch
    import torch.distributed as dist

    from semiseg.engine import distributed as D

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    current = []
    monkeypatch.setattr(torch.cuda, "set_device", current.append)

    def join(backend):
        raise _Joined(backend)

    monkeypatch.setattr(dist, "init_process_group", join)
    with pytest.raises(_Joined, match="nccl"):
        D.setup(option)
    assert current == [torch.device("cuda", 0)]


def test_each_local_rank_takes_its_gpu_among_several():
    import torch

    from semiseg.engine import distributed as D

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.cuda, "is_available", lambda: True)
        mp.setattr(torch.cuda, "device_count", lambda: 4)
        assert D.resolve_device("auto", 3) == torch.device("cuda", 3)
        assert D.resolve_device("cuda", 2) == torch.device("cuda", 2)
        with pytest.raises(ConfigError, match="local rank 5 has no GPU of its own"):
            D.resolve_device("cuda", 5)


def test_sync_batchnorm_statistics_survive_half_precision_inputs(monkeypatch):
    """Under autocast a convolution hands batch norm float16: the per-process count (4 x 128 x 128 =
    65,536) is beyond float16's range, so the statistics are taken in float32."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from semiseg import parallel
    from semiseg.engine.distributed import SyncBatchNorm

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *a: 2)
    monkeypatch.setattr(parallel, "differentiable_all_reduce", lambda t: t)  # one process's share alone
    x = (torch.randn(4, 2, 128, 128, generator=torch.Generator().manual_seed(0)) * 3 + 1).half()
    bn = SyncBatchNorm(2).train()
    y = bn(x)
    ref_mean, ref_var = torch.zeros(2), torch.ones(2)
    ref = F.batch_norm(x.float(), ref_mean, ref_var, bn.weight, bn.bias, training=True, eps=bn.eps)
    assert y.dtype == torch.float16
    torch.testing.assert_close(y.float(), ref, atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(bn.running_mean, ref_mean, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(bn.running_var, ref_var, atol=1e-3, rtol=1e-3)
