"""Distributed training: the global-batch sampler; torchrun (2 CPU processes, gloo) vs one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from semiseg.cli import main
from semiseg.engine.distributed import DistInfo, epoch_batches
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
        for key in ("loss", "ce", "dice"):
            assert a[key] == pytest.approx(b_[key], rel=1e-5, abs=1e-6), (a["step"], key)
    assert one[0]["loss"] != pytest.approx(one[-1]["loss"], rel=1e-3)  # the runs really trained
    assert json.loads((ddp / "metrics.json").read_text())["val"]["dice/mean"] == pytest.approx(
        json.loads((single / "metrics.json").read_text())["val"]["dice/mean"], abs=1e-4
    )
