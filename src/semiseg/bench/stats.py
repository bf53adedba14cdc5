"""Statistics of a table row over its runs, and what a row can support.

A row of one run has no spread estimate: its ``std`` is ``None`` in the results (not 0) and the
rendered table shows ``n=1`` with a mark, so the row is not read as supporting a claim.
"""

from __future__ import annotations

import math
from typing import Any

#: runs a row needs before its mean and spread can back a comparison
MIN_RUNS_FOR_CLAIM = 2


def sample_std(values: list[float]) -> float | None:
    """Sample standard deviation (ddof = 1); ``None`` for fewer than two values.

    Examples:
        >>> sample_std([1.0, 3.0])
        1.4142135623730951
        >>> sample_std([2.0]) is None
        True
    """
    if len(values) < 2:
        return None
    m = sum(values) / len(values)
    return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))


def summarise(values: list[float], digits: int = 3) -> dict[str, Any]:
    """``{"mean", "std", "n_runs"}`` of a row's run values (``std`` None for a single run)."""
    if not values:
        raise ValueError("summarise: a row needs at least one run")
    std = sample_std(values)
    return {
        "mean": round(sum(values) / len(values), digits),
        "std": None if std is None else round(std, digits),
        "n_runs": len(values),
    }


def supports_claim(row: dict[str, Any]) -> bool:
    """Whether a results row has enough runs to back a comparison (``n_runs`` ≥ :data:`MIN_RUNS_FOR_CLAIM`)."""
    return int(row["n_runs"]) >= MIN_RUNS_FOR_CLAIM


def beats(a: dict[str, Any], b: dict[str, Any], lower_is_better: bool = False) -> bool | None:
    """Whether row ``a`` beats row ``b`` beyond one standard deviation: the difference of the means
    (in the better direction) exceeds the larger of the two rows' stds. ``None`` when either row has
    fewer than :data:`MIN_RUNS_FOR_CLAIM` runs (no spread, no claim).

    Examples:
        >>> beats({"mean": 60.0, "std": 1.0, "n_runs": 3}, {"mean": 57.0, "std": 2.0, "n_runs": 3})
        True
        >>> beats({"mean": 60.0, "std": 1.0, "n_runs": 3}, {"mean": 59.5, "std": 2.0, "n_runs": 3})
        False
        >>> beats({"mean": 9.0, "std": 0.2, "n_runs": 3}, {"mean": 9.8, "std": 0.3, "n_runs": 3}, True)
        True
        >>> beats({"mean": 60.0, "std": None, "n_runs": 1}, {"mean": 50.0, "std": 1.0, "n_runs": 3}) is None
        True
    """
    if min(a["n_runs"], b["n_runs"]) < MIN_RUNS_FOR_CLAIM or a["std"] is None or b["std"] is None:
        return None
    gain = b["mean"] - a["mean"] if lower_is_better else a["mean"] - b["mean"]
    return gain > max(a["std"], b["std"])
