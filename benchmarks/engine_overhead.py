"""Engine overhead: the trainer's training throughput against a plain PyTorch loop, NCHW and channels-last.

Same model (UNet, width 16, depth 4, batch norm), same batch (16 images of 128x128), same data
tensors, Adam and masked cross-entropy, CPU, one process; rounds cycle through plain NCHW, trainer
NCHW, plain channels-last, trainer channels-last (one epoch of ``--iters`` iterations each), and
images/s are medians over ``--rounds`` rounds (after one warm-up round). The trainer's epoch is a
real one without validation: loader, ``train_step``, logging, ``last.pt`` (see
``semiseg.bench.overhead``). When the trainer is below 0.95 of the plain loop (or with
``--profile``) a cProfile of trainer epochs is written to ``engine-overhead-profile.txt``.
Writes ``benchmarks/results/engine-overhead.{json,md}``.

    python benchmarks/engine_overhead.py [--rounds 7] [--iters 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path


def markdown(results: dict) -> str:
    m, p, s = results["measurement"], results["provenance"], results["setup"]
    names = {"plain/nchw": ("plain loop", "NCHW"), "trainer/nchw": ("trainer", "NCHW"),
             "plain/channels_last": ("plain loop", "channels-last"),
             "trainer/channels_last": ("trainer", "channels-last")}  # fmt: skip
    lines = [
        "# engine-overhead: the trainer's training throughput vs a plain PyTorch loop (CPU)",
        "",
        "| loop | memory format | images/s (median) | images/s per round |",
        "|---|---|---|---|",
    ]
    for key, (loop, fmt) in names.items():
        side = m["sides"][key]
        rounds = ", ".join(f"{v:.1f}" for v in side["round_images_per_second"])
        lines.append(f"| {loop} | {fmt} | {side['images_per_second']:.1f} | {rounds} |")
    pairs = {"trainer/plain, NCHW": ("trainer/nchw", "plain/nchw"),
             "trainer/plain, channels-last": ("trainer/channels_last", "plain/channels_last"),
             "channels-last/NCHW, plain": ("plain/channels_last", "plain/nchw"),
             "channels-last/NCHW, trainer": ("trainer/channels_last", "trainer/nchw")}  # fmt: skip
    lines += [
        "",
        "| ratio | of the medians | per round: median | per round: min – max |",
        "|---|---|---|---|",
    ]
    for k, v in m["ratios"].items():
        a, b = (m["sides"][x]["round_images_per_second"] for x in pairs[k])
        per_round = [x / y for x, y in zip(a, b)]  # the same round: the two sides ran one after the other
        lines.append(f"| {k} | **{v:.2f}** | {statistics.median(per_round):.2f} | "
                     f"{min(per_round):.2f} – {max(per_round):.2f} |")  # fmt: skip
    met = m["bar"]["met"]
    lines += [
        "",
        f"Bar: trainer/plain ≥ {m['bar']['trainer/plain at least']:.2f} — "
        + "; ".join(f"{k.split(', ')[1]}: {'met' if v else 'not met'}" for k, v in met.items())
        + ".",
        "",
        f"The trainer's own loop clock (loader, `train_step`, logging; without `last.pt` and the epoch logs): "
        f"{m['sides']['trainer/nchw']['loop_images_per_second']:.1f} images/s NCHW, "
        f"{m['sides']['trainer/channels_last']['loop_images_per_second']:.1f} images/s channels-last.",
        "",
        f"Setup: UNet width {s['width']}, depth {s['depth']}, {s['norm']} norm; batch {s['batch_size']} of "
        f"{s['image_size']}x{s['image_size']} generated shapes images ({s['classes'] + 1} classes); Adam, "
        f"lr {s['lr']}, masked cross-entropy; {s['iters']} iterations per epoch = per round and side; "
        f"{p['rounds']} rounds after {p['warmup_rounds']} warm-up round, cycling plain NCHW, trainer NCHW, "
        f"plain channels-last, trainer channels-last; torch threads {m['torch_threads']}.",
        "",
        f"Commit `{p['git_commit']}`; source hash `{p['source_hash']}`; seed {p['seed']}; wall time "
        f"{p['wall_seconds']} s; load average before / after {p['loadavg_before']} / {p['loadavg_after']}; "
        f"hardware: {p['hardware']['cpu']} ({p['hardware']['cores']} cores), torch {p['hardware']['torch']}.",
    ]
    if results.get("profile"):
        lines += ["", f"Profile of trainer epochs: `{results['profile']}`."]
    return "\n".join(lines) + "\n"


def main() -> None:
    from semiseg.bench.overhead import Setup, measure, profile
    from semiseg.bench.provenance import provenance
    from semiseg.config import to_dict
    from semiseg.io import atomic_write_text

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--iters", type=int, default=10, help="iterations per epoch (per round and side)")
    p.add_argument("--profile", action="store_true", help="write the trainer profile even if the bar is met")
    p.add_argument("--results-dir", default="benchmarks/results")
    p.add_argument("--render", action="store_true", help="only re-render the Markdown from the results JSON")
    a = p.parse_args()
    out = Path(a.results_dir)
    if a.render:
        atomic_write_text(
            out / "engine-overhead.md", markdown(json.loads((out / "engine-overhead.json").read_text()))
        )
        return
    if a.rounds < 5:
        p.error("--rounds: at least 5")
    setup = Setup(iters=a.iters)
    start = time.perf_counter()
    load_before = [round(x, 2) for x in os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="semiseg-overhead-") as tmp:
        m = measure(setup, a.rounds, Path(tmp))
        for k, v in m["ratios"].items():
            print(f"{k}: {v:.2f}", flush=True)
        prof_path = None
        if a.profile or not all(m["bar"]["met"].values()):
            prof_path = out / "engine-overhead-profile.txt"
            atomic_write_text(prof_path, profile(setup, False, Path(tmp) / "profile"))
    results = {
        "benchmark": "engine-overhead",
        "setup": vars(setup),
        "measurement": m,
        "profile": str(prof_path) if prof_path else None,
        "provenance": provenance(
            config={"nchw": to_dict(setup.config(False)), "channels_last": to_dict(setup.config(True))},
            seed=setup.seed,
            rounds=a.rounds,
            warmup_rounds=1,
            loadavg_before=load_before,
            loadavg_after=[round(x, 2) for x in os.getloadavg()],
            wall_seconds=round(time.perf_counter() - start, 1),
        ),
    }
    atomic_write_text(out / "engine-overhead.json", json.dumps(results, indent=1))
    atomic_write_text(out / "engine-overhead.md", markdown(results))
    print(f"wrote {out / 'engine-overhead.md'} ({results['provenance']['wall_seconds']} s)")


if __name__ == "__main__":
    main()
