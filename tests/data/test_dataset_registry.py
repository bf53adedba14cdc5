"""Datasets by name: a new dataset is one loader function plus its registration."""

from __future__ import annotations

import numpy as np
import pytest

from semiseg.config import DATASETS, DataConfig, build_config
from semiseg.data import load_bundle
from semiseg.data.records import DatasetBundle, Record
from semiseg.data.registry import DatasetSource, register_dataset
from semiseg.errors import ConfigError


def tiny_bundle(name: str) -> DatasetBundle:
    image = np.zeros((1, 8, 8), dtype=np.float32)
    return DatasetBundle(
        name, num_classes=2, in_channels=1, train=[Record("a", image, np.zeros((8, 8), int))]
    )


@pytest.fixture
def registered():
    """Register loaders for one test; ``calls`` records the (dataset, path) each was given."""
    names, calls = [], []

    def add(name: str, **kwargs) -> None:
        @register_dataset(name, **kwargs)
        def load(cfg: DataConfig, path):
            calls.append((cfg.dataset, path))
            return tiny_bundle(name)

        names.append(name)

    yield add, calls
    for name in names:
        DATASETS.pop(name)


def test_builtin_sources():
    shapes, weizmann, folder = (DATASETS.get(n) for n in ("shapes", "weizmann", "folder"))
    assert isinstance(shapes, DatasetSource) and not shapes.needs_root
    assert weizmann.folder == "weizmann_horse" and weizmann.needs_root
    assert folder.folder is None  # data.path required
    assert DATASETS.get("acdc").folder == DATASETS.get("acdc_lv").folder == "acdc"


def test_a_registered_dataset_is_a_valid_config_and_loads(registered, tmp_path):
    add, calls = registered
    add("toy_generated", needs_root=False)
    cfg = build_config({"data": {"dataset": "toy_generated"}})
    assert cfg.data.dataset == "toy_generated"
    bundle = load_bundle(cfg.data)  # no data root needed
    assert bundle.name == "toy_generated" and calls == [("toy_generated", None)]
    # a generated set may still be given a folder
    load_bundle(DataConfig(dataset="toy_generated", path=str(tmp_path)))
    assert calls[-1] == ("toy_generated", tmp_path)


def test_default_folder_under_the_data_root(registered, tmp_path, monkeypatch):
    add, calls = registered
    add("toy_files", folder="toy_dir")
    monkeypatch.delenv("SEMISEG_DATA", raising=False)
    bundle = load_bundle(DataConfig(dataset="toy_files"), data_root=str(tmp_path))
    assert calls == [("toy_files", tmp_path / "toy_dir")] and bundle.root == str(tmp_path / "toy_dir")
    load_bundle(DataConfig(dataset="toy_files", path="elsewhere"), data_root=str(tmp_path))
    assert calls[-1] == ("toy_files", tmp_path / "elsewhere")
    with pytest.raises(ConfigError, match="no data root"):
        load_bundle(DataConfig(dataset="toy_files"))
    # a relative data.path without a data root names the option and the two ways out
    with pytest.raises(
        ConfigError, match=r"^data.path: 'elsewhere' is relative, so it is read under the data root"
    ):
        load_bundle(DataConfig(dataset="toy_files", path="elsewhere"))


def test_folder_dataset_needs_a_path(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.path: required for dataset 'folder'"):
        load_bundle(DataConfig(dataset="folder"), data_root=str(tmp_path))


def test_unknown_dataset_is_one_line_naming_the_key():
    with pytest.raises(ConfigError) as info:
        build_config({"data": {"dataset": "weizman"}}, source="r.yaml")
    msg = str(info.value)
    assert msg.startswith("r.yaml: data.dataset: unknown dataset 'weizman' (did you mean 'weizmann'? known: ")
    assert "acdc_lv" in msg and "shapes" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match=r"data\.dataset: unknown dataset 'nope'"):
        load_bundle(DataConfig(dataset="nope"))
    with pytest.raises(ConfigError, match=r"'data\.dataset' must be str"):
        build_config({"data": {"dataset": 3}})
