"""The ``Examples:`` of public functions run as doctests."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "semiseg.core",
    "semiseg.io",
    "semiseg.data.patches",
    "semiseg.data.transforms",
    "semiseg.data.views",
    "semiseg.engine.inference",
    "semiseg.ops",
    "semiseg.registry",
    "semiseg.bench.lock",
    "semiseg.bench.provenance",
    "semiseg.bench.stats",
    "semiseg.losses.ramp",
    "semiseg.losses.consistency",
    "semiseg.models.ema",
    "semiseg.methods.bcp",
    "semiseg.methods.cps",
    "semiseg.methods.fixmatch",
    "semiseg.methods.pseudo_label",
]


@pytest.mark.parametrize("name", MODULES)
def test_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed"
