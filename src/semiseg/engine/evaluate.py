"""Inference at native resolution and evaluation of records (2D images or 3D volumes).

An image is resized to the training size, segmented, and its class probabilities are resized
back (bilinear) to the record's own resolution before the argmax, so metrics are computed
against the original masks. A volume ``[C, D, H, W]`` is segmented slice by slice by a 2D model,
or whole or by sliding windows by a 3D one (:mod:`semiseg.engine.inference`), and scored as one
case (per-volume metrics). HD95 and ASD are in pixels (``hd95_px``, ``asd_px``), or in
millimetres (``hd95_mm``, ``asd_mm``) for records with a ``spacing``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from semiseg.data.records import Record, record_slices
from semiseg.data.views import resize_image
from semiseg.ops import class_map

FAST_METRICS = ("dice", "jaccard", "pixel_error", "mse")
ALL_METRICS = ("dice", "jaccard", "pixel_error", "mse", "rad", "hd95", "asd")


@torch.no_grad()
def predict_slices(
    predict: Callable[[torch.Tensor], torch.Tensor],
    slices: list[torch.Tensor],
    image_size: Sequence[int],
    device: torch.device,
    batch_size: int = 32,
) -> list[torch.Tensor]:
    """Class probabilities for 2D images of any sizes, each at its own resolution (a classifier's: one
    vector per image).

    Shape:
        each slice ``[C, H_i, W_i]`` → each output ``[K, H_i, W_i]`` (float32, CPU); ``[K]`` for a
        classifier (``predict`` gives ``[B, K]``).
    """
    out: list[torch.Tensor] = []
    for start in range(0, len(slices), batch_size):
        chunk = slices[start : start + batch_size]
        x = torch.cat([resize_image(s[None].float(), tuple(image_size)) for s in chunk]).to(device)
        probs = predict(x).float().softmax(1).cpu()
        for p, s in zip(probs, chunk):
            if p.ndim > 1 and tuple(p.shape[-2:]) != tuple(s.shape[-2:]):
                p = F.interpolate(p[None], size=tuple(s.shape[-2:]), mode="bilinear", align_corners=False)[0]
            out.append(p)
    return out


def predict_records(
    predict: Callable[[torch.Tensor], torch.Tensor],
    records: list[Record],
    image_size: Sequence[int],
    device: torch.device,
    batch_size: int = 32,
) -> list[torch.Tensor]:
    """Probabilities per record: ``[K, H, W]`` for images, ``[K, D, H, W]`` for volumes.

    A 2D ``image_size`` ``[H, W]``: images, and volumes slice by slice, resized to it. A 3D
    ``image_size`` ``[D, H, W]`` (a 3D model; ``-1`` keeps an axis): each volume resized to its
    training grid, segmented whole by ``predict`` (e.g. sliding windows,
    :func:`semiseg.engine.inference.build_predict`) and its probabilities resized back.
    """
    if len(image_size) == 3:
        return [predict_volume(predict, r, image_size, device) for r in records]
    flat: list[torch.Tensor] = []
    counts = []
    for r in records:
        s = record_slices(r)
        flat.extend(s)
        counts.append(len(s))
    probs = predict_slices(predict, flat, image_size, device, batch_size)
    out, i = [], 0
    for r, n in zip(records, counts):
        chunk = probs[i : i + n]
        i += n
        out.append(chunk[0] if r.ndim == 3 else torch.stack(chunk, dim=1))
    return out


@torch.no_grad()
def predict_volume(
    predict: Callable[[torch.Tensor], torch.Tensor],
    record: Record,
    image_size: Sequence[int],
    device: torch.device,
) -> torch.Tensor:
    """Class probabilities ``[K, D, H, W]`` (float32, CPU) of a volume record ``[C, D, H, W]`` by a 3D
    model on the training grid ``image_size`` (:func:`~semiseg.data.views.training_grid`), resized
    back to the record's own shape (in-plane per slice when the depth is kept, else trilinear)."""
    from semiseg.data.views import record_grid

    if record.ndim != 4:
        raise ValueError(
            f"{record.source or record.id}: a 3D model needs volumes [C, D, H, W], got {record.shape}"
        )
    native = tuple(record.shape[1:])
    x = torch.from_numpy(np.asarray(record.image))[None].float()
    target = getattr(predict, "target_spacing", None)  # set by inference.build_predict from the config
    grid = record_grid(record, image_size, target)
    probs = predict(resize_image(x, grid).to(device)).float().softmax(1).cpu()
    if grid != native:
        if grid[0] == native[0]:
            k, d = probs.shape[1:3]
            flat = probs.reshape(1, k * d, *grid[1:])
            probs = F.interpolate(flat, size=native[1:], mode="bilinear", align_corners=False).reshape(
                1, k, *native
            )
        else:
            probs = F.interpolate(probs, size=native, mode="trilinear", align_corners=False)
    return probs[0]


