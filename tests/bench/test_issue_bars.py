"""benchmarks/issue_bars.py on synthetic results: each issue's comparisons and thresholds, with the
row names the tables really use (a renamed row would show as missing)."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

from semiseg.bench import TABLES

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "issue_bars.py"


def row(method, setting, mean, std=1.0, n=3, paper=None):
    return {"method": method, "setting": setting, "metric": "m", "mean": mean, "std": std, "n_runs": n,
            "paper": paper}  # fmt: skip


def write(tmp_path, table, rows, **provenance):
    doc = {
        "table": table,
        "rows": rows,
        "runs": [],
        "provenance": {"git_commit": "c0ffee1234abcd", **provenance},
    }
    (tmp_path / f"{table}.json").write_text(json.dumps(doc))


def run(tmp_path, monkeypatch, capsys, *issues) -> str:
    monkeypatch.setattr(sys, "argv", ["issue_bars.py", *issues, "--results-dir", str(tmp_path)])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    return capsys.readouterr().out


def test_missing_tables_are_named(tmp_path, monkeypatch, capsys):
    out = run(tmp_path, monkeypatch, capsys)
    for table in ("translation-mnist", "ssldec", "ioda-textures", "shape-prior-acdc", "acdc-3d"):
        assert f"`{table}`: no results in {tmp_path}" in out


#: (table, row, setting) of every row the script reads from a table's rows
READ = [
    *[("translation-mnist", m, s) for m in ("proposed", "seg-only", "AE baseline")
      for s in ("48x48 simple", "48x48 hard", "128x128")],
    *[("translation-acdc-rv", m, "1 % of the RV slices") for m in ("proposed", "seg-only", "AE baseline")],
    *[("ssldec", m, s) for m in ("SSLDEC", "supervised (pre-training only)", "supervised, SSLDEC's labeled schedule")
      for s in ("moons, 8 labels", "MNIST, 100 labels", "MNIST, 1000 labels")],
    *[("ssldec", "pseudo model", s) for s in ("MNIST, 100 labels", "MNIST, 1000 labels")],
    *[("ssldec", m, "MNIST, 100 labels, draw 0") for m in ("SSLDEC, ensemble of 5", "SSLDEC, ensemble members")],
    *[("ssldec-acdc", m, f"{n}, {part}") for n in ("1 patient", "2 patients")
      for part in ("mean over RV/MYO/LV", "RV", "MYO", "LV")
      for m in ("SSLDEC per pixel", "lower bound (1/5 of the slices)", "lower bound, SSLDEC's labeled schedule",
                "pseudo model")],
    *[("ioda-textures", m, f"3 layers, {h} hidden") for h in (256, 2048)
      for m in ("IODA", "IDA", "NDA", "output pre-training only")],
    *[("shape-prior-acdc", f"{b}{x}", f"3 labeled patients, {part}") for b in ("supervised", "FixMatch")
      for x in ("", " + shape prior", " + shape prior at weight 0")
      for part in ("mean over RV/MYO/LV", "myocardium (the ring)")],
    *[("shape-prior-acdc", m, "7 labeled patients, mean over RV/MYO/LV")
      for m in ("supervised", "supervised + shape prior", "FixMatch", "FixMatch + shape prior")],
    *[("acdc-3d", f"{m}, {d}", n) for m in ("supervised", "FixMatch") for d in ("2D UNet (slices)", "3D UNet (patches)")
      for n in ("3 labeled patients", "7 labeled patients")],
]  # fmt: skip


@pytest.mark.parametrize("table, method, setting", READ)
def test_rows_the_script_reads_exist_in_the_tables(table, method, setting):
    """A renamed row would silently show as missing: every row the script reads is a quick-mode row."""
    assert (method, setting) in {(r.method, r.setting) for r in TABLES[table]().rows_for(True)}


def test_issue12_translation(tmp_path, monkeypatch, capsys):
    rows = []
    for setting, (p, s, ae, paper) in {"48x48 simple": (80.0, 60.0, 70.0, 79.0),
                                       "48x48 hard": (50.0, 49.5, 40.0, 57.0),
                                       "128x128": (30.0, 20.0, 25.0, 65.0)}.items():  # fmt: skip
        n = 1 if setting == "128x128" else 3
        rows += [row("proposed", setting, p, None if n == 1 else 1.0, n, paper),
                 row("seg-only", setting, s, None if n == 1 else 1.0, n),
                 row("AE baseline", setting, ae, None if n == 1 else 1.0, n)]  # fmt: skip
    write(tmp_path, "translation-mnist", rows)
    out = run(tmp_path, monkeypatch, capsys, "12")
    simple = out.split("**48x48 simple**")[1].split("**48x48 hard**")[0]
    assert "| proposed 80.00 (± 1.00, n=3) | seg-only 60.00 (± 1.00, n=3) | +20.00 | yes | yes |" in simple
    assert "proposed against the paper's Dice (48x48 simple): 80.00 (± 1.00, n=3) ≥ 79: met" in simple
    hard = out.split("**48x48 hard**")[1].split("**128x128**")[0]
    assert "| seg-only 49.50 (± 1.00, n=3) | +0.50 | yes | no |" in hard  # ahead on the means only
    assert "≥ 57: not met" in hard
    big = out.split("**128x128**")[1]
    assert "| +10.00 | yes | n/a (n=1) |" in big and "paper's Dice (128" not in big
    assert "`translation-acdc-rv`: no results" in out


def test_issue13_ssldec(tmp_path, monkeypatch, capsys):
    moons, m100, m1000 = "moons, 8 labels", "MNIST, 100 labels", "MNIST, 1000 labels"
    write(tmp_path, "ssldec", [
        row("SSLDEC", moons, 99.6, 0.1), row("supervised (pre-training only)", moons, 90.0, 2.0),
        row("supervised, SSLDEC's labeled schedule", moons, 99.0, 1.0),
        row("SSLDEC", m100, 1.4, 0.05), row("pseudo model", m100, 2.0, 0.1),
        row("supervised (pre-training only)", m100, 5.0, 0.5),
        row("SSLDEC", m1000, 1.2, 0.1), row("pseudo model", m1000, 1.1, 0.1),
    ])  # fmt: skip
    out = run(tmp_path, monkeypatch, capsys, "13")
    assert "SSLDEC ≥ 99.5 %: 99.60 (± 0.10, n=3) ≥ 99.5: met" in out
    control = "supervised, SSLDEC's labeled schedule 99.00 (± 1.00, n=3)"
    assert f"| SSLDEC 99.60 (± 0.10, n=3) | {control} | +0.60 | yes | no |" in out
    assert "SSLDEC ≤ 1.5 %: 1.40 (± 0.05, n=3) ≤ 1.5: met" in out
    assert "| SSLDEC 1.40 (± 0.05, n=3) | pseudo model 2.00 (± 0.10, n=3) | -0.60 | yes | yes |" in out
    assert "SSLDEC ≤ 1.0 %: 1.20 (± 0.10, n=3) ≤ 1: not met" in out
    assert "| SSLDEC 1.20 (± 0.10, n=3) | pseudo model 1.10 (± 0.10, n=3) | +0.10 | no | no |" in out
    assert "A lower" in out and "missing" in out  # the 1000-label supervised rows were not written


def test_issue14_ioda_and_shape_prior(tmp_path, monkeypatch, capsys):
    big = "3 layers, 2048 hidden"
    ioda = [row("IODA", big, 6.0, 0.1, paper=3.48), row("IDA", big, 7.0, 0.1), row("NDA", big, 6.5, 0.1),
            row("output pre-training only", big, 6.2, 0.1)]  # fmt: skip
    write(tmp_path, "ioda-textures", ioda)
    three = "3 labeled patients"
    rows = []
    for part in ("mean over RV/MYO/LV", "myocardium (the ring)"):
        s = f"{three}, {part}"
        rows += [row("supervised", s, 60.0), row("supervised + shape prior", s, 64.0),
                 row("supervised + shape prior at weight 0", s, 63.5)]  # fmt: skip
    hd95 = {"HD95 (voxels), mean over RV/MYO/LV": {
        "supervised | 3 labeled patients": {"mean": 12.0, "std": 1.0, "n_runs": 3},
        "supervised + shape prior | 3 labeled patients": {"mean": 8.0, "std": 1.0, "n_runs": 3},
        "supervised + shape prior at weight 0 | 3 labeled patients": {"mean": 11.0, "std": 1.0, "n_runs": 3},
    }}  # fmt: skip
    missed = {"note": "…", "supervised + shape prior | 3 labeled patients": {"missed": 4, "pairs": 360}}
    write(tmp_path, "shape-prior-acdc", rows, hd95=hd95, missed_classes=missed)
    out = run(tmp_path, monkeypatch, capsys, "14")
    ioda = out.split("**3 layers, 2048 hidden**")[1].split("**3 layers, 256 hidden**")[0]
    assert "| IODA 6.00 (± 0.10, n=3) | IDA 7.00 (± 0.10, n=3) | -1.00 | yes | yes |" in ioda
    assert "IODA < IDA < NDA on the means: no" in ioda  # IDA is worse than NDA here
    assert "beside the paper's 3.48" in ioda
    sup = out.split("**supervised, 3 labeled patients: Dice %**")[1].split(
        "**supervised, 3 labeled patients: HD95"
    )[0]
    assert "| supervised + shape prior at weight 0 63.50 (± 1.00, n=3) | +0.50 | yes | no |" in sup
    assert "| supervised 60.00 (± 1.00, n=3) | +4.00 | yes | yes |" in sup
    hd = out.split("**supervised, 3 labeled patients: HD95 (voxels)**")[1]
    assert "| supervised + shape prior at weight 0 11.00 (± 1.00, n=3) | -3.00 | yes | yes |" in hd
    # the pairs a row's HD95 mean leaves out are printed beside it (fewer misses, larger HD95)
    assert "(HD95 (voxels), mean over RV/MYO/LV) [missed 4 of 360 volume-class pairs] 8.00" in hd
    assert "**FixMatch, 3 labeled patients: Dice %**" in out and "missing" in out
    assert "`ioda-inference`" not in out  # not in this results directory
    doc = {"cases": [{"batch": 1, "dtype": "float32", "ratio": 1.04}, {"batch": 16, "dtype": "bfloat16", "ratio": 1.12}],
           "provenance": {"git_commit": "0123456789abc"}}  # fmt: skip
    (tmp_path / "ioda-inference.json").write_text(json.dumps(doc))
    out = run(tmp_path, monkeypatch, capsys, "14")
    assert "- batch 1, float32: semiseg / bare loop 1.04 (within 10 %)" in out
    assert "- batch 16, bfloat16: semiseg / bare loop 1.12 (NOT within 10 %)" in out


@pytest.mark.parametrize("peak, verdict", [(3000.0, "< 4 GiB: met"), (5000.0, "≥ 4 GiB: not met")])
def test_issue15_3d_and_memory(tmp_path, monkeypatch, capsys, peak, verdict):
    three = "3 labeled patients"
    write(tmp_path, "acdc-3d", [row("supervised, 2D UNet (slices)", three, 60.0),
                                row("supervised, 3D UNet (patches)", three, 55.0)],
          peak_memory_mib_3d={"supervised, 3D UNet (patches) | 3 labeled patients": 1000.0,
                              "FixMatch, 3D UNet (patches) | 3 labeled patients": peak},
          distances={"HD95 (voxels of the native grid), mean over RV/MYO/LV": {
              "supervised, 3D UNet (patches) | 3 labeled patients": {"mean": 9.5, "std": 0.5, "n_runs": 3}}},
          missed_classes={"supervised, 3D UNet (patches) | 3 labeled patients": {"missed": 2, "pairs": 360}})  # fmt: skip
    out = run(tmp_path, monkeypatch, capsys, "15")
    assert (
        "| supervised 3D 55.00 (± 1.00, n=3) | supervised 2D 60.00 (± 1.00, n=3) | -5.00 | no | no |" in out
    )
    assert f"largest {peak:.0f} MiB {verdict}" in out
    assert ("- supervised, 3D UNet (patches) | 3 labeled patients: 9.50 (± 0.50, n=3) "
            "[missed 2 of 360 volume-class pairs]") in out  # fmt: skip


def test_unknown_issue_is_one_line_error(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as e:
        run(tmp_path, monkeypatch, capsys, "16")
    assert e.value.code == 2 and "16 is not one of 12, 13, 14, 15" in capsys.readouterr().err


@pytest.mark.parametrize("peak, verdict", [(1500.0, "< 4 GiB: met"), (4500.0, "≥ 4 GiB: not met")])
def test_issue15_memory_of_3d_training_in_a_fresh_process(tmp_path, monkeypatch, capsys, peak, verdict):
    doc = {"provenance": {"git_commit": "0123456789abcdef"},
           "runs": [{"row": "s3 | 3 labeled patients", "peak_rss_mib": 900.0},
                    {"row": "f3 | 3 labeled patients", "peak_rss_mib": peak},
                    {"row": "f3 | 3 labeled patients", "peak_rss_mib": 1000.0}]}  # fmt: skip
    (tmp_path / "memory-3d.json").write_text(json.dumps(doc))
    out = run(tmp_path, monkeypatch, capsys, "15")
    assert (
        f"s3 | 3 labeled patients max 900 MiB (n=1), f3 | 3 labeled patients max {peak:.0f} MiB (n=2)" in out
    )
    assert f"largest {peak:.0f} MiB {verdict}" in out
