"""Benchmark runner: train every row of a table over its seeds, write results with provenance.

``semiseg bench <table> [--quick]`` trains every row of a table over its seeds (random draws of
the labeled set / sparse pixels), scores the validation-selected model on the test split and
writes ``<results-dir>/<table>.json`` and ``<table>.md``. Test results are never used to choose
anything: model selection inside a run, hyper-parameter tuning (:class:`Tuning`) and the MRF
weight of post-processing rows all use the validation split only.

Runs go through the on-disk run cache (:mod:`semiseg.bench.cache`): running a table again takes
its finished runs from the cache and resumes an interrupted one from its last epoch.

Several processes may run the same table at once: each takes a run's lock before training it, and
a run another process holds (or one that starts from such a run) is left *pending*. A process that
ends with pending runs lists them and raises :class:`TablePending` instead of writing results; run
the same command again once they are finished to write the table (from the cache).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semiseg.bench import provenance as prov
from semiseg.bench import timing
from semiseg.bench.cache import Bundles, RunCache
from semiseg.bench.lock import EXIT_BUSY, RunBusy, describe
from semiseg.bench.render import write_results
from semiseg.bench.spec import Row, Table, Tuning, get_table
from semiseg.bench.stats import summarise
from semiseg.errors import ConfigError, SemisegError

__all__ = ["BenchContext", "PendingRun", "Row", "Table", "TablePending", "Tuning", "row_config", "run_table"]


@dataclass
class PendingRun:
    """A run this process left to another one: held by it (``busy``) or waiting for such a run."""

    row: str  #: ``method | setting`` (or ``tuning <row> {overrides}`` for a tuning trial)
    seed: int  #: the draw
    run_dir: Path | None  #: None while its config waits for the tuning
    reason: str  #: who holds it, or which run it waits for
    busy: bool  #: held by another process (else: waits for a pending run)

    def line(self) -> str:
        where = self.run_dir if self.run_dir is not None else "(folder known once the tuning is done)"
        return f"pending: {self.row} | draw {self.seed} | {where} ({self.reason})"


class TablePending(SemisegError):
    """Some runs of the table are held by other processes: no results were written.

    ``semiseg bench`` exits with :data:`~semiseg.bench.lock.EXIT_BUSY` (75).
    """

    exit_code = EXIT_BUSY

    def __init__(self, table: str, pending: list[PendingRun]):
        self.table, self.pending = table, pending
        busy = sum(p.busy for p in pending)
        waiting = len(pending) - busy
        runs = f"{busy} run is being" if busy == 1 else f"{busy} runs are being"
        more = f" ({waiting} more wait{'s' if waiting == 1 else ''} for them)" if waiting else ""
        super().__init__(
            f"{runs} trained by another process{more}; run the same command again when they finish "
            "to write the table"
        )


@dataclass
class BenchContext:
    """A table being run: what the table's extras (figures, timings) get to look at."""

    table: Table
    quick: bool
    data_root: str | None
    results_dir: Path
    work_dir: Path  #: ``<work_dir>/<table>``: the table's index of its runs
    bundle: Any  #: the first row's dataset (``cache.bundle(cfg)`` gives any run's)
    cache: RunCache
    run_dirs: dict[tuple[str, int], Path] = field(default_factory=dict)  #: (row key, seed) → run folder
    tuned: dict[str, Any] | None = field(default_factory=dict)  #: None while the tuning is pending
    overrides: list[str] = field(default_factory=list)  #: the user's --set overrides
    pending: list[PendingRun] = field(default_factory=list)  #: runs left to other processes
    cfgs: dict[tuple[str, int], Any] = field(default_factory=dict)  #: (row key, seed) → config trained

    def trained(self, row: str, seed: int) -> Path:
        """The run folder of ``(row, seed)`` with its checkpoints: a run restored from the ledger has
        none, so it is trained again first (:meth:`RunCache.checkpoint`)."""
        cfg = self.cfgs.get((row, seed))
        return self.cache.checkpoint(cfg) if cfg is not None else self.run_dirs[(row, seed)]

    def trained_dir(self, run_dir: Path) -> Path:
        """:meth:`trained` of the run in folder ``run_dir``."""
        for (row, seed), cfg in self.cfgs.items():
            if self.run_dirs.get((row, seed)) == run_dir:
                return self.cache.checkpoint(cfg)
        return run_dir

    def is_pending(self, row: str, seed: int) -> bool:
        return any(p.row == row and p.seed == seed for p in self.pending)

    def leave(self, row: str, seed: int, run_dir: Path | None, reason: str, busy: bool = False) -> None:
        """Mark a run pending and say so."""
        self.pending.append(PendingRun(row, seed, run_dir, reason, busy))
        print(f"[{self.table.name}] {row} | seed {seed}: {reason}, left pending", flush=True)


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
    draw = seed if row.draw is None else row.draw
    overrides += [f"data.split.draw={draw}", f"train.seed={seed}", "train.progress=false", *(user or [])]
    recipe = row.recipe or table.recipe
    return build_config(load_yaml(recipe), overrides, quick=quick, source=f"bench {table.name}")


