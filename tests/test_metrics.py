"""Metrics on hand-made masks with hand-computed values, conventions for empty classes, MONAI agreement."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from semiseg.metrics import (
    IGNORE_INDEX,
    aggregate,
    confusion_matrix,
    dice_per_class,
    evaluate_case,
    hd95_key,
    hd95_per_class,
    jaccard_per_class,
    pixel_error,
    relative_area_difference,
)


def square(size: int, rows: slice, cols: slice, label: int = 1) -> torch.Tensor:
    m = torch.zeros(size, size, dtype=torch.long)
    m[rows, cols] = label
    return m


@pytest.fixture
def overlapping_squares() -> tuple[torch.Tensor, torch.Tensor]:
    """Two 4x4 squares in 8x8 sharing 8 pixels: |A|=|B|=16, |A∩B|=8, |A∪B|=24."""
    pred = square(8, slice(0, 4), slice(0, 4))
    target = square(8, slice(0, 4), slice(2, 6))
    return pred, target


def test_confusion_matrix_rows_are_target(overlapping_squares):
    pred, target = overlapping_squares
    cm = confusion_matrix(pred, target, num_classes=2)
    assert cm.dtype == torch.int64
    # background: 64 - 24 pixels correct; 8 false positives of class 1 (target 0, pred 1) in row 0.
    assert cm.tolist() == [[40, 8], [8, 8]]
    asym = confusion_matrix(torch.tensor([1, 1, 1]), torch.tensor([0, 1, 1]), num_classes=2)
    assert asym.tolist() == [[0, 1], [0, 2]]


def test_dice_jaccard_pixel_error_known_values(overlapping_squares):
    pred, target = overlapping_squares
    dice = dice_per_class(pred, target, num_classes=2)
    assert dice.dtype == torch.float64 and dice.shape == (2,)
    assert dice[1].item() == pytest.approx(2 * 8 / (16 + 16))
    assert dice[0].item() == pytest.approx(2 * 40 / (48 + 48))
    jac = jaccard_per_class(pred, target, num_classes=2)
    assert jac[1].item() == pytest.approx(8 / 24)
    assert jac[0].item() == pytest.approx(40 / 56)
    assert pixel_error(pred, target, num_classes=2) == pytest.approx(16 / 64)


def test_3d_volume():
    target = torch.zeros(4, 6, 6, dtype=torch.long)
    target[1:3, 1:4, 1:4] = 1  # 18 voxels
    pred = torch.zeros_like(target)
    pred[1:4, 1:4, 1:4] = 1  # 27 voxels, 18 shared
    dice = dice_per_class(pred, target, num_classes=2)
    assert dice[1].item() == pytest.approx(2 * 18 / (27 + 18))
    assert jaccard_per_class(pred, target, 2)[1].item() == pytest.approx(18 / 27)
    assert relative_area_difference(pred, target, 2)[1].item() == pytest.approx((27 - 18) / 18)
    assert pixel_error(pred, target, 2) == pytest.approx(9 / 144)


def test_ignored_target_pixels_are_excluded(overlapping_squares):
    pred, target = overlapping_squares
    target = target.clone()
    target[:, 0:2] = IGNORE_INDEX  # hides the 8 false-positive pixels of pred (and 8 correct background)
    dice = dice_per_class(pred, target, num_classes=2)
    # class 1: pred 8 (cols 2-3), target 16, overlap 8 -> 16/24
    assert dice[1].item() == pytest.approx(16 / 24)
    assert pixel_error(pred, target, num_classes=2) == pytest.approx(8 / 48)
    assert int(confusion_matrix(pred, target, 2).sum()) == 64 - 16
    # whatever pred says on ignored pixels does not matter
    pred2 = pred.clone()
    pred2[:, 0:2] = 0
    assert torch.equal(dice_per_class(pred2, target, 2), dice)
    # the ignored region is also cut out of HD95: pred's remaining part is cols 2-3, whatever pred
    # says on the ignored columns (class 1 on all of them would be 4.16 px away without the cut)
    hd = hd95_per_class(pred, target, 2)
    assert hd.tolist() == pytest.approx([2.0, 2.0])
    pred3 = pred.clone()
    pred3[:, 0:2] = 1
    assert torch.equal(hd95_per_class(pred3, target, 2), hd)
    # ignore_index=None treats 255 as a label, which is then out of range
    with pytest.raises(ValueError, match="target values"):
        dice_per_class(pred, target, 2, ignore_index=None)


def test_all_pixels_ignored_gives_nan_pixel_error():
    pred = torch.zeros(3, 3, dtype=torch.long)
    target = torch.full((3, 3), IGNORE_INDEX)
    assert math.isnan(pixel_error(pred, target, num_classes=2))


def test_empty_class_conventions():
    target = square(10, slice(2, 5), slice(2, 5), label=1)
    pred = target.clone()
    pred[7:9, 7:9] = 2  # class 2 predicted, absent from target; class 3 absent from pred
    target[0, 9] = 3
    k = 5  # class 4 absent from both
    dice = dice_per_class(pred, target, k)
    jac = jaccard_per_class(pred, target, k)
    hd = hd95_per_class(pred, target, k)
    rad = relative_area_difference(pred, target, k)
    assert dice[1].item() == 1.0 and hd[1].item() == 0.0 and rad[1].item() == 0.0
    # absent from exactly one: dice/jaccard 0, hd95 undefined
    assert dice[2].item() == 0.0 and jac[2].item() == 0.0 and math.isnan(hd[2].item())
    assert dice[3].item() == 0.0 and jac[3].item() == 0.0 and math.isnan(hd[3].item())
    # rad: target empty but predicted -> nan; missed entirely -> -1
    assert math.isnan(rad[2].item()) and rad[3].item() == -1.0
    # absent from both: dice/jaccard 1, hd95 0, rad 0
    assert dice[4].item() == 1.0 and jac[4].item() == 1.0
    assert hd[4].item() == 0.0 and rad[4].item() == 0.0


def test_relative_area_difference_sign():
    target = square(8, slice(0, 2), slice(0, 2))  # 4 pixels
    over = square(8, slice(0, 2), slice(0, 3))  # 6 pixels
    under = square(8, slice(0, 1), slice(0, 2))  # 2 pixels
    assert relative_area_difference(over, target, 2)[1].item() == pytest.approx(0.5)
    assert relative_area_difference(under, target, 2)[1].item() == pytest.approx(-0.5)


def test_hd95_shifted_square_2d():
    target = square(16, slice(4, 10), slice(4, 10))
    pred = square(16, slice(4, 10), slice(6, 12))  # shifted 2 pixels along columns
    hd = hd95_per_class(pred, target, num_classes=2)
    assert hd.dtype == torch.float64
    assert hd[1].item() == pytest.approx(2.0)
    assert hd95_per_class(pred, target, 2, spacing=(1.0, 3.0))[1].item() == pytest.approx(6.0)
    assert hd95_per_class(pred, target, 2, spacing=2.0)[1].item() == pytest.approx(4.0)
    assert hd95_per_class(target, target, 2)[1].item() == 0.0


def test_hd95_shifted_cube_3d():
    target = torch.zeros(12, 10, 10, dtype=torch.long)
    target[2:7, 2:7, 2:7] = 1
    pred = torch.zeros_like(target)
    pred[4:9, 2:7, 2:7] = 1  # shifted 2 voxels along depth
    assert hd95_per_class(pred, target, 2)[1].item() == pytest.approx(2.0)
    assert hd95_per_class(pred, target, 2, spacing=(2.5, 1, 1))[1].item() == pytest.approx(5.0)


def test_evaluate_case_keys_and_means(overlapping_squares):
    pred, target = overlapping_squares
    pred, target = pred.clone(), target.clone()
    pred[6:8, 6:8] = 2
    target[6:8, 6:8] = 2  # class 2 perfect
    out = evaluate_case(pred, target, num_classes=3)
    assert set(out) == {
        *(f"{m}/{c}" for m in ("dice", "jaccard", "rad", "hd95_px", "asd_px") for c in ("1", "2", "mean")),
        "pixel_error",
    }
    assert out["dice/1"] == pytest.approx(0.5) and out["dice/2"] == 1.0
    assert out["dice/mean"] == pytest.approx(0.75)
    assert out["jaccard/mean"] == pytest.approx((1 / 3 + 1) / 2)
    assert out["hd95_px/2"] == 0.0 and out["hd95_px/mean"] == pytest.approx(out["hd95_px/1"] / 2)
    assert out["pixel_error"] == pytest.approx(16 / 64)

    with_bg = evaluate_case(pred, target, 3, metrics=("dice",), include_background=True)
    assert set(with_bg) == {"dice/0", "dice/1", "dice/2", "dice/mean"}
    per_class = dice_per_class(pred, target, 3)
    assert with_bg["dice/mean"] == pytest.approx(float(per_class.mean()))


def test_hd95_key_carries_the_unit():
    target = square(16, slice(4, 10), slice(4, 10))
    pred = square(16, slice(4, 10), slice(6, 12))  # shifted 2 pixels along columns
    px = evaluate_case(pred, target, 2, metrics=("hd95",))
    mm = evaluate_case(pred, target, 2, metrics=("hd95",), spacing=(1.0, 0.7))
    assert px == {"hd95_px/1": pytest.approx(2.0), "hd95_px/mean": pytest.approx(2.0)}
    assert mm == {"hd95_mm/1": pytest.approx(1.4), "hd95_mm/mean": pytest.approx(1.4)}
    assert hd95_key(None) == "hd95_px" and hd95_key(0.5) == "hd95_mm"


def test_records_with_a_spacing_are_scored_in_millimetres():
    from semiseg.data.records import Record
    from semiseg.engine.evaluate import ALL_METRICS, evaluate_records, metric_keys

    target = torch.zeros(4, 16, 16, dtype=torch.long)
    target[1:3, 4:10, 4:10] = 1
    image = torch.roll(target, 2, dims=-1)[None].float().numpy()  # the prediction, shifted 2 voxels along W
    records = [
        Record(id="px", image=image, mask=target.numpy()),
        Record(id="mm", image=image, mask=target.numpy(), spacing=(5.0, 1.5, 1.5)),
    ]

    def predict(x):  # segments the image as it is
        return torch.cat([1.0 - x, x], dim=1) * 10

    means, cases = evaluate_records(
        predict, records, num_classes=2, image_size=(16, 16), device=torch.device("cpu"), metrics=ALL_METRICS
    )
    assert cases[0]["hd95_px/1"] == pytest.approx(2.0) and "hd95_mm/1" not in cases[0]
    assert cases[1]["hd95_mm/1"] == pytest.approx(3.0) and "hd95_px/1" not in cases[1]
    assert means["hd95_px/mean"] == pytest.approx(2.0) and means["hd95_mm/mean"] == pytest.approx(3.0)
    assert {"hd95_px/mean", "hd95_mm/mean"} <= set(metric_keys(2, ALL_METRICS))
    with pytest.raises(ValueError, match="spacing"):
        Record(id="bad", image=image, spacing=(1.0, 1.0))


def test_evaluate_case_nan_mean_and_class_names():
    target = square(10, slice(2, 5), slice(2, 5), label=1)
    pred = target.clone()
    pred[7:9, 7:9] = 2  # hd95/2 undefined
    out = evaluate_case(pred, target, 3, metrics=("hd95", "dice"), class_names=["bg", "LV", "RV"])
    assert list(out) == ["hd95_px/LV", "hd95_px/RV", "hd95_px/mean", "dice/LV", "dice/RV", "dice/mean"]
    assert math.isnan(out["hd95_px/RV"]) and out["hd95_px/mean"] == 0.0  # nan-mean over classes
    assert out["dice/mean"] == pytest.approx(0.5)  # plain mean: 1 and 0


def test_aggregate_mean_population_std_and_nan_count():
    cases = [
        {"dice/1": 0.5, "hd95_px/1": 2.0},
        {"dice/1": 1.0, "hd95_px/1": math.nan},
        {"dice/1": 0.0, "hd95_px/1": 4.0},
    ]
    agg = aggregate(cases)
    assert agg["dice/1"]["mean"] == pytest.approx(0.5)
    assert agg["dice/1"]["std"] == pytest.approx(math.sqrt((0.0**2 + 0.5**2 + 0.5**2) / 3))  # ddof=0
    assert agg["dice/1"]["n"] == 3 and agg["dice/1"]["n_nan"] == 0
    assert agg["hd95_px/1"] == {"mean": pytest.approx(3.0), "std": pytest.approx(1.0), "n": 2, "n_nan": 1}
    only_nan = aggregate([{"x": math.nan}])["x"]
    assert math.isnan(only_nan["mean"]) and math.isnan(only_nan["std"]) and only_nan["n_nan"] == 1
    assert aggregate([]) == {}


def test_aggregate_of_evaluated_cases(overlapping_squares):
    pred, target = overlapping_squares
    cases = [evaluate_case(pred, target, 2), evaluate_case(target, target, 2)]
    agg = aggregate(cases)
    assert agg["dice/mean"]["mean"] == pytest.approx(0.75)
    assert agg["dice/mean"]["std"] == pytest.approx(0.25)
    assert agg["pixel_error"]["n"] == 2


def test_numpy_input_matches_torch(overlapping_squares):
    pred, target = overlapping_squares
    np_pred, np_target = pred.numpy().astype(np.uint8), target.numpy().astype(np.int32)
    assert torch.equal(dice_per_class(np_pred, np_target, 2), dice_per_class(pred, target, 2))
    assert evaluate_case(np_pred, np_target, 2) == evaluate_case(pred, target, 2)
    # integer-valued floats are accepted
    assert pixel_error(pred.float(), target.double(), 2) == pytest.approx(0.25)


def test_dice_agrees_with_monai():
    from monai.metrics import compute_dice

    gen = torch.Generator().manual_seed(0)
    k = 4
    target = torch.randint(0, k, (2, 24, 24), generator=gen)
    pred = torch.where(
        torch.rand(2, 24, 24, generator=gen) < 0.7, target, torch.randint(0, k, (2, 24, 24), generator=gen)
    )
    for p, t in zip(pred, target):
        ours = dice_per_class(p, t, k)
        one_hot = torch.nn.functional.one_hot
        ref = compute_dice(
            one_hot(p, k).permute(2, 0, 1)[None].float(),
            one_hot(t, k).permute(2, 0, 1)[None].float(),
            include_background=True,
        )[0].double()
        defined = ~torch.isnan(ref)
        assert defined.all()  # every class occurs in random masks of this size
        torch.testing.assert_close(ours[defined], ref[defined], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    ("pred", "target", "match"),
    [
        (torch.zeros(4, 4, dtype=torch.long), torch.zeros(4, 5, dtype=torch.long), "shapes differ"),
        (torch.full((4, 4), 3), torch.zeros(4, 4, dtype=torch.long), r"pred values must be in \[0, 3\)"),
        (torch.full((4, 4), -1), torch.zeros(4, 4, dtype=torch.long), "pred values"),
        (torch.full((4, 4), IGNORE_INDEX), torch.zeros(4, 4, dtype=torch.long), "pred values"),
        (torch.zeros(4, 4, dtype=torch.long), torch.full((4, 4), 7), "target values"),
        (torch.full((4, 4), 0.5), torch.zeros(4, 4, dtype=torch.long), "integer class indices"),
    ],
)
def test_bad_input_raises(pred, target, match):
    with pytest.raises(ValueError, match=match):
        dice_per_class(pred, target, num_classes=3)


def test_bad_arguments_raise():
    m = torch.zeros(4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="unknown metrics"):
        evaluate_case(m, m, 2, metrics=("dice", "hausdorff"))
    with pytest.raises(ValueError, match="class_names"):
        evaluate_case(m, m, 3, class_names=["bg", "fg"])
    with pytest.raises(ValueError, match="ignore_index"):
        dice_per_class(m, m, 3, ignore_index=1)
    with pytest.raises(ValueError, match="num_classes"):
        dice_per_class(m, m, 0)
    with pytest.raises(ValueError, match="spacing"):
        hd95_per_class(m, m, 2, spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="2D"):
        hd95_per_class(torch.zeros(5, dtype=torch.long), torch.zeros(5, dtype=torch.long), 2)


def test_import_does_not_load_monai():
    code = "import sys, semiseg.metrics; assert 'monai' not in sys.modules, 'monai imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_pooled_dice_counts_every_pixel_of_the_split_once():
    from semiseg.data.records import Record
    from semiseg.engine.evaluate import evaluate_records, metric_keys

    small = torch.zeros(8, 8, dtype=torch.long)
    small[0, 0] = 1  # a 1-pixel object, found: Dice 1
    big = torch.zeros(8, 8, dtype=torch.long)
    big[:, :4] = 1  # a 32-pixel object, half found: Dice 2·16 / (16 + 32) = 2/3
    found_big = torch.zeros(8, 8)
    found_big[:4, :4] = 1
    records = [
        Record(id="small", image=small[None].float().numpy(), mask=small.numpy()),
        Record(id="big", image=found_big[None].numpy(), mask=big.numpy()),
    ]

    def predict(x):  # segments the image as it is
        return torch.cat([1.0 - x, x], dim=1) * 10

    means, _ = evaluate_records(
        predict, records, num_classes=2, image_size=(8, 8), device=torch.device("cpu")
    )
    assert means["dice/1"] == pytest.approx((1 + 2 / 3) / 2)  # mean over cases
    assert means["dice_pooled/1"] == pytest.approx(2 * 17 / (17 + 33))  # every pixel once
    assert means["dice_pooled/mean"] == means["dice_pooled/1"]
    assert {"dice_pooled/1", "dice_pooled/mean"} <= set(metric_keys(2))


def test_asd_is_one_directional_from_the_prediction_in_pixels_or_mm():
    """A 2x2 prediction at the centre of an 8x8 target: each predicted (surface) pixel is 3 pixels
    from the target's border ring, by row and by column; with spacing (1, 0.5) mm the column
    distance, 1.5 mm, is the nearer."""
    target = torch.zeros(10, 10, dtype=torch.long)
    target[1:9, 1:9] = 1
    pred = torch.zeros_like(target)
    pred[4:6, 4:6] = 1
    out = evaluate_case(pred, target, num_classes=2, metrics=("asd",))
    assert out["asd_px/1"] == pytest.approx(3.0)
    assert evaluate_case(pred, target, 2, metrics=("asd",), spacing=(1.0, 0.5))["asd_mm/1"] == pytest.approx(
        1.5
    )
    # from the target's ring (28 pixels) to the small square is farther; a symmetric ASD would give
    # one value, ~3.35, both ways
    assert evaluate_case(target, pred, 2, metrics=("asd",))["asd_px/1"] > 3.3
    # empty classes as HD95: absent from both 0, from one nan
    assert (
        evaluate_case(torch.zeros_like(target), torch.zeros_like(target), 2, metrics=("asd",))["asd_px/1"]
        == 0
    )
    assert math.isnan(evaluate_case(torch.zeros_like(target), target, 2, metrics=("asd",))["asd_px/1"])
