"""What is done and what is left of a table in the run cache: ``semiseg bench TABLE --status``.

A long table is run in resumable parts (several processes, several sessions). :func:`table_status`
looks at every run of the table (row x seed, and the trials of its :class:`~semiseg.bench.spec.Tuning`)
the way :func:`~semiseg.bench.runner.run_table` would find it, without training anything and
without loading the dataset: it builds each run's config, hence its cache key
(:func:`~semiseg.bench.cache.run_key` with the current :func:`~semiseg.bench.provenance.source_hash`),
and reads the run folder's record (``bench-run.json``), lock (``bench-run.lock``) and epoch log
(``epochs.jsonl``). One state per run:

- ``done``: the record says finished (its wall seconds are shown);
- ``running``: a live process holds the run's lock (who, and the epochs it has logged);
- ``partial``: a record, not finished, no live lock: the next ``semiseg bench`` resumes it;
- ``pending``: no record yet;
- ``waits``: an ``init_from`` row whose starting run is not finished;
- ``tuning``: a ``tuned`` row whose tuning trials are not all finished (once they are, the choice
  is made from their records as the runner makes it, on validation values, and the row's runs
  are looked up like any other);
- ``derived``: a post-processing row: the state of the run it post-processes.

No test metric is read or shown: a table's status must not invite looking at test results before
the table is complete.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from semiseg.bench import provenance as prov
from semiseg.bench.cache import LOCK, RunCache
from semiseg.bench.lock import describe, is_alive, lock_owner
from semiseg.bench.runner import ensemble_memo, row_config
from semiseg.bench.spec import Row, Table, get_table
from semiseg.errors import ConfigError
from semiseg.phases import Phase

__all__ = ["format_status", "run_state", "status_summary", "table_status"]

#: the name of a phase that runs ``train.epochs`` epochs (a method's main phase)
MAIN_PHASE = Phase().name
#: states that count as not started in the summary
NOT_STARTED = ("pending", "waits", "tuning")


def _epoch_log(run_dir: Path) -> list[dict[str, Any]]:
    """Phase, epoch and seconds of each line of ``run_dir/epochs.jsonl`` (nothing else is kept)."""
    try:
        lines = (Path(run_dir) / "epochs.jsonl").read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            h = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(h, dict) and "ended" not in h and h.get("accepted", True):  # trained, kept epochs
            out.append({k: h.get(k) for k in ("phase", "epoch", "seconds")})
    return out


def run_state(
    run_dir: str | Path, epochs_total: int | None = None, ledger: str | Path | None = None
) -> dict[str, Any]:
    """The state of the cached run in ``run_dir`` (see the module docstring).

    Returns a dict with ``state`` ("done", "running", "partial" or "pending"), ``text`` (the state
    in words), ``run_dir``, ``epochs`` (lines of the epoch log), ``epochs_total`` (``train.epochs``,
    as given), ``phase`` / ``phase_epoch`` (of the last logged epoch), ``seconds`` (recorded in
    ``bench-run.json``; None without a record), ``logged_seconds`` (sum over the epoch log) and
    ``owner`` (the lock holder of a running run, in words). A run whose record is in ``ledger``
    (:mod:`semiseg.bench.cache`) is "done" even where the cache does not have it.

    Examples:
        >>> import tempfile
        >>> run_state(tempfile.mkdtemp())["state"]
        'pending'
    """
    run_dir = Path(run_dir)
    record = RunCache.read_record(run_dir)
    kept = (
        RunCache.read_record(run_dir, Path(ledger) / f"{run_dir.name}.json") if ledger is not None else None
    )
    if (record is None or not record.get("finished")) and kept is not None and kept.get("finished"):
        record = kept
    log = _epoch_log(run_dir)
    out: dict[str, Any] = {
        "run_dir": str(run_dir),
        "epochs": len(log),
        "epochs_total": epochs_total,
        "phase": log[-1]["phase"] if log else None,
        "phase_epoch": log[-1]["epoch"] if log else None,
        "main_phase_only": all(h["phase"] in (None, MAIN_PHASE) for h in log),
        "seconds": None if record is None else float(record.get("seconds") or 0.0),
        "logged_seconds": round(sum(float(h["seconds"] or 0.0) for h in log), 1),
        "owner": None,
    }
    if record is not None and record.get("finished"):
        return {**out, "state": "done", "text": "done"}
    owner = lock_owner(run_dir / LOCK)
    if owner and is_alive(owner):  # an unreadable lock ({}) is stale, as for the runner
        out["owner"] = describe(owner)
        return {**out, "state": "running", "text": f"running: {out['owner']}"}
    if record is not None:
        return {**out, "state": "partial", "text": "partial (resumable)"}
    return {**out, "state": "pending", "text": "pending"}


def _not_run(state: str, text: str, run_dir: Path | None = None) -> dict[str, Any]:
    """An entry for a run that is not looked up: waits for another run, or for the tuning."""
    return {"state": state, "text": text, "run_dir": None if run_dir is None else str(run_dir),
            "epochs": None, "epochs_total": None, "phase": None, "phase_epoch": None, "main_phase_only": True,
            "seconds": None, "logged_seconds": None, "owner": None}  # fmt: skip


def _tuning(
    table: Table, quick: bool, cache: RunCache, user: list[str]
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The entries of the tuning trials and the chosen overrides (None while a trial is unfinished),
    chosen as :func:`semiseg.bench.runner._tune` does: best validation value, first one on ties."""
    t = table.tuning
    if t is None:
        return [], {}
    row = next(r for r in table.rows if r.key == t.row)
    keys = list(t.grid)
    if not keys or any(not t.grid[k] for k in keys):
        raise ConfigError(f"bench {table.name}: the tuning grid needs at least one value per key")
    entries, trials, sign = [], [], 1
    for combo in itertools.product(*(t.grid[k] for k in keys)):
        extra = dict(zip(keys, combo))
        cfg = row_config(table, row, t.seed, quick, extra, user)
        run_dir = cache.run_dir(cfg)
        state = run_state(run_dir, cfg.train.epochs, cache.ledger)
        label = ", ".join(f"{k}={v}" for k, v in extra.items())
        entries.append({"row": f"tuning {t.row} {extra}", "method": row.method,
                        "setting": f"{row.setting}, tuning trial {label}", "seed": t.seed, **state})  # fmt: skip
        if state["state"] == "done":
            trials.append((extra, RunCache.read_record(run_dir)["result"]["best"]["value"]))
        sign = -1 if cfg.train.val_mode == "max" else 1
    if len(trials) < len(entries):
        return entries, None
    return entries, min(trials, key=lambda tr: sign * tr[1])[0]


