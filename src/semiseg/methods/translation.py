"""Presence/absence translation: segmentation from image tags through image-to-image translation.

Vorontsov, Molchanov, Beckham, Kautz and Kadoury, "Towards semi-supervised segmentation via
image-to-image translation" (``presence-absence-translation.txt``). Images tagged "target present"
(P) are translated to "target absent" (A) and back. An encoder f splits an image into a common code
c and a unique code u; the common decoder g_com(c) draws the image without the target, the residual
decoder g_res(c, u) the residual that puts the target back. The residual decoder, with its last
layer swapped for a pixel classifier and its norm parameters produced by an MLP from the code
(eqs. 4–5), is the segmenter, trained on the few masks.

One iteration (eqs. 1–12; f is batched over all its inputs, the norms are per sample):

    [c_P, u_P] = f(x_P)   [c_A, u_A] = f(x_A)
    x_PA = g_com(c_P)     x_PP = x_PA + g_res(c_P, u_P)      x_AA = g_com(c_A)
    x_AP = x_AA + g_res(c_A, u),  u ~ N(0, I)                 x_APA = g_com(c_AP)
    L_G = λ_seg Dice(y, g_seg(c_L, u_L)) + λ_rec (‖x_P − x_PP‖₁ + ‖x_A − x_AA‖₁)
          + λ_lat (‖c_P − c_PA‖₁ + ‖c_A − c_AP‖₁ + ‖c_A − c_AA‖₁ + ‖c_P − c_PP‖₁ + ‖u_P − u_PP‖₁
                   + ‖u − u_AP‖₁) + λ_cyc ‖x_A − x_APA‖₁ − λ_adv (D_A(x_PA) + D_P(x_AP))
    L_D = hinge(D_A; x_A real, x_PA fake) + hinge(D_P; x_P real, x_AP fake)

(‖·‖₁ = mean absolute difference; [c_·, u_·] of a translated image = f of it.)

Engine contract: one phase, "train", with three streams — "labeled" (the masks), "present" and
"absent" (the tagged images of the split's unlabeled set, filtered by the tag of ``target_class``,
:class:`~semiseg.phases.StreamSpec`) — and two optimizers, "generator" (encoder, decoders, MLP;
the paper's AMSGrad, β = (0.5, 0.999), lr 1e-4) then "discriminator" (the two multi-scale
critics, lr 1e-3), each with its own settings in ``method.generator`` / ``method.discriminator``.
The generator step caches its translations (detached) for the discriminator step of the same
iteration, as CycleGAN does, so one generator forward serves both; the critics see the translations
of the generator before its update. During the generator step the critics run in eval mode so their
spectral-norm power iteration advances once per iteration, in their own step.

Baselines and ablations are configurations of the same networks (the paper's Table 1):

- ``objective: segmentation`` — "only segmentation": encoder + a decoder of the residual decoder's
  layout (§3.3) with layer norms and a pixel classifier, Dice on the masks; ``seg_weight`` defaults
  to 1. No spectral norm and no norm MLP: appendix A gives spectral norm to "the proposed method"
  and layer norm to all decoders (``spectral_norm``, ``baseline_norm: adaptive`` switch them on).
- ``objective: autoencoder`` — the AE baseline: the same plus a reconstruction decoder (the common
  decoder's layout, reading the whole code, no long skips), L = Dice + L1(x, x̂) on the present and
  absent images (the paper's λ_seg = λ_rec = 1, the defaults here).
- ``segmenter: separate`` — "sep dec": a third decoder (the residual decoder's layout, its own
  weights and norm MLP, i.e. the proposed segmenter without weight sharing) segments; the residual
  decoder only translates.
- ``skip: compress | concat | sum | none`` — the long-skip ablation (Fig. 5).

Judgement calls (where the paper is silent; see ``models/translation.py`` for the networks'):

- The masks come as their own stream of ``train.batch_size`` images per iteration (the authors'
  code mixes the ~1 % labeled images into the P batch); the labeled images go through the encoder
  and the segmentation head only.
- u ~ N(0, I) is drawn per sample from the absent batch's keys (identical across resumption and
  process counts). As in the paper's tables and the authors' code, the encoder ends in ReLU, so the
  unique codes of real images are ≥ 0 while the prior is centred: ‖u − u_AP‖₁ can never reach 0
  for the negative draws. Kept as published.
- Spectral norm on every network of the proposed model (``spectral_norm: all``, as appendix A and
  the code; ``encoder_decoders`` follows §3.2), computed once per step (``parametrize.cached``).
- ``baseline_decoder: common`` switches the baselines' segmentation decoder to the common decoder's
  layout (appendix A's reading; default: the residual decoder, as §3.3 says).
- The networks depend on the training image size (the MLP reads the flattened code); prediction on
  images of another size resizes them to it and the logits back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from semiseg.config import FieldError, OptimizerConfig, check_weights
from semiseg.core import Batch
from semiseg.errors import ConfigError
from semiseg.losses.adversarial import hinge_d_loss, hinge_g_loss
from semiseg.losses.supervised import masked_dice_loss
from semiseg.methods import register
from semiseg.methods.base import Method, MethodConfig, OptimizerSpec, Phase
from semiseg.models.translation import (
    SKIP_TYPES,
    MultiScaleDiscriminator,
    NormMLP,
    TranslationDecoder,
    TranslationEncoder,
    TranslationSegmenter,
    spectral_normalize,
)
from semiseg.ops import exporting
from semiseg.phases import StreamSpec

UNIQUE_SALT = 0x5A4D  # key salt of the u ~ N(0, I) draws


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Run ``modules`` in eval mode (their state, e.g. spectral norm's power-iteration vectors, does not
    move), then restore each one's mode."""
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)