def _tune(ctx: BenchContext) -> dict[str, Any] | None:
    """Grid search of ``table.tuning`` on the validation split; returns the tuning record (None while
    a trial is held by another process)."""
    t = ctx.table.tuning
    row = next(r for r in ctx.table.rows if r.key == t.row)
    keys = list(t.grid)
    if not keys or any(not t.grid[k] for k in keys):
        raise ConfigError(f"bench {ctx.table.name}: the tuning grid needs at least one value per key")
    trials, complete = [], True
    for combo in itertools.product(*(t.grid[k] for k in keys)):
        extra = dict(zip(keys, combo))
        cfg = row_config(ctx.table, row, t.seed, ctx.quick, extra, ctx.overrides)
        try:
            run = ctx.cache.train(cfg)
        except RunBusy as busy:
            ctx.leave(f"tuning {t.row} {extra}", t.seed, busy.path.parent, _held(busy), busy=True)
            complete = False
            continue
        trials.append({"overrides": extra, "val": run.result["best"]["value"],
                       "val_metric": cfg.train.val_metric, "run_dir": str(run.run_dir)})  # fmt: skip
        print(f"[{ctx.table.name}] tuning {extra}: val {cfg.train.val_metric} = {run.result['best']['value']:.4f}"
              f" ({run.status})", flush=True)  # fmt: skip
    if not complete:
        return None
    sign = -1 if cfg.train.val_mode == "max" else 1
    best = min(trials, key=lambda tr: sign * tr["val"])  # first best wins ties (grid order)
    return {"row": t.row, "seed": t.seed, "split": "val", "trials": trials, "chosen": best["overrides"]}


def _postprocessed(ctx: BenchContext, run_dir: Path) -> tuple[float, dict[str, Any]]:
    """Test metric of ``run_dir/best.pt`` with MRF post-processing, its weight tuned on validation
    (computed once per cached run)."""

    def compute() -> dict[str, Any]:
        import torch

        from semiseg.data import prepare_data
        from semiseg.engine.distributed import resolve_device
        from semiseg.engine.evaluate import evaluate_records, tune_mrf_on_validation
        from semiseg.engine.inference import build_predict
        from semiseg.engine.run import load_trained
        from semiseg.postprocess import MRFPostprocess

        method, cfg, state = load_trained(ctx.trained_dir(run_dir) / "best.pt")
        device = resolve_device(cfg.train.device)
        method.to(device)
        data = prepare_data(cfg, ctx.data_root, bundle=ctx.cache.bundle(cfg))
        predict = build_predict(method.predict, cfg)
        weight, table = tune_mrf_on_validation(predict, data.val, cfg.data.image_size, device)
        with torch.no_grad():
            means, _ = evaluate_records(
                predict,
                data.test,
                num_classes=state["num_classes"],
                image_size=cfg.data.image_size,
                device=device,
                metrics=("dice", "pixel_error"),
                postprocess=MRFPostprocess(weight),
            )
        return {"test": means, "mrf_weight": weight, "mrf_tuning_val": table}

    value, _ = ctx.cache.memo(run_dir, "mrf", compute)
    return value["test"][ctx.table.metric], {k: value[k] for k in ("mrf_weight", "mrf_tuning_val")}