def table_status(
    name: str,
    *,
    quick: bool = False,
    work_dir: str | Path = "runs/bench",
    seeds: list[int] | None = None,
    overrides: list[str] | None = None,
    source: str | None = None,
    ledger: str | Path | None = None,
) -> list[dict[str, Any]]:
    """The state of every run of table ``name`` in ``<work_dir>/cache`` (one dict per run, in the order
    the runner trains them: tuning trials first, then row by row, seed by seed).

    Args:
        name: A registered table.
        quick, work_dir, seeds, overrides: As for :func:`~semiseg.bench.runner.run_table` (the
            same values find the same runs; ``work_dir`` as spelt there, since an ``init_from``
            run's config holds the path of its starting checkpoint).
        source: The training-code hash of the runs (default: the current code's
            :func:`~semiseg.bench.provenance.source_hash`).
        ledger: The runs' ledger folder, if any (:mod:`semiseg.bench.cache`).

    Returns:
        Dicts of :func:`run_state` plus ``row`` (``method | setting``), ``method``, ``setting`` and
        ``seed``; ``state`` is also "waits", "tuning" or "derived" (see the module docstring).

    Raises:
        ConfigError: Unknown table, or a row that starts from a row without a run of that seed.
    """
    table = get_table(name)
    seeds = seeds or (table.quick_seeds if quick else table.seeds)
    user = list(overrides or [])
    cache = RunCache(Path(work_dir) / "cache", source or prov.source_hash(), commit="", ledger=ledger)
    entries, chosen = _tuning(table, quick, cache, user)
    by_run: dict[tuple[str, int], dict[str, Any]] = {}  # (row key, seed) → its entry
    for row in table.rows_for(quick):
        for seed in row.seeds_for(seeds, quick):
            entry = {"row": row.key, "method": row.method, "setting": row.setting, "seed": seed,
                     **_row_run(table, row, seed, quick, cache, user, chosen, by_run)}  # fmt: skip
            by_run[(row.key, seed)] = entry
            entries.append(entry)
            if row.postprocess == "ensemble":
                break  # one value from all of the reused row's runs (as the runner), listed once
    return entries


