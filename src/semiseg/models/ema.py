"""Exponential-moving-average (EMA) copies of a network: the mean teacher (Tarvainen & Valpola, 2017).

``teacher = ema_copy(student)`` makes a frozen copy; after every optimizer step of the student,
``ema_update_(teacher, student, decay)`` sets each teacher parameter to
``decay · teacher + (1 − decay) · student`` and copies the student's buffers (batch-norm statistics),
as the common ACDC codebases do. A method calls it from its ``on_step_end`` hook; the teacher is a
submodule, so it is checkpointed and resumed with the method.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn


def ema_copy(student: nn.Module) -> nn.Module:
    """A copy of ``student`` that takes no gradient."""
    return copy.deepcopy(student).requires_grad_(False)


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, decay: float) -> None:
    """In place: ``teacher ← decay · teacher + (1 − decay) · student`` (parameters); buffers copied.

    Examples:
        >>> s = nn.Linear(1, 1, bias=False)
        >>> t = ema_copy(s)
        >>> with torch.no_grad():
        ...     _ = s.weight.fill_(1.0), t.weight.fill_(0.0)
        >>> ema_update_(t, s, 0.75)
        >>> float(t.weight)
        0.25
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must be in [0, 1], got {decay}")
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.lerp_(s.detach(), 1.0 - decay)
    for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
        t.copy_(s)