def ensemble_memo(table: Table, run_dirs: list[Path]) -> str:
    """Name of the memo of an ensemble row's value (kept with its first member): the checkpoint the
    table scores and the members' folders, so another set of members is another memo."""
    checkpoint = "last.pt" if table.score == "last" else "best.pt"
    members = "|".join([checkpoint, *(Path(d).name for d in run_dirs)])
    return "ensemble-" + hashlib.sha256(members.encode()).hexdigest()[:12]


def _ensembled(ctx: BenchContext, row: Row, run_dirs: list[Path]) -> tuple[float, dict[str, Any]]:
    """Test metric of the mean class probabilities of the models in ``run_dirs`` (their ``best.pt``, or
    ``last.pt`` when the table scores the last state), computed once and kept with the first run."""
    checkpoint = "last.pt" if ctx.table.score == "last" else "best.pt"

    def compute() -> dict[str, Any]:
        import torch

        from semiseg.data import prepare_data
        from semiseg.engine.distributed import resolve_device
        from semiseg.engine.evaluate import evaluate_split
        from semiseg.engine.inference import build_predict
        from semiseg.engine.run import load_trained

        members = [load_trained(ctx.trained_dir(d) / checkpoint) for d in run_dirs]
        cfg, state = members[0][1], members[0][2]
        device = resolve_device(cfg.train.device)
        models = [m.to(device) for m, _, _ in members]

        def predict(x: torch.Tensor) -> torch.Tensor:  # log of the mean probabilities
            return torch.stack([m.predict(x).float().softmax(1) for m in models]).mean(0).log()

        data = prepare_data(cfg, ctx.data_root, bundle=ctx.cache.bundle(cfg))
        with torch.no_grad():
            means, _ = evaluate_split(build_predict(predict, cfg), data.test, task=data.bundle.task,
                                      num_classes=state["num_classes"], image_size=cfg.data.image_size,
                                      device=device)  # fmt: skip
        return {"test": means, "members": [str(d) for d in run_dirs], "checkpoint": checkpoint}

    value, _ = ctx.cache.memo(run_dirs[0], ensemble_memo(ctx.table, run_dirs), compute)
    return value["test"][ctx.table.metric_of(row)[0]], {"members": value["members"], "checkpoint": checkpoint}