def _row_run(
    table: Table,
    row: Row,
    seed: int,
    quick: bool,
    cache: RunCache,
    user: list[str],
    chosen: dict[str, Any] | None,
    by_run: dict[tuple[str, int], dict[str, Any]],
) -> dict[str, Any]:
    """The state of one run of ``row``, its config built as :func:`semiseg.bench.runner._row_runs`
    builds it."""
    if row.postprocess:
        reused = by_run.get((row.reuse, seed))
        where = f"derived from {row.reuse}, seed {seed}"
        if reused is None:
            return _not_run("derived", where)
        run_dir = reused["run_dir"]
        text = f"{where}: {reused['text']}"
        name = row.postprocess
        if name == "ensemble":  # named by its members (every seed of the reused row), kept with the first
            seeds = sorted(s for (k, s) in by_run if k == row.reuse)
            members = [by_run[(row.reuse, s)]["run_dir"] for s in seeds]
            name = ensemble_memo(table, members) if all(members) else None
        if run_dir is not None and name is not None and cache.has_memo(Path(run_dir), name):
            text += f" ({row.postprocess} post-processing done)"
        return _not_run("derived", text, run_dir)
    if row.tuned and chosen is None:
        return _not_run("tuning", f"depends on the tuning of {table.tuning.row}")
    extra = dict(chosen) if row.tuned else {}
    if row.init_from:
        start = by_run.get((row.init_from, seed))
        if start is None:
            raise ConfigError(
                f"bench {table.name}: row '{row.key}' starts from '{row.init_from}', which has no "
                f"earlier trained run with seed {seed}"
            )
        waits = f"waits for {row.init_from}, seed {seed}"
        if start["run_dir"] is None:  # its config is not known yet (it waits itself)
            return _not_run("waits", waits)
        extra["train.init"] = str(Path(start["run_dir"]) / "best.pt")
        cfg = row_config(table, row, seed, quick, extra, user)
        record = RunCache.read_record(Path(start["run_dir"]))
        if not (record and record.get("finished")):  # nothing to start from yet
            return _not_run("waits", waits, cache.run_dir(cfg))
    else:
        cfg = row_config(table, row, seed, quick, extra, user)
    return run_state(cache.run_dir(cfg), cfg.train.epochs, cache.ledger)


def _runs(entries: list[dict[str, Any]]):
    """The entries that are runs of their own, each run once: no post-processing entry, and of the
    entries sharing a run folder only the first."""
    seen: set[str] = set()
    for e in entries:
        if e["state"] == "derived":
            continue
        if e["run_dir"] is not None:
            if e["run_dir"] in seen:
                continue
            seen.add(e["run_dir"])
        yield e


