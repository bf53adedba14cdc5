"""Training and validation figures of the `ssldec-acdc` table's runs, from their epoch logs (no test
value is read): per row, the labeled cross-entropy at the end of pre-training, the validation Dice
per class after pre-training and at the end, and the labeled slices' balanced pixel accuracy that
the retraining phases measured (their threshold is 0.95).

    python benchmarks/dev/scripts/ssldec_acdc_trainlogs.py [benchmarks/results/ssldec-acdc.json] \
        [--jsonl benchmarks/dev/ssldec-acdc-dev.jsonl]

Reads each run's ``epochs.jsonl`` from its ``run_dir`` (the campaign's run cache under runs/bench);
``--jsonl`` also writes one record per run (row, seed, run folder, the table's commit, source hash,
config and hardware, and the values summarised), so the figures stay traceable once the cache is gone.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

CLASSES = {1: "RV", 2: "MYO", 3: "LV"}


def summary(rows: list[dict]) -> dict[str, float]:
    pre = [r for r in rows if r["phase"] == "pretrain" and "ended" not in r]
    pre_val = [r for r in pre if "val/dice/mean" in r]
    val = [r for r in rows if "val/dice/1" in r]
    acc = [r["train/train_accuracy"] for r in rows if "train/train_accuracy" in r]
    out = {"pretrain CE (last epoch)": pre[-1]["train/ce"]}
    for c, name in CLASSES.items():
        out[f"val {name} after pre-training"] = 100 * pre_val[-1][f"val/dice/{c}"]
    for c, name in CLASSES.items():
        out[f"val {name} last"] = 100 * val[-1][f"val/dice/{c}"]
    if acc:
        out["retraining: highest balanced acc."] = max(acc)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("results", nargs="?", default="benchmarks/results/ssldec-acdc.json")
    parser.add_argument("--jsonl", help="also write one record per run here")
    args = parser.parse_args()
    path = Path(args.results)
    results = json.loads(path.read_text())
    prov = results["provenance"]
    records = []
    by_row: dict[tuple[str, str], list[dict]] = defaultdict(list)
    seen = set()
    missing: dict[tuple[str, str], int] = defaultdict(int)
    for run in results["runs"]:
        if run["run_dir"] in seen or "mean over" not in run["setting"]:
            continue
        seen.add(run["run_dir"])
        log = Path(run["run_dir"]) / "epochs.jsonl"
        if not log.is_file():  # a run kept only as a ledger record
            missing[(run["setting"].split(",")[0], run["method"])] += 1
            continue
        rows = [json.loads(line) for line in log.read_text().splitlines()]
        by_row[(run["setting"].split(",")[0], run["method"])].append(summary(rows))
        records.append({"method": run["method"], "setting": run["setting"], "seed": run["seed"],
                        "run_dir": run["run_dir"], "git_commit": prov.get("git_commit"),
                        "source_hash": prov.get("source_hash"), "config": prov.get("config"),
                        "hardware": prov.get("hardware"), "values": summary(rows)})  # fmt: skip
    keys = list(next(iter(by_row.values()))[0])
    keys += [k for runs in by_row.values() for s in runs for k in s if k not in keys]
    keys = list(dict.fromkeys(keys))
    print("| patients | row | n | " + " | ".join(keys) + " |")
    print("|---|---|---|" + "---|" * len(keys))
    for (setting, method), runs in by_row.items():
        cells = []
        for k in keys:
            values = [s[k] for s in runs if k in s]
            if not values:
                cells.append("–")
            elif len(values) < 2:
                cells.append(f"{values[0]:.2f} (n=1)")
            else:
                cells.append(f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}")
        print(f"| {setting} | {method} | {len(runs)} | " + " | ".join(cells) + " |")
    for (setting, method), n in missing.items():
        print(f"\n{setting} | {method}: {n} run(s) without an epoch log (ledger record only)")
    print(f"\nsource: {path} (commit {prov.get('git_commit', '?')}); each run's epochs.jsonl")
    if args.jsonl:
        Path(args.jsonl).write_text("".join(json.dumps(r) + "\n" for r in records))


if __name__ == "__main__":
    main()
