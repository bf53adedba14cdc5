"""The full-mode IODA Fig. 6 script on a tiny geometry: its figure, results files and their schema."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "ioda_fig6.py"


def test_smoke_run_draws_the_figure_and_records_validation_only(tmp_path):
    out = tmp_path / "fig6"
    args = [sys.executable, str(SCRIPT), "--smoke", "--work-dir", str(tmp_path / "runs"), "--out", str(out)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    results = json.loads(out.with_suffix(".json").read_text())
    assert out.with_suffix(".png").stat().st_size > 0
    assert results["epochs"] == [1, 2] and list(results["runs"]) == ["NDA", "IDA", "IODA"]
    for name, run in results["runs"].items():
        assert set(run["val_mse"]) == {"1", "2", "best", "best_epoch"}
        assert run["val_mse"]["best"] == min(run["val_mse"]["1"], run["val_mse"]["2"])
        assert (run["config"]["method"]["input_layers"], run["config"]["method"]["output_layers"]) == {
            "NDA": (0, 0), "IDA": (1, 0), "IODA": (1, 1)}[name]  # fmt: skip
        assert not (tmp_path / "runs" / name / "metrics.json").exists() or "test" not in json.loads(
            (tmp_path / "runs" / name / "metrics.json").read_text()
        )
    assert {"git_commit", "source_hash", "hardware", "wall_seconds"} <= set(results["provenance"])
    assert "| IODA |" in out.with_suffix(".md").read_text()
    # a second call reuses the trained runs
    logs = {name: (tmp_path / "runs" / name / "epochs.jsonl").stat().st_mtime_ns for name in results["runs"]}
    again = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert logs == {name: (tmp_path / "runs" / name / "epochs.jsonl").stat().st_mtime_ns for name in logs}
