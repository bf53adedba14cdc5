"""The one training loop every method runs on.

Per phase of the method: build its optimizers (and schedulers), then for every epoch draw this
rank's batches of each stream, call ``training_step`` once per optimizer, check the loss is
finite, log, and at the epoch end validate (phases with ``validate``), keep the best checkpoint
(validation split only) and write ``last.pt`` atomically. ``resume`` restarts from ``last.pt``
and reproduces the uninterrupted run exactly on CPU: data order and augmentation are functions of
(seed, epoch, index), and model / optimizer / RNG states are restored.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from semiseg.config import RunConfig, to_dict
from semiseg.data import PreparedData
from semiseg.engine import distributed as D
from semiseg.engine.checkpoint import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from semiseg.engine.evaluate import FAST_METRICS, evaluate_records, metric_keys
from semiseg.engine.io import atomic_write_text
from semiseg.errors import ConfigError, TrainingDiverged
from semiseg.methods.base import Method, Phase

STREAM_IDS = {"labeled": 0, "unlabeled": 1}
#: config keys that may change between an interrupted run and its resumption
RESUMABLE_CHANGES = ("train.progress", "train.plots", "train.num_workers", "quick")


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def build_optimizer(cfg: RunConfig, params, lr: float) -> torch.optim.Optimizer:
    t = cfg.train
    params = [p for p in params if p.requires_grad]
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=t.momentum, weight_decay=t.weight_decay)
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=lr, weight_decay=t.weight_decay)


def build_scheduler(kind: str, optimizer: torch.optim.Optimizer, total_iters: int):
    if kind == "cosine":
        factor = lambda i: 0.5 * (1 + math.cos(math.pi * min(i, total_iters) / total_iters))  # noqa: E731
    elif kind == "poly":
        factor = lambda i: (1 - min(i, total_iters) / total_iters) ** 0.9  # noqa: E731
    else:
        factor = lambda i: 1.0  # noqa: E731
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class Trainer:
    """Runs ``method`` on ``data`` as ``cfg`` says, writing everything under ``output_dir``."""

    def __init__(
        self,
        cfg: RunConfig,
        method: Method,
        data: PreparedData,
        output_dir: str | Path,
        *,
        info: D.DistInfo | None = None,
        device: torch.device | None = None,
        resume: bool = False,
    ):
        self.cfg = cfg
        self.info = info or D.DistInfo()
        self.device = device or torch.device("cpu")
        self.data = data
        self.out = Path(output_dir)
        self.resume = resume
        self.method = method.to(self.device)
        self.phases = method.phases()
        self.num_classes = data.bundle.num_classes
        valid = metric_keys(self.num_classes, FAST_METRICS)
        if cfg.train.val_metric not in valid:
            raise ConfigError(f"train.val_metric: '{cfg.train.val_metric}' is not one of {', '.join(valid)}")
        for ph in self.phases:
            if "unlabeled" in self.streams(ph) and data.unlabeled is None:
                raise ConfigError(
                    f"method '{cfg.method['name']}' needs unlabeled data but data.split leaves none"
                )
        self.model = method
        if self.info.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DDP(
                method,
                device_ids=ids,
                find_unused_parameters=len(self.phases) > 1
                or any(len(p.optimizers) > 1 for p in self.phases),
            )
        self.amp = cfg.train.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda") if self.amp else None
        # run state (saved in last.pt)
        self.phase_index = 0
        self.epoch = 0  # completed epochs of the current phase
        self.global_step = 0
        self.best: dict[str, Any] = {"value": None, "epoch": None, "phase": None}
        self.phase_best: dict[str, Any] = {"value": None, "epoch": None, "phase": None}  # current phase
        self.history: list[dict[str, Any]] = []
        self.train_seconds = 0.0
        self.images_seen = 0

    # ------------------------------------------------------------------------------------- utils
    @property
    def main(self) -> bool:
        return self.info.is_main

    def iters_per_epoch(self) -> int:
        if self.cfg.train.iters_per_epoch:
            return self.cfg.train.iters_per_epoch
        return max(1, math.ceil(len(self.data.labeled) / self.cfg.train.batch_size))

    def streams(self, phase: Phase) -> tuple[str, ...]:
        """The phase's streams plus the optional ones the data has."""
        available = {"labeled": True, "unlabeled": self.data.unlabeled is not None}
        return tuple(phase.streams) + tuple(s for s in phase.optional_streams if available.get(s))

    def phase_epochs(self, phase: Phase) -> int:
        return phase.epochs if phase.epochs is not None else self.cfg.train.epochs

    def _loader(self, stream: str, epoch: int, iters: int) -> DataLoader:
        ds = self.data.labeled if stream == "labeled" else self.data.unlabeled
        ds.set_epoch(epoch + 1000 * self.phase_index)
        batches = D.epoch_batches(
            len(ds),
            self.cfg.train.batch_size,
            iters,
            seed=self.cfg.train.seed,
            epoch=epoch + 1000 * self.phase_index,
            stream=STREAM_IDS[stream],
            info=self.info,
        )
        return DataLoader(ds, batch_sampler=batches, num_workers=self.cfg.train.num_workers)

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _build_optimizers(self, phase: Phase):
        lr = phase.lr if phase.lr is not None else self.cfg.train.lr
        total = self.phase_epochs(phase) * self.iters_per_epoch()
        opts, scheds = {}, {}
        for name in phase.optimizers:
            opts[name] = build_optimizer(self.cfg, self.method.parameters_for(phase.name, name), lr)
            scheds[name] = build_scheduler(self.cfg.train.scheduler, opts[name], total)
        return opts, scheds

    # ------------------------------------------------------------------------------- checkpoints
    def _state(self, opts, scheds) -> dict[str, Any]:
        return {
            "config": to_dict(self.cfg),
            "method_state": self.method.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in opts.items()},
            "schedulers": {k: s.state_dict() for k, s in scheds.items()},
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "phase_index": self.phase_index,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "best": self.best,
            "phase_best": self.phase_best,
            "history": self.history,
            "train_seconds": self.train_seconds,
            "images_seen": self.images_seen,
            "rng": rng_state(),
            **self.meta(),
        }

    def meta(self) -> dict[str, Any]:
        b = self.data.bundle
        return {
            "num_classes": b.num_classes,
            "in_channels": b.in_channels,
            "class_names": b.class_names,
            "image_size": list(self.cfg.data.image_size),
            "dataset": b.name,
        }

    def _check_resume_config(self, saved: dict[str, Any]) -> None:
        now, then = _flatten(to_dict(self.cfg)), _flatten(saved)
        for key in sorted(set(now) | set(then)):
            if key.startswith(RESUMABLE_CHANGES) or key == "train.epochs":
                continue
            if now.get(key) != then.get(key):
                raise ConfigError(
                    f"--resume: config differs from the checkpoint at '{key}' ({then.get(key)!r} → {now.get(key)!r})"
                )

    def _restore(self) -> dict[str, Any] | None:
        path = self.out / "last.pt"
        if not path.is_file():
            raise ConfigError(f"--resume: no checkpoint at {path}")
        state = load_checkpoint(path, self.device)
        self._check_resume_config(state["config"])
        self.method.load_state_dict(state["method_state"])
        self.phase_index, self.epoch, self.global_step = (
            state["phase_index"],
            state["epoch"],
            state["global_step"],
        )
        self.best, self.history = state["best"], state["history"]
        self.phase_best = state.get("phase_best", self.phase_best)
        self.train_seconds, self.images_seen = state["train_seconds"], state["images_seen"]
        if self.scaler and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self._truncate_step_log()
        return state

    def _truncate_step_log(self) -> None:
        path = self.out / "steps.jsonl"
        if not (self.main and path.is_file()):
            return
        keep = [
            ln for ln in path.read_text().splitlines() if ln and json.loads(ln)["step"] <= self.global_step
        ]
        atomic_write_text(path, "".join(ln + "\n" for ln in keep))

    # ------------------------------------------------------------------------------------ logging
    def _log_step(self, record: dict[str, Any]) -> None:
        if self.main:
            with open(self.out / "steps.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")

    def _write_epoch_logs(self) -> None:
        if not self.main:
            return
        atomic_write_text(self.out / "epochs.jsonl", "".join(json.dumps(h) + "\n" for h in self.history))
        keys: list[str] = []
        for h in self.history:
            keys += [k for k in h if k not in keys]
        rows = [",".join(keys)] + [
            ",".join("" if h.get(k) is None else str(h.get(k, "")) for k in keys) for h in self.history
        ]
        atomic_write_text(self.out / "epochs.csv", "\n".join(rows) + "\n")

    # ---------------------------------------------------------------------------------- training
    def validate(self, phase: Phase | None = None) -> dict[str, float]:
        self.method.eval()
        if phase is not None:
            own = self.method.validation_metrics(
                phase.name, self.data.val, self.cfg.data.image_size, self.device
            )
            if own is not None:
                self.method.train()
                return own
        means, _ = evaluate_records(
            self.method.predict,
            self.data.val,
            num_classes=self.num_classes,
            image_size=self.cfg.data.image_size,
            device=self.device,
            metrics=FAST_METRICS,
        )
        self.method.train()
        return means

    def _is_better(self, value: float, best: dict[str, Any] | None = None, mode: str | None = None) -> bool:
        best = self.best if best is None else best
        mode = mode or self.cfg.train.val_mode
        if best["value"] is None or math.isnan(best["value"]):
            return not math.isnan(value)
        return value > best["value"] if mode == "max" else value < best["value"]

    def _phase_metric(self, phase: Phase, val: dict[str, float]) -> float:
        key = phase.val_metric or self.cfg.train.val_metric
        if key not in val:
            raise ConfigError(
                f"phase '{phase.name}': validation metric '{key}' is not one of {', '.join(sorted(val))}"
            )
        return val[key]

    def _phase_best_path(self, phase: Phase) -> Path:
        return self.out / f"best_{phase.name}.pt"

    def _restore_phase_best(self, phase: Phase) -> None:
        """End of a ``restore_best`` phase: continue from the state of its best validation."""
        D.barrier(self.info)
        path = self._phase_best_path(phase)
        if phase.restore_best and phase.validate and path.is_file():
            self.method.load_state_dict(load_checkpoint(path, self.device)["method_state"])

    def _step(self, batch: dict, phase: Phase, opts, scheds) -> dict[str, float]:
        values: dict[str, torch.Tensor] = {}
        for name in phase.optimizers:
            opt = opts[name]
            opt.zero_grad(set_to_none=True)
            with torch.autocast(self.device.type, enabled=self.amp):
                out = self.model(batch, phase.name, name)
            loss = out["loss"]
            if self.scaler:
                self.scaler.scale(loss).backward()
                if self.cfg.train.grad_clip:
                    self.scaler.unscale_(opt)
            else:
                loss.backward()
            if self.cfg.train.grad_clip:
                torch.nn.utils.clip_grad_norm_(
                    self.method.parameters_for(phase.name, name), self.cfg.train.grad_clip
                )
            if self.scaler:
                self.scaler.step(opt)
            else:
                opt.step()
            scheds[name].step()
            prefix = "" if len(phase.optimizers) == 1 else f"{name}/"
            for k, v in out.items():
                values[prefix + k] = v.detach().float() if torch.is_tensor(v) else torch.tensor(float(v))
        if self.scaler:
            self.scaler.update()
        keys = sorted(values)
        stacked = D.all_reduce_mean(torch.stack([values[k].cpu().reshape(()) for k in keys]), self.info)
        return dict(zip(keys, stacked.tolist()))

    def fit(self) -> dict[str, Any]:
        """Train all phases; returns the final history record. Raises TrainingDiverged on NaN/inf."""
        seed_everything(self.cfg.train.seed)
        self.out.mkdir(parents=True, exist_ok=True)
        saved = self._restore() if self.resume else None
        if not self.resume and self.main:
            # a fresh run must not leave an earlier run's checkpoints or results next to its own logs
            for name in ("steps.jsonl", "epochs.jsonl", "epochs.csv", "last.pt", "best.pt", "metrics.json"):
                (self.out / name).unlink(missing_ok=True)
            for old in self.out.glob("best_*.pt"):
                old.unlink()
        from tqdm.auto import tqdm

        iters = self.iters_per_epoch()
        self.method.train()
        while self.phase_index < len(self.phases):
            phase = self.phases[self.phase_index]
            opts, scheds = self._build_optimizers(phase)
            if saved is not None:
                for k in opts:
                    opts[k].load_state_dict(saved["optimizers"][k])
                    scheds[k].load_state_dict(saved["schedulers"][k])
                saved = None
            n_epochs = self.phase_epochs(phase)
            bar = tqdm(
                total=n_epochs * iters,
                initial=self.epoch * iters,
                desc=phase.name,
                dynamic_ncols=True,
                disable=not (self.main and self.cfg.train.progress),
                leave=False,
            )
            while self.epoch < n_epochs:
                self._train_epoch(phase, opts, scheds, iters, bar)
            bar.close()
            self._restore_phase_best(phase)
            self.phase_index += 1
            self.epoch = 0
            self.phase_best = {"value": None, "epoch": None, "phase": None}
        return self.history[-1] if self.history else {}

    def _train_epoch(self, phase: Phase, opts, scheds, iters: int, bar) -> None:
        t0 = time.perf_counter()
        streams = self.streams(phase)
        loaders = [self._loader(s, self.epoch, iters) for s in streams]
        sums: dict[str, float] = {}
        for batches in zip(*loaders):
            batch = {s: self._to_device(b) for s, b in zip(streams, batches)}
            self.method.global_step = self.global_step
            values = self._step(batch, phase, opts, scheds)
            self.global_step += 1
            self.images_seen += sum(len(b["image"]) for b in batch.values()) * self.info.world_size
            if not all(math.isfinite(v) for v in values.values()):
                bad = {k: v for k, v in values.items() if not math.isfinite(v)}
                where = f"phase '{phase.name}' epoch {self.epoch + 1} step {self.global_step}"
                last = self.out / "last.pt"
                kept = f"last good checkpoint kept at {last}" if last.is_file() else "no checkpoint yet"
                raise TrainingDiverged(f"training stopped: non-finite loss {bad} at {where}; {kept}")
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v
            if self.global_step % self.cfg.train.log_every == 0:
                lr = next(iter(opts.values())).param_groups[0]["lr"]
                self._log_step(
                    {
                        "phase": phase.name,
                        "epoch": self.epoch + 1,
                        "step": self.global_step,
                        "lr": lr,
                        **values,
                    }
                )
            bar.set_postfix(loss=f"{values.get('loss', next(iter(values.values()))):.4f}", refresh=False)
            bar.update(1)
        self.epoch += 1
        self.train_seconds += time.perf_counter() - t0
        record: dict[str, Any] = {"phase": phase.name, "epoch": self.epoch, "step": self.global_step}
        record.update({f"train/{k}": v / iters for k, v in sums.items()})
        improved = False
        n_epochs = self.phase_epochs(phase)
        phase_improved = False
        if phase.validate and (self.epoch % self.cfg.train.val_every == 0 or self.epoch == n_epochs):
            if self.main:
                val = self.validate(phase)
                record.update({f"val/{k}": v for k, v in val.items()})
                value = self._phase_metric(phase, val)
                if phase.restore_best:
                    phase_improved = self._is_better(value, self.phase_best, phase.val_mode)
                    if phase_improved:
                        self.phase_best = {"value": value, "epoch": self.epoch, "phase": phase.name}
                if phase.final:
                    improved = self._is_better(value)
                    if improved:
                        self.best = {"value": value, "epoch": self.epoch, "phase": phase.name}
            improved = D.broadcast_flag(improved, self.info)
            phase_improved = D.broadcast_flag(phase_improved, self.info)
        record["seconds"] = round(time.perf_counter() - t0, 3)
        self.history.append(record)
        if self.main:
            if phase_improved:
                save_checkpoint({"method_state": self.method.state_dict(), "best": self.phase_best},
                                self._phase_best_path(phase))  # fmt: skip
            if improved:
                save_checkpoint(
                    {
                        "config": to_dict(self.cfg),
                        "method_state": self.method.state_dict(),
                        "best": self.best,
                        **self.meta(),
                    },
                    self.out / "best.pt",
                )
            save_checkpoint(self._state(opts, scheds), self.out / "last.pt")
            self._write_epoch_logs()
        D.barrier(self.info)
