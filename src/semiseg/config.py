"""Typed configuration: dataclasses filled from YAML, with strict checking.

A run is described by :class:`RunConfig` (``data``, ``model``, ``method``, ``train``). YAML files and
``--set key=value`` overrides are checked against the dataclasses: an unknown key or a value of the
wrong type raises :class:`~semiseg.errors.ConfigError` with a one-line message naming the key.
A recipe may carry a ``quick:`` mapping of dotted overrides applied with ``--quick``.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from semiseg.errors import ConfigError


@dataclass
class SplitConfig:
    """How a dataset's training pool becomes labeled / unlabeled / validation / test items."""

    labeled: int | None = None  #: number of labeled images (or groups, see ``labeled_by``); None = all
    labeled_fraction: float | None = None  #: alternative to ``labeled``
    labeled_by: Literal["image", "group"] = "image"  #: "group" = by patient (ACDC)
    labeled_ids: list[str] | None = None  #: explicit labeled ids (or groups); overrides the counts
    supervision: Literal["dense", "sparse", "tag", "size"] = "dense"  #: what the labeled items carry
    sparse_pixels: int = 10  #: labeled pixels per image when ``supervision: sparse``
    draw: int = 0  #: index of the random draw (labeled subset and sparse pixels)
    unlabeled: Literal["rest", "none"] = "rest"  #: keep the other training items as unlabeled
    #: weak labels the unlabeled items carry: none, an image tag per class (present / absent), or
    #: each class's region size in pixels (e.g. the oracle bounds of the size-constraint method)
    unlabeled_supervision: Literal["none", "tag", "size"] = "none"
    #: masks of validation items: "dense", or "same" = the supervision of the labeled items (sparse
    #: pixels), so model selection never sees labels a sparse-label user would not have
    val_supervision: Literal["dense", "same"] = "dense"
    val_fraction: float = 0.1  #: carved from the training pool when the dataset has no val split
    test_fraction: float = 0.2  #: carved from the training pool when the dataset has no test split
    seed: int = 0


@dataclass
class DataConfig:
    dataset: Literal["shapes", "folder", "weizmann", "acdc", "acdc_lv", "mnist"] = "shapes"
    path: str | None = None  #: folder of the dataset; relative paths are under the data root
    image_size: list[int] = field(default_factory=lambda: [64, 64])  #: training H, W
    num_classes: int | None = None  #: folder datasets (default 2)
    mask_threshold: int | None = None  #: folder datasets with JPEG masks
    channels: Literal["auto", "gray", "rgb"] = "auto"
    num_images: int = 120  #: generated "shapes" set size
    shapes_classes: int = 3  #: generated "shapes" set: classes incl. background
    split: SplitConfig = field(default_factory=SplitConfig)


@dataclass
class ModelConfig:
    name: str = "unet"
    width: int = 16  #: channels of the first level, doubled at each level
    depth: int = 4  #: number of down-sampling steps
    norm: Literal["batch", "instance", "group", "none"] = "batch"
    dropout: float = 0.0


