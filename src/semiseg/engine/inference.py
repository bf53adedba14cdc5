"""Inference on whole images or volumes: one network call, or sliding windows with blending.

:class:`Inferer` maps a batch ``[B, C, *S]`` on the training grid to class logits ``[B, K, *S]`` with
a ``predict`` function (a method's ``predict``):

- ``whole``: one call on the whole input (2D images; small volumes);
- ``sliding``: windows of ``roi`` (the training patch) that overlap by ``overlap`` (a fraction of the
  window per axis), blended with
  ``gaussian`` weights (nnU-Net's; MONAI's :func:`~monai.inferers.sliding_window_inference`),
  ``constant`` weights (a plain mean, MONAI's), or ``trim``: each voxel is taken from the one window
  whose centre region owns it (the windows' borders, where zero padding changes a convolution's
  output, are cut off at the middle of each overlap). With ``trim``, a network that is shift-equivariant
  (no pooling or strides, e.g. a stack of convolutions) and whose receptive-field radius is below
  half the overlap gives the same output as on the whole input (up to float rounding), which
  Gaussian or constant blending of padded borders does not. A network that pools is equivariant only
  to shifts by multiples of its total stride, and a UNet's receptive field is larger than any
  practical overlap: for it, every blend approximates whole-input inference.

Slice-by-slice inference of a 2D model on volumes stays in :mod:`semiseg.engine.evaluate`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

__all__ = ["FlipAverage", "Inferer", "build_predict", "window_starts"]

BLENDS = ("gaussian", "constant", "trim")


def window_starts(size: int, roi: int, overlap: float) -> list[int]:
    """Start of each window along an axis of ``size``: step ``roi · (1 − overlap)`` (at least 1), the
    last window flush with the end; one window at 0 when ``roi ≥ size``.

    Examples:
        >>> window_starts(10, 4, 0.5), window_starts(3, 8, 0.5), window_starts(9, 4, 0.0)
        ([0, 2, 4, 6], [0], [0, 4, 5])
    """
    if roi >= size:
        return [0]
    step = max(1, int(roi * (1 - overlap)))
    starts = list(range(0, size - roi, step))
    return starts + [size - roi]


def _owned(starts: list[int], roi: int, size: int) -> list[tuple[int, int]]:
    """Per window along an axis, the interval ``[a, b)`` it owns under ``trim``: the boundary between
    consecutive windows is the middle of their overlap."""
    bounds = [0]
    for s0, s1 in zip(starts, starts[1:]):
        bounds.append((s1 + min(s0 + roi, size)) // 2)
    bounds.append(size)
    return list(zip(bounds[:-1], bounds[1:]))


@dataclass
class Inferer:
    """Whole-input or sliding-window inference (see the module docstring).

    Args:
        mode: "whole" or "sliding".
        roi: Window size per spatial axis (``sliding``); an axis shorter than its window is padded
            (``gaussian``, ``constant``: with zeros, as training patches are) or taken whole (``trim``).
        overlap: Fraction of a window shared with its neighbour, per axis, in [0, 1).
        blend: "gaussian", "constant" or "trim".
        sigma_scale: Gaussian blending: sigma = ``sigma_scale`` × window side.
        batch_size: Windows per network call.
    """

    mode: str = "whole"
    roi: Sequence[int] | None = None
    overlap: float = 0.5
    blend: str = "gaussian"
    sigma_scale: float = 0.125
    batch_size: int = 4

    def __post_init__(self) -> None:
        if self.mode not in ("whole", "sliding"):
            raise ValueError(f"inference mode must be 'whole' or 'sliding', got {self.mode!r}")
        if self.mode == "sliding" and not self.roi:
            raise ValueError("sliding-window inference needs a window size (roi)")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.blend not in BLENDS:
            raise ValueError(f"blend must be one of {', '.join(BLENDS)}, got {self.blend!r}")

    @torch.no_grad()
    def __call__(self, predict: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, K, *S]`` of inputs ``[B, C, *S]``."""
        if self.mode == "whole":
            return predict(x)
        roi = tuple(int(r) for r in self.roi)
        if len(roi) != x.ndim - 2:
            raise ValueError(f"window {list(roi)} does not match an input of {x.ndim - 2} spatial axes")
        if self.blend == "trim":
            return self._trim(predict, x, roi)
        from monai.inferers import sliding_window_inference

        # an input shorter than its window is padded with zeros, as training patches are past a volume's
        # end (semiseg.data.patches.crop), so the network sees at inference what it saw in training
        return sliding_window_inference(
            x, roi, self.batch_size, predict, overlap=self.overlap, mode=self.blend,
            sigma_scale=self.sigma_scale, padding_mode="constant", cval=0.0,
        )  # fmt: skip

    def _trim(
        self, predict: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, roi: tuple[int, ...]
    ) -> torch.Tensor:
        full = x.shape[2:]
        roi = tuple(min(r, n) for r, n in zip(roi, full))  # an axis shorter than its window: one window
        per_axis = [window_starts(n, r, self.overlap) for n, r in zip(full, roi)]
        owned = [_owned(st, r, n) for st, r, n in zip(per_axis, roi, full)]
        windows = [
            (tuple(per_axis[a][i] for a, i in enumerate(idx)), tuple(owned[a][i] for a, i in enumerate(idx)))
            for idx in itertools.product(*(range(len(s)) for s in per_axis))
        ]
        out = None
        for chunk in range(0, len(windows), self.batch_size):
            batch = windows[chunk : chunk + self.batch_size]
            crops = [x[(..., *(slice(s, s + r) for s, r in zip(starts, roi)))] for starts, _ in batch]
            logits = predict(torch.cat(crops))
            if out is None:
                out = logits.new_zeros(x.shape[0], logits.shape[1], *full)
            for k, (starts, own) in enumerate(batch):
                piece = logits[k * x.shape[0] : (k + 1) * x.shape[0]]
                src = tuple(slice(a - s, b - s) for (a, b), s in zip(own, starts))
                dst = tuple(slice(a, b) for a, b in own)
                out[(..., *dst)] = piece[(..., *src)]
        return out


