"""Typed configuration: dataclasses filled from YAML, with strict checking.

A run is described by :class:`RunConfig` (``data``, ``model``, ``method``, ``train``). YAML files and
``--set key=value`` overrides are checked against the dataclasses: an unknown key or a value of the
wrong type raises :class:`~semiseg.errors.ConfigError` with a one-line message naming the key.
A recipe may carry a ``quick:`` mapping of dotted overrides applied with ``--quick``.

Two hooks let a config dataclass check itself with the same one-line errors:

- ``__post_init__`` may raise :class:`FieldError` for a bad value (reported as ``'<key>' <why>``);
- a ``config_subclass(data, key)`` classmethod makes a field polymorphic: it picks the concrete
  dataclass from the mapping before it is checked (e.g. a regulariser spec by its ``name``).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from semiseg.core import IGNORE_INDEX
from semiseg.errors import ConfigError
from semiseg.registry import Registry

#: Dataset loaders by ``data.dataset`` name (:class:`semiseg.data.registry.DatasetSource`). Declared
#: here, where the name is checked; the loaders register themselves in their modules of
#: :mod:`semiseg.data` (``@register_dataset("weizmann", folder="weizmann_horse")``), third-party
#: ones through the ``semiseg.datasets`` entry-point group.
DATASETS: Registry[Any] = Registry("dataset", package="semiseg.data")


class FieldError(ValueError):
    """A bad value of one field, raised by a config dataclass's ``__post_init__``; the checker
    reports it as ``'<prefix>.<field>' <message>``."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field} {message}")
        self.field, self.message = field, message


def check_weights(obj: Any, *names: str) -> None:
    """Raise :class:`FieldError` unless every field ``names`` of ``obj`` is a finite number >= 0 (loss
    weights, in a config dataclass's ``__post_init__``)."""
    for name in names:
        value = getattr(obj, name)
        if not math.isfinite(value) or value < 0:
            raise FieldError(name, f"must be a finite number >= 0, got {value}")


@dataclass
class SplitConfig:
    """How a dataset's training pool becomes labeled / unlabeled / validation / test items."""

    labeled: int | None = None  #: number of labeled images (or groups, see ``labeled_by``); None = all
    labeled_fraction: float | None = None  #: alternative to ``labeled``
    labeled_by: Literal["image", "group"] = "image"  #: "group" = by patient (ACDC)
    labeled_ids: list[str] | None = None  #: explicit labeled ids (or groups); overrides the counts
    #: how draw 0 picks its labeled items: "random" like every draw, or "listed" = the first ones in the
    #: dataset's own order (the SSL4MIS ACDC protocol: the first patients of train_slices.list, e.g.
    #: 099, 038, 050 for 3); draws >= 1 are random either way
    first_draw: Literal["random", "listed"] = "random"
    #: which training items may be labeled: "all" with a mask, or "present" = only those whose mask
    #: has foreground (e.g. images tagged "target present")
    labeled_pool: Literal["all", "present"] = "all"
    #: only items with these image-level labels may be labeled (e.g. [9]: masks for digit 9 only);
    #: ``labeled_fraction`` still counts the whole pool, so 1 % of the pool is drawn among them
    labeled_labels: list[int] | None = None
    #: what the labeled items carry ("class": the image's class, for classification datasets)
    supervision: Literal["dense", "sparse", "tag", "size", "class"] = "dense"
    #: the labeled draw takes the same number of items per image-level label (e.g. 10 per digit)
    balanced: bool = False
    #: this many items of the labeled draw become the validation set instead (balanced per label with
    #: ``balanced``), for protocols whose validation must come out of the label budget (SSLDEC's MNIST:
    #: 100 labels = 90 for training + 10 for validation); 0 = the dataset's or a carved validation set
    val_from_labeled: int = 0
    #: of each labeled group (patient), only this fraction of its items (slices) is labeled: evenly
    #: spaced in the group's natural id order (frame, slice) from a random offset per draw; its other
    #: items join the unlabeled pool (e.g. SSLDEC's iSeg protocol: one fifth of each labeled volume)
    labeled_item_fraction: float = 1.0
    sparse_pixels: int = 10  #: labeled pixels per image when ``supervision: sparse``
    draw: int = 0  #: index of the random draw (labeled subset and sparse pixels)
    #: the unlabeled stream: "rest" = the training items not labeled, "none", or "all" = every
    #: training item, the labeled ones too (their images without labels: e.g. consistency on the
    #: unlabeled pixels of sparsely labeled images)
    unlabeled: Literal["rest", "none", "all"] = "rest"
    #: weak labels the unlabeled items carry: none, an image tag per class (present / absent), or
    #: each class's region size in pixels (e.g. the oracle bounds of the size-constraint method)
    unlabeled_supervision: Literal["none", "tag", "size"] = "none"
    #: masks of validation items: "dense", or "same" = the supervision of the labeled items (sparse
    #: pixels), so model selection never sees labels a sparse-label user would not have; with
    #: ``labeled_pool`` / ``labeled_labels`` also the same rule and fraction on the validation items
    #: (drawn once with ``seed``, the same for every draw)
    val_supervision: Literal["dense", "same"] = "dense"
    val_fraction: float = 0.1  #: carved from the training pool when the dataset has no val split
    test_fraction: float = 0.2  #: carved from the training pool when the dataset has no test split
    seed: int = 0