def evaluate_records(
    predict: Callable[[torch.Tensor], torch.Tensor],
    records: list[Record],
    *,
    num_classes: int,
    image_size: Sequence[int],
    device: torch.device,
    metrics: Sequence[str] = FAST_METRICS,
    postprocess: Callable[[torch.Tensor, Record], torch.Tensor] | None = None,
    class_names: list[str] | None = None,
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Score ``records`` (all with masks). Returns the mean of every metric and the per-case values.

    ``postprocess(probs, record) -> label map`` replaces the argmax (e.g. an MRF).
    """
    from semiseg.metrics import aggregate, confusion_matrix, evaluate_case, pooled_dice

    cases = []
    pooled = torch.zeros(num_classes, num_classes, dtype=torch.long)
    # predict in chunks of records so memory stays bounded on large test sets
    step = 64 if all(r.ndim == 3 for r in records) else 1  # a volume's probabilities can be GBs
    for start in range(0, len(records), step):
        chunk = records[start : start + step]
        for r, p in zip(chunk, predict_records(predict, chunk, image_size, device)):
            pred = postprocess(p, r) if postprocess is not None else class_map(p, 0)
            mask = torch.from_numpy(np.asarray(r.mask))
            label_metrics = tuple(m for m in metrics if m != "mse")
            case = evaluate_case(pred, mask, num_classes, metrics=label_metrics, spacing=r.spacing)
            if "mse" in metrics:
                case["mse"] = probability_mse(p, mask)
            case["id"] = r.id
            cases.append(case)
            if "dice" in metrics:
                pooled += confusion_matrix(pred, mask, num_classes)
    summary = aggregate([{k: v for k, v in c.items() if k != "id"} for c in cases])
    means = {k: v["mean"] for k, v in summary.items()}
    if "dice" in metrics:  # one Dice over every pixel of the split (not a per-case mean)
        means.update(pooled_dice(pooled))
    return means, cases


def probability_mse(probs: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean squared error between the class probabilities and the one-hot truth, over the labeled
    pixels and the classes (binary: (p₁ − y)², the IODA paper's criterion; K classes: the Brier score
    divided by K).

    Shape:
        probs ``[K, *S]``, mask ``[*S]`` (``IGNORE_INDEX`` = unlabeled) → a float.

    Examples:
        >>> probability_mse(torch.full((2, 2, 2), 0.5), torch.zeros(2, 2, dtype=torch.long))
        0.25
    """
    from semiseg.core import IGNORE_INDEX

    valid = mask != IGNORE_INDEX
    if not valid.any():
        return float("nan")
    one_hot = torch.nn.functional.one_hot(mask[valid], probs.shape[0]).to(probs.dtype)  # [N, K]
    return float((probs.movedim(0, -1)[valid] - one_hot).pow(2).mean())


@torch.no_grad()
def evaluate_labels(
    predict: Callable[[torch.Tensor], torch.Tensor],
    records: list[Record],
    *,
    image_size: Sequence[int],
    device: torch.device,
    batch_size: int = 256,
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Classification: the share of ``records`` (each with its ``label``) whose arg-max class is right.

    ``predict`` maps images resized to ``image_size`` to class scores ``[B, K]``. Returns
    ``({"accuracy", "error"}, per-case {"id", "predicted", "correct"})``, as fractions.
    """
    cases: list[dict] = []
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        images = torch.stack([resize_image(torch.from_numpy(r.image), tuple(image_size)) for r in chunk])
        predicted = predict(images.to(device)).argmax(1).cpu()
        for r, p in zip(chunk, predicted.tolist()):
            cases.append({"id": r.id, "predicted": p, "correct": float(p == int(r.label))})
    accuracy = sum(c["correct"] for c in cases) / max(1, len(cases))
    return {"accuracy": accuracy, "error": 1.0 - accuracy}, cases


def evaluate_split(
    predict: Callable[[torch.Tensor], torch.Tensor],
    records: list[Record],
    *,
    task: str,
    num_classes: int,
    image_size: Sequence[int],
    device: torch.device,
    metrics: Sequence[str] = FAST_METRICS,
    postprocess: Callable[[torch.Tensor, Record], torch.Tensor] | None = None,
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """:func:`evaluate_records` (``task`` "segment") or :func:`evaluate_labels` ("classify")."""
    if task == "classify":
        return evaluate_labels(predict, records, image_size=image_size, device=device)
    return evaluate_records(
        predict,
        records,
        num_classes=num_classes,
        image_size=image_size,
        device=device,
        metrics=metrics,
        postprocess=postprocess,
    )


def metric_keys(num_classes: int, metrics: Sequence[str] = FAST_METRICS, task: str = "segment") -> list[str]:
    """Keys :func:`evaluate_split` can report for ``metrics`` (HD95 as ``hd95_px`` and, for records
    with a pixel spacing, ``hd95_mm``; Dice also as ``dice_pooled``, over all pixels of the split;
    ``accuracy`` and ``error`` for classification)."""
    if task == "classify":
        return ["accuracy", "error"]
    keys = []
    for m in metrics:
        if m in ("pixel_error", "mse"):
            keys.append(m)
            continue
        names = {
            "hd95": ("hd95_px", "hd95_mm"),
            "asd": ("asd_px", "asd_mm"),
            "dice": ("dice", "dice_pooled"),
        }.get(m, (m,))
        for name in names:
            keys += [f"{name}/{c}" for c in range(num_classes)] + [f"{name}/mean"]
    return keys


def tune_mrf_on_validation(
    predict: Callable[[torch.Tensor], torch.Tensor],
    records: list[Record],
    image_size: Sequence[int],
    device: torch.device,
    contrast_sigma: float | None = None,
) -> tuple[float, dict[float, float]]:
    """The MRF pairwise weight chosen on ``records`` (pass the VALIDATION split): the one helper the
    CLI (``evaluate --postprocess mrf``) and the benchmark's MRF rows share.

    Returns:
        ``(weight, {candidate weight: mean validation pixel error})``.
    """
    from semiseg.postprocess import tune_mrf_weight

    with torch.no_grad():
        probs = predict_records(predict, records, image_size, device)
    return tune_mrf_weight(
        probs, [r.mask for r in records], images=[r.image for r in records], contrast_sigma=contrast_sigma
    )
