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


@pytest.fixture(autouse=True)
def _few_threads():
    import torch

    torch.set_num_threads(1)
    yield
