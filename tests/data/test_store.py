"""The on-disk store of lazily read volumes: keys that follow files and options, entries built once
and shared, and 3D patches from it equal to those of eager records, without holding volumes."""

from __future__ import annotations

import functools
import os

import numpy as np
import pytest
import torch

from semiseg.config import AugmentConfig, StrongAugmentConfig
from semiseg.core import ViewSpec
from semiseg.data import store
from semiseg.data.patches import DiskVolume, MemoryVolume, PatchSet
from semiseg.data.records import ARRAYS, Record


def _volume(name: str, shape: tuple[int, ...], masked: bool) -> Record:
    rng = np.random.default_rng(len(name))
    image = rng.random((1, *shape)).astype(np.float32)
    mask = np.zeros(shape, np.int64)
    mask[1:3, 4:9, 5:12] = 1
    mask[3:5, 10:14, 2:6] = 2
    return Record(name, image, mask if masked else None, source=name)


def test_a_key_follows_the_file_its_options_and_the_derived_grid(tmp_path):
    f = tmp_path / "a.nii.gz"
    f.write_bytes(b"12345")
    reader = functools.partial(_volume, f, (4, 8, 8), True)
    key = store.entry_key("grid3d", reader, grid=[4, 8, 8])
    assert key == store.entry_key("grid3d", functools.partial(_volume, f, (4, 8, 8), True), grid=[4, 8, 8])
    assert key != store.entry_key("grid3d", reader, grid=[4, 8, 16])
    assert key != store.entry_key("grid3d", functools.partial(_volume, f, (4, 8, 8), False), grid=[4, 8, 8])
    os.utime(f, ns=(1, 1))
    assert key != store.entry_key("grid3d", reader, grid=[4, 8, 8])  # modified file
    mtime_key = store.entry_key("grid3d", reader, grid=[4, 8, 8])
    f.write_bytes(b"123456")
    os.utime(f, ns=(1, 1))
    assert mtime_key != store.entry_key("grid3d", reader, grid=[4, 8, 8])  # same time, new size


def test_an_entry_is_built_once_and_survives_stale_or_partial_folders(tmp_path):
    calls = []

    def build(folder):
        calls.append(1)
        store.save_arrays(folder, {"image": np.arange(6.0).reshape(2, 3)})

    (tmp_path / "grid3d" / "ab").mkdir(parents=True)
    (tmp_path / "grid3d" / "ab" / ".tmp-abcdef01-x").mkdir()  # a writer that died
    partial = tmp_path / "grid3d" / "ab" / "abcdef0123"
    partial.mkdir()  # a folder without its files
    first = store.entry(tmp_path, "grid3d", "abcdef0123", ["image"], build)
    again = store.entry(tmp_path, "grid3d", "abcdef0123", ["image"], build)
    assert first == again == partial and len(calls) == 1
    assert np.array_equal(np.load(first / "image.npy"), np.arange(6.0).reshape(2, 3))
    assert [p.name for p in partial.parent.iterdir() if p.name.startswith(".tmp") and p != partial] == [
        ".tmp-abcdef01-x"
    ]  # ours cleaned up, the stale one ignored


