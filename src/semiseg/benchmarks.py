"""Benchmark tables: protocols, runner and results files with provenance.

``semiseg bench <table> [--quick]`` trains every row of a table over its seeds (random draws of
the labeled set / sparse pixels), scores the validation-selected model on the test split and
writes ``<results-dir>/<table>.json`` and ``<table>.md``. Results are never used to choose
anything: model selection inside each run uses the validation split only.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semiseg.errors import ConfigError


@dataclass
class Row:
    method: str
    setting: str
    overrides: dict[str, Any]
    paper: float | None = None


@dataclass
class Table:
    name: str
    title: str
    recipe: str  #: built-in recipe (src/semiseg/configs/<recipe>.yaml) every row starts from
    rows: list[Row]
    metric: str  #: key of the test metrics, e.g. "pixel_error" or "dice/mean"
    metric_label: str
    scale: float = 100.0  #: reported as percent
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    quick_seeds: list[int] = field(default_factory=lambda: [0, 1])
    notes: str = ""


def _horse() -> Table:
    return Table(
        name="supervised-horse",
        title="Supervised UNet on Weizmann horses (even-indexed images train, odd test)",
        recipe="supervised-horse",
        rows=[
            Row("supervised", "10 px/image", {"data.split.sparse_pixels": 10}, paper=23.81),
            Row("supervised", "dense", {"data.split.supervision": "dense"}, paper=5.73),
        ],
        metric="pixel_error",
        metric_label="pixel error (%) at the original mask resolution, test half",
        notes=(
            "Validation = 10% of the training half, holding only the labels the setting has (its sparse "
            "pixels for the 10 px rows). Each seed is a different random draw of the sparse pixels. "
            "`paper` = the TV paper's Table 1 supervised CHM at 10 px and its fully supervised CHM (5.73%)."
        ),
    )


def _acdc() -> Table:
    return Table(
        name="supervised-acdc",
        title="Supervised UNet on ACDC (SSL4MIS split), 4-class mean Dice over RV/MYO/LV",
        recipe="supervised-acdc",
        rows=[
            Row("supervised", "3 labeled patients", {"data.split.labeled": 3}, paper=41.5),
            Row("supervised", "7 labeled patients", {"data.split.labeled": 7}, paper=62.5),
        ],
        metric="dice/mean",
        metric_label="Dice (%) per test volume (20 patients x 2 frames), mean over RV/MYO/LV",
        notes=(
            "Each seed draws different labeled patients from the 70 training patients; model selection on "
            "the 10 validation patients' volumes (both frames). Test = the 20 test patients, ED and ES "
            "volumes scored separately (40 volumes), then averaged. `paper` = SupBaseline reported by "
            "UniMatch (Yang et al., CVPR 2023) at 256x256 with a full training schedule."
        ),
    )


TABLES = {"supervised-horse": _horse, "supervised-acdc": _acdc}


# ---------------------------------------------------------------------------------- provenance
def git_commit() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def hardware() -> dict[str, Any]:
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


_THROUGHPUT_SCRIPT = """
import json, resource, time, torch
from semiseg.config import ModelConfig
from semiseg.losses.supervised import masked_cross_entropy
from semiseg.models import build_model
torch.manual_seed(0)
cfg = ModelConfig(**json.loads({model!r}))
m = build_model(cfg, 1, 4); opt = torch.optim.Adam(m.parameters(), 1e-3)
x = torch.rand(16, 1, 128, 128); y = torch.randint(0, 4, (16, 128, 128))
for i in range({warmup} + {steps}):
    if i == {warmup}: t = time.perf_counter()
    opt.zero_grad(); masked_cross_entropy(m(x), y).backward(); opt.step()
