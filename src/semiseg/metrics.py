"""Segmentation metrics on integer label maps: per class, per case, and over a set of cases.

A *case* is one 2D image ``[H, W]`` or one 3D volume ``[D, H, W]``; ``pred`` and ``target`` are
integer class maps of the same shape (numpy arrays or torch tensors). Dice, Jaccard, pixel error and
relative area difference are derived from one confusion matrix (a single ``torch.bincount``); HD95 is
:func:`monai.metrics.compute_hausdorff_distance` on one-hot maps and the average surface distance
(``asd``) :func:`monai.metrics.compute_average_surface_distance`. MONAI is imported only when a
distance is computed, so importing this module is cheap.

Conventions:

* **Ignored pixels.** Target pixels equal to ``ignore_index`` (default :data:`IGNORE_INDEX` = 255)
  are excluded from every metric, whatever ``pred`` says there. For HD95 they are removed from both
  one-hot maps; the cut-out region then forms part of the prediction's boundary, so HD95 is only
  meaningful on (almost) densely labeled targets.
* **Empty classes in Dice / Jaccard.** A class absent from both ``pred`` and ``target`` scores 1
  (nothing to find, nothing found); absent from exactly one it scores 0.
* **Empty classes in HD95.** 0 when the class is absent from both; ``nan`` when it is absent from
  exactly one (the distance is undefined; MONAI would give ``inf``/``nan`` with a warning).
* **Average surface distance** (``asd``): the mean distance from each surface voxel of the
  prediction to the target's surface (one-directional, as medpy's ``asd`` that the semi-supervised
  papers on ACDC and LA report). Empty classes as HD95.
* **Distance units.** HD95 and ASD are in pixels (voxels) unless a pixel spacing is given, and the
  key says which: :func:`evaluate_case` reports ``hd95_px/...`` / ``asd_px/...`` without
  ``spacing`` and ``hd95_mm/...`` / ``asd_mm/...`` with it (``spacing`` = physical size of a pixel
  along each axis, in millimetres, e.g. :attr:`semiseg.data.records.Record.spacing`). The requested
  metric is ``"hd95"`` / ``"asd"`` either way.
* **Relative area difference** (``rad``) is signed: ``(|pred_k| - |target_k|) / |target_k|``,
  positive for over-segmentation, ``-1`` when the class is missed entirely. It is 0 when the class
  is absent from both, ``nan`` when it is absent from the target but predicted.
* **Pixel error** is the fraction of non-ignored pixels whose predicted class is wrong; ``nan``
  when every pixel is ignored.
* **Means within a case** (``dice/mean`` …) average the foreground classes ``1..K-1`` (all classes
  with ``include_background=True``). Dice and Jaccard use a plain mean; HD95 and RAD, which can be
  ``nan``, use a nan-mean (``nan`` only if every class is undefined). ``rad/mean`` averages signed
  values, so over- and under-segmentation of different classes cancel.
* **Over cases**, :func:`aggregate` reports for each key the mean and the *population* standard
  deviation (``ddof=0``) of the defined values, ``n`` (how many were defined) and ``n_nan`` (how
  many were ``nan``, e.g. cases where HD95 of a class is undefined).

Example:
    >>> per_case = [evaluate_case(p, t, num_classes=4) for p, t in pairs]
    >>> table = aggregate(per_case)
    >>> table["dice/mean"]["mean"], table["hd95_px/3"]["n_nan"]
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from semiseg.core import IGNORE_INDEX

__all__ = [
    "IGNORE_INDEX",
    "METRICS",
    "aggregate",
    "confusion_matrix",
    "dice_per_class",
    "evaluate_case",
    "hd95_key",
    "hd95_per_class",
    "jaccard_per_class",
    "pixel_error",
    "relative_area_difference",
]

#: Metric names understood by :func:`evaluate_case`.
METRICS = ("dice", "jaccard", "pixel_error", "rad", "hd95", "asd")
#: the metrics that are distances (their keys carry the unit)
DISTANCES = ("hd95", "asd")


def hd95_key(spacing: float | Sequence[float] | None, metric: str = "hd95") -> str:
    """Key prefix of a distance metric (HD95, ASD) in :func:`evaluate_case`'s results: ``"hd95_mm"``
    with a pixel spacing (millimetres), ``"hd95_px"`` without (distances in pixels / voxels)."""
    return f"{metric}_px" if spacing is None else f"{metric}_mm"


LabelMap = np.ndarray | torch.Tensor


def _as_label_tensor(x: LabelMap, name: str) -> torch.Tensor:
    """Converts a numpy array or tensor of class indices to an ``int64`` tensor."""
    if isinstance(x, np.ndarray):
        x = torch.as_tensor(np.ascontiguousarray(x))
    elif not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")
    if x.is_floating_point() or x.is_complex():
        if x.is_complex() or not bool(torch.all(x == torch.round(x))):
            raise ValueError(f"{name} must hold integer class indices, got non-integer {x.dtype} values")
    return x.detach().long()


def _check_inputs(
    pred: LabelMap, target: LabelMap, num_classes: int, ignore_index: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Converts and validates a ``(pred, target)`` pair; returns ``int64`` tensors on pred's device."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if ignore_index is not None and 0 <= ignore_index < num_classes:
        raise ValueError(f"ignore_index={ignore_index} is a valid class index for num_classes={num_classes}")
    p = _as_label_tensor(pred, "pred")
    t = _as_label_tensor(target, "target").to(p.device)
    if p.shape != t.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(p.shape)} vs {tuple(t.shape)}")
    if p.numel() and (int(p.min()) < 0 or int(p.max()) >= num_classes):
        raise ValueError(
            f"pred values must be in [0, {num_classes}), got range [{int(p.min())}, {int(p.max())}]"
        )
    labeled = t if ignore_index is None else t[t != ignore_index]
    if labeled.numel() and (int(labeled.min()) < 0 or int(labeled.max()) >= num_classes):
        allowed = f"[0, {num_classes})" + ("" if ignore_index is None else f" or {ignore_index}")
        raise ValueError(
            f"target values must be in {allowed}, got range [{int(labeled.min())}, {int(labeled.max())}]"
        )
    return p, t


def confusion_matrix(
    pred: LabelMap, target: LabelMap, num_classes: int, ignore_index: int | None = IGNORE_INDEX
) -> torch.Tensor:
    """Counts pixels per (true class, predicted class), skipping ignored target pixels.

    Rows are the target class and columns the predicted class, as in
    ``sklearn.metrics.confusion_matrix``. Any number of dimensions is accepted (a batch is pooled).

    Args:
        pred: Predicted class indices in ``[0, num_classes)``.
        target: True class indices in ``[0, num_classes)`` or ``ignore_index``.
        num_classes: Number of classes ``K`` including background.
        ignore_index: Target value of unlabeled pixels; ``None`` if every pixel is labeled.

    Returns:
        ``int64`` counts, ``cm[i, j]`` = number of pixels of class ``i`` predicted as ``j``.

    Shape:
        - pred, target: any shape ``[*]``, identical.
        - Output: ``[K, K]``.

    Raises:
        ValueError: On a shape mismatch, out-of-range values, or non-integer inputs.
    """
    p, t = _check_inputs(pred, target, num_classes, ignore_index)
    return _confusion(p, t, num_classes, ignore_index)


def _confusion(p: torch.Tensor, t: torch.Tensor, num_classes: int, ignore_index: int | None) -> torch.Tensor:
    """:func:`confusion_matrix` on already validated ``int64`` tensors."""
    if ignore_index is not None:
        keep = t != ignore_index
        p, t = p[keep], t[keep]
    counts = torch.bincount((t * num_classes + p).reshape(-1), minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def _overlaps(cm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """True positives, predicted sizes and target sizes per class from a confusion matrix (float64)."""
    cm = cm.double()
    return torch.diagonal(cm), cm.sum(dim=0), cm.sum(dim=1)


def _dice_from_cm(cm: torch.Tensor) -> torch.Tensor:
    tp, pred_size, target_size = _overlaps(cm)
    denom = pred_size + target_size
    return torch.where(denom > 0, 2 * tp / denom.clamp(min=1), torch.ones_like(denom))


def _jaccard_from_cm(cm: torch.Tensor) -> torch.Tensor:
    tp, pred_size, target_size = _overlaps(cm)
    union = pred_size + target_size - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.ones_like(union))


def _rad_from_cm(cm: torch.Tensor) -> torch.Tensor:
    _, pred_size, target_size = _overlaps(cm)
    rad = (pred_size - target_size) / target_size.clamp(min=1)
    undefined = torch.full_like(rad, math.nan)
    return torch.where(target_size > 0, rad, torch.where(pred_size > 0, undefined, torch.zeros_like(rad)))


def _pixel_error_from_cm(cm: torch.Tensor) -> float:
    total = int(cm.sum())
    if total == 0:
        return math.nan
    return 1.0 - int(torch.diagonal(cm).sum()) / total


def dice_per_class(
    pred: LabelMap, target: LabelMap, num_classes: int, ignore_index: int | None = IGNORE_INDEX
) -> torch.Tensor:
    """Dice ``2|P∩T| / (|P|+|T|)`` of every class, background included.

    A class absent from both ``pred`` and ``target`` scores 1, absent from exactly one scores 0.

    Args:
        pred: Predicted class indices in ``[0, num_classes)``.
        target: True class indices; pixels equal to ``ignore_index`` are excluded.
        num_classes: Number of classes ``K`` including background.
        ignore_index: Target value of unlabeled pixels; ``None`` if every pixel is labeled.

    Returns:
        ``float64`` Dice per class.

    Shape:
        - pred, target: ``[H, W]`` or ``[D, H, W]`` (any identical shape is accepted and pooled).
        - Output: ``[K]``.
    """
    return _dice_from_cm(confusion_matrix(pred, target, num_classes, ignore_index))


def jaccard_per_class(
    pred: LabelMap, target: LabelMap, num_classes: int, ignore_index: int | None = IGNORE_INDEX
) -> torch.Tensor:
    """Jaccard index (IoU) ``|P∩T| / |P∪T|`` of every class, background included.

    Same empty-class convention as :func:`dice_per_class` (1 if absent from both, 0 if from one).

    Args:
        pred: Predicted class indices in ``[0, num_classes)``.
        target: True class indices; pixels equal to ``ignore_index`` are excluded.
        num_classes: Number of classes ``K`` including background.
        ignore_index: Target value of unlabeled pixels; ``None`` if every pixel is labeled.

    Returns:
        ``float64`` IoU per class.

    Shape:
        - pred, target: ``[H, W]`` or ``[D, H, W]`` (any identical shape is accepted and pooled).
        - Output: ``[K]``.
    """
    return _jaccard_from_cm(confusion_matrix(pred, target, num_classes, ignore_index))


def relative_area_difference(
    pred: LabelMap, target: LabelMap, num_classes: int, ignore_index: int | None = IGNORE_INDEX
) -> torch.Tensor:
    """Signed relative area (volume) difference ``(|P_k| - |T_k|) / |T_k|`` of every class.

    Positive means the class is over-segmented, ``-1`` that it is missed entirely. 0 when the class
    is absent from both, ``nan`` when it is absent from the target but predicted. Sizes count
    non-ignored pixels only.

    Args:
        pred: Predicted class indices in ``[0, num_classes)``.
        target: True class indices; pixels equal to ``ignore_index`` are excluded.
        num_classes: Number of classes ``K`` including background.
        ignore_index: Target value of unlabeled pixels; ``None`` if every pixel is labeled.

    Returns:
        ``float64`` signed relative difference per class.

    Shape:
        - pred, target: ``[H, W]`` or ``[D, H, W]`` (any identical shape is accepted and pooled).
        - Output: ``[K]``.
    """
    return _rad_from_cm(confusion_matrix(pred, target, num_classes, ignore_index))


def pixel_error(
    pred: LabelMap, target: LabelMap, num_classes: int, ignore_index: int | None = IGNORE_INDEX
) -> float:
    """Fraction of non-ignored pixels whose predicted class differs from the target.

    Args:
        pred: Predicted class indices in ``[0, num_classes)``.
        target: True class indices; pixels equal to ``ignore_index`` are excluded.
        num_classes: Number of classes ``K`` including background.
        ignore_index: Target value of unlabeled pixels; ``None`` if every pixel is labeled.

    Returns:
        Error in ``[0, 1]``, or ``nan`` if every pixel is ignored.

    Shape:
        - pred, target: any identical shape.
    """
    return _pixel_error_from_cm(confusion_matrix(pred, target, num_classes, ignore_index))


def _hd95(
    p: torch.Tensor,
    t: torch.Tensor,
    classes: Sequence[int],
    spacing: float | Sequence[float] | None,
    ignore_index: int | None,
    metric: str = "hd95",
) -> torch.Tensor:
    """HD95 (or, with ``metric="asd"``, the average surface distance) of the given classes on
    validated label maps; see :func:`hd95_per_class`."""
    if p.ndim not in (2, 3):
        raise ValueError(f"{metric} needs a 2D [H, W] or 3D [D, H, W] case, got shape {tuple(p.shape)}")
    if isinstance(spacing, numbers.Real):
        spacing = float(spacing)
    elif spacing is not None:
        spacing = [float(s) for s in spacing]
        if len(spacing) != p.ndim:
            raise ValueError(f"spacing needs one value per axis ({p.ndim}), got {len(spacing)}")
    keep = torch.ones_like(t, dtype=torch.bool) if ignore_index is None else t != ignore_index
    out = torch.zeros(len(classes), dtype=torch.float64)
    both: list[int] = []
    masks_p, masks_t = [], []
    for i, k in enumerate(classes):
        mp, mt = (p == k) & keep, t == k
        has_p, has_t = bool(mp.any()), bool(mt.any())
        if has_p and has_t:
            both.append(i)
            masks_p.append(mp)
            masks_t.append(mt)
        elif has_p != has_t:
            out[i] = math.nan
    if both:
        from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

        pair = torch.stack(masks_p)[None].float(), torch.stack(masks_t)[None].float()
        with warnings.catch_warnings():
            # MONAI 1.5+ passes a deprecated argument to itself; the warning is not ours to act on.
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
            if metric == "asd":
                d = compute_average_surface_distance(*pair, include_background=True, symmetric=False,
                                                     spacing=spacing)  # fmt: skip
            else:
                d = compute_hausdorff_distance(*pair, include_background=True, percentile=95, spacing=spacing)
        out[both] = d[0].double().cpu()
    return out


def hd95_per_class(
    pred: LabelMap,
    target: LabelMap,
    num_classes: int,
    spacing: float | Sequence[float] | None = None,
    ignore_index: int | None = IGNORE_INDEX,
) -> torch.Tensor:
    """95th-percentile symmetric Hausdorff distance between class boundaries, every class.

    Computed by :func:`monai.metrics.compute_hausdorff_distance` (``percentile=95``, Euclidean) on
    one-hot maps. 0 when the class is absent from both maps, ``nan`` when absent from exactly one.
    Ignored target pixels are removed from both maps (see the module docstring for the caveat).

    Args:
        pred: Predicted class indices in ``[0, num_classes)``.
        target: True class indices; pixels equal to ``ignore_index`` are excluded.
        num_classes: Number of classes ``K`` including background.
        spacing: Pixel/voxel size (e.g. millimetres), one number (isotropic) or one per axis in
            the order of the array axes; ``None`` means 1 (distances in pixels).
        ignore_index: Target value of unlabeled pixels; ``None`` if every pixel is labeled.

    Returns:
        ``float64`` HD95 per class, in the units of ``spacing``.

    Shape:
        - pred, target: ``[H, W]`` or ``[D, H, W]``.
        - Output: ``[K]``.
    """
    p, t = _check_inputs(pred, target, num_classes, ignore_index)
    return _hd95(p, t, range(num_classes), spacing, ignore_index)


def _nanmean(values: torch.Tensor) -> float:
    finite = values[~torch.isnan(values)]
    return float(finite.mean()) if finite.numel() else math.nan


def evaluate_case(
    pred: LabelMap,
    target: LabelMap,
    num_classes: int,
    *,
    metrics: Sequence[str] = METRICS,
    include_background: bool = False,
    spacing: float | Sequence[float] | None = None,
    ignore_index: int | None = IGNORE_INDEX,
    class_names: Sequence[str] | None = None,
) -> dict[str, float]:
    """All requested metrics of one case as a flat dict, ready for a CSV row or :func:`aggregate`.

    Keys are ``"<metric>/<class>"`` for each reported class, ``"<metric>/mean"`` over them, and
    ``"pixel_error"`` (which always counts every class); HD95's ``<metric>`` carries its unit,
    ``hd95_px`` or ``hd95_mm`` (:func:`hd95_key`). Reported classes are ``1..K-1``, or
    ``0..K-1`` with ``include_background``. ``<class>`` is the class index, or
    ``class_names[index]`` when names are given, e.g. ``{"dice/1": 0.91, "dice/LV": ...}``.

    Args:
        pred: Predicted class indices in ``[0, num_classes)``.
        target: True class indices; pixels equal to ``ignore_index`` are excluded.
        num_classes: Number of classes ``K`` including background.
        metrics: Any of ``"dice"``, ``"jaccard"``, ``"pixel_error"``, ``"rad"``, ``"hd95"``, ``"asd"``.
        include_background: Report class 0 and include it in the means.
        spacing: Pixel/voxel size in millimetres for HD95 and ASD (see :func:`hd95_per_class`);
            they are reported as ``hd95_mm/...`` with it and as ``hd95_px/...`` (pixels) without.
        ignore_index: Target value of unlabeled pixels; ``None`` if every pixel is labeled.
        class_names: ``K`` names (background first) used in keys instead of indices.

    Returns:
        Metric name to value; ``nan`` where a value is undefined (see the module docstring).

    Shape:
        - pred, target: ``[H, W]`` or ``[D, H, W]``.
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; choose from {list(METRICS)}")
    if class_names is None:
        names = [str(k) for k in range(num_classes)]
    else:
        names = [str(n) for n in class_names]
        if len(names) != num_classes:
            raise ValueError(f"class_names has {len(names)} names for num_classes={num_classes}")
        if len(set(names)) != len(names) or "mean" in names:
            raise ValueError(f"class_names must be distinct and not 'mean', got {names}")
    first = 0 if include_background else 1
    classes = list(range(first, num_classes))

    p, t = _check_inputs(pred, target, num_classes, ignore_index)
    cm = _confusion(p, t, num_classes, ignore_index)
    per_class: dict[str, torch.Tensor] = {}
    if "dice" in metrics:
        per_class["dice"] = _dice_from_cm(cm)[first:]
    if "jaccard" in metrics:
        per_class["jaccard"] = _jaccard_from_cm(cm)[first:]
    if "rad" in metrics:
        per_class["rad"] = _rad_from_cm(cm)[first:]
    for metric in DISTANCES:
        if metric in metrics:
            per_class[metric] = _hd95(p, t, classes, spacing, ignore_index, metric)

    result: dict[str, float] = {}
    for metric in metrics:
        if metric == "pixel_error":
            result["pixel_error"] = _pixel_error_from_cm(cm)
            continue
        values = per_class[metric]
        key = hd95_key(spacing, metric) if metric in DISTANCES else metric
        for k, v in zip(classes, values.tolist()):
            result[f"{key}/{names[k]}"] = v
        if metric in ("dice", "jaccard"):
            result[f"{key}/mean"] = float(values.mean()) if values.numel() else math.nan
        else:
            result[f"{key}/mean"] = _nanmean(values)
    return result


