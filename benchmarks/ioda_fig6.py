"""The IODA paper's Fig. 6 with its 1000-iteration panel: NDA, IDA and IODA (256 hidden units, seed 0)
trained in full mode, their output on validation image 10 after 10, 100, 250 and 1000 fine-tuning epochs.

The quick ``ioda-textures`` table fine-tunes 250 epochs at 256 hidden units, so its Fig. 6 stops at 250.
This script trains the table's three 256-hidden rows (seed 0) with the recipe's full schedule
(autoencoders up to 300 / 100 epochs, fine-tuning 1000 epochs), the configs ``row_config`` builds for
``--full``, and draws the figure from the epoch snapshots the rows save (``train.save_epochs``). No test
number is computed: training skips the final evaluation and the test split. Beside the figure it records
each run's validation MSE at the snapshot epochs and its best (the epochs' records). Interrupted runs
resume from their last checkpoint. Writes ``benchmarks/results/ioda-textures-fig6-full.{png,json,md}``.

Run it with the training code of the table (its pinned worktree) on ``PYTHONPATH``:

    SEMISEG_BENCH_OVERLAY=<bench commit> PYTHONPATH=<worktree>/src OMP_NUM_THREADS=1 \\
        python benchmarks/ioda_fig6.py --work-dir runs/ioda-fig6
"""

from __future__ import annotations

import argparse
import inspect
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETUPS = ("NDA", "IDA", "IODA")
SETTING = "3 layers, 256 hidden"
#: --smoke: 32x32 images, 16 hidden units, 2 fine-tuning epochs (snapshots after 1 and 2), 1 per autoencoder
SMOKE = ["data.image_size=[32, 32]", "data.num_images=12", "model.hidden=[16, 16]", "train.epochs=2",
         "train.save_epochs=[1, 2]", "train.val_every=1", "method.input_epochs=1", "method.output_epochs=1"]  # fmt: skip


def val_curve(run_dir: Path, epochs: list[int]) -> dict[str, float]:
    """Validation MSE of the fine-tuning phase at ``epochs`` and its minimum, from ``epochs.jsonl``."""
    rows = [json.loads(line) for line in (run_dir / "epochs.jsonl").read_text().splitlines()]
    fine = {r["epoch"]: r["val/mse"] for r in rows if r["phase"] == "finetune" and "val/mse" in r}
    best = min(fine, key=fine.get)
    return {**{str(e): round(fine[e], 5) for e in epochs if e in fine}, "best": round(fine[best], 5),
            "best_epoch": best}  # fmt: skip


def render(result: dict, provenance: str) -> str:
    epochs = result["epochs"]
    head = (
        "| setup | "
        + " | ".join(f"val MSE after {e}" for e in epochs)
        + " | best val MSE (epoch) | wall (s) |"
    )
    lines = [
        f"# IODA Fig. 6 in full mode: 256 hidden units, seed 0, {result['image']} (validation only)",
        "",
        f"Figure: `{Path(result['figure']).name}`",
        "",
        head,
        "|" + "---|" * (len(epochs) + 3),
    ]
    for name, run in result["runs"].items():
        v = run["val_mse"]
        cells = " | ".join(f"{v[str(e)]:.4f}" for e in epochs)
        lines.append(f"| {name} | {cells} | {v['best']:.4f} ({v['best_epoch']}) | {run['seconds']} |")
    lines += ["", result["note"], "", provenance, ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work-dir", default="runs/ioda-fig6", help="folder of the three runs (resumable)")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/ioda-textures-fig6-full"))
    p.add_argument("--smoke", action="store_true", help="a tiny geometry and 2 epochs (tests)")
    a = p.parse_args()
    user = ["train.plots=false"] + (SMOKE if a.smoke else [])

    import torch

    from semiseg.bench import get_table
    from semiseg.bench.figures import snapshot_grid
    from semiseg.bench.provenance import provenance, write_result
    from semiseg.bench.runner import row_config
    from semiseg.bench.tables import IODA_FIGURE_IMAGE
    from semiseg.config import to_dict
    from semiseg.data import prepare_data
    from semiseg.engine.run import load_trained, train

    t0 = time.time()
    table = get_table("ioda-textures")
    runs, snapshots, cfg = {}, {}, None
    for name in SETUPS:
        row = next(r for r in table.rows if r.key == f"{name} | {SETTING}")
        cfg = row_config(table, row, 0, quick=False, user=user)
        epochs = cfg.train.save_epochs
        out = Path(a.work_dir) / name
        t = time.time()
        if not (out / f"epoch_finetune_{epochs[-1]}.pt").is_file():
            no_test = {"test": False} if "test" in inspect.signature(train).parameters else {}  # older pins
            train(cfg, output_dir=out, resume=(out / "last.pt").is_file(), final_eval=False, **no_test)
        runs[name] = {"config": to_dict(cfg), "seconds": round(time.time() - t, 1),
                      "val_mse": val_curve(out, epochs)}  # fmt: skip
        snapshots[name] = {e: load_trained(out / f"epoch_finetune_{e}.pt")[0] for e in epochs}
        print(f"{name}: {runs[name]['val_mse']} ({runs[name]['seconds']} s)", flush=True)
    record = prepare_data(cfg, None).val[IODA_FIGURE_IMAGE]
    figure = Path(a.out).with_suffix(".png")
    snapshot_grid(snapshots, torch.from_numpy(record.image), torch.from_numpy(record.mask), figure)
    result = {
        "epochs": epochs,
        "image": f"validation {record.id}",
        "figure": str(figure.relative_to(ROOT) if figure.is_relative_to(ROOT) else figure),
        "seed": 0,
        "runs": runs,
        "note": "Full mode (the recipe without its quick section): autoencoders up to 300 (input) / 100 (output) "
        "epochs, fine-tuning 1000 epochs of 5 batches of 100, validated every 5 epochs. An epoch is the "
        "paper's iteration. The runs are the table's `NDA / IDA / IODA | 3 layers, 256 hidden` rows, seed 0, "
        "in full mode; the quick table's own Fig. 6 stops at 250 epochs. `wall` is this process's time for the "
        "run (0 when it was already trained). Validation data only: no test value is computed.",
        "provenance": provenance(wall_seconds=round(time.time() - t0, 1)),
    }
    print(write_result(a.out, result, render))


if __name__ == "__main__":
    main()