def _row_runs(ctx: BenchContext, row: Row, seeds: list[int], configs: dict) -> list[dict[str, Any]]:
    """Train (or post-process) every seed of ``row``; one record per run."""
    from semiseg.config import to_dict

    table, runs = ctx.table, []
    metric = table.metric_of(row)[0]
    if row.postprocess == "ensemble":
        members = sorted(s for (k, s) in ctx.run_dirs if k == row.reuse)
        waiting = [s for s in members if ctx.is_pending(row.reuse, s)]
        if not members or waiting:
            ctx.leave(row.key, 0, None, f"waits for the runs of {row.reuse}")
            return []
        t0 = time.perf_counter()
        dirs = [ctx.run_dirs[(row.reuse, s)] for s in members]
        try:
            value, info = _ensembled(ctx, row, dirs)
        except RunBusy as busy:
            ctx.leave(row.key, 0, dirs[0], _held(busy), busy=True)
            return []
        record = ctx.cache.read_record(dirs[0]) or {}
        info = {**info, "status": "ensembled", "seconds": round(time.perf_counter() - t0, 1)}
        print(
            f"[{table.name}] {row.key}: {metric} = {value * table.scale:.2f} (ensemble of {len(dirs)})",
            flush=True,
        )
        return [{"method": row.method, "setting": row.setting, "seed": members, "test": value * table.scale, **info,
                 "run_dir": str(dirs[0]), "git_commit": record.get("git_commit"),
                 "source_hash": record.get("source_hash")}]  # fmt: skip
    for seed in row.seeds_for(seeds, ctx.quick):
        t0 = time.perf_counter()
        if row.postprocess:
            if ctx.is_pending(row.reuse, seed):
                ctx.leave(
                    row.key, seed, ctx.run_dirs.get((row.reuse, seed)), f"waits for {row.reuse}, seed {seed}"
                )
                continue
            run_dir = ctx.run_dirs[(row.reuse, seed)]
            try:
                value, info = _postprocessed(ctx, run_dir)
            except RunBusy as busy:
                ctx.leave(row.key, seed, run_dir, _held(busy), busy=True)
                continue
            ctx.run_dirs[(row.key, seed)] = run_dir
            record = ctx.cache.read_record(run_dir) or {}
            info = {**info, "status": "post-processed", "seconds": round(time.perf_counter() - t0, 1)}
        else:
            if row.tuned and ctx.tuned is None:
                ctx.leave(row.key, seed, None, f"waits for the tuning of {table.tuning.row}")
                continue
            extra = dict(ctx.tuned) if row.tuned else {}
            waits = row.init_from and ctx.is_pending(row.init_from, seed)  # no best.pt to start from yet
            if row.init_from:
                if waits and (row.init_from, seed) not in ctx.run_dirs:  # its config waits for the tuning
                    ctx.leave(row.key, seed, None, f"waits for {row.init_from}, seed {seed}")
                    continue
                if (row.init_from, seed) not in ctx.run_dirs:
                    raise ConfigError(
                        f"bench {table.name}: row '{row.key}' starts from '{row.init_from}', which has no "
                        f"earlier trained run with seed {seed}"
                    )
                extra["train.init"] = str(ctx.run_dirs[(row.init_from, seed)] / "best.pt")
            cfg = row_config(table, row, seed, ctx.quick, extra, ctx.overrides)
            configs.setdefault(row.key, to_dict(cfg))
            if row.init_from and not waits and not ctx.cache.finished(cfg):
                try:  # a start restored from the ledger has no best.pt: train it again first
                    ctx.trained(row.init_from, seed)
                except RunBusy as busy:
                    ctx.run_dirs[(row.key, seed)] = ctx.cache.run_dir(cfg)
                    ctx.leave(row.key, seed, ctx.run_dirs[(row.key, seed)], _held(busy), busy=True)
                    continue
            if waits:
                run_dir = ctx.run_dirs[(row.key, seed)] = ctx.cache.run_dir(cfg)
                ctx.leave(row.key, seed, run_dir, f"waits for {row.init_from}, seed {seed}")
                continue
            try:
                run = ctx.cache.train(cfg)
            except RunBusy as busy:
                ctx.run_dirs[(row.key, seed)] = busy.path.parent  # known, so that later rows can wait for it
                ctx.leave(row.key, seed, busy.path.parent, _held(busy), busy=True)
                continue
            run_dir, record = run.run_dir, run.record
            ctx.run_dirs[(row.key, seed)], ctx.cfgs[(row.key, seed)] = run_dir, cfg
            value = run.result["test"][metric]
            last = run.result.get("last", {}).get("test", {}).get(metric)
            info = {"val_best": run.result["best"], "images_per_second": run.result["images_per_second"],
                    "labeled": run.result["labeled"], "status": run.status, "seconds": record["seconds"],
                    "cpu_seconds": record.get("cpu_seconds"), "trained_on": record.get("trained_on")}  # fmt: skip
            steps = phase_steps(run_dir)
            if steps is not None:  # each run's training budget, beside its time
                info["steps_by_phase"] = steps
            if table.score == "last":  # the model as training left it is the row's value
                if last is None:
                    raise ConfigError(f"bench {table.name}: row '{row.key}' scores the last state, but its "
                                      "runs do not evaluate it (set train.eval_last: true)")  # fmt: skip
                value, last = last, None
            if last is not None:  # train.eval_last: the model as training left it
                info["test_last"] = last * table.scale
        runs.append(
            {"method": row.method, "setting": row.setting, "seed": seed, "test": value * table.scale, **info,
             "run_dir": str(run_dir), "git_commit": record.get("git_commit"),
             "source_hash": record.get("source_hash")}
        )  # fmt: skip
        print(f"[{table.name}] {row.key} | seed {seed}: {metric} = {runs[-1]['test']:.2f} "
              f"({info['status']})", flush=True)  # fmt: skip
    return runs


