"""Heads that sit on any network's last features.

:class:`ClusteringHead` — DEC's clustering layer (Xie et al. 2016; SSLDEC, Enguehard et al. 2019,
§III-A): learnable centroids μ ``[K, D]`` and the Student-t soft assignment of each embedding to
them (:func:`semiseg.ops.student_t_log_assignment`, eq. 1). It returns log q in the layout of its
input, so it works on image embeddings ``[B, D]`` and per pixel ``[B, D, H, W]`` (or voxel) alike,
and ``softmax`` / ``argmax`` of its output are q and the cluster.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from semiseg.ops import student_t_log_assignment

__all__ = ["Clustered", "ClusteredFeatures", "ClusteringHead", "clustered"]

CENTROID_INITS = ("glorot", "normal")


class ClusteringHead(nn.Module):
    """log q of the Student-t soft assignment to ``num_clusters`` learnable centroids.

    Args:
        num_clusters: K (SSLDEC: one cluster per class, cluster j = class j).
        embed_dim: D, the channels of the embeddings.
        alpha: Degrees of freedom of the kernel (> 0; 1 in DEC and SSLDEC).
        init: ``"glorot"`` (uniform, Keras's default for a layer weight: the SSLDEC code's random
            initialisation) or ``"normal"`` (N(0, 1)).

    Shape:
        ``[B, D, *S]`` → ``[B, K, *S]`` (log q).

    Examples:
        >>> head = ClusteringHead(3, 2)
        >>> head(torch.rand(4, 2)).exp().sum(1)
        tensor([1.0000, 1.0000, 1.0000, 1.0000], grad_fn=<SumBackward1>)
    """

    def __init__(self, num_clusters: int, embed_dim: int, alpha: float = 1.0, init: str = "glorot"):
        super().__init__()
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        if init not in CENTROID_INITS:
            raise ValueError(f"unknown centroid init {init!r} (choose from {', '.join(CENTROID_INITS)})")
        self.alpha = alpha
        self.centroids = nn.Parameter(torch.empty(num_clusters, embed_dim))
        if init == "glorot":
            nn.init.xavier_uniform_(self.centroids)
        else:
            nn.init.normal_(self.centroids)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return student_t_log_assignment(z, self.centroids, self.alpha)


def clustered(backbone: nn.Module, head: ClusteringHead) -> nn.Module:
    """``backbone`` followed by ``head``: a :class:`ClusteredFeatures` when the backbone exposes
    ``encode`` / ``decode``, else a :class:`Clustered`."""
    has_features = hasattr(backbone, "encode") and hasattr(backbone, "decode")
    return (ClusteredFeatures if has_features else Clustered)(backbone, head)


class Clustered(nn.Module):
    """``backbone`` followed by a :class:`ClusteringHead` on its output, used as the embedding (SSLDEC:
    the last layer's K activations, one centroid per class).

    Shape:
        ``[B, C, *S]`` → log q ``[B, K, *S]`` (per pixel for a segmenter, ``[B, K]`` for a classifier).
    """

    def __init__(self, backbone: nn.Module, head: ClusteringHead):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class ClusteredFeatures(Clustered):
    """:class:`Clustered` whose ``encode`` / ``decode`` pass through to the backbone (feature
    perturbations keep working), ``decode`` adding the head."""

    def encode(self, x: torch.Tensor):
        return self.backbone.encode(x)

    def decode(self, features, size=None) -> torch.Tensor:
        return self.head(self.backbone.decode(features, size))
