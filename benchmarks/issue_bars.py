"""The bars of issues 12-15, read from the committed results (no training): every comparison a bar
names, as the difference of two rows' means and whether it holds beyond one standard deviation
(:func:`semiseg.bench.stats.beats`; a row of one run supports no claim), and every threshold.

    python benchmarks/issue_bars.py [12 13 14 15] [--results-dir benchmarks/results]

- 12 (translation): proposed against seg-only and the AE baseline at 48 simple, 48 hard and 128,
  proposed against the paper's Dice at 48 simple / hard; on ACDC's RV, tags + translation against
  seg-only.
- 13 (SSLDEC): moons ≥ 99.5 % and above supervised; MNIST error ≤ 1.5 % (100 labels) / ≤ 1.0 %
  (1,000) and below the pseudo model; per-pixel SSLDEC against the lower bound and the pseudo model at
  1 and 2 ACDC patients.
- 14 (IODA): IODA < IDA < NDA test MSE at 2048 hidden, IODA beside the paper's 3.48e-2; the shape
  prior against its weight-0 control and against no prior at 3 patients, Dice and HD95 (HD95 from the
  table's extras); predict against the bare loop (ioda-inference).
- 15 (3D): the 3D rows against the 2D rows, and the 3D runs' peak memory against 4 GiB.

Prints Markdown; tables not yet in the results directory are reported as missing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from issue11_bar import fmt  # noqa: E402

from semiseg.bench.tables import BEST_SEMI  # noqa: E402

SEMI = BEST_SEMI[0]  #: the semi-supervised row of shape-prior-acdc and acdc-3d (chosen on validation)

MEMORY_LIMIT_MIB = 4096.0

Summary = dict[str, Any]


class Results:
    """The results JSONs of one directory, read once each."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self._tables: dict[str, dict | None] = {}

    def table(self, name: str) -> dict | None:
        if name not in self._tables:
            path = self.dir / f"{name}.json"
            self._tables[name] = json.loads(path.read_text()) if path.is_file() else None
        return self._tables[name]

    def row(self, table: str, method: str, setting: str) -> Summary | None:
        rows = (self.table(table) or {}).get("rows", [])
        return next((r for r in rows if r["method"] == method and r["setting"] == setting), None)


def verdict(a: Summary | None, b: Summary | None, lower: bool) -> str:
    from semiseg.bench.stats import beats

    if a is None or b is None:
        return "missing"
    v = beats(a, b, lower_is_better=lower)
    return "n/a (n=1)" if v is None else "yes" if v else "no"


def better(a: Summary, b: Summary, lower: bool) -> bool:
    return a["mean"] < b["mean"] if lower else a["mean"] > b["mean"]


def compare_lines(pairs: list[tuple[str, Summary | None, str, Summary | None]], lower: bool) -> list[str]:
    """A Markdown table of ``(name A, row A, name B, row B)``: means, difference, A better on the
    means, A better beyond one std."""
    word = "lower" if lower else "higher"
    out = [
        f"| A | B | A − B | A {word} | beyond 1 std |",
        "|---|---|---|---|---|",
    ]
    for name_a, a, name_b, b in pairs:
        diff = "–" if a is None or b is None else f"{a['mean'] - b['mean']:+.2f}"
        on_means = "–" if a is None or b is None else "yes" if better(a, b, lower) else "no"
        out.append(
            f"| {name_a} {fmt(a)} | {name_b} {fmt(b)} | {diff} | {on_means} | {verdict(a, b, lower)} |"
        )
    return out + [""]


def threshold_line(label: str, r: Summary | None, limit: float, lower: bool) -> str:
    if r is None:
        return f"- {label}: missing"
    ok = r["mean"] <= limit if lower else r["mean"] >= limit
    return f"- {label}: {fmt(r)} {'≤' if lower else '≥'} {limit:g}: {'met' if ok else 'not met'}"