def status_summary(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts of the trained runs by state and the hours spent on the started ones (done, running,
    partial): per run the larger of the seconds its record holds and the sum of its epoch log's
    seconds (a process killed hard records no time; the epoch log lacks the final evaluation).

    Post-processing rows (``derived``) are not runs of their own; a run that two entries share
    (a tuning trial that is also a tuned row's run) counts once. "waits" and "tuning" count as
    pending.

    Examples:
        >>> e = [{"state": "done", "run_dir": "a", "seconds": 3600.0},
        ...      {"state": "partial", "run_dir": "b", "seconds": 0.0, "logged_seconds": 1800.0},
        ...      {"state": "done", "run_dir": "a", "seconds": 3600.0},
        ...      {"state": "waits", "run_dir": None, "seconds": None},
        ...      {"state": "derived", "run_dir": "a", "seconds": None}]
        >>> s = status_summary(e)
        >>> (s["done"], s["total"], s["partial"], s["pending"], s["hours"], s["shared"], s["derived"])
        (1, 3, 1, 1, 1.5, 1, 1)
    """
    counts = {"done": 0, "running": 0, "partial": 0, "pending": 0}
    runs = list(_runs(entries))
    derived = sum(1 for e in entries if e["state"] == "derived")
    shared = len(entries) - derived - len(runs)
    seconds = 0.0
    for e in runs:
        counts["pending" if e["state"] in NOT_STARTED else e["state"]] += 1
        if e["state"] in ("done", "running", "partial"):
            seconds += max(e["seconds"] or 0.0, e.get("logged_seconds") or 0.0)
    return {**counts, "total": sum(counts.values()), "seconds": round(seconds, 1),
            "hours": round(seconds / 3600, 2), "shared": shared, "derived": derived}  # fmt: skip


def remaining_hours(entries: list[dict[str, Any]]) -> float | None:
    """A rough estimate of the wall hours the unfinished runs still need: each at the mean recorded
    seconds of its row's done runs (else of all done runs), less what a started run has logged.
    None before any run is done. Post-processing entries and shared runs count nothing.

    Examples:
        >>> e = [{"row": "a", "state": "done", "run_dir": "1", "seconds": 3600.0},
        ...      {"row": "a", "state": "running", "run_dir": "2", "seconds": None, "logged_seconds": 1800.0},
        ...      {"row": "b", "state": "pending", "run_dir": None, "seconds": None},
        ...      {"row": "b", "state": "derived", "run_dir": "1", "seconds": None}]
        >>> remaining_hours(e)
        1.5
    """
    return _estimate(entries)[0]


def _estimate(entries: list[dict[str, Any]]) -> tuple[float | None, int]:
    """:func:`remaining_hours`, and how many unfinished runs had no done run in their row (so were
    counted at the mean of all done runs: other rows may be cheaper, e.g. smaller images)."""
    runs = list(_runs(entries))
    done: dict[str, list[float]] = {}
    for e in runs:
        if e["state"] == "done" and e["seconds"]:
            done.setdefault(e["row"], []).append(e["seconds"])
    every = [x for v in done.values() for x in v]
    if not every:
        return None, 0
    left, borrowed = 0.0, 0
    for e in runs:
        if e["state"] == "done":
            continue
        borrowed += e["row"] not in done
        mean = sum(done.get(e["row"], every)) / len(done.get(e["row"], every))
        left += max(0.0, mean - (e.get("logged_seconds") or 0.0))
    return round(left / 3600, 1), borrowed


def _epochs_text(e: dict[str, Any]) -> str:
    """``3/25`` for a run that has only logged its main phase; ``12 (train 2/15)`` or ``4 (warmup 4)``
    (epochs in all, then the current phase's) for one with several phases."""
    if e["epochs"] is None or (e["state"] == "pending" and not e["epochs"]):
        return ""
    total = e["epochs_total"]
    if e["main_phase_only"]:
        return f"{e['epochs']}/{total}" if total else str(e["epochs"])
    of = f"/{total}" if total and e["phase"] == MAIN_PHASE else ""
    return f"{e['epochs']} ({e['phase']} {e['phase_epoch']}{of})"


def _state_text(e: dict[str, Any]) -> str:
    text = e["text"]
    if (
        e["state"] in ("running", "partial")
        and e["logged_seconds"]
        and e["logged_seconds"] > (e["seconds"] or 0)
    ):
        # a session's time is recorded when it ends: a running one, or one killed, has not recorded it
        text += f"; its logged epochs took {e['logged_seconds']:.0f} s"
    return text


def format_status(entries: list[dict[str, Any]]) -> str:
    """The entries as an aligned text table (row, draw, state, epochs, recorded seconds, run folder),
    then a summary line (:func:`status_summary`). Shows no metric of any split."""
    header = ("row", "seed", "state", "epochs", "seconds", "run")
    lines = [header]
    for e in entries:
        seconds = "" if e["seconds"] is None else f"{e['seconds']:.1f}"
        run = Path(e["run_dir"]).name if e["run_dir"] else ""
        lines.append((e["row"], str(e["seed"]), _state_text(e), _epochs_text(e), seconds, run))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    right = {1, 4}  # numbers
    text = [
        "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))
        ).rstrip()
        for line in lines
    ]
    text.insert(1, "  ".join("-" * w for w in widths))
    s = status_summary(entries)
    summary = (
        f"{s['done']}/{s['total']} runs done, {s['running']} running, {s['partial']} partial, "
        f"{s['pending']} pending; {s['hours']:.2f} h spent on the started runs"
    )
    left, borrowed = _estimate(entries)
    if left is not None and s["done"] < s["total"]:
        summary += f"; about {left:.1f} h of wall time to go at the done runs' mean per row"
    notes = []
    if left is not None and borrowed:
        notes.append(
            f"{borrowed} unfinished runs in rows with none done counted at the mean of all done runs"
        )
    if s["derived"]:
        notes.append(f"{s['derived']} post-processing entries follow their runs")
    if s["shared"]:
        notes.append(f"{s['shared']} entries share a run listed above")
    if notes:
        summary += f" ({'; '.join(notes)})"
    return "\n".join([*text, "", summary])