@dataclass
class DataConfig:
    dataset: str = "shapes"  #: a name in DATASETS: shapes, folder, weizmann, acdc, acdc_lv, mnist, ...
    path: str | None = None  #: folder of the dataset; relative paths are under the data root
    #: the training grid: [H, W] (2D models); [D, H, W] for 3D models (model.spatial_dims: 3), -1 on
    #: an axis keeping each volume's own size (e.g. [-1, 128, 128]: every slice resized to 128x128,
    #: the slice count kept)
    image_size: list[int] = field(default_factory=lambda: [64, 64])
    #: 3D models: the training patch [d, h, w] cropped from each volume on the training grid, and the
    #: sliding window of inference (null in 2D: whole images)
    patch_size: list[int] | None = None
    #: 3D patches: the share of patches centred on a labeled foreground voxel (nnU-Net's 0.33); the
    #: others are placed uniformly
    foreground_ratio: float = 0.33
    #: 3D models: resample each volume to this voxel size (mm per axis [D, H, W], -1 = keep the axis)
    #: before image_size applies to the other axes (image_size must be -1 where a target is set);
    #: predictions go back to each volume's own grid, where metrics are computed
    target_spacing: list[float] | None = None
    #: "eager": every image in memory after loading; "lazy": records index their files (each read and
    #: validated once when loaded) and read them again on use, through a per-process cache of
    #: data.cache_mib; "auto": volumes lazy, 2D images eager. Results are the same either way.
    loading: Literal["auto", "eager", "lazy"] = "auto"
    cache_mib: int = 512  #: bound of the per-process cache of lazily read images (MiB)
    #: where lazily read volumes are stored on their training grid (3D models); default
    #: $SEMISEG_CACHE, else ~/.cache/semiseg. Safe to delete between runs.
    cache_dir: str | None = None
    num_classes: int | None = None  #: folder datasets (default 2)
    mask_threshold: int | None = None  #: folder datasets with JPEG masks
    #: folder datasets: the mask value of unlabeled pixels (e.g. 255 in masks of a few clicked pixels or
    #: scribbles, the rest unlabeled); losses and metrics skip those pixels
    mask_unlabeled: int | None = None
    channels: Literal["auto", "gray", "rgb"] = "auto"
    #: intensity scaling of image files (folder and nnunet datasets): "auto" = 8-bit ÷ 255, 16-bit and
    #: float images min-max per image to [0, 1]; "minmax" / "percentile" (0.5–99.5, clipped) to [0, 1]
    #: or "zscore" per image; "none" = raw stored values. Other datasets accept "auto" only.
    intensity: Literal["auto", "minmax", "percentile", "zscore", "none"] = "auto"
    num_images: int = 120  #: generated sets: "shapes" images, "moons" points
    shapes_classes: int = 3  #: generated "shapes" set: classes incl. background
    shapes_every_class: bool = False  #: generated "shapes" set: every image holds every class
    #: generated "cluttered_mnist" set: 48-simple, 48-hard or 128 (image side, clutter pieces)
    variant: Literal["48-simple", "48-hard", "128"] = "48-hard"
    generator_seed: int = 0  #: generated sets ("cluttered_mnist", "moons"): seed of the images / points
    #: generated "texture_rings" set: [background, ring] textures (gravel, brick: scikit-image's; grain,
    #: weave: procedural)
    textures: list[str] = field(default_factory=lambda: ["gravel", "brick"])
    split: SplitConfig = field(default_factory=SplitConfig)


