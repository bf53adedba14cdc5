"""Memory and throughput of 2D training as the dataset grows: eager against lazy loading (issue 16).

Generates folders of 1k, 5k and 20k RGB PNG images of 256 x 256 (one in 20 with a mask; a disc on a
smooth background) outside the repository. Each cell is a fresh process that loads the folder
(``data.loading``), builds the training sets (``prepare_data``) and a mean-teacher trainer (a small
UNet, ``--width`` 8 and ``--depth`` 3 by default, so that reading images is a visible share of a step;
batch 8 labeled + 8 unlabeled, 256 x 256), then runs ``--steps`` training steps through the
trainer's own loaders (``train.num_workers`` 0 or 2) and ``train_step``. Recorded per cell: the
main process's peak resident memory (VmHWM), the peak of the summed proportional set size (PSS) of
the process and its loader workers (sampled every 0.1 s: shared pages counted once), the build time,
the training images per second, and the on-disk store's size. Eager cells at 20k are left out (their
arrays alone would take about 15 GiB). Cells run interleaved (for each repeat: every size, loading and
worker count in turn); the first lazy cell of a size starts from an empty store, later ones reuse it.
Writes ``benchmarks/results/data-scale.{json,md}``.

    python benchmarks/data_scale.py --sizes 1000 5000 20000 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SIDE = 256


def generate(root: Path, n: int, seed: int = 0) -> None:
    """``n`` RGB PNGs in ``root/images`` (a bright disc on a smooth background, mild noise), a mask in
    ``root/masks`` for every 20th."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:SIDE, :SIDE]
    for i in range(n):
        cy, cx, r = rng.integers(40, SIDE - 40, 2).tolist() + [int(rng.integers(15, 40))]
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)
        base = (yy[..., None] * rng.uniform(0.1, 0.4, 3) + xx[..., None] * rng.uniform(0.1, 0.4, 3)) % 160
        image = base + 80 * mask[..., None] + rng.normal(0, 6, (SIDE, SIDE, 3))
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / "images" / f"im{i:05d}.png",
                                                                      compress_level=1)  # fmt: skip
        if i % 20 == 0:
            Image.fromarray(mask).save(root / "masks" / f"im{i:05d}.png")
    (root / "complete").write_text(str(n))


class PssSampler:
    """The peak over time of the summed PSS (MiB) of this process and its descendants."""

    def __init__(self, interval: float = 0.1):
        self.interval, self.peak = interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _tree(pid: int) -> list[int]:
        out, todo = [], [pid]
        while todo:
            p = todo.pop()
            out.append(p)
            try:
                for task in os.listdir(f"/proc/{p}/task"):
                    todo += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
            except OSError:
                pass
        return out

    @staticmethod
    def _pss(pid: int) -> float:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(self._pss(p) for p in self._tree(os.getpid())))
            self._stop.wait(self.interval)

    def __enter__(self) -> PssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def cell(root: str, loading: str, workers: int, cache: str, steps: int, width: int, depth: int) -> dict:
    """One measurement, in this (fresh) process."""
    import torch

    from semiseg.config import build_config
    from semiseg.data import prepare_data
    from semiseg.engine.checkpoint import seed_everything
    from semiseg.engine.run import build_method_for
    from semiseg.engine.trainer import Trainer

    torch.set_num_threads(2)
    raw = {
        "data": {"dataset": "folder", "path": root, "loading": loading, "cache_dir": cache, "image_size": [SIDE, SIDE],
                 "split": {"labeled_fraction": 0.04, "val_fraction": 0.005, "test_fraction": 0.005}},
        "model": {"name": "unet", "width": width, "depth": depth},
        "method": {"name": "mean_teacher"},
        "train": {"epochs": 1, "batch_size": 8, "iters_per_epoch": steps, "num_workers": workers,
                  "progress": False, "plots": False},
    }  # fmt: skip
    cfg = build_config(raw, [], source="data_scale")
    with PssSampler() as pss, tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        seed_everything(cfg.train.seed)
        data = prepare_data(cfg)
        method = build_method_for(cfg, data.bundle.in_channels, data.bundle.num_classes)
        t = Trainer(cfg, method, data, Path(out), device=torch.device("cpu"))
        phase = t.phases[-1]
        t.phase_index = len(t.phases) - 1
        optimizers, schedulers = t.build_optimizers(phase)
        t.method.train()
        t.method.on_phase_start(phase.name)
        specs = t.stream_specs(phase)
        t1 = time.perf_counter()
        images = 0
        for raw_batches in zip(*[t.loader(s, 0, steps, phase) for s in specs]):
            batch = {s.name: t.to_batch(b) for s, b in zip(specs, raw_batches)}
            images += sum(len(b) for b in batch.values())
            t.train_step(batch, phase, optimizers, schedulers)
            t.global_step += 1
            t.phase_step += 1
        t2 = time.perf_counter()
    status = Path("/proc/self/status").read_text()
    hwm = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
    n_train = len(data.split.labeled) + len(data.split.unlabeled)
    return {"peak_rss_mib": hwm / 1024, "peak_pss_tree_mib": pss.peak, "build_seconds": t1 - t0,
            "images_per_second": images / (t2 - t1), "train_images": n_train}  # fmt: skip


