"""Tiny run configurations for engine tests (generated shapes, 32x32, width-4 UNet, a few iterations)."""

from __future__ import annotations

import copy

import pytest

from semiseg.config import RunConfig, build_config

TINY = {
    "data": {
        "dataset": "shapes",
        "image_size": [32, 32],
        "num_images": 20,
        "shapes_classes": 3,
        "split": {"labeled": 4, "seed": 0},
    },
    "model": {"name": "unet", "width": 4, "depth": 2, "norm": "batch", "dropout": 0.0},
    "method": {"name": "supervised"},
    "train": {
        "epochs": 3,
        "batch_size": 4,
        "iters_per_epoch": 2,
        "lr": 0.01,
        "progress": False,
        "plots": False,
        "log_every": 1,
    },
}


def tiny_config(*overrides: str, raw: dict | None = None) -> RunConfig:
    """The tiny recipe with ``--set``-style overrides."""
    return build_config(copy.deepcopy(raw or TINY), list(overrides), source="tiny")


@pytest.fixture
def make_config():
    return tiny_config
