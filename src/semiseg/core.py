"""The lowest layer: constants and types every other module may import (nothing from semiseg).

- :data:`IGNORE_INDEX`: mask value of pixels without a label.
- :class:`Supervision`: what a training item carries (dense / sparse mask, tag, size, nothing).
- :class:`ViewSpec`: the paired views a method asks a data stream for (weak + k strong).
- :class:`Batch`: one stream's batch as the engine hands it to a method.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

#: Mask value of pixels that carry no label (sparse masks, unlabeled images, pixels from outside).
IGNORE_INDEX = 255


class Supervision(enum.IntEnum):
    """Kind of supervision of a training item (``Batch.kind`` holds these values)."""

    NONE = 0
    DENSE = 1
    SPARSE = 2
    TAG = 3
    SIZE = 4
    CLASS = 5  #: an image-level class label (classification)

    @classmethod
    def parse(cls, name: str) -> Supervision:
        """``"dense"`` → ``Supervision.DENSE`` (the names used in configs)."""
        try:
            return cls[name.upper()]
        except KeyError:
            raise ValueError(f"unknown supervision {name!r} (known: {', '.join(cls.names())})") from None

    @classmethod
    def names(cls) -> list[str]:
        return [k.name.lower() for k in cls]


@dataclass(frozen=True)
class ViewSpec:
    """Paired views a method asks of a stream.

    The item's ``image`` is the weak view (the run's ``train.augment``); ``strong`` further views
    share its geometric transform exactly (pixel correspondence) and add strong photometric
    perturbations (``train.strong_augment``). With ``cutmix`` each strong view also gets a box
    mask, drawn per sample, for mixing images and pseudo-labels within a batch.
    """

    strong: int = 0
    cutmix: bool = False


def ignore_padding(labels: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """``labels`` with ``IGNORE_INDEX`` outside ``valid`` (3D patch padding); unchanged for None.
    Shape: labels ``[B, *S]`` long, valid ``[B, *S]`` bool → ``[B, *S]`` long."""
    return labels if valid is None else labels.masked_fill(~valid, IGNORE_INDEX)


@dataclass
class Batch:
    """A stream's batch (labeled or unlabeled items), as a method receives it.

    Shape (``*S`` = spatial dims, ``H, W`` in 2D or ``D, H, W`` in 3D; ``K`` classes):
        image: ``[B, C, *S]`` float, the (weak) view.
        mask: ``[B, *S]`` long, class indices; ``IGNORE_INDEX`` where unknown.
        tags: ``[B, K]`` float, 1/0 presence per class; NaN where the item has no tag.
        sizes: ``[B, K]`` float, pixel count per class; NaN where unknown.
        kind: ``[B]`` long, :class:`Supervision` values.
        index: ``[B]`` long, position of the item in its dataset view.
        key: ``[B, 3]`` long, (stream seed, epoch, position in the epoch's global order): the key
            of every random draw for this sample (augmentations, and any draw a method makes
            with :meth:`generators`), the same in one process and under DDP.
        strong: ``[B, k, C, *S]`` float strong views (when the phase asks for them), else None.
        cutmix: ``[B, k, *S]`` bool box masks, one per strong view (all False when the box was
            not drawn for that sample), else None.
        label: ``[B]`` long, the image's class (classification data with ``class`` supervision);
            ``IGNORE_INDEX`` where unknown.
        valid: ``[B, *S]`` bool, False on the zero padding of a 3D patch past its volume's end (moved
            by the augmentation; its rotation / shift fill stays True, as in 2D; masks ignore the
            padding too); None for 2D images. The losses that read predictions beyond the labels
            (pseudo-labels, consistency targets, the TV and size regularisers) skip invalid voxels
            (:meth:`ignore_padding`). Normalisation layers still see them (batch statistics).
    """

    image: torch.Tensor
    mask: torch.Tensor
    tags: torch.Tensor
    sizes: torch.Tensor
    kind: torch.Tensor
    index: torch.Tensor
    key: torch.Tensor
    strong: torch.Tensor | None = None
    cutmix: torch.Tensor | None = None
    label: torch.Tensor | None = None  #: filled (IGNORE_INDEX) by from_dict / of when absent
    valid: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.label is None:
            self.label = torch.full(
                (len(self.image),), IGNORE_INDEX, dtype=torch.long, device=self.image.device
            )

    def ignore_padding(self, labels: torch.Tensor) -> torch.Tensor:
        """``labels`` with ``IGNORE_INDEX`` on the voxels outside :attr:`valid` (3D patch padding), so
        a pseudo-label loss skips them; unchanged when there is no padding.

        Shape:
            labels ``[B, *S]`` long → ``[B, *S]`` long.

        Examples:
            >>> b = Batch.of(torch.rand(1, 1, 1, 2))
            >>> b.valid = torch.tensor([[[True, False]]])
            >>> b.ignore_padding(torch.zeros(1, 1, 2, dtype=torch.long)).tolist()
            [[[0, 255]]]
        """
        return ignore_padding(labels, self.valid)

    def valid_mask(self) -> torch.Tensor:
        """:attr:`valid`, or all True when the batch has no padding. Shape: ``[B, *S]`` bool."""
        if self.valid is not None:
            return self.valid
        return torch.ones(
            (len(self.image), *self.image.shape[2:]), dtype=torch.bool, device=self.image.device
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Batch:
        """From the collated dict of a dataset (missing ``key`` = zeros, ``label`` = unknown)."""
        d = dict(d)
        if "key" not in d:
            d["key"] = torch.zeros(len(d["image"]), 3, dtype=torch.long)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def of(
        cls,
        image: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        num_classes: int | None = None,
        tags: torch.Tensor | None = None,
        sizes: torch.Tensor | None = None,
        kind: Supervision | None = None,
        label: torch.Tensor | None = None,
    ) -> Batch:
        """A batch from tensors, the rest filled in: no mask = all ``IGNORE_INDEX``; unknown tags and
        sizes = NaN (``num_classes`` columns; default: 1 + the largest label); ``kind`` = DENSE when
        every pixel is labeled, SPARSE when some are, CLASS when ``label`` is given, TAG / SIZE / NONE
        otherwise; no ``label`` = all ``IGNORE_INDEX``.

        Examples:
            >>> b = Batch.of(torch.rand(2, 1, 8, 8), torch.zeros(2, 8, 8, dtype=torch.long))
            >>> b.kind.tolist(), tuple(b.tags.shape)
            ([1, 1], (2, 1))
        """
        n, spatial = image.shape[0], image.shape[2:]
        if mask is None:
            mask = torch.full((n, *spatial), IGNORE_INDEX, dtype=torch.long, device=image.device)
        labeled = mask != IGNORE_INDEX
        if num_classes is None:
            num_classes = int(mask[labeled].max()) + 1 if labeled.any() else 2
        nan = torch.full((n, num_classes), float("nan"), device=image.device)
        if kind is None:
            if labeled.flatten(1).all(1).all():
                kind = Supervision.DENSE
            elif labeled.any():
                kind = Supervision.SPARSE
            elif label is not None:
                kind = Supervision.CLASS
            elif tags is not None:
                kind = Supervision.TAG
            elif sizes is not None:
                kind = Supervision.SIZE
            else:
                kind = Supervision.NONE
        return cls(
            image=image,
            mask=mask,
            tags=nan.clone() if tags is None else tags,
            sizes=nan.clone() if sizes is None else sizes,
            kind=torch.full((n,), int(kind), dtype=torch.long, device=image.device),
            index=torch.arange(n, device=image.device),
            key=torch.zeros(n, 3, dtype=torch.long, device=image.device),
            label=label,
        )

    def __len__(self) -> int:
        return len(self.image)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        def move(v):
            return v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v

        return Batch(**{f.name: move(getattr(self, f.name)) for f in dataclasses.fields(self)})

    def has(self, *kinds: Supervision) -> torch.Tensor:
        """``[B]`` bool: items whose supervision is one of ``kinds``."""
        out = torch.zeros_like(self.kind, dtype=torch.bool)
        for k in kinds:
            out |= self.kind == int(k)
        return out

    def generators(self, salt: int) -> list[np.random.Generator]:
        """One numpy generator per sample, seeded by (``key``, ``salt``): draws a method makes per
        sample are the same whatever the process count, worker count or resumption."""
        # spawn_key keeps these streams apart from the data's own (seed, epoch, position) generator,
        # whatever the salt (a plain [*key, 0] seed would equal [*key])
        return [
            np.random.default_rng(np.random.SeedSequence([int(v) for v in k], spawn_key=(int(salt),)))
            for k in self.key.cpu()
        ]

    def randn(self, salt: int, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
        """Standard-normal draws of ``shape`` per sample, from the sample's key and ``salt`` (the
        same whatever the process count or resumption), on the batch's device.

        Shape:
            → ``[B, *shape]``.
        """
        seeds = [int(g.integers(2**62)) for g in self.generators(salt)]
        draws = [torch.randn(tuple(shape), generator=torch.Generator().manual_seed(s)) for s in seeds]
        return torch.stack(draws).to(self.image.device)