def same_batch(a: Batch, b: Batch) -> bool:
    """Whether two batches hold the same samples (keys) and images."""
    return a is b or (torch.equal(a.key, b.key) and torch.equal(a.image, b.image))


def _paper_optimizer(lr: float) -> OptimizerConfig:
    return OptimizerConfig(type="adam", amsgrad=True, lr=lr, betas=[0.5, 0.999])


@dataclass
class TranslationConfig(MethodConfig):
    objective: Literal["translation", "autoencoder", "segmentation"] = "translation"
    segmenter: Literal["shared", "separate"] = "shared"  #: "separate" = the paper's "sep dec"
    skip: Literal["compress", "concat", "sum", "none"] = "compress"  #: long skips (Fig. 5)
    seg_weight: float | None = None  #: λ_seg; None = 0.01 (translation, App. A) or 1 (baselines)
    rec_weight: float | None = None  #: λ_rec; None = 50 (translation) or 1 (autoencoder)
    lat_weight: float = 1.0  #: λ_lat (latent reconstruction, eq. 10)
    cyc_weight: float = 50.0  #: λ_cyc (A→P→A cycle, eq. 11)
    adv_weight: float = 3.0  #: λ_adv (hinge GAN, eq. 12)
    target_class: int = 1  #: the class whose image tag splits present (1) from absent (0) images
    unique_channels: int = 128  #: channels of u among the bottleneck's (paper: 128 of 512)
    mlp_hidden: int = 256  #: units per hidden layer of the norm-parameter MLP (paper: 256)
    mlp_layers: int = 4  #: linear layers of that MLP (paper: 4)
    disc_width: int = 128  #: first-layer channels of each critic (paper T8: 128)
    disc_scales: int = 3  #: scales of each multi-scale critic
    #: None = "all" for objective translation (appendix A: "in the proposed method ... spectral
    #: normalization applied to all networks"), "none" for the baselines
    spectral_norm: Literal["all", "encoder_decoders", "none"] | None = None
    baseline_decoder: Literal["residual", "common"] = "residual"  #: the baselines' segmentation decoder
    #: the baselines' decoder norms: "layer" (appendix A: all decoders use layer normalisation) or
    #: "adaptive" (AdaIN from the norm MLP, as the proposed segmenter)
    baseline_norm: Literal["layer", "adaptive"] = "layer"
    generator: OptimizerConfig = field(default_factory=lambda: _paper_optimizer(1e-4))
    discriminator: OptimizerConfig = field(default_factory=lambda: _paper_optimizer(1e-3))

    def __post_init__(self) -> None:
        if self.seg_weight is None:
            self.seg_weight = 0.01 if self.objective == "translation" else 1.0
        if self.rec_weight is None:
            self.rec_weight = 50.0 if self.objective == "translation" else 1.0
        if self.spectral_norm is None:
            self.spectral_norm = "all" if self.objective == "translation" else "none"
        check_weights(self, "seg_weight", "rec_weight", "lat_weight", "cyc_weight", "adv_weight")
        for name in ("unique_channels", "mlp_hidden", "mlp_layers", "disc_width", "disc_scales"):
            if getattr(self, name) < 1:
                raise FieldError(name, f"must be >= 1, got {getattr(self, name)}")
        if self.objective != "translation" and self.segmenter == "separate":
            raise FieldError("segmenter", "'separate' is a variant of objective: translation")
        if self.skip not in SKIP_TYPES:  # typed by the loader; kept for direct construction
            raise FieldError("skip", f"must be one of {', '.join(SKIP_TYPES)}")