ips = 16 * {steps} / (time.perf_counter() - t)
print(json.dumps({{"images_per_second": ips, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def measure_throughput(model: dict[str, Any], steps: int = 10, warmup: int = 3) -> dict[str, Any]:
    """Training images/s and peak resident memory at 128x128, batch 16, CPU, in a fresh process."""
    code = _THROUGHPUT_SCRIPT.format(model=json.dumps(model), steps=steps, warmup=warmup)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    out = json.loads(res.stdout.strip().splitlines()[-1])
    return {
        "image_size": [128, 128],
        "batch_size": 16,
        "device": "cpu",
        "model": model,
        "images_per_second": round(out["images_per_second"], 2),
        "peak_rss_mib": round(out["peak_rss_mib"], 1),
    }


# -------------------------------------------------------------------------------------- runner
def _std(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    m = sum(values) / len(values)
    return (sum((v - m) ** 2 for v in values) / (len(values) - 1)) ** 0.5


def row_config(table: Table, row: Row, seed: int, quick: bool):
    """The checked RunConfig of one run: recipe (+ its quick section) + row overrides + seed."""
    from semiseg.config import build_config, load_yaml

    overrides = [f"{k}={json.dumps(v)}" for k, v in row.overrides.items()]
    overrides += [f"data.split.draw={seed}", f"train.seed={seed}", "train.progress=false"]
    return build_config(load_yaml(table.recipe), overrides, quick=quick, source=f"bench {table.name}")


def run_table(
    name: str,
    *,
    quick: bool = False,
    data_root: str | None = None,
    results_dir: str | Path = "benchmarks/results",
    work_dir: str | Path = "runs/bench",
    seeds: list[int] | None = None,
) -> dict[str, Any]:
    """Run every row of table ``name`` and write its JSON and Markdown results."""
    from semiseg.config import to_dict
    from semiseg.data import load_bundle
    from semiseg.engine.run import peak_memory_mib, train

    if name not in TABLES:
        raise ConfigError(f"bench: unknown table '{name}' (known: {', '.join(sorted(TABLES))})")
    table = TABLES[name]()
    seeds = seeds or (table.quick_seeds if quick else table.seeds)
    start = time.perf_counter()
    commit = git_commit()
    bundle = load_bundle(row_config(table, table.rows[0], seeds[0], quick).data, data_root)  # read once
    rows_out, runs, configs = [], [], {}
    for row in table.rows:
        values = []
        for seed in seeds:
            cfg = row_config(table, row, seed, quick)
            configs.setdefault(row.setting, to_dict(cfg))
            out = Path(work_dir) / name / f"{row.setting.replace(' ', '_').replace('/', '-')}" / f"seed{seed}"
            t0 = time.perf_counter()
            res = train(cfg, data_root=data_root, output_dir=out, bundle=bundle)
            value = res["test"][table.metric] * table.scale
            values.append(value)
            runs.append(
                {
                    "method": row.method,
                    "setting": row.setting,
                    "seed": seed,
                    "test": value,
                    "val_best": res["best"],
                    "seconds": round(time.perf_counter() - t0, 1),
                    "images_per_second": res["images_per_second"],
                    "labeled": res["labeled"],
                }
            )
            print(
                f"[{name}] {row.method} | {row.setting} | seed {seed}: {table.metric} = {value:.2f}",
                flush=True,
            )
        rows_out.append(
            {
                "method": row.method,
                "setting": row.setting,
                "metric": table.metric_label,
                "mean": round(sum(values) / len(values), 3),
                "std": round(_std(values), 3),
                "n_runs": len(values),
                "paper": row.paper,
            }
        )
    results = {
        "table": name,
        "title": table.title,
        "rows": rows_out,
        "runs": runs,
        "notes": table.notes,
        "provenance": {
            "git_commit": commit,
            "config": {
                "recipe": table.recipe,
                "row_overrides": {r.setting: r.overrides for r in table.rows},
                "resolved_seed0": configs,
            },
            "seeds": seeds,
            "hardware": hardware(),
            "wall_seconds": round(time.perf_counter() - start, 1),
            "mode": "quick" if quick else "full",
            "throughput": measure_throughput(next(iter(configs.values()))["model"]),
            "peak_memory_mib_bench_process": round(peak_memory_mib(), 1),
            "std": "sample standard deviation (ddof=1) over runs",
        },
    }
    write_results(results, Path(results_dir))
    return results


def markdown(results: dict[str, Any]) -> str:
    p = results["provenance"]
    lines = [
        f"# {results['table']}: {results['title']}",
        "",
        "| method | setting | metric | mean | std | runs | paper |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        paper = "–" if r["paper"] is None else f"{r['paper']:.2f}"
        lines.append(
            f"| {r['method']} | {r['setting']} | {r['metric']} | {r['mean']:.2f} | {r['std']:.2f} | "
            f"{r['n_runs']} | {paper} |"
        )
    t = p["throughput"]
    lines += [
        "",
        results.get("notes", ""),
        "",
        f"Mode: **{p['mode']}**; seeds {p['seeds']}; commit `{p['git_commit']}`; wall time {p['wall_seconds']} s; "
        f"hardware: {p['hardware']['cpu']} ({p['hardware']['cores']} cores), torch {p['hardware']['torch']}.",
        f"Training throughput at 128x128, batch 16, CPU: {t['images_per_second']} images/s; peak resident "
        f"memory of that training process {t['peak_rss_mib']} MiB.",
        "",
    ]
    return "\n".join(lines)


def write_results(results: dict[str, Any], results_dir: Path) -> None:
    from semiseg.engine.io import atomic_write_text

    results_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(results_dir / f"{results['table']}.json", json.dumps(results, indent=1, default=float))
    atomic_write_text(results_dir / f"{results['table']}.md", markdown(results))
