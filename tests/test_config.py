"""Config: YAML → RunConfig, strict keys and types, ``--set`` overrides, ``quick`` section, value checks."""

from __future__ import annotations

import pytest

from semiseg.config import (
    AugmentConfig,
    RunConfig,
    apply_override,
    build_config,
    from_dict,
    load_yaml,
    to_dict,
)
from semiseg.errors import ConfigError

RECIPE = """\
data:
  dataset: shapes
  image_size: [32, 48]
  split: {labeled: 4, supervision: sparse, sparse_pixels: 7}
model: {name: unet, width: 8, depth: 2, norm: instance, dropout: 0.1}
method: {name: supervised, dice_weight: 0.5}
train:
  epochs: 12
  lr: 3e-4
  grad_clip: 1
  augment: {hflip: true, rotate_degrees: 10}
output_dir: runs/x
quick:
  train.epochs: 2
  data.num_images: 16
"""


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE)
    return path


def build(raw=None, overrides=None, **kw) -> RunConfig:
    return build_config(raw or {}, overrides, **kw)


# ---------------------------------------------------------------------------------------- YAML → RunConfig
def test_yaml_to_run_config(recipe):
    cfg = build_config(load_yaml(recipe), source=str(recipe))
    assert isinstance(cfg, RunConfig)
    assert cfg.data.image_size == [32, 48]
    assert (
        cfg.data.split.labeled == 4
        and cfg.data.split.supervision == "sparse"
        and cfg.data.split.sparse_pixels == 7
    )
    assert cfg.model.norm == "instance" and cfg.model.width == 8 and cfg.model.dropout == 0.1
    assert cfg.method == {"name": "supervised", "dice_weight": 0.5}
    assert cfg.train.epochs == 12
    assert cfg.train.lr == pytest.approx(3e-4) and isinstance(cfg.train.lr, float)  # "3e-4" has no dot
    assert cfg.train.grad_clip == 1.0 and isinstance(cfg.train.grad_clip, float)  # int accepted for float
    assert cfg.train.augment.hflip is True and cfg.train.augment.rotate_degrees == 10.0
    assert cfg.train.augment.vflip is False  # defaults fill what the file leaves out
    assert cfg.output_dir == "runs/x"


def test_empty_yaml_gives_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing\n")
    assert build_config(load_yaml(path)) == RunConfig()


def test_round_trip_through_dict(recipe):
    cfg = build_config(load_yaml(recipe))
    assert build_config(to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "text, expected",
    [
        ("missing", "config file not found"),
        ("a: [1, 2\n", r"invalid YAML \(line 2\)"),
        ("- 1\n- 2\n", "mapping at top level"),
    ],
)
def test_load_yaml_errors(tmp_path, text, expected):
    path = tmp_path / "c.yaml"
    if text != "missing":
        path.write_text(text)
    with pytest.raises(ConfigError, match=expected) as info:
        load_yaml(path)
    assert str(path) in str(info.value)


# ---------------------------------------------------------------------------------------- unknown keys
@pytest.mark.parametrize(
    "raw, key, suggestion",
    [
        ({"train": {"lrr": 0.1}}, "train.lrr", "lr"),
        ({"data": {"split": {"labelled": 3}}}, "data.split.labelled", "labeled"),
        ({"train": {"augment": {"hflp": True}}}, "train.augment.hflp", "hflip"),
        ({"modle": {}}, "modle", "model"),
    ],
)
def test_unknown_key_names_dotted_key_with_suggestion(raw, key, suggestion):
    with pytest.raises(ConfigError) as info:
        build(raw, source="recipe.yaml")
    msg = str(info.value)
    assert msg.startswith("recipe.yaml: ")
    assert f"unknown key '{key}'" in msg
    assert f"did you mean '{suggestion}'?" in msg
    assert "\n" not in msg


def test_unknown_key_without_close_match_lists_known_keys():
    with pytest.raises(
        ConfigError,
        match=r"unknown key 'model\.zzzzzz' \(known: name, width, depth, norm, dropout, head, alpha, "
        r"centroid_init, init, output, hidden, activation, input_offset, spatial_dims, inplane_levels, encoder, "
        r"encoder_weights, arch\)",
    ):
        build({"model": {"zzzzzz": 1}})