def phase_steps(run_dir: Path) -> dict[str, int] | None:
    r"""Optimizer steps a run took in each kind of phase, from its ``epochs.jsonl`` (the global step at
    each phase's last logged epoch); phases named alike but for a trailing round number (SSLDEC's
    ``dec1``, ``dec2``, ...) are summed. None when the run folder has no epoch log (a run restored
    from the ledger). A phase that ended before its first epoch (e.g. a retraining whose threshold
    already held) logged nothing and counts nothing.

    Examples:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp())
        >>> lines = [("pretrain", 40), ("pretrain", 80), ("dec1", 95), ("labeled1", 135), ("dec2", 150)]
        >>> _ = (d / "epochs.jsonl").write_text("".join(json.dumps({"phase": p, "step": s}) + "\n" for p, s in lines))
        >>> phase_steps(d)
        {'pretrain': 80, 'dec': 30, 'labeled': 40}
    """
    path = Path(run_dir) / "epochs.jsonl"
    if not path.is_file():
        return None
    ends: dict[str, int] = {}  # phase -> global step at its last logged epoch, in order of appearance
    for line in path.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            ends[entry["phase"]] = int(entry["step"])
    steps: dict[str, int] = {}
    before = 0
    for phase, end in ends.items():
        kind = phase.rstrip("0123456789") or phase
        steps[kind] = steps.get(kind, 0) + end - before
        before = end
    return steps


def _held(busy: RunBusy) -> str:
    return f"being trained by {describe(busy.owner)}"


def run_table(
    name: str,
    *,
    quick: bool = False,
    data_root: str | None = None,
    results_dir: str | Path = "benchmarks/results",
    work_dir: str | Path = "runs/bench",
    seeds: list[int] | None = None,
    overrides: list[str] | None = None,
    ledger: str | Path | None = None,
) -> dict[str, Any]:
    """Run every row of table ``name`` and write its JSON and Markdown results.

    Runs are cached under ``<work_dir>/cache/`` (see :mod:`semiseg.bench.cache`), and their records
    also kept in ``ledger`` if given. ``overrides``
    (``--set``) apply to every run and are recorded; results made with them are not the table's
    protocol unless the note says so.

    Raises:
        TablePending: Some runs are held by other processes (after every other run is done); nothing
            is written to ``results_dir``.
    """
    from semiseg.config import to_dict
    from semiseg.engine.run import peak_memory_mib

    table = get_table(name)
    seeds = seeds or (table.quick_seeds if quick else table.seeds)
    start = time.perf_counter()
    source = prov.load_training_code()
    commit = prov.git_commit()
    overrides = list(overrides or [])
    first = row_config(table, table.rows[0], seeds[0], quick, user=overrides)
    bundles = Bundles(data_root)  # each dataset read and validated once for all runs
    bundle = bundles(first.data)
    cache = RunCache(Path(work_dir) / "cache", source, commit, data_root, bundles, ledger)
    ctx = BenchContext(table, quick, data_root, Path(results_dir), Path(work_dir) / name, bundle, cache,
                       overrides=overrides)  # fmt: skip
    tuning = _tune(ctx) if table.tuning else None
    ctx.tuned = tuning["chosen"] if tuning else (None if table.tuning else {})
    rows_out, runs, configs = [], [], {}
    for row in table.rows_for(quick):
        row_runs = _row_runs(ctx, row, seeds, configs)
        runs += row_runs
        _write_index(ctx)
        if ctx.pending:  # no table from this process: only go on training
            continue
        rows_out.append({"method": row.method, "setting": row.setting, "metric": table.metric_of(row)[1],
                         **summarise([r["test"] for r in row_runs]), "paper": row.paper})  # fmt: skip
        if all("test_last" in r for r in row_runs):
            rows_out[-1]["last"] = {k: v for k, v in summarise([r["test_last"] for r in row_runs]).items()
                                    if k != "n_runs"}  # fmt: skip
    if ctx.pending:
        pending = TablePending(name, ctx.pending)
        for p in ctx.pending:
            print(f"[{name}] {p.line()}", flush=True)
        print(f"[{name}] {pending}", flush=True)
        raise pending
    provenance = {
        "git_commit": commit,
        "source_hash": source,
        "config": {
            "recipe": table.recipe,
            "row_recipes": {r.key: r.recipe for r in table.rows if r.recipe},
            "row_overrides": {r.key: r.overrides for r in table.rows},
            "row_init_from": {r.key: r.init_from for r in table.rows if r.init_from},
            "row_draws": {r.key: r.draw for r in table.rows if r.draw is not None},
            "score": table.score,
            "tuned_rows": [r.key for r in table.rows if r.tuned],
            "user_overrides": overrides,
            "resolved_first_seed": configs,
        },
        "seeds": seeds,
        "hardware": prov.hardware(),
        "wall_seconds": None,  # set below, after the extras
        "mode": "quick" if quick else "full",
        "cache": {"dir": str(cache.root), **({"ledger": str(ledger)} if ledger else {}), **cache.counts},
        "throughput": timing.measure_throughput(to_dict(first)["model"]),
        "peak_memory_mib_bench_process": round(peak_memory_mib(), 1),
        "std": "sample standard deviation (ddof=1) over runs; null for a single run",
    }
    provenance["training_cost"] = training_cost(runs)
    if tuning:
        provenance["tuning"] = tuning
    if table.extras:
        provenance.update(table.extras(ctx))
    provenance["wall_seconds"] = round(time.perf_counter() - start, 1)
    results = {"table": name, "title": table.title, "rows": rows_out, "runs": runs, "notes": table.notes,
               "provenance": provenance}  # fmt: skip
    write_results(results, Path(results_dir))
    return results