def pooled_dice(cm: torch.Tensor) -> dict[str, float]:
    """Dice per class from a confusion matrix summed over many cases (every pixel of the split
    counts once, so large and small objects weigh by their size; the presence/absence translation
    paper's "global" Dice), and ``dice_pooled/mean`` over the foreground classes ``1..K-1``.

    Examples:
        >>> cm = confusion_matrix(torch.tensor([0, 1, 1, 0]), torch.tensor([0, 1, 0, 1]), 2)
        >>> pooled_dice(cm)["dice_pooled/1"]
        0.5
    """
    dice = _dice_from_cm(cm)
    out = {f"dice_pooled/{c}": float(dice[c]) for c in range(len(dice))}
    out["dice_pooled/mean"] = float(dice[1:].mean()) if len(dice) > 1 else float(dice[0])
    return out


def undefined_counts(cases: Sequence[dict[str, object]]) -> dict[str, int]:
    """For each metric that is undefined (``nan``) in some of ``cases``, how many: the cases its mean
    leaves out (e.g. HD95 of a class that one of prediction and truth lacks). Non-numeric values
    (a case's ``id``) are skipped.

    Examples:
        >>> undefined_counts([{"id": "a", "hd95_px/1": 2.0}, {"id": "b", "hd95_px/1": float("nan")}])
        {'hd95_px/1': 1}
    """
    numeric = [{k: v for k, v in c.items() if isinstance(v, numbers.Real)} for c in cases]
    return {k: int(v["n_nan"]) for k, v in aggregate(numeric).items() if v["n_nan"]}


def aggregate(cases: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Summarises per-case metric dicts (e.g. from :func:`evaluate_case`) key by key.

    ``nan`` values (undefined metrics) are left out of the statistics and counted instead. Keys
    missing from some cases are summarised over the cases that have them.

    Args:
        cases: One flat ``{key: value}`` dict per case.

    Returns:
        For each key, in first-seen order: ``{"mean", "std", "n", "n_nan"}`` where ``std`` is the
        population standard deviation (``ddof=0``), ``n`` the number of defined values and
        ``n_nan`` the number of ``nan`` ones. ``mean`` and ``std`` are ``nan`` if ``n == 0``.
    """
    columns: dict[str, list[float]] = {}
    for case in cases:
        for key, value in case.items():
            columns.setdefault(key, []).append(float(value))
    summary: dict[str, dict[str, float]] = {}
    for key, values in columns.items():
        arr = np.asarray(values, dtype=np.float64)
        defined = arr[~np.isnan(arr)]
        n = int(defined.size)
        summary[key] = {
            "mean": float(defined.mean()) if n else math.nan,
            "std": float(defined.std(ddof=0)) if n else math.nan,
            "n": n,
            "n_nan": int(arr.size - n),
        }
    return summary