@dataclass
class ModelConfig:
    name: str = "unet"
    width: int = 16  #: channels of the first level, doubled at each level
    depth: int = 4  #: number of down-sampling steps
    norm: Literal["batch", "instance", "group", "none"] = "batch"
    dropout: float = 0.0
    #: the output layer: "linear" (the network's logits) or "clustering" (DEC's Student-t soft
    #: assignment of the logits, used as embeddings, to one learnable centroid per class; the output
    #: is log q, so its softmax is q)
    head: Literal["linear", "clustering"] = "linear"
    alpha: float = 1.0  #: clustering head: degrees of freedom of the Student-t kernel
    centroid_init: Literal["glorot", "normal"] = "glorot"  #: clustering head: centroids' initialisation
    #: weights of the convolutions and dense layers: "default" = PyTorch's (Kaiming-uniform, a = √5),
    #: "glorot" = Keras's (Glorot-uniform U(−l, l), l = √(6 / (fan_in + fan_out)), zero biases), for
    #: networks from papers written in Keras (SSLDEC, IODA)
    init: Literal["default", "glorot"] = "default"
    #: ``mlp``: "vector" (a score vector per image) or "map" (a flattened image to a flattened label
    #: map, the IODA paper's network; it reads data.image_size)
    output: Literal["vector", "map"] = "vector"
    #: ``mlp``: the hidden layers' widths (None = ``width`` units × ``depth`` layers)
    hidden: list[int] | None = None
    activation: Literal["relu", "tanh", "sigmoid"] = "relu"  #: ``mlp``: hidden activation
    #: ``mlp`` maps: a constant subtracted from the input before the first layer (e.g. 0.5 for images
    #: in [0, 1]: zero-centred inputs condition gradient descent, LeCun et al. 1998); 0 = none
    input_offset: float = 0.0
    spatial_dims: Literal[2, 3] = 2  #: ``unet`` / ``monai_unet``: 2D or 3D convolutions
    #: 3D ``unet``: the first this many levels are in-plane only (1x3x3 convolutions, 1x2x2 pooling), for
    #: volumes with thick slices (nnU-Net's rule)
    inplane_levels: int = 0
    #: ``flexible_unet`` (MONAI) and ``smp`` (segmentation-models-pytorch): the encoder, e.g.
    #: "efficientnet-b0" or "resnet34" (flexible_unet), any smp / timm encoder ("resnet34", "tu-convnext_tiny")
    encoder: str = "resnet34"
    #: the encoder's pre-trained weights: "imagenet" (downloaded once into $TORCH_HOME; fine-tuned with
    #: the rest) or null (random initialisation)
    encoder_weights: Literal["imagenet"] | None = None
    #: ``smp``: the architecture ("unet", "unetplusplus", "fpn", "deeplabv3plus", ... any smp model)
    arch: str = "unet"


@dataclass
class AugmentConfig:
    hflip: bool = False  #: flip the last (W) axis
    vflip: bool = False  #: flip the second-to-last (H) axis
    dflip: bool = False  #: volumes only: flip the depth (D) axis
    rot90: bool = False  #: 90° rotations in the H-W plane (when H == W)
    rotate_degrees: float = 0.0
    scale: list[float] = field(default_factory=lambda: [1.0, 1.0])
    brightness: float = 0.0  #: additive shift drawn from U(-b, b)
    contrast: float = 0.0  #: multiplicative factor drawn from U(1-c, 1+c)
    noise_std: float = 0.0
    #: integer shift of up to this many pixels along H and along W (each drawn from −t … t), zero
    #: fill (the mask's vacated pixels are unlabeled); e.g. SSLDEC's 1-pixel MNIST translations
    translate_px: int = 0
    #: volumes only: also rotate out of the slice plane (about the H and the W axis, each angle from
    #: ±rotate_degrees) and scale the depth axis with the other two: for near-isotropic volumes (e.g.
    #: LA2018); off = rotation and scaling in the H-W plane only (thick slices, e.g. ACDC)
    affine_3d: bool = False


