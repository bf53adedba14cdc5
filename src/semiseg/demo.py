"""``semiseg demo``: what do a few labels buy, and what do unlabeled images add to them?

Trained on the built-in generated "shapes" set (240 images: 173 for training, 19 validation,
48 test), with the same UNet, optimizer and number of iterations in every row:

- ``dense-8``: 8 images with dense masks, supervised (the control);
- ``semi-8``: the same 8 dense masks plus the other 165 training images unlabeled, mean teacher
  (an EMA teacher on each unlabeled image, the student on a noisier view of it, softmax-MSE
  consistency); every step draws 8 labeled + 8 unlabeled images;
- ``sparse-20px``: every training image with 20 labeled pixels (clicks), supervised;
- ``dense-all``: every training image with a dense mask, supervised (the most labels;
  at 300 iterations not a reliable ceiling: its test Dice moved by 0.23 between two runs).

Prints a table on the held-out test images (test Dice, pixel error, Dice gain over ``dense-8``),
a one-line summary of the semi-supervised gain, and writes ``comparison.png`` (test images, truth
and every row's prediction) plus each run's own plots. Needs no data root and no download; about 2
minutes on an idle 2-core machine (``benchmarks/results/demo.md``). On a busy machine set
``OMP_NUM_THREADS=1``: two threads competing with other processes took 29 minutes.

The mean-teacher settings (consistency weight 1.0 ramped up over the run from 10 % of it, a strong
view = the weak view plus Gaussian noise of standard deviation 0.05 instead of the library's
colour-jitter/blur default) were chosen on the validation images only; the trials are in
``benchmarks/dev/demo-dev.md``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

BASE: dict[str, Any] = {
    "data": {
        "dataset": "shapes",
        "image_size": [64, 64],
        "num_images": 240,
        "shapes_classes": 3,
        "split": {"seed": 0, "val_fraction": 0.1, "test_fraction": 0.2, "unlabeled": "none"},
    },
    "model": {"name": "unet", "width": 16, "depth": 3, "norm": "batch"},
    "method": {"name": "supervised", "ce_weight": 1.0, "dice_weight": 0.5},
    "train": {
        "epochs": 30,
        "batch_size": 8,
        "iters_per_epoch": 10,
        "lr": 0.003,
        "val_every": 3,
        "val_metric": "dice/mean",
        "progress": False,
        "augment": {"hflip": True, "vflip": True, "rot90": True},
    },
}

#: labeled images of the ``dense-8`` control and of the semi-supervised row
FEW_LABELED = 8

#: the semi-supervised row's method (chosen on validation, benchmarks/dev/demo-dev.md); its ramp-up
#: is set to the run's length by :func:`run_config`
SEMI_METHOD: dict[str, Any] = {
    "name": "mean_teacher",
    "ce_weight": 1.0,  # the supervised loss of the other rows
    "dice_weight": 0.5,
    "consistency_weight": 1.0,
    "ema_decay": 0.99,
    # the student's strong view (SEMI_STRONG) against the teacher's weak view, labeled and unlabeled
    # images in one batch: the setting the validation trials chose (the method's defaults since
    # became SSL4MIS's input noise on the teacher and one forward per stream)
    "perturbation": "strong",
    "joint_batch": True,
}
#: the semi row's strong view: the weak view plus Gaussian noise (the default colour jitter and blur
#: hurt on these images, whose classes differ by shape and a small intensity step)
SEMI_STRONG: dict[str, Any] = {"jitter_prob": 0.0, "blur_prob": 0.0, "noise_std": 0.05}
#: consistency starts after this fraction of the run and ramps up (sigmoid) over the whole run
SEMI_START_FRACTION = 0.1

#: (name, what the labels are, overrides)
RUNS: list[tuple[str, str, dict[str, Any]]] = [
    ("dense-8", f"{FEW_LABELED} images, dense masks", {"data.split.labeled": FEW_LABELED}),
    (
        "semi-8",
        f"{FEW_LABELED} images dense + the rest unlabeled",
        {
            "data.split.labeled": FEW_LABELED,
            "data.split.unlabeled": "rest",
            "method": SEMI_METHOD,
            "train.strong_augment": SEMI_STRONG,
        },
    ),
    (
        "sparse-20px",
        "all images, 20 labeled pixels each",
        {"data.split.supervision": "sparse", "data.split.sparse_pixels": 20},
    ),
    ("dense-all", "all images, dense masks", {}),
]

#: the row the others are compared with, and the semi-supervised row
CONTROL, SEMI = "dense-8", "semi-8"


def run_config(overrides: dict[str, Any], epochs: int | None = None, base: dict[str, Any] | None = None):
    """The :class:`~semiseg.config.RunConfig` of one row: ``BASE`` (or ``base``) plus ``overrides``.

    A mean-teacher row's consistency ramp spans the run and starts after ``SEMI_START_FRACTION`` of
    it, so ``--epochs`` keeps the schedule's shape.
    """
    from semiseg.config import build_config, set_dotted

    raw = json.loads(json.dumps(base or BASE))
    for key, value in overrides.items():
        set_dotted(raw, key, json.loads(json.dumps(value)))
    if epochs is not None:
        set_dotted(raw, "train.epochs", epochs)
    if raw["method"]["name"] == "mean_teacher":
        steps = raw["train"]["epochs"] * raw["train"]["iters_per_epoch"]
        raw["method"].setdefault("ramp_up_steps", steps)
        raw["method"].setdefault("consistency_start_step", int(SEMI_START_FRACTION * steps))
    return build_config(raw, source="demo")


def run_demo(
    output: str | Path = "runs/demo", epochs: int | None = None, base: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Train every row of ``RUNS``, print and write the comparison; returns the rows.

    ``base`` replaces ``BASE`` (tests use a smaller set).
    """
    import torch

    from semiseg.data import load_bundle
    from semiseg.engine.run import load_trained, train
    from semiseg.io import atomic_write_text, check_folder

    out = check_folder(output)  # before the first run
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = []
    bundle = None
    for name, labels, overrides in RUNS:
        cfg = run_config(overrides, epochs, base)
        bundle = bundle or load_bundle(cfg.data)
        print(f"[demo] training {name}: {labels} ...", flush=True)
        t0 = time.perf_counter()
        res = train(cfg, output_dir=out / name, bundle=bundle)
        rows.append(
            {
                "run": name,
                "labels": labels,
                "method": cfg.method["name"],
                "labeled_images": res["labeled"],
                "unlabeled_images": res["unlabeled"],
                "iterations": cfg.train.epochs * cfg.train.iters_per_epoch,
                "test_dice": res["test"]["dice/mean"],
                "test_pixel_error": res["test"]["pixel_error"],
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
    control = next(r["test_dice"] for r in rows if r["run"] == CONTROL)
    for r in rows:
        r["dice_vs_control"] = r["test_dice"] - control
    table = format_table(rows)
    print("\n" + table)
    atomic_write_text(out / "comparison.txt", table + "\n")
    atomic_write_text(out / "comparison.json", json.dumps(rows, indent=1))
    _comparison_figure(out, [r["run"] for r in rows], load_trained)
    print(f"\nplots: {out}/comparison.png and {out}/<run>/learning_curves.png, overlays.png")
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """The printed comparison: one line per row, then the semi-supervised row's gain in words."""
    width = max(len("labels"), *(len(r["labels"]) for r in rows))
    header = (
        f"{'run':<12} {'labels':<{width}} {'method':<13} {'test Dice':>9} "
        f"{'vs ' + CONTROL:>11} {'pixel err':>9} {'time':>7}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        gain = "" if r["run"] == CONTROL else f"{r['dice_vs_control']:+.3f}"
        lines.append(
            f"{r['run']:<12} {r['labels']:<{width}} {r['method']:<13} {r['test_dice']:>9.3f} "
            f"{gain:>11} {r['test_pixel_error']:>9.3f} {r['seconds']:>6.0f}s"
        )
    semi = next((r for r in rows if r["run"] == SEMI), None)
    if semi is not None:
        verdict = "gain" if semi["dice_vs_control"] > 0 else "no gain"
        lines += [
            "",
            f"{SEMI} ({semi['method'].replace('_', ' ')}, {semi['labeled_images']} labeled + "
            f"{semi['unlabeled_images']} unlabeled images, same iterations): "
            f"{semi['dice_vs_control']:+.3f} test Dice over {CONTROL} ({verdict})",
        ]
    return "\n".join(lines)


def _comparison_figure(out: Path, names: list[str], load_trained) -> None:
    """Test images, their truth and each run's prediction side by side."""
    from semiseg.config import build_config
    from semiseg.data import load_bundle
    from semiseg.data.splits import make_split
    from semiseg.engine.plots import compare_models

    models = {n: load_trained(out / n / "best.pt")[:2] for n in names}
    cfg = build_config(json.loads((out / names[0] / "config.json").read_text()))
    test = make_split(load_bundle(cfg.data), cfg.data.split).test[:4]
    compare_models(models, test, out / "comparison.png", cfg.data.shapes_classes)