def missed_text(missed: dict[str, Any], row: str) -> str:
    """The (volume, class) pairs a row's distance mean leaves out (the class missing from the
    prediction or the truth): a row that misses more can show a smaller HD95."""
    counts = missed.get(row)
    if not isinstance(counts, dict) or not counts.get("pairs"):
        return ""
    return f" [missed {counts.get('missed', 0)} of {counts['pairs']} volume-class pairs]"


def header(res: Results, table: str) -> list[str]:
    t = res.table(table)
    if t is None:
        return [f"### `{table}`: no results in {res.dir}", ""]
    return [f"### `{table}` (commit {str(t['provenance']['git_commit'])[:10]})", ""]


# ------------------------------------------------------------------------------------------ issue 12
def issue12(res: Results) -> list[str]:
    out = ["## Issue 12: presence/absence translation", ""] + header(res, "translation-mnist")
    if res.table("translation-mnist"):
        for setting in ("48x48 simple", "48x48 hard", "128x128"):
            p = res.row("translation-mnist", "proposed", setting)
            out += [f"**{setting}**", ""]
            out += compare_lines(
                [
                    ("proposed", p, b, res.row("translation-mnist", b, setting))
                    for b in ("seg-only", "AE baseline")
                ],
                lower=False,
            )
            if setting != "128x128" and p is not None and p.get("paper") is not None:
                out += [
                    threshold_line(f"proposed against the paper's Dice ({setting})", p, p["paper"], False),
                    "",
                ]
    out += header(res, "translation-acdc-rv")
    if res.table("translation-acdc-rv"):
        setting = "1 % of the RV slices"
        seg = res.row("translation-acdc-rv", "seg-only", setting)
        out += compare_lines(
            [
                (m, res.row("translation-acdc-rv", m, setting), "seg-only", seg)
                for m in ("proposed", "AE baseline")
            ],
            lower=False,
        )
    return out


# ------------------------------------------------------------------------------------------ issue 13
SSLDEC_CONTROLS = ("supervised (pre-training only)", "supervised, SSLDEC's labeled schedule", "pseudo model")
SSLDEC_ACDC_CONTROLS = (
    "lower bound (1/5 of the slices)",
    "lower bound, SSLDEC's labeled schedule",
    "pseudo model",
)


def issue13(res: Results) -> list[str]:
    out = ["## Issue 13: SSLDEC", ""] + header(res, "ssldec")
    if res.table("ssldec"):
        moons = "moons, 8 labels"
        s = res.row("ssldec", "SSLDEC", moons)
        out += [f"**{moons}** (accuracy %)", "", threshold_line("SSLDEC ≥ 99.5 %", s, 99.5, False), ""]
        out += compare_lines(
            [("SSLDEC", s, c, res.row("ssldec", c, moons)) for c in SSLDEC_CONTROLS[:2]], False
        )
        for setting, limit in (("MNIST, 100 labels", 1.5), ("MNIST, 1000 labels", 1.0)):
            s = res.row("ssldec", "SSLDEC", setting)
            out += [f"**{setting}** (error %)", "", threshold_line(f"SSLDEC ≤ {limit} %", s, limit, True), ""]
            out += compare_lines(
                [("SSLDEC", s, c, res.row("ssldec", c, setting)) for c in SSLDEC_CONTROLS], True
            )
        draw0 = "MNIST, 100 labels, draw 0"
        out += [
            f"- Ensemble (its own row): SSLDEC, ensemble of 5 {fmt(res.row('ssldec', 'SSLDEC, ensemble of 5', draw0))}"
            f"; its members {fmt(res.row('ssldec', 'SSLDEC, ensemble members', draw0))}",
            "",
        ]
    out += header(res, "ssldec-acdc")
    if res.table("ssldec-acdc"):
        for n in ("1 patient", "2 patients"):
            for part in ("mean over RV/MYO/LV", "RV", "MYO", "LV"):
                setting = f"{n}, {part}"
                s = res.row("ssldec-acdc", "SSLDEC per pixel", setting)
                out += [f"**{setting}** (Dice %)", ""]
                out += compare_lines(
                    [
                        ("SSLDEC per pixel", s, c, res.row("ssldec-acdc", c, setting))
                        for c in SSLDEC_ACDC_CONTROLS
                    ],
                    False,
                )
    return out