@dataclass
class StrongAugmentConfig:
    """Strong photometric perturbations of a strong view (UniMatch's defaults), on top of the weak view."""

    jitter_prob: float = 0.8  #: probability of the brightness / contrast jitter
    brightness: float = 0.5  #: multiplicative factor drawn from U(1-b, 1+b) (torchvision's ColorJitter)
    contrast: float = 0.5  #: factor drawn from U(1-c, 1+c) on the deviation from the image mean
    blur_prob: float = 0.5  #: probability of a Gaussian blur
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 2.0])  #: sigma range, in pixels
    noise_std: float = 0.0  #: additive Gaussian noise
    cutmix_prob: float = 0.5  #: probability of a CutMix box (else an empty box mask)
    cutmix_area: list[float] = field(default_factory=lambda: [0.02, 0.4])  #: box area / image area
    cutmix_aspect: list[float] = field(default_factory=lambda: [0.3, 3.3])  #: box side ratio H / W


@dataclass
class OptimizerConfig:
    """Settings of one optimizer of a phase; ``None`` = the run's (``train.*``) or the phase's value.

    A method exposes one of these per optimizer in its config (e.g. a GAN's ``generator`` and
    ``discriminator``), so two learning rates or optimizer types are configured, not hand-coded.
    """

    type: Literal["adam", "adamw", "sgd"] | None = None  #: None = train.optimizer
    lr: float | None = None  #: None = the phase's lr, else train.lr
    betas: list[float] | None = None  #: Adam/AdamW betas; None = torch's (0.9, 0.999)
    amsgrad: bool = False  #: Adam/AdamW: the AMSGrad variant (e.g. the translation paper's)
    momentum: float | None = None  #: SGD; None = train.momentum
    weight_decay: float | None = None  #: None = train.weight_decay
    scheduler: Literal["none", "cosine", "poly", "linear", "adaptive"] | None = (
        None  #: None = train.scheduler
    )
    end_factor: float = 0.0  #: ``linear``: the lr falls from lr to lr · end_factor over the phase
    #: ``adaptive`` (:mod:`semiseg.engine.adaptive`): lr × growth after ``grow_after`` improving epochs;
    #: an epoch that does not improve the criterion is rejected and rerun with lr ÷ growth, at most
    #: ``max_attempts`` times (the IODA paper's rule; 1.25 and 5 are Crino's, the cap of 10 is ours)
    growth: float = 1.25
    grow_after: int = 5
    max_attempts: int = 10
    #: update ratio: this optimizer steps ``repeat`` times per iteration (e.g. k critic steps per
    #: generator step) and only on iterations divisible by ``every``
    repeat: int = 1
    every: int = 1


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 8
    iters_per_epoch: int | None = None  #: default: one pass over the labeled items
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    #: ``linear``: to 0 over the run; ``adaptive``: criterion-driven, rejecting worse epochs
    scheduler: Literal["none", "cosine", "poly", "linear", "adaptive"] = "none"
    grad_clip: float | None = None
    val_every: int = 1
    val_metric: str = "dice/mean"  #: key of the evaluation dict used for model selection
    val_mode: Literal["max", "min"] = "max"
    seed: int = 0
    device: str = "auto"  #: "auto", "cpu", "cuda", "cuda:1", ...
    amp: bool = False  #: mixed precision on CUDA
    num_workers: int = 0
    log_every: int = 10
    #: an experiment tracker beside the CSV / JSONL logs: "tensorboard" (<run>/tensorboard) or
    #: "mlflow" ($MLFLOW_TRACKING_URI, else <run>/mlruns); optional packages (semiseg[loggers])
    logger: Literal["none", "tensorboard", "mlflow"] = "none"
    progress: bool = True
    plots: bool = True
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    #: strong views, for methods that ask for them (weak-to-strong consistency, CutMix)
    strong_augment: StrongAugmentConfig = field(default_factory=StrongAugmentConfig)
    #: checkpoint (best.pt / last.pt) whose segmenter weights start this run (e.g. a supervised model)
    init: str | None = None
    #: channels-last memory format for the networks and their image inputs; "auto" (default) = for 2D
    #: networks on CPU, where it trains 1.22x as many images/s (benchmarks/results/speed.md). The first
    #: step's loss equals the contiguous format's exactly; later steps differ by float rounding, which
    #: Adam's early sign-like updates amplify (1e-5 relative at step 2, 1e-3 at step 10), as any change
    #: of summation order does (the demo's dense-all run, which moves by 0.2 Dice between identical
    #: runs, once scored 0.35 with it and 0.62 without). 3D networks: not measured, so off under "auto";
    #: also off under "auto" for a network with a strided 1x1 convolution (the translation networks,
    #: ResNet encoders), whose channels-last CPU backward corrupts memory in torch 2.13 (true with
    #: such a network on CPU is a configuration error)
    channels_last: bool | Literal["auto"] = "auto"
    #: under DDP, batch-norm statistics over the global batch (all processes), as in one process
    sync_batchnorm: bool = True
    #: also score the last model (not only the validation-selected best.pt): metrics.json "last"
    eval_last: bool = False
    #: binary data: "val" = the foreground threshold chosen on the validation split (mean Jaccard),
    #: stored with the model and used for val / test scores, evaluate and predict; "argmax" = 0.5
    threshold: Literal["argmax", "val"] = "argmax"
    #: write last.pt after every n-th epoch (and at the end of each phase): large networks (e.g. IODA's
    #: 71 M parameters, 285 MB a checkpoint) save time and disk; a resumed run replays the epochs since
    #: the last one exactly
    checkpoint_every: int = 1
    #: keep the method state after these epochs of the final phases (``epoch_<phase>_<n>.pt``), e.g.
    #: for figures of a network's outputs during training (the IODA paper's Fig. 6)
    save_epochs: list[int] = field(default_factory=list)


