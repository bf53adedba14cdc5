"""The shape_prior regulariser: its label autoencoder, the corruption, both loss terms, the frozen
autoencoder in the method's phases, its own phase, paired initialisations and resumption."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from semiseg.config import ModelConfig, build_config
from semiseg.core import Batch, Supervision
from semiseg.engine.checkpoint import load_checkpoint
from semiseg.engine.run import build_method_for, train
from semiseg.errors import ConfigError
from semiseg.losses.regularizers import Regularizer, RegularizerContext
from semiseg.losses.shape_prior import AE_PHASE, LabelAutoencoder, corrupt_labels, one_hot_maps

K = 3
SHAPES = {
    "data": {"dataset": "shapes", "image_size": [32, 32], "num_images": 20, "shapes_classes": K,
             "split": {"labeled": 4, "unlabeled": "rest"}},
    "model": {"name": "unet", "width": 4, "depth": 2, "norm": "batch"},
    "method": {"name": "supervised", "regularizers": [{"name": "shape_prior", "weight": 0.5, "ae_epochs": 3,
                                                        "ae_width": 4, "ae_depth": 2, "code_channels": 4}]},
    "train": {"epochs": 3, "batch_size": 4, "iters_per_epoch": 2, "lr": 0.01, "progress": False, "plots": False},
}  # fmt: skip


def prior(**options):
    spec = {"name": "shape_prior", "ae_width": 4, "ae_depth": 2, "code_channels": 4, **options}
    return Regularizer(spec, context=RegularizerContext(in_channels=1, num_classes=K, model=ModelConfig()))


def batch_of(mask: torch.Tensor, kind: Supervision) -> Batch:
    b = Batch.of(torch.rand(len(mask), 1, *mask.shape[1:]), mask, num_classes=K)
    b.kind = torch.full((len(mask),), int(kind))
    return b


def test_autoencoder_shapes_and_corruption():
    ae = LabelAutoencoder(K, width=4, depth=2, code_channels=5)
    maps = one_hot_maps(torch.randint(0, K, (2, 16, 12)), K)
    assert ae.encode(maps).shape == (2, 5, 4, 3) and ae(maps).shape == (2, K, 16, 12)
    mask = torch.randint(0, K, (2, 32, 32))
    b = batch_of(mask, Supervision.DENSE)
    noisy = corrupt_labels(mask, K, 0.3, b)
    torch.testing.assert_close(noisy.sum(1), torch.ones(2, 32, 32))
    assert torch.equal(noisy, corrupt_labels(mask, K, 0.3, b))  # keyed by the batch's samples
    changed = (
        (corrupt_labels(mask, K, 0.3, b).argmax(1) != corrupt_labels(mask, K, 0.0, b).argmax(1))
        .float()
        .mean()
    )
    assert 0.05 < float(changed) < 0.4  # ~ 0.3 · 2/3 of the pixels change class (then the blur)


def test_the_code_term_vanishes_for_the_truth_and_the_recon_term_for_a_perfect_autoencoder():
    reg = prior(recon_weight=0.0)
    mask = torch.randint(0, K, (2, 16, 16))
    logits = 60.0 * one_hot_maps(mask, K)  # softmax = the one-hot truth
    assert float(reg({"labeled": logits}, {"labeled": batch_of(mask, Supervision.DENSE)})) < 1e-10
    wrong = 60.0 * one_hot_maps((mask + 1) % K, K)
    assert float(reg({"labeled": wrong}, {"labeled": batch_of(mask, Supervision.DENSE)})) > 1e-4
    perfect = prior(code_weight=0.0)

    class Identity(torch.nn.Module):  # decode(encode(p)) = log p: its softmax is p
        def forward(self, p):
            return p.clamp_min(1e-12).log()

    perfect.loss.autoencoder.forward = Identity().forward
    unl = batch_of(torch.full((2, 16, 16), 255), Supervision.NONE)
    x = torch.randn(2, K, 16, 16)
    assert float(perfect({"unlabeled": x}, {"unlabeled": unl})) < 1e-12


def test_in_the_methods_phases_only_the_segmenters_logits_get_gradients():
    reg = prior()
    mask = torch.randint(0, K, (2, 16, 16))
    logits = torch.randn(2, K, 16, 16, requires_grad=True)
    unl_logits = torch.randn(2, K, 16, 16, requires_grad=True)
    data = {"labeled": batch_of(mask, Supervision.DENSE), "unlabeled": batch_of(torch.full((2, 16, 16), 255),
                                                                                Supervision.NONE)}  # fmt: skip
    loss = reg({"labeled": logits, "unlabeled": unl_logits}, data)
    loss.backward()
    assert logits.grad.abs().sum() > 0 and unl_logits.grad.abs().sum() > 0
    assert all(p.grad is None for p in reg.loss.autoencoder.parameters())


def test_sizes_must_divide_by_the_autoencoders_stride():
    reg = prior()
    with pytest.raises(ConfigError, match="divisible by 2\\*\\*ae_depth = 4"):
        reg(
            {"labeled": torch.randn(1, K, 10, 16)},
            {"labeled": batch_of(torch.zeros(1, 10, 16).long(), Supervision.DENSE)},
        )


def test_through_the_engine_the_prior_trains_first_and_leaves_the_segmenters_init(tmp_path, resume_check):
    cfg = build_config(copy.deepcopy(SHAPES), [], source="test")
    train(cfg, output_dir=tmp_path / "run")
    lines = (tmp_path / "run" / "epochs.jsonl").read_text().splitlines()
    assert [json.loads(line)["phase"] for line in lines] == [AE_PHASE] * 3 + ["train"] * 3
    ae_best = load_checkpoint(tmp_path / "run" / f"best_{AE_PHASE}.pt")["method_state"]
    torch.manual_seed(0)
    init = build_method_for(cfg, 1, K).state_dict()
    moved = {k for k in init if not torch.equal(init[k], ae_best[k])}
    assert moved and all(k.startswith("regularizers.0.loss.autoencoder.") for k in moved)  # only the AE
    plain = copy.deepcopy(SHAPES)
    plain["method"] = {"name": "supervised"}
    torch.manual_seed(0)
    without = build_method_for(build_config(plain, [], source="test"), 1, K).state_dict()
    assert all(torch.equal(without[k], init[k]) for k in without)  # the same segmenter initialisation
    resume_check(
        cfg, tmp_path / "resume", crash_at=lambda trainer, phase: phase.name == "train" and trainer.epoch == 1
    )


def test_the_frozen_autoencoder_keeps_its_flags_and_gets_no_gradient():
    reg = prior()
    logits = torch.randn(2, K, 16, 16, requires_grad=True)
    data = {"unlabeled": batch_of(torch.full((2, 16, 16), 255), Supervision.NONE)}
    reg({"unlabeled": logits}, data).backward()
    params = list(reg.loss.autoencoder.parameters())
    assert all(p.requires_grad for p in params) and all(p.grad is None for p in params)
    assert logits.grad is not None
