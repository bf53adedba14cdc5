"""benchmarks/tta_effect.py: the committed Markdown is the rendering of its JSON, and the paired
summary is computed from the runs it lists."""

from __future__ import annotations

import json
import runpy
import statistics
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def test_committed_tta_result_renders_from_its_json_and_its_summary_from_its_runs():
    from semiseg.bench.provenance import provenance_line

    script = runpy.run_path(str(BENCH / "tta_effect.py"))
    result = json.loads((BENCH / "results" / "tta-acdc.json").read_text())
    md = (BENCH / "results" / "tta-acdc.md").read_text()
    assert script["render"](result, provenance_line(result["provenance"])) == md
    for row in result["rows"]:
        for metric, summary in row["summary"].items():
            diffs = [r["flip"][metric] - r["none"][metric] for r in row["runs"]]
            assert summary["flip_minus_none"]["mean"] == statistics.fmean(diffs)
            assert summary["none"]["n"] == len(row["runs"])
            if len(diffs) > 1:
                assert summary["flip_minus_none"]["std"] == statistics.stdev(diffs)
