"""Peak resident memory of 3D training on the ACDC volumes at the quick patch size, one fresh process per cell.

Issue 15 asks that 3D training at the quick patch size stay under 4 GiB of resident memory. The
``acdc-3d`` table records the bench process's peak (``ru_maxrss`` when each 3D run finished), an upper
bound: that process also trained the table's 2D runs. This script measures it alone, for each 3D row
of ``acdc-3d`` (the supervised 3D UNet and the semi-supervised method's, 3 labeled patients, their
quick configs as the table builds them): it runs ``semiseg train --no-test`` in a fresh process for
one short epoch (the semi-supervised method without its warm-up, so its unlabeled stream is trained)
followed by a validation pass (sliding windows over the 20 validation volumes), and reads the child's
peak resident memory from ``os.wait4``. Each row runs on an empty volume store (cold), then on the
store that run left (warm). Cells run interleaved (row 1 cold, warm, row 2 cold, warm, ...),
``--repeats`` times. No test number is computed. Writes ``benchmarks/results/memory-3d.{json,md}``.

    python benchmarks/memory_3d.py --data-root ../shared/data --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIMIT_MIB = 4096.0  #: issue 15's bar: under 4 GiB
SETTING = "3 labeled patients"


def rows() -> list[str]:
    """The 3D rows of acdc-3d at :data:`SETTING` (their keys)."""
    from semiseg.bench import get_table

    return [r.key for r in get_table("acdc-3d").rows if "3D" in r.method and r.setting == SETTING]


def short_config(key: str, steps: int) -> dict:
    """Row ``key`` of acdc-3d as the quick table trains it (seed 0), cut to ``steps`` steps of one
    epoch with a validation pass; a method with a supervised warm-up starts without it."""
    from semiseg.bench import get_table
    from semiseg.bench.runner import row_config
    from semiseg.config import to_dict

    table = get_table("acdc-3d")
    row = next(r for r in table.rows if r.key == key)
    short = ["train.epochs=1", f"train.iters_per_epoch={steps}", "train.val_every=1", "train.plots=false"]
    cfg = row_config(table, row, 0, True, user=short)
    if "warmup_epochs" in cfg.method:
        cfg = row_config(table, row, 0, True, user=[*short, "method.warmup_epochs=0"])
    raw = to_dict(cfg)
    raw.pop("quick", None)  # already applied
    return raw


def cell(key: str, data_root: str, steps: int, store: Path) -> dict:
    """Train row ``key`` for ``steps`` steps and one validation pass in a child process, with its
    volumes' on-disk store in ``store`` (empty: the run builds it, "cold"; else "warm")."""
    import yaml

    build = "warm" if store.is_dir() and any(store.iterdir()) else "cold"
    raw = short_config(key, steps)
    raw["data"]["cache_dir"] = str(store)
    with tempfile.TemporaryDirectory(prefix="memory-3d-") as tmp:
        recipe = Path(tmp) / "run.yaml"
        recipe.write_text(yaml.safe_dump(raw))
        cmd = [sys.executable, "-m", "semiseg.cli", "train", "-c", str(recipe), "--no-test",
               "--data-root", data_root, "-o", f"{tmp}/out"]  # fmt: skip
        start = time.perf_counter()
        with subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) as child:
            err = child.stderr.read() if child.stderr else ""
            _, status, usage = os.wait4(child.pid, 0)
            child.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
        wall = time.perf_counter() - start
        if child.returncode != 0:
            sys.exit(f"memory_3d: {key} failed:\n{err[-3000:]}")
    return {"row": key, "store": build, "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
            "wall_seconds": round(wall, 1)}  # fmt: skip


