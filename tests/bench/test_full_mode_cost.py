"""benchmarks/full_mode_cost.py on tiny generated setups: FLOPs per image against a hand count, the passes
of one iteration (supervised, mean teacher, UniMatch's decoder-only stream) and a table's cost arithmetic.
No data files; one iteration per phase at 16x16 with a width-4 UNet."""

from __future__ import annotations

import copy
import re
import runpy
from pathlib import Path

import pytest
from bench_helpers import RECIPE, registered, simple_table, write_recipe

from semiseg.bench.cache import Bundles
from semiseg.bench.spec import Row
from semiseg.config import build_config

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "full_mode_cost.py"
FMC = runpy.run_path(str(SCRIPT))
SMALL = 16
B = RECIPE["train"]["batch_size"]  # per stream
WIDTH, DEPTH = RECIPE["model"]["width"], RECIPE["model"]["depth"]
SIZE = RECIPE["data"]["image_size"][0]


def unet_flops(in_ch: int, classes: int, width: int, depth: int, side: int) -> tuple[float, float]:
    """Forward FLOPs of one image through semiseg's UNet, counted by hand (2 per multiply-add; biases,
    norms and activations not counted): (encoder, decoder)."""
    c = [width * 2**i for i in range(depth + 1)]
    px = [(side // 2**i) ** 2 for i in range(depth + 1)]
    conv3 = lambda cin, cout, p: 2 * 9 * cin * cout * p  # noqa: E731
    enc = sum(
        conv3(in_ch if i == 0 else c[i - 1], c[i], px[i]) + conv3(c[i], c[i], px[i]) for i in range(depth + 1)
    )
    dec = 2 * c[0] * classes * px[0]  # 1x1 head
    for i in range(depth, 0, -1):
        dec += 2 * c[i] * c[i - 1] * 4 * px[i]  # 2x2 stride-2 transposed convolution, per input pixel
        dec += conv3(2 * c[i - 1], c[i - 1], px[i - 1]) + conv3(c[i - 1], c[i - 1], px[i - 1])
    return float(enc), float(dec)


def config(method: dict):
    raw = copy.deepcopy(RECIPE)
    raw["method"] = method
    return build_config(raw)


def test_network_flops_match_a_hand_count():
    from semiseg.models.unet import UNet

    net = UNet(1, 2, WIDTH, DEPTH)
    for side in (SMALL, SIZE, 64):
        got = FMC["network_flops"](net, 1, (side, side))
        assert (got["encoder"], got["decoder"]) == unet_flops(1, 2, WIDTH, DEPTH, side)


def only_phase(measured: dict) -> dict:
    (phase,) = measured["phases"]
    return phase


def test_supervised_passes_and_flops():
    m = FMC["measure"](config({"name": "supervised"}), 1, 2, small=SMALL)
    phase = only_phase(m)
    assert phase["full_passes"] == {"model": {"grad": B, "nograd": 0}}
    enc, dec = unet_flops(1, 2, WIDTH, DEPTH, SIZE)
    assert phase["training_flops_per_iteration"] == 3 * B * (enc + dec)
    assert phase["iterations"] == RECIPE["train"]["epochs"] * RECIPE["train"]["iters_per_epoch"]
    # FlopCounterMode's forward + backward count agrees with 3F (the first layer needs no input gradient)
    assert 0.9 < phase["check"]["ratio"] <= 1.0


def test_mean_teacher_counts_the_teachers_passes_without_gradient():
    m = FMC["measure"](config({"name": "mean_teacher"}), 1, 2, small=SMALL)
    phase = only_phase(m)
    # the student sees the labeled and the unlabeled batch, the EMA teacher the unlabeled one (no grad)
    assert phase["full_passes"] == {
        "model": {"grad": 2 * B, "nograd": 0},
        "teacher": {"grad": 0, "nograd": B},
    }
    assert phase["images_per_stream"] == {"labeled": B, "unlabeled": B}
    f = sum(unet_flops(1, 2, WIDTH, DEPTH, SIZE))
    assert phase["training_flops_per_iteration"] == (3 * 2 * B + B) * f
    assert 0.9 < phase["check"]["ratio"] <= 1.0


def test_unimatch_decoder_only_stream_is_priced_at_the_decoder():
    m = FMC["measure"](config({"name": "unimatch"}), 1, 2, small=SMALL)
    phase = only_phase(m)
    # encoder: labeled + weak views, then 2 strong views; decoder: labeled + weak + perturbed weak, then
    # the 2 strong views
    p = phase["passes"]["model"]
    assert (p["encoder_grad"], p["decoder_grad"], p["encoder_nograd"], p["decoder_nograd"]) == (
        4 * B,
        5 * B,
        0,
        0,
    )
    assert phase["full_passes"]["model"] == {"grad": 4.5 * B, "nograd": 0}
    enc, dec = unet_flops(1, 2, WIDTH, DEPTH, SIZE)
    assert phase["training_flops_per_iteration"] == 3 * (4 * B * enc + 5 * B * dec)
    assert 0.9 < phase["check"]["ratio"] <= 1.0


def test_table_cost_counts_runs_phases_and_shared_configs(tmp_path, monkeypatch):
    recipe = write_recipe(tmp_path / "recipe.yaml", epochs=3, iters_per_epoch=5)
    sup = "supervised | 20 px"
    rows = [
        Row("supervised", "20 px", {"data.split.sparse_pixels": 20}),
        Row("MRF post-processing", "20 px", postprocess="mrf", reuse=sup),
        Row("supervised again", "20 px", {"data.split.sparse_pixels": 20}),  # the same runs: cached once
        Row("continued", "20 px", {"train.epochs": 2}, init_from=sup, seeds=[1]),
        Row("full only", "20 px", {"method.name": "mean_teacher"}, full_only=True),
    ]
    table = simple_table(recipe, "tiny-cost", rows, seeds=[0, 1], quick_seeds=[0])
    with registered(table):
        cost = FMC["table_cost"]("tiny-cost", Bundles(None), None, SMALL, {})
    f = sum(unet_flops(1, 2, WIDTH, DEPTH, SIZE))
    by_row = {r["row"]: r for r in cost["rows"]}
    assert by_row[sup]["runs"] == 2 and by_row[sup]["pflops"] == pytest.approx(2 * 15 * 3 * B * f / 1e15)
    assert "skipped" in by_row["MRF post-processing | 20 px"]
    again = by_row["supervised again | 20 px"]
    assert again["runs"] == 0 and [s["row"] for s in again["shared_with"]] == [sup, sup]
    assert by_row["continued | 20 px"]["runs"] == 1 and by_row["continued | 20 px"]["init_from"] == sup
    assert by_row["continued | 20 px"]["iterations_per_run"] == [[10]]
    assert by_row["full only | 20 px"]["runs"] == 2
    flops = (2 * 15 * 3 * B + 10 * 3 * B + 2 * 15 * (3 * 2 * B + B)) * f
    assert cost["total"]["runs"] == 5
    assert cost["total"]["pflops"] == pytest.approx(flops / 1e15)
    assert cost["total"]["gpu_hours"]["5"] == pytest.approx(flops / 5e12 / 3600)
    assert cost["total"]["gpu_hours"]["20"] == pytest.approx(flops / 20e12 / 3600)
    lines = FMC["markdown"]({"tables": [cost], "total": {**cost["total"], "runs_in_several_tables": 0},
                             "throughputs_tflops": [5.0, 20.0], "provenance": {"small_size": [SMALL, SMALL]}},
                            "provenance line").splitlines()  # fmt: skip
    assert any(line.startswith("| **total** | | **5** |") for line in lines)
    cells = [re.sub(r"\\\|", "", line).count("|") for line in lines if line.startswith("|")]
    assert cells and set(cells) == {11}  # 10 columns in every line (pipes in row names escaped)


def test_3d_patches_are_counted_small_in_plane_and_priced_at_the_full_patch():
    raw = copy.deepcopy(RECIPE)
    raw["model"].update(spatial_dims=3)
    raw["data"].update(image_size=[-1, SIZE, SIZE], patch_size=[4, SIZE, SIZE])
    m = FMC["measure"](build_config(raw), 1, 2, small=SMALL)
    assert m["image_size"] == [4, SIZE, SIZE] and m["small_size"] == [4, SMALL, SMALL]
    phase = only_phase(m)
    assert phase["full_passes"] == {"model": {"grad": B, "nograd": 0}}
    from semiseg.models.unet import UNet

    net = UNet(1, 2, WIDTH, DEPTH, spatial_dims=3)
    full = FMC["network_flops"](net, 1, (4, SIZE, SIZE))
    small = FMC["network_flops"](net, 1, (4, SMALL, SMALL))
    # fully convolutional: the FLOPs scale with the voxel count, and a 3x3x3 kernel costs 3x a 3x3 one
    ratio = (SIZE / SMALL) ** 2
    assert sum(full.values()) == pytest.approx(ratio * sum(small.values()), rel=0.02)
    assert full["encoder"] > 2.5 * unet_flops(1, 2, WIDTH, DEPTH, SIZE)[0]
    assert phase["training_flops_per_iteration"] == 3 * B * sum(full.values())
    assert 0.9 < phase["check"]["ratio"] <= 1.0


MLP_ROW = {"model.name": "mlp", "model.output": "map", "model.hidden": [16], "data.image_size": [8, 8]}


def test_networks_without_hooks_are_counted_at_full_size():
    raw = copy.deepcopy(RECIPE)
    raw["model"] = {"name": "mlp", "output": "map", "hidden": [16]}
    raw["data"]["image_size"] = [8, 8]
    cfg = build_config(raw)
    with pytest.raises(FMC["Unhookable"]):
        FMC["measure"](cfg, 1, 2, small=SMALL)
    m = FMC["measure_counted"](cfg, 1, 2)
    phase = only_phase(m)
    # 64 pixels -> 16 -> 64 units (one per pixel for 2 classes): forward 2 x (64 x 16) per layer; backward
    # the weight gradients of both layers and the input gradient of the second (the image needs none)
    layer = 2 * 64 * 16
    assert phase["training_flops_per_iteration"] == B * (2 * layer + 3 * layer)
    assert phase["passes"] == {} and phase["check"]["ratio"] is None and m["counted_at_full_size"]


def test_a_table_row_without_hooks_falls_back_to_the_full_size_count(tmp_path):
    recipe = write_recipe(tmp_path / "recipe.yaml", epochs=3, iters_per_epoch=5)
    rows = [Row("supervised", "20 px", {"data.split.sparse_pixels": 20}), Row("mlp", "20 px", MLP_ROW)]
    with registered(simple_table(recipe, "tiny-mlp-cost", rows, seeds=[0], quick_seeds=[0])):
        cost = FMC["table_cost"]("tiny-mlp-cost", Bundles(None), None, SMALL, {})
    by_row = {r["row"]: r for r in cost["rows"]}
    mlp = by_row["mlp | 20 px"]
    assert mlp["runs"] == 1 and mlp["counted_at_full_size"] and not cost["total"]["rows_not_estimated"]
    assert mlp["pflops"] == pytest.approx(15 * B * 5 * 2 * 64 * 16 / 1e15)
    text = FMC["markdown"]({"tables": [cost], "total": {**cost["total"], "runs_in_several_tables": 0},
                            "throughputs_tflops": [5.0, 20.0], "provenance": {"small_size": [SMALL, SMALL]}},
                           "provenance line")  # fmt: skip
    assert "| mlp | 20 px | 1 | 15 | not counted (FLOPs counted at full size) | – |" in text


def test_repeated_rounds_are_counted_once_and_distinct_layers_each(monkeypatch):
    import semiseg.bench.timing as timing

    made = []

    class Counting(timing.PassCounter):
        def __init__(self, method):
            made.append(method)
            super().__init__(method)

    monkeypatch.setattr(timing, "PassCounter", Counting)
    m = FMC["measure"](config({"name": "pseudo_label", "rounds": 3}), 1, 2, small=SMALL)
    assert [p["phase"] for p in m["phases"]] == ["supervised", "round1", "round2", "round3"]
    assert len(made) == 2 * 2  # the supervised phase and round1, each with the student and the teacher hooked
    rounds = m["phases"][1:]
    assert all(p["full_passes"] == rounds[0]["full_passes"] for p in rounds)
    # IODA's two input autoencoders train different layers: both are counted, at their own cost
    raw = copy.deepcopy(RECIPE)
    raw["model"] = {"name": "mlp", "output": "map", "hidden": [16, 8], "activation": "tanh"}
    raw["data"]["image_size"] = [8, 8]
    raw["data"]["split"].update(supervision="dense")
    raw["method"] = {"name": "ioda", "input_layers": 2, "output_layers": 0, "input_epochs": 1, "loss": "mse"}
    flops = {
        p["phase"]: p["training_flops_per_iteration"]
        for p in FMC["measure_counted"](build_config(raw), 1, 2)["phases"]
    }
    assert flops["input_pretrain1"] > 2 * flops["input_pretrain2"] > 0


@pytest.mark.parametrize("targets, dec_iters, expected", [("dec", None, None), ("dec", 7, 7), ("none", 7, 0)])
def test_ssldec_dec_rounds_run_what_the_config_fixes(targets, dec_iters, expected):
    """SSLDEC's unlabeled rounds: one pass by default (data-dependent), ``dec_iters`` when set, none
    for the ``targets: none`` control (its plan ends them before any step)."""
    from semiseg.methods.ssldec import SSLDEC

    method = SSLDEC.__new__(SSLDEC)  # only the config is read
    method.cfg = type("Cfg", (), {"targets": targets, "dec_iters": dec_iters})()
    assert method.planned_iterations("dec3") == expected
    assert method.planned_iterations("labeled3") is None and method.planned_iterations("pretrain") is None
