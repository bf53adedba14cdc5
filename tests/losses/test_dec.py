"""DEC / SSLDEC: Student-t soft assignment (eq. 1), target distribution (eq. 2), KL (eq. 3) and its
gradients (eq. 4), and the clustering head."""

from __future__ import annotations

import pytest
import torch

from semiseg.losses.dec import DECLoss, DECTarget, cluster_frequency, dec_kl, target_distribution
from semiseg.models.heads import ClusteringHead
from semiseg.ops import student_t_log_assignment

Z = torch.tensor([[0.0], [1.0]], dtype=torch.float64)  # two 1-D points
MU = torch.tensor([[0.0], [1.0]], dtype=torch.float64)  # centroids on them


def q_by_hand(z, mu, alpha):
    """Eq. 1 literally, one item at a time."""
    rows = []
    for zi in z:
        k = torch.stack([(1 + (zi - m).pow(2).sum() / alpha) ** (-(alpha + 1) / 2) for m in mu])
        rows.append(k / k.sum())
    return torch.stack(rows)


def test_soft_assignment_matches_eq_1_on_hand_made_points():
    q = student_t_log_assignment(Z, MU).exp()
    torch.testing.assert_close(q, torch.tensor([[2 / 3, 1 / 3], [1 / 3, 2 / 3]], dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    z, mu = (
        torch.randn(7, 3, generator=g, dtype=torch.float64),
        torch.randn(4, 3, generator=g, dtype=torch.float64),
    )
    for alpha in (0.5, 1.0, 3.0):
        q = student_t_log_assignment(z, mu, alpha).exp()
        torch.testing.assert_close(q, q_by_hand(z, mu, alpha))
        torch.testing.assert_close(q.sum(1), torch.ones(7, dtype=torch.float64))


def test_soft_assignment_is_uniform_for_equal_centroids_and_stable_far_away():
    q = student_t_log_assignment(torch.randn(5, 2), torch.ones(3, 2)).exp()
    torch.testing.assert_close(q, torch.full((5, 3), 1 / 3))
    far = student_t_log_assignment(torch.tensor([[1e10, 0.0]]), torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
    assert torch.isfinite(far).all()


def test_soft_assignment_per_pixel_equals_flattened_vectors():
    g = torch.Generator().manual_seed(1)
    z, mu = torch.randn(2, 3, 4, 5, generator=g), torch.randn(6, 3, generator=g)
    per_pixel = student_t_log_assignment(z, mu)
    assert per_pixel.shape == (2, 6, 4, 5)
    flat = student_t_log_assignment(z.movedim(1, -1).reshape(-1, 3), mu)
    torch.testing.assert_close(per_pixel.movedim(1, -1).reshape(-1, 6), flat)


def test_soft_assignment_rejects_bad_input():
    with pytest.raises(ValueError, match="alpha must be > 0"):
        student_t_log_assignment(Z, MU, alpha=0)
    with pytest.raises(ValueError, match=r"centroids must be \[K, 1\]"):
        student_t_log_assignment(Z, torch.zeros(2, 3, dtype=torch.float64))


def test_target_distribution_matches_eq_2_and_sharpens():
    q = torch.tensor([[2 / 3, 1 / 3], [1 / 3, 2 / 3]])
    torch.testing.assert_close(target_distribution(q), torch.tensor([[0.8, 0.2], [0.2, 0.8]]))
    g = torch.Generator().manual_seed(2)
    q = torch.rand(9, 4, generator=g).softmax(1)
    f = q.sum(0)
    by_hand = q**2 / f
    by_hand = by_hand / by_hand.sum(1, keepdim=True)
    p = target_distribution(q)
    torch.testing.assert_close(p, by_hand)
    torch.testing.assert_close(p.sum(1), torch.ones(9))
    assert torch.equal(p.argmax(1), (q**2 / f).argmax(1))
    # with balanced clusters p is sharper than q, with the same argmax
    balanced = torch.tensor([[0.7, 0.3], [0.3, 0.7]])
    pb = target_distribution(balanced)
    assert torch.equal(pb.argmax(1), balanced.argmax(1)) and (pb.max(1).values > balanced.max(1).values).all()
    # one item: f = q, so p = q; the scale of f does not matter
    one = q[:1]
    torch.testing.assert_close(target_distribution(one), one)
    torch.testing.assert_close(target_distribution(q, 10 * f), p)
    assert not target_distribution(q.requires_grad_()).requires_grad


def test_target_distribution_uses_the_given_frequency_and_pixel_layout():
    g = torch.Generator().manual_seed(3)
    q = torch.rand(2, 3, 4, 4, generator=g).softmax(1)
    f = cluster_frequency(q)
    torch.testing.assert_close(f, q.sum((0, 2, 3)))
    p = target_distribution(q, f)
    flat = target_distribution(q.movedim(1, -1).reshape(-1, 3))
    torch.testing.assert_close(p.movedim(1, -1).reshape(-1, 3), flat)
    # the frequency over everything predicted, not over this batch
    batch = q[:1]
    torch.testing.assert_close(target_distribution(batch, f), p[:1])
    assert not torch.allclose(target_distribution(batch), p[:1])
    with pytest.raises(ValueError, match=r"frequency must be \[3\]"):
        target_distribution(q, torch.ones(2))
    with pytest.raises(ValueError, match="non-negative"):
        target_distribution(-q)


def test_kl_value_reductions_and_weights():
    q = torch.tensor([[2 / 3, 1 / 3], [1 / 3, 2 / 3]], dtype=torch.float64)
    p = target_distribution(q)
    assert float(dec_kl(q.log(), p, reduction="sum")) == pytest.approx(0.0873842414)
    assert float(dec_kl(q.log(), p)) == pytest.approx(0.0873842414 / 2)
    per = dec_kl(q.log(), p, reduction="none")
    assert per.shape == (2,) and float(per.sum()) == pytest.approx(0.0873842414)
    assert float(dec_kl(q.log(), q)) == pytest.approx(0.0, abs=1e-12)  # P = Q
    # a one-hot P is the cross-entropy of q
    onehot = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    assert float(dec_kl(q.log(), onehot)) == pytest.approx(-torch.log(torch.tensor(2 / 3)).item())
    # weights: an item of weight 0 does not count, the mean is over the weights
    w = torch.tensor([1.0, 0.0], dtype=torch.float64)
    assert float(dec_kl(q.log(), p, w)) == pytest.approx(float(per[0]))
    assert torch.equal(DECLoss("sum")(q.log(), p), dec_kl(q.log(), p, reduction="sum"))
    torch.testing.assert_close(DECTarget()(q), p)
    with pytest.raises(ValueError, match="unknown reduction"):
        dec_kl(q.log(), p, reduction="max")
    with pytest.raises(ValueError, match="differ"):
        dec_kl(q.log(), p[:1])
    with pytest.raises(ValueError, match="weight must be"):
        dec_kl(q.log(), p, torch.ones(3, dtype=torch.float64))


def test_kl_gradients_match_eq_4():
    """∂L/∂z_i = 2 Σ_j (1 + ‖z_i − μ_j‖²)⁻¹ (p_ij − q_ij)(z_i − μ_j), ∂L/∂μ_j = −2 Σ_i (same); α = 1."""
    g = torch.Generator().manual_seed(4)
    z = torch.randn(5, 3, generator=g, dtype=torch.float64, requires_grad=True)
    mu = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    log_q = student_t_log_assignment(z, mu, alpha=1.0)
    q = log_q.exp().detach()
    p = target_distribution(torch.rand(5, 4, generator=g, dtype=torch.float64).softmax(1))
    dec_kl(log_q, p, reduction="sum").backward()
    diff = z.detach()[:, None] - mu.detach()[None]  # [i, j, D]
    kernel = 1 / (1 + diff.pow(2).sum(-1))  # [i, j]
    term = 2 * (kernel * (p - q))[..., None] * diff
    torch.testing.assert_close(z.grad, term.sum(1))
    torch.testing.assert_close(mu.grad, -term.sum(0))


def test_gradcheck_and_masked_pixels_get_no_gradient():
    g = torch.Generator().manual_seed(5)
    z = torch.randn(2, 3, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    mu = torch.randn(2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    p = target_distribution(student_t_log_assignment(z, mu).exp())
    w = torch.ones(2, 3, 3, dtype=torch.float64)
    w[0, 1, 2] = 0
    assert torch.autograd.gradcheck(lambda a, b: dec_kl(student_t_log_assignment(a, b, 2.0), p, w), (z, mu))
    dec_kl(student_t_log_assignment(z, mu), p, w).backward()
    assert torch.equal(z.grad[0, :, 1, 2], torch.zeros(3, dtype=torch.float64))
    assert (z.grad.abs().sum(1) > 0).sum() == 17


def test_clustering_head_gives_q_in_the_input_layout_and_trains_its_centroids():
    torch.manual_seed(0)
    head = ClusteringHead(4, 3, alpha=1.0)
    z = torch.randn(2, 3, 5, 6)
    log_q = head(z)
    assert log_q.shape == (2, 4, 5, 6)
    torch.testing.assert_close(log_q, student_t_log_assignment(z, head.centroids))
    torch.testing.assert_close(log_q.exp().sum(1), torch.ones(2, 5, 6))
    log_q.logsumexp(1).sum().backward()  # any loss: the centroids get a gradient
    head.zero_grad()
    dec_kl(head(z), target_distribution(head(z).exp())).backward()
    assert head.centroids.grad is not None and head.centroids.grad.abs().sum() > 0
    assert head(torch.randn(7, 3)).shape == (7, 4)
    with pytest.raises(ValueError, match="alpha"):
        ClusteringHead(2, 2, alpha=-1)
    with pytest.raises(ValueError, match="unknown centroid init"):
        ClusteringHead(2, 2, init="kmeans")


def test_model_head_clustering_wraps_any_model_and_passes_features_through():
    from semiseg.config import ModelConfig
    from semiseg.models import build_model
    from semiseg.models.heads import Clustered

    torch.manual_seed(0)
    net = build_model(ModelConfig(width=4, depth=2, head="clustering", alpha=2.0), 1, 3)
    assert isinstance(net, Clustered) and net.head.centroids.shape == (3, 3) and net.head.alpha == 2.0
    x = torch.rand(2, 1, 20, 24)
    log_q = net(x)
    assert log_q.shape == (2, 3, 20, 24)
    torch.testing.assert_close(log_q.softmax(1), log_q.exp())  # log q: its softmax is q
    torch.testing.assert_close(net.decode(net.encode(x), x.shape[-2:]), log_q)
    torch.testing.assert_close(log_q, student_t_log_assignment(net.backbone(x), net.head.centroids, 2.0))


def test_bad_alpha_is_a_config_error():
    from semiseg.config import build_config
    from semiseg.errors import ConfigError

    raw = {"data": {"dataset": "shapes"}, "method": {"name": "supervised"}, "model": {"head": "clustering"}}
    assert build_config(raw, []).model.head == "clustering"
    with pytest.raises(ConfigError, match=r"'model.alpha' must be a finite number > 0"):
        build_config(raw, ["model.alpha=0"])


def test_dec_regularizer_pulls_q_toward_the_batch_target_distribution():
    from semiseg.config import ModelConfig
    from semiseg.core import Batch
    from semiseg.losses.dec import DECSpec
    from semiseg.methods import build_method

    spec = DECSpec(weight=0.5)
    assert spec.name == "dec" and spec.streams == ["unlabeled"]
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(2, 3, 4, 4, generator=g, requires_grad=True)
    batch = Batch.of(torch.rand(2, 1, 4, 4, generator=g))
    value = spec.loss(logits, batch)
    q = logits.detach().softmax(1)
    want = dec_kl(logits.log_softmax(1), target_distribution(q, cluster_frequency(q)))
    torch.testing.assert_close(value, want)
    value.backward()
    assert logits.grad.abs().sum() > 0
    # a clustering head's output is log q: the regulariser reads that q itself (KL to its target)
    log_q = student_t_log_assignment(torch.randn(2, 2, 4, 4, generator=g), torch.randn(3, 2, generator=g))
    q = log_q.exp()
    torch.testing.assert_close(
        spec.loss(log_q, batch), dec_kl(log_q, target_distribution(q, cluster_frequency(q)))
    )
    # composes with any method from config (mean teacher here), on the unlabeled stream only
    method = build_method({"name": "mean_teacher", "regularizers": [{"name": "dec", "weight": 0.1}]},
                          ModelConfig(width=4, depth=2, head="clustering"), in_channels=1, num_classes=3)  # fmt: skip
    assert method.regularizer_streams() == ("unlabeled",)
    labeled = Batch.of(torch.rand(2, 1, 16, 16, generator=g), torch.randint(0, 3, (2, 16, 16), generator=g))
    unlabeled = Batch.of(torch.rand(3, 1, 16, 16, generator=g))
    out = method.training_step({"labeled": labeled, "unlabeled": unlabeled}, "train", "main")
    assert "reg/dec" in out and torch.isfinite(out["reg/dec"]) and out["reg/dec"] > 0
