"""frozen_running_stats: batch statistics as usual, running statistics untouched."""

from __future__ import annotations

import copy

import pytest
import torch

from semiseg.config import ModelConfig
from semiseg.models import build_model
from semiseg.models.batchnorm import frozen_running_stats


def unet():
    torch.manual_seed(0)
    return build_model(ModelConfig(width=4, depth=2, norm="batch"), 1, 3).train()


def buffers(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def test_running_statistics_and_counters_are_unchanged_and_outputs_are_the_same():
    model = unet()
    x = torch.rand(4, 1, 16, 16) * 3 + 1  # far from the initial running statistics
    reference = copy.deepcopy(model)
    before = buffers(model)
    with frozen_running_stats(model):
        out = model(x)
    after = buffers(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    torch.testing.assert_close(out, reference(x))  # training-mode output: batch statistics
    moved = buffers(reference)
    assert not all(torch.equal(before[k], moved[k]) for k in before)  # without it they move
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_gradients_flow_and_state_is_restored_after_an_error():
    model = unet()
    x = torch.rand(2, 1, 16, 16, requires_grad=True)
    with frozen_running_stats(model):
        model(x).sum().backward()
    assert x.grad is not None and all(p.grad is not None for p in model.parameters())
    with pytest.raises(RuntimeError), frozen_running_stats(model):
        raise RuntimeError("boom")
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_eval_mode_layers_are_left_alone():
    model = unet().eval()
    x = torch.rand(2, 1, 16, 16) * 3 + 1  # far from the initial running statistics
    with torch.no_grad():
        reference = model(x)
    before = buffers(model)
    with frozen_running_stats(model), torch.no_grad():
        out = model(x)
    # still evaluation mode: running statistics normalise (the output is the eval output), not batch ones
    assert not any(m.training for m in model.modules())
    torch.testing.assert_close(out, reference, rtol=0, atol=0)
    after = buffers(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
