"""Indexing time of a lazy 2D folder dataset: cold (every file decoded for its metadata) against warm
(the same unchanged files, metadata from the index manifest), interleaved cold, warm, cold, ...

A generated folder of 256x256 RGB PNGs (``data_scale.generate``); each cold round indexes into a fresh
cache folder, each warm round into the folder the cold round before it wrote.

    python benchmarks/index_manifest.py --images 2000 --rounds 3

Writes ``benchmarks/results/index-manifest.{json,md}``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="benchmarks/results/index-manifest")
    args = p.parse_args()

    from data_scale import generate

    from semiseg.bench.provenance import provenance, write_result
    from semiseg.data.folder import load_folder

    start = time.time()
    times: dict[str, list[float]] = {"cold": [], "warm": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        generate(root, args.images)
        for r in range(args.rounds):
            cache = Path(tmp) / f"cache{r}"
            for kind in ("cold", "warm"):
                t0 = time.perf_counter()
                bundle = load_folder(root, num_classes=2, loading="lazy", cache=cache)
                times[kind].append(time.perf_counter() - t0)
                assert len(bundle.train) == args.images
                print(f"round {r + 1} {kind}: {times[kind][-1]:.2f} s", file=sys.stderr, flush=True)
    config = {"images": args.images, "size": "256x256 RGB PNG", "rounds": args.rounds, "loading": "lazy"}
    prov = provenance(config=config, seed=0, wall_seconds=round(time.time() - start))
    result = {"benchmark": "index-manifest", "config": config, "provenance": prov, "seconds": times,
              "ratio_cold_to_warm": statistics.median(times["cold"]) / statistics.median(times["warm"])}  # fmt: skip
    print(write_result(args.out, result, render))


def render(result: dict, prov_line: str) -> str:
    t = result["seconds"]

    def cell(v: list[float]) -> str:
        return f"{statistics.median(v):.2f} (min {min(v):.2f}, max {max(v):.2f}, n = {len(v)})"

    n = result["config"]["images"]
    return "\n".join([
        "# Indexing a lazy 2D folder: cold vs warm (index manifest)", "",
        f"{n} generated 256x256 RGB PNGs, `data.loading: lazy`; rounds interleaved cold, warm. Cold decodes "
        "every file once for its metadata and writes the manifest; warm takes the metadata from it (files "
        "checked by path, size and modification time).", "",
        "| indexing | seconds (median) |", "|---|---|",
        f"| cold | {cell(t['cold'])} |", f"| warm (manifest) | {cell(t['warm'])} |", "",
        f"Cold / warm: {result['ratio_cold_to_warm']:.2f}.", "", prov_line, "",
    ])  # fmt: skip


if __name__ == "__main__":
    main()
