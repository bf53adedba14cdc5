"""Classification through the engine: image-level class supervision, balanced labeled draws with the
validation set out of the label budget, accuracy / error for selection and test, and the refusal of
segmentation methods on classification data."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from semiseg.data.records import DatasetBundle, Record
from semiseg.engine import run as engine_run
from semiseg.errors import ConfigError
from semiseg.methods import METHODS, Method, MethodConfig, register


def brightness_bundle(n: int = 60, classes: int = 3) -> DatasetBundle:
    """Images whose class is their brightness level (an easy problem), no masks."""
    rng = np.random.default_rng(0)

    def records(prefix, count):
        out = []
        for i in range(count):
            c = i % classes
            image = (c / classes + 0.1 * rng.random((1, 8, 8))).astype(np.float32)
            out.append(Record(f"{prefix}{i:03d}", image, None, label=c))
        return out

    return DatasetBundle(
        "levels", classes, 1, train=records("tr", n), test=records("te", 30), task="classify"
    )


@dataclass
class ClassifierConfig(MethodConfig):
    pass


class Classifier(Method):
    config_class = ClassifierConfig
    tasks = ("classify",)

    def __init__(self, cfg, **kwargs):
        super().__init__(cfg, **kwargs)
        self.model = nn.Sequential(nn.Conv2d(self.in_channels, 8, 3, padding=1), nn.ReLU(),
                                   nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, self.num_classes))  # fmt: skip

    def training_step(self, batch, phase, optimizer):
        lab = batch["labeled"]
        assert (lab.label >= 0).all() and (lab.label < self.num_classes).all()
        return {"loss": F.cross_entropy(self.model(lab.image), lab.label)}


@pytest.fixture
def classifier():
    register("test_classifier")(Classifier)
    yield
    METHODS.pop("test_classifier", None)


SPLIT = ("data.split.supervision=class", "data.split.balanced=true", "data.split.labeled=15",
         "data.split.val_from_labeled=3", "data.image_size=[8,8]")  # fmt: skip


def test_a_classifier_trains_selects_on_accuracy_and_is_tested(tmp_path, make_config, classifier):
    cfg = make_config("method.name=test_classifier", *SPLIT, "train.val_metric=accuracy", "train.epochs=30",
                      "train.lr=0.05", "train.plots=true")  # fmt: skip
    results = engine_run.train(cfg, output_dir=tmp_path, bundle=brightness_bundle())
    assert results["labeled"] == 12 and set(results["val"]) == {"accuracy", "error"}
    split = json.loads((tmp_path / "split.json").read_text())
    assert len(split["val"]) == 3 and not set(split["val"]) & set(split["labeled"])
    assert results["test"]["accuracy"] + results["test"]["error"] == pytest.approx(1.0)
    assert results["test"]["accuracy"] > 0.9  # brightness levels are easy
    assert len(results["test_cases"]) == 30 and {"id", "predicted", "correct"} <= set(
        results["test_cases"][0]
    )
    assert not (tmp_path / "overlays.png").exists()  # no masks to overlay


def test_segmentation_methods_refuse_classification_data(tmp_path, make_config):
    with pytest.raises(ConfigError, match=r"method 'supervised' does not classify \(segment only\)"):
        engine_run.train(make_config(*SPLIT), output_dir=tmp_path, bundle=brightness_bundle())


def test_classification_metrics_are_the_valid_selection_keys(tmp_path, make_config, classifier):
    with pytest.raises(ConfigError, match=r"train.val_metric: 'dice/mean' is not one of accuracy, error"):
        engine_run.train(make_config("method.name=test_classifier", *SPLIT), output_dir=tmp_path,
                         bundle=brightness_bundle())  # fmt: skip


def test_evaluate_labels_counts_right_answers():
    from semiseg.engine.evaluate import evaluate_labels

    bundle = brightness_bundle(n=6)
    scores = torch.eye(3)[[0, 1, 2, 1, 1, 2]] * 5  # the 4th is wrong (its class is 0)
    means, cases = evaluate_labels(lambda x: scores[: len(x)].clone(), bundle.train, image_size=(8, 8),
                                   device=torch.device("cpu"))  # fmt: skip
    labels = [r.label for r in bundle.train]  # 0 1 2 0 1 2
    want = np.mean([p == y for p, y in zip([0, 1, 2, 1, 1, 2], labels)])
    assert means["accuracy"] == pytest.approx(want) and means["error"] == pytest.approx(1 - want)
    assert [c["predicted"] for c in cases] == [0, 1, 2, 1, 1, 2]