@dataclass
class InferenceConfig:
    """How validation, evaluate and predict run the network on a whole image or volume
    (:class:`semiseg.engine.inference.Inferer`)."""

    #: "auto": 2D models on whole images (volumes slice by slice), 3D models with sliding windows of
    #: data.patch_size; "whole": one call per image or volume; "sliding": windows of data.patch_size
    mode: Literal["auto", "whole", "sliding"] = "auto"
    overlap: float = 0.5  #: sliding windows: the share of a window overlapping its neighbour, per axis
    #: sliding windows: "gaussian" (nnU-Net's weights), "constant" (a plain mean) or "trim" (each voxel
    #: from the window whose centre region owns it)
    blend: Literal["gaussian", "constant", "trim"] = "gaussian"
    sigma_scale: float = 0.125  #: Gaussian blending: sigma as a share of the window side
    batch_size: int = 4  #: windows per network call
    #: test-time augmentation of evaluate, predict and the Python API (not of validation while
    #: training): "flip" = the mean logits over every combination of flips along the spatial axes (4
    #: network calls per 2D image or slice, 8 per 3D volume or window; nnU-Net's mirroring), "none" =
    #: one call; a resume may not change it (the checkpoints carry it)
    tta: Literal["none", "flip"] = "none"


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: dict[str, Any] = field(default_factory=lambda: {"name": "supervised"})
    train: TrainConfig = field(default_factory=TrainConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
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
        if isinstance(value, tp):  # already built (e.g. a spec made in code)
            return value
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
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys, wrong types and (through the
    class's :class:`FieldError`) bad values. A ``cls.config_subclass(data, prefix)`` classmethod
    first picks the concrete class (polymorphic fields)."""
    if not isinstance(data, dict):
        raise ConfigError(f"'{prefix or 'top level'}' must be a mapping, got {data!r}")
    select = getattr(cls, "config_subclass", None)
    if select is not None:
        cls = select(data, prefix)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(names)})"
            raise ConfigError(f"unknown key '{full}'{hint}")
        default = _dataclass_default(cls, key)
        if default is not None and isinstance(value, dict):
            # a mapping sets some fields of a nested config; the others keep the field's default
            value = {**to_dict(default), **value}
        kwargs[key] = _coerce(value, hints[key], full)
    try:
        return cls(**kwargs)
    except FieldError as exc:
        raise ConfigError(f"'{f'{prefix}.{exc.field}' if prefix else exc.field}' {exc.message}") from None


def _dataclass_default(cls: type, name: str) -> Any:
    """The default of field ``name`` of ``cls`` when it is a dataclass instance, else None."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    elif f.default is not dataclasses.MISSING:
        value = f.default
    else:
        return None
    return value if dataclasses.is_dataclass(value) and not isinstance(value, type) else None


def to_dict(obj: Any) -> Any:
    """Dataclass (possibly nested) to plain dict, for checkpoints and results."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj


@functools.cache
def _yaml_loader() -> type:
    """PyYAML's SafeLoader, plus YAML 1.2 floats without a dot (``1e-3``), which YAML 1.1 reads as strings."""
    import yaml

    class Loader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:  # a key given twice: PyYAML keeps the last one, silently
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark
                    )
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

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
    if p.is_dir():
        raise ConfigError(f"{p}: is a folder, not a YAML recipe")
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found (built-in recipes: {', '.join(recipe_names())})")
    try:
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=_yaml_loader())
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a YAML config (not UTF-8 text)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or ""
        what = f": {problem}" if problem.startswith("duplicate key") else ""
        raise ConfigError(f"{p}: invalid YAML{where}{what}") from None
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


