"""Inference time of the IODA paper's CT network (§5): a 311 x 457 image through 1500 and 1500 tanh units
to a 311 x 457 sigmoid map (428,776,127 parameters), semiseg's inference path against a bare PyTorch loop.

- *bare*: ``torch.sigmoid`` of an ``nn.Sequential`` of the same Linear layers on a prebuilt input
  tensor, under ``torch.inference_mode``;
- *semiseg*: ``semiseg.engine.evaluate.predict_slices`` (what ``semiseg predict`` and evaluation run,
  file I/O excluded) with the ``ioda`` method's ``predict`` on a list of images: the size check,
  stacking, the network (logits ``[0, z]``), the softmax and the copy to the CPU.

Both share the same weights (random: timing does not depend on them). Cases: batch 1 and 16, float32
and bfloat16 (the model's weights cast; semiseg's input cast by a wrapper of ``predict``, as a
``--dtype`` option would). Rounds alternate bare, semiseg, bare, ... after one warm-up round; the
medians are reported, ms per image, with semiseg / bare to 2 decimals. Run on idle cores (the other
processes paused): the absolute times are committed. The paper: 201.2 ± 8.6 ms per image on a
4-core i7-2760QM. Writes ``benchmarks/results/ioda-inference.{json,md}``.

    python benchmarks/ioda_inference.py            # the CT network, 2 threads
    python benchmarks/ioda_inference.py --smoke    # a tiny geometry, for tests
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

CT = {"size": (311, 457), "hidden": [1500, 1500], "parameters": 428_776_127}
SMOKE = {"size": (12, 9), "hidden": [16, 16], "parameters": None}


def build(geometry: dict):
    """The ``ioda`` method (k = j = 0: inference does not depend on pre-training) and a bare
    ``nn.Sequential`` over the same Linear layers."""
    import torch
    import torch.nn as nn

    from semiseg.config import ModelConfig
    from semiseg.methods import build_method

    torch.manual_seed(0)
    cfg = ModelConfig(name="mlp", output="map", hidden=geometry["hidden"], activation="tanh")
    method = build_method({"name": "ioda", "input_layers": 0, "output_layers": 0}, cfg, in_channels=1,
                          num_classes=2, image_size=geometry["size"]).eval()  # fmt: skip
    layers: list[nn.Module] = [nn.Flatten()]
    for i, linear in enumerate(method.model.linears):
        layers += [linear, nn.Tanh()] if i < len(method.model.linears) - 1 else [linear]
    n = sum(p.numel() for p in method.model.parameters())
    if geometry["parameters"] is not None and n != geometry["parameters"]:
        raise SystemExit(f"the CT network has {n} parameters, expected {geometry['parameters']}")
    return method, nn.Sequential(*layers).eval(), n


def cases(method, bare, geometry: dict, batch: int, dtype, rounds: int) -> dict:
    import torch

    from semiseg.engine.evaluate import predict_slices

    h, w = geometry["size"]
    method.to(dtype)
    bare.to(dtype)
    images = [torch.rand(1, h, w) for _ in range(batch)]
    x = torch.stack(images).to(dtype)
    cpu = torch.device("cpu")

    def run_bare():
        with torch.inference_mode():
            torch.sigmoid(bare(x))

    def run_semiseg():
        predict_slices(lambda t: method.predict(t.to(dtype)), images, (h, w), cpu, batch_size=batch)

    from semiseg.bench.timing import interleaved

    times = interleaved({"bare": run_bare, "semiseg": run_semiseg}, rounds=rounds)
    ms = {k: 1000 * statistics.median(v) / batch for k, v in times.items()}
    return {"batch": batch, "dtype": str(dtype).replace("torch.", ""), "ms_per_image": ms,
            "ratio": round(ms["semiseg"] / ms["bare"], 2), "rounds": rounds}  # fmt: skip


def main() -> None:
    import torch

    from semiseg.bench.provenance import provenance, provenance_line
    from semiseg.engine.run import peak_memory_mib
    from semiseg.io import atomic_write_text

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--smoke", action="store_true", help="a tiny geometry (tests)")
    p.add_argument("--out", default="benchmarks/results")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    geometry = SMOKE if a.smoke else CT
    t0 = time.perf_counter()
    method, bare, n = build(geometry)
    out_cases = []
    for dtype in (torch.float32, torch.bfloat16):
        for batch in (1, 16):
            out_cases.append(cases(method, bare, geometry, batch, dtype, a.rounds))
            print(json.dumps(out_cases[-1]), flush=True)
    results = {
        "benchmark": "ioda-inference",
        "network": {"image": list(geometry["size"]), "hidden": geometry["hidden"], "parameters": n},
        "cases": out_cases,
        "paper_ms_per_image": 201.2,
        "peak_memory_mib": round(peak_memory_mib(), 1),
        "provenance": provenance(
            config={"geometry": geometry, "threads": a.threads, "smoke": a.smoke},
            seed=0,
            wall_seconds=round(time.perf_counter() - t0, 1),
        ),  # fmt: skip
    }
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "ioda-inference-smoke" if a.smoke else "ioda-inference"
    atomic_write_text(out / f"{name}.json", json.dumps(results, indent=1))
    lines = [
        f"# IODA's CT network: inference time ({n:,} parameters, {a.threads} threads)",
        "",
        "| batch | dtype | bare PyTorch (ms / image) | semiseg (ms / image) | semiseg / bare |",
        "|---|---|---|---|---|",
    ]
    for c in out_cases:
        ms = c["ms_per_image"]
        lines.append(
            f"| {c['batch']} | {c['dtype']} | {ms['bare']:.1f} | {ms['semiseg']:.1f} | {c['ratio']:.2f} |"
        )
    lines += ["", f"Medians of {a.rounds} interleaved rounds after one warm-up. The paper: 201.2 ± 8.6 ms per "
              "image on a 4-core laptop CPU (i7-2760QM). Peak resident memory "
              f"{results['peak_memory_mib']} MiB.", "", provenance_line(results["provenance"])]  # fmt: skip
    atomic_write_text(out / f"{name}.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
