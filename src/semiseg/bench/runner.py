"""Benchmark runner: train every row of a table over its seeds, write results with provenance.

``semiseg bench <table> [--quick]`` trains every row of a table over its seeds (random draws of
the labeled set / sparse pixels), scores the validation-selected model on the test split and
writes ``<results-dir>/<table>.json`` and ``<table>.md``. Test results are never used to choose
anything: model selection inside a run, hyper-parameter tuning (:class:`Tuning`) and the MRF
weight of post-processing rows all use the validation split only.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semiseg.errors import ConfigError


@dataclass
class Row:
    """One line of a table.

    Attributes:
        method: Shown in the table.
        setting: Shown in the table; ``method | setting`` must be unique.
        overrides: Dotted config overrides on top of the table's recipe.
        paper: The paper's number for this line, or None.
        tuned: Apply the overrides chosen by the table's :class:`Tuning`.
        postprocess: "mrf": no training; post-process the checkpoints of row ``reuse``.
        reuse: ``method | setting`` of the trained row to post-process.
        seeds: Seeds of this row (default: the table's).
        quick_seeds: Seeds of this row in quick mode (default: ``seeds``, else the table's quick seeds).
        quick_overrides: Further overrides in quick mode only (e.g. a shorter schedule).
        init_from: ``method | setting`` of an earlier trained row: each seed starts from that row's
            same-seed ``best.pt`` (``train.init``).
    """

    method: str
    setting: str
    overrides: dict[str, Any] = field(default_factory=dict)
    paper: float | None = None
    tuned: bool = False
    postprocess: str | None = None
    reuse: str | None = None
    seeds: list[int] | None = None
    quick_seeds: list[int] | None = None
    init_from: str | None = None
    quick_overrides: dict[str, Any] = field(default_factory=dict)  #: on top of ``overrides`` in quick mode

    @property
    def key(self) -> str:
        return f"{self.method} | {self.setting}"


@dataclass
class Tuning:
    """Grid search on the validation split: the best combination is applied to ``tuned`` rows."""

    row: str  #: key of the row whose configuration is tuned
    grid: dict[str, list[Any]]  #: dotted key → candidate values (all combinations are tried)
    seed: int = 0


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
    tuning: Tuning | None = None
    #: called with the finished :class:`BenchContext`; returns extra provenance (figures, timings)
    extras: Callable[[BenchContext], dict[str, Any]] | None = None


@dataclass
class BenchContext:
    table: Table
    quick: bool
    data_root: str | None
    results_dir: Path
    work_dir: Path
    bundle: Any
    run_dirs: dict[tuple[str, int], Path] = field(default_factory=dict)  #: (row key, seed) → run folder
    tuned: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)  #: the user's --set overrides
    cache: dict[str, tuple[dict, Path]] = field(default_factory=dict)


# ---------------------------------------------------------------------------------- provenance
def git_commit() -> str:
    """Commit of the checkout semiseg runs from (``+dirty`` with uncommitted changes), else "unknown"."""
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, check=True, cwd=here
        ).stdout.strip()

    try:
        return git("rev-parse", "HEAD") + (
            "+dirty" if git("status", "--porcelain", "--untracked-files=no") else ""
        )
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
try:  # VmHWM belongs to this process's own address space; ru_maxrss would include the forking parent's
    rss = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) / 1024
except OSError:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"images_per_second": ips, "peak_rss_mib": rss}}))
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


def step_time_ratio(
    method: dict[str, Any],
    baseline: dict[str, Any],
    model: dict[str, Any],
    *,
    num_classes: int = 2,
    image_size: int = 128,
    batch_size: int = 16,
    steps: int = 12,
    streams: tuple[str, ...] = ("labeled",),
    phase: str = "train",
) -> dict[str, Any]:
    """Wall time of one training step (``phase``) of ``method`` over one of ``baseline`` (CPU).

    ``method`` gets ``batch_size`` images in each of ``streams``; the baseline gets all of them as one
    labeled batch, so both push the same images through the segmenter. The two methods alternate
    step by step so both see the same machine load; medians are compared.
    """
    import statistics

    import torch

    from semiseg.config import ModelConfig
    from semiseg.methods import build_method

    torch.manual_seed(0)
    x = torch.rand(batch_size, 1, image_size, image_size)
    y = torch.randint(0, num_classes, (batch_size, image_size, image_size))
    sizes = torch.stack([(y == c).flatten(1).sum(1) for c in range(num_classes)], 1).float()
    kind = torch.ones(batch_size, dtype=torch.long)  # 1 = dense (semiseg.data.views.SUPERVISION_KINDS)
    one = {"image": x, "mask": y, "sizes": sizes, "kind": kind}
    batches = {
        "method": {s: one for s in streams},
        "baseline": {"labeled": {k: torch.cat([v] * len(streams)) for k, v in one.items()}},
    }
    built = {}
    for key, opts in (("method", method), ("baseline", baseline)):
        m = build_method(opts, ModelConfig(**model), in_channels=1, num_classes=num_classes)
        built[key] = (m, torch.optim.Adam(m.parameters(), 1e-3))
    times: dict[str, list[float]] = {"method": [], "baseline": []}
    for i in range(steps + 2):
        for key, (m, opt) in built.items():
            t0 = time.perf_counter()
            opt.zero_grad()
            step_phase = phase if key == "method" else "train"
            m.training_step(batches[key], step_phase, "main")["loss"].backward()
            opt.step()
            if i >= 2:  # warm-up
                times[key].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"ratio": round(med["method"] / med["baseline"], 3), "method": method, "baseline": baseline,
            "seconds_per_step": {k: round(v, 4) for k, v in med.items()}, "image_size": image_size,
            "batch_size": batch_size, "streams": list(streams), "phase": phase, "device": "cpu"}  # fmt: skip


# -------------------------------------------------------------------------------------- runner
def _std(values: list[float]) -> float:
    if len(values) < 2:
        return 0.0
    m = sum(values) / len(values)
    return (sum((v - m) ** 2 for v in values) / (len(values) - 1)) ** 0.5


def row_config(
    table: Table,
    row: Row,
    seed: int,
    quick: bool,
    extra: dict[str, Any] | None = None,
    user: list[str] | None = None,
):
    """The checked RunConfig of one run: recipe (+ its quick section) + row overrides (+ tuned values)
    + seed + the user's ``--set`` overrides (recorded in the provenance)."""
    from semiseg.config import build_config, load_yaml

    values = {**row.overrides, **(row.quick_overrides if quick else {}), **(extra or {})}
    overrides = [f"{k}={json.dumps(v)}" for k, v in values.items()]
    overrides += [f"data.split.draw={seed}", f"train.seed={seed}", "train.progress=false", *(user or [])]
    return build_config(load_yaml(table.recipe), overrides, quick=quick, source=f"bench {table.name}")


def _train_cached(ctx: BenchContext, cfg, out: Path) -> tuple[dict, Path]:
    """Train ``cfg`` unless the very same config was trained in this table run already."""
    from semiseg.config import to_dict
    from semiseg.engine.run import train

    key = json.dumps(to_dict(cfg), sort_keys=True)
    if key not in ctx.cache:
        res = train(cfg, data_root=ctx.data_root, output_dir=out, bundle=ctx.bundle)
        ctx.cache[key] = (res, out)
    return ctx.cache[key]


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in text)


def _tune(ctx: BenchContext) -> dict[str, Any]:
    """Grid search of ``table.tuning`` on the validation split; returns the tuning record."""
    t = ctx.table.tuning
    row = next(r for r in ctx.table.rows if r.key == t.row)
    keys = list(t.grid)
    if not keys or any(not t.grid[k] for k in keys):
        raise ConfigError(f"bench {ctx.table.name}: the tuning grid needs at least one value per key")
    trials = []
    for combo in itertools.product(*(t.grid[k] for k in keys)):
        extra = dict(zip(keys, combo))
        cfg = row_config(ctx.table, row, t.seed, ctx.quick, extra, ctx.overrides)
        out = ctx.work_dir / "tuning" / _slug("_".join(f"{k.split('.')[-1]}{v}" for k, v in extra.items()))
        res, _ = _train_cached(ctx, cfg, out)
        trials.append({"overrides": extra, "val": res["best"]["value"], "val_metric": cfg.train.val_metric})
        print(
            f"[{ctx.table.name}] tuning {extra}: val {cfg.train.val_metric} = {res['best']['value']:.4f}",
            flush=True,
        )
    sign = -1 if cfg.train.val_mode == "max" else 1
    best = min(trials, key=lambda tr: sign * tr["val"])  # first best wins ties (grid order)
    return {"row": t.row, "seed": t.seed, "split": "val", "trials": trials, "chosen": best["overrides"]}


def _postprocessed(ctx: BenchContext, run_dir: Path) -> tuple[float, dict[str, Any]]:
    """Test metric of ``run_dir/best.pt`` with MRF post-processing, its weight tuned on validation."""
    import torch

    from semiseg.data import prepare_data
    from semiseg.engine.distributed import resolve_device
    from semiseg.engine.evaluate import evaluate_records, predict_records
    from semiseg.engine.run import load_trained
    from semiseg.postprocess import MRFPostprocess, tune_mrf_weight

    method, cfg, state = load_trained(run_dir / "best.pt")
    device = resolve_device(cfg.train.device)
    method.to(device)
    data = prepare_data(cfg, ctx.data_root, bundle=ctx.bundle)
    with torch.no_grad():
        val_probs = predict_records(method.predict, data.val, cfg.data.image_size, device)
    weight, table = tune_mrf_weight(val_probs, [r.mask for r in data.val])
    with torch.no_grad():
        means, _ = evaluate_records(
            method.predict,
            data.test,
            num_classes=state["num_classes"],
            image_size=cfg.data.image_size,
            device=device,
            metrics=("dice", "pixel_error"),
            postprocess=MRFPostprocess(weight),
        )
    return means[ctx.table.metric], {"mrf_weight": weight, "mrf_tuning_val": table}


def run_table(
    name: str,
    *,
    quick: bool = False,
    data_root: str | None = None,
    results_dir: str | Path = "benchmarks/results",
    work_dir: str | Path = "runs/bench",
    seeds: list[int] | None = None,
    overrides: list[str] | None = None,
) -> dict[str, Any]:
    """Run every row of table ``name`` and write its JSON and Markdown results.

    ``overrides`` (``--set``) apply to every run and are recorded; results made with them are not
    the table's protocol unless the note says so.
    """
    from semiseg.bench.tables import TABLES
    from semiseg.config import to_dict
    from semiseg.data import load_bundle
    from semiseg.engine.run import peak_memory_mib

    if name not in TABLES:
        raise ConfigError(f"bench: unknown table '{name}' (known: {', '.join(sorted(TABLES))})")
    table = TABLES[name]()
    seeds = seeds or (table.quick_seeds if quick else table.seeds)
    start = time.perf_counter()
    commit = git_commit()
    overrides = list(overrides or [])
    first = row_config(table, table.rows[0], seeds[0], quick, user=overrides)
    bundle = load_bundle(first.data, data_root)  # read and validated once for all runs
    ctx = BenchContext(
        table, quick, data_root, Path(results_dir), Path(work_dir) / name, bundle, overrides=overrides
    )
    tuning = _tune(ctx) if table.tuning else None
    if tuning:
        ctx.tuned = tuning["chosen"]
    rows_out, runs, configs = [], [], {}
    for row in table.rows:
        values = []
        wanted = (row.quick_seeds if quick and row.quick_seeds else None) or row.seeds or seeds
        row_seeds = [s for s in wanted if s in seeds] or seeds[:1]
        for seed in row_seeds:
            t0 = time.perf_counter()
            if row.postprocess:
                value, info = _postprocessed(ctx, ctx.run_dirs[(row.reuse, seed)])
                ctx.run_dirs[(row.key, seed)] = ctx.run_dirs[(row.reuse, seed)]
            else:
                extra = dict(ctx.tuned) if row.tuned else {}
                if row.init_from:
                    if (row.init_from, seed) not in ctx.run_dirs:
                        raise ConfigError(
                            f"bench {name}: row '{row.key}' starts from '{row.init_from}', which has no "
                            f"earlier trained run with seed {seed}"
                        )
                    extra["train.init"] = str(ctx.run_dirs[(row.init_from, seed)] / "best.pt")
                cfg = row_config(table, row, seed, quick, extra, overrides)
                configs.setdefault(row.key, to_dict(cfg))
                res, out = _train_cached(ctx, cfg, ctx.work_dir / _slug(row.key) / f"seed{seed}")
                ctx.run_dirs[(row.key, seed)] = out
                value = res["test"][table.metric]
                info = {
                    "val_best": res["best"],
                    "images_per_second": res["images_per_second"],
                    "labeled": res["labeled"],
                }
            values.append(value * table.scale)
            runs.append(
                {"method": row.method, "setting": row.setting, "seed": seed, "test": values[-1],
                 "seconds": round(time.perf_counter() - t0, 1), **info}
            )  # fmt: skip
            print(f"[{name}] {row.key} | seed {seed}: {table.metric} = {values[-1]:.2f}", flush=True)
        rows_out.append(
            {"method": row.method, "setting": row.setting, "metric": table.metric_label,
             "mean": round(sum(values) / len(values), 3), "std": round(_std(values), 3),
             "n_runs": len(values), "paper": row.paper}
        )  # fmt: skip
    provenance = {
        "git_commit": commit,
        "config": {
            "recipe": table.recipe,
            "row_overrides": {r.key: r.overrides for r in table.rows},
            "row_init_from": {r.key: r.init_from for r in table.rows if r.init_from},
            "tuned_rows": [r.key for r in table.rows if r.tuned],
            "user_overrides": overrides,
            "resolved_first_seed": configs,
        },
        "seeds": seeds,
        "hardware": hardware(),
        "wall_seconds": round(time.perf_counter() - start, 1),
        "mode": "quick" if quick else "full",
        "throughput": measure_throughput(to_dict(first)["model"]),
        "peak_memory_mib_bench_process": round(peak_memory_mib(), 1),
        "std": "sample standard deviation (ddof=1) over runs",
    }
    if tuning:
        provenance["tuning"] = tuning
    if table.extras:
        provenance.update(table.extras(ctx))
    results = {"table": name, "title": table.title, "rows": rows_out, "runs": runs, "notes": table.notes,
               "provenance": provenance}  # fmt: skip
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
    lines += ["", results.get("notes", ""), ""]
    if "tuning" in p:
        tu = p["tuning"]
        trials = "; ".join(f"{tr['overrides']} → {tr['val']:.4f}" for tr in tu["trials"])
        lines += [f"Tuned on the validation split ({tu['row']}, seed {tu['seed']}): {trials}. "
                  f"Chosen: {tu['chosen']}.", ""]  # fmt: skip
    if "step_time_ratio" in p:
        r = p["step_time_ratio"]
        named = {"": r} if "ratio" in r else r
        lines += ["Step time / supervised step time (same batch, CPU, medians): " + "; ".join(
            f"{name + ' ' if name else ''}{v['ratio']:.3f} ({v['seconds_per_step']['method']:.3f} s vs "
            f"{v['seconds_per_step']['baseline']:.3f} s, {v['image_size']}x{v['image_size']}, batch {v['batch_size']})"
            for name, v in named.items()), ""]  # fmt: skip
    if "figure" in p:
        lines += [f"Figure: `{p['figure']}`", ""]
    lines += [
        f"Mode: **{p['mode']}**; seeds {p['seeds']}; commit `{p['git_commit']}`; wall time {p['wall_seconds']} s; "
        f"hardware: {p['hardware']['cpu']} ({p['hardware']['cores']} cores), torch {p['hardware']['torch']}.",
        f"Training throughput at 128x128, batch 16, CPU: {t['images_per_second']} images/s; peak resident "
        f"memory of that training process {t['peak_rss_mib']} MiB.",
    ]
    if "peak_memory_mib_bench_process" in p:
        lines.append(f"Peak resident memory of the whole bench process (data, training, evaluation): "
                     f"{p['peak_memory_mib_bench_process']} MiB.")  # fmt: skip
    if "note" in t:
        lines.append(f"Throughput note: {t['note']}")
    lines += [
        "",
    ]
    return "\n".join(lines)


def write_results(results: dict[str, Any], results_dir: Path) -> None:
    from semiseg.engine.io import atomic_write_text

    results_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(results_dir / f"{results['table']}.json", json.dumps(results, indent=1, default=float))
    atomic_write_text(results_dir / f"{results['table']}.md", markdown(results))