# ------------------------------------------------------------------------------------------ issue 14
def issue14(res: Results) -> list[str]:
    out = ["## Issue 14: IODA and the shape prior", ""] + header(res, "ioda-textures")
    if res.table("ioda-textures"):
        for hidden in (2048, 256):
            setting = f"3 layers, {hidden} hidden"
            r = {
                m: res.row("ioda-textures", m, setting)
                for m in ("IODA", "IDA", "NDA", "output pre-training only")
            }
            out += [f"**{setting}** (test MSE x 1e-2)", ""]
            out += compare_lines([("IODA", r["IODA"], "IDA", r["IDA"]), ("IDA", r["IDA"], "NDA", r["NDA"]),
                                  ("IODA", r["IODA"], "NDA", r["NDA"]),
                                  ("output pre-training only", r["output pre-training only"], "NDA", r["NDA"])],
                                 lower=True)  # fmt: skip
            if all(r[m] is not None for m in ("IODA", "IDA", "NDA")):
                order = r["IODA"]["mean"] < r["IDA"]["mean"] < r["NDA"]["mean"]
                out += [f"- IODA < IDA < NDA on the means: {'yes' if order else 'no'}"]
            if r["IODA"] is not None and r["IODA"].get("paper") is not None:
                out += [f"- IODA {fmt(r['IODA'])} beside the paper's {r['IODA']['paper']:g} (other textures)"]
            out += [""]
    out += header(res, "shape-prior-acdc")
    t = res.table("shape-prior-acdc")
    if t:
        hd95 = t["provenance"].get("hd95", {})
        for base in ("supervised", SEMI):
            pairs = []
            for part in ("mean over RV/MYO/LV", "myocardium (the ring)"):
                setting = f"3 labeled patients, {part}"
                prior = res.row("shape-prior-acdc", f"{base} + shape prior", setting)
                for other in (f"{base} + shape prior at weight 0", base):
                    theirs = res.row("shape-prior-acdc", other, setting)
                    pairs.append((f"{base} + shape prior ({part})", prior, other, theirs))
            out += [f"**{base}, 3 labeled patients: Dice %**", ""] + compare_lines(pairs, False)
            pairs = []
            missed = t["provenance"].get("missed_classes", {})
            for label, by_row in hd95.items():
                mine = f"{base} + shape prior | 3 labeled patients"
                for other in (f"{base} + shape prior at weight 0", base):
                    theirs = f"{other} | 3 labeled patients"
                    pairs.append((f"{base} + shape prior ({label}){missed_text(missed, mine)}", by_row.get(mine),
                                  f"{other}{missed_text(missed, theirs)}", by_row.get(theirs)))  # fmt: skip
            if pairs:
                out += [f"**{base}, 3 labeled patients: HD95 (voxels)**", ""] + compare_lines(pairs, True)
        setting = "7 labeled patients, mean over RV/MYO/LV"
        out += ["**7 labeled patients: Dice %**", ""]
        out += compare_lines([(f"{b} + shape prior", res.row("shape-prior-acdc", f"{b} + shape prior", setting),
                               b, res.row("shape-prior-acdc", b, setting)) for b in ("supervised", SEMI)],
                             False)  # fmt: skip
    inference = res.dir / "ioda-inference.json"
    if inference.is_file():
        doc = json.loads(inference.read_text())
        out += [f"### `ioda-inference` (commit {doc['provenance']['git_commit'][:10]})", ""]
        for c in doc["cases"]:
            ok = "within 10 %" if c["ratio"] <= 1.10 else "NOT within 10 %"
            out.append(f"- batch {c['batch']}, {c['dtype']}: semiseg / bare loop {c['ratio']:.2f} ({ok})")
        out += [""]
    return out