#: built-in datasets whose images have one fixed scaling (8-bit ÷ 255, or stored normalised like
#: ACDC's h5 slices and volumes): ``data.intensity`` other than "auto" is refused for them
_FIXED_INTENSITY = (
    "shapes",
    "weizmann",
    "acdc",
    "acdc_lv",
    "acdc_rv",
    "acdc_3d",
    "la2018",
    "mnist",
    "cluttered_mnist",
    "mnist_digits",
    "moons",
    "texture_rings",
)
#: how ``semiseg predict`` scales NIfTI inputs for a model trained on a built-in dataset of fixed
#: scaling that min-max (``"auto"``) would not reproduce: LA2018's ``mri_norm2`` volumes are z-scored
#: per volume (UA-MT's preprocessing); ACDC's h5 volumes are min-max per volume, as "auto"; moons'
#: points are coordinates, taken as they are (min-max would map every point to (0, 1) or (1, 0))
PREDICT_INTENSITY = {"la2018": "zscore", "moons": "none"}


def with_tta(cfg: RunConfig, tta: str, where: str = "--tta") -> RunConfig:
    """``cfg`` with ``inference.tta`` set to ``tta`` (checked; ``where`` names the option in errors)."""
    import dataclasses
    import typing

    choices = typing.get_args(typing.get_type_hints(InferenceConfig)["tta"])
    if tta not in choices:
        raise ConfigError(f"{where}: must be one of {', '.join(choices)}, not {tta!r}")
    return dataclasses.replace(cfg, inference=dataclasses.replace(cfg.inference, tta=tta))


def predict_intensity(cfg: RunConfig | None) -> str:
    """How a trained run's prediction scales image and NIfTI inputs (:data:`PREDICT_INTENSITY`, else
    ``data.intensity``; "auto" without a run configuration)."""
    if cfg is None:
        return "auto"
    return PREDICT_INTENSITY.get(cfg.data.dataset, cfg.data.intensity)