def render(result: dict, prov_line: str) -> str:
    import statistics

    cfg = result["config"]
    lines = [
        "# Peak resident memory of 3D training on ACDC volumes at the quick patch size (short runs)",
        "",
        f"Each cell is a fresh `semiseg train --no-test` process: {cfg['steps']} training steps of an acdc-3d 3D "
        "row's quick config as the table builds it (8 x 128 x 128 patches, 2 per stream and step, 3D UNet-8 "
        "with two in-plane levels; the semi-supervised row without warm-up, so its unlabeled stream runs), "
        "then one validation pass (sliding windows over the 20 validation volumes). Peak RSS = the child's "
        "`ru_maxrss` from `os.wait4` (data preparation, training and validation). Each row runs first on an "
        "empty on-disk volume store (cold: the run writes every volume's training grid) and then on the store "
        f"it left (warm). Bar (issue 15): under {cfg['limit_mib']:.0f} MiB. A short-run peak: a full run's "
        "later epochs allocate nothing new but are not measured. The training code is this commit's (below), "
        "which may differ from the table's pin (its provenance). Cells ran interleaved; wall times are "
        "indicative (other training shared the 2 cores).",
        "",
        # a row key is "<method> | <setting>": two columns
        "| row | setting | store | n | peak RSS (MiB), mean ± std | max (MiB) | under 4 GiB | wall (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key in cfg["rows"]:
        for build in ("cold", "warm"):
            rows = [r for r in result["runs"] if r["row"] == key and r.get("store", "warm") == build]
            if not rows:
                continue
            peaks = [r["peak_rss_mib"] for r in rows]
            walls = [r["wall_seconds"] for r in rows]
            spread = f" ± {statistics.stdev(peaks):.0f}" if len(peaks) > 1 else f"† (n = {len(peaks)})"
            lines.append(
                f"| {key} | {build} | {len(rows)} | {statistics.mean(peaks):.0f}{spread} | {max(peaks):.0f} | "
                f"{'yes' if max(peaks) < cfg['limit_mib'] else 'no'} | {statistics.mean(walls):.0f} |"
            )
    lines += ["", prov_line, ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data-root", default=os.environ.get("SEMISEG_DATA", str(ROOT.parent / "shared" / "data"))
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "memory-3d"))
    p.add_argument("--render", metavar="JSON", help="only re-render the Markdown of a results JSON")
    args = p.parse_args()
    if args.repeats < 1 or args.steps < 1:
        p.error("--repeats and --steps must be at least 1")
    from semiseg.bench.provenance import provenance, write_result

    if args.render:
        write_result(Path(args.render).with_suffix(""), json.loads(Path(args.render).read_text()), render)
        return
    if not (Path(args.data_root) / "acdc").is_dir():
        sys.exit(f"memory_3d: --data-root {args.data_root}: no acdc folder there")
    from semiseg.bench.provenance import git_commit, source_hash

    code = (git_commit(), source_hash())  # the code every cell runs: it must not change meanwhile
    start = time.time()
    runs = []
    keys = rows()
    with tempfile.TemporaryDirectory(prefix="memory-3d-stores-") as stores:
        for rep in range(args.repeats):
            for i, key in enumerate(keys):
                store = Path(stores) / f"{rep}-{i}"  # each row: a cold store, then the same one warm
                for _ in ("cold", "warm"):
                    row = {**cell(key, args.data_root, args.steps, store), "repeat": rep}
                    runs.append(row)
                    print(json.dumps(row), flush=True)
    config = {"table": "acdc-3d", "rows": keys, "repeats": args.repeats, "steps": args.steps, "limit_mib": LIMIT_MIB,
              "threads": os.environ.get("OMP_NUM_THREADS")}  # fmt: skip
    prov = provenance(config=config, seed=0, wall_seconds=round(time.time() - start))
    if (prov["git_commit"], prov["source_hash"]) != code:
        sys.exit(
            f"memory_3d: the checkout changed during the measurement ({code} → "
            f"{prov['git_commit']}, {prov['source_hash']}); nothing written, run it again"
        )
    result = {"benchmark": "memory-3d", "config": config, "provenance": prov, "runs": runs}
    print(write_result(args.out, result, render))


if __name__ == "__main__":
    main()
