"""Export a trained model to ONNX, and run an exported model with onnxruntime.

``semiseg export --checkpoint best.pt --format onnx -o model.onnx`` writes the network call a
method segments with (``method.predict``: image batch ``[B, C, *S]`` → logits ``[B, K, *S]``) with a
dynamic batch size and image size, through torch's exporter (``torch.onnx.export(dynamo=True)``,
which needs ``onnxscript``). What prediction needs besides the network (classes, the training grid,
the validation-chosen threshold, the inference and intensity settings of the config) travels in the
model's metadata (``metadata_props["semiseg"]``, JSON), so ``semiseg predict --model model.onnx``
needs no checkpoint. The export is checked before the file is written: onnxruntime's outputs on an
input of the training size and on one of another size (3 pixels larger per axis) must equal PyTorch's
within :data:`TOLERANCE`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from semiseg.errors import ConfigError, DataError, first_line

__all__ = ["TOLERANCE", "OnnxModel", "export_onnx"]

#: largest difference of logits allowed between PyTorch and onnxruntime, relative to the largest
#: logit's magnitude when that exceeds 1 (float32 rounding grows with it), else absolute
TOLERANCE = 1e-4
METADATA_KEY = "semiseg"
METADATA_FORMAT = 1
#: checkpoint entries kept in the model's metadata (besides the config)
STATE_KEYS = ("num_classes", "in_channels", "class_names", "image_size", "dataset", "decision", "volumes")


def _need(module: str, what: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f"{what} needs {module} (pip install 'semiseg[onnx]')") from None


class _Network(torch.nn.Module):
    """``method.predict`` (or a network's forward) as a module of one input named ``image``."""

    def __init__(self, method: torch.nn.Module, predict: bool = True):
        super().__init__()
        self.method, self.predict = method, predict

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.method.predict(image) if self.predict else self.method(image)


def to_onnx(network: torch.nn.Module, x: torch.Tensor):
    """The ONNX model (``ModelProto``) of ``network`` (a module of one input ``image``) traced on ``x``,
    with a dynamic batch size and spatial size (torch's dynamo exporter)."""
    spatial = {i + 2: torch.export.Dim(f"s{i}", min=1) for i in range(x.ndim - 2)}
    dynamic = {"image": {0: torch.export.Dim("batch", min=1), **spatial}}
    import logging
    import warnings

    # the exporter's own noise, not the user's concern: a warning line per torchvision operator it
    # cannot register (torchvision is not a dependency) and a FutureWarning from torch's pytree
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            program = torch.onnx.export(network, (x,), dynamo=True, dynamic_shapes=dynamic, input_names=["image"],
                                        output_names=["logits"], verbose=False)  # fmt: skip
    finally:
        quiet.setLevel(level)
    return program.model_proto


def example_input(state: dict[str, Any], cfg) -> torch.Tensor:
    """A batch of 2 random images at the training size (3D: the patch size) for tracing and checking."""
    size = list(state["image_size"])
    if len(size) == 3:
        size = list(cfg.data.patch_size)
    generator = torch.Generator().manual_seed(0)
    return torch.rand(2, int(state["in_channels"]), *size, generator=generator)


def export_onnx(checkpoint: str | Path, output: str | Path) -> dict[str, float]:
    """Export ``checkpoint``'s network to ``output`` (ONNX) and check it; returns the check's figures
    (``max_abs_diff``). Nothing is written when the export or the check fails."""
    from semiseg.config import to_dict
    from semiseg.engine.run import load_trained
    from semiseg.io import atomic_write, check_file_target

    check_file_target(output)  # before the slow export
    if Path(output).suffix.lower() != ".onnx":  # predict --model and semiseg.load go by the suffix
        raise ConfigError(f"-o {output}: an ONNX model's file name ends in .onnx")
    if Path(output).exists() and Path(output).resolve() == Path(checkpoint).resolve():
        raise ConfigError(f"-o {output}: is the checkpoint being exported; choose another file")
    _need("onnxscript", "semiseg export --format onnx")
    onnx = _need("onnx", "semiseg export --format onnx")
    method, cfg, state = load_trained(checkpoint, "cpu")
    network = _Network(method).eval()
    x = example_input(state, cfg)
    try:
        model = to_onnx(network, x)
    except Exception as exc:  # noqa: BLE001 - the exporter raises many types; the user needs one line
        first = first_line(exc)
        raise ConfigError(
            f"{checkpoint}: method '{cfg.method['name']}' cannot be exported to ONNX ({first})"
        ) from None
    meta = {"format": METADATA_FORMAT, "config": to_dict(cfg), **{k: state.get(k) for k in STATE_KEYS}}
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(meta)
    data = model.SerializeToString()
    session = _session(data)
    odd = torch.rand(1, x.shape[1], *(s + 3 for s in x.shape[2:]), generator=torch.Generator().manual_seed(1))
    diff, scale = 0.0, 1.0
    for example in (x, odd):  # the training size, and one no stride divides
        with torch.no_grad():
            want = network(example).numpy()
        try:
            got = session.run(None, {"image": example.numpy()})[0]
        except Exception as exc:  # noqa: BLE001 - onnxruntime's errors have no common type
            raise ConfigError(f"{checkpoint}: the ONNX export fails on an image of size "
                              f"{list(example.shape[2:])} ({type(exc).__name__})") from None  # fmt: skip
        diff = max(diff, float(np.abs(got - want).max()))
        scale = max(scale, float(np.abs(want).max()))
        if want.ndim <= 2:
            break  # a classifier (one vector per image) takes its own size only; a segmenter any
    if not diff <= TOLERANCE * scale:
        raise ConfigError(
            f"{checkpoint}: the ONNX export differs from PyTorch by {diff:.2e} (> {TOLERANCE:g}"
            + (f" x the largest logit, {scale:.3g})" if scale > 1 else ")")
        )
    onnx.checker.check_model(model)
    atomic_write(output, lambda tmp: Path(tmp).write_bytes(data))
    return {"max_abs_diff": diff}


def _session(model: bytes | str, threads: int | None = None):
    ort = _need("onnxruntime", "running an ONNX model")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    return ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


class OnnxModel:
    """An exported model run by onnxruntime: ``predict(images) -> logits`` (torch tensors, CPU), and the
    checkpoint entries (``state``) and config (``cfg``) it was exported with."""

    def __init__(self, path: str | Path, threads: int | None = None):
        from semiseg.config import build_config

        path = Path(path)
        if not path.is_file():
            raise DataError(path, "model file not found")
        onnx = _need("onnx", "reading an ONNX model")
        try:
            model = onnx.load(str(path), load_external_data=False)
        except Exception as exc:  # noqa: BLE001 - a corrupt file is a user mistake
            raise DataError(path, f"cannot read ONNX model ({type(exc).__name__})") from None
        props = {p.key: p.value for p in model.metadata_props}
        try:
            meta = json.loads(props[METADATA_KEY])
        except (KeyError, ValueError):
            raise DataError(path, "not a model exported by semiseg (no 'semiseg' metadata)") from None
        if meta.get("format") != METADATA_FORMAT:
            raise DataError(path, f"exported by another semiseg version (format {meta.get('format')})")
        self.path = path
        self.state = {k: meta.get(k) for k in STATE_KEYS}
        self.cfg = build_config(meta["config"], source=str(path))
        self.session = _session(model.SerializeToString(), threads)

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {"image": images.detach().cpu().float().contiguous().numpy()})[0]
        return torch.from_numpy(out)

    __call__ = predict
