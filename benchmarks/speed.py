"""Training and inference speed on CPU, side by side and interleaved (issue 16's ``speed`` benchmark).

**Training** (images/s, 128 x 128, batch 16, one input channel, 4 classes): semiseg's 2D UNet-16
(depth 4) through the trainer's own ``train_step`` (supervised, CE + Dice, Adam), in the default
memory format and channels-last (``train.channels_last``), against MONAI's ``BasicUNet`` with the
same widths (16, 32, 64, 128, 256) in a plain PyTorch loop (MONAI's ``DiceCELoss``, Adam). All
three see the same fixed batches; rounds alternate the sides (``--rounds``, ``--steps`` each).

**Inference** (ms per image, batch 1, at 256 x 256 and 311 x 457, the same UNet-16 with random
weights, eval mode): PyTorch fp32, PyTorch with bfloat16 autocast, ``torch.compile`` (compiled
once before timing; skipped if it fails) and onnxruntime on the model exported as ``semiseg
export`` exports it, each with 2 and 1 intra-op threads; rounds alternate backends. The bfloat16
and onnxruntime outputs are compared with fp32 (largest absolute logit difference, share of pixels
whose class changes). Peak resident memory of each inference backend is measured in a fresh
process (VmHWM after 20 images).

Writes ``benchmarks/results/speed.{json,md}``.

    python benchmarks/speed.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZES = [(256, 256), (311, 457)]
WIDTHS = (16, 32, 64, 128, 256)


def unet():
    from semiseg.config import ModelConfig
    from semiseg.models import build_model

    return build_model(ModelConfig(name="unet", width=16, depth=4), 1, 4)


def training(rounds: int, steps: int) -> dict:
    import torch
    from monai.losses import DiceCELoss
    from monai.networks.nets import BasicUNet

    from semiseg.bench.timing import TrainerSteps, interleaved
    from semiseg.config import build_config

    sides = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, channels_last in (("semiseg UNet-16", False), ("semiseg UNet-16, channels-last", True)):
            raw = {"data": {"dataset": "shapes", "image_size": [128, 128], "num_images": 80, "shapes_classes": 4,
                            "split": {"labeled": 48}},
                   "model": {"name": "unet", "width": 16, "depth": 4},
                   "method": {"name": "supervised", "dice_weight": 1.0},
                   "train": {"batch_size": 16, "lr": 1e-3, "channels_last": channels_last, "progress": False,
                             "plots": False}}  # fmt: skip
            cfg = build_config(raw, [], source="speed")
            sides[name] = TrainerSteps(cfg, Path(tmp) / name, phase=None, steps=steps)
        batches = sides["semiseg UNet-16"].batches
        torch.manual_seed(0)
        monai_net = BasicUNet(spatial_dims=2, in_channels=1, out_channels=4, features=(*WIDTHS, 16))
        optimizer = torch.optim.Adam(monai_net.parameters(), 1e-3)
        loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
        monai_net.train()

        def monai_steps() -> None:
            for batch in batches:
                b = batch["labeled"]
                optimizer.zero_grad()
                loss_fn(monai_net(b.image), b.mask[:, None]).backward()
                optimizer.step()

        runs = {name: steps_ for name, steps_ in sides.items()}
        runs["MONAI BasicUNet, plain loop"] = monai_steps
        times = interleaved(runs, rounds=rounds)
    images = 16 * steps
    return {name: {"images_per_second": [images / t for t in ts]} for name, ts in times.items()}


def export_model(net, path: Path) -> None:
    """``net`` as ONNX the way ``semiseg export`` exports (dynamic batch and image size)."""
    import torch

    from semiseg.engine.export import _Network, to_onnx

    model = to_onnx(_Network(net, predict=False).eval(), torch.rand(2, 1, 256, 256))
    path.write_bytes(model.SerializeToString())


def backends(net, onnx_path: Path, threads: int, compiled) -> dict:
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])

    def fp32(x):
        with torch.inference_mode():
            return net(x)

    def bf16(x):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            return net(x).float()

    def onnxrt(x):
        return torch.from_numpy(session.run(None, {"image": x.numpy()})[0])

    out = {"PyTorch fp32": fp32, "PyTorch bf16 autocast": bf16, "onnxruntime": onnxrt}
    if compiled is not None:

        def compiled_fp32(x):
            with torch.inference_mode():
                return compiled(x)

        out["torch.compile fp32"] = compiled_fp32
    return out


def inference(rounds: int, per_round: int) -> tuple[dict, dict]:
    import torch

    from semiseg.bench.timing import interleaved

    torch.manual_seed(0)
    net = unet().eval()
    results, agreement = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(tmp) / "unet.onnx"
        export_model(net, onnx_path)
        compiled = None
        try:
            compiled = torch.compile(net)
            with torch.inference_mode():
                for h, w in SIZES:
                    compiled(torch.rand(1, 1, h, w))
        except Exception as exc:  # noqa: BLE001 - compile needs a working C++ toolchain
            print(f"torch.compile skipped: {type(exc).__name__}: {exc}", file=sys.stderr)
            compiled = None
        for threads in (2, 1):
            torch.set_num_threads(threads)
            runs_by = backends(net, onnx_path, threads, compiled)
            for h, w in SIZES:
                x = torch.rand(1, 1, h, w, generator=torch.Generator().manual_seed(h))
                reference = runs_by["PyTorch fp32"](x)
                for name, fn in runs_by.items():
                    if name != "PyTorch fp32" and threads == 2:
                        y = fn(x)
                        agreement[f"{name} @ {h}x{w}"] = {
                            "max_abs_diff": float((y - reference).abs().max()),
                            "class_changed": float((y.argmax(1) != reference.argmax(1)).float().mean()),
                        }
                runs = {
                    name: (lambda fn=fn, x=x: [fn(x) for _ in range(per_round)])
                    for name, fn in runs_by.items()
                }
                t0 = time.time()
                times = interleaved(runs, rounds=rounds)
                shown = ", ".join(
                    f"{k} {1000 * statistics.median(v) / per_round:.0f} ms" for k, v in times.items()
                )
                print(f"inference {h}x{w}, {threads} thread(s), {time.time() - t0:.0f} s: {shown}", file=sys.stderr,
                      flush=True)  # fmt: skip
                for name, ts in times.items():
                    results[f"{name} | {threads} thread(s) | {h}x{w}"] = {
                        "ms_per_image": [1000 * t / per_round for t in ts]
                    }
    torch.set_num_threads(2)
    return results, agreement


def memory_cell(backend: str, onnx_path: str) -> dict:
    """Peak RSS (MiB) of a fresh process that runs ``backend`` on 20 images of 311 x 457 (onnxruntime:
    the model exported beforehand by the parent process)."""
    import numpy as np

    rng = np.random.default_rng(0)
    images = [rng.random((1, 1, 311, 457), dtype=np.float32) for _ in range(20)]
    if backend == "onnxruntime":
        import onnxruntime as ort

        session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
        for x in images:
            session.run(None, {"image": x})
    else:
        import torch

        torch.manual_seed(0)
        net = unet().eval()
        bf16 = backend.endswith("autocast")
        for x in images:
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                net(torch.from_numpy(x))
    status = Path("/proc/self/status").read_text()
    return {
        "peak_rss_mib": next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
        / 1024
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=3, help="training steps per round")
    p.add_argument("--per-round", type=int, default=5, help="inference images per round")
    p.add_argument("--out", default="benchmarks/results/speed")
    p.add_argument("--memory-cell", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_cell:
        print(json.dumps(memory_cell(*args.memory_cell)))
        return

    import torch

    from semiseg.bench.provenance import provenance, write_result

    torch.set_num_threads(2)
    start = time.time()
    train = training(args.rounds, args.steps)
    print(f"training done after {time.time() - start:.0f} s", file=sys.stderr, flush=True)
    infer, agreement = inference(args.rounds, args.per_round)
    memory = {}
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        export_model(unet().eval(), Path(tmp) / "unet.onnx")
        for backend in ("PyTorch fp32", "PyTorch bf16 autocast", "onnxruntime"):
            done = subprocess.run([sys.executable, __file__, "--memory-cell", backend, str(Path(tmp) / "unet.onnx")],
                                  capture_output=True, text=True, check=True)  # fmt: skip
            memory[backend] = json.loads(done.stdout.strip().splitlines()[-1])
    config = {"rounds": args.rounds, "train_steps_per_round": args.steps, "inference_images_per_round": args.per_round,
              "train": "128x128, batch 16, 1 channel, 4 classes", "inference": [f"{h}x{w}" for h, w in SIZES],
              "model": "UNet-16 depth 4 (widths 16..256)"}  # fmt: skip
    prov = provenance(config=config, seed=0, wall_seconds=round(time.time() - start))
    result = {"benchmark": "speed", "config": config, "provenance": prov, "training": train, "inference": infer,
              "agreement": agreement, "memory": memory}  # fmt: skip
    print(write_result(args.out, result, render))


def render(result: dict, prov_line: str) -> str:
    def med(values: list[float]) -> float:
        return statistics.median(values)

    def spread(values: list[float], digits: int) -> str:
        if len(values) < 2:
            return f"{med(values):.{digits}f} (n = 1)"
        q = statistics.quantiles(values, n=4)
        return f"{med(values):.{digits}f} (IQR {q[0]:.{digits}f}–{q[2]:.{digits}f}, n = {len(values)})"

    train, infer = result["training"], result["inference"]
    base = med(train["MONAI BasicUNet, plain loop"]["images_per_second"])
    lines = ["# Speed on CPU: training and inference, interleaved", "",
             "Median over rounds (each round: every side in turn). Training: 128 x 128, batch 16, the same batches "
             "for every side. Inference: batch 1, random-weight UNet-16 in eval mode.", "",
             "## Training", "", "| side | images/s | ratio to MONAI loop |", "|---|---|---|"]  # fmt: skip
    for name, v in train.items():
        lines.append(
            f"| {name} | {spread(v['images_per_second'], 1)} | {med(v['images_per_second']) / base:.2f} |"
        )
    lines += ["", "## Inference (ms per image)", "", "| backend | threads | size | ms / image | speed-up over fp32 |",
              "|---|---|---|---|---|"]  # fmt: skip
    for key, v in infer.items():
        name, threads, size = [s.strip() for s in key.split("|")]
        fp32 = med(infer[f"PyTorch fp32 | {threads} | {size}"]["ms_per_image"])
        lines.append(f"| {name} | {threads.split()[0]} | {size} | {spread(v['ms_per_image'], 1)} | "
                     f"{fp32 / med(v['ms_per_image']):.2f} |")  # fmt: skip
    lines += ["", "Agreement with PyTorch fp32 (2 threads): largest absolute logit difference, share of pixels whose "
              "class changes.", "", "| backend @ size | max abs diff | class changed |", "|---|---|---|"]  # fmt: skip
    for key, v in result["agreement"].items():
        lines.append(f"| {key} | {v['max_abs_diff']:.2e} | {100 * v['class_changed']:.3f} % |")
    lines += ["", "Peak resident memory (fresh process, 20 images of 311 x 457):", "",
              "| backend | peak RSS (MiB) |", "|---|---|"]  # fmt: skip
    for name, v in result["memory"].items():
        lines.append(f"| {name} | {v['peak_rss_mib']:.0f} |")
    lines += ["", prov_line, ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