def _du(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20 if path.exists() else 0.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 20000])
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--width", type=int, default=8, help="UNet width (a small one makes the data path count)")
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--eager-max", type=int, default=5000, help="largest size run eagerly")
    p.add_argument(
        "--work", default=None, help="folder for the generated data and store (default: a temp dir)"
    )
    p.add_argument("--out", default="benchmarks/results/data-scale")
    p.add_argument("--cell", nargs=7, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.cell:
        root, loading, workers, cache, steps, width, depth = args.cell
        print(json.dumps(cell(root, loading, int(workers), cache, int(steps), int(width), int(depth))))
        return

    from semiseg.bench.provenance import provenance, write_result

    work = Path(args.work or tempfile.mkdtemp(prefix="data-scale-"))
    start = time.time()
    for n in args.sizes:
        root = work / f"images-{n}"
        if not (root / "complete").is_file():
            shutil.rmtree(root, ignore_errors=True)
            generate(root, n)
        shutil.rmtree(work / f"cache-{n}", ignore_errors=True)
    runs = []
    for rep in range(args.repeats):
        for n in args.sizes:
            for workers in args.workers:
                for loading in ("eager", "lazy"):
                    if loading == "eager" and n > args.eager_max:
                        continue
                    cache = work / f"cache-{n}"
                    cold = loading == "lazy" and not cache.exists()
                    cmd = [sys.executable, __file__, "--cell", str(work / f"images-{n}"), loading, str(workers),
                           str(cache), str(args.steps), str(args.width), str(args.depth)]  # fmt: skip
                    done = subprocess.run(cmd, capture_output=True, text=True, check=False,
                                          env={**os.environ, "OMP_NUM_THREADS": "2"})  # fmt: skip
                    if done.returncode != 0:
                        sys.exit(f"cell {n} {loading} {workers} failed:\n{done.stderr[-3000:]}")
                    row = json.loads(done.stdout.strip().splitlines()[-1])
                    row.update(images=n, loading=loading, workers=workers, repeat=rep, cold_store=cold,
                               store_mib=_du(cache) if loading == "lazy" else 0.0)  # fmt: skip
                    runs.append(row)
                    print(json.dumps(row), flush=True)
    config = {"sizes": args.sizes, "workers": args.workers, "repeats": args.repeats, "steps": args.steps,
              "image": f"{SIDE}x{SIDE} RGB PNG", "model": f"UNet-{args.width} depth {args.depth}",
              "method": "mean_teacher",
              "batch": "8 labeled + 8 unlabeled", "eager_max": args.eager_max}  # fmt: skip
    prov = provenance(config=config, seed=0, wall_seconds=round(time.time() - start))
    result = {"benchmark": "data-scale", "config": config, "provenance": prov, "runs": runs}
    print(write_result(args.out, result, render))


def render(result: dict, prov_line: str) -> str:
    import statistics

    def stat(values: list[float], digits: int) -> str:
        if len(values) < 2:
            return f"{values[0]:.{digits}f} (n = 1)"
        return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"

    runs, cfg = result["runs"], result["config"]
    lines = [
        "# Data at scale: memory and throughput of 2D training, eager vs lazy loading",
        "",
        f"Generated folders of {cfg['image']} images (1 in 20 with a mask); per cell a fresh process loads the "
        f"folder, builds the training sets and a {cfg['method']} trainer ({cfg['model']}, batch {cfg['batch']}) "
        f"and runs {cfg['steps']} training steps through the trainer's loaders. Peak PSS sums the process and "
        "its loader workers (shared pages once); build = loading + training sets + trainer. Mean ± sample "
        "std over n cells (the first lazy cell of a size builds the store, later ones reuse it).",
        "",
        "| images | loading | workers | n | peak RSS main (MiB) | peak PSS tree (MiB) | build (s) | images/s "
        "| store (MiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    means: dict[tuple, dict[str, float]] = {}
    for n in cfg["sizes"]:
        for workers in cfg["workers"]:
            for loading in ("eager", "lazy"):
                rows = [r for r in runs if (r["images"], r["workers"], r["loading"]) == (n, workers, loading)]
                if not rows:
                    continue
                means[(n, workers, loading)] = {k: statistics.mean(r[k] for r in rows)
                                                for k in ("peak_pss_tree_mib", "images_per_second")}  # fmt: skip
                lines.append(
                    f"| {n} | {loading} | {workers} | {len(rows)} | {stat([r['peak_rss_mib'] for r in rows], 0)} | "
                    f"{stat([r['peak_pss_tree_mib'] for r in rows], 0)} | {stat([r['build_seconds'] for r in rows], 1)} | "
                    f"{stat([r['images_per_second'] for r in rows], 1)} | "
                    f"{stat([r['store_mib'] for r in rows], 0) if loading == 'lazy' else '–'} |"
                )
    lines += ["", "Criteria (issue 16): lazy peak PSS at the largest size ≤ 1.5 × at the smallest; lazy images/s ≥ "
              "0.9 × eager where eager runs.", ""]  # fmt: skip
    small, large = min(cfg["sizes"]), max(cfg["sizes"])
    checks = []  # (what, numerator, denominator, key, passes)
    for w in cfg["workers"]:
        checks.append((f"workers {w}: lazy peak PSS {large} / {small} images", (large, w, "lazy"), (small, w, "lazy"),
                       "peak_pss_tree_mib", lambda r: r <= 1.5))  # fmt: skip
        checks += [(f"workers {w}, {n} images: lazy / eager images/s", (n, w, "lazy"), (n, w, "eager"),
                    "images_per_second", lambda r: r >= 0.9) for n in cfg["sizes"]]  # fmt: skip
    for what, num, den, key, passes in checks:
        if num in means and den in means:
            value = means[num][key] / means[den][key]
            lines.append(f"- {what} = {value:.2f} ({'met' if passes(value) else 'not met'})")
    lines += ["", prov_line, ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
