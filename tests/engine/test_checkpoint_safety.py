"""Checkpoints are loaded weights-only: a crafted pickle never runs; resume refuses a schedule change."""

from __future__ import annotations

import json
import os

import pytest
import torch
import yaml

from semiseg.cli import main
from semiseg.config import to_dict
from semiseg.engine import run as engine_run
from semiseg.engine.checkpoint import FORMAT, load_checkpoint
from semiseg.errors import DataError


class Payload:
    """Unpickling this object calls ``os.mkdir(marker)``: proof that code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.fixture
def malicious(tmp_path):
    marker = tmp_path / "code-was-executed"
    path = tmp_path / "best.pt"
    torch.save({"format": FORMAT, "method_state": {}, "config": {}, "payload": Payload(str(marker))}, path)
    return path, marker


def test_load_checkpoint_refuses_a_pickle_that_would_run_code(malicious):
    path, marker = malicious
    with pytest.raises(DataError, match="refused: the checkpoint holds objects other than tensors"):
        load_checkpoint(path)
    assert not marker.exists()


def test_a_plain_pickle_is_one_error_without_torch_s_protocol_warning(tmp_path, recwarn):
    import pickle

    path = tmp_path / "dict.pkl"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=4))  # torch warns about protocol 4 before failing
    with pytest.raises(DataError, match="dict.pkl: cannot read checkpoint: not a PyTorch checkpoint"):
        load_checkpoint(path)
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_cli_refuses_a_malicious_checkpoint_with_exit_2(malicious, tmp_path, capsys, command):
    path, marker = malicious
    images = tmp_path / "images"
    images.mkdir()
    args = {
        "predict": [
            "predict",
            "--checkpoint",
            str(path),
            "--input",
            str(images),
            "--output",
            str(tmp_path / "o"),
        ],
        "evaluate": ["evaluate", "--checkpoint", str(path), "--split", "val"],
    }[command]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and "refused" in err[0]
    assert not marker.exists()
    assert not (tmp_path / "o").exists()


def test_real_checkpoints_load_weights_only(tmp_path, make_config):
    engine_run.train(make_config("train.epochs=1"), output_dir=tmp_path)
    for name in ("last.pt", "best.pt"):
        state = torch.load(tmp_path / name, weights_only=True)  # raises if anything unsafe was saved
        assert state["format"] == FORMAT


def test_a_checkpoint_with_missing_or_foreign_entries_is_a_one_line_error(tmp_path, make_config):
    from semiseg.engine.checkpoint import load_checkpoint, save_checkpoint
    from semiseg.engine.run import load_trained
    from semiseg.errors import ConfigError

    engine_run.train(make_config("train.epochs=1"), output_dir=tmp_path)
    state = load_checkpoint(tmp_path / "best.pt")
    save_checkpoint({k: v for k, v in state.items() if k != "config"}, tmp_path / "no-config.pt")
    with pytest.raises(ConfigError, match=r"no-config.pt: not a semiseg model checkpoint \(no config\)"):
        load_trained(tmp_path / "no-config.pt")
    state["method_state"] = {k: v[..., :1] if v.ndim else v for k, v in state["method_state"].items()}
    save_checkpoint(state, tmp_path / "cut.pt")
    with pytest.raises(
        ConfigError, match=r"cut.pt: its weights do not fit its config's model \('.+' has shape \["
    ):
        load_trained(tmp_path / "cut.pt")


# ------------------------------------------------------------------------ resume and the LR schedule
def write_recipe(path, cfg):
    path.write_text(yaml.safe_dump(to_dict(cfg)))
    return str(path)


@pytest.mark.parametrize("scheduler", ["cosine", "poly"])
def test_resume_to_more_epochs_refuses_a_length_dependent_schedule(tmp_path, make_config, capsys, scheduler):
    out = str(tmp_path / "run")
    short = write_recipe(
        tmp_path / "short.yaml", make_config("train.epochs=1", f"train.scheduler={scheduler}")
    )
    longer = write_recipe(
        tmp_path / "long.yaml", make_config("train.epochs=3", f"train.scheduler={scheduler}")
    )
    assert main(["train", "-c", short, "-o", out]) == 0
    before = (tmp_path / "run" / "last.pt").read_bytes()
    capsys.readouterr()
    assert main(["train", "-c", longer, "-o", out, "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert f"train.epochs changed (1 → 3) but the '{scheduler}' learning-rate schedule" in err[0]
    assert (tmp_path / "run" / "last.pt").read_bytes() == before  # nothing touched


def test_resume_to_more_epochs_continues_a_constant_schedule(tmp_path, make_config):
    out = str(tmp_path / "run")
    assert (
        main(["train", "-c", write_recipe(tmp_path / "a.yaml", make_config("train.epochs=1")), "-o", out])
        == 0
    )
    assert main(["train", "-c", write_recipe(tmp_path / "b.yaml", make_config("train.epochs=3")), "-o", out,
                 "--resume"]) == 0  # fmt: skip
    steps = [json.loads(ln) for ln in (tmp_path / "run" / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2, 3, 4, 5, 6]
    assert {s["lr"] for s in steps} == {0.01}


def test_cuda_rng_states_are_restored_for_the_gpus_this_machine_has(monkeypatch):
    """A checkpoint from a 2-GPU machine resumed on a 1-GPU one: the first state is restored, as a
    CPU byte tensor (``set_rng_state`` refuses others), and the missing GPU is skipped."""
    import torch

    from semiseg.engine.checkpoint import rng_state, set_rng_state

    state = rng_state()  # this machine's (no CUDA), before CUDA is faked
    state["cuda"] = [torch.full((8,), 1, dtype=torch.uint8), torch.full((8,), 2, dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device: restored.append((s.tolist(), device)))
    set_rng_state(state)
    # GPU 0's state, then again as the saver's current GPU's (no cuda_current: GPU 0); GPU 1 skipped
    assert restored == [([1] * 8, 0), ([1] * 8, 0)]


@pytest.mark.parametrize("saved_current", [True, False], ids=["cuda_current", "older_checkpoint"])
def test_each_ddp_rank_resumes_the_cuda_stream_of_its_own_gpu(monkeypatch, saved_current):
    """Rank 0 saves; rank 1 draws from GPU 1, whose stream is rank 0's GPU 0 stream (same seed, same
    draws): the saver's current-GPU state goes to the resuming process's current GPU, after the
    per-GPU states (which hold rank 0's never-used GPU 1 state). A checkpoint written before
    ``cuda_current`` was saved came from a process whose current GPU was GPU 0: its first state."""
    import torch

    from semiseg.engine.checkpoint import rng_state, set_rng_state

    state = rng_state()  # this machine's (no CUDA), before CUDA is faked
    used, unused = torch.full((8,), 7, dtype=torch.uint8), torch.full((8,), 1, dtype=torch.uint8)
    state["cuda"] = [used, unused]
    if saved_current:
        state["cuda_current"] = used
    restored = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(
        torch.cuda, "set_rng_state", lambda s, device: restored.__setitem__(device, s.tolist())
    )
    set_rng_state(state)
    assert restored == {0: [7] * 8, 1: [7] * 8}


def test_the_saver_records_the_state_of_the_gpu_it_draws_from(monkeypatch):
    import torch

    from semiseg.engine.checkpoint import rng_state

    per_gpu = [torch.full((8,), 3, dtype=torch.uint8), torch.full((8,), 4, dtype=torch.uint8)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: per_gpu)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": per_gpu[1])  # current: GPU 1
    state = rng_state()
    assert [s.tolist() for s in state["cuda"]] == [[3] * 8, [4] * 8]
    assert state["cuda_current"].tolist() == [4] * 8
