"""The Python API: train, evaluate and predict without the command line.

::

    import semiseg

    run = semiseg.train("configs/supervised-shapes.yaml", overrides={"train.epochs": 2}, output_dir="runs/x")
    print(run.metrics["test"]["dice/mean"])      # the validation-selected model on the test split
    scores = run.evaluate("val")                  # every metric, means over the split
    model = semiseg.load(run.checkpoint)          # or a model.onnx from ``semiseg export``
    mask = model.predict("image.png")             # uint8 class map at the image's own size

Everything the CLI refuses (a bad config key, a missing file, bad data) raises the same one-line
:class:`~semiseg.errors.ConfigError` / :class:`~semiseg.errors.DataError`.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Model", "Run", "load", "open_run", "train"]


#: command-line words in shared error messages, and the API's names for the same things
API_WORDS = (("--set: ", "overrides: "), ("--resume: ", "resume: "), ("--data-root DIR", "data_root=DIR"),
             ("--data-root", "data_root"), ("--quick", "quick"))  # fmt: skip


def _api_words(function):
    """``function`` with the command-line words of its errors (``--set``, ``--resume``, ...) in the
    API's names (``overrides``, ``resume``, ...); the error keeps its type and stays one line."""

    @functools.wraps(function)
    def wrapped(*args, **kwargs):
        from semiseg.errors import DataError, SemisegError

        try:
            return function(*args, **kwargs)
        except SemisegError as exc:
            text = original = exc.message if isinstance(exc, DataError) else str(exc)
            for cli, api in API_WORDS:
                text = text.replace(cli, api)
            if text == original:
                raise
            raise (DataError(exc.path, text) if isinstance(exc, DataError) else type(exc)(text)) from None

    return wrapped


def _config(config: str | os.PathLike | dict, overrides: dict[str, Any] | None, quick: bool):
    import yaml

    from semiseg.config import RunConfig, build_config, load_yaml
    from semiseg.errors import ConfigError

    if isinstance(config, RunConfig):
        if overrides or quick:
            raise ConfigError(
                "overrides and quick apply to a recipe (path, name or dict), not to a RunConfig"
            )
        return config
    if not isinstance(config, (str, os.PathLike, dict)):
        raise ConfigError(
            f"config: a YAML path, a built-in recipe's name or a dict, got {type(config).__name__}"
        )
    if overrides is not None and not isinstance(overrides, dict):
        raise ConfigError(
            f"overrides: a dict of dotted keys, e.g. {{'train.lr': 0.01}}, got {type(overrides).__name__}"
        )
    raw, source = (_plain(config), "config") if isinstance(config, dict) else (load_yaml(config), str(config))
    sets = []
    for key, value in (overrides or {}).items():
        value = _plain(value)  # numpy scalars (np.int64(1)) as plain Python values
        try:
            text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        except yaml.YAMLError:
            raise ConfigError(
                f"overrides: '{key}' has a value YAML cannot write ({type(value).__name__})"
            ) from None
        sets.append(f"{key}={text}")
    return build_config(raw, sets, quick=quick, source=source)


