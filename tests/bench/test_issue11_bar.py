"""benchmarks/issue11_bar.py on synthetic results: the bar and the composition verdicts."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "issue11_bar.py"


def rows(metric: str, *specs):
    return [
        {"method": m, "setting": s, "metric": metric, "mean": mean, "std": std, "n_runs": n, "paper": None}
        for m, s, mean, std, n in specs
    ]


def run(tmp_path, monkeypatch, capsys) -> str:
    monkeypatch.setattr(sys, "argv", ["issue11_bar.py", "--results-dir", str(tmp_path)])
    runpy.run_path(str(SCRIPT), run_name="__main__")
    return capsys.readouterr().out


def test_bar_and_composition(tmp_path, monkeypatch, capsys):
    three = "3 labeled patients"
    semi = rows("Dice", ("supervised", three, 50.0, 2.0, 3), ("UniMatch", three, 61.0, 1.0, 3),
                ("BCP", three, 55.0, 1.0, 3), ("mean teacher", three, 49.0, None, 1),
                ("UniMatch + size (regressor)", three, 61.5, 1.5, 3),
                ("supervised, restarted after 40 %", three, 53.0, 1.0, 3),
                ("supervised, restarted after 24 %", three, 54.5, 1.0, 3),
                ("UniMatch + size at weight 0", three, 70.0, 1.0, 3))  # fmt: skip
    # validation scores of each run's selected checkpoint: UniMatch best on validation, the control
    # (the highest test mean) higher still but never chosen
    val = {
        "UniMatch": 0.80,
        "UniMatch + size (regressor)": 0.78,
        "BCP": 0.70,
        "UniMatch + size at weight 0": 0.90,
    }
    runs = [
        {"method": m, "setting": three, "seed": k, "val_best": {"value": v}}
        for m, v in val.items()
        for k in range(3)
    ]
    horse = rows("pixel error (%)", ("UniMatch", "10 px/image", 9.0, 0.2, 3), ("TV", "10 px/image", 9.8, 0.3, 3),
                 ("UniMatch + TV", "10 px/image", 8.5, 0.2, 3))  # fmt: skip
    for name, table_rows, table_runs in (("semi-acdc", semi, runs), ("tv-horse", horse, [])):
        doc = {"rows": table_rows, "runs": table_runs, "provenance": {"git_commit": "abcdef0123456"}}
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))
    out = run(tmp_path, monkeypatch, capsys)
    control40 = "supervised, restarted after 40 % 53.00 (± 1.00, n=3)"
    assert f"| UniMatch | 61.00 (± 1.00, n=3) | +11.00 | yes | yes | {control40} | +8.00 | yes |" in out
    # BCP against its own schedule's control: +0.5 is within one std
    control24 = "supervised, restarted after 24 % 54.50 (± 1.00, n=3)"
    assert f"| BCP | 55.00 (± 1.00, n=3) | +5.00 | yes | yes | {control24} | +0.50 | no |" in out
    # mean teacher does not restart: its control is the supervised row
    assert "| mean teacher | 49.00 (n=1) | -1.00 | no | n/a (n=1) | – | – | – |" in out
    # the bar's row is the method with the best validation score (UniMatch, 0.8), not the test-best
    # UniMatch + size (61.5, printed beside it) nor the weight-0 control: +11 points but below 75
    assert "best mean validation score, 0.8000): UniMatch 61.00 (± 1.00, n=3) against supervised" in out
    assert "+11.00 points; ≥ supervised + 10 and ≥ 75: not met." in out
    assert "The highest test mean is UniMatch + size (regressor)'s 61.50" in out
    assert "| UniMatch + size at weight 0 (control) | 70.00 (± 1.00, n=3) |" in out
    # lower error is better: 8.5 beats 9.0 (gap 0.5 > 0.2) and 9.8
    assert (
        "| tv-horse | 10 px/image | UniMatch + TV 8.50 (± 0.20, n=3) | UniMatch 9.00 (± 0.20, n=3) | yes |"
        in out
    )
    # semi-acdc's composed row against UniMatch: +0.5 is within one std
    assert (
        "| semi-acdc | 3 labeled patients | UniMatch + size (regressor) 61.50 (± 1.50, n=3) | UniMatch" in out
    )
    assert out.rstrip().endswith("| no |")
    assert "`curriculum-acdc`: no results" in out


def test_curriculum_composition_uses_the_proposed_row_and_says_when_a_part_is_missing(
    tmp_path, monkeypatch, capsys
):
    five, one = "5 labeled patients", "1 labeled patient"
    curriculum = rows("LV Dice", ("UniMatch", five, 70.0, 1.0, 3), ("Proposed (size regressor)", five, 60.0, 2.0, 3),
                      ("UniMatch + size", five, 72.5, 1.0, 3), ("UniMatch + size", one, 40.0, 1.0, 3),
                      ("UniMatch", one, 38.0, 1.0, 3))  # fmt: skip
    doc = {"rows": curriculum, "provenance": {"git_commit": "abcdef0123456"}}
    (tmp_path / "curriculum-acdc.json").write_text(json.dumps(doc))
    out = run(tmp_path, monkeypatch, capsys)
    part = "Proposed (size regressor) 60.00 (± 2.00, n=3)"
    assert f"| curriculum-acdc | {five} | UniMatch + size 72.50 (± 1.00, n=3) | {part} | yes |" in out
    assert (
        f"| curriculum-acdc | {five} | UniMatch + size 72.50 (± 1.00, n=3) | UniMatch 70.00 (± 1.00, n=3) | yes |"
        in out
    )
    assert (
        f"| curriculum-acdc | {one} | UniMatch + size 40.00 (± 1.00, n=3) | Proposed (size regressor): missing | n/a |"
        in out
    )
