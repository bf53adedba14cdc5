"""Rendering a table's results (the JSON written by the runner) as Markdown.

The Markdown is a function of the JSON alone, so committed results can be re-rendered after a
change of presentation without re-running anything::

    python benchmarks/render_results.py benchmarks/results/tv-horse.json [...]

A table never mixes runs of different source hashes (:func:`semiseg.bench.provenance.source_hash`):
rendering such results fails with :class:`MixedSourcesError`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from semiseg.bench.stats import supports_claim
from semiseg.errors import SemisegError

#: marks a row that does not support a claim (a single run), explained under the table
SINGLE_RUN_MARK = "†"


class MixedSourcesError(SemisegError):
    """A table's runs were trained by different versions of the training code."""


def _beside(path: str) -> str:
    """A file the table names that lives in its results directory (a figure, a step-ratio file),
    shown by its name: the JSON keeps the path the run wrote, which is absolute in the campaign."""
    return Path(path).name


def check_single_source(results: dict[str, Any]) -> None:
    """Raise :class:`MixedSourcesError` when the runs of ``results`` carry different source hashes."""
    hashes = sorted({r["source_hash"] for r in results.get("runs", []) if r.get("source_hash")})
    if len(hashes) > 1:
        raise MixedSourcesError(
            f"bench {results.get('table')}: its runs come from different training code (source hashes "
            f"{', '.join(hashes)}); re-run the table so that every run has the same source"
        )


def _mean_std(r: dict[str, Any]) -> tuple[str, str]:
    if supports_claim(r):
        return f"{r['mean']:.2f}", f"{r['std']:.2f}"
    return f"{r['mean']:.2f}{SINGLE_RUN_MARK}", f"n={r['n_runs']}"


def _row_line(r: dict[str, Any], with_last: bool = False) -> str:
    paper = "–" if r["paper"] is None else f"{r['paper']:.2f}"
    mean, std = _mean_std(r)
    last = ""
    if with_last and r.get("last") is None:
        last = " – |"
    elif with_last:
        lr = {**r["last"], "n_runs": r["n_runs"]}
        last_mean, last_std = _mean_std(lr)
        last = f" {last_mean} ± {last_std} |" if supports_claim(lr) else f" {last_mean} |"
    return (
        f"| {r['method']} | {r['setting']} | {r['metric']} | {mean} | {std} | {r['n_runs']} |{last} {paper} |"
    )


def passes_by_size(by_size: dict) -> str:
    """``{"8": 16.0}`` → ``16 (b8)``; none → ``0``.

    Examples:
        >>> passes_by_size({"8": 8.0, "16": 16.0}), passes_by_size({})
        ('16 (b16) + 8 (b8)', '0')
    """
    items = sorted(((int(b), n) for b, n in by_size.items()), reverse=True)
    return " + ".join(f"{n:g} (b{b})" for b, n in items) or "0"


def _pass_budget_lines(pb: dict[str, Any]) -> list[str]:
    """The semi methods' step ratios and pass budgets (a separate measurement, named with its provenance)."""
    if "missing" in pb:
        return [
            f"Step ratios and pass budgets: not measured (`{_beside(pb['file'])}` missing: {pb['missing']}).",
            "",
        ]
    same = "the same training code as these runs" if pb["same_training_code"] else (
        f"**other training code** (source hash `{pb['source_hash']}`)"
    )  # fmt: skip
    parts = []
    for recipe, m in pb["methods"].items():
        paired = ""
        if m.get("ratio_to_budget_paired") is not None:
            q = m["ratio_to_budget_paired_quartiles"]
            paired = f", per round {m['ratio_to_budget_paired']:.2f} ({q[0]:.2f}–{q[1]:.2f})"
        passes = m["passes_per_batch_size"]
        parts.append(
            f"{recipe.removesuffix('-acdc')} {m['ratio_to_budget']:.2f}{paired}, step ratio {m['step_ratio']:.2f}, "
            f"passes with grad {passes_by_size(passes['grad'])}, without {passes_by_size(passes['nograd'])}"
        )
    return [
        f"Step time over the pass budget (target ≤ {pb['target']:.2f}; `{_beside(pb['file'])}`, commit "
        f"`{str(pb['git_commit'])[:10]}`, {pb['rounds']} interleaved rounds, {same}): "
        + "; ".join(parts)
        + ".",
        "",
    ]


def _committed_step_ratio_lines(ref: dict[str, Any]) -> list[str]:
    """A step-ratio file measured outside the table (on idle cores), as the table's extras name it:
    ``{"file", "git_commit", "same_training_code", "cases": {architecture: {"ratio", ...}}}``, or
    ``{"file", "missing"}`` when the file is not in the results directory."""
    if "missing" in ref:
        return [
            f"Step time / supervised step time: `{_beside(ref['file'])}` not found ({ref['missing']}).",
            "",
        ]
    same = "the same training code as these runs" if ref.get("same_training_code") else "other training code"
    parts = [
        f"{arch} {c['ratio']:.2f} ({c['seconds_per_step']['method']:.3f} s vs "
        f"{c['seconds_per_step']['baseline']:.3f} s per iteration)"
        for arch, c in ref["cases"].items()
    ]
    return [
        f"Step time / supervised step time (`{_beside(ref['file'])}`, commit `{str(ref.get('git_commit'))[:10]}`, "
        f"measured on idle cores, {same}): " + "; ".join(parts) + ".",
        "",
    ]


