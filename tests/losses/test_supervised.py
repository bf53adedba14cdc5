"""Masked cross-entropy and soft Dice: known values, ignored pixels, batching, reductions, gradcheck."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from semiseg.data.records import IGNORE_INDEX
from semiseg.losses import MaskedCrossEntropy, MaskedDice, masked_cross_entropy, masked_dice_loss

K = 3


def sample(b=2, h=5, w=6, ignore_frac=0.4, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, K, h, w, generator=g, dtype=dtype)
    target = torch.randint(0, K, (b, h, w), generator=g)
    target[torch.rand(b, h, w, generator=g) < ignore_frac] = IGNORE_INDEX
    return logits, target


# ------------------------------------------------------------------------------------------ cross-entropy
def test_ce_equals_cross_entropy_on_labeled_pixels():
    logits, target = sample()
    keep = target != IGNORE_INDEX
    flat_logits = logits.movedim(1, -1)[keep]  # [N, K]
    expected = F.cross_entropy(flat_logits, target[keep])
    assert masked_cross_entropy(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)
    expected_sum = F.cross_entropy(flat_logits, target[keep], reduction="sum")
    assert masked_cross_entropy(logits, target, reduction="sum").item() == pytest.approx(
        expected_sum.item(), rel=1e-6
    )


def test_ce_known_value():
    # two classes, equal logits: -log(1/2) per labeled pixel
    logits = torch.zeros(1, 2, 2, 2)
    target = torch.tensor([[[0, 1], [IGNORE_INDEX, IGNORE_INDEX]]])
    assert masked_cross_entropy(logits, target).item() == pytest.approx(torch.log(torch.tensor(2.0)).item())


def test_ce_ignored_pixels_get_exactly_zero_gradient():
    logits, target = sample()
    logits.requires_grad_(True)
    masked_cross_entropy(logits, target).backward()
    ignored = (target == IGNORE_INDEX).unsqueeze(1).expand_as(logits)
    assert ignored.any()
    assert (logits.grad[ignored] == 0).all()
    assert (logits.grad[~ignored] != 0).any()


def test_ce_ignored_pixel_values_do_not_matter():
    logits, target = sample()
    changed = logits.clone()
    changed[(target == IGNORE_INDEX).unsqueeze(1).expand_as(logits)] = 1e4
    assert torch.equal(masked_cross_entropy(logits, target), masked_cross_entropy(changed, target))


def test_ce_all_ignored_is_zero_with_zero_gradient():
    logits = torch.randn(2, K, 4, 4, requires_grad=True)
    target = torch.full((2, 4, 4), IGNORE_INDEX)
    loss = masked_cross_entropy(logits, target)
    assert loss.item() == 0.0 and torch.isfinite(loss)
    loss.backward()
    assert (logits.grad == 0).all()


def test_ce_batched_equals_per_sample_weighted_by_labeled_pixels():
    logits, target = sample(b=4, ignore_frac=0.6, seed=3)
    counts = (target != IGNORE_INDEX).flatten(1).sum(1).float()
    assert len(set(counts.tolist())) > 1  # samples have different numbers of labeled pixels
    per = torch.stack([masked_cross_entropy(logits[i : i + 1], target[i : i + 1]) for i in range(4)])
    weighted = (per * counts).sum() / counts.sum()
    assert masked_cross_entropy(logits, target).item() == pytest.approx(weighted.item(), rel=1e-6)
    per_sum = sum(
        masked_cross_entropy(logits[i : i + 1], target[i : i + 1], reduction="sum") for i in range(4)
    )
    assert masked_cross_entropy(logits, target, reduction="sum").item() == pytest.approx(
        per_sum.item(), rel=1e-6
    )


def test_ce_bad_reduction():
    logits, target = sample()
    with pytest.raises(ValueError, match="reduction"):
        masked_cross_entropy(logits, target, reduction="none")


def test_ce_module_matches_function_and_custom_ignore_index():
    logits, target = sample()
    assert torch.equal(MaskedCrossEntropy()(logits, target), masked_cross_entropy(logits, target))
    other = target.masked_fill(target == IGNORE_INDEX, -1)
    assert MaskedCrossEntropy(ignore_index=-1)(logits, other).item() == pytest.approx(
        masked_cross_entropy(logits, target).item(), rel=1e-6
    )


def test_ce_3d_inputs():
    logits = torch.randn(2, K, 3, 4, 5)
    target = torch.randint(0, K, (2, 3, 4, 5))
    assert masked_cross_entropy(logits, target).item() == pytest.approx(
        F.cross_entropy(logits, target).item(), rel=1e-6
    )


# ------------------------------------------------------------------------------------------ Dice
def test_dice_perfect_prediction_is_about_zero():
    _, target = sample(ignore_frac=0.3)
    onehot = F.one_hot(target.clamp(max=K - 1), K).movedim(-1, 1).float()
    logits = 50.0 * onehot  # ignored pixels get some arbitrary confident class
    assert masked_dice_loss(logits, target).item() == pytest.approx(0.0, abs=1e-5)
    assert masked_dice_loss(logits, target, include_background=True).item() == pytest.approx(0.0, abs=1e-5)
    assert masked_dice_loss(-logits, target).item() == pytest.approx(1.0, abs=1e-4)  # always wrong


def test_dice_known_value():
    # one image, 4 labeled pixels of class 1, probabilities 0.5 everywhere (2 classes):
    # inter = 2, |p| = 2, |t| = 4 → Dice = 4/6
    logits = torch.zeros(1, 2, 2, 2)
    target = torch.ones(1, 2, 2, dtype=torch.long)
    assert masked_dice_loss(logits, target, smooth=0.0).item() == pytest.approx(1 - 4 / 6)


def test_dice_ignored_pixels_get_exactly_zero_gradient():
    logits, target = sample()
    logits.requires_grad_(True)
    masked_dice_loss(logits, target).backward()
    ignored = (target == IGNORE_INDEX).unsqueeze(1).expand_as(logits)
    assert (logits.grad[ignored] == 0).all()
    assert (logits.grad[~ignored] != 0).any()


def test_dice_all_ignored_is_zero():
    logits = torch.randn(2, K, 4, 4, requires_grad=True)
    loss = masked_dice_loss(logits, torch.full((2, 4, 4), IGNORE_INDEX))
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    loss.backward()
    assert (logits.grad == 0).all()


def test_dice_is_batch_wise_and_order_invariant():
    logits, target = sample(b=4, seed=5)
    perm = torch.tensor([2, 0, 3, 1])
    assert masked_dice_loss(logits[perm], target[perm]).item() == pytest.approx(
        masked_dice_loss(logits, target).item(), rel=1e-6
    )
    # batch-wise = one big image made of the batch side by side
    wide_logits = torch.cat(list(logits), dim=-1)[None]
    wide_target = torch.cat(list(target), dim=-1)[None]
    assert masked_dice_loss(wide_logits, wide_target).item() == pytest.approx(
        masked_dice_loss(logits, target).item(), rel=1e-6
    )


def test_dice_module_matches_function():
    logits, target = sample()
    assert torch.equal(
        MaskedDice(include_background=True)(logits, target),
        masked_dice_loss(logits, target, include_background=True),
    )


# ------------------------------------------------------------------------------------------ gradcheck
@pytest.mark.parametrize(
    "loss",
    [
        masked_cross_entropy,
        lambda x, t: masked_cross_entropy(x, t, reduction="sum"),
        masked_dice_loss,
        lambda x, t: masked_dice_loss(x, t, include_background=True),
    ],
    ids=["ce", "ce_sum", "dice", "dice_bg"],
)
def test_gradcheck_float64(loss):
    logits, target = sample(b=2, h=3, w=4, dtype=torch.float64, seed=7)
    logits.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: loss(x, target), (logits,), eps=1e-6, atol=1e-6)
