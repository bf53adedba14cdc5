"""Tests for semiseg.data.mnist: IDX parsing on generated gzip files and the real t10k split."""

from __future__ import annotations

import gzip
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from semiseg.data.mnist import load_mnist, read_idx
from semiseg.errors import ConfigError, DataError


def _write_idx(path: Path, array: np.ndarray, magic: int | None = None, extra: bytes = b"") -> Path:
    """Writes ``array`` (uint8) as a gzip IDX file; ``magic`` defaults to the correct one."""
    array = np.asarray(array, dtype=np.uint8)
    magic = 0x0800 + array.ndim if magic is None else magic
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes() + extra)
    return path


def _fake_mnist(root: Path, n: int = 4, prefix: str = "t10k", seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    _write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
    _write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return images, labels


def test_records(tmp_path: Path) -> None:
    images, labels = _fake_mnist(tmp_path)
    bundle = load_mnist(tmp_path, foreground_threshold=0.3)
    assert bundle.name == "mnist" and bundle.num_classes == 2 and bundle.in_channels == 1
    assert bundle.class_names == ["background", "digit"] and bundle.val is None and bundle.test is None
    assert [r.id for r in bundle.train] == [f"mnist_t10k_{i:05d}" for i in range(4)]
    for i, rec in enumerate(bundle.train):
        assert rec.image.shape == (1, 28, 28) and rec.image.dtype == np.float32
        np.testing.assert_allclose(rec.image[0], images[i] / 255.0, atol=1e-7)
        assert rec.label == int(labels[i]) and isinstance(rec.label, int)
        assert rec.mask.dtype == np.int64
        np.testing.assert_array_equal(rec.mask, (images[i] / 255.0 > 0.3).astype(np.int64))


def test_train_files_appended(tmp_path: Path) -> None:
    _fake_mnist(tmp_path, n=3, prefix="t10k", seed=0)
    train_images, _ = _fake_mnist(tmp_path, n=2, prefix="train", seed=1)
    bundle = load_mnist(tmp_path)
    assert [r.id for r in bundle.train] == [
        "mnist_t10k_00000",
        "mnist_t10k_00001",
        "mnist_t10k_00002",
        "mnist_train_00000",
        "mnist_train_00001",
    ]
    np.testing.assert_allclose(bundle.train[3].image[0], train_images[0] / 255.0, atol=1e-7)
    assert bundle.train[4].source.endswith("train-images-idx3-ubyte.gz")


def test_train_half_present(tmp_path: Path) -> None:
    _fake_mnist(tmp_path)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((2, 28, 28)))
    with pytest.raises(DataError, match="file not found") as info:
        load_mnist(tmp_path)
    assert info.value.path == str(tmp_path / "train-labels-idx1-ubyte.gz")


def test_bad_magic(tmp_path: Path) -> None:
    _fake_mnist(tmp_path)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(4), magic=2051)
    with pytest.raises(DataError, match=r"bad IDX magic number 2051 \(expected 2049 for labels\)") as info:
        load_mnist(tmp_path)
    assert info.value.path == str(tmp_path / "t10k-labels-idx1-ubyte.gz")
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((4, 28, 28)), magic=0x0D03)
    with pytest.raises(DataError, match=r"bad IDX magic number 3331 \(expected 2051 for images\)"):
        load_mnist(tmp_path)


def test_count_mismatch(tmp_path: Path) -> None:
    _fake_mnist(tmp_path, n=4)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(3))
    with pytest.raises(DataError, match="has 3 labels but t10k-images-idx3-ubyte.gz has 4 images"):
        load_mnist(tmp_path)


def test_truncated_and_trailing_data(tmp_path: Path) -> None:
    path = _write_idx(tmp_path / "x.gz", np.zeros((2, 28, 28)))
    with gzip.open(path, "rb") as f:
        data = f.read()
    with gzip.open(path, "wb") as f:
        f.write(data[:-10])
    with pytest.raises(DataError, match="announces 2x28x28 = 1568 bytes of data, file has 1558"):
        read_idx(path, 2051)
    _write_idx(path, np.zeros((2, 28, 28)), extra=b"xx")
    with pytest.raises(DataError, match="file has 1570"):
        read_idx(path, 2051)
    with gzip.open(path, "wb") as f:
        f.write(b"\x00\x00")
    with pytest.raises(DataError, match="too short"):
        read_idx(path, 2051)


def test_not_gzip_and_missing(tmp_path: Path) -> None:
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"plain bytes, not gzip")
    with pytest.raises(DataError, match="cannot read gzip file"):
        read_idx(tmp_path / "t10k-images-idx3-ubyte.gz", 2051)
    with pytest.raises(DataError, match="MNIST folder not found"):
        load_mnist(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="file not found") as info:
        load_mnist(empty)
    assert info.value.path == str(empty / "t10k-images-idx3-ubyte.gz")


def test_labels_outside_digits(tmp_path: Path) -> None:
    _fake_mnist(tmp_path, n=3)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([1, 12, 3]))
    with pytest.raises(DataError, match=r"label values \[12\] outside digits 0..9"):
        load_mnist(tmp_path)


def test_threshold_validated(tmp_path: Path) -> None:
    _fake_mnist(tmp_path)
    with pytest.raises(ConfigError, match="foreground_threshold"):
        load_mnist(tmp_path, foreground_threshold=1.5)


@pytest.mark.realdata
def test_real_mnist(real_data_root: Path) -> None:
    root = real_data_root / "mnist"
    if not root.is_dir():
        pytest.skip("mnist not in the real data folder")
    start = time.perf_counter()
    bundle = load_mnist(root)
    elapsed = time.perf_counter() - start
    assert len(bundle.train) == 10000
    assert sorted({r.label for r in bundle.train}) == list(range(10))
    assert bundle.train[0].label == 7 and bundle.train[-1].id == "mnist_t10k_09999"
    fg = np.mean([r.mask.mean() for r in bundle.train[:500]])
    assert 0.05 < fg < 0.4
    assert elapsed < 3.0, f"loading 10k MNIST records took {elapsed:.2f} s (should be vectorised)"


def test_digits_classification_uses_the_shared_folds(tmp_path: Path) -> None:
    from semiseg.data.mnist import FOLD_SEED, load_mnist_digits, mnist_folds

    images, labels = _fake_mnist(tmp_path, n=10_000)
    bundle = load_mnist_digits(tmp_path)
    assert bundle.task == "classify" and bundle.num_classes == 10 and bundle.val is None
    folds = mnist_folds(10_000, FOLD_SEED)
    assert [r.id for r in bundle.train] == [f"digit_{i:05d}" for i in folds["train"]]  # the translation folds
    assert len(bundle.test) == 2000 and {r.id for r in bundle.test} == {
        f"digit_{i:05d}" for i in np.concatenate([folds["val"], folds["test"]])
    }
    r = bundle.train[5]
    i = int(folds["train"][5])
    assert r.mask is None and r.label == int(labels[i]) and r.image.shape == (1, 28, 28)
    np.testing.assert_array_equal(r.image[0], images[i].astype(np.float32) / 255)
