"""Small differentiable geometry of soft region maps, shared by losses, models and methods (and
:func:`exporting`, for networks whose eager fast path would fix an exported model's input size).

A low module (imports nothing from semiseg): losses (size penalties), models (the density regressor)
and methods (region targets) all measure regions the same way. Works for any number of spatial
dimensions: maps are ``[B, K, *S]`` with ``S = (H, W)`` or ``(D, H, W)``.
"""

from __future__ import annotations

import torch


def soft_size(probs: torch.Tensor) -> torch.Tensor:
    """Sum of each class's probabilities over all pixels (2D) or voxels (3D).

    Shape:
        probs ``[B, K, *S]`` → ``[B, K]``.

    Examples:
        >>> soft_size(torch.full((1, 2, 4, 4), 0.5)).tolist()
        [[8.0, 8.0]]
    """
    return probs.flatten(2).sum(-1)


def soft_centroid(probs: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Probability-weighted mean position of each class, in [0, 1] per axis (0 = first row / column).

    Shape:
        probs ``[B, K, *S]`` → ``[B, K, D]`` with ``D`` = number of spatial axes (``len(S)``).

    Examples:
        >>> m = torch.zeros(1, 1, 5, 5)
        >>> m[0, 0, 4, 2] = 1.0  # last row, middle column
        >>> soft_centroid(m).round(decimals=3).tolist()
        [[[1.0, 0.5]]]
    """
    spatial = probs.shape[2:]
    mass = probs.flatten(2).sum(-1) + eps  # [B, K]
    coords = []
    for axis, n in enumerate(spatial):
        pos = (
            torch.linspace(0.0, 1.0, n, dtype=probs.dtype, device=probs.device)
            if n > 1
            else probs.new_zeros(1)
        )
        shape = [1] * len(spatial)
        shape[axis] = n
        weighted = (probs * pos.view(*shape)).flatten(2).sum(-1)
        coords.append(weighted / mass)
    return torch.stack(coords, dim=-1)


def class_map(scores: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Index of the largest score along ``dim`` (the first one on ties), as ``argmax``.

    ``Tensor.max(dim).indices`` gives the same indices as ``argmax(dim)``, but PyTorch's CPU
    ``argmax`` over a non-innermost axis is about 10x slower (31 ms against 3 ms for
    ``[16, 4, 128, 128]`` along the class axis, PyTorch 2.13): a pseudo-labelling method calls it
    every step.

    Shape:
        ``[B, K, *S]`` → ``[B, *S]`` long (``dim`` removed).

    Examples:
        >>> class_map(torch.tensor([[[1.0], [3.0], [3.0]]])).tolist()  # first maximum on ties
        [[1]]
    """
    return scores.max(dim).indices


def paste(base: torch.Tensor, other: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """``other`` inside ``box``, ``base`` elsewhere (CutMix, copy-paste), for images and label maps.

    Shape:
        base, other ``[B, C, *S]`` or ``[B, *S]``; box ``[B, *S]`` bool → like ``base``.

    Examples:
        >>> box = torch.tensor([[True, False]])
        >>> paste(torch.zeros(1, 2), torch.ones(1, 2), box).tolist()
        [[1.0, 0.0]]
    """
    if base.shape != other.shape:
        raise ValueError(f"base {tuple(base.shape)} and other {tuple(other.shape)} differ")
    b = box if box.dim() == base.dim() else box.unsqueeze(1)
    return torch.where(b, other, base)


def student_t_log_assignment(
    z: torch.Tensor, centroids: torch.Tensor, alpha: float = 1.0, dim: int = 1
) -> torch.Tensor:
    """log q of DEC's Student-t soft assignment (Xie et al. 2016; SSLDEC eq. 1): for each item (an
    image's embedding, or a pixel's), ``q_j ∝ (1 + ‖z − μ_j‖² / α)^(−(α+1)/2)``, normalised over the
    ``K`` centroids; computed in log space (a log-softmax), so it is stable for far-away points.

    Args:
        z: Embeddings, channels on ``dim``.
        centroids: ``[K, D]`` cluster centres μ.
        alpha: Degrees of freedom of the Student-t kernel (> 0; DEC and SSLDEC use 1).
        dim: The embedding axis of ``z``; the output has the clusters on it.

    Shape:
        z ``[B, D, *S]`` (``S`` = () for vectors, ``(H, W)`` or ``(D, H, W)`` per pixel), centroids
        ``[K, D]`` → log q ``[B, K, *S]``.

    Examples:
        >>> z = torch.tensor([[0.0], [1.0]])  # two 1-D points, centroids at 0 and 1
        >>> student_t_log_assignment(z, torch.tensor([[0.0], [1.0]])).exp()
        tensor([[0.6667, 0.3333],
                [0.3333, 0.6667]])
    """
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if centroids.ndim != 2 or centroids.shape[1] != z.shape[dim]:
        raise ValueError(
            f"centroids must be [K, {z.shape[dim]}] for embeddings of {z.shape[dim]} channels, "
            f"got {tuple(centroids.shape)}"
        )
    zl = z.movedim(dim, -1)  # [..., D]
    d2 = (zl.unsqueeze(-2) - centroids).pow(2).sum(-1)  # [..., K]
    logits = -(alpha + 1) / 2 * torch.log1p(d2 / alpha)
    return logits.log_softmax(-1).movedim(-1, dim)


def exporting() -> bool:
    """Whether the call is being traced by ``torch.export`` (``semiseg export``): a network that skips a
    resize when the input already has its training size must resize anyway then, or the exported
    model would accept that size only."""
    check = getattr(torch.compiler, "is_exporting", None)  # torch >= 2.5
    return bool(check and check())
