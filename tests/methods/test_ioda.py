"""IODA: the k + j rule, phases per setup, each autoencoder phase training only its own layers, the
output layers being the label autoencoder's decoder, paired initialisations, and resume-exactness."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

from semiseg.config import ModelConfig, build_config
from semiseg.engine.checkpoint import load_checkpoint
from semiseg.engine.run import train
from semiseg.errors import ConfigError
from semiseg.methods import build_method
from semiseg.methods.ioda import label_targets, phase_layer

NET = ModelConfig(name="mlp", output="map", hidden=[12, 10], activation="tanh", init="glorot")
TINY = {
    "data": {"dataset": "texture_rings", "image_size": [12, 12], "num_images": 12, "textures": ["grain", "weave"],
             "split": {"unlabeled": "none"}},
    "model": {"name": "mlp", "output": "map", "hidden": [16, 12], "activation": "tanh", "init": "glorot"},
    "method": {"name": "ioda", "input_layers": 1, "output_layers": 1, "input_epochs": 3, "output_epochs": 3},
    "train": {"epochs": 3, "batch_size": 6, "optimizer": "sgd", "lr": 1.0, "val_metric": "mse", "val_mode": "min",
              "progress": False, "plots": False, "log_every": 1},
}  # fmt: skip


def ioda(seed: int = 0, model: ModelConfig = NET, num_classes: int = 2, **options):
    torch.manual_seed(seed)
    return build_method({"name": "ioda", **options}, model, in_channels=1, num_classes=num_classes,
                        image_size=(6, 6))  # fmt: skip


def tiny(*overrides: str):
    return build_config(copy.deepcopy(TINY), list(overrides), source="test")


def test_phase_names():
    assert phase_layer("input_pretrain2") == ("input", 2) and phase_layer("output_pretrain1") == ("output", 1)
    assert phase_layer("finetune") is None
    names = {(k, j): [p.name for p in ioda(input_layers=k, output_layers=j).phases()]
             for k, j in [(0, 0), (1, 0), (0, 1), (1, 1), (2, 0)]}  # fmt: skip
    assert names[(0, 0)] == ["finetune"] and names[(1, 0)] == ["input_pretrain1", "finetune"]
    assert names[(0, 1)] == ["output_pretrain1", "finetune"]
    assert names[(1, 1)] == ["input_pretrain1", "output_pretrain1", "finetune"]
    assert names[(2, 0)] == ["input_pretrain1", "input_pretrain2", "finetune"]
    pre = ioda().phases()[0]
    assert pre.restore_best and not pre.final and pre.val_metric == "recon" and pre.val_mode == "min"
    assert pre.optimizer_specs[0].settings.type == "sgd" and pre.optimizer_specs[0].settings.lr == 10.0


def test_k_plus_j_leaves_a_link_layer_and_the_model_must_be_a_map():
    four = ModelConfig(name="mlp", output="map", hidden=[8, 6, 8])
    ioda(model=four, input_layers=2, output_layers=1)  # 3 of 4 layers
    with pytest.raises(
        ConfigError, match=r"input_layers \+ method.output_layers = 4, but the network has 4 layers"
    ):
        ioda(model=four, input_layers=2, output_layers=2)
    with pytest.raises(ConfigError, match="model.output: map"):
        ioda(model=ModelConfig(name="unet", width=4, depth=2))
    with pytest.raises(ConfigError, match="input_layers"):
        ioda(input_layers=-1)


def test_the_networks_initialisation_does_not_depend_on_the_setup():
    nda, iod = ioda(input_layers=0, output_layers=0), ioda(input_layers=1, output_layers=1)
    assert all(
        torch.equal(a, b) for a, b in zip(nda.model.state_dict().values(), iod.model.state_dict().values())
    )


def test_tied_halves_use_the_layers_weights_and_untied_ones_start_from_them():
    tied, untied = ioda(), ioda(ae_tied=False)
    layer = untied.model.linears[0]
    torch.testing.assert_close(untied.input_decoders[0].weight, layer.weight.t())
    assert not hasattr(tied.input_decoders[0], "weight")
    x = torch.rand(3, layer.out_features)
    torch.testing.assert_close(
        tied.input_decoders[0](x, tied.model.linears[0]), x @ tied.model.linears[0].weight
    )


def test_the_output_autoencoders_decoder_is_the_networks_last_layer():
    method = ioda()
    mask = torch.randint(0, 2, (2, 6, 6))
    last = method.model.linears[-1]
    y, _ = label_targets(mask, 2)
    code = torch.tanh(F.linear(y, last.weight.t(), method.output_encoders[0].bias))
    expected = F.binary_cross_entropy_with_logits(last(code), y)
    torch.testing.assert_close(method.output_autoencoder(mask, 1), expected)
    # and the network's output is that decoder applied to its own last hidden code
    x = torch.rand(2, 1, 6, 6)
    z = last(method.model.hidden_codes(x, 2))
    torch.testing.assert_close(method.model(x).softmax(1)[:, 1].flatten(1), torch.sigmoid(z))


def test_autoencoder_steps_reach_only_their_own_layers():
    method = ioda(input_layers=1, output_layers=1)
    x, mask = torch.rand(2, 1, 6, 6), torch.randint(0, 2, (2, 6, 6))
    for phase, loss in (("input_pretrain1", method.input_autoencoder(x, 1)),
                        ("output_pretrain1", method.output_autoencoder(mask, 1))):  # fmt: skip
        method.zero_grad(set_to_none=True)
        loss.backward()
        moved = {n for n, p in method.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        allowed = {
            n
            for n, p in method.named_parameters()
            if any(p is q for q in method.parameters_for(phase, "main"))
        }
        assert moved == allowed, phase
    own = method.parameters_for("input_pretrain1", "main")
    assert {n for n, p in method.named_parameters() if any(p is q for q in own)} == {
        "model.linears.0.weight", "model.linears.0.bias", "input_decoders.0.bias"}  # fmt: skip


def test_more_classes_reconstruct_one_hot_maps():
    method = ioda(num_classes=3)
    mask = torch.randint(0, 3, (2, 6, 6))
    y, w = label_targets(mask, 3)
    assert y.shape == (2, 108) and torch.equal(y.view(2, 3, 6, 6).argmax(1), mask) and bool((w == 1).all())
    assert torch.isfinite(method.output_autoencoder(mask, 1))


def test_through_the_engine_each_phase_changes_only_its_autoencoder(tmp_path):
    from semiseg.engine.run import build_method_for

    results = train(tiny(), output_dir=tmp_path)
    first = load_checkpoint(tmp_path / "best_input_pretrain1.pt")["method_state"]
    second = load_checkpoint(tmp_path / "best_output_pretrain1.pt")["method_state"]
    torch.manual_seed(0)  # train.seed 0: the engine seeds before it builds the method
    init = build_method_for(tiny(), 1, 2).state_dict()
    changed = lambda a, b: {k for k in a if not torch.equal(a[k], b[k])}  # noqa: E731
    assert changed(init, first) == {"model.linears.0.weight", "model.linears.0.bias", "input_decoders.0.bias"}
    assert changed(first, second) == {
        "model.linears.2.weight",
        "model.linears.2.bias",
        "output_encoders.0.bias",
    }
    assert "mse" in results["test"] and "dice/1" in results["test"]


def test_resume_is_exact_through_the_pretraining_phases(tmp_path, resume_check):
    crash = lambda trainer, phase: phase.name == "output_pretrain1" and trainer.epoch == 1  # noqa: E731
    log = resume_check(tiny(), tmp_path, crash_at=crash)
    assert [r["phase"] for r in log].count("finetune") == 3


def test_a_four_layer_network_pretrains_two_input_levels_and_one_output_level(tmp_path):
    cfg = tiny("model.hidden=[16, 8, 16]", "method.input_layers=2", "train.epochs=1", "method.input_epochs=2",
               "method.output_epochs=2")  # fmt: skip
    train(cfg, output_dir=tmp_path)
    log = [json.loads(line) for line in (tmp_path / "epochs.jsonl").read_text().splitlines()]
    phases = [r["phase"] for r in log if "accepted" not in r]  # not the adaptive rate's rejected attempts
    assert phases == ["input_pretrain1"] * 2 + ["input_pretrain2"] * 2 + ["output_pretrain1"] * 2 + [
        "finetune"
    ]
    one = load_checkpoint(tmp_path / "best_input_pretrain1.pt")["method_state"]
    two = load_checkpoint(tmp_path / "best_input_pretrain2.pt")["method_state"]
    changed = {k for k in one if not torch.equal(one[k], two[k])}
    assert changed == {"model.linears.1.weight", "model.linears.1.bias", "input_decoders.1.bias"}


def test_deeper_output_levels_reconstruct_the_codes_of_the_levels_below():
    method = ioda(model=ModelConfig(name="mlp", output="map", hidden=[8, 6, 8], activation="tanh"), output_layers=2,
                  input_layers=0)  # fmt: skip
    mask = torch.randint(0, 2, (3, 6, 6))
    layers = method.model.linears
    y, _ = label_targets(mask, 2)
    e1 = torch.tanh(method.output_encoders[0](y, layers[3]))  # [3, 8]: the code of output level 1
    code = torch.tanh(method.output_encoders[1](e1, layers[2]))  # [3, 6]
    expected = F.mse_loss(torch.tanh(layers[2](code)), e1)
    torch.testing.assert_close(method.output_autoencoder(mask, 2), expected)
    method.zero_grad(set_to_none=True)
    method.output_autoencoder(mask, 2).backward()
    assert layers[3].weight.grad is None and layers[2].weight.grad is not None  # level 1 stays frozen


def test_with_an_input_offset_the_input_autoencoder_still_reconstructs_the_image():
    import dataclasses

    method = ioda(model=dataclasses.replace(NET, input_offset=0.5), input_layers=1, output_layers=0)
    x = torch.rand(3, 1, 6, 6)
    layer, decoder = method.model.linears[0], method.input_decoders[0]
    code = torch.tanh(layer(x.flatten(1) - 0.5))  # the encoder sees the centred image
    expected = F.binary_cross_entropy_with_logits(decoder(code, layer), x.flatten(1))  # ... and rebuilds x
    torch.testing.assert_close(method.input_autoencoder(x, 1), expected)
    torch.testing.assert_close(method.model.hidden_codes(x, 1), code)