def validate(cfg: RunConfig, source: str = "config") -> None:
    """Value checks beyond types (ranges, lengths); method options are checked by the method."""

    def bad(key: str, why: str) -> None:
        raise ConfigError(f"{source}: '{key}' {why}")

    if cfg.data.dataset == "moons":  # points: 1x1 "images" with 2 channels
        if list(cfg.data.image_size) != [1, 1]:
            bad(
                "data.image_size",
                "must be [1, 1] for dataset 'moons' (a point is a 1x1 image with 2 channels)",
            )
    elif cfg.model.spatial_dims == 3:
        size, patch = list(cfg.data.image_size), cfg.data.patch_size
        if len(size) != 3 or any(v != -1 and v < 1 for v in size) or any(v != -1 and v < 8 for v in size[1:]):
            bad(
                "data.image_size",
                "must be [D, H, W] for a 3D model (-1 = keep each volume's size; H, W at least 8)",
            )
        if patch is None or len(patch) != 3 or min(patch) < 1:
            bad("data.patch_size", "must be [d, h, w] (positive) for a 3D model")
        if any(v != -1 and p > v for p, v in zip(patch, size)):
            bad("data.patch_size", f"{patch} is larger than data.image_size {size}")
    elif len(cfg.data.image_size) != 2 or min(cfg.data.image_size) < 8:
        bad("data.image_size", "must be [H, W] with both at least 8")
    if cfg.data.num_images < 1:
        bad("data.num_images", f"must be at least 1, got {cfg.data.num_images}")
    if cfg.data.cache_mib < 0:
        bad("data.cache_mib", f"must be 0 or more (MiB), got {cfg.data.cache_mib}")
    ts = cfg.data.target_spacing
    if ts is not None:
        if cfg.model.spatial_dims != 3 or len(ts) != 3 or any(not (v > 0 or v == -1) for v in ts):
            bad("data.target_spacing", "must be [D, H, W] in mm (-1 = keep the axis), for a 3D model")
        if any(v > 0 and s != -1 for v, s in zip(ts, cfg.data.image_size)):
            bad("data.image_size", "must be -1 on the axes that data.target_spacing resamples")
    if cfg.model.spatial_dims == 2 and cfg.data.patch_size is not None:
        bad(
            "data.patch_size", "applies to 3D models (model.spatial_dims: 3); 2D models train on whole images"
        )
    if not 0 <= cfg.data.foreground_ratio <= 1:
        bad("data.foreground_ratio", "must be in [0, 1]")
    inf = cfg.inference
    if not 0 <= inf.overlap < 1:
        bad("inference.overlap", "must be in [0, 1)")
    if not (math.isfinite(inf.sigma_scale) and inf.sigma_scale > 0):
        bad("inference.sigma_scale", f"must be a finite number > 0, got {inf.sigma_scale}")
    if inf.batch_size < 1:
        bad("inference.batch_size", "must be at least 1")
    if inf.mode == "sliding" and cfg.model.spatial_dims != 3:
        bad(
            "inference.mode",
            "'sliding' is for 3D models (windows of data.patch_size); 2D models run on whole images",
        )
    if cfg.data.num_classes is not None and not 2 <= cfg.data.num_classes < IGNORE_INDEX:
        bad("data.num_classes", f"must be in 2..{IGNORE_INDEX - 1} ({IGNORE_INDEX} is the ignore label)")
    if not 2 <= cfg.data.shapes_classes <= 4:
        bad("data.shapes_classes", "must be 2, 3 or 4 (background + up to 3 shapes)")
    if cfg.data.dataset == "cluttered_mnist":
        side = int(cfg.data.variant.split("-")[0])
        if list(cfg.data.image_size) != [side, side]:
            bad(
                "data.image_size",
                f"must be [{side}, {side}] for cluttered_mnist variant '{cfg.data.variant}'",
            )
    if cfg.data.intensity != "auto" and cfg.data.dataset in _FIXED_INTENSITY:
        bad("data.intensity", f"must be 'auto' for dataset '{cfg.data.dataset}' (fixed image scaling)")
    s = cfg.data.split
    if s.labeled is not None and s.labeled < 1:
        bad("data.split.labeled", "must be at least 1")
    if s.labeled_fraction is not None and not 0 < s.labeled_fraction <= 1:
        bad("data.split.labeled_fraction", "must be in (0, 1]")
    if not 0 < s.labeled_item_fraction <= 1:
        bad("data.split.labeled_item_fraction", "must be in (0, 1]")
    if s.sparse_pixels < 1:
        bad("data.split.sparse_pixels", "must be at least 1")
    if not 0 <= s.val_fraction < 1 or not 0 <= s.test_fraction < 1:
        bad("data.split.val_fraction/test_fraction", "must be in [0, 1)")
    if s.val_fraction + s.test_fraction >= 1:
        bad("data.split.val_fraction/test_fraction", f"sum to {s.val_fraction + s.test_fraction:g}: nothing would be "
            "left to train on (they must sum to less than 1)")  # fmt: skip
    if s.labeled is not None and s.labeled_fraction is not None:
        bad("data.split.labeled", "and data.split.labeled_fraction are both set: give one of them")
    if s.draw < 0:
        bad("data.split.draw", f"must be 0 or more, got {s.draw}")
    t = cfg.train
    for key in ("epochs", "batch_size", "val_every", "log_every", "checkpoint_every"):
        if getattr(t, key) < 1:
            bad(f"train.{key}", "must be at least 1")
    if t.iters_per_epoch is not None and t.iters_per_epoch < 1:
        bad("train.iters_per_epoch", "must be at least 1")
    if not (math.isfinite(t.lr) and t.lr > 0):
        bad("train.lr", f"must be a finite number > 0, got {t.lr}")
    if not (math.isfinite(t.weight_decay) and t.weight_decay >= 0):
        bad("train.weight_decay", f"must be a finite number >= 0, got {t.weight_decay}")
    if not 0 <= t.momentum < 1:
        bad("train.momentum", f"must be in [0, 1), got {t.momentum}")
    if t.grad_clip is not None and not (math.isfinite(t.grad_clip) and t.grad_clip > 0):
        bad("train.grad_clip", f"must be a finite number > 0 (or null), got {t.grad_clip}")
    if t.seed < 0 or s.seed < 0:
        bad("train.seed" if t.seed < 0 else "data.split.seed", "must be 0 or more")
    if t.num_workers < 0:
        bad("train.num_workers", f"must be 0 or more, got {t.num_workers}")
    if len(t.augment.scale) != 2 or not 0 < t.augment.scale[0] <= t.augment.scale[1] < math.inf:
        bad("train.augment.scale", "must be [min, max] with 0 < min <= max, both finite")
    for name in ("rotate_degrees", "brightness", "contrast", "noise_std"):
        value = getattr(t.augment, name)
        if not (math.isfinite(value) and value >= 0):
            bad(f"train.augment.{name}", f"must be a finite number >= 0, got {value}")
    if any(e < 1 for e in t.save_epochs):
        bad("train.save_epochs", f"epochs count from 1, got {t.save_epochs}")
    if t.augment.translate_px < 0:
        bad("train.augment.translate_px", "must be >= 0")
    _validate_strong(t.strong_augment, bad)
    if cfg.model.width < 1 or cfg.model.depth < 0:
        bad("model.width/depth", "must be positive")
    if not 0 <= cfg.model.dropout < 1:
        bad("model.dropout", f"must be a probability in [0, 1), got {cfg.model.dropout}")
    if cfg.model.depth > 10:  # a UNet doubles its width per level: 2^depth x width channels at the bottom
        bad("model.depth", f"must be at most 10, got {cfg.model.depth}")
    if cfg.model.inplane_levels and (
        cfg.model.spatial_dims != 3 or not 0 <= cfg.model.inplane_levels <= cfg.model.depth
    ):
        bad("model.inplane_levels", f"applies to 3D models, at most model.depth ({cfg.model.depth}) levels")
    if not (math.isfinite(cfg.model.alpha) and cfg.model.alpha > 0):
        bad("model.alpha", f"must be a finite number > 0, got {cfg.model.alpha}")
    if "name" not in cfg.method or not isinstance(cfg.method["name"], str):
        bad("method.name", "is required (e.g. 'supervised')")
    if cfg.data.dataset not in DATASETS:
        DATASETS.get(cfg.data.dataset, where=f"{source}: data.dataset")  # raises, naming the known ones


def _validate_strong(a: StrongAugmentConfig, bad: Callable[[str, str], None]) -> None:
    """Ranges of ``train.strong_augment`` (one-line errors through ``bad(key, why)``)."""
    key = "train.strong_augment"
    for name in ("jitter_prob", "blur_prob", "cutmix_prob"):
        if not 0 <= getattr(a, name) <= 1:
            bad(f"{key}.{name}", "must be a probability in [0, 1]")
    for name in ("brightness", "contrast"):
        if not 0 <= getattr(a, name) <= 1:
            bad(f"{key}.{name}", "must be in [0, 1] (factors drawn from U(1-x, 1+x))")
    if a.noise_std < 0:
        bad(f"{key}.noise_std", "must be at least 0")
    ranges = (("blur_sigma", False), ("cutmix_area", True), ("cutmix_aspect", False))
    for name, fraction in ranges:
        r = getattr(a, name)
        if len(r) != 2 or not 0 < r[0] <= r[1] or (fraction and r[1] > 1):
            bad(f"{key}.{name}", f"must be [min, max] with 0 < min <= max{' <= 1' if fraction else ''}")
