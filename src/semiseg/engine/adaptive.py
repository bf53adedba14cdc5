"""A criterion-driven learning rate that rejects epochs (the IODA paper's adaptive learning rate, §4.3:
"increasing the learning rate after some fixed number of consecutive iterations that improves the
learning criterion. In case of a degradation, we keep decreasing the learning rate until it provides
a better value of the criterion in comparison to the previous iteration").

The unit is the epoch (the paper's "iteration", a pass over the 500 training images in batches of
100). The criterion is the training loss *after* an epoch's updates: the trainer draws the epoch's
batches again and averages the method's loss on them at the new parameters, in eval mode and without
a step (all-reduced under DDP; dropout off, batch norm on its running statistics). A phase's first
baseline is that loss at its start. Each epoch's criterion is compared with the last accepted
epoch's (:attr:`AdaptiveLR.last`). When every epoch is a pass over the same images without random
augmentation (the IODA recipes), both are the loss of the whole training set, so the comparison
sees only what the updates did; with augmentation or partial epochs they are measured on different
batches, and the rule also reacts to that noise (one extra forward pass per attempt is the cost of
measuring after the updates; measuring the same batches before them too would be a second one):

- better: the epoch is accepted; after ``grow_after`` consecutive better epochs the learning rate is
  multiplied by ``growth``;
- not better: the epoch is *rejected*: the trainer restores the method, the optimizer, the random
  state and its counters as they were before the epoch, the learning rate is divided by ``growth``,
  and the epoch is run again (with the same batches). The ``max_attempts``-th attempt is accepted
  whatever its criterion.

Measuring after the updates matters: the mean of the steps' own losses (computed before each update)
cannot see the damage of an epoch's last step, and in full-batch training it does not depend on the
attempt's rate at all, so a rejected epoch would be rejected again until the attempts run out.

Only accepted epochs reach the epoch-end hook, validation and the checkpoints, so a resumed run
replays the rejected attempts exactly. ``train.scheduler: adaptive`` (or an optimizer's own
``scheduler: adaptive``) selects it; ``growth``, ``grow_after``, ``max_attempts`` are the optimizer's
settings (1.25, 5, 10: the growth factor and the run of 5 are those of the authors' library Crino,
which divides the rate once per worse epoch and never rolls back; the paper's "keep decreasing until
better" needs the rollback, and the cap of 10 attempts is ours). It drives one optimizer per phase.
"""

from __future__ import annotations

import math
from typing import Any

import torch


class AdaptiveLR:
    """The learning rate of ``optimizer``, set per epoch by :meth:`decide` (``step`` is a per-iteration
    no-op, so the trainer treats it as any scheduler).

    Examples:
        >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        >>> lr = AdaptiveLR(opt, growth=2.0, grow_after=2, max_attempts=3)
        >>> [lr.decide(c) for c in (5.0, 4.0, 3.0)], lr.lr   # two improvements: lr × 2
        ([True, True, True], 2.0)
        >>> [lr.decide(c) for c in (3.5, 3.2, 3.1)], lr.lr   # rejected twice (lr ÷ 2 each), kept at attempt 3
        ([False, False, True], 0.5)
    """

    def __init__(self, optimizer: torch.optim.Optimizer, growth: float = 1.25, grow_after: int = 5,
                 max_attempts: int = 10):  # fmt: skip
        self.optimizer = optimizer
        self.growth, self.grow_after, self.max_attempts = growth, grow_after, max_attempts
        self.lr = float(optimizer.param_groups[0]["lr"])
        self.good = 0  #: consecutive improving epochs since the last growth
        self.last: float | None = None  #: criterion of the last accepted epoch
        self.attempts = 0  #: rejected attempts of the current epoch

    def step(self) -> None:
        """Per iteration: nothing (the rate changes between epochs)."""

    def decide(self, criterion: float) -> bool:
        """Accept (True) or reject (False) the epoch whose criterion is ``criterion``; sets the rate of
        the next attempt or epoch."""
        improved = math.isfinite(criterion) and (self.last is None or criterion < self.last)
        if improved or self.attempts + 1 >= self.max_attempts:
            if self.last is not None and improved:
                self.good += 1
                if self.good >= self.grow_after:
                    self.lr *= self.growth
                    self.good = 0
            elif not improved:
                self.good = 0
            if math.isfinite(criterion):  # a kept non-finite attempt is no baseline (the run stops on it)
                self.last = criterion
            self.attempts = 0
            self.apply()
            return True
        self.attempts += 1
        self.good = 0
        self.lr /= self.growth
        self.apply()
        return False

    def apply(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr

    def get_last_lr(self) -> list[float]:
        return [self.lr]

    def state_dict(self) -> dict[str, Any]:
        return {"lr": self.lr, "good": self.good, "last": self.last, "attempts": self.attempts}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lr, self.good, self.last, self.attempts = (
            state["lr"],
            state["good"],
            state["last"],
            state["attempts"],
        )
        self.apply()
