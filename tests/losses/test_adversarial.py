"""Hinge adversarial losses (translation paper eq. 12): known values on hand-made critic scores, the
hinge's inactive side, batching, module = function, gradients by hand and float64 gradcheck, bad
shapes."""

from __future__ import annotations

import re

import pytest
import torch

from semiseg.losses.adversarial import HingeDiscriminatorLoss, HingeGeneratorLoss, hinge_d_loss, hinge_g_loss

REAL = [2.0, 0.5]  # D(x_real)
FAKE = [-2.0, 0.3]  # D(x_fake)


def scores(values, dtype=torch.float64, grad=False) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype, requires_grad=grad)


def rand(n: int, seed: int) -> torch.Tensor:
    """``n`` critic scores in [−3, 3), float64."""
    return 6 * torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) - 3


# ------------------------------------------------------------------------------------ known values
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_known_values(dtype):
    # L_D = mean(relu(1 − [2, 0.5])) + mean(relu(1 + [−2, 0.3])) = mean(0, 0.5) + mean(0, 1.3)
    #     = 0.25 + 0.65 = 0.9;   L_G = −mean(−2, 0.3) = 0.85
    d = hinge_d_loss(scores(REAL, dtype), scores(FAKE, dtype))
    g = hinge_g_loss(scores(FAKE, dtype))
    assert d.shape == () and g.shape == () and d.dtype == g.dtype == dtype
    rel = 1e-15 if dtype == torch.float64 else 1e-6
    assert d.item() == pytest.approx(0.9, rel=rel)
    assert g.item() == pytest.approx(0.85, rel=rel)


def test_real_and_fake_batches_may_differ_in_size():
    # each term is a mean over its own batch: (0 + 0.5 + 1) / 3 + 1.3 / 1 = 1.8
    assert hinge_d_loss(scores([2.0, 0.5, 0.0]), scores([0.3])).item() == pytest.approx(1.8, rel=1e-15)
    # ... not one mean over the 4 scores together: (0 + 0.5 + 1 + 1.3) / 4 = 0.7
    assert hinge_d_loss(scores([2.0, 0.5, 0.0]), scores([0.3])).item() != pytest.approx(0.7)


def test_confident_critic_costs_nothing_and_gets_no_gradient():
    # real ≥ 1 and fake ≤ −1: both hinges inactive (the margin is met), L_D = 0, no gradient
    real, fake = scores([1.0, 3.0, 7.5], grad=True), scores([-1.0, -4.0], grad=True)
    loss = hinge_d_loss(real, fake)
    assert loss.item() == 0.0
    loss.backward()
    assert (real.grad == 0).all() and (fake.grad == 0).all()


def test_generator_loss_is_unbounded_and_falls_as_the_critic_scores_fakes_higher():
    # no hinge on the generator's side: −mean(D(fake)), linear in the scores
    assert hinge_g_loss(scores([5.0, 7.0])).item() == -6.0
    assert hinge_g_loss(scores([-5.0, -7.0])).item() == 6.0
    fake = rand(5, seed=0)
    assert hinge_g_loss(fake + 0.1) < hinge_g_loss(fake)


# ------------------------------------------------------------------------------------ module form
def test_modules_equal_the_functions():
    real, fake = rand(4, seed=1), rand(3, seed=2)
    assert torch.equal(HingeDiscriminatorLoss()(real, fake), hinge_d_loss(real, fake))
    assert torch.equal(HingeGeneratorLoss()(fake), hinge_g_loss(fake))
    assert HingeDiscriminatorLoss()(scores(REAL), scores(FAKE)).item() == pytest.approx(0.9, rel=1e-15)
    assert HingeGeneratorLoss()(scores(FAKE)).item() == pytest.approx(0.85, rel=1e-15)
    assert not list(HingeDiscriminatorLoss().parameters()) and not list(HingeGeneratorLoss().parameters())