# ---------------------------------------------------------------------------------------- wrong types
@pytest.mark.parametrize(
    "raw, key",
    [
        ({"train": {"lr": "abc"}}, "train.lr"),
        ({"train": {"epochs": 1.5}}, "train.epochs"),
        ({"train": {"epochs": True}}, "train.epochs"),  # bool is not an int here
        ({"train": {"lr": True}}, "train.lr"),  # nor a float
        ({"train": {"augment": {"hflip": 1}}}, "train.augment.hflip"),  # nor is 1 a bool
        ({"train": {"iters_per_epoch": "10"}}, "train.iters_per_epoch"),
        ({"model": {"norm": "layer"}}, "model.norm"),
        ({"data": {"image_size": 32}}, "data.image_size"),
        ({"data": {"image_size": [32, "x"]}}, "data.image_size[1]"),
        ({"data": {"split": 3}}, "data.split"),
        ({"method": "supervised"}, "method"),
        ({"output_dir": 5}, "output_dir"),
    ],
)
def test_wrong_type_names_key(raw, key):
    with pytest.raises(ConfigError) as info:
        build(raw)
    assert f"'{key}' must be" in str(info.value)


def test_optional_fields_accept_null_and_values():
    cfg = build(
        {"train": {"grad_clip": None, "iters_per_epoch": 5}, "data": {"split": {"labeled_ids": ["a", "b"]}}}
    )
    assert cfg.train.grad_clip is None and cfg.train.iters_per_epoch == 5
    assert cfg.data.split.labeled_ids == ["a", "b"]


def test_from_dict_builds_nested_dataclass():
    aug = from_dict(AugmentConfig, {"scale": [0.5, 2], "noise_std": 0})
    assert aug.scale == [0.5, 2.0] and all(isinstance(v, float) for v in aug.scale)
    assert aug.noise_std == 0.0 and isinstance(aug.noise_std, float)


# ---------------------------------------------------------------------------------------- --set overrides
@pytest.mark.parametrize(
    "assignment, get, expected",
    [
        ("train.lr=0.01", lambda c: c.train.lr, 0.01),
        ("train.lr=1e-3", lambda c: c.train.lr, 1e-3),
        ("train.epochs=3", lambda c: c.train.epochs, 3),
        ("train.augment.hflip=true", lambda c: c.train.augment.hflip, True),
        ("train.augment.vflip=no", lambda c: c.train.augment.vflip, False),
        ("data.image_size=[16, 24]", lambda c: c.data.image_size, [16, 24]),
        ("train.grad_clip=null", lambda c: c.train.grad_clip, None),
        ("model.name= monai_unet", lambda c: c.model.name, "monai_unet"),
        ("output_dir=a=b", lambda c: c.output_dir, "a=b"),  # only the first '=' splits
        ("method.tv_weight=0.5", lambda c: c.method["tv_weight"], 0.5),  # method options are free-form here
        ("data.split={labeled: 2, draw: 3}", lambda c: (c.data.split.labeled, c.data.split.draw), (2, 3)),
    ],
)
def test_set_override_parses_yaml_scalars(assignment, get, expected):
    data: dict = {"method": {"name": "supervised"}}
    apply_override(data, assignment)
    assert get(build(data)) == expected


def test_set_override_wins_over_file_and_keeps_siblings(recipe):
    cfg = build_config(load_yaml(recipe), ["train.epochs=5", "train.augment.vflip=true"])
    assert cfg.train.epochs == 5
    assert cfg.train.augment.vflip is True and cfg.train.augment.hflip is True  # sibling from the file kept
    assert cfg.train.lr == pytest.approx(3e-4)


def test_set_override_does_not_modify_the_raw_dict(recipe):
    raw = load_yaml(recipe)
    build_config(raw, ["train.epochs=5"], quick=True)
    assert raw["train"]["epochs"] == 12


@pytest.mark.parametrize(
    "assignment, expected",
    [
        ("train.lr", "expected key=value"),
        ("train..lr=1", "bad key"),
        ("=1", "bad key"),
        ("train.lr.x=1", "'lr' is not a mapping"),
    ],
)
def test_bad_set_syntax(assignment, expected):
    with pytest.raises(ConfigError, match=expected):
        build({"train": {"lr": 0.1}}, [assignment])