@register("translation")
class Translation(Method):
    config_class = TranslationConfig
    applies_regularizers = False  # its losses are the paper's (eqs. 1–12)

    def __init__(self, cfg: TranslationConfig, **kwargs):
        super().__init__(cfg, **kwargs)
        m = self.model_cfg
        if self.image_size is None:
            raise ConfigError("method 'translation' needs the training image size (data.image_size)")
        side = self.image_size[0]
        if len(set(self.image_size)) != 1 or side % 2**m.depth:
            raise ConfigError(
                f"data.image_size: method 'translation' needs square images whose side divides by "
                f"2**model.depth = {2**m.depth}, got {list(self.image_size)}"
            )
        if not 0 <= cfg.target_class < self.num_classes:
            raise ConfigError(
                f"method.target_class: {cfg.target_class} is not a class of 0..{self.num_classes - 1}"
            )
        self.encoder = TranslationEncoder(self.in_channels, m.width, m.depth)
        code = self.encoder.channels[-1]
        if cfg.unique_channels >= code:
            raise ConfigError(
                f"method.unique_channels: {cfg.unique_channels} must be below the bottleneck's "
                f"{code} channels (model.width · 2**model.depth)"
            )
        skips = self.encoder.channels[:-1]
        code_features = code * (side // 2**m.depth) ** 2
        k, c_in = self.num_classes, self.in_channels
        translating = cfg.objective == "translation"
        if translating:
            self.common = TranslationDecoder(code - cfg.unique_channels, skips, c_in, skip=cfg.skip)
            shared = cfg.segmenter == "shared"
            self.residual = TranslationDecoder(
                code, skips, c_in, residual=True, skip=cfg.skip, num_classes=k if shared else None
            )
            seg_decoder = self.residual if shared else self._seg_decoder(code, skips, residual=True)
            self.disc_a = MultiScaleDiscriminator(c_in, cfg.disc_width, cfg.disc_scales)
            self.disc_p = MultiScaleDiscriminator(c_in, cfg.disc_width, cfg.disc_scales)
            if not self.disc_a.fits(side):
                raise ConfigError(
                    f"method.disc_scales: images of {side} pixels are too small for {cfg.disc_scales} "
                    "critic scales (each halves the side; use fewer scales or larger images)"
                )
        else:
            seg_decoder = self._seg_decoder(
                code,
                skips,
                residual=cfg.baseline_decoder == "residual",
                adaptive=cfg.baseline_norm == "adaptive",
            )
            if cfg.objective == "autoencoder":
                self.reconstruction = TranslationDecoder(code, skips, c_in, skip="none")
        self.mlp: NormMLP | None = None
        if translating or cfg.baseline_norm == "adaptive":
            self.mlp = NormMLP(code_features, seg_decoder.norm_parameters, cfg.mlp_hidden, cfg.mlp_layers)
        if cfg.spectral_norm != "none":
            for net in self.generator_modules():
                spectral_normalize(net)
            if cfg.spectral_norm == "all" and translating:
                spectral_normalize(self.disc_a)
                spectral_normalize(self.disc_p)

    def _seg_decoder(
        self, code: int, skips: Sequence[int], residual: bool, adaptive: bool = True
    ) -> TranslationDecoder:
        self.seg_decoder = TranslationDecoder(
            code,
            skips,
            residual=residual,
            skip=self.cfg.skip,
            num_classes=self.num_classes,
            translation=False,
            layer_norm=not adaptive,
        )
        return self.seg_decoder

    # ------------------------------------------------------------------ structure
    @property
    def translating(self) -> bool:
        return self.cfg.objective == "translation"

    @property
    def segmenter(self) -> TranslationSegmenter:
        decoder = getattr(self, "seg_decoder", None)
        decoder = self.residual if decoder is None else decoder
        return TranslationSegmenter(self.encoder, decoder, self.mlp)

    def generator_modules(self) -> list[nn.Module]:
        names = ("encoder", "common", "residual", "seg_decoder", "reconstruction", "mlp")
        return [getattr(self, n) for n in names if getattr(self, n, None) is not None]

    def phases(self) -> list[Phase]:
        cfg = self.cfg
        tags = {
            "present": StreamSpec("present", "unlabeled", tag_class=cfg.target_class, tag_value=1.0),
            "absent": StreamSpec("absent", "unlabeled", tag_class=cfg.target_class, tag_value=0.0),
        }
        if cfg.objective == "segmentation":
            return [Phase(streams=("labeled",), optimizers=(OptimizerSpec("generator", cfg.generator),))]
        if cfg.objective == "autoencoder":
            streams = ("labeled", tags["present"], tags["absent"])
            return [Phase(streams=streams, optimizers=(OptimizerSpec("generator", cfg.generator),))]
        optimizers = (
            OptimizerSpec("generator", cfg.generator),
            OptimizerSpec("discriminator", cfg.discriminator),
        )
        return [Phase(streams=("labeled", tags["present"], tags["absent"]), optimizers=optimizers)]

    def parameters_for(self, phase: str, optimizer: str) -> Iterator[nn.Parameter]:
        if optimizer == "discriminator":
            return iter([*self.disc_a.parameters(), *self.disc_p.parameters()])
        return iter([p for net in self.generator_modules() for p in net.parameters()])

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: dict[str, Batch], phase: str, optimizer: str) -> dict:
        with parametrize.cached():
            if optimizer == "discriminator":
                return self.discriminator_step(batch)
            if self.cfg.objective == "segmentation":
                return self.segmentation_step(batch)
            if self.cfg.objective == "autoencoder":
                return self.autoencoder_step(batch)
            return self.generator_step(batch)

    def seg_loss(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Eq. 8: 1 − soft Dice of the softmax (foreground classes, over the batch; unlabeled pixels
        ignored)."""
        return masked_dice_loss(logits, mask)

    def segmentation_step(self, batch: dict[str, Batch]) -> dict:
        lab = batch["labeled"]
        seg = self.seg_loss(self.segmenter(lab.image), lab.mask)
        return {"loss": self.cfg.seg_weight * seg, "seg": seg}

    def autoencoder_step(self, batch: dict[str, Batch]) -> dict:
        lab, images = batch["labeled"], torch.cat([batch["present"].image, batch["absent"].image])
        code, skips = self.encoder(torch.cat([lab.image, images]))
        n = len(lab.image)
        seg = self.seg_loss(self.segmenter.segment_code(code[:n], [s[:n] for s in skips]), lab.mask)
        rec = F.l1_loss(self.reconstruction(code[n:], []), images)
        cfg = self.cfg
        return {"loss": cfg.seg_weight * seg + cfg.rec_weight * rec, "seg": seg, "rec": rec}

    def split_code(self, code: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(c, u): the bottleneck's last ``unique_channels`` channels are u (appendix A)."""
        u = self.cfg.unique_channels
        return code[:, :-u], code[:, -u:]

    def sample_unique(self, absent: Batch, code_a: torch.Tensor) -> torch.Tensor:
        """u ~ N(0, I) of eq. 6, one draw per absent image keyed by its batch key.
        Shape: code_a ``[B, C_code, h, w]`` → ``[B, unique_channels, h, w]``."""
        return absent.randn(UNIQUE_SALT, (self.cfg.unique_channels, *code_a.shape[2:])).to(code_a)

    def generator_step(self, batch: dict[str, Batch]) -> dict:
        cfg = self.cfg
        lab, present, absent = batch["labeled"], batch["present"], batch["absent"]
        x_p, x_a = present.image, absent.image
        n_p, n_a, n_l = len(x_p), len(x_a), len(lab.image)
        pa = slice(0, n_p + n_a)  # the present and absent images' rows of a batched encoding

        code, skips = self.encoder(torch.cat([x_p, x_a, lab.image]))
        code_p, code_a, code_l = code.split([n_p, n_a, n_l])
        (c_p, u_p), (c_a, _) = self.split_code(code_p), self.split_code(code_a)
        skips_pa = [s[pa] for s in skips]
        x_pa, x_aa = self.common(torch.cat([c_p, c_a]), skips_pa).split([n_p, n_a])  # eq. 2
        u = self.sample_unique(absent, code_a)
        residuals = self.residual(torch.cat([code_p, torch.cat([c_a, u], 1)]), skips_pa)
        x_pp, x_ap = x_pa + residuals[:n_p], x_aa + residuals[n_p:]  # eqs. 3, 6

        code2, skips2 = self.encoder(torch.cat([x_pa, x_pp, x_ap, x_aa]))  # eq. 10's encodings
        c_pa, code_pp, code_ap, c_aa = code2.split([n_p, n_p, n_a, n_a])
        c_pa, c_aa = self.split_code(c_pa)[0], self.split_code(c_aa)[0]
        (c_pp, u_pp), (c_ap, u_ap) = self.split_code(code_pp), self.split_code(code_ap)
        ap = slice(2 * n_p, 2 * n_p + n_a)
        x_apa = self.common(c_ap, [s[ap] for s in skips2])  # eq. 11

        logits = self.segmenter.segment_code(code_l, [s[n_p + n_a :] for s in skips])  # eqs. 4-5
        seg = self.seg_loss(logits, lab.mask)
        rec = F.l1_loss(x_pp, x_p) + F.l1_loss(x_aa, x_a)  # eq. 9
        lat = (
            F.l1_loss(c_pa, c_p) + F.l1_loss(c_ap, c_a) + F.l1_loss(c_aa, c_a) + F.l1_loss(c_pp, c_p)
            + F.l1_loss(u_pp, u_p) + F.l1_loss(u_ap, u)
        )  # fmt: skip
        cyc = F.l1_loss(x_apa, x_a)
        with frozen(self.disc_a, self.disc_p):  # no power iteration of the critics in this step
            adv = hinge_g_loss(self.disc_a(x_pa)) + hinge_g_loss(self.disc_p(x_ap))  # eq. 12
        self._fakes = (present, absent, x_pa.detach(), x_ap.detach())
        loss = (
            cfg.seg_weight * seg + cfg.rec_weight * rec + cfg.lat_weight * lat + cfg.cyc_weight * cyc
            + cfg.adv_weight * adv
        )  # fmt: skip
        return {"loss": loss, "seg": seg, "rec": rec, "lat": lat, "cyc": cyc, "adv": adv}

    @torch.no_grad()
    def translate(self, batch: dict[str, Batch]) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_PA, x_AP) of the batch's present and absent images, without gradients and without
        moving the generator's state (its networks run in eval mode: no spectral-norm power
        iteration): the critics' fakes when the generator did not step in this iteration, and the
        figures' translations."""
        with frozen(*self.generator_modules()):
            return self._translate(batch)

    def _translate(self, batch: dict[str, Batch]) -> tuple[torch.Tensor, torch.Tensor]:
        x_p, x_a = batch["present"].image, batch["absent"].image
        code, skips = self.encoder(torch.cat([x_p, x_a]))
        code_p, code_a = code.split([len(x_p), len(x_a)])
        c_p, c_a = self.split_code(code_p)[0], self.split_code(code_a)[0]
        x_pa, x_aa = self.common(torch.cat([c_p, c_a]), skips).split([len(x_p), len(x_a)])
        u = self.sample_unique(batch["absent"], code_a)
        skips_a = [s[len(x_p) :] for s in skips]
        return x_pa, x_aa + self.residual(torch.cat([c_a, u], 1), skips_a)

    def discriminator_step(self, batch: dict[str, Batch]) -> dict:
        present, absent = batch["present"], batch["absent"]
        cached, self._fakes = getattr(self, "_fakes", None), None
        if cached is not None and same_batch(cached[0], present) and same_batch(cached[1], absent):
            x_pa, x_ap = cached[2], cached[3]
        else:
            x_pa, x_ap = self.translate(batch)
        n_p, n_a = len(present.image), len(absent.image)
        real_a, fake_a = self.disc_a(torch.cat([absent.image, x_pa])).split([n_a, n_p])
        real_p, fake_p = self.disc_p(torch.cat([present.image, x_ap])).split([n_p, n_a])
        loss = hinge_d_loss(real_a, fake_a) + hinge_d_loss(real_p, fake_p)
        d_real = torch.cat([real_a, real_p]).mean().detach()
        d_fake = torch.cat([fake_a, fake_p]).mean().detach()
        return {"loss": loss, "d_real": d_real, "d_fake": d_fake}

    # ------------------------------------------------------------------ prediction
    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Segmentation logits; images of another size than the training one are resized to it and
        the logits back (bilinear). Shape: ``[B, C, H, W]`` → ``[B, K, H, W]``."""
        size = tuple(images.shape[-2:])
        if not exporting() and size == self.image_size:  # first: comparing sizes would fix the exported one
            return self.segmenter(images)
        x = F.interpolate(images, size=self.image_size, mode="bilinear", align_corners=False)
        return F.interpolate(self.segmenter(x), size=size, mode="bilinear", align_corners=False)
