"""Split specs: a dataset's training pool → labeled / unlabeled / validation / test.

Deterministic from ``SplitConfig.seed`` (and ``draw`` for the labeled subset, so several random
draws of labeled images share one validation and test set). Items without a mask can only be
unlabeled. A split can be written to JSON and read back (``labeled_ids``) to pin it.
"""

from __future__ import annotations

import json
import re
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from semiseg.config import SplitConfig
from semiseg.data.records import DatasetBundle, Record
from semiseg.errors import ConfigError, DataError
from semiseg.io import atomic_write_text


@dataclass
class Split:
    labeled: list[Record]
    unlabeled: list[Record]
    val: list[Record]
    test: list[Record]
    spec: SplitConfig = field(default_factory=SplitConfig)

    def summary(self) -> dict:
        return {
            "spec": asdict(self.spec),
            "labeled": [r.id for r in self.labeled],
            "labeled_groups": sorted({r.group for r in self.labeled}),
            "unlabeled": [r.id for r in self.unlabeled],
            "val": [r.id for r in self.val],
            "test": [r.id for r in self.test],
        }

    def write(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.summary(), indent=1))


def stable_hash(text: str) -> int:
    """A hash of ``text`` that is the same in every process (unlike ``hash``)."""
    return zlib.crc32(text.encode())


def _carve(groups: list[str], fraction: float, rng: np.random.Generator) -> set[str]:
    if fraction <= 0 or len(groups) < 2:
        return set()
    n = max(1, round(fraction * len(groups)))
    n = min(n, len(groups) - 1)
    return set(rng.permutation(np.array(groups, dtype=object))[:n].tolist())


def _groups_of(records: list[Record]) -> list[str]:
    return sorted({r.group for r in records})


def _has_rule(spec: SplitConfig) -> bool:
    return spec.labeled_pool != "all" or spec.labeled_labels is not None


def _in_pool(records: list[Record], spec: SplitConfig) -> list[Record]:
    """``records`` that ``labeled_pool`` admits (``present``: a mask with foreground)."""
    if spec.labeled_pool == "present":
        return [r for r in records if r.has_foreground]
    return records


def _with_labels(records: list[Record], spec: SplitConfig) -> list[Record]:
    """``records`` whose image-level label is in ``labeled_labels`` (all when it is None)."""
    if spec.labeled_labels is None:
        return records
    wanted = set(spec.labeled_labels)
    return [r for r in records if r.label in wanted]


def _same_rule(val: list[Record], spec: SplitConfig) -> list[Record]:
    """The validation items a user with the labeled items' rule would have: the same pool, labels
    and fraction, drawn once with ``seed`` (every draw validates on the same items)."""
    counted = _in_pool(val, spec)
    eligible = _with_labels(counted, spec)
    n = len(eligible)
    if spec.labeled_fraction is not None:
        n = min(n, max(1, round(spec.labeled_fraction * len(counted))))
    if not eligible:
        raise ConfigError(
            "data.split.val_supervision: 'same' leaves no validation item under data.split.labeled_pool / "
            "labeled_labels"
        )
    rng = np.random.default_rng([spec.seed, 15485863])
    chosen = {r.id for r in (eligible[i] for i in rng.permutation(len(eligible))[:n])}
    return [r for r in val if r.id in chosen]


def _balanced_draw(records: list[Record], n: int, rng: np.random.Generator) -> set[str]:
    """Ids of ``n`` of ``records``, the same number per image-level label (``n`` must divide by the
    labels present)."""
    by_label: dict[int, list[str]] = {}
    for r in records:
        if r.label is None:
            raise ConfigError(f"data.split.balanced: item {r.id} has no image-level label")
        by_label.setdefault(int(r.label), []).append(r.id)
    k = len(by_label)
    if n % k:
        raise ConfigError(f"data.split.balanced: {n} items do not divide among {k} labels")
    per = n // k
    short = [label for label, ids in by_label.items() if len(ids) < per]
    if short:
        raise ConfigError(f"data.split.balanced: label {short[0]} has fewer than {per} items")
    chosen: set[str] = set()
    for label in sorted(by_label):
        ids = by_label[label]
        chosen.update(ids[i] for i in rng.permutation(len(ids))[:per])
    return chosen


def natural_key(text: str) -> list:
    """Sort key that orders the numbers inside ``text`` by value.

    Examples:
        >>> sorted(["p1_slice_10", "p1_slice_2"], key=natural_key)
        ['p1_slice_2', 'p1_slice_10']
    """
    return [int(part) if part.isdecimal() else part for part in re.split(r"(\d+)", text)]


def _spaced_items(records: list[Record], fraction: float, rng: np.random.Generator) -> list[Record]:
    """Of each group of ``records``, ``max(1, round(fraction · n))`` of its ``n`` items, evenly spaced in
    natural id order from a random offset (so a patient's labeled slices span it from base to apex)."""
    groups: dict[str, list[Record]] = {}
    for r in records:
        groups.setdefault(r.group, []).append(r)
    kept: set[str] = set()
    for name in sorted(groups):
        items = sorted(groups[name], key=lambda r: natural_key(r.id))
        n_keep = max(1, round(fraction * len(items)))
        step = len(items) / n_keep
        offset = rng.uniform(0, step)
        kept.update(items[min(len(items) - 1, int(offset + i * step))].id for i in range(n_keep))
    return [r for r in records if r.id in kept]


