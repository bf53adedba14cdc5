"""The binary decision threshold chosen on validation, stored with the model and applied everywhere."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from semiseg.cli import main
from semiseg.engine import run as engine_run
from semiseg.engine.checkpoint import load_checkpoint
from semiseg.engine.decision import GRID, ThresholdPostprocess, foreground_jaccard, tune_threshold
from semiseg.engine.evaluate import evaluate_records
from semiseg.errors import ConfigError


def test_the_threshold_with_the_best_validation_jaccard_is_chosen_nearest_one_half():
    mask = np.zeros((4, 4), np.int64)
    mask[:2] = 1
    probs = torch.zeros(2, 4, 4)
    probs[1] = torch.where(torch.from_numpy(mask) == 1, 0.3, 0.1)
    probs[0] = 1 - probs[1]
    t, table = tune_threshold([probs], [mask])
    assert (
        t == 0.3 and table[0.3] == 1.0 and table[0.5] == 0.0 and table[0.1] == 0.5 and len(table) == len(GRID)
    )
    assert foreground_jaccard(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long)) == 1.0


def test_a_run_stores_the_threshold_and_scores_with_it(tmp_path, make_config, capsys):
    cfg = make_config("data.shapes_classes=2", "train.threshold=val", "train.epochs=2")
    results = engine_run.train(cfg, output_dir=tmp_path)
    decision = results["decision"]
    assert (
        decision["split"] == "val"
        and 0 < decision["threshold"] < 1
        and decision["n"] == len(results["val_cases"])
    )
    state = load_checkpoint(tmp_path / "best.pt")
    assert state["decision"] == decision
    assert json.loads((tmp_path / "metrics.json").read_text())["decision"] == decision
    # the test scores are those of the thresholded probabilities
    method, loaded_cfg, _ = engine_run.load_trained(tmp_path / "best.pt")
    from semiseg.data import prepare_data

    data = prepare_data(loaded_cfg)
    threshold = ThresholdPostprocess(decision["threshold"])
    size, cpu = loaded_cfg.data.image_size, torch.device("cpu")
    means, _ = evaluate_records(
        method.predict, data.test, num_classes=2, image_size=size, device=cpu, postprocess=threshold
    )
    assert means["dice/1"] == pytest.approx(results["test"]["dice/1"])
    # evaluate applies the stored threshold too
    assert main(["evaluate", "--checkpoint", str(tmp_path / "best.pt"), "-o", str(tmp_path / "e.json")]) == 0
    capsys.readouterr()
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["postprocess"]["name"] == "threshold"
    assert report["metrics"]["dice/1"] == pytest.approx(results["test"]["dice/1"])
    # the threshold records the test-time augmentation it was chosen under; applied under another,
    # evaluate says so
    assert decision["tta"] == "none"
    assert main(["evaluate", "--checkpoint", str(tmp_path / "best.pt"), "--tta", "flip"]) == 0
    err = capsys.readouterr().err
    assert (
        f"note: the stored threshold {decision['threshold']:g} was chosen on validation with tta none" in err
    )
    assert "applies it with tta flip" in err


def test_more_than_two_classes_refuse_a_threshold(tmp_path, make_config):
    with pytest.raises(ConfigError, match="train.threshold: val applies to binary"):
        engine_run.train(make_config("train.threshold=val", "train.epochs=1"), output_dir=tmp_path)


def test_predict_applies_the_stored_threshold(tmp_path, make_config, capsys):
    from PIL import Image

    cfg = make_config("data.shapes_classes=2", "train.threshold=val", "train.epochs=1")
    engine_run.train(cfg, output_dir=tmp_path / "run")
    best = tmp_path / "run" / "best.pt"
    state = load_checkpoint(best)
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((32, 32)) * 255).astype(np.uint8)).save(images / "a.png")
    for t in (0.01, 0.99):  # an extreme stored threshold decides the written mask
        state["decision"] = {**state["decision"], "threshold": t}
        torch.save(state, best)
        out = tmp_path / f"masks{t}"
        assert main(["predict", "--checkpoint", str(best), "--input", str(images), "--output", str(out)]) == 0
        capsys.readouterr()
        with Image.open(out / "a.png") as im:
            fraction = float((np.asarray(im) == 1).mean())
        assert fraction > 0.99 if t == 0.01 else fraction < 0.01


def test_lower_is_better_metrics_refuse_val_mode_max(tmp_path, make_config):
    with pytest.raises(ConfigError, match="train.val_mode: 'max' would keep the worst epoch of 'mse'"):
        engine_run.train(make_config("train.val_metric=mse", "train.val_mode=max"), output_dir=tmp_path)