def _plain(value: Any) -> Any:
    """A dict config with NumPy scalars (``np.int64(1)``) as plain Python values, as YAML would give."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


@dataclass
class Run:
    """A finished training run: its folder, config and ``metrics.json`` (``metrics["test"]``, ...)."""

    dir: Path
    cfg: Any
    metrics: dict[str, Any] = field(repr=False)
    data_root: str | None = None

    @property
    def checkpoint(self) -> Path:
        """The validation-selected model (``best.pt``); ``last.pt`` for a run that selects none (e.g.
        ``train.validate: false``), whose scores in ``metrics.json`` come from it."""
        best = self.dir / "best.pt"
        return best if best.is_file() or not (self.dir / "last.pt").is_file() else self.dir / "last.pt"

    @_api_words
    def evaluate(self, split: str = "test", checkpoint: str | os.PathLike | None = None) -> dict[str, float]:
        """Every metric's mean over ``split`` ("val" or "test") for ``best.pt`` (or ``checkpoint``);
        ``None`` where no case defines it, as in ``metrics``."""
        from semiseg.data import prepare_data
        from semiseg.engine.run import check_recorded_split, evaluate_trained, load_trained, split_records
        from semiseg.io import json_values

        method, cfg, state = load_trained(checkpoint or self.checkpoint, "cpu")
        data = prepare_data(cfg, self.data_root)
        split_records(data, split)  # a bad split name or an empty split first
        check_recorded_split(data, [split], checkpoint or self.checkpoint)  # the cases the run recorded
        means, _, _ = evaluate_trained(method, cfg, state, data, split, method_device(method))
        return json_values(means)


@_api_words
def open_run(path: str | os.PathLike, data_root: str | None = None) -> Run:
    """The finished run in folder ``path`` (its ``config.json`` and ``metrics.json``), as
    :func:`train` returned it; ``data_root`` as for :func:`train`, for :meth:`Run.evaluate`."""
    import json

    from semiseg.config import build_config
    from semiseg.errors import ConfigError, DataError

    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError(f"open_run: a run folder path, got {type(path).__name__}")
    folder = Path(path).absolute()
    parts = {}
    for name in ("config.json", "metrics.json"):
        file = folder / name
        if not file.is_file():
            why = "is not a finished run's folder" if folder.is_dir() else "is not a folder"
            raise DataError(folder, f"{why} (no {name})")
        try:
            parts[name] = json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            raise DataError(file, f"cannot read it ({type(exc).__name__})") from None
    cfg = build_config(parts["config.json"], source=str(folder / "config.json"))
    return Run(folder, cfg, parts["metrics.json"], data_root)


def method_device(method):
    import torch

    return next((p.device for p in method.parameters()), torch.device("cpu"))


@_api_words
def train(
    config: str | os.PathLike | dict,
    overrides: dict[str, Any] | None = None,
    *,
    output_dir: str | os.PathLike | None = None,
    data_root: str | None = None,
    quick: bool = False,
    resume: bool = False,
) -> Run:
    """Train a recipe (a YAML path, a built-in recipe's name, a dict or a ``RunConfig``) with ``overrides``
    (dotted keys, e.g. ``{"train.lr": 0.01}``) as ``semiseg train`` does, and return the :class:`Run`.
    The caller's global random generators (torch CPU, NumPy, Python) are left as they were."""
    import torch

    from semiseg.engine.checkpoint import rng_state, set_rng_state
    from semiseg.engine.run import train as run_training
    from semiseg.errors import ConfigError
    from semiseg.io import json_values

    for name, flag in (("quick", quick), ("resume", resume)):
        if not isinstance(flag, bool):  # resume="no" would be true
            raise ConfigError(f"{name}: True or False, got {flag!r}")
    cfg = _config(config, overrides, quick)
    out = Path(output_dir or cfg.output_dir).absolute()  # the Run still finds it after os.chdir
    # training seeds the global generators: the caller's streams go on after it (the GPUs' only if
    # this process has started CUDA: reading their states would start it)
    caller = rng_state(cuda=torch.cuda.is_initialized())
    try:
        metrics = run_training(cfg, data_root=data_root, output_dir=out, resume=resume)
    finally:
        set_rng_state(caller)
    return Run(out, cfg, json_values(metrics), data_root)  # as metrics.json holds them (None for null)


class Model:
    """A trained model for prediction, from a checkpoint (``.pt``, read weights-only) or an exported
    ONNX model (``.onnx``, run by onnxruntime).

    ``dtype="bfloat16"`` runs a checkpoint's network under bfloat16 autocast (1.45-1.76x faster than
    float32 on the development CPU with no pixel changing class, ``benchmarks/results/speed.md``;
    slower on CPUs without bfloat16 instructions); an ONNX model runs in float32. ``threads`` sets
    the intra-op threads (PyTorch's for the whole process, or the onnxruntime session's); None keeps
    the default. ``tta`` ("none" or "flip") overrides the run's ``inference.tta`` (test-time
    augmentation by flips, segmentation only); None keeps it. A threshold chosen on validation
    (``train.threshold: val``) applies as stored, also when it was chosen under another ``tta``
    (``state["decision"]["tta"]`` says which).
    """

    @_api_words
    def __init__(
        self,
        path: str | os.PathLike,
        device: str = "cpu",
        dtype: str = "float32",
        threads: int | None = None,
        tta: str | None = None,
    ):
        import torch

        from semiseg.errors import ConfigError

        if dtype not in DTYPES:
            raise ConfigError(f"predict: dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
            raise ConfigError(f"predict: threads must be a whole number of at least 1, not {threads!r}")
        if not isinstance(path, (str, os.PathLike)):
            raise ConfigError(
                f"predict: the model is a checkpoint or .onnx file path, got {type(path).__name__}"
            )
        path = Path(path)
        #: the network call (``method.predict``, or onnxruntime's), the checkpoint entries and the config
        if path.suffix.lower() == ".onnx":
            from semiseg.engine.export import OnnxModel

            if dtype != "float32":
                raise ConfigError(
                    f"{path}: an ONNX model runs in float32 (--dtype {dtype} applies to checkpoints)"
                )
            if str(device) not in ("auto", "cpu"):
                raise ConfigError(f"{path}: an ONNX model runs on onnxruntime's CPU provider (device {device!r} "
                                  "applies to checkpoints)")  # fmt: skip
            onnx_model = OnnxModel(path, threads)
            self.network, self.cfg, self.state = onnx_model.predict, onnx_model.cfg, onnx_model.state
            self.device = torch.device("cpu")
        else:
            from semiseg.engine.distributed import resolve_device
            from semiseg.engine.run import load_trained

            if threads is not None:
                torch.set_num_threads(threads)
            self.device = resolve_device(device, where="device")
            method, self.cfg, self.state = load_trained(path, self.device)
            method.float()  # the saved float32 weights, whatever the caller's default dtype
            self.network = method.predict if dtype == "float32" else _autocast(method.predict, self.device)
        if tta is not None:
            from semiseg.config import with_tta
            from semiseg.engine.predict import is_classifier

            self.cfg = with_tta(self.cfg, tta, where="tta")
            if tta != "none" and is_classifier(self.network, self.state, self.device):
                raise ConfigError(f"tta: {tta!r} applies to segmentations, and {path} is a classifier")
        self.path, self.dtype = path, dtype

    @property
    def num_classes(self) -> int:
        return int(self.state["num_classes"])

    def probabilities(self, image: np.ndarray | str | os.PathLike):
        """Class probabilities ``[K, *S]`` (float32 numpy) of one image or volume at its own size.

        ``image``: a file (PNG/JPG/TIFF/NPY, read as ``semiseg predict`` reads it; or a NIfTI volume,
        scaled as ``data.intensity`` says, whose maps come back in the file's (x, y, z) axis order, as
        ``semiseg predict`` writes them), or an array ``[H, W]`` / ``[C, H, W]`` (2D model) or
        ``[D, H, W]`` / ``[C, D, H, W]`` (volume). For a model trained on a folder or nnU-Net dataset,
        an array is scaled as training scaled the files (``data.intensity``; with "auto" an image as
        a ``.npy`` file of its dtype: uint8 ÷ 255, 16-bit or float min-max; a volume each channel
        min-max, as a NIfTI file; a 2D model trained on volumes scaled each volume as a whole, so
        pass it the volume, not one slice; a 2D model trained on image files scales each slice of a
        volume array as such a file); for a built-in dataset, uint8 arrays are divided by 255 and
        other arrays go in as they are (scaled as the dataset's images were).
        """
        import torch

        from semiseg.data.records import Record
        from semiseg.engine.evaluate import predict_records
        from semiseg.engine.inference import build_predict

        array, spacing = self._image(image)
        record = Record("input", array, spacing=spacing)
        with torch.no_grad():
            (probs,) = predict_records(build_predict(self.network, self.cfg), [record], self.state["image_size"],
                                       self.device)  # fmt: skip
        if spacing is not None:  # a NIfTI file: back to its (x, y, z) axis order, as semiseg predict writes
            probs = probs.permute(0, 3, 2, 1)
        return np.ascontiguousarray(probs.numpy())

    def predict(self, image: np.ndarray | str | os.PathLike) -> np.ndarray:
        """The uint8 class map of one image or volume at its own size (see :meth:`probabilities`);
        the validation-chosen threshold applies when the run chose one."""
        import torch

        from semiseg.engine.predict import label_map

        return label_map(torch.from_numpy(self.probabilities(image)), self.state.get("decision"))

    def _image(self, image) -> tuple[np.ndarray, tuple[float, ...] | None]:
        """The image as the model reads it, ``[C, *S]`` float32, and its spacing (NIfTI files)."""
        from semiseg.data.io import read_model_image
        from semiseg.data.volume_io import is_nifti
        from semiseg.errors import DataError

        channels = int(self.state["in_channels"])
        spatial = len(self.state["image_size"])
        if isinstance(image, (str, os.PathLike)):
            from semiseg.config import predict_intensity

            path = Path(image)
            if not path.is_file():
                raise DataError(path, "image file not found")
            if is_nifti(path):
                from semiseg.data.nnunet import read_case

                if channels != 1:
                    raise DataError(path, f"a model of {channels} channels reads a list of channel files, not one "
                                          "volume (use semiseg predict with <case>_0000.nii.gz ... files)")  # fmt: skip
                volume, geometry = read_case([path], predict_intensity(self.cfg))
                return volume, geometry.spacing
            converted = self.cfg.data.channels if self.cfg is not None else "auto"
            return read_model_image(path, channels, predict_intensity(self.cfg), converted), None
        if isinstance(image, (list, tuple)):
            raise DataError(None, f"predict: takes one image (an array, or a file path), got a {type(image).__name__}; "
                                  "call it once per image")  # fmt: skip
        if hasattr(image, "detach"):  # a tensor; NumPy has no bfloat16
            import torch

            image = image.detach().cpu()
            image = image.float() if image.dtype == torch.bfloat16 else image
        array = np.asarray(image)
        if array.dtype.kind not in "biuf" or array.size == 0:
            raise DataError(None, f"predict: expected a non-empty numeric array, got {array.dtype} of shape "
                                  f"{array.shape}")  # fmt: skip
        if (  # [H, W, C] or [D, H, W, C]: channels last (a small last axis after large ones)
            array.ndim in (3, 4)
            and array.shape[-1] in (1, 3, 4)
            and min(array.shape[-3:-1]) > 4
            and channels != array.shape[0]
        ):
            last, axes = array.shape[-1], ("H, W" if array.ndim == 3 else "D, H, W")
            if channels == 1:
                advice = f"the model reads 1 channel: pass [{axes}]" + (
                    " (array[..., 0])" if last == 1 else ", in grey"
                )
            elif last == channels:
                order = ", ".join(str(i) for i in (array.ndim - 1, *range(array.ndim - 1)))
                advice = f"pass [C, {axes}] (array.transpose({order}))"
            else:
                advice = f"the model reads {channels} channels: pass [{channels}, {axes}]"
            raise DataError(None, f"predict: an array of shape {array.shape} looks like [{axes}, C] (channels "
                                  f"last); {advice}")  # fmt: skip
        if not np.isfinite(array).all():
            raise DataError(None, "predict: the array has NaN or infinite values")
        # a 3D model takes volumes; a 2D model images, or volumes [C, D, H, W] slice by slice (a
        # one-channel model reads a 3-D array [D, H, W] with D > 1 as a volume)
        volume = (
            spatial == 3 or array.ndim == 4 or (array.ndim == 3 and channels == 1 and array.shape[0] != 1)
        )
        expected = 4 if volume else 3
        if array.ndim == expected - 1:
            array = array[None]
        if array.ndim != expected or array.shape[0] != channels:
            want = "[C, D, H, W]" if volume else "[C, H, W]"
            raise DataError(None, f"predict: an array of shape {np.shape(image)} does not fit a model of "
                                  f"{channels} channel(s) ({want})")  # fmt: skip
        return np.ascontiguousarray(self._scaled(array, volume)), None

    def _scaled(self, array: np.ndarray, volume: bool) -> np.ndarray:
        """An array scaled as training scaled the files it read (``data.intensity`` of a folder or
        nnU-Net dataset: an image as a ``.npy`` file of its dtype, a volume each channel on its own
        as a NIfTI file); for the built-in datasets, uint8 ÷ 255 and other dtypes as they are."""
        from semiseg.config import predict_intensity
        from semiseg.data.io import normalize_intensity, scale_array

        if self.cfg is None or self.cfg.data.dataset not in FILE_DATASETS:
            return array.astype(np.float32) / 255.0 if array.dtype == np.uint8 else array.astype(np.float32)
        mode = predict_intensity(self.cfg)
        if volume and (len(self.state["image_size"]) == 3 or self.state.get("volumes") is not False):
            return np.stack([normalize_intensity(c, "minmax" if mode == "auto" else mode) for c in array])
        if volume:  # a 2D model trained on image files: each slice as such a file
            return np.stack([scale_array(array[:, d], mode) for d in range(array.shape[1])], axis=1)
        return scale_array(array, mode)


#: datasets whose training read image files scaled by ``data.intensity``: arrays handed to
#: :meth:`Model.predict` are scaled as those files were
FILE_DATASETS = ("folder", "nnunet")

#: the precisions a checkpoint's network can predict in
DTYPES = ("float32", "bfloat16")


def _autocast(predict, device):
    """``predict`` under bfloat16 autocast on ``device``, its logits returned as float32."""
    import torch

    def run(images):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return predict(images).float()

    return run


def load(
    path: str | os.PathLike,
    device: str = "cpu",
    dtype: str = "float32",
    threads: int | None = None,
    tta: str | None = None,
) -> Model:
    """A trained model for prediction: a checkpoint (``best.pt``) or an exported ``model.onnx``
    (``dtype``, ``threads`` and ``tta`` as for :class:`Model`)."""
    return Model(path, device, dtype, threads, tta)
