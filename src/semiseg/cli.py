"""Command line: ``semiseg train | evaluate | predict | demo | bench | data``.

Only argparse is imported at start-up so ``semiseg --help`` is instant; each command imports what
it needs. User mistakes (:class:`~semiseg.errors.SemisegError`) print one line and exit non-zero.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import threading
from pathlib import Path


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", required=True, help="YAML recipe (see configs/)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.lr=0.01 (repeatable)",
    )
    p.add_argument("--quick", action="store_true", help="apply the recipe's 'quick' section (CPU-sized run)")
    p.add_argument("--data-root", help="folder holding the datasets (default: $SEMISEG_DATA)")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: a mistake on the command line names the option and what is
    wrong, and points to ``--help`` instead of printing the usage block (exit code 2, as argparse)."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _add_tta(p: argparse.ArgumentParser) -> None:
    """The ``--tta`` option of evaluate and predict."""
    p.add_argument("--tta", choices=["none", "flip"], default=None,
                   help="test-time augmentation: flip = mean logits over every flip of the spatial axes "
                        "(4 network calls per 2D image or slice, 8 per 3D volume or window; default: the run's "
                        "inference.tta)")  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="semiseg", description="Segmentation learning when dense labels are scarce.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a method from a YAML recipe")
    _add_config_args(p)
    p.add_argument("--output", "-o", help="output folder (default: output_dir from the config)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/last.pt")
    p.add_argument(
        "--no-test",
        action="store_true",
        help="score the validation split only at the end (development runs: no test number is computed)",
    )

    p = sub.add_parser("evaluate", help="score a checkpoint on the validation or test split")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--split", choices=["val", "test"], default="test")
    p.add_argument("--data-root")
    p.add_argument(
        "--postprocess",
        choices=["none", "mrf"],
        default="none",
        help="post-processing of probabilities (mrf: Potts MRF; graph cut for 2 classes, ICM otherwise)",
    )
    p.add_argument(
        "--mrf-weight",
        type=float,
        default=None,
        help="MRF pairwise weight (default: tuned on the validation split)",
    )
    p.add_argument(
        "--mrf-contrast-sigma",
        type=float,
        default=None,
        help="contrast-sensitive pairwise weights exp(-dI^2 / 2 sigma^2) (default: plain Potts)",
    )
    p.add_argument("--output", "-o", help="write the metrics JSON here")
    p.add_argument("--device", default="auto")
    _add_tta(p)

    p = sub.add_parser("predict", help="segment a folder of images into PNG masks")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a best.pt / last.pt of semiseg train")
    source.add_argument("--model", help="a model exported by semiseg export (ONNX, run by onnxruntime)")
    p.add_argument("--input", required=True, help="folder of PNG/JPG/TIFF/NPY images or NIfTI volumes")
    p.add_argument("--output", "-o", required=True,
                   help="folder for the masks: PNG (class index per pixel) or .nii.gz (input's affine)")  # fmt: skip
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="a checkpoint's precision: bfloat16 autocast is 1.45-1.76x faster on CPUs with "
                        "bfloat16 instructions (benchmarks/results/speed.md); ONNX models run in float32")  # fmt: skip
    p.add_argument("--threads", type=int, help="intra-op threads (PyTorch or onnxruntime; default: theirs)")
    _add_tta(p)

    p = sub.add_parser("export", help="export a checkpoint's network (ONNX) for fast CPU inference")
    p.add_argument("--checkpoint", required=True, help="the trained run's best.pt (or last.pt)")
    p.add_argument("--format", choices=["onnx"], default="onnx", help="the exported format (default: onnx)")
    p.add_argument("--output", "-o", required=True, help="the model file to write, ending in .onnx")

    p = sub.add_parser("demo", help="train on built-in generated data, print a comparison, write plots")
    p.add_argument(
        "--output", "-o", default="runs/demo", help="folder of the runs, table and plots (default: runs/demo)"
    )
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default: 30)")

    p = sub.add_parser(
        "bench",
        help="run a benchmark table and write benchmarks/results/<table>.json",
        description="Run a benchmark table and write its results. Several processes may run the same "
        "table at once: each trains the runs the others do not hold; one that ends with runs held by "
        "another process lists them, writes no results and exits with code 75 (run it again later). "
        "With --status, only list the state of each run of the table in the run cache (done, running, "
        "partial, pending, or what it waits for) and the hours recorded, without training or loading "
        "data.",
    )
    p.add_argument("table", help="table name (see 'semiseg bench list')")
    p.add_argument("--quick", action="store_true", help="CPU-sized protocol")
    p.add_argument("--data-root")
    p.add_argument("--results-dir", default="benchmarks/results")
    p.add_argument("--work-dir", default="runs/bench")
    p.add_argument(
        "--ledger",
        default=os.environ.get("SEMISEG_BENCH_LEDGER"),
        help="folder that also keeps every finished run's record (no checkpoint), e.g. one committed "
        "to the repository, so that a new checkout does not train those runs again (default: "
        "$SEMISEG_BENCH_LEDGER, else none)",
    )
    p.add_argument("--seeds", type=int, nargs="+", help="override the protocol's seeds / draws")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value in every run (recorded in the results' provenance)",
    )
    p.add_argument(
        "--status",
        action="store_true",
        help="show which runs of the table are done, running, partial (resumable) or pending in the "
        "run cache (same --quick/--work-dir/--seeds/--set as the run); trains nothing, shows no test metric",
    )

    p = sub.add_parser("data", help="inspect a dataset, write its split, or generate a dataset")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (("check", "a recipe's split counts, image sizes, class balance and channel statistics"),
                         ("split", "write a recipe's split as JSON")):  # fmt: skip
        a = actions.add_parser(action, help=text)
        _add_config_args(a)
        a.add_argument("--output", "-o", help="JSON file to write (split: the split; check: the statistics)")
    a = actions.add_parser(
        "generate", help="write a generated dataset as a folder dataset (PNG images and masks)"
    )
    a.add_argument("dataset", choices=["cluttered-mnist"])
    a.add_argument("--variant", default="48-hard", choices=["48-simple", "48-hard", "128"])
    a.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the generated images (default 0; the digit folds are fixed)",
    )
    a.add_argument("--output", "-o", required=True, help="folder to create (must not exist)")
    a.add_argument(
        "--data-root", help="folder holding the datasets (default: $SEMISEG_DATA); reads its mnist/"
    )
    return parser


def _load_cfg(args):
    from semiseg.config import build_config, load_yaml
    from semiseg.errors import ConfigError

    raw = load_yaml(args.config)
    if getattr(args, "quick", False) and "quick" not in raw:  # `quick: {}` = already CPU-sized
        raise ConfigError(f"--quick: {args.config} has no quick section (nothing to apply)")
    return build_config(raw, args.overrides, quick=args.quick, source=args.config)


def cmd_train(args) -> int:
    from semiseg.engine.run import train

    cfg = _load_cfg(args)
    results = train(
        cfg, data_root=args.data_root, output_dir=args.output, resume=args.resume, test=not args.no_test
    )
    if results:
        out = Path(args.output or cfg.output_dir)
        key = cfg.train.val_metric
        msg = [
            f"done: {out}/ (best val {key} = {results['best']['value']:.4f} at epoch {results['best']['epoch']})"
            if results["best"]["value"] is not None
            else f"done: {out}/"
        ]
        if "test" in results:
            msg.append(f"test {key} = {results['test'].get(key, float('nan')):.4f}")
        print("; ".join(msg))
    return 0


def cmd_evaluate(args) -> int:
    from semiseg.config import with_tta
    from semiseg.data import prepare_data
    from semiseg.engine.distributed import resolve_device
    from semiseg.engine.run import check_recorded_split, evaluate_trained, load_trained, split_records
    from semiseg.errors import ConfigError
    from semiseg.io import atomic_write_text, check_file_target, strict_json
    from semiseg.metrics import undefined_counts

    if args.output:  # before the evaluation: a path it cannot write to fails first
        check_file_target(args.output)
    device = resolve_device(args.device, where="--device")
    method, cfg, state = load_trained(args.checkpoint, device)
    if args.tta is not None:
        cfg = with_tta(cfg, args.tta)
    data = prepare_data(cfg, args.data_root)
    split_records(data, args.split)  # an empty split fails before any tuning
    read = {args.split, "val"} if args.postprocess == "mrf" else {args.split}  # the MRF tunes on val
    if not check_recorded_split(data, sorted(read), args.checkpoint):
        print(f"note: no split.json beside {args.checkpoint}: the {args.split} split is drawn again from the "
              "data and the run's config", file=sys.stderr)  # fmt: skip
    postprocess, post_info = None, None
    if data.bundle.task == "classify" and args.postprocess != "none":
        raise ConfigError(
            f"--postprocess {args.postprocess}: applies to segmentations, not to classification"
        )
    if data.bundle.task == "classify" and cfg.inference.tta != "none":
        raise ConfigError(f"--tta {cfg.inference.tta}: applies to segmentations, not to classification")
    if data.bundle.task != "classify":
        postprocess, post_info = build_postprocess(args, method, cfg, data, device, state)
    means, cases, records = evaluate_trained(method, cfg, state, data, args.split, device, postprocess)
    undefined = undefined_counts(cases)
    result = {
        "checkpoint": str(args.checkpoint),
        "split": args.split,
        "postprocess": post_info,
        "tta": cfg.inference.tta,
        "n": len(records),
        "metrics": means,
        "undefined": undefined,  # per metric: the cases its mean leaves out (nan, e.g. HD95 of a missed class)
        "cases": cases,
    }
    if args.output:
        atomic_write_text(args.output, strict_json(result, indent=1))
    width = max(len(k) for k in means)
    for k, v in means.items():
        left = f"  (over {len(records) - undefined[k]} of {len(records)} cases)" if undefined.get(k) else ""
        print(f"{k:<{width}}  {v:.4f}{left}")
    return 0


def _note_threshold_tta(decision: dict, cfg) -> None:
    """A note when the stored validation threshold was chosen under another ``inference.tta``."""
    chosen = decision.get("tta", "none")  # thresholds stored before TTA existed: chosen without it
    if chosen != cfg.inference.tta:
        print(f"note: the stored threshold {decision['threshold']:g} was chosen on validation with tta {chosen}; "
              f"this run applies it with tta {cfg.inference.tta}", file=sys.stderr)  # fmt: skip


def build_postprocess(args, method, cfg, data, device, state=None):
    """The ``--postprocess`` callable and a description of it (with the MRF weight tuning, if any); with
    none, the threshold stored in the checkpoint (``train.threshold: val``), if any."""
    info = {"name": args.postprocess}
    if args.postprocess != "mrf":
        if args.mrf_weight is not None or args.mrf_contrast_sigma is not None:
            from semiseg.errors import ConfigError

            raise ConfigError("--mrf-weight / --mrf-contrast-sigma: apply with --postprocess mrf")
        decision = (state or {}).get("decision")
        if decision is None:
            return None, info
        _note_threshold_tta(decision, cfg)
        from semiseg.engine.decision import ThresholdPostprocess

        return ThresholdPostprocess(decision["threshold"]), {"name": "threshold", **decision}
    from semiseg.errors import ConfigError
    from semiseg.postprocess import MRFPostprocess

    if args.mrf_weight is not None and not (math.isfinite(args.mrf_weight) and args.mrf_weight >= 0):
        raise ConfigError(f"--mrf-weight: must be a finite number >= 0, got {args.mrf_weight}")
    if args.mrf_contrast_sigma is not None and not (
        math.isfinite(args.mrf_contrast_sigma) and args.mrf_contrast_sigma > 0
    ):
        raise ConfigError(f"--mrf-contrast-sigma: must be > 0, got {args.mrf_contrast_sigma}")
    weight = args.mrf_weight
    if weight is None:  # chosen on the validation split only, never on test
        from semiseg.engine.evaluate import tune_mrf_on_validation
        from semiseg.engine.inference import build_predict

        if args.split == "val":
            raise ConfigError(
                "--mrf-weight: required with --split val (the weight is tuned on the validation split)"
            )
        val = data.val
        weight, table = tune_mrf_on_validation(
            build_predict(method.predict, cfg), val, cfg.data.image_size, device,
            contrast_sigma=args.mrf_contrast_sigma,
        )  # fmt: skip
        info["tuning"] = {"split": "val", "metric": "pixel_error", "n": len(val), "table": table}
        print(f"mrf weight {weight:g} (tuned on {len(val)} validation cases)", file=sys.stderr)
    info.update(weight=weight, contrast_sigma=args.mrf_contrast_sigma)
    decision = (state or {}).get("decision")
    if decision is not None:  # the MRF decides on the probabilities: the stored threshold is not used
        info["replaces_threshold"] = decision["threshold"]
        print(f"note: the MRF replaces the run's validation-chosen threshold {decision['threshold']:g} "
              "(train.threshold: val)", file=sys.stderr)  # fmt: skip
    return MRFPostprocess(weight, contrast_sigma=args.mrf_contrast_sigma), info


def cmd_predict(args) -> int:
    from semiseg.api import Model
    from semiseg.config import with_tta
    from semiseg.engine.predict import CLASSES_FILE, is_classifier, predict_folder
    from semiseg.errors import ConfigError

    path = args.model or args.checkpoint
    is_onnx = Path(path).suffix.lower() == ".onnx"
    if args.model and not is_onnx:
        raise ConfigError(f"--model: {path} is not an .onnx file (a checkpoint goes to --checkpoint)")
    if args.checkpoint and is_onnx:
        raise ConfigError(f"--checkpoint: {path} is an ONNX model (give it to --model)")
    model = Model(path, args.device, args.dtype, args.threads)  # .onnx or a checkpoint
    classify = is_classifier(model.network, model.state, model.device)
    cfg = model.cfg
    if args.tta is not None:
        if classify and args.tta != "none":
            raise ConfigError(f"--tta {args.tta}: applies to segmentations, not to classification")
        cfg = with_tta(cfg, args.tta)
    if model.state.get("decision") and not classify:
        _note_threshold_tta(model.state["decision"], cfg)
    n = predict_folder(
        model.network, model.state, args.input, args.output, model.device, cfg, classify=classify
    )
    if classify:
        print(f"wrote the classes of {n} images to {Path(args.output) / CLASSES_FILE}")
    else:
        print(f"wrote {n} mask{'' if n == 1 else 's'} to {args.output}")
    return 0


def cmd_export(args) -> int:
    from semiseg.engine.export import export_onnx

    check = export_onnx(args.checkpoint, args.output)
    print(f"wrote {args.output} (onnxruntime vs PyTorch: max |difference| {check['max_abs_diff']:.1e})")
    return 0


def cmd_demo(args) -> int:
    from semiseg.demo import run_demo
    from semiseg.errors import ConfigError

    if args.epochs is not None and args.epochs < 1:
        raise ConfigError(f"--epochs: must be at least 1, got {args.epochs}")

    run_demo(args.output, epochs=args.epochs)
    return 0


def cmd_bench(args) -> int:
    from semiseg.bench import TABLES, TablePending, run_table
    from semiseg.errors import ConfigError

    if args.seeds and min(args.seeds) < 0:
        raise ConfigError(f"--seeds: must be 0 or more, got {min(args.seeds)}")

    if args.table == "list":
        for name in sorted(TABLES):
            print(f"{name:<24} {TABLES[name]().title}")
        return 0
    for option, folder in (("--work-dir", args.work_dir), ("--ledger", args.ledger)):
        if folder is not None and Path(folder).exists() and not Path(folder).is_dir():
            raise ConfigError(f"{option} {folder}: is a file, not a folder")
    if args.status:
        from semiseg.bench.provenance import source_hash
        from semiseg.bench.status import format_status, table_status

        source = source_hash()  # the runs a bench call of the current code would find or train
        entries = table_status(args.table, quick=args.quick, work_dir=args.work_dir, seeds=args.seeds,
                               overrides=args.overrides, source=source, ledger=args.ledger)  # fmt: skip
        mode = "quick" if args.quick else "full"
        if args.ledger is not None and not Path(args.ledger).is_dir():
            print(
                f"note: --ledger {args.ledger}: no such folder (no finished run is read from it)",
                file=sys.stderr,
            )
        print(f"{args.table} ({mode}): runs of training code {source} in {Path(args.work_dir) / 'cache'}\n")
        print(format_status(entries))
        return 0
    try:
        run_table(
            args.table,
            quick=args.quick,
            data_root=args.data_root,
            results_dir=args.results_dir,
            work_dir=args.work_dir,
            seeds=args.seeds,
            overrides=args.overrides,
            ledger=args.ledger,
        )
    except TablePending as exc:  # not an error: the runner listed the runs held by other processes
        return exc.exit_code
    return 0


def cmd_data(args) -> int:
    from semiseg.data import load_bundle, run_split
    from semiseg.io import check_file_target, check_folder

    if args.output:  # before loading or generating anything (generate makes a folder, the rest a file)
        if args.action == "generate":
            check_folder(args.output)
        else:
            check_file_target(args.output)
    if args.action == "generate":
        return _generate(args)
    cfg = _load_cfg(args)
    bundle = load_bundle(cfg.data, args.data_root)
    split = run_split(bundle, cfg)  # the ids a run of this config writes
    s = split.summary()
    if args.action == "check":
        from semiseg.data.stats import dataset_stats, format_stats
        from semiseg.io import atomic_write_text

        print(
            f"{bundle.name}: {bundle.num_classes} classes, {bundle.in_channels} channel(s); "
            f"labeled {len(s['labeled'])} ({len(s['labeled_groups'])} groups), unlabeled {len(s['unlabeled'])}, "
            f"val {len(s['val'])}, test {len(s['test'])}"
        )
        parts = {"labeled": split.labeled, "unlabeled": split.unlabeled, "val": split.val, "test": split.test}
        stats = dataset_stats(bundle, parts)
        print("\n".join(format_stats(stats).splitlines()[1:]))
        if args.output:
            atomic_write_text(args.output, json.dumps(stats, indent=1))
            print(f"wrote {args.output}")
    elif args.output:
        split.write(args.output)
        print(f"wrote {args.output}")
    else:
        print(json.dumps(s, indent=1))
    return 0


def _generate(args) -> int:
    """``semiseg data generate cluttered-mnist``: generate (or read from the cache) and export."""
    from semiseg.config import DataConfig
    from semiseg.data import cluttered_mnist as cm
    from semiseg.data import dataset_folder
    from semiseg.errors import ConfigError, DataError

    if Path(args.output).exists():  # before minutes of generation
        raise DataError(args.output, "exists already; choose a new output folder")
    if args.seed < 0:
        raise ConfigError(f"--seed: must be 0 or more, got {args.seed}")
    cfg = DataConfig(dataset="cluttered_mnist", variant=args.variant, generator_seed=args.seed)
    path = dataset_folder(cfg, args.data_root)
    folds, cache = cm.load_variant(path, args.variant, seed=args.seed)
    manifest = json.loads((cache / "manifest.json").read_text())
    out = cm.export_folder(folds, args.output, manifest)
    counts = ", ".join(f"{f} {2 * len(folds[f].present)}" for f in cm.FOLDS)
    print(f"wrote {out}: cluttered MNIST {args.variant} (seed {args.seed}), images per fold: {counts}")
    return 0


COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "export": cmd_export,
    "demo": cmd_demo,
    "bench": cmd_bench,
    "data": cmd_data,
}


def _terminated(signum, frame):
    """SIGTERM (``timeout``, SLURM, torchrun stopping its other workers) as Ctrl-C: the commands'
    clean-up (partial outputs, temporary folders) runs instead of the process vanishing mid-write."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    import signal

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminated) if in_main_thread else None
    try:
        return _run(args)
    finally:
        if in_main_thread:  # (None: a handler not set from Python, i.e. the default)
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def _run(args) -> int:
    from semiseg.errors import SemisegError

    try:
        return COMMANDS[args.command](args)
    except BrokenPipeError:  # the reader went away (| head): quiet, as other command-line tools
        try:  # no second error when Python flushes stdout at exit
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 141
    except SemisegError as exc:  # one line, also when a wrapped library message holds line breaks
        message = re.sub(r"\s*[\r\n]+\s*", " ", str(exc).strip())
        print(f"semiseg {args.command}: error: {message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"semiseg {args.command}: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # the machine refused a named file (permission, a full disk, ...): one line
        if not exc.filename:
            raise
        print(
            f"semiseg {args.command}: error: {exc.filename}: {exc.strerror or type(exc).__name__}",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