def _step_ratio_lines(ratios: dict[str, Any]) -> list[str]:
    if "cases" in ratios or "missing" in ratios:
        return _committed_step_ratio_lines(ratios)
    named = {"": ratios} if "ratio" in ratios else ratios
    new = {k: v for k, v in named.items() if "rounds" in v}
    old = {k: v for k, v in named.items() if "rounds" not in v}
    lines = []
    if new:
        first = next(iter(new.values()))
        parts = [
            f"{name + ' ' if name else ''}{v['ratio']:.2f} ({v['seconds_per_step']['method']:.3f} s vs "
            f"{v['seconds_per_step']['baseline']:.3f} s per iteration, {v['images_per_step']['method']} vs "
            f"{v['images_per_step']['baseline']} images of {v['image_size'][0]}x{v['image_size'][1]})"
            for name, v in new.items()
        ]
        lines += [
            f"Step time / supervised step time (the trainer's `train_step`, CPU, medians of {first['rounds']} "
            f"interleaved rounds of {first['steps_per_round']} iterations): " + "; ".join(parts),
            "",
        ]
    if old:  # results measured before the trainer-step measurement: shown as recorded, marked as such
        parts = [
            f"{name + ' ' if name else ''}{v['ratio']:.3f} ({v['seconds_per_step']['method']:.3f} s vs "
            f"{v['seconds_per_step']['baseline']:.3f} s, {v['image_size']}x{v['image_size']}, batch {v['batch_size']})"
            for name, v in old.items()
        ]
        lines += [
            "Step time / supervised step time, earlier measurement (`Method.training_step` alone, medians of "
            "single alternating steps; superseded by the trainer-step measurement, see benchmarks/README.md): "
            + "; ".join(parts),
            "",
        ]
    return lines


def _cell(summary: dict[str, Any] | None) -> str:
    """``mean ± std (n)`` of a :func:`semiseg.bench.stats.summarise` record; a single run is marked."""
    if summary is None:
        return "–"
    mean, std = _mean_std(summary)
    return f"{mean} ± {std} (n={summary['n_runs']})" if supports_claim(summary) else f"{mean} ({std})"


#: provenance keys of a table's distances by row (label → row → summary) and of their unit
DISTANCE_KEYS = (("distances", "distance_unit"), ("hd95", "hd95_unit"))


def _distance_lines(p: dict[str, Any], table_rows: list[dict[str, Any]] | None = None) -> list[str]:
    """The distances a table's extras computed from the same runs (HD95, ASD), one column per
    measure and one line per row in the table's order (``table_rows``), with the HD95 means' missed
    classes beside them and the unit."""
    lines: list[str] = []
    order: dict[str, int] = {}
    for i, r in enumerate(table_rows or []):  # a distance row is "<method> | <setting>", maybe without
        key = f"{r['method']} | {r['setting']}"  # the setting's metric part (", mean over RV/MYO/LV")
        order.setdefault(key, i)
        order.setdefault(key.rsplit(",", 1)[0], i)
    for key, unit_key in DISTANCE_KEYS:
        measures = {label: by_row for label, by_row in (p.get(key) or {}).items() if by_row}
        if not measures:
            continue
        labels = list(measures)
        rows = sorted(
            {row for values in measures.values() for row in values},
            key=lambda r: (order.get(r, len(order)), r),
        )
        missed = {k: v for k, v in (p.get("missed_classes") or {}).items() if isinstance(v, dict)}
        head = (
            "| method | setting | "
            + " | ".join(labels)
            + (" | (volume, class) pairs without HD95 |" if missed else " |")
        )
        lines += ["Distances of the same runs (mean ± std over runs, n runs):", "", head,
                  "|---" * (len(labels) + 2 + bool(missed)) + "|"]  # fmt: skip
        for row in rows:
            cells = [_cell(measures[label].get(row)) for label in labels]
            if missed:
                m = missed.get(row)
                cells.append(f"{m.get('missed', 0)} of {m.get('pairs', 0)}" if m else "–")
            method, _, setting = row.partition(" | ")  # a row's key is "<method> | <setting>"
            lines.append(f"| {method} | {setting or '–'} | " + " | ".join(cells) + " |")
        lines.append("")
        if p.get(unit_key):
            lines += [f"Unit: {p[unit_key]}", ""]
        note = (p.get("missed_classes") or {}).get("note")
        if missed and note:
            lines += [f"Missed: {note}", ""]
    memory = p.get("peak_memory_mib_3d")
    if memory:
        peaks = "; ".join(f"{row}: {mib:.0f} MiB" for row, mib in memory.items())
        note = p.get("peak_memory_note")
        lines += [f"Peak resident memory of the 3D runs: {peaks}" + (f" ({note})." if note else "."), ""]
    return lines