def test_set_override_type_checked():
    with pytest.raises(ConfigError, match="'train.epochs' must be int"):
        build({}, ["train.epochs=2.5"])
    with pytest.raises(ConfigError, match="unknown key 'train.epoch'.*did you mean 'epochs'"):
        build({}, ["train.epoch=2"])
    # an exponent float is read as a number, so the value check (not the type check) rejects it
    with pytest.raises(ConfigError, match="'train.lr' must be a finite number > 0, got -25.0"):
        build({}, ["train.lr=-2.5E+1"])


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr=.nan", "'train.lr' must be a finite number > 0, got nan"),
        ("train.lr=.inf", "'train.lr' must be a finite number > 0, got inf"),
        ("train.weight_decay=-1", "'train.weight_decay' must be a finite number >= 0"),
        ("train.momentum=5", r"'train.momentum' must be in \[0, 1\)"),
        ("train.grad_clip=-1", "'train.grad_clip' must be a finite number > 0"),
        ("train.seed=-1", "'train.seed' must be 0 or more"),
        ("train.num_workers=-1", "'train.num_workers' must be 0 or more"),
        ("model.depth=20", "'model.depth' must be at most 10"),
        ("model.inplane_levels=2", "'model.inplane_levels' applies to 3D models"),
        ("data.num_images=-5", "'data.num_images' must be at least 1"),
    ],
)
def test_values_that_would_fail_later_are_refused_by_the_config(override, message):
    with pytest.raises(ConfigError, match=message):
        build({}, [override])


# ---------------------------------------------------------------------------------------- quick section
def test_quick_section_only_applied_with_quick(recipe):
    raw = load_yaml(recipe)
    full = build_config(raw)
    quick = build_config(raw, quick=True)
    assert (full.train.epochs, full.data.num_images) == (12, 120)
    assert (quick.train.epochs, quick.data.num_images) == (2, 16)
    # everything else is the same
    assert to_dict(quick)["model"] == to_dict(full)["model"]
    assert quick.train.lr == full.train.lr


def test_set_overrides_apply_after_quick(recipe):
    cfg = build_config(load_yaml(recipe), ["train.epochs=7"], quick=True)
    assert cfg.train.epochs == 7 and cfg.data.num_images == 16


def test_quick_section_is_checked(recipe):
    with pytest.raises(ConfigError, match="unknown key 'train.epohcs'"):
        build({"quick": {"train.epohcs": 2}}, quick=True)
    with pytest.raises(ConfigError, match="'quick' must be a mapping"):
        build({"quick": ["train.epochs=2"]}, quick=True)
    # a bad quick section is harmless when --quick is not given ...
    assert build({"quick": {"train.epohcs": 2}}).train.epochs == 20


