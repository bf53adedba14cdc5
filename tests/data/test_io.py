"""Tests for semiseg.data.io: reading images and masks, and every bad-data error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from semiseg.data.io import (
    IMAGE_SUFFIXES,
    check_mask_values,
    check_same_size,
    list_images,
    normalize_intensity,
    read_image,
    read_mask,
    unlabeled_to_ignore,
)
from semiseg.errors import ConfigError, DataError

RNG = np.random.default_rng(0)


def _gray_u8(h: int = 6, w: int = 5) -> np.ndarray:
    return RNG.integers(0, 256, size=(h, w), dtype=np.uint8)


def _palette_mask(path: Path, indices: np.ndarray) -> Path:
    """Saves ``indices`` as a palette PNG whose colours differ from the indices."""
    im = Image.fromarray(indices.astype(np.uint8), mode="P")
    palette = [0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255] + [7] * (256 * 3 - 12)
    im.putpalette(palette)
    im.save(path)
    return path


# ----------------------------------------------------------------------------- read_image


def test_gray_png_scaled_to_unit_range(tmp_path: Path) -> None:
    arr = _gray_u8()
    Image.fromarray(arr).save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    assert img.dtype == np.float32 and img.shape == (1, 6, 5)
    np.testing.assert_allclose(img[0], arr / 255.0, atol=1e-7)


def test_rgb_png_and_channel_conversions(tmp_path: Path) -> None:
    rgb = RNG.integers(0, 256, size=(4, 7, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    img = read_image(tmp_path / "c.png")
    assert img.shape == (3, 4, 7)
    np.testing.assert_allclose(img, rgb.transpose(2, 0, 1) / 255.0, atol=1e-7)
    gray = read_image(tmp_path / "c.png", channels="gray")
    assert gray.shape == (1, 4, 7)
    np.testing.assert_allclose(gray[0], 0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2], atol=1e-6)

    Image.fromarray(_gray_u8()).save(tmp_path / "g.png")
    as_rgb = read_image(tmp_path / "g.png", channels="rgb")
    assert as_rgb.shape == (3, 6, 5)
    assert (as_rgb[0] == as_rgb[1]).all() and (as_rgb[1] == as_rgb[2]).all()


def test_rgba_drops_alpha(tmp_path: Path) -> None:
    rgba = RNG.integers(0, 256, size=(3, 3, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    np.testing.assert_allclose(img, rgba[..., :3].transpose(2, 0, 1) / 255.0, atol=1e-7)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_content_fills_the_unit_range_by_default(tmp_path: Path, suffix: str) -> None:
    """12-bit content in a 16-bit file used to land in [0, 0.06] (÷ 65535); auto = per-image min-max."""
    arr = np.array([[100, 1000, 4095]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / f"a{suffix}")
    img = read_image(tmp_path / f"a{suffix}")
    np.testing.assert_allclose(img[0], (arr - 100.0) / (4095.0 - 100.0), rtol=1e-6)
    np.testing.assert_array_equal(read_image(tmp_path / f"a{suffix}", intensity="none")[0], arr)


def test_float_tiff_min_max_by_default_raw_with_none(tmp_path: Path) -> None:
    arr = np.array([[-0.5, 0.25], [1.0, 2.5]], dtype=np.float32)
    Image.fromarray(arr).save(tmp_path / "f.tiff")
    img = read_image(tmp_path / "f.tiff")
    assert img.shape == (1, 2, 2)
    np.testing.assert_allclose(img[0], (arr + 0.5) / 3.0, rtol=1e-6)
    np.testing.assert_array_equal(read_image(tmp_path / "f.tiff", intensity="none")[0], arr)


def test_eight_bit_auto_is_division_by_255_bit_for_bit(tmp_path: Path) -> None:
    gray, rgb = _gray_u8(), RNG.integers(0, 256, size=(4, 7, 3), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    Image.fromarray(rgb).save(tmp_path / "c.png")
    assert np.array_equal(read_image(tmp_path / "g.png")[0], gray.astype(np.float32) / 255.0)
    c = rgb.astype(np.float32).transpose(2, 0, 1) / 255.0
    assert np.array_equal(read_image(tmp_path / "c.png"), c)
    luma = np.tensordot(np.array([0.299, 0.587, 0.114], dtype=np.float32), c, axes=1)
    assert np.array_equal(read_image(tmp_path / "c.png", channels="gray")[0], luma)


def test_explicit_intensity_modes(tmp_path: Path) -> None:
    arr = np.arange(2, 202, dtype=np.uint8).reshape(10, 20)
    arr[0, 0] = 255  # one outlier
    Image.fromarray(arr).save(tmp_path / "a.png")
    raw = arr.astype(np.float32)

    np.testing.assert_array_equal(read_image(tmp_path / "a.png", intensity="none")[0], raw)
    np.testing.assert_allclose(
        read_image(tmp_path / "a.png", intensity="minmax")[0], (raw - 3) / 252, rtol=1e-6
    )
    pct = read_image(tmp_path / "a.png", intensity="percentile")[0]
    lo, hi = np.percentile(raw, [0.5, 99.5])
    np.testing.assert_allclose(pct, np.clip((raw - lo) / (hi - lo), 0, 1), atol=1e-6)
    assert pct.min() == 0.0 and pct.max() == 1.0 and pct[-1, -1] > 0.99  # the outlier does not squeeze 201
    z = read_image(tmp_path / "a.png", intensity="zscore")[0]
    assert z.mean() == pytest.approx(0.0, abs=1e-5) and z.std() == pytest.approx(1.0, rel=1e-5)
    for mode in ("minmax", "percentile", "zscore"):  # a constant image gives zeros, not NaN
        np.testing.assert_array_equal(normalize_intensity(np.full((1, 3, 3), 7.0), mode), np.zeros((1, 3, 3)))
    with pytest.raises(ConfigError, match="intensity must be one of"):
        read_image(tmp_path / "a.png", intensity="max")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_float_tiff_with_nan_or_inf_rejected(tmp_path: Path, bad: float) -> None:
    arr = np.ones((3, 3), dtype=np.float32)
    arr[1, 2] = bad
    Image.fromarray(arr).save(tmp_path / "f.tif")
    with pytest.raises(DataError, match="image contains NaN or infinite values") as info:
        read_image(tmp_path / "f.tif")
    assert info.value.path == str(tmp_path / "f.tif")


def test_jpeg_read(tmp_path: Path) -> None:
    Image.fromarray(np.full((8, 8), 200, dtype=np.uint8)).save(tmp_path / "a.jpg")
    img = read_image(tmp_path / "a.jpg")
    assert img.shape == (1, 8, 8)
    np.testing.assert_allclose(img, 200 / 255.0, atol=3 / 255.0)


def test_missing_image(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="file not found") as info:
        read_image(tmp_path / "nope.png")
    assert info.value.path == str(tmp_path / "nope.png")


def test_corrupt_image(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"this is not a png at all")
    with pytest.raises(DataError, match="cannot read image: ") as info:
        read_image(tmp_path / "bad.png")
    assert info.value.path == str(tmp_path / "bad.png")


def test_truncated_image(tmp_path: Path) -> None:
    Image.fromarray(RNG.integers(0, 256, size=(64, 64), dtype=np.uint8)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "a.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cannot read image"):
        read_image(tmp_path / "a.png")


def test_unknown_channels_mode(tmp_path: Path) -> None:
    Image.fromarray(_gray_u8()).save(tmp_path / "a.png")
    with pytest.raises(ConfigError, match="channels"):
        read_image(tmp_path / "a.png", channels="bgr")


# ----------------------------------------------------------------------------- read_mask


def test_palette_mask_gives_raw_indices(tmp_path: Path) -> None:
    idx = np.array([[0, 1, 2], [2, 1, 0]])
    mask = read_mask(_palette_mask(tmp_path / "m.png", idx), num_classes=3)
    assert mask.dtype == np.int64 and mask.shape == (2, 3)
    np.testing.assert_array_equal(mask, idx)


def test_gray_mask_raw_values(tmp_path: Path) -> None:
    idx = np.array([[0, 1], [3, 2]], dtype=np.uint8)
    Image.fromarray(idx).save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png", num_classes=4), idx)


def test_jpeg_mask_thresholded(tmp_path: Path) -> None:
    arr = np.zeros((16, 16), dtype=np.uint8)
    arr[:, 8:] = 255
    Image.fromarray(arr).save(tmp_path / "m.jpg", quality=75)
    mask = read_mask(tmp_path / "m.jpg", num_classes=2, threshold=127)
    assert mask.dtype == np.int64
    np.testing.assert_array_equal(mask, (arr > 127).astype(np.int64))


def test_rgb_jpeg_mask_thresholded_via_gray(tmp_path: Path) -> None:
    arr = np.zeros((8, 8, 3), dtype=np.uint8)
    arr[4:] = 255
    Image.fromarray(arr).save(tmp_path / "m.jpg")
    mask = read_mask(tmp_path / "m.jpg", num_classes=2, threshold=127)
    assert mask.shape == (8, 8)
    np.testing.assert_array_equal(mask[:, 0], [0, 0, 0, 0, 1, 1, 1, 1])


def test_mask_values_outside_classes(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0, 1, 3], [7, 1, 0]], dtype=np.uint8)).save(tmp_path / "m.png")
    with pytest.raises(DataError, match=r"mask values \[3, 7\] outside classes 0\.\.1") as info:
        read_mask(tmp_path / "m.png", num_classes=2)
    assert info.value.path == str(tmp_path / "m.png")


def test_mask_values_message_lists_at_most_five(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"mask values \[2, 3, 4, 5, 6, \.\.\.\] outside classes 0\.\.1"):
        check_mask_values(np.arange(10), 2, tmp_path / "m.png")
    with pytest.raises(DataError, match=r"mask values \[-1\]"):
        check_mask_values(np.array([-1, 0]), 2, tmp_path / "m.png")


def test_jpeg_mask_without_threshold_gets_hint(tmp_path: Path) -> None:
    arr = np.zeros((16, 16), dtype=np.uint8)
    arr[4:12, 4:12] = 255
    Image.fromarray(arr).save(tmp_path / "m.jpg")
    with pytest.raises(
        DataError, match="outside classes 0..1; JPEG masks are lossy, set data.mask_threshold"
    ):
        read_mask(tmp_path / "m.jpg", num_classes=2)


def test_png_0_255_mask_without_threshold_gets_hint(tmp_path: Path) -> None:
    arr = np.zeros((16, 16), dtype=np.uint8)
    arr[4:12, 4:12] = 255
    Image.fromarray(arr).save(tmp_path / "m.png")
    with pytest.raises(
        DataError,
        match=r"outside classes 0\.\.1; if 255 marks unlabeled .*, or if it is a 0/255 binary mask, data.mask_thr",
    ):
        read_mask(tmp_path / "m.png", num_classes=2)
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png", 2, threshold=127), arr // 255)
    arr[0, 0] = 7  # other values: no 0/255 hint, but 255 may mark unlabeled pixels
    Image.fromarray(arr).save(tmp_path / "m.png")
    with pytest.raises(
        DataError,
        match=r"outside classes 0\.\.1; if 255 marks unlabeled pixels \(clicks, scribbles\), set data.mask_unlabeled: 255$",
    ):
        read_mask(tmp_path / "m.png", num_classes=2)


def test_unlabeled_mask_value_reads_as_the_ignore_index(tmp_path: Path) -> None:
    """Clicked pixels / scribbles: the rest of the mask has the unlabeled value (e.g. 255)."""
    from semiseg.core import IGNORE_INDEX

    arr = np.full((8, 8), 200, dtype=np.uint8)
    arr[1, 1], arr[5, 5] = 0, 2
    Image.fromarray(arr).save(tmp_path / "m.png")
    mask = read_mask(tmp_path / "m.png", num_classes=3, unlabeled=200)
    assert mask[1, 1] == 0 and mask[5, 5] == 2 and (mask == IGNORE_INDEX).sum() == 62
    np.save(tmp_path / "m.npy", arr.astype(np.int64))
    np.testing.assert_array_equal(read_mask(tmp_path / "m.npy", 3, unlabeled=200), mask)
    np.save(tmp_path / "neg.npy", np.where(arr == 200, -1, arr.astype(np.int64)))  # -1: common in arrays
    np.testing.assert_array_equal(read_mask(tmp_path / "neg.npy", 3, unlabeled=-1), mask)
    arr[2, 2] = 255  # a literal 255 is not the unlabeled value here: an error, not silently ignored
    Image.fromarray(arr).save(tmp_path / "m.png")
    with pytest.raises(DataError, match=r"mask values \[255\] outside classes 0\.\.2"):
        read_mask(tmp_path / "m.png", num_classes=3, unlabeled=200)
    arr[2, 2] = 200
    arr[0, 0] = 3  # still a value that is neither a class nor the unlabeled one
    Image.fromarray(arr).save(tmp_path / "m.png")
    with pytest.raises(DataError, match=r"mask values \[3\] outside classes 0\.\.2"):
        read_mask(tmp_path / "m.png", num_classes=3, unlabeled=200)


def test_colour_mask_rejected(tmp_path: Path) -> None:
    arr = np.zeros((2, 2, 3), dtype=np.uint8)
    arr[0, 0] = (255, 0, 0)
    Image.fromarray(arr).save(tmp_path / "m.png")
    with pytest.raises(DataError, match="colour mask"):
        read_mask(tmp_path / "m.png", num_classes=2)


def test_gray_rgb_mask_accepted(tmp_path: Path) -> None:
    arr = np.repeat(np.array([[0, 1], [1, 0]], dtype=np.uint8)[..., None], 3, axis=2)
    Image.fromarray(arr).save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.png", 2), arr[..., 0])


def test_float_tiff_mask(tmp_path: Path) -> None:
    Image.fromarray(np.array([[0.0, 1.0]], dtype=np.float32)).save(tmp_path / "m.tif")
    np.testing.assert_array_equal(read_mask(tmp_path / "m.tif", 2), [[0, 1]])
    Image.fromarray(np.array([[0.0, 0.5]], dtype=np.float32)).save(tmp_path / "n.tif")
    with pytest.raises(DataError, match="non-integer"):
        read_mask(tmp_path / "n.tif", 2)


def test_unreadable_and_missing_mask(tmp_path: Path) -> None:
    (tmp_path / "m.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(DataError, match="cannot read image"):
        read_mask(tmp_path / "m.png", 2)
    with pytest.raises(DataError, match="file not found"):
        read_mask(tmp_path / "missing.png", 2)


# ----------------------------------------------------------------------------- helpers


def test_check_same_size(tmp_path: Path) -> None:
    image = np.zeros((1, 4, 5), dtype=np.float32)
    check_same_size(image, np.zeros((4, 5), dtype=np.int64), "i.png", "m.png")
    with pytest.raises(DataError, match=r"mask size 4x6 does not match image size 4x5 \(i\.png\)") as info:
        check_same_size(image, np.zeros((4, 6), dtype=np.int64), "i.png", "m.png")
    assert info.value.path == "m.png"
    volume = np.zeros((1, 3, 4, 5), dtype=np.float32)
    with pytest.raises(DataError, match="mask size 2x4x5 does not match image size 3x4x5"):
        check_same_size(volume, np.zeros((2, 4, 5), dtype=np.int64), "v.h5", "v.h5")


def test_list_images(tmp_path: Path) -> None:
    for name in ["b.PNG", "a.jpg", "c.tiff", "d.txt", ".hidden.png", "e.jpeg", "f.tif", "g.npy"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "dir.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "c.tiff", "e.jpeg", "f.tif", "g.npy"]
    assert list_images(tmp_path / "missing") == []
    assert IMAGE_SUFFIXES == (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy")


def test_npy_images_keep_any_number_of_channels_and_masks_read_as_integers(tmp_path):
    from semiseg.data.io import read_model_image

    rng = np.random.default_rng(0)
    five = rng.random((5, 6, 7)) * 40 + 10
    np.save(tmp_path / "five.npy", five)
    got = read_image(tmp_path / "five.npy")
    assert got.shape == (5, 6, 7) and got.dtype == np.float32
    np.testing.assert_allclose(
        got, (five - five.min()) / (five.max() - five.min()), rtol=1e-5
    )  # auto: min-max
    np.testing.assert_allclose(read_image(tmp_path / "five.npy", intensity="none"), five.astype(np.float32))
    np.save(tmp_path / "u8.npy", np.full((6, 7), 51, np.uint8))  # [H, W] uint8: one channel, / 255
    np.testing.assert_allclose(read_image(tmp_path / "u8.npy"), np.full((1, 6, 7), 0.2, np.float32))
    assert read_model_image(tmp_path / "five.npy", 5).shape == (5, 6, 7)
    # three channels of an array need not be colours: a 1-channel model refuses them unless training
    # converted its own arrays to gray (data.channels: gray), as it does with PNGs
    np.save(tmp_path / "three.npy", rng.random((3, 6, 7)).astype(np.float32))
    assert read_model_image(tmp_path / "three.npy", 1, channels="gray").shape == (1, 6, 7)
    np.save(tmp_path / "m.npy", np.array([[0, 1], [2, 1]], np.int16))
    assert read_mask(tmp_path / "m.npy", 3).tolist() == [[0, 1], [2, 1]]
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(tmp_path / "four_d.npy", np.zeros((1, 2, 3, 4)))
    np.save(tmp_path / "empty.npy", np.zeros((0, 32), np.float32))
    cases = [
        (lambda: read_image(tmp_path / "empty.npy"), "empty array (shape (0, 32))"),
        (lambda: read_image(tmp_path / "five.npy", channels="gray"), "has 5 channels: data.channels 'gray'"),
        (lambda: read_model_image(tmp_path / "five.npy", 3), "image has 5 channel(s), the model reads 3"),
        (
            lambda: read_model_image(tmp_path / "three.npy", 1),
            "image has 3 channel(s), the model reads 1 (a .npy",
        ),
        (lambda: read_image(tmp_path / "obj.npy"), "cannot read array"),  # never unpickled
        (lambda: read_image(tmp_path / "four_d.npy"), "must be [H, W] or [C, H, W]"),
        (lambda: read_mask(tmp_path / "m.npy", 2), "outside classes 0..1"),
        (lambda: read_mask(tmp_path / "five.npy", 2), "a .npy mask must be [H, W]"),
    ]
    for call, fragment in cases:
        with pytest.raises(DataError) as err:
            call()
        assert fragment in str(err.value) and "\n" not in str(err.value)


def test_unlabeled_to_ignore_relabels_only_the_unlabeled_value():
    from semiseg.core import IGNORE_INDEX

    mask = np.array([[0.0, 1.0], [255.0, 2.0]])
    out = unlabeled_to_ignore(mask, 255)
    assert out.dtype == np.int64
    assert out.tolist() == [[0, 1], [IGNORE_INDEX, 2]]
    assert unlabeled_to_ignore(mask, None).tolist() == [[0, 1], [255, 2]]


def test_scale_array_scales_an_array_as_read_image_scales_a_npy_file_of_it(tmp_path):
    from semiseg.data.io import scale_array

    rng = np.random.default_rng(0)
    arrays = [
        rng.integers(0, 255, (1, 5, 6), dtype=np.uint8),
        rng.integers(100, 4000, (1, 5, 6)).astype(np.uint16),
        rng.normal(size=(3, 5, 6)).astype(np.float32),
        rng.random((1, 5, 6)) > 0.5,
        np.ones((1, 5, 6), bool),  # constant: min-max gives 0, as for the file
    ]
    for i, arr in enumerate(arrays):
        np.save(tmp_path / f"a{i}.npy", arr)
        for mode in ("auto", "zscore", "none"):
            np.testing.assert_array_equal(
                scale_array(arr, mode), read_image(tmp_path / f"a{i}.npy", intensity=mode)
            )
