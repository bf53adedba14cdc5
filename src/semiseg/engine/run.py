"""High-level entry points used by the CLI, the demo and the benchmarks."""

from __future__ import annotations

import dataclasses
import json
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semiseg.config import RunConfig, build_config, to_dict
from semiseg.engine import distributed as D
from semiseg.engine.checkpoint import load_checkpoint, save_checkpoint, seed_everything
from semiseg.engine.decision import ThresholdPostprocess
from semiseg.engine.evaluate import ALL_METRICS, FAST_METRICS, evaluate_split, predict_records
from semiseg.engine.inference import build_predict
from semiseg.engine.loggers import Logger, build_logger, check_logger
from semiseg.errors import ConfigError, DataError, SemisegError, first_line
from semiseg.io import atomic_write_text, check_folder, make_folder, strict_json
from semiseg.metrics import undefined_counts


def peak_memory_mib() -> float:
    """Peak resident memory of this process so far (MiB)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024


def build_method_for(cfg: RunConfig, in_channels: int, num_classes: int):
    from semiseg.methods import build_method

    return build_method(
        cfg.method,
        cfg.model,
        in_channels=in_channels,
        num_classes=num_classes,
        image_size=cfg.data.image_size,
    )


def check_model_output(method, cfg: RunConfig, in_channels: int, num_classes: int, task: str) -> None:
    """One forward pass of one input of the training size (3D: the patch), in eval mode, before any
    training: a model that cannot take it, or gives a map to a classification task (or a class vector to
    a segmentation task), is a one-line config error naming ``model.name``, not a crash mid-run."""
    if task not in method.tasks:
        return  # the trainer says that the method does not do this task
    size = list(cfg.data.patch_size if cfg.model.spatial_dims == 3 else cfg.data.image_size)
    want = [1, num_classes] if task == "classify" else [1, num_classes, *size]
    shown = f"[1, {in_channels}, {', '.join(map(str, size))}]"
    was_training = method.training
    method.eval()
    try:
        with torch.no_grad():
            got = list(method.predict(torch.zeros(1, in_channels, *size)).shape)
    except (RuntimeError, ValueError, TypeError) as exc:
        first = first_line(exc, 160)
        raise ConfigError(
            f"model.name: '{cfg.model.name}' cannot take a {shown} input for method '{cfg.method['name']}' ({first})"
        ) from None
    finally:
        method.train(was_training)
    if got != want:
        kind = "one class per image" if task == "classify" else "a class map per image"
        raise ConfigError(
            f"model.name: '{cfg.model.name}' gives outputs {got} for a {shown} input; the {task} task needs "
            f"{want} ({kind})"
        )


def init_segmenter(method, path: str | Path) -> None:
    """Copy the segmenter weights (``model.*``) of checkpoint ``path`` into ``method``.

    Only the segmenter is taken: the checkpoint may come from any method (e.g. a supervised run) and
    the method's other parts (regressor, teacher, heads) keep their fresh initialisation.
    """
    state = load_checkpoint(path, "cpu")["method_state"]
    weights = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    try:
        method.model.load_state_dict(weights)
    except RuntimeError:
        raise ConfigError(
            f"train.init: {path}: its segmenter does not fit this run's model (model.* or data classes differ)"
        ) from None


def train(
    cfg: RunConfig,
    *,
    data_root: str | None = None,
    output_dir: str | Path | None = None,
    resume: bool = False,
    bundle=None,
    final_eval: bool = True,
    test: bool = True,
) -> dict[str, Any]:
    """Train ``cfg``; evaluate the best (validation-selected) model on val and test; write results.
    ``test=False`` leaves the test split out of every score and plot (development on validation).

    Returns the metrics dict written to ``metrics.json`` (rank 0; other ranks get ``{}``).
    """
    from semiseg.data import prepare_data
    from semiseg.engine.trainer import Trainer

    out = Path(output_dir or cfg.output_dir)
    if torch.get_default_dtype() != torch.float32:  # networks and data would disagree mid-step
        raise ConfigError(
            f"training runs in float32, and this process's default dtype is {torch.get_default_dtype()} "
            "(torch.set_default_dtype(torch.float32) before training; mixed precision on GPUs: train.amp)"
        )
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: the output folder is a file")
    check_folder(out)  # a parent that is a file, or not writable: before any work
    if resume and not (out / "last.pt").is_file():  # before any folder or file is made
        raise ConfigError(f"--resume: no checkpoint at {out / 'last.pt'}")
    check_logger(cfg.train.logger)  # on every process, before any of them starts
    info, device = D.setup(cfg.train.device)
    logger = Logger()  # train.logger's tracker on the main process (built once the folder exists)
    failed, created, started, remove = True, info.is_main and not out.exists(), False, False
    try:
        with D.main_first(info):  # rank 0 builds the on-disk store's entries, the others read them
            data = prepare_data(cfg, data_root, bundle=bundle)  # validates all data before any training
        if resume:
            check_resumed_split(data.split, out)
        if info.is_main:
            note_mixed_spacing(cfg, data.bundle.train)
        if not test:
            data = dataclasses.replace(data, test=[])
        if cfg.train.threshold == "val" and (data.bundle.num_classes != 2 or data.bundle.task != "segment"):
            raise ConfigError("train.threshold: val applies to binary segmentation (2 classes)")
        seed_everything(cfg.train.seed)
        method = build_method_for(cfg, data.bundle.in_channels, data.bundle.num_classes)
        check_model_output(method, cfg, data.bundle.in_channels, data.bundle.num_classes, data.bundle.task)
        if cfg.train.init and not resume:
            init_segmenter(method, cfg.train.init)
        if info.is_main:
            make_folder(out)
        trainer = Trainer(cfg, method, data, out, info=info, device=device, resume=resume, logger=logger)
        started = True

        def record() -> None:  # the run's record, once a resume has been accepted (fit's checks)
            nonlocal logger
            if info.is_main:  # the logger first: one that cannot start leaves a previous run's record whole
                logger = trainer.logger = build_logger(cfg.train.logger, out, to_dict(cfg), resume)
                if not resume and cfg.train.logger != "mlflow":  # a later --resume with mlflow must not
                    (out / "mlflow_run_id").unlink(missing_ok=True)  # continue a replaced run's MLflow run
                data.split.write(out / "split.json")
                atomic_write_text(out / "config.json", json.dumps(to_dict(cfg), indent=1))

        start = time.perf_counter()
        trainer.fit(on_start=record)
        wall = time.perf_counter() - start
        if not info.is_main:
            failed = False
            return {}  # (after rank 0's final evaluation: see the finally below)
        results: dict[str, Any] = {
            "best": trainer.best,
            "train_seconds": round(trainer.train_seconds, 2),
            "wall_seconds": round(wall, 2),
            "images_per_second": round(trainer.images_seen / max(trainer.train_seconds, 1e-9), 2),
            "peak_memory_mib": round(peak_memory_mib(), 1),
            "labeled": len(data.split.labeled),
            "unlabeled": len(data.split.unlabeled),
        }
        if final_eval and cfg.train.eval_last:
            # the model as training left it (last.pt), beside the validation-selected one below
            last_decision, postprocess = None, None
            if cfg.train.threshold == "val":  # the last state gets its own threshold (not stored)
                last_decision = choose_threshold(method, data, cfg, device, None)
                postprocess = ThresholdPostprocess(last_decision["threshold"])
            scores = _score(method, data, cfg, device, FAST_METRICS, postprocess)
            results["last"] = {name: means for name, (means, _) in scores.items()}
            if last_decision is not None:
                results["last"]["decision"] = last_decision
        if final_eval:
            best_path = out / "best.pt"
            if best_path.is_file():
                method.load_state_dict(load_checkpoint(best_path, device)["method_state"])
            decision = None
            if cfg.train.threshold == "val":
                decision = choose_threshold(method, data, cfg, device, best_path)
                results["decision"] = decision
            postprocess = ThresholdPostprocess(decision["threshold"]) if decision else None
            for name, (means, cases) in _score(method, data, cfg, device, ALL_METRICS, postprocess).items():
                results[name] = means
                results[f"{name}_cases"] = cases
                results[f"{name}_undefined"] = undefined_counts(cases)  # cases each mean leaves out
            if cfg.train.plots and data.bundle.task == "segment":
                write_plots(
                    trainer.history, method, data.val, cfg, device, out, data.bundle.num_classes, data.test
                )
                for figure in ("learning_curves.png", "overlays.png"):
                    if (out / figure).is_file():
                        logger.figure(out / figure, trainer.global_step)
            for split in ("val", "test"):
                if split in results:
                    logger.scalars(results[split], trainer.global_step, prefix=f"final/{split}/")
        atomic_write_text(out / "metrics.json", strict_json(results, indent=1))
        failed = False
        return results
    except SemisegError:
        # a setup error (one line for the user), also one found once training was set up but before its
        # first step (a phase's data check): leave no folder behind
        stepped = (out / "steps.jsonl").exists() or (out / "last.pt").exists()
        remove = created and (not started or not stepped)
        raise
    finally:
        logger.close(failed)
        # the other ranks wait for rank 0's evaluation and files; a failed rank leaves at once (torchrun
        # then stops the others: waiting here for ranks stuck in a training collective would hang)
        if not failed:
            D.finish(info)
        D.teardown()
        if failed and remove:
            shutil.rmtree(out, ignore_errors=True)


def split_records(data, split: str) -> list:
    """The records of ``split`` ("val" or "test") of prepared ``data``; an empty split is an error."""
    if split not in ("val", "test"):
        raise ConfigError(f"split must be 'val' or 'test', got {split!r}")
    records = data.val if split == "val" else data.test
    if not records:
        raise DataError(None, f"{data.bundle.name}: the {split} split is empty")
    return records


def check_recorded_split(data, splits, checkpoint) -> bool:
    """Whether the run's ``split.json`` beside ``checkpoint`` was found; a DataError naming it when the
    prepared ``data`` now give other cases for any of ``splits`` ("val", "test") than the run
    recorded (a dataset folder that gained or lost cases re-draws the split, and a test split drawn
    again may hold the run's training cases).
    """
    path = Path(checkpoint).parent / "split.json"
    if not path.is_file():
        return False
    recorded = _read_split(path)
    for name in splits:
        now = [r.id for r in (data.val if name == "val" else data.test)]
        _same_split(path, name, recorded, now, "evaluate on the data and config the run was trained with")
    return True


def check_resumed_split(split, out: Path) -> None:
    """``--resume``: a DataError naming ``out/split.json`` when the data now give another split than the
    run recorded (a folder that gained or lost cases re-draws it: the resumed epochs would train on the
    interrupted run's validation or test cases). Runs without a ``split.json`` are not checked."""
    path = out / "split.json"
    if path.is_file():
        recorded, now = _read_split(path), split.summary()
        if json.loads(json.dumps(now["spec"])) != recorded.get("spec"):
            return  # a changed data.split: the trainer's comparison of the configs names the key
        for name in ("labeled", "unlabeled", "val", "test"):
            _same_split(path, name, recorded, now[name], "resume with the data the run was trained on")


def _read_split(path: Path) -> dict:
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(path, f"cannot read the run's split ({type(exc).__name__})") from None
    return recorded if isinstance(recorded, dict) else {}


def _same_split(path: Path, name: str, recorded: dict, now: list[str], advice: str) -> None:
    ids = recorded.get(name)
    if not isinstance(ids, list):
        raise DataError(path, f"has no '{name}' list of case ids")
    if sorted(now) != sorted(ids):
        gone, new = sorted(set(ids) - set(now)), sorted(set(now) - set(ids))
        raise DataError(
            path,
            f"the data now give another {name} split than this run recorded ({len(gone)} of its cases "
            f"missing, {len(new)} new, e.g. '{(gone or new)[0]}'): {advice}",
        )


#: a spacing range (largest / smallest, on some axis) beyond which a 3D run without a target spacing
#: gets a note: the network sees voxels, so one grid for all volumes usually trains better
MIXED_SPACING = 1.25


def note_mixed_spacing(cfg: RunConfig, records) -> str | None:
    """A note on stderr (also returned) when a 3D model trains on volumes whose voxel spacings differ
    by more than :data:`MIXED_SPACING` on an axis and ``data.target_spacing`` is not set."""
    if cfg.model.spatial_dims != 3 or cfg.data.target_spacing is not None:
        return None
    spacings = [r.spacing for r in records if r.spacing is not None]
    if len(spacings) < 2 or len({len(s) for s in spacings}) != 1:
        return None
    low, high = np.min(spacings, 0), np.max(spacings, 0)
    if not (high > MIXED_SPACING * low).any():
        return None
    note = (
        f"note: data: the training volumes' voxel spacings differ ({low.round(3).tolist()} .. "
        f"{high.round(3).tolist()} mm, D H W); the network sees voxels, not millimetres: "
        "data.target_spacing resamples them to one grid (with -1 on those axes of data.image_size)"
    )
    print(note, file=sys.stderr)
    return note


#: metrics of a whole region's shape or area, which a few clicked pixels per image cannot score
SHAPE_METRICS = frozenset({"hd95", "asd", "rad"})


def split_metrics(cfg: RunConfig, split: str, metrics) -> tuple[str, ...]:
    """``metrics`` for ``split``, without HD95, ASD and the relative area difference on a validation
    split that keeps only the clicked pixels (``val_supervision: same`` with sparse supervision):
    their distances and areas would be those of the clicks, not of the region."""
    split_cfg = cfg.data.split
    if split == "val" and split_cfg.val_supervision == "same" and split_cfg.supervision == "sparse":
        return tuple(m for m in metrics if m not in SHAPE_METRICS)
    return tuple(metrics)


def evaluate_trained(method, cfg: RunConfig, state: dict, data, split: str, device, postprocess=None):
    """(means, per-case values, records) of a trained ``method`` on ``split`` ("val" or "test") of its
    prepared ``data``, with every metric (accuracy for classification); ``postprocess`` as
    :func:`~semiseg.engine.evaluate.evaluate_records`."""
    records = split_records(data, split)
    method.eval()
    with torch.no_grad():
        means, cases = evaluate_split(build_predict(method.predict, cfg), records, task=data.bundle.task,
                                      num_classes=state["num_classes"], image_size=cfg.data.image_size,
                                      device=device, metrics=split_metrics(cfg, split, ALL_METRICS),
                                      postprocess=postprocess)  # fmt: skip
    return means, cases, records


def choose_threshold(method, data, cfg: RunConfig, device, best_path: Path | None) -> dict[str, Any]:
    """``train.threshold: val``: the foreground threshold with the best mean validation Jaccard of
    ``method`` (:mod:`semiseg.engine.decision`), kept in ``best_path`` (when given and the run has one)
    as ``"decision"``."""
    from semiseg.engine.decision import tune_threshold

    if data.bundle.num_classes != 2 or data.bundle.task != "segment":
        raise ConfigError("train.threshold: val applies to binary segmentation (2 classes)")
    method.eval()
    with torch.no_grad():
        probs = predict_records(build_predict(method.predict, cfg), data.val, cfg.data.image_size, device)
    threshold, table = tune_threshold(probs, [r.mask for r in data.val])
    decision = {"threshold": threshold, "metric": "jaccard", "split": "val", "n": len(data.val), "tta": cfg.inference.tta,
                "val_jaccard": table[threshold], "val_jaccard_at_0.5": table[0.5]}  # fmt: skip
    if best_path is not None and best_path.is_file():
        state = load_checkpoint(best_path, device)
        state.pop("format", None)
        save_checkpoint({**state, "decision": decision}, best_path)
    return decision


def _score(method, data, cfg: RunConfig, device, metrics, postprocess=None) -> dict[str, tuple[dict, list]]:
    """``{"val" | "test": (means, per-case values)}`` of ``method`` (in eval mode) on the run's splits."""
    method.eval()
    out = {}
    for name, records in (("val", data.val), ("test", data.test)):
        if records:
            out[name] = evaluate_split(
                build_predict(method.predict, cfg),
                records,
                task=data.bundle.task,
                num_classes=data.bundle.num_classes,
                image_size=cfg.data.image_size,
                device=device,
                metrics=split_metrics(cfg, name, metrics),
                postprocess=postprocess,
            )
    return out


def write_plots(
    history, method, records, cfg: RunConfig, device, out: Path, num_classes: int, test=()
) -> None:
    """Learning curves and overlays of the first validation records (with sparse validation labels,
    4 of them and 2 test records, whose dense truth shows what the clicks cannot)."""
    from semiseg.engine import plots

    plots.learning_curves(history, out / "learning_curves.png", cfg.train.val_metric)
    shown = records[:6]
    titles = [r.id for r in shown]
    sparse_val = cfg.data.split.val_supervision == "same" and cfg.data.split.supervision == "sparse"
    if sparse_val and test:  # validation holds a few clicked pixels: add dense test truth to look at
        titles = [r.id for r in shown[:4]] + [f"test {r.id}" for r in test[:2]]
        shown = shown[:4] + list(test[:2])
    probs = predict_records(build_predict(method.predict, cfg), shown, cfg.data.image_size, device)
    items = [(t, *rest) for t, (_, *rest) in zip(titles, plots.overlay_items(shown, probs))]
    plots.overlays(items, out / "overlays.png", num_classes)


def _state_mismatch(method, state: dict, exc: BaseException) -> str:
    """The first difference between ``method``'s parameters and a checkpoint's ``method_state``, for
    a one-line error: a missing or unexpected tensor, or a shape mismatch (else torch's first line)."""
    saved = state.get("method_state")
    if not isinstance(saved, dict):
        return "no weights in the checkpoint"
    own = method.state_dict()
    missing = [k for k in own if k not in saved]
    extra = [k for k in saved if k not in own]
    shaped = [
        k
        for k in own
        if k in saved and hasattr(saved[k], "shape") and tuple(saved[k].shape) != tuple(own[k].shape)
    ]
    if shaped:
        k = shaped[0]
        return f"'{k}' has shape {list(saved[k].shape)} in the checkpoint, {list(own[k].shape)} in the model"
    for names, what in (
        (missing, "'{}' missing from the checkpoint"),
        (extra, "unexpected '{}' in the checkpoint"),
    ):
        if names:
            return what.format(names[0]) + (f" (and {len(names) - 1} more)" if len(names) > 1 else "")
    return first_line(exc)


def load_trained(checkpoint: str | Path, device: torch.device | str = "cpu"):
    """(method in eval mode, config, checkpoint dict) from a ``best.pt`` / ``last.pt``."""
    state = load_checkpoint(checkpoint, device)
    missing = [
        k for k in ("config", "method_state", "in_channels", "num_classes", "image_size") if k not in state
    ]
    if missing:
        raise ConfigError(f"{checkpoint}: not a semiseg model checkpoint (no {', '.join(missing)})")
    cfg = build_config(state["config"], source=str(checkpoint))
    try:
        method = build_method_for(cfg, state["in_channels"], state["num_classes"])
    except ConfigError as exc:  # e.g. a custom method or regulariser this process has not registered
        raise ConfigError(f"{checkpoint}: {exc}") from None
    try:
        method.load_state_dict(state["method_state"])
    except (RuntimeError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"{checkpoint}: its weights do not fit its config's model ({_state_mismatch(method, state, exc)})"
        ) from None
    method.to(device).eval()
    return method, cfg, state