def make_split(bundle: DatasetBundle, spec: SplitConfig) -> Split:
    """Apply ``spec`` to ``bundle``; raises DataError/ConfigError on an impossible request."""
    pool = list(bundle.train)
    if bundle.task == "classify":  # an item "has truth" when it has its class
        masked = [r for r in pool if r.label is not None]
    else:
        masked = [r for r in pool if r.has_mask]
    carve_rng = np.random.default_rng([spec.seed, 7919])

    test = list(bundle.test) if bundle.test is not None else []
    if bundle.test is None:
        held = _carve(_groups_of(masked), spec.test_fraction, carve_rng)
        test = [r for r in masked if r.group in held]
        pool = [r for r in pool if r.group not in held]
        masked = [r for r in masked if r.group not in held]
    val = list(bundle.val) if bundle.val is not None else []
    if bundle.val is None and not spec.val_from_labeled:
        held = _carve(_groups_of(masked), spec.val_fraction, carve_rng)
        val = [r for r in masked if r.group in held]
        pool = [r for r in pool if r.group not in held]
        masked = [r for r in masked if r.group not in held]

    key = (lambda r: r.group) if spec.labeled_by == "group" else (lambda r: r.id)
    counted = _in_pool(masked, spec)  # what labeled_fraction counts
    eligible = _with_labels(counted, spec)  # what may be labeled
    if spec.val_supervision == "same" and _has_rule(spec):
        val = _same_rule(val, spec)
    candidates = sorted({key(r) for r in eligible})
    if spec.labeled_ids is not None:
        wanted = set(spec.labeled_ids)
        unknown = sorted(wanted - set(candidates))
        if unknown:
            raise ConfigError(f"data.split.labeled_ids: not in the labeled pool: {', '.join(unknown[:5])}")
        chosen = wanted
    else:
        n = len(candidates)
        if spec.labeled is not None:
            if spec.labeled > n:
                unit = "groups" if spec.labeled_by == "group" else "images"
                which = (
                    "may be labeled (data.split.labeled_pool / labeled_labels)"
                    if _has_rule(spec)
                    else ("have a class" if bundle.task == "classify" else "have masks")
                )
                held = (
                    " (after validation and test are set aside)"
                    if bundle.val is None or bundle.test is None
                    else ""
                )
                raise ConfigError(
                    f"data.split.labeled: asked for {spec.labeled} but only {n} {unit} {which}{held}"
                )
            n = spec.labeled
        elif spec.labeled_fraction is not None:
            n = max(1, round(spec.labeled_fraction * len({key(r) for r in counted})))
            if n > len(candidates):
                raise ConfigError(
                    f"data.split.labeled_fraction: {n} items wanted, only {len(candidates)} may be labeled "
                    "(data.split.labeled_pool / labeled_labels)"
                )
        if spec.first_draw == "listed" and spec.draw == 0:
            listed = list(dict.fromkeys(key(r) for r in eligible))  # order of first appearance
            chosen = set(listed[:n])
        elif spec.balanced:
            chosen = _balanced_draw(eligible, n, np.random.default_rng([spec.seed, spec.draw, 104729]))
        else:
            rng = np.random.default_rng([spec.seed, spec.draw, 104729])
            chosen = set(rng.permutation(np.array(candidates, dtype=object))[:n].tolist())
    labeled = [r for r in eligible if key(r) in chosen]
    if spec.labeled_item_fraction < 1 and any(r.ndim == 4 for r in labeled):  # [C, D, H, W]
        raise ConfigError(
            "data.split.labeled_item_fraction: labels a fraction of each labeled group's 2D items (e.g. ACDC's "
            "slices per patient); this dataset's items are volumes, for which it is not implemented"
        )
    if spec.labeled_item_fraction < 1:
        labeled = _spaced_items(
            labeled, spec.labeled_item_fraction, np.random.default_rng([spec.seed, spec.draw, 15485863])
        )
    if spec.val_from_labeled:
        if spec.val_from_labeled >= len(labeled):
            raise ConfigError(
                f"data.split.val_from_labeled: {spec.val_from_labeled} of {len(labeled)} labeled items leaves "
                "none to train on"
            )
        rng = np.random.default_rng([spec.seed, spec.draw, 1299709])
        if spec.balanced:
            held = _balanced_draw(labeled, spec.val_from_labeled, rng)
        else:
            held = {labeled[i].id for i in rng.permutation(len(labeled))[: spec.val_from_labeled]}
        val = [r for r in labeled if r.id in held]
        labeled = [r for r in labeled if r.id not in held]
    if not labeled:
        raise DataError(
            bundle.root or None,
            f"{bundle.name}: the labeled training set is empty (check data.split and that masks exist)",
        )
    taken = {r.id for r in labeled} | ({r.id for r in val} if spec.val_from_labeled else set())
    rest = [r for r in pool if r.id not in taken]
    unlabeled = {"rest": rest, "all": labeled + rest}.get(spec.unlabeled, [])
    return Split(labeled=labeled, unlabeled=unlabeled, val=val, test=test, spec=spec)
