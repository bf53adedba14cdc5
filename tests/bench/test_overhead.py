"""The engine-overhead measurement on a tiny setup: what each side runs (no timing assertions)."""

from __future__ import annotations

import pytest

from semiseg.bench.overhead import Setup, measure, plain_epoch, trainer_epoch

TINY = Setup(image_size=32, batch_size=4, iters=2, num_images=20, classes=2, width=4, depth=2)


def test_both_sides_train_on_the_same_tensors_with_the_same_model(tmp_path):
    epoch, trainer = trainer_epoch(TINY, False, tmp_path / "t")
    data = trainer.data.labeled
    plain = plain_epoch(data.images, data.masks, trainer.cfg.model, data.num_classes, TINY, False)
    plain()
    assert len(plain.losses) == TINY.iters and all(loss > 0 for loss in plain.losses)
    epoch()  # one real epoch: iters steps, last.pt, no validation
    assert trainer.global_step == TINY.iters and trainer.epoch == 1
    assert (tmp_path / "t" / "last.pt").is_file() and not (tmp_path / "t" / "best.pt").exists()
    assert not any(k.startswith("val/") for k in trainer.history[-1])
    assert trainer.cfg.method == {"name": "supervised", "ce_weight": 1.0, "dice_weight": 0.0}
    assert trainer.cfg.train.optimizer == "adam" and trainer.cfg.train.batch_size == TINY.batch_size


def test_channels_last_reaches_the_trainers_model(tmp_path):
    import torch

    _, trainer = trainer_epoch(TINY, True, tmp_path / "t")
    conv = next(m for m in trainer.method.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_measure_reports_every_side_and_the_ratios(tmp_path):
    out = measure(TINY, rounds=2, out=tmp_path, warmup=0)
    assert set(out["sides"]) == {"plain/nchw", "trainer/nchw", "plain/channels_last", "trainer/channels_last"}
    for name, side in out["sides"].items():
        assert len(side["round_images_per_second"]) == 2 and side["images_per_second"] > 0
        assert ("loop_images_per_second" in side) == name.startswith("trainer")
    assert all(round(v, 2) == v for v in out["ratios"].values()) and len(out["ratios"]) == 4
    assert set(out["bar"]["met"]) == {"trainer/plain, NCHW", "trainer/plain, channels-last"}
    assert out["images_per_round"] == TINY.iters * TINY.batch_size
    with pytest.raises(ValueError):
        measure(TINY, rounds=0, out=tmp_path)
