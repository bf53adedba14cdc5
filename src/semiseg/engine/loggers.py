"""Experiment trackers beside the run folder's CSV / JSONL logs (``train.logger``).

- ``tensorboard``: event files in ``<run>/tensorboard/`` (``tensorboard --logdir runs/``).
- ``mlflow``: an MLflow run (the tracking URI from ``$MLFLOW_TRACKING_URI``, else a file store in
  ``<run>/mlruns``) with the flattened config as parameters; a resumed semiseg run continues its MLflow
  run (its id is kept in ``<run>/mlflow_run_id``).

Both receive the step log (``step/<loss>``, ``step/lr``), every epoch record (``train/...``,
``val/...``) and, at the end, the figures (learning curves, overlays). The libraries are optional and
imported only when chosen; a missing one is a one-line error before training.
"""

from __future__ import annotations

import importlib
import math
import os
from pathlib import Path
from typing import Any

from semiseg.errors import ConfigError, first_line

__all__ = ["LOGGERS", "Logger", "build_logger"]

LOGGERS = ("none", "tensorboard", "mlflow")


def _scalars(values: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}  # fmt: skip


class Logger:
    """What the trainer calls (no-ops here: ``train.logger: none``, and on processes other than the
    main one)."""

    def scalars(self, values: dict[str, Any], step: int, prefix: str = "") -> None:
        """Log the finite numbers of ``values`` (other entries are skipped) at ``step``."""

    def figure(self, path: Path, step: int) -> None:
        """Log the image file ``path`` (PNG) at ``step``."""

    def close(self, failed: bool = False) -> None:
        pass


class TensorBoardLogger(Logger):
    def __init__(self, out: Path, resume: bool):
        self.log_dir, self.resume, self._writer = out / "tensorboard", resume, None

    def writer(self, step: int):
        """The event writer, opened at the first event: a resumed run purges the events from that step
        on (logged after its checkpoint by the interrupted run, and now trained again)."""
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=str(self.log_dir), purge_step=step if self.resume else None)
        return self._writer

    def scalars(self, values: dict[str, Any], step: int, prefix: str = "") -> None:
        for key, value in _scalars(values).items():
            self.writer(step).add_scalar(prefix + key, value, step)

    def figure(self, path: Path, step: int) -> None:
        import numpy as np
        from PIL import Image

        image = np.asarray(Image.open(path).convert("RGB"))
        self.writer(step).add_image(Path(path).stem, image, step, dataformats="HWC")

    def close(self, failed: bool = False) -> None:
        if self._writer is not None:
            self._writer.close()


class MLflowLogger(Logger):
    def __init__(self, out: Path, config: dict[str, Any], resume: bool):
        import mlflow

        self.mlflow = mlflow
        chosen = os.environ.get("MLFLOW_TRACKING_URI") or mlflow.is_tracking_uri_set()
        if not chosen:  # a local file store (MLflow 3 asks to opt in)
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            mlflow.set_tracking_uri((out / "mlruns").resolve().as_uri())
        else:
            uri = str(mlflow.get_tracking_uri())
            if "://" not in uri or uri.startswith("file:"):  # a file store the user chose
                os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            check_reachable(uri)
        id_file = out / "mlflow_run_id"
        run_id = id_file.read_text().strip() if resume and id_file.is_file() else None
        nested = mlflow.active_run() is not None  # inside a user's own run: a child run
        self.run = mlflow.start_run(run_id=run_id, run_name=None if run_id else out.name, nested=nested)
        if run_id is None:
            id_file.write_text(self.run.info.run_id + "\n")
            flat = _flatten(config)
            for start in range(0, len(flat), 100):  # MLflow takes at most 100 parameters per call
                mlflow.log_params(dict(list(flat.items())[start : start + 100]))

    def scalars(self, values: dict[str, Any], step: int, prefix: str = "") -> None:
        clean = {_mlflow_key(prefix + k): v for k, v in _scalars(values).items()}
        if clean:
            self.mlflow.log_metrics(clean, step=step)

    def figure(self, path: Path, step: int) -> None:
        self.mlflow.log_artifact(str(path))

    def close(self, failed: bool = False) -> None:
        self.mlflow.end_run(status="FAILED" if failed else "FINISHED")


def _mlflow_key(key: str) -> str:
    """MLflow keys allow letters, digits and ``_ - . space : /``."""
    return "".join(c if c.isalnum() or c in "_-. :/" else "_" for c in key)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = str(v)[:500]
    return out


def check_logger(kind: str) -> None:
    """A one-line ConfigError when ``train.logger``'s package is missing (call on every process before
    training, so that no process waits for one that failed)."""
    needs = {"none": None, "tensorboard": "tensorboard", "mlflow": "mlflow"}
    if kind not in needs:
        raise ConfigError(f"train.logger: must be one of {', '.join(LOGGERS)}, got {kind!r}")
    if needs[kind] is None:
        return
    try:
        importlib.import_module(needs[kind])
    except ImportError:
        raise ConfigError(
            f"train.logger: {kind} needs the {needs[kind]} package (pip install 'semiseg[loggers]')"
        ) from None


#: seconds to wait for an MLflow server to accept a connection before the run is refused
CONNECT_TIMEOUT = 10.0


def check_reachable(uri: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """An ``http(s)://`` tracking server must accept a TCP connection within ``timeout`` seconds, else
    ``OSError``: MLflow itself retries for minutes before it says anything. Other URIs pass, and so
    does a server reached through an HTTP proxy (``HTTP(S)_PROXY`` without a ``NO_PROXY`` match:
    MLflow's requests go through the proxy, so a direct connection proves nothing)."""
    import socket
    import urllib.request
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    if urllib.request.getproxies().get(parts.scheme) and not urllib.request.proxy_bypass(parts.hostname):
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
        raise OSError(f"the server does not answer at {parts.hostname}:{port}: {reason}") from None


def _without_password(uri: str) -> str:
    """``uri`` for a message: a ``user:password@`` becomes ``user:***@``."""
    from urllib.parse import urlsplit

    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    return uri.replace(f":{parts.password}@", ":***@", 1)


def build_logger(kind: str, out: Path, config: dict[str, Any], resume: bool = False) -> Logger:
    """The logger ``train.logger`` names, for the run folder ``out`` (call on the main process only)."""
    check_logger(kind)
    if kind == "none":
        return Logger()
    if kind == "tensorboard":
        if (out / "tensorboard").exists() and not (out / "tensorboard").is_dir():
            raise ConfigError(
                f"train.logger: tensorboard: {out / 'tensorboard'} is a file, not a folder for its events"
            )
        return TensorBoardLogger(out, resume)
    try:
        return MLflowLogger(out, config, resume)
    except Exception as exc:  # noqa: BLE001 - MLflow's stores raise many types; the user needs one line
        uri = _without_password(os.environ.get("MLFLOW_TRACKING_URI") or "the run folder's mlruns")
        raise ConfigError(
            f"train.logger: mlflow cannot start a run at {uri} ({first_line(exc, 160)})"
        ) from None
