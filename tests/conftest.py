"""Shared fixtures. Real data (../shared/data or $SEMISEG_DATA) is optional: tests that need it skip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _real_data_root() -> Path | None:
    env = os.environ.get("SEMISEG_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "data")
    for c in candidates:
        if c.is_dir():
            return c
    return None


@pytest.fixture
def real_data_root() -> Path:
    root = _real_data_root()
    if root is None:
        pytest.skip("real data not found (set SEMISEG_DATA)")
    return root


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Lazily read volumes are stored under $SEMISEG_CACHE: a fresh folder per test session."""
    old = os.environ.get("SEMISEG_CACHE")
    os.environ["SEMISEG_CACHE"] = str(tmp_path_factory.mktemp("semiseg-cache"))
    yield
    if old is None:
        os.environ.pop("SEMISEG_CACHE", None)
    else:
        os.environ["SEMISEG_CACHE"] = old


@pytest.fixture(autouse=True)
def _few_threads():
    import torch

    torch.set_num_threads(1)
    yield


# ------------------------------------------------------------------------------- resume exactness
def _same(a, b) -> bool:
    import torch

    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return torch.equal(a, b) if torch.is_tensor(a) else a == b


def epoch_log(out: Path) -> list[dict]:
    """``epochs.jsonl`` of a run without the wall-clock ``seconds``."""
    import json

    lines = (out / "epochs.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(ln).items() if k != "seconds"} for ln in lines]


@pytest.fixture
def resume_check(monkeypatch):
    """``resume_check(cfg, tmp_path)``: train ``cfg`` straight, and again interrupted at the start of
    the first epoch where ``crash_at(trainer, phase)`` holds (default: epoch 3 of a phase) followed by
    ``--resume``; assert the same ``last.pt`` method state (tensors and extra state) and epoch logs.
    Returns the straight run's epoch log."""
    from semiseg.engine.checkpoint import load_checkpoint
    from semiseg.engine.run import train
    from semiseg.engine.trainer import Trainer

    def check(cfg, tmp_path: Path, crash_at=lambda trainer, phase: trainer.epoch == 2, **train_kw):
        straight, crashed = tmp_path / "straight", tmp_path / "crashed"
        train(cfg, output_dir=straight, **train_kw)
        original = Trainer.train_epoch

        def crashing(self, phase, *args):
            if crash_at(self, phase):
                raise KeyboardInterrupt
            return original(self, phase, *args)

        monkeypatch.setattr(Trainer, "train_epoch", crashing)
        with pytest.raises(KeyboardInterrupt):
            train(cfg, output_dir=crashed, **train_kw)
        monkeypatch.setattr(Trainer, "train_epoch", original)
        train(cfg, output_dir=crashed, resume=True, **train_kw)
        a = load_checkpoint(straight / "last.pt")["method_state"]
        b = load_checkpoint(crashed / "last.pt")["method_state"]
        assert _same(a, b), [k for k in a if not _same(a[k], b.get(k))]
        log = epoch_log(straight)
        assert log == epoch_log(crashed)
        return log

    return check