# ------------------------------------------------------------------------------------------ issue 15
def issue15(res: Results) -> list[str]:
    out = ["## Issue 15: 3D", ""] + header(res, "acdc-3d")
    fresh = memory_3d_lines(res.dir / "memory-3d.json")
    t = res.table("acdc-3d")
    if not t:
        return out + fresh
    for n in ("3 labeled patients", "7 labeled patients"):
        r = {k: res.row("acdc-3d", f"{m}, {d}", n) for k, m, d in (
            ("s2", "supervised", "2D UNet (slices)"), ("s3", "supervised", "3D UNet (patches)"),
            ("u2", SEMI, "2D UNet (slices)"), ("u3", SEMI, "3D UNet (patches)"))}  # fmt: skip
        out += [f"**{n}: Dice %**", ""]
        out += compare_lines([("supervised 3D", r["s3"], "supervised 2D", r["s2"]),
                              (f"{SEMI} 3D", r["u3"], f"{SEMI} 2D", r["u2"]),
                              (f"{SEMI} 2D", r["u2"], "supervised 2D", r["s2"]),
                              (f"{SEMI} 3D", r["u3"], "supervised 3D", r["s3"])], False)  # fmt: skip
    missed = t["provenance"].get("missed_classes", {})
    for label, by_row in t["provenance"].get("distances", {}).items():
        out += [f"**{label}** (lower is better)", ""]
        out += [f"- {row}: {fmt(s)}{missed_text(missed, row)}" for row, s in by_row.items()] + [""]
    peak = t["provenance"].get("peak_memory_mib_3d", {})
    if peak:
        worst = max(peak.values())
        out += [f"- Peak resident memory of the 3D runs (an upper bound: the bench process's): "
                f"{', '.join(f'{k} {v:.0f} MiB' for k, v in peak.items())}; largest {worst:.0f} MiB "
                f"{'<' if worst < MEMORY_LIMIT_MIB else '≥'} 4 GiB: {'met' if worst < MEMORY_LIMIT_MIB else 'not met'}",
                ""]  # fmt: skip
    else:
        out += ["- Peak memory of the 3D runs: not recorded", ""]
    return out + fresh


def memory_3d_lines(path: Path) -> list[str]:
    """The bar on the fresh-process measurement of ``benchmarks/memory_3d.py`` (each 3D row alone)."""
    if not path.is_file():
        return [
            "- Peak memory of 3D training in a fresh process (`benchmarks/memory_3d.py`): not measured",
            "",
        ]
    doc = json.loads(path.read_text())
    peaks: dict[str, list[float]] = {}
    for r in doc["runs"]:
        peaks.setdefault(r["row"], []).append(r["peak_rss_mib"])
    worst = max(max(v) for v in peaks.values())
    met = worst < MEMORY_LIMIT_MIB
    return [f"- Peak resident memory of 3D training at the quick patch size, each row alone in a fresh process "
            f"(`memory-3d.json`, commit {doc['provenance']['git_commit'][:10]}): "
            + ", ".join(f"{k} max {max(v):.0f} MiB (n={len(v)})" for k, v in peaks.items())
            + f"; largest {worst:.0f} MiB {'<' if met else '≥'} 4 GiB: {'met' if met else 'not met'}", ""]  # fmt: skip


ISSUES = {"12": issue12, "13": issue13, "14": issue14, "15": issue15}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("issues", nargs="*", metavar="ISSUE", help=f"any of {', '.join(ISSUES)} (default: all)")
    p.add_argument("--results-dir", default="benchmarks/results")
    a = p.parse_args(argv)
    unknown = [i for i in a.issues if i not in ISSUES]
    if unknown:
        p.error(f"ISSUE: {', '.join(unknown)} is not one of {', '.join(ISSUES)}")
    res = Results(a.results_dir)
    for issue in a.issues or list(ISSUES):
        print("\n".join(ISSUES[issue](res)))


if __name__ == "__main__":
    main()
