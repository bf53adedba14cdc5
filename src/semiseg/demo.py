"""``semiseg demo``: what do a few labels buy? Trained on the built-in generated "shapes" set.

Runs a small set of label budgets with the same UNet and training schedule, prints a comparison
table on the held-out test images and writes ``comparison.png`` plus each run's own plots. Needs
no data root and no download; about 2–4 minutes on 2 CPU cores.
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
        "num_images": 120,
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

#: (name, what the labels are, overrides)
RUNS: list[tuple[str, str, dict[str, Any]]] = [
    ("dense-8", "8 images, dense masks", {"data.split.labeled": 8}),
    (
        "sparse-20px",
        "all images, 20 labeled pixels each",
        {"data.split.supervision": "sparse", "data.split.sparse_pixels": 20},
    ),
    ("dense-all", "all images, dense masks", {}),
]


def run_demo(output: str | Path = "runs/demo", epochs: int | None = None) -> list[dict[str, Any]]:
    import torch

    from semiseg.config import build_config, set_dotted
    from semiseg.data import load_bundle
    from semiseg.engine.run import load_trained, train
    from semiseg.io import atomic_write_text

    out = Path(output)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = []
    bundle = None
    for name, labels, overrides in RUNS:
        raw = json.loads(json.dumps(BASE))
        for key, value in overrides.items():
            set_dotted(raw, key, value)
        if epochs is not None:
            set_dotted(raw, "train.epochs", epochs)
        cfg = build_config(raw, source="demo")
        bundle = bundle or load_bundle(cfg.data)
        print(f"[demo] training {name}: {labels} ...", flush=True)
        t0 = time.perf_counter()
        res = train(cfg, output_dir=out / name, bundle=bundle)
        rows.append(
            {
                "run": name,
                "labels": labels,
                "labeled_images": res["labeled"],
                "test_dice": res["test"]["dice/mean"],
                "test_pixel_error": res["test"]["pixel_error"],
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
    header = f"{'run':<12} {'labels':<38} {'test Dice':>9} {'pixel err':>9} {'time':>7}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['run']:<12} {r['labels']:<38} {r['test_dice']:>9.3f} {r['test_pixel_error']:>9.3f} "
            f"{r['seconds']:>6.0f}s"
        )
    table = "\n".join(lines)
    print("\n" + table)
    atomic_write_text(out / "comparison.txt", table + "\n")
    atomic_write_text(out / "comparison.json", json.dumps(rows, indent=1))
    _comparison_figure(out, [r["run"] for r in rows], load_trained)
    print(f"\nplots: {out}/comparison.png and {out}/<run>/learning_curves.png, overlays.png")
    return rows


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
