import numpy as np
import pytest
import torch

from semiseg.data.records import IGNORE_INDEX, Record
from semiseg.postprocess import (
    MRFPostprocess,
    mrf,
    mrf_binary,
    mrf_energy,
    mrf_multiclass,
    tune_mrf_weight,
)


def random_probs(k: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.moveaxis(rng.dirichlet(np.ones(k), size=shape), -1, 0)


def noisy_square(size: int = 32, flip: float = 0.12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Binary probabilities of a square, confident but with salt-and-pepper flips; and the true mask."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((size, size), np.int64)
    mask[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1
    noisy = np.where(rng.random(mask.shape) < flip, 1 - mask, mask)
    p1 = np.where(noisy == 1, 0.8, 0.2)
    return np.stack([1 - p1, p1]), mask


def noisy_multiclass(size: int = 32, k: int = 4, flip: float = 0.15, seed: int = 0):
    rng = np.random.default_rng(seed)
    mask = (np.arange(size)[None, :] * k // size).repeat(size, 0)  # vertical stripes
    noisy = np.where(rng.random(mask.shape) < flip, rng.integers(0, k, mask.shape), mask)
    probs = np.full((k, size, size), 0.3 / (k - 1))
    np.put_along_axis(probs, noisy[None], 0.7, 0)
    return probs, mask


@pytest.mark.parametrize("contrast", [None, 0.3])
def test_weight_zero_is_argmax(contrast):
    image = np.random.default_rng(1).random((3, 9, 11))
    p2, p4 = random_probs(2, (9, 11)), random_probs(4, (9, 11))
    np.testing.assert_array_equal(mrf_binary(p2, 0.0, image, contrast), p2.argmax(0))
    np.testing.assert_array_equal(mrf_multiclass(p4, 0.0, image, contrast), p4.argmax(0))
    np.testing.assert_array_equal(mrf(p4, 0.0, image, contrast).numpy(), p4.argmax(0))
    np.testing.assert_array_equal(mrf_multiclass(p4, 0.0, solver="expansion"), p4.argmax(0))


def test_graph_cut_source_sink_convention():
    # left pixel leans to 1, right is confidently 0: alone → [1, 0]; with a strong pairwise term → [0, 0]
    probs = np.array([[[0.45, 0.99]], [[0.55, 0.01]]])
    np.testing.assert_array_equal(mrf_binary(probs, 0.0), [[1, 0]])
    np.testing.assert_array_equal(mrf_binary(probs, 1.0), [[0, 0]])


def test_graph_cut_denoises_and_beats_argmax_and_perturbations():
    probs, mask = noisy_square()
    argmax = probs.argmax(0)
    out = mrf_binary(probs, 1.0)
    assert (out != mask).mean() < 0.2 * (argmax != mask).mean()
    e = mrf_energy(out, probs, 1.0)
    assert e <= mrf_energy(argmax, probs, 1.0)
    rng = np.random.default_rng(0)
    for _ in range(5):
        flip = rng.random(out.shape) < 0.02
        assert e <= mrf_energy(np.where(flip, 1 - out, out), probs, 1.0)


@pytest.mark.parametrize("contrast", [None, 0.4])
def test_graph_cut_is_the_exact_minimum_on_4x4(contrast):
    probs = random_probs(2, (4, 4), seed=3)
    image = np.random.default_rng(4).random((4, 4))
    weight = 0.6
    # all 2^16 labelings
    bits = (np.arange(2**16)[:, None] >> np.arange(16)) & 1
    y = bits.reshape(-1, 4, 4)
    u = -np.log(probs + 1e-6)
    unary = np.where(y == 1, u[1], u[0]).sum((1, 2))
    if contrast is None:
        c_h, c_v = np.ones((4, 3)), np.ones((3, 4))
    else:
        c_h = np.exp(-((image[:, 1:] - image[:, :-1]) ** 2) / (2 * contrast**2))
        c_v = np.exp(-((image[1:] - image[:-1]) ** 2) / (2 * contrast**2))
    pair = (c_h * (y[:, :, 1:] != y[:, :, :-1])).sum((1, 2)) + (c_v * (y[:, 1:] != y[:, :-1])).sum((1, 2))
    energies = unary + weight * pair
    out = mrf_binary(probs, weight, image, contrast)
    assert mrf_energy(out, probs, weight, image, contrast) == pytest.approx(energies.min(), abs=1e-9)
    assert mrf_energy(y[energies.argmin()], probs, weight, image, contrast) == pytest.approx(energies.min())


def test_very_large_weight_gives_a_constant_labeling():
    probs, _ = noisy_square()
    assert np.unique(mrf_binary(probs, 1e4)).size == 1
    p4, _ = noisy_multiclass()
    assert np.unique(mrf_multiclass(p4, 1e4, solver="expansion")).size == 1


@pytest.mark.parametrize("weight", [0.3, 1.0, 3.0])
@pytest.mark.parametrize("contrast", [None, 0.2])
def test_icm_never_increases_energy(weight, contrast):
    probs = random_probs(4, (20, 24), seed=5)
    image = np.random.default_rng(6).random((20, 24))
    init = probs.argmax(0)
    out = mrf_multiclass(probs, weight, image, contrast)
    assert mrf_energy(out, probs, weight, image, contrast) < mrf_energy(init, probs, weight, image, contrast)
    for iterations in (1, 2):  # also after every sweep
        early = mrf_multiclass(probs, weight, image, contrast, iterations=iterations)
        assert mrf_energy(early, probs, weight, image, contrast) <= mrf_energy(
            init, probs, weight, image, contrast
        )


def test_icm_checkerboard_updates_do_not_oscillate():
    # argmax is a checkerboard of classes 0/1: updating all pixels at once would flip every pixel
    # (raising the energy); red-black updates reach a constant labeling
    board = np.indices((8, 8)).sum(0) % 2
    classes = np.arange(3)[:, None, None]
    probs = np.where(classes == board, 0.6, np.where(classes == 2, 0.1, 0.3))  # [3, 8, 8]
    out = mrf_multiclass(probs, 1.0)
    assert np.unique(out).size == 1
    assert mrf_energy(out, probs, 1.0) < mrf_energy(probs.argmax(0), probs, 1.0)


def test_multiclass_denoises_and_expansion_is_at_least_as_good():
    probs, mask = noisy_multiclass()
    argmax = probs.argmax(0)
    icm = mrf_multiclass(probs, 0.8)
    expansion = mrf_multiclass(probs, 0.8, solver="expansion")
    assert (icm != mask).mean() < 0.5 * (argmax != mask).mean()
    assert mrf_energy(expansion, probs, 0.8) <= mrf_energy(icm, probs, 0.8) + 1e-9
    with pytest.raises(ValueError, match="plain Potts"):
        mrf_multiclass(probs, 0.8, np.zeros((32, 32)), 0.1, solver="expansion")


def test_contrast_weights_keep_a_thin_structure_on_an_image_edge():
    probs = np.full((2, 15, 15), 0.5)
    probs[1], probs[0] = 0.3, 0.7
    probs[1, :, 7], probs[0, :, 7] = 0.6, 0.4  # a weakly predicted one-pixel line...
    image = np.zeros((15, 15))
    image[:, 7] = 1.0  # ...that is a bright line in the image
    assert mrf_binary(probs, 1.0)[:, 7].sum() == 0  # plain Potts removes it
    np.testing.assert_array_equal(mrf_binary(probs, 1.0, image, 0.1), probs.argmax(0))  # contrast keeps it


@pytest.mark.parametrize("k", [2, 3])
def test_volume_is_processed_slice_by_slice(k):
    probs = random_probs(k, (3, 10, 12), seed=7)  # [K, D, H, W]
    image = np.random.default_rng(8).random((1, 3, 10, 12))
    out = mrf(torch.from_numpy(probs).float(), 0.7, image, contrast_sigma=0.3)
    assert out.shape == (3, 10, 12) and out.dtype == torch.long
    for d in range(3):
        expected = mrf(probs[:, d], 0.7, image[:, d], contrast_sigma=0.3)
        torch.testing.assert_close(out[d], expected)
    assert not torch.equal(out, torch.from_numpy(probs.argmax(0)))


@pytest.mark.parametrize("k", [2, 4])
def test_torch_and_numpy_inputs_agree(k):
    probs = random_probs(k, (12, 13), seed=9).astype(np.float32)
    a = mrf(probs, 0.5)
    b = mrf(torch.from_numpy(probs), 0.5)
    assert isinstance(a, torch.Tensor) and a.dtype == torch.long
    torch.testing.assert_close(a, b)
    image = torch.rand(1, 12, 13)
    record = Record(id="x", image=image.numpy(), mask=np.zeros((12, 13), np.int64))
    post = MRFPostprocess(0.5, contrast_sigma=0.2)
    torch.testing.assert_close(post(torch.from_numpy(probs), record), mrf(probs, 0.5, image, 0.2))
    assert "0.5" in repr(post)


def test_tune_picks_positive_weight_on_noisy_and_zero_on_clean():
    cases = [noisy_square(size=24, seed=s) for s in range(3)]
    best, table = tune_mrf_weight([p for p, _ in cases], [m for _, m in cases])
    assert best > 0 and table[best] < table[0.0]
    clean = [(np.stack([1.0 - m, m]) * 0.8 + 0.1, m) for _, m in cases]
    best, table = tune_mrf_weight([torch.from_numpy(p) for p, _ in clean], [m for _, m in clean])
    assert best == 0.0 and table[0.0] == 0.0
    best_dice, table_dice = tune_mrf_weight([p for p, _ in cases], [m for _, m in cases], metric="dice")
    assert best_dice > 0 and table_dice[best_dice] > table_dice[0.0]


def test_tune_ignores_unlabeled_pixels():
    probs, mask = noisy_square(size=24, seed=1)
    # label only the pixels the argmax gets wrong: argmax error 1 there, the MRF fixes most
    sparse = np.where(probs.argmax(0) != mask, mask, IGNORE_INDEX)
    best, table = tune_mrf_weight([probs], [sparse], weights=(0, 1, 2))
    assert table[0.0] == 1.0 and best > 0 and table[best] < 0.5
    best, table = tune_mrf_weight([probs], [np.full_like(mask, IGNORE_INDEX)], weights=(0, 1))
    assert best == 0.0 and np.isnan(table[0.0])


def test_bad_inputs_raise():
    p = random_probs(2, (5, 5))
    with pytest.raises(ValueError, match="weight"):
        mrf_binary(p, -1.0)
    with pytest.raises(ValueError, match="needs the image"):
        mrf(p, 1.0, contrast_sigma=0.5)
    with pytest.raises(ValueError, match="does not match"):
        mrf(p, 1.0, np.zeros((4, 5)), contrast_sigma=0.5)
    with pytest.raises(ValueError, match="2 classes"):
        mrf_binary(random_probs(3, (5, 5)), 1.0)
    with pytest.raises(ValueError, match="K >= 2"):
        mrf(np.ones((1, 5, 5)), 1.0)
    with pytest.raises(ValueError, match="non-finite"):
        mrf(np.full((2, 5, 5), np.nan), 1.0)
    with pytest.raises(ValueError, match="metric"):
        tune_mrf_weight([p], [p.argmax(0)], metric="hd95")
