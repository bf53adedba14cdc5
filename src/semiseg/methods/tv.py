"""Total-variation method (Javanmardi et al.): supervised loss on the labeled (sparse) pixels
plus α·TV of the softmax maps over all pixels of every training image.

    loss = CE(labeled pixels) [+ dice] + α(step) · TV(softmax(f(I)))

TV is computed on labeled and (when the split has them) unlabeled images alike, as in the paper.
``tv_weight`` is α; ``ramp_up_steps`` ramps it up from 0 (sigmoid ramp) so the network first
fits the labeled pixels. The same loss is available to any method as a regulariser:
``regularizers: [{name: tv, weight: 0.1}]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from semiseg.config import FieldError
from semiseg.losses.regularizers import Regularizer
from semiseg.losses.tv import TVSpec
from semiseg.methods import register
from semiseg.methods.supervised import Supervised, SupervisedConfig


@dataclass
class TVConfig(SupervisedConfig):
    tv_weight: float = 0.1  #: α of the paper
    ramp_up_steps: int = 0  #: steps of the sigmoid ramp-up of α (0 = constant)
    operator: Literal["sobel", "forward"] = "sobel"
    norm: Literal["l1", "l2"] = "l1"  #: l1 = anisotropic (paper), l2 = isotropic
    reduction: Literal["mean", "sum"] = "mean"  #: mean = per pixel (size independent)
    tv_on_unlabeled: bool = True  #: also on unlabeled images when the split has them
    #: edge-aware TV (beyond the paper): weight each pixel by exp(-|∇I|²/2σ²); None = plain TV
    edge_sigma: float | None = None
    #: one factor per spatial axis multiplying its derivative (3D with thick slices: e.g. [0.2, 1, 1])
    axis_weights: list[float] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            self.tv_spec()  # checks the values with the regulariser's own checks, named as options here
        except FieldError as exc:
            raise FieldError({"weight": "tv_weight"}.get(exc.field, exc.field), exc.message) from None

    def tv_spec(self) -> TVSpec:
        """The method's TV term as the ``tv`` regulariser's typed spec."""
        return TVSpec(
            weight=self.tv_weight,
            ramp_up_steps=self.ramp_up_steps,
            streams=["labeled", "unlabeled"] if self.tv_on_unlabeled else ["labeled"],
            operator=self.operator,
            norm=self.norm,
            reduction=self.reduction,
            edge_sigma=self.edge_sigma,
            axis_weights=self.axis_weights,
        )


@register("tv")
class TotalVariation(Supervised):
    config_class = TVConfig

    def __init__(self, cfg: TVConfig, **kwargs):
        super().__init__(cfg, **kwargs)
        # after the user's own regularizers (``method.regularizers``); the config stays as given
        self.regularizers.append(Regularizer(cfg.tv_spec(), where="method", context=self.regularizer_context))
