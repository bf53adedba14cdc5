"""``semiseg demo`` as a committed result: its printed rows with config, seed, commit, hardware and
wall time. Writes ``benchmarks/results/demo.{json,md}``.

    python benchmarks/demo_results.py [--output runs/demo]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    from semiseg.bench.provenance import provenance, provenance_line
    from semiseg.demo import BASE, RUNS, run_demo
    from semiseg.io import atomic_write_text

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output", default="runs/demo")
    p.add_argument("--results-dir", default="benchmarks/results")
    a = p.parse_args()
    start = time.perf_counter()
    rows = run_demo(a.output)
    wall = round(time.perf_counter() - start, 1)
    config = {"base": BASE, "runs": [{"name": n, "labels": lab, "overrides": o} for n, lab, o in RUNS]}
    results = {"demo_rows": rows, "provenance": provenance(config=config, seed=BASE["data"]["split"]["seed"],
                                                      wall_seconds=wall)}  # fmt: skip
    out = Path(a.results_dir)
    atomic_write_text(out / "demo.json", json.dumps(results, indent=1, default=str))
    table = (Path(a.output) / "comparison.txt").read_text()
    pr = results["provenance"]
    md = [
        "# semiseg demo (built-in generated shapes; test split)",
        "",
        "```",
        table.rstrip(),
        "```",
        "",
        f"One run of `semiseg demo` (n=1 per row: no spread; the README gives the run-to-run spread); "
        f"{pr['hardware']['torch_threads']} PyTorch thread(s).",
        "",
        provenance_line(pr),
    ]
    atomic_write_text(out / "demo.md", "\n".join(md) + "\n")


if __name__ == "__main__":
    main()