@pytest.mark.parametrize("supervision", ["dense", "sparse", "tag", "size", "none"])
def test_lazy_volumes_give_the_same_patches_as_eager_ones_from_the_store(tmp_path, supervision):
    readers = [functools.partial(_volume, f"v{i}", (6, 16, 18), i != 2) for i in range(3)]
    records = {"eager": [r() for r in readers], "lazy": [Record.lazy(r) for r in readers]}
    if supervision in ("tag", "size"):
        records = {k: v[:2] for k, v in records.items()}  # weak labels are counted from masks
    aug = AugmentConfig(
        hflip=True, vflip=True, dflip=True, rotate_degrees=15, scale=[0.9, 1.1], brightness=0.1
    )
    sets = {}
    for mode, recs in records.items():
        ARRAYS.clear()
        sets[mode] = PatchSet(recs, supervision=supervision, num_classes=3, image_size=[-1, 12, 14],
                              patch_size=[4, 8, 8], foreground_ratio=0.5, augment_cfg=aug,
                              strong_cfg=StrongAugmentConfig(), seed=3, sparse_pixels=20,
                              cache_dir=tmp_path)  # fmt: skip
        sets[mode].set_views(ViewSpec(strong=1, cutmix=True))
        sets[mode].set_epoch(2)
    eager, lazy = sets["eager"], sets["lazy"]
    assert all(isinstance(v, MemoryVolume) for v in eager.volumes)
    assert all(isinstance(v, DiskVolume) for v in lazy.volumes)
    for position in range(8):
        index = position % len(eager.ids)
        a, b = eager[(index, position)], lazy[(index, position)]
        assert a.keys() == b.keys()
        for k in a:
            assert (
                torch.equal(a[k], b[k])
                if a[k].dtype != torch.float32
                else torch.equal(a[k].nan_to_num(-7), b[k].nan_to_num(-7))
            ), (supervision, position, k)
    assert torch.equal(eager.tags.nan_to_num(-1), lazy.tags.nan_to_num(-1))
    assert torch.equal(eager.sizes.nan_to_num(-1), lazy.sizes.nan_to_num(-1))


def test_a_lazy_patch_set_holds_no_volume_in_memory(tmp_path):
    readers = [functools.partial(_volume, f"big{i}", (16, 64, 64), True) for i in range(6)]
    ARRAYS.clear()
    records = [Record.lazy(r) for r in readers]
    ps = PatchSet(records, supervision="sparse", num_classes=3, image_size=[-1, -1, -1], patch_size=[4, 16, 16],
                  cache_dir=tmp_path)  # fmt: skip
    ARRAYS.clear()
    held = 0
    for value in vars(ps).values():
        for x in value if isinstance(value, list) else [value]:
            parts = x if isinstance(x, (list, tuple)) else [x]
            held += sum(p.nbytes for p in parts if isinstance(p, (np.ndarray, torch.Tensor)))
    volume_bytes = 6 * 16 * 64 * 64 * 4
    assert held < volume_bytes / 20, held  # foreground samples and kept points only
    assert ps[(0, 0)]["image"].shape == (1, 4, 16, 16)
    assert ARRAYS.nbytes == 0  # a patch reads the store, not the record's file


def test_readers_that_a_key_cannot_describe_are_refused_and_arrays_key_by_content():
    with pytest.raises(store.UndescribedReader, match="functools.partial"):
        store.entry_key("grid3d", lambda: _volume("a", (2, 4, 4), True))

    def local():
        return None

    with pytest.raises(store.UndescribedReader):
        store.entry_key("grid3d", functools.partial(local))
    with pytest.raises(store.UndescribedReader, match="repr"):
        store.entry_key("grid3d", functools.partial(_volume, object(), (2, 4, 4), True))
    a, b = np.zeros((3, 3)), np.zeros((3, 3))
    b[1, 1] = 1.0
    assert store.entry_key("g", functools.partial(_volume, a)) != store.entry_key(
        "g", functools.partial(_volume, b)
    )
    assert store.entry_key("g", functools.partial(_volume, a)) == store.entry_key(
        "g", functools.partial(_volume, a.copy())
    )


def test_a_cache_folder_that_is_a_file_is_a_one_line_config_error(tmp_path, monkeypatch):
    from semiseg.errors import ConfigError

    file = tmp_path / "existing_file"
    file.write_text("x")
    with pytest.raises(ConfigError, match=r"^data.cache_dir: .*existing_file is a file, not a folder$"):
        store.cache_dir(str(file))
    monkeypatch.setenv("SEMISEG_CACHE", str(file))
    with pytest.raises(ConfigError, match=r"^\$SEMISEG_CACHE: .*existing_file is a file"):
        store.cache_dir()
    assert store.cache_dir(str(tmp_path / "new")) == tmp_path / "new"  # a folder to be made is fine
