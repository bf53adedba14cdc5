"""Networks of presence/absence translation (Vorontsov et al., "Towards semi-supervised segmentation via
image-to-image translation"; paper §3.2, Fig. 3–5, 9, appendix A and tables T2–T8).

- :class:`TranslationEncoder` f: a 3×3 convolution, then ``depth`` residual blocks of stride 2
  (norm → ReLU → conv, with a short skip), instance norm; returns the bottleneck and the maps the
  long skips read. The bottleneck's last ``unique_channels`` channels are the unique code u, the
  others the common code c (appendix A, "latent code split").
- :class:`TranslationDecoder`: the common decoder g_com (3×3 kernels, short skips) or the residual
  decoder g_res (5×5, no short skips). Every layer doubles the resolution (nearest upsampling before
  its convolution); after each one the encoder map of that resolution joins through a long skip
  (:class:`SkipJoin`: ``compress`` = instance-normalised map → 1×1 conv to one map, concatenated;
  ``concat``; ``sum``; ``none``). Layer norm (``GroupNorm(1, C)``) with its affine in translation
  mode. In segmentation mode (eqs. 4–5) the same layers run with adaptive instance norm whose
  parameters an MLP computes from the code, and the last layer is replaced by AdaIN → ReLU → 1×1
  convolution to the classes.
- :class:`MultiScaleDiscriminator`: a convolutional critic per scale, on the image and its 3×3
  stride-2 average-pooled versions; D(x) = the mean over pixels and scales, one scalar per image
  (appendix A, "discriminator").

Encoders and decoders start from Kaiming-normal weights (appendix A); the discriminators and the
MLP keep PyTorch's default initialisation (the paper does not say). Judgement calls where the paper
is silent: the short skip of a block that changes shape is a 1×1 convolution; the MLP reads the
flattened code (the digit's position is in its spatial layout); AdaIN is ``(1 + γ) · IN(x) + β``
so that a zero MLP output starts as plain instance norm; decoders end in tanh. Long skips join after
every decoder layer, the last one included, from every encoder level (the stem's full-resolution
map included, the bottleneck excluded), as the authors' code does; §3.4's "except for the first and
the last layers" is read as the encoder's input and the bottleneck.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

SKIP_TYPES = ("compress", "concat", "sum", "none")


def layer_norm(channels: int) -> nn.Module:
    """Layer norm over (C, H, W) per sample with a per-channel affine (MUNIT's LN)."""
    return nn.GroupNorm(1, channels)


def kaiming_init(module: nn.Module) -> nn.Module:
    """Kaiming-normal weights (fan-in, ReLU gain) and zero biases for every convolution of
    ``module`` (paper, appendix A: "all encoders and decoders are initialized with the Kaiming
    Normal approach"). In place; returns ``module``."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


def conv(c_in: int, c_out: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    """A convolution with reflection padding that keeps the size (``stride`` 1) or halves it."""
    return nn.Conv2d(c_in, c_out, kernel, stride, padding=kernel // 2, padding_mode="reflect")


class AdaptiveNorm(nn.Module):
    """Layer norm with its own affine, or — given ``params`` ``[B, 2C]`` — adaptive instance norm
    ``(1 + γ) · IN(x) + β`` with (γ, β) per sample (the segmentation mode's norm parameters).

    Shape:
        x ``[B, C, H, W]``, params ``[B, 2C]`` or None → ``[B, C, H, W]``.
    """

    def __init__(self, channels: int, layer_affine: bool = True):
        super().__init__()
        self.channels = channels
        # a decoder used only in segmentation mode has no layer norm (nothing would train it)
        self.norm = layer_norm(channels) if layer_affine else None

    def forward(self, x: torch.Tensor, params: torch.Tensor | None = None) -> torch.Tensor:
        if params is None:
            if self.norm is None:
                raise ValueError("this norm is adaptive only: pass its parameters")
            return self.norm(x)
        gamma, beta = params.view(-1, 2, self.channels, 1, 1).unbind(1)
        return F.instance_norm(x) * (1 + gamma) + beta


class Block(nn.Module):
    """norm → ReLU → conv (Fig. 9), optionally with a short skip; ``stride`` 2 halves the size,
    ``upsample`` doubles it (nearest, before the convolution)."""

    def __init__(
        self,
        c_in: int,
        c_out: int,
        kernel: int = 3,
        *,
        stride: int = 1,
        upsample: bool = False,
        short_skip: bool = True,
        norm: str = "layer",
    ):
        super().__init__()
        self.upsample = upsample
        if norm == "instance":
            self.norm: nn.Module = nn.InstanceNorm2d(c_in, affine=True)
        else:  # "layer" (translation mode, adaptive in segmentation mode) or "adaptive" (segmentation only)
            self.norm = AdaptiveNorm(c_in, layer_affine=norm == "layer")
        self.conv = conv(c_in, c_out, kernel, stride)
        self.shortcut: nn.Module | None = None
        if short_skip:
            same = c_in == c_out and stride == 1
            self.shortcut = nn.Identity() if same else nn.Conv2d(c_in, c_out, 1, stride)

    def forward(self, x: torch.Tensor, params: torch.Tensor | None = None) -> torch.Tensor:
        h = self.norm(x, params) if isinstance(self.norm, AdaptiveNorm) else self.norm(x)
        h = F.relu(h)
        if self.upsample:
            h = F.interpolate(h, scale_factor=2, mode="nearest")
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        out = self.conv(h)
        return out if self.shortcut is None else out + self.shortcut(x)


class TranslationEncoder(nn.Module):
    """f: ``[B, C_in, S, S]`` → (bottleneck ``[B, width·2^depth, S/2^depth, S/2^depth]``, skip maps
    from the finest ``[B, width, S, S]`` to the coarsest ``[B, width·2^(depth-1), ...]``)."""

    def __init__(self, in_channels: int, width: int = 32, depth: int = 4):
        super().__init__()
        self.channels = [width * 2**i for i in range(depth + 1)]
        self.stem = conv(in_channels, width, 3)
        self.blocks = nn.ModuleList(
            Block(self.channels[i], self.channels[i + 1], 3, stride=2, norm="instance") for i in range(depth)
        )
        self.out_norm = nn.InstanceNorm2d(self.channels[-1], affine=True)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        h = self.stem(x)
        skips = []
        for block in self.blocks:
            skips.append(h)
            h = block(h)
        return F.relu(self.out_norm(h)), skips


class SkipJoin(nn.Module):
    """A long skip from an encoder map of ``channels`` into a decoder map of the same size
    (Fig. 5): ``compress`` adds one channel, ``concat`` ``channels``, ``sum`` and ``none`` none."""

    def __init__(self, kind: str, channels: int):
        super().__init__()
        if kind not in SKIP_TYPES:
            raise ValueError(f"unknown skip type {kind!r} (choose from {', '.join(SKIP_TYPES)})")
        self.kind = kind
        self.norm = nn.InstanceNorm2d(channels, affine=True) if kind != "none" else None
        self.compress = nn.Conv2d(channels, 1, 1) if kind == "compress" else None
        self.extra = {"compress": 1, "concat": channels, "sum": 0, "none": 0}[kind]

    def forward(self, dec: torch.Tensor, enc: torch.Tensor | None) -> torch.Tensor:
        if self.kind == "none":
            return dec
        if enc is None:
            raise ValueError(f"a '{self.kind}' long skip needs the encoder's map")
        enc = self.norm(enc)
        if self.kind == "sum":
            return dec + enc
        if self.kind == "compress":
            enc = self.compress(enc)
        return torch.cat([dec, enc], 1)


class TranslationDecoder(nn.Module):
    """g_com (``residual=False``: 3×3 kernels, short skips) or g_res (``residual=True``: 5×5, no short
    skips), from a code of ``in_channels`` back to ``out_channels`` at the encoder's input size.

    ``skip_channels`` lists the encoder's skip maps from the finest to the coarsest (as
    :class:`TranslationEncoder` returns them); ``num_classes`` adds the segmentation mode
    (:meth:`segment`), whose norm parameters come from ``params`` ``[B, norm_parameters]``.
    ``translation=False`` builds the segmentation mode only (no output convolution): a separate
    segmentation decoder or a baseline's; with ``layer_norm=False`` its norms are adaptive only (their
    parameters always come from ``params``), with ``layer_norm=True`` :meth:`segment` without
    ``params`` uses the layer norms' own affine (a plain decoder).
    """

    def __init__(
        self,
        in_channels: int,
        skip_channels: Sequence[int],
        out_channels: int = 1,
        *,
        residual: bool = False,
        skip: str = "compress",
        num_classes: int | None = None,
        translation: bool = True,
        layer_norm: bool = True,
    ):
        super().__init__()
        if not translation and not num_classes:
            raise ValueError("a decoder without translation mode needs num_classes")
        if translation and not layer_norm:
            raise ValueError("the translation mode needs the layer norms")
        kernel = 5 if residual else 3
        norm = "layer" if layer_norm else "adaptive"
        widths = list(reversed(skip_channels))  # coarsest first: 256, 128, 64, 32 at 48² (paper T3/T4)
        self.joins = nn.ModuleList(SkipJoin(skip, c) for c in widths)
        self.first = conv(in_channels, widths[0], kernel)
        self.blocks = nn.ModuleList()
        for i in range(1, len(widths)):
            c_in = widths[i - 1] + self.joins[i - 1].extra
            self.blocks.append(
                Block(c_in, widths[i], kernel, upsample=True, short_skip=not residual, norm=norm)
            )
        last = widths[-1] + self.joins[-1].extra
        self.out_norm = AdaptiveNorm(last, layer_affine=layer_norm)
        self.out_conv = conv(last, out_channels, kernel) if translation else None
        self.classifier = nn.Conv2d(last, num_classes, 1) if num_classes else None
        kaiming_init(self)

    @property
    def norm_channels(self) -> list[int]:
        """Channels of every norm the segmentation mode adapts (the blocks', then the head's)."""
        return [b.norm.channels for b in self.blocks] + [self.out_norm.channels]

    @property
    def norm_parameters(self) -> int:
        return 2 * sum(self.norm_channels)

    def features(
        self, code: torch.Tensor, skips: Sequence[torch.Tensor], params: list[torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Every layer but the last (ĝ): ``[B, C_code, s, s]`` → ``[B, C_last, S, S]``."""
        coarse_first = list(reversed(skips)) or [None] * len(self.joins)  # no skips: skip "none" only
        h = self.first(F.interpolate(code, scale_factor=2, mode="nearest"))
        h = self.joins[0](h, coarse_first[0])
        for i, block in enumerate(self.blocks):
            h = block(h, None if params is None else params[i])
            h = self.joins[i + 1](h, coarse_first[i + 1])
        return h

    def forward(self, code: torch.Tensor, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        """Translation mode: tanh of the last convolution. Shape: ``[B, out_channels, S, S]``."""
        if self.out_conv is None:
            raise ValueError("this decoder was built for segmentation only (translation=False)")
        h = self.features(code, skips)
        return torch.tanh(self.out_conv(F.relu(self.out_norm(h))))

    def segment(
        self, code: torch.Tensor, skips: Sequence[torch.Tensor], params: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Segmentation mode (eqs. 4–5): the same layers with adaptive instance norm from ``params``
        ``[B, norm_parameters]``, then AdaIN → ReLU → 1×1 conv; without ``params``, the layer norms
        (a plain segmentation decoder). Shape: ``[B, num_classes, S, S]``."""
        if self.classifier is None:
            raise ValueError("this decoder was built without num_classes (no segmentation mode)")
        if params is None:
            return self.classifier(F.relu(self.out_norm(self.features(code, skips))))
        parts = list(params.split([2 * c for c in self.norm_channels], 1))
        h = self.features(code, skips, parts[:-1])
        return self.classifier(F.relu(self.out_norm(h, parts[-1])))


class NormMLP(nn.Module):
    """The code → norm parameters MLP of the segmentation mode: ``layers`` linear layers of
    ``hidden`` units (ReLU between) from the flattened code. Shape: ``[B, C, h, w]`` → ``[B, out]``."""

    def __init__(self, in_features: int, out_features: int, hidden: int = 256, layers: int = 4):
        super().__init__()
        dims = [in_features] + [hidden] * (layers - 1)
        mods: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            mods += [nn.Linear(a, b), nn.ReLU()]
        mods.append(nn.Linear(dims[-1], out_features))
        self.net = nn.Sequential(*mods)

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return self.net(code.flatten(1))


class TranslationSegmenter(nn.Module):
    """The segmenter of eqs. 4–5: f, then ``decoder`` in segmentation mode with its norm parameters
    from ``mlp(code)`` (``mlp=None``: the decoder's own layer norms, as a plain encoder-decoder).
    Holds the given modules (shared with the translation networks).

    Shape:
        ``[B, C_in, S, S]`` → logits ``[B, num_classes, S, S]`` (S = the training size).
    """

    def __init__(self, encoder: TranslationEncoder, decoder: TranslationDecoder, mlp: NormMLP | None):
        super().__init__()
        self.encoder, self.decoder, self.mlp = encoder, decoder, mlp

    def segment_code(self, code: torch.Tensor, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        """Logits from an encoding already computed (the training step batches its encoder calls)."""
        return self.decoder.segment(code, skips, None if self.mlp is None else self.mlp(code))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.segment_code(*self.encoder(x))


def critic(in_channels: int, width: int) -> nn.Sequential:
    """One scale's critic (paper T8: conv 128 4×4 s1, then norm → LeakyReLU(0.2) → conv 128 / 256 /
    512 4×4 s2, then a 1×1 conv to one map). Shape: ``[B, C, s, s]`` → ``[B, 1, s', s']``."""
    widths = [width, width, 2 * width, 4 * width]
    layers: list[nn.Module] = [nn.Conv2d(in_channels, widths[0], 4, 1, padding=1)]
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [layer_norm(a), nn.LeakyReLU(0.2), nn.Conv2d(a, b, 4, 2, padding=1)]
    # no bias: the previous convolution's bias already offsets the score (and under the hinge
    # loss a last bias gets exactly zero gradient whenever every term is active)
    layers.append(nn.Conv2d(widths[-1], 1, 1, bias=False))
    return nn.Sequential(*layers)


class MultiScaleDiscriminator(nn.Module):
    """D: ``[B, C, S, S]`` → ``[B]``, the mean over pixels and ``scales`` of the critics' maps, one
    critic with its own weights per scale (:func:`critic`), applied to the image and its 2×, 4×, ...
    average-pooled versions, as the multi-scale discriminators the paper cites (pix2pixHD, MUNIT)
    and the authors' code."""

    def __init__(self, in_channels: int = 1, width: int = 128, scales: int = 3):
        super().__init__()
        self.scales = scales
        self.critics = nn.ModuleList(critic(in_channels, width) for _ in range(scales))

    def fits(self, side: int) -> bool:
        """Whether images of ``side`` pixels are large enough for every scale's convolutions (a 4×4
        kernel needs at least 4 padded pixels)."""
        s = side
        for scale in range(self.scales):
            if scale:
                s = -(-s // 2)  # the 3×3 stride-2 average pooling: ceil(s / 2)
            if s < 3:
                return False
            t = s - 1  # the stride-1 first convolution
            for _ in range(3):  # the stride-2 convolutions
                if t < 2:
                    return False
                t //= 2
        return True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = 0.0
        for s, net in enumerate(self.critics):
            if s:
                x = F.avg_pool2d(x, 3, 2, padding=1, count_include_pad=False)
            out = out + net(x).mean(dim=(1, 2, 3))
        return out / self.scales


def spectral_normalize(module: nn.Module) -> nn.Module:
    """Spectral norm on every convolution and linear layer of ``module`` (in place)."""
    from torch.nn.utils.parametrizations import spectral_norm

    for m in list(module.modules()):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            spectral_norm(m)
    return module
