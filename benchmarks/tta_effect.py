"""Does flip test-time augmentation (``inference.tta: flip``) change the scores of trained runs?

Scores each run folder's ``best.pt`` on its **validation** split twice, without and with flip TTA,
interleaved per run (none, flip, none, flip, ...), and groups the runs into rows by ``--row
LABEL=DIR,DIR,...``. Reports per row the mean ± sample std over its runs of mean Dice and HD95 with
each setting, and the paired difference (flip − none) with its std. Validation only: ``best.pt`` was
selected on the same validation scores without TTA, which favours the setting without it a little;
the test split is not read.

    python benchmarks/tta_effect.py --data-root ../shared/data \\
        --row "FixMatch=runs/bench/cache/<key>,..." --row "supervised=..." -o benchmarks/results/tta-acdc
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch


def load_run(run: Path, data_root: str | None) -> tuple[Any, Any, dict, Any]:
    """``run``'s best.pt (method, config, checkpoint) and its prepared data, read once for both settings."""
    from semiseg.data import prepare_data
    from semiseg.engine.run import load_trained

    method, cfg, state = load_trained(run / "best.pt", torch.device("cpu"))
    return method, cfg, state, prepare_data(cfg, data_root)


def score(loaded: tuple[Any, Any, dict, Any], tta: str) -> tuple[dict[str, float], dict[str, int], float]:
    """Validation means of a :func:`load_run` with ``inference.tta`` = ``tta``, the number of cases
    each mean leaves out (undefined, e.g. HD95 of a missed class), and the seconds taken."""
    from semiseg.config import with_tta
    from semiseg.engine.run import evaluate_trained
    from semiseg.metrics import undefined_counts

    method, cfg, state, data = loaded
    start = time.perf_counter()
    means, cases, _ = evaluate_trained(method, with_tta(cfg, tta), state, data, "val", torch.device("cpu"))
    return means, undefined_counts(cases), time.perf_counter() - start


def spread(values: list[float]) -> dict[str, Any]:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "n": len(values),
    }


def fmt(s: dict[str, Any], scale: float) -> str:
    if s["std"] is None:
        return f"{s['mean'] * scale:.2f} (n=1)"
    return f"{s['mean'] * scale:.2f} ± {s['std'] * scale:.2f}"


def render(res: dict[str, Any], prov: str) -> str:
    """The Markdown of a result (``python benchmarks/tta_effect.py --render <json>`` re-renders it)."""
    metrics, rows = res["config"]["metrics"], res["config"]["rows"]
    lines = [
        "# Flip test-time augmentation on trained runs (validation split)",
        "",
        "Each run's `best.pt` scored on its validation split without and with `inference.tta: flip` "
        "(mean logits over the 4 flip combinations of a 2D slice), interleaved per run. Mean ± sample "
        "std over the row's runs (n per row); the difference is paired per run. `best.pt` was selected "
        "on validation scores without TTA, which favours `none` a little. Dice in %, HD95 in pixels. "
        "Time: the evaluation's wall time with / without (4 network calls against 1; data resizing and "
        "metrics counted once in both), beside other processes. A row with n < 3 (†) supports no claim.",
        "",
        "| row | n | Dice none | Dice flip | Dice flip − none | HD95 none | HD95 flip | HD95 flip − none "
        "| time flip / none |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    if res["config"].get("note"):
        lines[3:3] = ["", res["config"]["note"]]
    left_out = []
    for r in res["rows"]:
        d, h = r["summary"][metrics[0]], r["summary"][metrics[1]]
        n = d["none"]["n"]
        lines.append(
            f"| {r['label']}{' †' if n < 3 else ''} | {n} | {fmt(d['none'], 100)} | {fmt(d['flip'], 100)} | "
            f"{fmt(d['flip_minus_none'], 100)} | {fmt(h['none'], 1)} | {fmt(h['flip'], 1)} | "
            f"{fmt(h['flip_minus_none'], 1)} | {r['time_ratio']:.2f} |"
        )
        if "undefined" in r["runs"][0]["none"]:
            counts = {t: [run[t]["undefined"][metrics[1]] for run in r["runs"]] for t in ("none", "flip")}
            left_out.append(f"{r['label']}: none {counts['none']}, flip {counts['flip']}")
    if left_out:
        lines += ["", f"Validation cases each run's `{metrics[1]}` leaves out (undefined: a class missed or "
                      "predicted where absent), per run: " + "; ".join(left_out) + "."]  # fmt: skip
    lines += ["", "Reproduce: `" + " ".join(["python benchmarks/tta_effect.py", *(f'--row "{x}"' for x in rows),
                                             "--data-root ../shared/data"]) + "`", "", prov, ""]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--row", action="append", help="LABEL=RUN_DIR,RUN_DIR,...")
    p.add_argument("--note", help="where the runs come from (printed under the description)")
    p.add_argument("--render", help="re-render the Markdown of this result JSON (beside it)")
    p.add_argument("--data-root", default=None)
    p.add_argument("--metrics", default="dice/mean,hd95_px/mean")
    p.add_argument("-o", "--output", default="benchmarks/results/tta-acdc")
    args = p.parse_args()

    from semiseg.bench.provenance import provenance, provenance_line, write_result

    if args.render:
        import json

        res = json.loads(Path(args.render).read_text())
        text = render(res, provenance_line(res["provenance"]))
        Path(args.render).with_suffix(".md").write_text(text)
        print(text)
        return
    if not args.row:
        p.error("--row is required")

    torch.manual_seed(0)
    wall = time.perf_counter()
    metrics = args.metrics.split(",")
    rows = []
    for spec in args.row:
        label, _, dirs = spec.partition("=")
        runs = []
        for d in dirs.split(","):
            run, loaded = {"run": d}, load_run(Path(d), args.data_root)
            for tta in ("none", "flip"):  # interleaved per run
                means, undefined, seconds = score(loaded, tta)
                run[tta] = {m: means.get(m) for m in metrics} | {"seconds": round(seconds, 2)}
                run[tta]["undefined"] = {m: undefined.get(m, 0) for m in metrics}
            print(label, d, {t: run[t] for t in ("none", "flip")}, flush=True)
            runs.append(run)
        summary = {}
        for m in metrics:
            pairs = [(r["none"][m], r["flip"][m]) for r in runs if None not in (r["none"][m], r["flip"][m])]
            summary[m] = {
                "none": spread([a for a, _ in pairs]),
                "flip": spread([b for _, b in pairs]),
                "flip_minus_none": spread([b - a for a, b in pairs]),
            }
        ratio = statistics.fmean(r["flip"]["seconds"] / r["none"]["seconds"] for r in runs)
        rows.append({"label": label, "runs": runs, "summary": summary, "time_ratio": ratio})
    result = {
        "config": {"split": "val", "metrics": metrics, "rows": args.row, "note": args.note},
        "seed": 0,
        "rows": rows,
        "provenance": provenance(wall_seconds=round(time.perf_counter() - wall, 1)),
    }

    print(write_result(args.output, result, render))


if __name__ == "__main__":
    main()
