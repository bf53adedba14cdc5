"""Training views: records resized to the training size, given their supervision, augmented.

A batch from :class:`TrainSet` is a dict of tensors, the same keys whatever the supervision, so
labeled, sparse, tagged, size-labeled and unlabeled items can share a batch:

- ``image`` ``[B, C, H, W]`` float
- ``mask`` ``[B, H, W]`` long: dense or sparse labels, ``IGNORE_INDEX`` where unknown
- ``tags`` ``[B, K]`` float: 1/0 presence of each class, NaN when the item has no tag
- ``sizes`` ``[B, K]`` float: pixel count of each class, NaN when unknown
- ``kind`` ``[B]`` long: index into :data:`SUPERVISION_KINDS`
- ``index`` ``[B]`` long: position in the view
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from semiseg.config import AugmentConfig
from semiseg.data.records import IGNORE_INDEX, Record
from semiseg.data.splits import stable_hash
from semiseg.data.transforms import augment, is_identity, sample_rng

SUPERVISION_KINDS = ("none", "dense", "sparse", "tag", "size")


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Shape: ``[N, C, H, W]`` → ``[N, C, *size]`` (bilinear, antialiased when shrinking)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    shrink = image.shape[-2] > size[0] or image.shape[-1] > size[1]
    return F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=shrink)


def resize_mask(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Shape: ``[N, H, W]`` long → ``[N, *size]`` (nearest)."""
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask[:, None].float(), size=size, mode="nearest-exact")[:, 0].long()


def stack_resized(records: list[Record], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """2D records → images ``[N, C, *size]`` and masks ``[N, *size]`` (IGNORE_INDEX where no mask)."""
    images, masks = [], []
    for r in records:
        if r.image.ndim != 3:
            raise ValueError(
                f"{r.source or r.id}: training needs 2D images [C, H, W], got shape {r.image.shape}"
            )
        img = resize_image(torch.from_numpy(r.image)[None], size)[0]
        if r.mask is None:
            m = torch.full(size, IGNORE_INDEX, dtype=torch.long)
        else:
            m = resize_mask(torch.from_numpy(r.mask)[None], size)[0]
        images.append(img)
        masks.append(m)
    return torch.stack(images), torch.stack(masks)


def sparse_mask(mask: torch.Tensor, n_pixels: int, seed: int, draw: int, record_id: str) -> torch.Tensor:
    """Keep ``n_pixels`` labeled pixels drawn uniformly at random; the rest become IGNORE_INDEX."""
    valid = torch.nonzero((mask != IGNORE_INDEX).flatten()).flatten().numpy()
    rng = np.random.default_rng([seed, draw, stable_hash(record_id)])
    keep = rng.choice(valid, size=min(n_pixels, len(valid)), replace=False)
    out = torch.full_like(mask, IGNORE_INDEX).flatten()
    out[keep] = mask.flatten()[keep]
    return out.view_as(mask)


class TrainSet(Dataset):
    """Resized, supervised and augmented training items (see module docstring for the batch)."""

    def __init__(
        self,
        records: list[Record],
        *,
        supervision: str,
        num_classes: int,
        image_size: tuple[int, int],
        augment_cfg: AugmentConfig | None = None,
        seed: int = 0,
        sparse_pixels: int = 10,
        draw: int = 0,
        split_seed: int = 0,
    ):
        if supervision not in SUPERVISION_KINDS:
            raise ValueError(f"unknown supervision {supervision!r}")
        self.ids = [r.id for r in records]
        self.supervision = supervision
        self.num_classes = num_classes
        self.images, dense = stack_resized(records, tuple(image_size))
        k = num_classes
        n = len(records)
        self.tags = torch.full((n, k), float("nan"))
        self.sizes = torch.full((n, k), float("nan"))
        self.masks = torch.full_like(dense, IGNORE_INDEX)
        if supervision == "dense":
            self.masks = dense
        elif supervision == "sparse":
            self.masks = torch.stack(
                [sparse_mask(m, sparse_pixels, split_seed, draw, i) for m, i in zip(dense, self.ids)]
            )
        elif supervision in ("tag", "size"):
            counts = torch.stack(
                [torch.bincount(m[m != IGNORE_INDEX], minlength=k)[:k] for m in dense]
            ).float()
            if supervision == "tag":
                self.tags = (counts > 0).float()
            else:
                self.sizes = counts
        self.kind = SUPERVISION_KINDS.index(supervision)
        self.augment_cfg = augment_cfg if augment_cfg is not None and not is_identity(augment_cfg) else None
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, mask, sizes = self.images[index], self.masks[index], self.sizes[index]
        if self.augment_cfg is not None:
            rng = sample_rng(self.seed, self.epoch, index)
            image, mask, sizes = augment(image, mask, sizes, self.augment_cfg, rng)
        return {
            "image": image,
            "mask": mask,
            "tags": self.tags[index],
            "sizes": sizes,
            "kind": torch.tensor(self.kind),
            "index": torch.tensor(index),
        }