def markdown(results: dict[str, Any]) -> str:
    """The Markdown of a table's results."""
    check_single_source(results)
    p = results["provenance"]
    lines = [
        f"# {results['table']}: {results['title']}",
        "",
    ]
    with_last = any(r.get("last") for r in results["rows"])
    if with_last:
        lines += [
            "| method | setting | metric | mean | std | runs | last checkpoint (mean ± std) | paper |",
            "|---|---|---|---|---|---|---|---|",
        ]
    else:
        lines += [
            "| method | setting | metric | mean | std | runs | paper |",
            "|---|---|---|---|---|---|---|",
        ]
    lines += [_row_line(r, with_last) for r in results["rows"]]
    if not all(supports_claim(r) for r in results["rows"]):
        lines += [
            "",
            f"{SINGLE_RUN_MARK} a single run (n=1): no spread estimate; the row does not support a claim.",
        ]
    lines += ["", results.get("notes", ""), ""]
    lines += _distance_lines(p, results["rows"])
    if "tuning" in p:
        tu = p["tuning"]
        trials = "; ".join(f"{tr['overrides']} → {tr['val']:.4f}" for tr in tu["trials"])
        lines += [f"Tuned on the validation split ({tu['row']}, seed {tu['seed']}): {trials}. "
                  f"Chosen: {tu['chosen']}.", ""]  # fmt: skip
    if "step_time_ratio" in p:
        lines += _step_ratio_lines(p["step_time_ratio"])
    if "pass_budget" in p:
        lines += _pass_budget_lines(p["pass_budget"])
    figures = [k for k in p if k == "figure" or (k.startswith("figure_") and k != "figure_image")]
    for k in figures:  # "figure", or one per panel set ("figure_moons", "figure_mnist")
        name = "" if k == "figure" else f" ({k.removeprefix('figure_')})"
        lines += [f"Figure{name}: `{_beside(p[k])}`", ""]
    source = f"; source hash `{p['source_hash']}`" if p.get("source_hash") else ""
    cache = p.get("cache")
    lines += [
        f"Mode: **{p['mode']}**; seeds {p['seeds']}; commit `{p['git_commit']}`{source}; wall time "
        f"{p['wall_seconds']} s; hardware: {p['hardware']['cpu']} ({p['hardware']['cores']} cores), "
        f"torch {p['hardware']['torch']}.",
    ]
    if cache:
        lines.append(
            f"Runs: {cache['trained']} trained, {cache['resumed']} resumed from their last epoch and "
            f"{cache['reused']} taken from the run cache (same source hash, config and seed)."
        )
    cost = p.get("training_cost")
    if cost:
        missing = cost["runs_without_cpu_seconds"]
        lines.append(
            f"Training cost of the table's {cost['runs']} runs (each once, from their records; tuning "
            f"excluded): {cost['wall_hours']} h of wall time, {cost['cpu_hours']} CPU-hours"
            + (f" ({missing} runs recorded no CPU time)." if missing else ".")
        )
    t = p["throughput"]
    if t.get("images_per_second") is not None:
        lines.append(
            f"Training throughput at 128x128, batch 16, CPU: {t['images_per_second']} images/s; peak resident "
            f"memory of that training process {t['peak_rss_mib']} MiB."
        )
    if "peak_memory_mib_bench_process" in p:
        lines.append(f"Peak resident memory of the whole bench process (data, training, evaluation): "
                     f"{p['peak_memory_mib_bench_process']} MiB.")  # fmt: skip
    if "note" in t:
        lines.append(f"Throughput note: {t['note']}")
    lines.append("")
    return "\n".join(lines)


def write_results(results: dict[str, Any], results_dir: Path) -> None:
    """``<results_dir>/<table>.json`` and ``<table>.md`` (atomic writes; the Markdown is checked first)."""
    from semiseg.io import atomic_write_text

    text = markdown(results)  # refuses mixed sources before anything is written
    results_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(results_dir / f"{results['table']}.json", json.dumps(results, indent=1, default=float))
    atomic_write_text(results_dir / f"{results['table']}.md", text)


def rerender(json_path: str | Path) -> Path:
    """Rewrite the Markdown next to a results JSON from that JSON alone; returns the Markdown path."""
    from semiseg.io import atomic_write_text

    path = Path(json_path)
    out = path.with_suffix(".md")
    atomic_write_text(out, markdown(json.loads(path.read_text())))
    return out


def main(argv: list[str] | None = None) -> int:
    """Re-render the Markdown of each results JSON given; exit code 2 on a refused (mixed-source) table."""
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print("usage: python benchmarks/render_results.py RESULTS.json [...]", file=sys.stderr)
        return 2
    try:
        for p in paths:
            print(f"wrote {rerender(p)}")
    except SemisegError as exc:
        print(f"render: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0
