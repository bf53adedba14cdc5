"""Validation curves of a bench table's cached runs (validation only: no test number is read).

For each run of ``<work-dir>/<table>/runs.json``: the validation metric at every validated epoch of
every phase (``epochs.jsonl``), and whether the last phase was still improving at its end (its last
value better than the best of its first two thirds: above it, or below it with ``--lower-is-better``
for losses and errors such as ``val/mse``). Use it to ask why a table came out as it did (an
undertrained budget, a collapsed draw) without looking at the test split.

    python benchmarks/dev/scripts/val_curves.py semi-acdc [--work-dir runs/bench] [--metric val/dice/mean]
    python benchmarks/dev/scripts/val_curves.py ioda-textures --metric val/mse --lower-is-better
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def curve(run_dir: Path, metric: str) -> list[tuple[str, int, float]]:
    """(phase, epoch, value) of every validated epoch of a run, in order."""
    path = run_dir / "epochs.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        h = json.loads(line)
        if metric in h and h.get("accepted") is not False:
            out.append((h["phase"], int(h["epoch"]), float(h[metric])))
    return out


def still_rising(points: list[tuple[str, int, float]], lower_is_better: bool = False) -> bool | None:
    """Whether the last phase's final value beats every value of its first two thirds (None: fewer
    than three validations in that phase)."""
    if not points:
        return None
    last = [v for p, _, v in points if p == points[-1][0]]
    if len(last) < 3:
        return None
    head = last[: max(1, (2 * len(last)) // 3)]
    return last[-1] < min(head) if lower_is_better else last[-1] > max(head)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("table")
    p.add_argument("--work-dir", default="runs/bench")
    p.add_argument("--metric", default="val/dice/mean")
    p.add_argument("--lower-is-better", action="store_true", help="the metric is a loss or an error")
    a = p.parse_args()
    index = json.loads((Path(a.work_dir) / a.table / "runs.json").read_text())
    print(f"| run | {a.metric} by phase and epoch | last phase still improving |")
    print("|---|---|---|")
    for key, run_dir in sorted(index.items()):
        points = curve(Path(run_dir), a.metric)
        if not points:
            continue
        text = " ".join(f"{phase} {epoch}: {value:.3f}" for phase, epoch, value in points)
        rising = still_rising(points, a.lower_is_better)
        name = key.replace("|", "·")  # a run key "method | setting | seed s" inside a Markdown cell
        print(f"| {name} | {text} | {'–' if rising is None else 'yes' if rising else 'no'} |")


if __name__ == "__main__":
    main()