#: statuses of the run entries that post-process trained runs (same folder, nothing trained)
POSTPROCESSED = ("ensembled", "post-processed")


def training_cost(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """What the table's trained runs cost, each run once (rows that reuse a run or post-process it add
    nothing): their count, wall hours and CPU hours summed from the run records (``cpu_seconds``:
    process CPU time, which a paused worker does not inflate; older records lack it). Tuning runs are
    not counted.

    Examples:
        >>> training_cost([{"run_dir": "a", "seconds": 3600, "cpu_seconds": 1800},
        ...                {"run_dir": "a", "seconds": 3600, "cpu_seconds": 1800},
        ...                {"run_dir": "b", "seconds": 7200, "cpu_seconds": None}])
        {'runs': 2, 'wall_hours': 3.0, 'cpu_hours': 0.5, 'runs_without_cpu_seconds': 1}
    """
    # an ensemble or post-processing row names a trained run's folder with its own seconds (and no CPU
    # time): it trained nothing, so it neither adds nor replaces that run's record
    trained = [r for r in runs if r.get("seconds") is not None and r.get("status") not in POSTPROCESSED]
    unique = {r["run_dir"]: r for r in trained}
    cpu = [r["cpu_seconds"] for r in unique.values() if r.get("cpu_seconds") is not None]
    return {
        "runs": len(unique),
        "wall_hours": round(sum(r["seconds"] for r in unique.values()) / 3600, 2),
        "cpu_hours": round(sum(cpu) / 3600, 2),
        "runs_without_cpu_seconds": len(unique) - len(cpu),
    }


def _write_index(ctx: BenchContext) -> None:
    """``<work_dir>/<table>/runs.json``: (row, seed) → cached run folder, for finding a table's runs."""
    from semiseg.io import atomic_write_text

    index = {f"{key} | seed {seed}": str(d) for (key, seed), d in ctx.run_dirs.items()}
    atomic_write_text(ctx.work_dir / "runs.json", json.dumps(index, indent=1))
