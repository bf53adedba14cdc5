"""Tests for semiseg.data.folder.load_folder on tiny generated folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from semiseg.data.folder import load_folder
from semiseg.errors import ConfigError, DataError

RNG = np.random.default_rng(1)


def _image(path: Path, shape: tuple[int, ...] = (6, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(RNG.integers(0, 256, size=shape, dtype=np.uint8)).save(path)
    return path


def _mask(path: Path, values: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint8)).save(path)
    return path


def _labels(shape: tuple[int, int] = (6, 8), num_classes: int = 2) -> np.ndarray:
    return RNG.integers(0, num_classes, size=shape)


def test_flat_layout(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "b.jpg")
    _image(tmp_path / "images" / "a.png")
    _image(tmp_path / "images" / "c.tif")
    a_mask = _labels(num_classes=3)
    _mask(tmp_path / "masks" / "a.png", a_mask)
    _mask(tmp_path / "masks" / "b.png", _labels(num_classes=3))  # different suffix from its image
    (tmp_path / "masks" / "notes.txt").write_text("ignored")

    bundle = load_folder(tmp_path, num_classes=3, name="mine")
    assert bundle.name == "mine" and bundle.num_classes == 3 and bundle.in_channels == 1
    assert bundle.val is None and bundle.test is None
    assert [r.id for r in bundle.train] == ["a", "b", "c"]
    a, b, c = bundle.train
    assert a.image.shape == (1, 6, 8) and a.image.dtype == np.float32
    np.testing.assert_array_equal(a.mask, a_mask)
    assert a.mask.dtype == np.int64
    assert b.mask is not None and c.mask is None  # c is unlabeled
    assert a.source == str(tmp_path / "images" / "a.png")
    assert bundle.class_names == ["background", "class1", "class2"]


def test_split_layout(tmp_path: Path) -> None:
    for split, names in [("train", ["t1", "t2"]), ("val", ["v1"]), ("test", ["s1", "s2", "s3"])]:
        for n in names:
            _image(tmp_path / split / "images" / f"{n}.png")
            _mask(tmp_path / split / "masks" / f"{n}.png", _labels())
    bundle = load_folder(tmp_path)
    assert [r.id for r in bundle.train] == ["t1", "t2"]
    assert [r.id for r in bundle.val] == ["v1"]
    assert [r.id for r in bundle.test] == ["s1", "s2", "s3"]


def test_split_layout_val_optional_train_required(tmp_path: Path) -> None:
    _image(tmp_path / "train" / "images" / "a.png")
    _image(tmp_path / "test" / "images" / "b.png")
    bundle = load_folder(tmp_path)
    assert bundle.val is None and [r.id for r in bundle.test] == ["b"]
    assert bundle.train[0].mask is None  # no masks folder: unlabeled

    other = tmp_path / "other"
    _image(other / "val" / "images" / "a.png")
    with pytest.raises(DataError, match="needs a train/ folder"):
        load_folder(other)


def test_both_layouts_is_ambiguous(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "a.png")
    _image(tmp_path / "train" / "images" / "a.png")
    with pytest.raises(DataError, match="use one layout"):
        load_folder(tmp_path)


def test_custom_folder_names_and_threshold(tmp_path: Path) -> None:
    _image(tmp_path / "img" / "a.png", (16, 16))
    arr = np.zeros((16, 16), dtype=np.uint8)
    arr[:8] = 255
    (tmp_path / "gt").mkdir()
    Image.fromarray(arr).save(tmp_path / "gt" / "a.jpg")
    bundle = load_folder(tmp_path, image_dir="img", mask_dir="gt", mask_threshold=127)
    np.testing.assert_array_equal(bundle.train[0].mask, (arr > 127).astype(np.int64))


def test_channels_auto_rgb_and_mixed(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "a.png", (4, 4, 3))
    _image(tmp_path / "images" / "b.png", (4, 4, 3))
    assert load_folder(tmp_path).in_channels == 3
    _image(tmp_path / "images" / "c.png", (4, 4))
    with pytest.raises(DataError, match="image has 1 channel") as info:
        load_folder(tmp_path)
    assert info.value.path == str(tmp_path / "images" / "c.png")
    bundle = load_folder(tmp_path, channels="rgb")
    assert bundle.in_channels == 3 and all(r.image.shape[0] == 3 for r in bundle.train)
    assert load_folder(tmp_path, channels="gray").in_channels == 1


def test_mixed_channels_across_splits(tmp_path: Path) -> None:
    _image(tmp_path / "train" / "images" / "a.png", (4, 4))
    _image(tmp_path / "test" / "images" / "b.png", (4, 4, 3))
    with pytest.raises(DataError, match="channel"):
        load_folder(tmp_path)


def test_mask_without_image(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "a.png")
    _mask(tmp_path / "masks" / "a.png", _labels())
    orphan = _mask(tmp_path / "masks" / "zzz.png", _labels())
    with pytest.raises(DataError, match="mask has no matching image in") as info:
        load_folder(tmp_path)
    assert info.value.path == str(orphan)


def test_size_mismatch(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "a.png", (6, 8))
    _mask(tmp_path / "masks" / "a.png", _labels((6, 7)))
    with pytest.raises(DataError, match="mask size 6x7 does not match image size 6x8") as info:
        load_folder(tmp_path)
    assert info.value.path == str(tmp_path / "masks" / "a.png")


def test_mask_values_outside_classes(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "a.png")
    _mask(tmp_path / "masks" / "a.png", np.full((6, 8), 2))
    with pytest.raises(DataError, match=r"mask values \[2\] outside classes 0\.\.1"):
        load_folder(tmp_path)
    assert load_folder(tmp_path, num_classes=3).train[0].mask.max() == 2


def test_unreadable_image(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "a.png")
    (tmp_path / "images" / "b.png").write_bytes(b"\x00\x01corrupt")
    with pytest.raises(DataError, match="cannot read image") as info:
        load_folder(tmp_path)
    assert info.value.path == str(tmp_path / "images" / "b.png")


def test_duplicate_stems(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "a.png")
    _image(tmp_path / "images" / "a.jpg")
    with pytest.raises(DataError, match="same name stem 'a'"):
        load_folder(tmp_path)


def test_missing_root_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data folder not found") as info:
        load_folder(tmp_path / "nope")
    assert info.value.path == str(tmp_path / "nope")

    with pytest.raises(DataError, match=r"no images found \(PNG/JPG/TIFF/NPY or NIfTI\)") as info:
        load_folder(tmp_path)  # no images/ at all
    assert info.value.path == str(tmp_path / "images")

    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "readme.txt").write_text("not an image")
    with pytest.raises(DataError, match=r"no images found \(PNG/JPG/TIFF/NPY or NIfTI\)"):
        load_folder(tmp_path)


def test_bad_arguments(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "a.png")
    with pytest.raises(ConfigError, match="num_classes"):
        load_folder(tmp_path, num_classes=1)
    with pytest.raises(ConfigError, match="channels"):
        load_folder(tmp_path, channels="RGB")


def test_png_0_255_mask_suggests_mask_threshold(tmp_path: Path) -> None:
    _image(tmp_path / "images" / "a.png")
    values = np.zeros((6, 8), dtype=np.uint8)
    values[2:5, 3:6] = 255
    _mask(tmp_path / "masks" / "a.png", values)
    with pytest.raises(
        DataError,
        match=r"outside classes 0\.\.1; if 255 marks unlabeled .*, or if it is a 0/255 binary mask, data\.mask_threshold",
    ):
        load_folder(tmp_path, num_classes=2)
    np.testing.assert_array_equal(load_folder(tmp_path, mask_threshold=127).train[0].mask, values // 255)


def test_mask_threshold_on_class_index_masks_or_more_classes_is_refused(tmp_path: Path) -> None:
    from semiseg.errors import ConfigError

    _image(tmp_path / "images" / "a.png")
    values = np.zeros((6, 8), dtype=np.uint8)
    values[2:5, 3:6] = 1  # class indices: a threshold of 127 would make every mask background
    _mask(tmp_path / "masks" / "a.png", values)
    with pytest.raises(DataError, match=r"data.mask_threshold: 127 leaves every mask empty"):
        load_folder(tmp_path, mask_threshold=127)
    with pytest.raises(
        ConfigError, match=r"data.mask_threshold: gives binary masks .* data.num_classes is 3"
    ):
        load_folder(tmp_path, num_classes=3, mask_threshold=0)


def _image16(path: Path, values: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint16)).save(path)
    return path


def test_16bit_images_fill_the_unit_range_and_8bit_images_are_unchanged(tmp_path: Path) -> None:
    twelve_bit = RNG.integers(200, 4096, size=(6, 8))
    _image16(tmp_path / "images" / "a.png", twelve_bit)
    eight_bit = _image(tmp_path / "images" / "b.png")
    a, b = load_folder(tmp_path).train
    assert a.image.min() == 0.0 and a.image.max() == 1.0  # was [0.003, 0.0625]: divided by 65535
    np.testing.assert_allclose(a.image[0], (twelve_bit - twelve_bit.min()) / np.ptp(twelve_bit), rtol=1e-6)
    assert np.array_equal(b.image[0], np.asarray(Image.open(eight_bit)).astype(np.float32) / 255.0)

    z = load_folder(tmp_path, intensity="zscore").train
    assert all(
        abs(float(r.image.mean())) < 1e-5 and float(r.image.std()) == pytest.approx(1, rel=1e-4) for r in z
    )
    raw = load_folder(tmp_path, intensity="none").train
    np.testing.assert_array_equal(raw[0].image[0], twelve_bit)
    with pytest.raises(ConfigError, match="intensity"):
        load_folder(tmp_path, intensity="zscores")


def test_intensity_option_reaches_the_folder_loader(tmp_path: Path) -> None:
    from semiseg.config import DataConfig
    from semiseg.data import load_bundle

    _image16(tmp_path / "images" / "a.png", RNG.integers(200, 4096, size=(6, 8)))
    auto = load_bundle(DataConfig(dataset="folder", path=str(tmp_path)))
    raw = load_bundle(DataConfig(dataset="folder", path=str(tmp_path), intensity="none"))
    assert auto.train[0].image.max() == 1.0 and raw.train[0].image.max() >= 200


def test_labels_json_sets_image_level_labels(tmp_path: Path) -> None:
    import json

    for stem in ("a", "b", "c"):
        _image(tmp_path / "images" / f"{stem}.png")
    (tmp_path / "labels.json").write_text(json.dumps({"a": 9, "b": None}))
    bundle = load_folder(tmp_path)
    assert {r.id: r.label for r in bundle.train} == {"a": 9, "b": None, "c": None}
    for bad, message in (
        ({"z": 1}, "names 'z', which is not an image"),
        ({"a": -1}, "label of 'a' must be a non-negative integer or null"),
        ({"a": "9"}, "label of 'a' must be a non-negative integer or null"),
        ([1, 2], "must hold one JSON object"),
    ):
        (tmp_path / "labels.json").write_text(json.dumps(bad))
        with pytest.raises(DataError, match=message):
            load_folder(tmp_path)
    (tmp_path / "labels.json").write_text("{not json")
    with pytest.raises(DataError, match="labels.json: cannot read"):
        load_folder(tmp_path)


def test_tags_json_gives_image_level_tags_checked_against_masks(tmp_path: Path) -> None:
    import json

    mask = np.zeros((6, 8), np.uint8)
    mask[1:3, 1:3] = 2
    for stem in ("a", "b", "c"):
        _image(tmp_path / "images" / f"{stem}.png")
    _mask(tmp_path / "masks" / "a.png", mask)  # shows class 2 only
    (tmp_path / "tags.json").write_text(json.dumps({"a": [2], "b": [1, 2, 1], "c": []}))
    bundle = load_folder(tmp_path, num_classes=3)
    assert bundle.tags == {"a": [2], "b": [1, 2], "c": []}
    for bad, message in (
        ({"z": [1]}, r"names 'z', which is not a training image \(train/ or the flat layout\)"),
        (
            {"b": [3]},
            r"tags of 'b' must be a list of foreground classes 1..2 \(data.num_classes 3\), got \[3\]",
        ),
        ({"b": [0]}, "tags of 'b' must be a list of foreground classes"),
        ({"b": 1}, "tags of 'b' must be a list of foreground classes"),
        ({"b": [True]}, "tags of 'b' must be a list of foreground classes"),
        ({"a": [1]}, r"tags of 'a' \(\[1\]\) disagree with its mask, which shows \[2\]"),
        ([["b", 1]], "must hold one JSON object"),
    ):
        (tmp_path / "tags.json").write_text(json.dumps(bad))
        with pytest.raises(DataError, match=message):
            load_folder(tmp_path, num_classes=3)
    (tmp_path / "tags.json").write_text("{not json")
    with pytest.raises(DataError, match="tags.json: cannot read"):
        load_folder(tmp_path, num_classes=3)
    (tmp_path / "tags.json").unlink()
    assert load_folder(tmp_path, num_classes=3).tags == {}


def test_tags_name_training_images_even_when_a_test_image_has_the_same_stem(tmp_path: Path) -> None:
    import json

    for split in ("train", "test"):
        _image(tmp_path / split / "images" / "0001.png")
    _mask(tmp_path / "test" / "masks" / "0001.png", np.ones((6, 8), np.uint8))  # test's 0001 shows class 1
    (tmp_path / "tags.json").write_text(json.dumps({"0001": []}))  # train's 0001 is tagged absent
    assert load_folder(tmp_path).tags == {"0001": []}
    _image(tmp_path / "test" / "images" / "only-test.png")
    (tmp_path / "tags.json").write_text(json.dumps({"only-test": []}))
    with pytest.raises(DataError, match="names 'only-test', which is not a training image"):
        load_folder(tmp_path)


def test_masks_with_unlabeled_pixels_and_their_tags(tmp_path: Path) -> None:
    """data.mask_unlabeled: a mask of a few clicked pixels; its tags may list classes it does not show."""
    import json

    from semiseg.core import IGNORE_INDEX
    from semiseg.errors import ConfigError

    clicks = np.full((6, 8), 255, np.uint8)
    clicks[0, 0], clicks[3, 3] = 0, 1
    _image(tmp_path / "images" / "a.png")
    _mask(tmp_path / "masks" / "a.png", clicks)
    with pytest.raises(
        DataError, match=r"if 255 marks unlabeled pixels \(clicks, scribbles\), set data.mask_unlabeled: 255"
    ):
        load_folder(tmp_path, num_classes=3)
    (mask,) = [r.mask for r in load_folder(tmp_path, num_classes=3, mask_unlabeled=255).train]
    assert (mask == IGNORE_INDEX).sum() == 46 and mask[3, 3] == 1
    (tmp_path / "tags.json").write_text(json.dumps({"a": [1, 2]}))  # class 2 present, not clicked
    assert load_folder(tmp_path, num_classes=3, mask_unlabeled=255).tags == {"a": [1, 2]}
    (tmp_path / "tags.json").write_text(json.dumps({"a": [2]}))  # but a clicked class must be tagged
    with pytest.raises(DataError, match=r"tags of 'a' \(\[2\]\) disagree with its mask, which shows \[1\]"):
        load_folder(tmp_path, num_classes=3, mask_unlabeled=255)
    with pytest.raises(ConfigError, match="data.mask_unlabeled: 2 is a class"):
        load_folder(tmp_path, num_classes=3, mask_unlabeled=2)


def test_sizes_json_gives_rough_region_sizes(tmp_path: Path) -> None:
    import json

    for stem in ("a", "b"):
        _image(tmp_path / "images" / f"{stem}.png")
    (tmp_path / "sizes.json").write_text(json.dumps({"a": {"1": 12, "2": 3.5}, "b": {}}))
    assert load_folder(tmp_path, num_classes=3).sizes == {"a": {1: 12.0, 2: 3.5}, "b": {}}
    for bad, message in (
        ({"z": {"1": 3}}, "names 'z', which is not a training image"),
        ({"a": {"3": 3}}, r"sizes of 'a' must map foreground classes 1..2 to pixel counts >= 0"),
        ({"a": {"0": 3}}, "sizes of 'a' must map foreground classes"),
        ({"a": {"1": -1}}, "sizes of 'a' must map foreground classes"),
        ({"a": {"1": "big"}}, "sizes of 'a' must map foreground classes"),
        ({"a": {"1": 10**400}}, "sizes of 'a' must map foreground classes"),
        ({"a": [3]}, "sizes of 'a' must map foreground classes"),
        ([1], "must hold one JSON object"),
        ({"a": {"1": 49}}, r"sizes of 'a' \(\{1: 49.0\}\) exceed the image's 48 pixels"),  # 6 x 8 images
        ({"a": {"\u00b2": 3}}, "sizes of 'a' must map foreground classes"),  # "²".isdigit(), no int
        ({"a": {"1": 30, "2": 20}}, "sizes of 'a' sum to 50 pixels, more than the image's 48"),
    ):
        (tmp_path / "sizes.json").write_text(json.dumps(bad))
        with pytest.raises(DataError, match=message):
            load_folder(tmp_path, num_classes=3)
    # an image with a mask: the classes present must agree with it (as tags.json); the sizes may be rough
    mask = np.zeros((6, 8), np.uint8)
    mask[:2, :2] = 1
    _mask(tmp_path / "masks" / "a.png", mask)
    (tmp_path / "sizes.json").write_text(json.dumps({"a": {"1": 6}}))  # 4 in the mask: rough, fine
    assert load_folder(tmp_path, num_classes=3).sizes["a"] == {1: 6.0}
    for bad in ({"a": {}}, {"a": {"1": 4, "2": 3}}, {"a": {"1": 0}}):
        (tmp_path / "sizes.json").write_text(json.dumps(bad))
        with pytest.raises(
            DataError, match=r"sizes of 'a' \(classes present: .*\) disagree with its mask, which shows \[1\]"
        ):
            load_folder(tmp_path, num_classes=3)


def test_lazy_and_eager_image_folders_train_to_the_same_weights_and_metrics(tmp_path: Path) -> None:
    """data.loading: lazy reads each image once to index it, then trains from the on-disk rows; the run
    is the same as with every image in memory."""
    import copy
    import json

    import torch

    from semiseg.config import build_config
    from semiseg.data.records import ARRAYS
    from semiseg.engine.run import train

    root = tmp_path / "data"
    for i in range(12):
        yy, xx = np.mgrid[:20, :24]
        mask = ((yy - 4 - i % 9) ** 2 + (xx - 12) ** 2 < 20).astype(np.uint8)
        rgb = RNG.integers(0, 100, size=(20, 24, 3)) + 120 * mask[..., None]
        _image(root / "images" / f"im{i:02d}.png", (20, 24, 3))
        Image.fromarray(rgb.astype(np.uint8)).save(root / "images" / f"im{i:02d}.png")
        if i < 9:
            _mask(root / "masks" / f"im{i:02d}.png", mask)
    lazy = load_folder(root, loading="lazy")
    assert all(r.is_lazy for r in lazy.train) and not any(r.is_lazy for r in load_folder(root).train)
    results = []
    for loading in ("eager", "lazy"):
        ARRAYS.clear()
        raw = {
            "data": {"dataset": "folder", "path": str(root), "image_size": [16, 16], "loading": loading,
                     "cache_dir": str(tmp_path / "cache"),
                     "split": {"labeled": 3, "supervision": "sparse", "sparse_pixels": 12,
                               "val_fraction": 0.2, "test_fraction": 0.2}},
            "model": {"name": "unet", "width": 4, "depth": 2},
            "method": {"name": "fixmatch"},
            "train": {"epochs": 2, "batch_size": 2, "iters_per_epoch": 2, "progress": False, "plots": False,
                      "augment": {"hflip": True, "rotate_degrees": 10}},
        }  # fmt: skip
        out = tmp_path / loading
        train(build_config(copy.deepcopy(raw), [], source="test"), output_dir=out)
        state = torch.load(out / "last.pt", map_location="cpu", weights_only=True)["method_state"]
        results.append((json.loads((out / "metrics.json").read_text())["test"], state))
    assert results[0][0] == results[1][0]
    assert results[0][1].keys() == results[1][1].keys()
    assert all(
        torch.equal(results[0][1][k], results[1][1][k])
        for k in results[0][1]
        if torch.is_tensor(results[0][1][k])
    )
    assert any((tmp_path / "cache" / "grid2d").rglob("images.npy"))
    from semiseg.data import prepare_data

    rows = set()
    for draw in (0, 1):  # every draw reads one entry of the whole training pool
        raw["data"]["split"]["draw"] = draw
        data = prepare_data(build_config(copy.deepcopy(raw), [], source="test"))
        rows |= {data.labeled.rows, data.unlabeled.rows}
    assert len(rows) == 1 and len(list((tmp_path / "cache" / "grid2d").rglob("images.npy"))) == 1


def test_a_second_lazy_indexing_takes_the_metadata_from_the_manifest(tmp_path: Path, monkeypatch) -> None:
    """The first lazy indexing reads every file once; the same unchanged files index again from the
    manifest without a read; a changed file (size / modification time) indexes the folder afresh."""
    import semiseg.data.folder as folder_module

    rng = np.random.default_rng(0)
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (10, 12), dtype=np.uint8)).save(root / "images" / f"a{i}.png")
        if i < 2:
            Image.fromarray((np.arange(120).reshape(10, 12) % 2 * i).astype(np.uint8)).save(
                root / "masks" / f"a{i}.png"
            )
    reads: list[str] = []
    real = folder_module.read_image
    monkeypatch.setattr(folder_module, "read_image", lambda p, *a: reads.append(Path(p).name) or real(p, *a))

    def index():
        return load_folder(root, loading="lazy", cache=tmp_path / "cache")

    first = index()
    assert sorted(reads) == ["a0.png", "a1.png", "a2.png", "a3.png"]
    reads.clear()
    again = index()
    assert reads == []  # nothing decoded
    for a, b in zip(first.train, again.train):
        assert (a.id, a.shape, a.has_mask, a.has_foreground, a.group, a.source) == (
            b.id, b.shape, b.has_mask, b.has_foreground, b.group, b.source)  # fmt: skip
    assert [r.has_foreground for r in again.train[:2]] == [False, True]
    np.testing.assert_array_equal(again.train[3].image, first.train[3].image)  # read on use
    reads.clear()
    Image.fromarray(rng.integers(0, 255, (14, 12), dtype=np.uint8)).save(root / "images" / "a3.png")
    changed = index()
    assert len(reads) == 4 and changed.train[3].shape == (1, 14, 12)
