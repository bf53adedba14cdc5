"""Eager and lazy records: the same arrays, metadata without reading, a bounded cache, small pickles,
slices and derived masks that do not keep their volume alive."""

from __future__ import annotations

import functools
import pickle

import numpy as np
import pytest

from semiseg.data.records import ARRAYS, ArrayCache, ItemMeta, Record, load_records

CALLS: list[str] = []


def _read(name: str, shape: tuple[int, ...], masked: bool = True) -> Record:
    """A deterministic record (stands for a file reader); counts its calls."""
    CALLS.append(name)
    rng = np.random.default_rng(len(name) + sum(shape))
    image = rng.random((1, *shape)).astype(np.float32)
    mask = (rng.random(shape) > 0.7).astype(np.int64) if masked else None
    return Record(
        name,
        image,
        mask,
        group="g-" + name,
        source=f"/data/{name}.nii.gz",
        spacing=(2.0,) + (1.0,) * (len(shape) - 1),
    )


def _zero_first(mask: np.ndarray) -> np.ndarray:
    out = mask.copy()
    out[0] = 0
    return out


@pytest.fixture(autouse=True)
def _clean_cache():
    ARRAYS.clear()
    CALLS.clear()
    yield
    ARRAYS.clear()


def test_a_lazy_record_reads_the_same_arrays_and_keeps_its_metadata_without_reading():
    reader = functools.partial(_read, "a", (3, 8, 8))
    eager, lazy = reader(), Record.lazy(reader)
    assert lazy.is_lazy and not eager.is_lazy
    CALLS.clear()
    ARRAYS.clear()
    assert (lazy.shape, lazy.ndim, lazy.has_mask, lazy.spacing, lazy.group) == (
        eager.shape, 4, True, eager.spacing, eager.group)  # fmt: skip
    assert CALLS == []  # metadata only
    assert np.array_equal(lazy.image, eager.image) and np.array_equal(lazy.mask, eager.mask)
    assert CALLS == ["a"]  # image then mask: one read
    ARRAYS.clear()
    assert lazy.has_foreground == eager.has_foreground is True and CALLS == ["a"]  # known since indexing


def test_the_cache_is_bounded_and_keeps_the_most_recent_items():
    cache = ArrayCache(max_bytes=3 * (4 * 64 + 8 * 64))  # three 8x8 items
    readers = [functools.partial(_read, f"r{i}", (8, 8)) for i in range(5)]
    for r in readers:
        cache.get(r)
    assert cache.nbytes <= cache.max_bytes and cache.reads == 5
    cache.get(readers[4])
    cache.get(readers[2])
    assert cache.reads == 5  # still held
    cache.get(readers[0])
    assert cache.reads == 6  # evicted, read again
    big = ArrayCache(max_bytes=100)
    big.get(readers[0])
    assert big.nbytes == 0  # larger than the bound: not counted ...
    big.get(readers[0])
    assert big.reads == 1  # ... but held until another item is read (a large volume's slices in turn)
    big.get(readers[1])
    big.get(readers[0])
    assert big.reads == 3


def test_lazy_records_pickle_small_and_read_again_in_another_process_state():
    records = load_records(
        [functools.partial(_read, f"v{i}", (20, 64, 64)) for i in range(3)], "lazy", volumes=True
    )
    blob = pickle.dumps(records)
    assert len(blob) < 3_000  # references to files, not the 1 MB volumes
    ARRAYS.clear()
    back = pickle.loads(blob)
    assert np.array_equal(back[1].image, _read("v1", (20, 64, 64)).image)


def test_loading_modes_choose_lazy_volumes_under_auto():
    readers = [functools.partial(_read, "x", (2, 4, 4))]
    assert load_records(readers, "auto", volumes=True)[0].is_lazy
    assert not load_records(readers, "auto", volumes=False)[0].is_lazy
    assert load_records(readers, "lazy", volumes=False)[0].is_lazy
    assert not load_records(readers, "eager", volumes=True)[0].is_lazy
    with pytest.raises(ValueError, match="loading"):
        load_records(readers, "sometimes", volumes=True)


def test_slices_and_derived_masks_match_the_eager_ones_and_copy_out_of_the_volume():
    reader = functools.partial(_read, "s", (4, 6, 6))
    eager, lazy = reader(), Record.lazy(reader)
    for k in range(4):
        a, b = eager.slice(k), lazy.slice(k)
        assert (a.id, a.shape, a.spacing, a.group) == (b.id, b.shape, b.spacing, b.group) == (
            f"s_slice_{k}", (1, 6, 6), (1.0, 1.0), "g-s")  # fmt: skip
        assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
        assert not np.shares_memory(b.image, lazy.image)  # a slice does not keep the volume alive
    fn = functools.partial(_zero_first)
    assert np.array_equal(eager.with_mask(fn).mask, lazy.with_mask(fn).mask)
    assert lazy.with_mask(fn).is_lazy and (lazy.with_mask(fn).mask[0] == 0).all()


def test_records_need_an_image_or_a_reader_with_metadata():
    with pytest.raises(ValueError, match="either an image"):
        Record("a")
    with pytest.raises(ValueError, match="ItemMeta"):
        Record("a", reader=functools.partial(_read, "a", (4, 4)))
    r = Record("a", reader=functools.partial(_read, "a", (4, 4)), meta=ItemMeta((1, 4, 4), False))
    assert r.shape == (1, 4, 4) and not r.has_mask
    with pytest.raises(ValueError, match="spacing"):
        Record("a", np.zeros((1, 4, 4), np.float32), spacing=(1.0,))