class FlipAverage:
    """Test-time augmentation by flips: the mean of ``predict``'s logits over every combination of
    flips along the spatial axes of its input, each flipped back (2^d calls for d spatial axes, as
    nnU-Net's mirroring). A network equivariant to flips gives its own output.

    Examples:
        >>> tta = FlipAverage(lambda x: x * 2)
        >>> bool(torch.equal(tta(torch.arange(6.0).view(1, 1, 2, 3)), torch.arange(6.0).view(1, 1, 2, 3) * 2))
        True
    """

    def __init__(self, predict: Callable[[torch.Tensor], torch.Tensor]):
        self.predict = predict

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        axes = range(2, x.ndim)
        total = None
        flips = [c for n in range(len(axes) + 1) for c in itertools.combinations(axes, n)]
        for dims in flips:
            out = self.predict(x.flip(dims) if dims else x)
            if out.ndim != x.ndim:
                from semiseg.errors import ConfigError

                raise ConfigError(
                    f"inference.tta: 'flip' flips class maps back, and the model gives outputs of shape "
                    f"{list(out.shape)} (a class per image): use tta none"
                )
            out = out.flip(dims) if dims else out
            total = out.float() if total is None else total + out.float()
        return total / len(flips)


def build_predict(
    predict: Callable[[torch.Tensor], torch.Tensor], cfg, validation: bool = False
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The network call of evaluation for a run's config ``cfg``: ``predict`` itself for 2D models
    and ``inference.mode: whole``; otherwise ``predict`` through sliding windows of
    ``data.patch_size`` (``inference.mode`` "auto" with a 3D model, or "sliding"). With
    ``inference.tta: flip`` each call (each window) is a :class:`FlipAverage`, except for validation
    while training (``validation``)."""
    inf = cfg.inference
    if inf.tta == "flip" and not validation:
        predict = FlipAverage(predict)
    sliding = inf.mode == "sliding" or (inf.mode == "auto" and cfg.model.spatial_dims == 3)
    target = cfg.data.target_spacing
    if not sliding and target is None:
        return predict
    inferer = Inferer("sliding", cfg.data.patch_size, inf.overlap, inf.blend, inf.sigma_scale, inf.batch_size)
    return GridPredict(predict, inferer if sliding else None, target)


class GridPredict:
    """A network call for evaluation: through an :class:`Inferer` (or directly), carrying the voxel
    size volumes are resampled to first (``target_spacing``, read by
    :func:`~semiseg.engine.evaluate.predict_volume`)."""

    def __init__(self, predict: Callable[[torch.Tensor], torch.Tensor], inferer: Inferer | None,
                 target_spacing: Sequence[float] | None = None):  # fmt: skip
        self.predict, self.inferer = predict, inferer
        self.target_spacing = None if target_spacing is None else tuple(float(t) for t in target_spacing)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict(x) if self.inferer is None else self.inferer(self.predict, x)
