"""Ramp-ups of loss weights: the one place a weight grows from 0 to its value over a schedule.

Used by config-named regularisers (:mod:`semiseg.losses.regularizers`, whose ``ramp_from`` picks
the run's global step or the step within the current phase) and by methods with their own weights
(e.g. the size method's λ). The engine sets ``method.global_step`` and ``method.phase_step``
before every step.
"""

from __future__ import annotations

import math

#: ramp shapes: "sigmoid" = exp(-5 (1 - t)²) (Laine & Aila's temporal-ensembling ramp-up), "linear" = t
RAMP_SHAPES = ("sigmoid", "linear")


def ramp_weight(weight: float, step: int, ramp_up_steps: int, shape: str = "sigmoid") -> float:
    """``weight`` scaled by a ramp-up from (almost) 0 to 1 over the first ``ramp_up_steps`` steps.

    Args:
        weight: The weight after the ramp-up.
        step: Steps done so far (the global step or the step within a phase); negative = 0.
        ramp_up_steps: Length of the ramp; ``<= 0`` = no ramp (constant ``weight``).
        shape: "sigmoid" (``exp(-5 (1 - t)²)``, t = step / ramp_up_steps; ``e^-5 ≈ 0.0067`` at step 0)
            or "linear" (``t``).

    Examples:
        >>> ramp_weight(0.5, 25, 100, "linear")
        0.125
        >>> ramp_weight(0.5, 100, 100)
        0.5
        >>> round(ramp_weight(1.0, 0, 100), 4)
        0.0067
    """
    if shape not in RAMP_SHAPES:
        raise ValueError(f"ramp shape must be one of {', '.join(RAMP_SHAPES)}, got {shape!r}")
    if ramp_up_steps <= 0 or step >= ramp_up_steps:
        return weight
    t = max(step, 0) / ramp_up_steps
    return weight * (math.exp(-5.0 * (1.0 - t) ** 2) if shape == "sigmoid" else t)
