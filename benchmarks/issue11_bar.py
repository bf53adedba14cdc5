"""Issue 11's bar, read from the committed table results (no training): semi-acdc's best semi method
against supervised training at 3 labeled patients, every semi method against supervised at 1 and 3
patients, and each composed row (UniMatch + TV, UniMatch + size) against both of its parts beyond one
standard deviation (:func:`semiseg.bench.stats.beats`; rows of one run support no claim).

    python benchmarks/issue11_bar.py [--results-dir benchmarks/results]

Prints Markdown; tables not yet in the results directory are reported as missing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SEMI = (
    "mean teacher",
    "FixMatch",
    "UniMatch",
    "BCP",
    "CPS",
    "UniMatch + size (regressor)",
    "UniMatch + size at weight 0",
)
#: rows of SEMI that are controls, not methods: printed beside the methods, never chosen as the best
CONTROLS = ("UniMatch + size at weight 0",)
#: the supervised schedule control of the methods whose quick schedule restarts the optimizer from a
#: selected state (the others' control is the supervised row itself)
SCHEDULE_CONTROL = {
    "FixMatch": "supervised, restarted after 40 %",
    "UniMatch": "supervised, restarted after 40 %",
    "UniMatch + size (regressor)": "supervised, restarted after 40 %",
    "UniMatch + size at weight 0": "supervised, restarted after 40 %",
    "BCP": "supervised, restarted after 24 %",
}
#: (table, composed row, its parts) — the parts must exist in the same table and setting. tv-horse's
#: and curriculum-acdc's `UniMatch` rows carry the composed row's regulariser at weight 0 (the same
#: network passes); in semi-acdc that control is its own row beside the plain UniMatch
COMPOSED = [
    ("tv-horse", "UniMatch + TV", ("UniMatch", "TV")),
    ("curriculum-acdc", "UniMatch + size", ("UniMatch", "Proposed (size regressor)")),
    ("semi-acdc", "UniMatch + size (regressor)", ("UniMatch + size at weight 0", "UniMatch")),
]


def fmt(row: dict | None) -> str:
    if row is None:
        return "–"
    std = "n=1" if row["std"] is None else f"± {row['std']:.2f}, n={row['n_runs']}"
    return f"{row['mean']:.2f} ({std})"


def val_mean(table: dict, method: str, setting: str) -> float:
    """Mean over a row's runs of the validation score of each run's selected checkpoint (nan if none)."""
    values = [
        r["val_best"]["value"]
        for r in table.get("runs", [])
        if r["method"] == method
        and r["setting"] == setting
        and (r.get("val_best") or {}).get("value") is not None
    ]
    return sum(values) / len(values) if values else float("nan")


def main() -> None:
    from semiseg.bench.stats import beats

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results-dir", default="benchmarks/results")
    a = p.parse_args()
    tables = {}
    for name in {"semi-acdc", *(t for t, _, _ in COMPOSED)}:
        path = Path(a.results_dir) / f"{name}.json"
        if path.exists():
            tables[name] = json.loads(path.read_text())
        else:
            print(f"- `{name}`: no results in {a.results_dir}")

    def row(table: str, method: str, setting: str) -> dict | None:
        rows = tables.get(table, {}).get("rows", [])
        return next((r for r in rows if r["method"] == method and r["setting"] == setting), None)

    semi = tables.get("semi-acdc")
    if semi:
        print(f"## semi-acdc (commit {semi['provenance']['git_commit'][:10]})\n")
        for setting in ("1 labeled patient", "3 labeled patients", "7 labeled patients"):
            sup = row("semi-acdc", "supervised", setting)
            if sup is None:
                continue
            print(f"### {setting}: supervised {fmt(sup)}\n")
            print(
                "| method | Dice | minus supervised | ≥ supervised | beats supervised beyond 1 std "
                "| schedule control | minus control | beats control beyond 1 std |"
            )
            print("|---|---|---|---|---|---|---|---|")
            for m in SEMI:
                r = row("semi-acdc", m, setting)
                if r is None:
                    continue
                verdict = beats(r, sup)
                name = SCHEDULE_CONTROL.get(m)
                control = row("semi-acdc", name, setting) if name else None
                vs_control = beats(r, control) if control else None
                judged = (
                    "–"
                    if control is None
                    else "n/a (n=1)"
                    if vs_control is None
                    else "yes"
                    if vs_control
                    else "no"
                )
                label = f"{m} (control)" if m in CONTROLS else m
                at_least = "yes" if r["mean"] >= sup["mean"] else "no"
                print(f"| {label} | {fmt(r)} | {r['mean'] - sup['mean']:+.2f} | {at_least} "
                      f"| {'n/a (n=1)' if verdict is None else 'yes' if verdict else 'no'} "
                      f"| {'–' if control is None else f'{name} {fmt(control)}'} "
                      f"| {'–' if control is None else format(r['mean'] - control['mean'], '+.2f')} "
                      f"| {judged} |")  # fmt: skip
            print()
        setting = "3 labeled patients"
        sup3 = row("semi-acdc", "supervised", setting)
        methods = [m for m in SEMI if m not in CONTROLS]
        drawn = [r for m in methods if (r := row("semi-acdc", m, setting)) and r["n_runs"] >= 3]
        if sup3 and drawn:
            # the best method is chosen on validation (mean over draws of each run's selected
            # checkpoint's validation score); the test-best row is printed beside it
            best = max(drawn, key=lambda r: val_mean(semi, r["method"], setting))
            top = max(drawn, key=lambda r: r["mean"])
            ok = best["mean"] >= sup3["mean"] + 10 and best["mean"] >= 75
            print(f"Bar at 3 patients (the semi method with ≥ 3 draws and the best mean validation score, "
                  f"{val_mean(semi, best['method'], setting):.4f}): {best['method']} {fmt(best)} against "
                  f"supervised {fmt(sup3)}: {best['mean'] - sup3['mean']:+.2f} points; "
                  f"≥ supervised + 10 and ≥ 75: {'met' if ok else 'not met'}.")  # fmt: skip
            if top is not best:
                print(
                    f"The highest test mean is {top['method']}'s {fmt(top)}: {top['mean'] - sup3['mean']:+.2f} points."
                )
            print()
    print("## Composed rows against both parts (beyond one std)\n")
    print("| table | setting | composed | part | beats it |")
    print("|---|---|---|---|---|")
    for table, composed, parts in COMPOSED:
        if table not in tables:
            continue
        lower = "error" in tables[table]["rows"][0]["metric"].lower()
        for setting in sorted({r["setting"] for r in tables[table]["rows"] if r["method"] == composed}):
            c = row(table, composed, setting)
            for part in parts:
                q = row(table, part, setting)
                if q is None:
                    print(f"| {table} | {setting} | {composed} {fmt(c)} | {part}: missing | n/a |")
                    continue
                verdict = beats(c, q, lower_is_better=lower)
                print(f"| {table} | {setting} | {composed} {fmt(c)} | {part} {fmt(q)} | "
                      f"{'n/a (n=1)' if verdict is None else 'yes' if verdict else 'no'} |")  # fmt: skip


if __name__ == "__main__":
    main()
