"""The decision rule of a binary segmenter: a threshold on the foreground probability chosen on the
validation split and stored with the model (the IODA paper chooses it on validation Jaccard, §5).

``train.threshold: val`` (binary data only): after training, the threshold t ∈ {0.01, …, 0.99} that
maximises the mean foreground Jaccard of the validation images is kept in ``best.pt`` (``"decision"``)
and in ``metrics.json``; validation and test are then scored with p(foreground) ≥ t, and
``semiseg evaluate`` / ``semiseg predict`` apply the checkpoint's threshold. Ties go to the value
nearest 0.5. The default ``argmax`` is t = 0.5.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from semiseg.core import IGNORE_INDEX

#: the candidate thresholds
GRID = tuple(round(0.01 * i, 2) for i in range(1, 100))


class ThresholdPostprocess:
    """``postprocess(probs, record)`` for :func:`~semiseg.engine.evaluate.evaluate_records`: foreground
    where p(class 1) ≥ ``threshold``.

    Examples:
        >>> ThresholdPostprocess(0.3)(torch.tensor([[0.8, 0.6], [0.2, 0.4]]), None).tolist()
        [0, 1]
    """

    def __init__(self, threshold: float):
        self.threshold = float(threshold)

    def __call__(self, probs: torch.Tensor, record: Any = None) -> torch.Tensor:
        return (probs[1] >= self.threshold).long()

    def __repr__(self) -> str:
        return f"ThresholdPostprocess({self.threshold})"


def foreground_jaccard(pred: torch.Tensor, mask: torch.Tensor) -> float:
    """Jaccard of the foreground (class 1) over the labeled pixels; 1 when both are empty."""
    valid = mask != IGNORE_INDEX
    p, t = (pred == 1) & valid, (mask == 1) & valid
    union = int((p | t).sum())
    return 1.0 if union == 0 else int((p & t).sum()) / union


def tune_threshold(probs: list[torch.Tensor], masks: list[np.ndarray]) -> tuple[float, dict[float, float]]:
    """The threshold of :data:`GRID` with the best mean foreground Jaccard over the given (validation)
    images; ties go to the value nearest 0.5.

    Args:
        probs: per image ``[2, *S]`` class probabilities (at the mask's resolution).
        masks: per image ``[*S]`` class indices.

    Returns:
        ``(threshold, {threshold: mean Jaccard})``.
    """
    table = {}
    for t in GRID:
        table[t] = float(np.mean([foreground_jaccard((p[1] >= t).long(), torch.as_tensor(np.asarray(m)))
                                  for p, m in zip(probs, masks)]))  # fmt: skip
    best = max(table.values())
    chosen = min((t for t, v in table.items() if v == best), key=lambda t: abs(t - 0.5))
    return chosen, table