# ---------------------------------------------------------------------------------------- value checks
@pytest.mark.parametrize(
    "raw, key",
    [
        ({"data": {"image_size": [32]}}, "data.image_size"),
        ({"data": {"image_size": [4, 32]}}, "data.image_size"),
        ({"data": {"split": {"labeled": 0}}}, "data.split.labeled"),
        ({"data": {"split": {"labeled_fraction": 0.0}}}, "data.split.labeled_fraction"),
        ({"data": {"split": {"labeled_fraction": 1.5}}}, "data.split.labeled_fraction"),
        ({"data": {"split": {"sparse_pixels": 0}}}, "data.split.sparse_pixels"),
        ({"data": {"split": {"val_fraction": 1.0}}}, "data.split.val_fraction/test_fraction"),
        ({"data": {"split": {"test_fraction": -0.1}}}, "data.split.val_fraction/test_fraction"),
        (
            {"data": {"split": {"val_fraction": 0.7, "test_fraction": 0.6}}},
            "data.split.val_fraction/test_fraction",
        ),
        ({"data": {"split": {"labeled": 4, "labeled_fraction": 0.1}}}, "data.split.labeled"),
        ({"data": {"split": {"draw": -1}}}, "data.split.draw"),
        ({"train": {"epochs": 0}}, "train.epochs"),
        ({"train": {"batch_size": 0}}, "train.batch_size"),
        ({"train": {"val_every": 0}}, "train.val_every"),
        ({"train": {"iters_per_epoch": 0}}, "train.iters_per_epoch"),
        ({"train": {"lr": 0}}, "train.lr"),
        ({"train": {"augment": {"scale": [2.0, 1.0]}}}, "train.augment.scale"),
        ({"train": {"augment": {"scale": [0.0, 1.0]}}}, "train.augment.scale"),
        ({"train": {"augment": {"scale": [1.0]}}}, "train.augment.scale"),
        ({"model": {"width": 0}}, "model.width/depth"),
        ({"method": {"ce_weight": 1.0}}, "method.name"),
        # the ignore label 255 must not be a class
        ({"data": {"dataset": "folder", "num_classes": 255}}, "data.num_classes"),
        ({"data": {"dataset": "folder", "num_classes": 300}}, "data.num_classes"),
        ({"data": {"dataset": "folder", "num_classes": 1}}, "data.num_classes"),
        ({"data": {"shapes_classes": 255}}, "data.shapes_classes"),
        ({"data": {"shapes_classes": 1}}, "data.shapes_classes"),
        ({"data": {"intensity": "zscore"}}, "data.intensity"),  # shapes: fixed scaling
        ({"data": {"dataset": "acdc", "intensity": "minmax"}}, "data.intensity"),
        ({"data": {"dataset": "texture_rings", "intensity": "zscore"}}, "data.intensity"),  # generated
        ({"train": {"strong_augment": {"jitter_prob": 1.5}}}, "train.strong_augment.jitter_prob"),
        ({"train": {"strong_augment": {"cutmix_prob": -0.1}}}, "train.strong_augment.cutmix_prob"),
        ({"train": {"strong_augment": {"brightness": 1.5}}}, "train.strong_augment.brightness"),
        ({"train": {"strong_augment": {"noise_std": -1}}}, "train.strong_augment.noise_std"),
        ({"train": {"strong_augment": {"blur_sigma": [0.0, 1.0]}}}, "train.strong_augment.blur_sigma"),
        ({"train": {"strong_augment": {"cutmix_area": [0.5, 0.2]}}}, "train.strong_augment.cutmix_area"),
        ({"train": {"strong_augment": {"cutmix_area": [0.1, 1.2]}}}, "train.strong_augment.cutmix_area"),
        ({"train": {"strong_augment": {"cutmix_aspect": [1.0]}}}, "train.strong_augment.cutmix_aspect"),
    ],
)
def test_validate_rejects_bad_values(raw, key):
    with pytest.raises(ConfigError) as info:
        build(raw, source="r.yaml")
    assert str(info.value).startswith(f"r.yaml: '{key}' ")


def test_validate_accepts_edge_values():
    cfg = build(
        {
            "data": {
                "image_size": [8, 8],
                "split": {"labeled": 1, "val_fraction": 0, "draw": 0},
            },
            "model": {"depth": 0},
            "train": {"augment": {"scale": [0.5, 0.5]}},
        }
    )
    assert cfg.data.image_size == [8, 8] and cfg.model.depth == 0
    cfg = build({"data": {"split": {"labeled_fraction": 1.0, "val_fraction": 0.5, "test_fraction": 0.49}}})
    assert cfg.data.split.labeled_fraction == 1.0
    cfg = build({"data": {"dataset": "folder", "num_classes": 254, "intensity": "percentile"}})
    assert cfg.data.num_classes == 254
    strong = {"jitter_prob": 0, "blur_prob": 1, "cutmix_prob": 1, "cutmix_area": [1.0, 1.0], "brightness": 0}
    assert build({"train": {"strong_augment": strong}}).train.strong_augment.cutmix_area == [1.0, 1.0]


def test_a_binary_file_as_config_is_a_one_line_error(tmp_path):
    from semiseg.config import load_yaml

    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff")
    with pytest.raises(ConfigError, match=r"x.png: not a YAML config \(not UTF-8 text\)"):
        load_yaml(tmp_path / "x.png")


def test_a_key_given_twice_in_a_yaml_file_is_an_error(tmp_path):
    """PyYAML keeps the last of two equal keys silently; a config must not drop a user's setting."""
    from semiseg.config import load_yaml

    (tmp_path / "dup.yaml").write_text("train:\n  epochs: 2\n  lr: 0.1\n  epochs: 3\n")
    with pytest.raises(ConfigError, match=r"dup.yaml: invalid YAML \(line 4\): duplicate key 'epochs'"):
        load_yaml(tmp_path / "dup.yaml")
