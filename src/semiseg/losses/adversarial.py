"""Hinge adversarial losses (Lim & Ye 2017; Miyato et al. 2018; SAGAN), as the presence/absence
translation paper uses them (Vorontsov et al., eq. 12).

The critic D gives one score per image (a multi-scale critic averages its maps over pixels and
scales first, :class:`~semiseg.models.translation.MultiScaleDiscriminator`). Eq. 12 prints the
minimax in one bracket; it is read as the standard pair:

    L_D = E[max(0, 1 − D(x_real))] + E[max(0, 1 + D(x_fake))]     (critic; fakes detached)
    L_G = −E[D(x_fake)]                                             (generator)
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["HingeDiscriminatorLoss", "HingeGeneratorLoss", "hinge_d_loss", "hinge_g_loss"]


def _scores(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.ndim != 1:
        raise ValueError(f"{name}: expected one critic score per image, shape [B], got {tuple(x.shape)}")
    return x


def hinge_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The critic's hinge loss: ``mean(relu(1 − real)) + mean(relu(1 + fake))``.

    Shape:
        real ``[B_r]``, fake ``[B_f]`` critic scores → scalar.

    Examples:
        >>> float(hinge_d_loss(torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.3])))
        0.9
    """
    real, fake = _scores(real, "real"), _scores(fake, "fake")
    return F.relu(1 - real).mean() + F.relu(1 + fake).mean()


def hinge_g_loss(fake: torch.Tensor) -> torch.Tensor:
    """The generator's hinge loss: ``−mean(fake)``.

    Shape:
        fake ``[B]`` critic scores of generated images → scalar.

    Examples:
        >>> float(hinge_g_loss(torch.tensor([-2.0, 0.3])))
        0.85
    """
    return -_scores(fake, "fake").mean()


class HingeDiscriminatorLoss(nn.Module):
    """Module form of :func:`hinge_d_loss`."""

    def forward(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        return hinge_d_loss(real, fake)


class HingeGeneratorLoss(nn.Module):
    """Module form of :func:`hinge_g_loss`."""

    def forward(self, fake: torch.Tensor) -> torch.Tensor:
        return hinge_g_loss(fake)
