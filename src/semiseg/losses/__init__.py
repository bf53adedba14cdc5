"""Losses: one file per loss, each a function plus an ``nn.Module`` wrapper."""

from semiseg.losses.supervised import MaskedCrossEntropy, MaskedDice, masked_cross_entropy, masked_dice_loss

__all__ = ["MaskedCrossEntropy", "MaskedDice", "masked_cross_entropy", "masked_dice_loss"]
