"""Pairwise Potts MRF post-processing of class-probability maps (the paper's MRF baseline, §5).

Given the probabilities ``P`` of a (supervised) segmenter, the label map ``y`` minimises

.. math::

    E(y) = \\sum_p -\\log(P_p(y_p) + \\varepsilon)
           + w \\sum_{(p, q) \\in \\mathcal{N}_4} c_{pq} [y_p \\neq y_q]

where ``N_4`` are the 4-neighbour pairs of a 2D grid and ``c_pq = 1`` (plain Potts, the default) or,
with ``contrast_sigma = σ``, the contrast-sensitive weight ``c_pq = exp(-||I_p - I_q||² / (2σ²))``
computed from the image ``I`` (squared differences summed over channels), so label changes are
cheap across image edges.

Solvers:

* **Two classes**: exact minimum by one s-t graph cut (PyMaxflow). The unary of class 1 is the
  source capacity and the unary of class 0 the sink capacity; a node left on the sink side pays its
  source edge, so the sink segment is class 1.
* **K > 2 classes**: ICM (iterated conditional modes) from the argmax, updating the two colours of a
  checkerboard in turn (pixels of one colour are never neighbours, so every update lowers or keeps the
  energy), until a sweep changes nothing or ``iterations`` sweeps are done. ``solver="expansion"``
  uses alpha-expansion (:func:`maxflow.fastmin.aexpansion_grid`) instead: a stronger local minimum
  (within a factor 2 of the optimum for Potts) but plain Potts only.
* **Volumes** ``[K, D, H, W]`` are processed slice by slice (a 2D MRF per slice, no edges between
  slices), matching the slice-wise segmenters; the energy of a volume is the sum over its slices.

The pairwise weight ``w`` must be chosen on validation data (:func:`tune_mrf_weight`), never on test.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from semiseg.data.records import IGNORE_INDEX

__all__ = ["MRFPostprocess", "mrf", "mrf_binary", "mrf_energy", "mrf_multiclass", "tune_mrf_weight"]

EPS = 1e-6
Array = np.ndarray | torch.Tensor


def _numpy(x: Array) -> np.ndarray:
    return x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float64)


def _unary(probs: np.ndarray, eps: float) -> np.ndarray:
    if probs.ndim != 3 or probs.shape[0] < 2:
        raise ValueError(f"probs must be [K, H, W] with K >= 2, got shape {probs.shape}")
    if not np.all(np.isfinite(probs)):
        raise ValueError("probs contain non-finite values")
    return -np.log(np.clip(probs, 0.0, None) + eps)


def _edge_weights(
    shape: tuple[int, int], image: Array | None, contrast_sigma: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """Pairwise factors ``c_pq``: horizontal ``[H, W-1]`` (p, p+right) and vertical ``[H-1, W]``."""
    h, w = shape
    if contrast_sigma is None:
        return np.ones((h, w - 1)), np.ones((h - 1, w))
    if contrast_sigma <= 0:
        raise ValueError(f"contrast_sigma must be > 0, got {contrast_sigma}")
    if image is None:
        raise ValueError("contrast_sigma needs the image")
    img = _numpy(image)
    img = img[None] if img.ndim == 2 else img
    if img.ndim != 3 or img.shape[1:] != (h, w):
        raise ValueError(f"image must be [H, W] or [C, H, W] with H, W = {shape}, got {img.shape}")
    d_h = ((img[:, :, 1:] - img[:, :, :-1]) ** 2).sum(0)
    d_v = ((img[:, 1:, :] - img[:, :-1, :]) ** 2).sum(0)
    s2 = 2.0 * contrast_sigma**2
    return np.exp(-d_h / s2), np.exp(-d_v / s2)


def mrf_energy(
    labels: Array,
    probs: Array,
    weight: float,
    image: Array | None = None,
    contrast_sigma: float | None = None,
    eps: float = EPS,
) -> float:
    """Energy ``E(y)`` of a 2D label map (see the module docstring).

    Shape:
        labels ``[H, W]``; probs ``[K, H, W]``; image ``[H, W]`` or ``[C, H, W]``.
    """
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels, np.int64)
    u = _unary(_numpy(probs), eps)
    c_h, c_v = _edge_weights(y.shape, image, contrast_sigma)
    unary = np.take_along_axis(u, y[None], 0).sum()
    pairwise = (c_h * (y[:, 1:] != y[:, :-1])).sum() + (c_v * (y[1:] != y[:-1])).sum()
    return float(unary + weight * pairwise)


def mrf_binary(
    probs: Array,
    weight: float,
    image: Array | None = None,
    contrast_sigma: float | None = None,
    eps: float = EPS,
) -> np.ndarray:
    """Exact minimum of the two-class energy by one graph cut.

    Shape:
        probs ``[2, H, W]``; image ``[H, W]`` or ``[C, H, W]``; output ``[H, W]`` int64.
    """
    import maxflow

    u = _unary(_numpy(probs), eps)
    if u.shape[0] != 2:
        raise ValueError(f"mrf_binary needs 2 classes, got {u.shape[0]}")
    if weight < 0:
        raise ValueError(f"weight must be >= 0, got {weight}")
    h, w = u.shape[1:]
    c_h, c_v = _edge_weights((h, w), image, contrast_sigma)
    g = maxflow.Graph[float]()
    nodes = g.add_grid_nodes((h, w))
    if weight > 0:
        right = np.zeros((3, 3))
        right[1, 2] = 1.0
        g.add_grid_edges(nodes, weight * np.pad(c_h, ((0, 0), (0, 1))), structure=right, symmetric=True)
        g.add_grid_edges(nodes, weight * np.pad(c_v, ((0, 1), (0, 0))), structure=right.T, symmetric=True)
    # sink segment = class 1: such a node's source edge (capacity u[1]) is cut, and vice versa
    g.add_grid_tedges(nodes, u[1], u[0])
    g.maxflow()
    return g.get_grid_segments(nodes).astype(np.int64)


def mrf_multiclass(
    probs: Array,
    weight: float,
    image: Array | None = None,
    contrast_sigma: float | None = None,
    iterations: int = 10,
    solver: str = "icm",
    eps: float = EPS,
) -> np.ndarray:
    """Local minimum of the K-class energy by ICM (default) or alpha-expansion, from the argmax.

    Args:
        probs: Class probabilities.
        weight: Pairwise weight ``w >= 0``.
        image: Image for contrast-sensitive weights (only used with ``contrast_sigma``).
        contrast_sigma: ``σ`` of the contrast weights; ``None`` for plain Potts.
        iterations: Maximum number of sweeps (ICM: both checkerboard colours; expansion: cycles).
        solver: ``"icm"`` or ``"expansion"`` (plain Potts only).
        eps: Added to the probabilities before the log.

    Shape:
        probs ``[K, H, W]``; image ``[H, W]`` or ``[C, H, W]``; output ``[H, W]`` int64.
    """
    u = _unary(_numpy(probs), eps)
    if weight < 0:
        raise ValueError(f"weight must be >= 0, got {weight}")
    k, h, w = u.shape
    labels = u.argmin(0)
    if weight == 0:
        return labels.astype(np.int64)
    if solver == "expansion":
        if contrast_sigma is not None:
            raise ValueError("solver='expansion' supports plain Potts only (contrast_sigma=None)")
        from maxflow import fastmin

        unary = np.ascontiguousarray(u.transpose(1, 2, 0))
        out = fastmin.aexpansion_grid(unary, weight * (1.0 - np.eye(k)), max_cycles=iterations, labels=labels)
        return np.asarray(out, np.int64)
    if solver != "icm":
        raise ValueError(f"solver must be 'icm' or 'expansion', got {solver!r}")
    c_h, c_v = _edge_weights((h, w), image, contrast_sigma)
    colour = np.indices((h, w)).sum(0) % 2
    for _ in range(iterations):
        changed = 0
        for c in (0, 1):
            onehot = labels[None] == np.arange(k)[:, None, None]
            agree = np.zeros((k, h, w))  # sum of c_pq over neighbours q with label k
            agree[:, :, :-1] += c_h * onehot[:, :, 1:]
            agree[:, :, 1:] += c_h * onehot[:, :, :-1]
            agree[:, :-1, :] += c_v * onehot[:, 1:, :]
            agree[:, 1:, :] += c_v * onehot[:, :-1, :]
            cost = u - weight * agree  # local energy up to a per-pixel constant
            current = np.take_along_axis(cost, labels[None], 0)[0]
            update = (colour == c) & (cost.min(0) < current - 1e-12)
            labels = np.where(update, cost.argmin(0), labels)
            changed += int(update.sum())
        if changed == 0:
            break
    return labels.astype(np.int64)


def mrf(
    probs: Array,
    weight: float,
    image: Array | None = None,
    contrast_sigma: float | None = None,
    iterations: int = 10,
    solver: str = "icm",
    eps: float = EPS,
) -> torch.Tensor:
    """MRF label map of an image or (slice by slice) a volume; graph cut for 2 classes, else ICM/expansion.

    Args:
        probs: Class probabilities (torch or numpy).
        weight: Pairwise weight ``w >= 0``; 0 gives the argmax.
        image: Same spatial size as ``probs``, with or without a leading channel axis.
        contrast_sigma, iterations, solver, eps: See :func:`mrf_multiclass`.

    Returns:
        ``int64`` label map (on ``probs``' device if it is a tensor).

    Shape:
        probs ``[K, H, W]`` or ``[K, D, H, W]`` → ``[H, W]`` or ``[D, H, W]``.
    """
    p = _numpy(probs)
    device = probs.device if isinstance(probs, torch.Tensor) else torch.device("cpu")
    if p.ndim not in (3, 4):
        raise ValueError(f"probs must be [K, H, W] or [K, D, H, W], got shape {p.shape}")
    img = None
    if contrast_sigma is not None and image is not None:
        img = _numpy(image)
        img = img[None] if img.shape == p.shape[1:] else img
        if img.shape[1:] != p.shape[1:]:
            raise ValueError(f"image shape {img.shape} does not match probs spatial shape {p.shape[1:]}")
    if weight == 0:
        _unary(p.reshape(p.shape[0], p.shape[1], -1), eps)  # validate
        return torch.from_numpy(p.argmax(0).astype(np.int64)).to(device)

    def solve(p2: np.ndarray, im2: np.ndarray | None) -> np.ndarray:
        if p2.shape[0] == 2:
            return mrf_binary(p2, weight, im2, contrast_sigma, eps)
        return mrf_multiclass(p2, weight, im2, contrast_sigma, iterations, solver, eps)

    if p.ndim == 3:
        out = solve(p, img)
    else:
        out = np.stack([solve(p[:, d], None if img is None else img[:, d]) for d in range(p.shape[1])])
    return torch.from_numpy(out).to(device)


class MRFPostprocess:
    """``postprocess(probs, record)`` for :func:`semiseg.engine.evaluate.evaluate_records`.

    With ``contrast_sigma`` set, the contrast weights use all channels of ``record.image``
    (``[C, H, W]`` or ``[C, D, H, W]`` at native resolution, the same spatial size as ``probs``).
    """

    def __init__(
        self,
        weight: float,
        contrast_sigma: float | None = None,
        iterations: int = 10,
        solver: str = "icm",
        eps: float = EPS,
    ) -> None:
        self.weight, self.contrast_sigma = float(weight), contrast_sigma
        self.iterations, self.solver, self.eps = iterations, solver, eps

    def __call__(self, probs: torch.Tensor, record: Any) -> torch.Tensor:
        image = record.image if self.contrast_sigma is not None else None
        return mrf(probs, self.weight, image, self.contrast_sigma, self.iterations, self.solver, self.eps)

    def __repr__(self) -> str:
        return f"MRFPostprocess(weight={self.weight}, contrast_sigma={self.contrast_sigma}, solver={self.solver!r})"


def tune_mrf_weight(
    probs_list: Sequence[Array],
    masks_list: Sequence[Array],
    weights: Sequence[float] = (0, 0.25, 0.5, 1, 2, 4, 8),
    metric: str = "pixel_error",
    images: Sequence[Array] | None = None,
    **mrf_kwargs: Any,
) -> tuple[float, dict[float, float]]:
    """Pick the pairwise weight with the best mean per-case score. Pass VALIDATION data only.

    Masks may be sparse: pixels equal to ``IGNORE_INDEX`` (255) are ignored. Ties go to the smaller
    weight (so 0, i.e. the argmax, wins unless the MRF actually helps).

    Args:
        probs_list: Probabilities per validation case, ``[K, H, W]`` or ``[K, D, H, W]``.
        masks_list: Matching (possibly sparse) masks, ``[H, W]`` or ``[D, H, W]``.
        weights: Candidate weights.
        metric: ``"pixel_error"`` (lower is better) or ``"dice"`` (foreground mean, higher is better).
        images: Per-case images, needed when ``contrast_sigma`` is given in ``mrf_kwargs``.
        **mrf_kwargs: Passed to :func:`mrf` (``contrast_sigma``, ``solver``, ...).

    Returns:
        ``(best_weight, {weight: mean score})``.
    """
    from semiseg.metrics import dice_per_class, pixel_error

    if metric not in ("pixel_error", "dice"):
        raise ValueError(f"metric must be 'pixel_error' or 'dice', got {metric!r}")
    if len(probs_list) != len(masks_list) or not probs_list:
        raise ValueError("probs_list and masks_list must be non-empty and of equal length")
    table: dict[float, float] = {}
    for w in sorted(weights):
        scores = []
        for i, (p, m) in enumerate(zip(probs_list, masks_list)):
            k = p.shape[0]
            pred = mrf(p, w, None if images is None else images[i], **mrf_kwargs).cpu()
            target = torch.as_tensor(np.asarray(m.cpu() if isinstance(m, torch.Tensor) else m)).long()
            if metric == "pixel_error":
                scores.append(pixel_error(pred, target, k, ignore_index=IGNORE_INDEX))
            else:
                scores.append(float(dice_per_class(pred, target, k, ignore_index=IGNORE_INDEX)[1:].mean()))
        table[float(w)] = float(np.nanmean(scores)) if not np.all(np.isnan(scores)) else float("nan")
    sign = 1.0 if metric == "pixel_error" else -1.0
    best = min(table, key=lambda w: (np.inf if np.isnan(table[w]) else sign * table[w], w))
    return best, table
