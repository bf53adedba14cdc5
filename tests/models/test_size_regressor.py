"""The size regressor's shared training pieces: networks, outputs, sizes in pixels, examples.

(rotate_flip and region_targets are tested through their re-export in tests/methods/test_size_method.py.)
"""

from __future__ import annotations

import doctest
import math

import pytest
import torch

import semiseg.methods.size as size_method
from semiseg.core import Batch
from semiseg.errors import ConfigError
from semiseg.models import size_regressor as sr
from semiseg.models.regressor import DensityRegressor, Regressor


def test_examples():
    result = doctest.testmod(sr, optionflags=doctest.ELLIPSIS)
    assert result.attempted and not result.failed


def test_the_size_method_uses_these_pieces():
    for name in ("rotate_flip", "region_targets", "REGRESSOR_AUGMENT_SALT"):
        assert getattr(size_method, name) is getattr(sr, name)


@pytest.mark.parametrize(("arch", "cls"), [("cnn", Regressor), ("density", DensityRegressor)])
@pytest.mark.parametrize("centroids", [False, True])
def test_build_and_split(arch, cls, centroids):
    torch.manual_seed(0)
    net = sr.build_size_regressor(arch, 1, 2, centroids=centroids, width=4, depth=2, norm="batch")
    assert isinstance(net, cls)
    out = net(torch.rand(3, 1, 16, 16))
    assert out.shape == (3, 2 * (3 if centroids else 1))
    area, centroid = sr.split_regression(out, 2, centroids)
    assert torch.equal(area, out[:, :2])
    assert (centroid is None) != centroids and (centroid is None or centroid.shape == (3, 2, 2))
    if centroids:  # the units after the areas, a (row, column) pair per region
        assert torch.equal(centroid[:, 0], out[:, 2:4]) and torch.equal(centroid[:, 1], out[:, 4:6])


def test_unknown_arch():
    with pytest.raises(ValueError, match="must be cnn or density, got 'resnet'"):
        sr.build_size_regressor("resnet", 1, 2)


def test_regressed_sizes_are_pixels_at_the_probability_size():
    area = torch.tensor([[0.25, -0.5], [0.1, 1.0]])
    probs = torch.zeros(2, 4, 8, 16, dtype=torch.float64)
    sizes = sr.regressed_sizes(area, [1, 3], probs)
    assert sizes.dtype == torch.float64 and sizes.shape == (2, 4)
    assert torch.isnan(sizes[:, [0, 2]]).all()
    assert sizes[:, [1, 3]].tolist() == [[32.0, 0.0], [pytest.approx(12.8), 128.0]]


def test_regression_loss_names_the_config_key_when_labels_are_missing():
    sparse = Batch.of(torch.rand(2, 1, 8, 8), num_classes=2)  # no mask, no sizes
    with pytest.raises(ConfigError, match=r"^method\.regularizers\[3\]\.source: regressor needs dense masks"):
        sr.regression_loss(lambda x: (x.new_zeros(len(x), 1), None), sparse, 2, [1], degrees=0.0,
                           flips=False, where="method.regularizers[3].source")  # fmt: skip


def test_regression_loss_targets_the_area_fractions():
    mask = torch.zeros(2, 8, 8, dtype=torch.long)
    mask[0, :2] = 1  # 16 of 64 pixels
    batch = Batch.of(torch.rand(2, 1, 8, 8), mask, num_classes=2)
    pred = torch.tensor([[0.5], [0.0]])
    out = sr.regression_loss(lambda x: (pred, None), batch, 2, [1], degrees=0.0, flips=False)
    assert out["loss"].item() == pytest.approx(((0.5 - 0.25) ** 2 + 0.0) / 2)
    assert set(out) == {"loss", "size_loss"} and not math.isnan(out["size_loss"].item())


def test_volumes_are_scored_on_their_training_grid_with_the_target_spacing():
    import numpy as np

    from semiseg.data.records import Record
    from semiseg.errors import DataError

    mask = np.zeros((4, 12, 12), np.int64)
    mask[1:3, 3:9, 3:9] = 1
    record = Record("v", np.ones((1, 4, 12, 12), np.float32), mask, spacing=(2.0, 1.0, 1.0))
    seen = []

    def regress(x):
        seen.append(tuple(x.shape[2:]))
        return torch.full((len(x), 1), 0.5), None

    metrics = sr.regression_metrics(
        regress, [record], [-1, -1, -1], torch.device("cpu"), 2, [1], [1.0, -1, 2.0]
    )
    assert seen == [(8, 12, 6)]  # depth 4 x 2 mm / 1 mm, width 12 x 1 mm / 2 mm
    # the true area: 2 of 4 slices x 6 x 6 of 12 x 12 = 1/8 of the volume; 0.5 predicted
    assert metrics["size_mae_fraction"] == pytest.approx(0.5 - 1 / 8, abs=0.02)
    with pytest.raises(DataError, match="data.target_spacing needs volumes with a voxel spacing"):
        sr.regression_metrics(regress, [Record("w", record.image, mask)], [-1, -1, -1], torch.device("cpu"), 2,
                              [1], [1.0, -1, 2.0])  # fmt: skip
