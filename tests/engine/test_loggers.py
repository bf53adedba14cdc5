"""train.logger: TensorBoard event files and MLflow runs carry the step and epoch logs and the figures;
a resumed run continues its MLflow run; a missing package is a one-line error before training."""

from __future__ import annotations

import copy

import pytest

from semiseg.config import build_config
from semiseg.engine.run import train
from semiseg.errors import ConfigError

RAW = {
    "data": {"dataset": "shapes", "image_size": [32, 32], "num_images": 16, "split": {"labeled": 4}},
    "model": {"name": "unet", "width": 4, "depth": 2},
    "train": {"epochs": 2, "batch_size": 4, "iters_per_epoch": 2, "log_every": 1, "progress": False},
}


def cfg_with(logger: str, **train):
    raw = copy.deepcopy(RAW)
    raw["train"].update(logger=logger, **train)
    return build_config(raw, [], source="test")


def test_tensorboard_gets_steps_epochs_final_metrics_and_figures(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(cfg_with("tensorboard"), output_dir=tmp_path / "run")
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    assert {"step/loss", "step/lr", "train/loss", "val/dice/mean", "final/test/dice/mean"} <= set(
        tags["scalars"]
    )
    assert [e.step for e in events.Scalars("step/loss")] == [1, 2, 3, 4]  # every step (log_every: 1)
    assert [e.step for e in events.Scalars("val/dice/mean")] == [2, 4]  # per epoch, at its last step
    assert {"overlays", "learning_curves"} <= set(tags["images"])


def test_mlflow_run_has_params_metrics_artifacts_and_a_resume_continues_it(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "run"
    train(cfg_with("mlflow"), output_dir=out)
    run_id = (out / "mlflow_run_id").read_text().strip()
    client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    run = client.get_run(run_id)
    assert run.data.params["model.width"] == "4" and run.data.params["train.logger"] == "mlflow"
    assert "val/dice/mean" in run.data.metrics and "final/test/dice/mean" in run.data.metrics
    assert len(client.get_metric_history(run_id, "step/loss")) == 4
    assert {a.path for a in client.list_artifacts(run_id)} >= {"overlays.png", "learning_curves.png"}
    train(cfg_with("mlflow", epochs=3), output_dir=out, resume=True)
    assert (out / "mlflow_run_id").read_text().strip() == run_id
    steps = [m.step for m in client.get_metric_history(run_id, "step/loss")]
    assert steps == [1, 2, 3, 4, 5, 6]  # the same MLflow run, continued
    train(cfg_with("none"), output_dir=out)  # a fresh run without MLflow replaces the run ...
    assert not (out / "mlflow_run_id").exists()  # ... so a later --resume with mlflow starts its own


def test_a_missing_logger_package_is_a_one_line_error_before_training(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.split(".")[0] == "tensorboard":
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    monkeypatch.setattr("importlib.import_module", lambda name: no_tensorboard(name))
    with pytest.raises(ConfigError, match=r"train.logger: tensorboard needs the tensorboard package"):
        train(cfg_with("tensorboard"), output_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "last.pt").exists()


def test_a_chosen_mlflow_file_store_works_and_a_bad_uri_is_one_line_before_any_record(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "store").resolve().as_uri())  # MLflow 3: opt in
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    train(cfg_with("mlflow"), output_dir=tmp_path / "run")
    assert (tmp_path / "run" / "mlflow_run_id").is_file()
    mlflow.set_tracking_uri(None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "bogus://x")
    out = tmp_path / "bad"
    with pytest.raises(ConfigError, match=r"^train.logger: mlflow cannot start a run at bogus://x \("):
        train(cfg_with("mlflow"), output_dir=out)
    assert not out.exists()
    mlflow.set_tracking_uri(None)


def test_an_unreachable_mlflow_server_is_one_line_within_seconds(tmp_path, monkeypatch):
    """MLflow retries an unreachable server for minutes; the run checks the port first."""
    pytest.importorskip("mlflow")
    import socket
    import time

    import mlflow

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for name in ("http_proxy", "HTTP_PROXY"):  # a proxy in the environment would skip the probe
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    out = tmp_path / "run"
    start = time.monotonic()
    with pytest.raises(
        ConfigError, match=rf"mlflow cannot start a run at http://127.0.0.1:{port} \(the server"
    ):
        train(cfg_with("mlflow"), output_dir=out)
    assert time.monotonic() - start < 30 and not out.exists()
    mlflow.set_tracking_uri(None)


def test_the_reachability_probe_skips_proxied_and_non_http_uris_and_hides_a_password(tmp_path, monkeypatch):
    import socket

    from semiseg.engine.loggers import _without_password, check_reachable

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    for name in ("http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(OSError, match="does not answer at 127.0.0.1"):
        check_reachable(f"http://user:pw@127.0.0.1:{port}")
    for uri in ("databricks", "file:///tmp/x", "sqlite:///x.db"):
        check_reachable(uri)  # not an HTTP server: no probe
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")  # MLflow would go through it
    check_reachable(f"http://127.0.0.1:{port}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # ... unless the host bypasses it
    with pytest.raises(OSError):
        check_reachable(f"http://127.0.0.1:{port}")
    assert _without_password("https://me:s3cret@host:5000") == "https://me:***@host:5000"
    assert _without_password("http://host:5000") == "http://host:5000"


def test_a_logger_that_cannot_start_leaves_a_previous_run_whole(tmp_path):
    """tensorboard/ is a file: one line, and the folder's earlier run keeps its own record."""
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    train(cfg_with("none"), output_dir=out)
    before = {f: (out / f).read_bytes() for f in ("config.json", "split.json", "metrics.json", "best.pt")}
    (out / "tensorboard").write_text("x")
    with pytest.raises(ConfigError, match=r"tensorboard is a file, not a folder for its events"):
        train(cfg_with("tensorboard", lr=0.5), output_dir=out)
    assert {f: (out / f).read_bytes() for f in before} == before