# ------------------------------------------------------------------------------------------ batching
def test_batched_is_the_mean_of_per_sample_losses():
    real, fake = rand(6, seed=3), rand(6, seed=4)
    per_d = torch.stack([hinge_d_loss(real[i : i + 1], fake[i : i + 1]) for i in range(6)])
    per_g = torch.stack([hinge_g_loss(fake[i : i + 1]) for i in range(6)])
    torch.testing.assert_close(hinge_d_loss(real, fake), per_d.mean(), rtol=1e-14, atol=0)
    torch.testing.assert_close(hinge_g_loss(fake), per_g.mean(), rtol=1e-14, atol=0)
    # permuting a batch changes nothing
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(hinge_d_loss(real[perm], fake), hinge_d_loss(real, fake), rtol=1e-14, atol=0)


def test_critic_loss_splits_into_its_real_and_fake_terms():
    # a score beyond the margin on the other side costs nothing: L_D(r, f) = L_D(r, −∞) + L_D(+∞, f)
    real, fake = rand(4, seed=6), rand(7, seed=7)
    far_fake, far_real = scores([-10.0]), scores([10.0])
    torch.testing.assert_close(
        hinge_d_loss(real, fake),
        hinge_d_loss(real, far_fake) + hinge_d_loss(far_real, fake),
        rtol=1e-14,
        atol=0,
    )
    torch.testing.assert_close(hinge_d_loss(real, far_fake), torch.relu(1 - real).mean(), rtol=0, atol=0)


# ----------------------------------------------------------------------------------------- gradients
def test_gradients_by_hand():
    # ∂L_D/∂real_i = −1/B_r where real_i < 1 (hinge active), else 0; ∂L_D/∂fake_j = 1/B_f where
    # fake_j > −1; ∂L_G/∂fake_j = −1/B_f everywhere
    real, fake = scores([2.0, 0.5, -1.0, 1.5], grad=True), scores([-2.0, 0.3, -0.5], grad=True)
    hinge_d_loss(real, fake).backward()
    assert real.grad.tolist() == [0.0, -0.25, -0.25, 0.0]
    assert fake.grad.tolist() == pytest.approx([0.0, 1 / 3, 1 / 3], rel=1e-15)
    fake.grad = None
    hinge_g_loss(fake).backward()
    assert fake.grad.tolist() == pytest.approx([-1 / 3] * 3, rel=1e-15)


def test_gradcheck_float64():
    real, fake = rand(5, seed=8), rand(4, seed=9)
    # away from the kinks (real = 1, fake = −1), where the hinge is not differentiable
    assert (real - 1).abs().min() > 1e-3 and (fake + 1).abs().min() > 1e-3
    assert ((real < 1).any() and (real > 1).any()) and ((fake > -1).any() and (fake < -1).any())  # both sides
    real.requires_grad_(True)
    fake.requires_grad_(True)
    assert torch.autograd.gradcheck(hinge_d_loss, (real, fake), eps=1e-6, atol=1e-8)
    assert torch.autograd.gradcheck(hinge_g_loss, (fake,), eps=1e-6, atol=1e-8)
    assert torch.autograd.gradcheck(HingeDiscriminatorLoss(), (real, fake), eps=1e-6, atol=1e-8)
    assert torch.autograd.gradcheck(HingeGeneratorLoss(), (fake,), eps=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------------------- bad input
BAD_SHAPES = [(), (2, 1), (1, 2), (2, 1, 4, 4)]


@pytest.mark.parametrize("shape", BAD_SHAPES, ids=str)
def test_scores_that_are_not_one_per_image_raise(shape):
    bad, good = torch.zeros(shape), torch.zeros(2)
    pattern = re.escape(f"expected one critic score per image, shape [B], got {tuple(shape)}")
    with pytest.raises(ValueError, match=r"^real: " + pattern):
        hinge_d_loss(bad, good)
    with pytest.raises(ValueError, match=r"^fake: " + pattern):
        hinge_d_loss(good, bad)
    with pytest.raises(ValueError, match=r"^fake: " + pattern):
        hinge_g_loss(bad)
    with pytest.raises(ValueError, match=r"^real: "):
        HingeDiscriminatorLoss()(bad, good)
    with pytest.raises(ValueError, match=r"^fake: "):
        HingeGeneratorLoss()(bad)
