"""Named streams filtered by an image tag (StreamSpec), e.g. "present" / "absent" images of a class,
proved by a method written only here: each stream gets only its items, with its own sample order and
random draws; the run resumes exactly; impossible streams are one-line errors."""

from __future__ import annotations

import pytest
import torch

from semiseg.engine import run as engine_run
from semiseg.engine.checkpoint import load_checkpoint
from semiseg.errors import ConfigError
from semiseg.losses import masked_cross_entropy
from semiseg.methods import METHODS, Phase, register
from semiseg.methods.supervised import Supervised
from semiseg.phases import StreamSpec

PRESENT = StreamSpec("present", source="unlabeled", tag_class=1, tag_value=1.0)
ABSENT = StreamSpec("absent", source="unlabeled", tag_class=1, tag_value=0.0)


class TagStreams(Supervised):
    """CE on the labeled images; records the tags and keys of every present / absent item it sees."""

    def __init__(self, cfg, **kwargs):
        super().__init__(cfg, **kwargs)
        self.seen: dict[str, list[torch.Tensor]] = {"present": [], "absent": [], "keys": []}

    def phases(self):
        return [Phase(streams=("labeled", PRESENT, ABSENT))]

    def training_step(self, batch, phase, optimizer):
        for name in ("present", "absent"):
            self.seen[name].append(batch[name].tags[:, 1].clone())
        self.seen["keys"].append((batch["present"].key.clone(), batch["absent"].key.clone()))
        lab = batch["labeled"]
        return {"loss": masked_cross_entropy(self.model(lab.image), lab.mask)}


@pytest.fixture
def tag_method():
    register("test_tag_streams")(TagStreams)
    yield
    METHODS.pop("test_tag_streams", None)


def config(make_config, *extra):
    return make_config(
        "method.name=test_tag_streams",
        "data.num_images=40",
        "data.split.unlabeled_supervision=tag",
        "train.augment.hflip=true",
        *extra,
    )


def test_each_stream_gets_only_its_items_with_its_own_draws(tmp_path, make_config, tag_method, monkeypatch):
    captured = {}
    real = engine_run.build_method_for

    def keep(*a, **k):
        captured["method"] = m = real(*a, **k)
        return m

    monkeypatch.setattr(engine_run, "build_method_for", keep)
    engine_run.train(config(make_config), output_dir=tmp_path, final_eval=False)
    seen = captured["method"].seen
    present, absent = torch.cat(seen["present"]), torch.cat(seen["absent"])
    assert len(present) == len(absent) == 3 * 2 * 4  # 3 epochs x 2 iterations x batch 4
    assert (present == 1).all() and (absent == 0).all()
    # the two streams key their random draws apart (own seed), so their augmentations differ
    for key_present, key_absent in seen["keys"]:
        assert not torch.equal(key_present[:, 0], key_absent[:, 0])


def test_tag_streams_resume_exactly(tmp_path, make_config, tag_method, resume_check):
    resume_check(config(make_config, "train.scheduler=cosine"), tmp_path)
    a = load_checkpoint(tmp_path / "straight" / "last.pt")["method_state"]
    b = load_checkpoint(tmp_path / "crashed" / "last.pt")["method_state"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_streams_without_tags_or_items_are_one_line_errors(tmp_path, make_config, tag_method, monkeypatch):
    no_tags = make_config("method.name=test_tag_streams", "data.num_images=40")
    with pytest.raises(ConfigError, match=r"stream 'present' needs image tags of the unlabeled items"):
        engine_run.train(no_tags, output_dir=tmp_path / "a", final_eval=False)
    monkeypatch.setattr(
        TagStreams,
        "phases",
        lambda self: [Phase(streams=("labeled", StreamSpec("x", tag_class=1, tag_value=5.0)))],
    )
    with pytest.raises(ConfigError, match=r"stream 'x' is empty \(no unlabeled item has tag 5 for class 1\)"):
        engine_run.train(config(make_config), output_dir=tmp_path / "b", final_eval=False)


def test_plain_names_are_the_split_sets():
    assert StreamSpec.of("labeled") == StreamSpec("labeled", source="labeled")
    assert Phase(streams=("labeled", PRESENT)).stream_specs == (
        StreamSpec("labeled", source="labeled"),
        PRESENT,
    )
