"""The IODA inference benchmark script on a tiny geometry: its results files and their schema."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "ioda_inference.py"


def test_smoke_run_writes_every_case(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--rounds", "1", "--threads", "1", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    results = json.loads((tmp_path / "ioda-inference-smoke.json").read_text())
    assert [(c["batch"], c["dtype"]) for c in results["cases"]] == [
        (1, "float32"), (16, "float32"), (1, "bfloat16"), (16, "bfloat16")]  # fmt: skip
    for c in results["cases"]:
        assert set(c["ms_per_image"]) == {"bare", "semiseg"} and c["ratio"] > 0
    assert results["network"]["parameters"] == 12 * 9 * 16 + 16 + 16 * 16 + 16 + 16 * 12 * 9 + 12 * 9
    assert {"git_commit", "source_hash", "hardware", "wall_seconds"} <= set(results["provenance"])
    assert "| 16 | float32 |" in (tmp_path / "ioda-inference-smoke.md").read_text()