@dataclass
class AugmentConfig:
    hflip: bool = False
    vflip: bool = False
    rot90: bool = False
    rotate_degrees: float = 0.0
    scale: list[float] = field(default_factory=lambda: [1.0, 1.0])
    brightness: float = 0.0  #: additive shift drawn from U(-b, b)
    contrast: float = 0.0  #: multiplicative factor drawn from U(1-c, 1+c)
    noise_std: float = 0.0


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 8
    iters_per_epoch: int | None = None  #: default: one pass over the labeled items
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    scheduler: Literal["none", "cosine", "poly"] = "none"
    grad_clip: float | None = None
    val_every: int = 1
    val_metric: str = "dice/mean"  #: key of the evaluation dict used for model selection
    val_mode: Literal["max", "min"] = "max"
    seed: int = 0
    device: str = "auto"  #: "auto", "cpu", "cuda", "cuda:1", ...
    amp: bool = False  #: mixed precision on CUDA
    num_workers: int = 0
    log_every: int = 10
    progress: bool = True
    plots: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    #: checkpoint (best.pt / last.pt) whose segmenter weights start this run (e.g. a supervised model)
    init: str | None = None


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: dict[str, Any] = field(default_factory=lambda: {"name": "supervised"})
    train: TrainConfig = field(default_factory=TrainConfig)
    output_dir: str = "runs/default"
    quick: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------- checking
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        return f"list of {_type_name(inner)}"
    if origin is dict:
        return "mapping"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against type ``tp``; return it (ints are accepted for floats)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(f"'{key}' must be one of {_type_name(tp)}, got {value!r}")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"'{key}' must be {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}' must be a mapping, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"'{key}' must be {_type_name(tp)}, got {value!r}")
        (inner,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}' must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    else:  # pragma: no cover - unsupported annotation is a programming error
        raise TypeError(f"unsupported config type {tp!r} for {key}")
    raise ConfigError(f"'{key}' must be {_type_name(tp)}, got {value!r}")


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise ConfigError(f"'{prefix or 'top level'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(names)})"
            raise ConfigError(f"unknown key '{full}'{hint}")
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """Dataclass (possibly nested) to plain dict, for checkpoints and results."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


@functools.cache
def _yaml_loader() -> type:
    """PyYAML's SafeLoader, plus YAML 1.2 floats without a dot (``1e-3``), which YAML 1.1 reads as strings."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    exponent_float = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")
    Loader.add_implicit_resolver("tag:yaml.org,2002:float", exponent_float, list("-+0123456789"))
    return Loader


def _parse_scalar(text: str) -> Any:
    import yaml

    try:
        return yaml.load(text, Loader=_yaml_loader())
    except yaml.YAMLError:
        return text


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML) to nested dict ``data`` in place."""
    if "=" not in assignment:
        raise ConfigError(f"--set: expected key=value, got {assignment!r}")
    key, text = assignment.split("=", 1)
    set_dotted(data, key.strip(), _parse_scalar(text))


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"--set: bad key {key!r}")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set: '{key}': '{part}' is not a mapping")
        node = child
    node[parts[-1]] = value


RECIPES = Path(__file__).parent / "configs"


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES.glob("*.yaml"))


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file, or a built-in recipe by name (e.g. ``supervised-horse``)."""
    import yaml

    p = Path(path)
    if not p.is_file() and (RECIPES / f"{p.name}.yaml").is_file() and p.suffix == "":
        p = RECIPES / f"{p.name}.yaml"
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found (built-in recipes: {', '.join(recipe_names())})")
    try:
        data = yaml.load(p.read_text(), Loader=_yaml_loader())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise ConfigError(f"{p}: invalid YAML{where}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: config must be a mapping at top level")
    return data


def build_config(
    raw: dict[str, Any], overrides: list[str] | None = None, *, quick: bool = False, source: str = "config"
) -> RunConfig:
    """Raw dict + ``--set`` overrides (+ the recipe's ``quick`` section) → checked :class:`RunConfig`."""
    import copy

    data = copy.deepcopy(raw)
    if quick:
        quick_section = data.get("quick") or {}
        if not isinstance(quick_section, dict):
            raise ConfigError(f"{source}: 'quick' must be a mapping of dotted keys to values")
        for key, value in quick_section.items():
            set_dotted(data, str(key), value)
    for assignment in overrides or []:
        apply_override(data, assignment)
    try:
        cfg = from_dict(RunConfig, data)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    validate(cfg, source)
    return cfg


def validate(cfg: RunConfig, source: str = "config") -> None:
    """Value checks beyond types (ranges, lengths); method options are checked by the method."""

    def bad(key: str, why: str) -> None:
        raise ConfigError(f"{source}: '{key}' {why}")

    if len(cfg.data.image_size) != 2 or min(cfg.data.image_size) < 8:
        bad("data.image_size", "must be [H, W] with both at least 8")
    s = cfg.data.split
    if s.labeled is not None and s.labeled < 1:
        bad("data.split.labeled", "must be at least 1")
    if s.labeled_fraction is not None and not 0 < s.labeled_fraction <= 1:
        bad("data.split.labeled_fraction", "must be in (0, 1]")
    if s.sparse_pixels < 1:
        bad("data.split.sparse_pixels", "must be at least 1")
    if not 0 <= s.val_fraction < 1 or not 0 <= s.test_fraction < 1:
        bad("data.split.val_fraction/test_fraction", "must be in [0, 1)")
    t = cfg.train
    for key in ("epochs", "batch_size", "val_every", "log_every"):
        if getattr(t, key) < 1:
            bad(f"train.{key}", "must be at least 1")
    if t.iters_per_epoch is not None and t.iters_per_epoch < 1:
        bad("train.iters_per_epoch", "must be at least 1")
    if t.lr <= 0:
        bad("train.lr", "must be positive")
    if len(t.augment.scale) != 2 or not 0 < t.augment.scale[0] <= t.augment.scale[1]:
        bad("train.augment.scale", "must be [min, max] with 0 < min <= max")
    if cfg.model.width < 1 or cfg.model.depth < 0:
        bad("model.width/depth", "must be positive")
    if "name" not in cfg.method or not isinstance(cfg.method["name"], str):
        bad("method.name", "is required (e.g. 'supervised')")
