"""Split specs: a dataset's training pool → labeled / unlabeled / validation / test.

Deterministic from ``SplitConfig.seed`` (and ``draw`` for the labeled subset, so several random
draws of labeled images share one validation and test set). Items without a mask can only be
unlabeled. A split can be written to JSON and read back (``labeled_ids``) to pin it.
"""

from __future__ import annotations

import json
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


def make_split(bundle: DatasetBundle, spec: SplitConfig) -> Split:
    """Apply ``spec`` to ``bundle``; raises DataError/ConfigError on an impossible request."""
    pool = list(bundle.train)
    masked = [r for r in pool if r.mask is not None]
    carve_rng = np.random.default_rng([spec.seed, 7919])

    test = list(bundle.test) if bundle.test is not None else []
    if bundle.test is None:
        held = _carve(_groups_of(masked), spec.test_fraction, carve_rng)
        test = [r for r in masked if r.group in held]
        pool = [r for r in pool if r.group not in held]
        masked = [r for r in masked if r.group not in held]
    val = list(bundle.val) if bundle.val is not None else []
    if bundle.val is None:
        held = _carve(_groups_of(masked), spec.val_fraction, carve_rng)
        val = [r for r in masked if r.group in held]
        pool = [r for r in pool if r.group not in held]
        masked = [r for r in masked if r.group not in held]

    key = (lambda r: r.group) if spec.labeled_by == "group" else (lambda r: r.id)
    candidates = sorted({key(r) for r in masked})
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
                raise ConfigError(
                    f"data.split.labeled: asked for {spec.labeled} but only {n} {unit} have masks"
                )
            n = spec.labeled
        elif spec.labeled_fraction is not None:
            n = max(1, round(spec.labeled_fraction * n))
        if spec.first_draw == "listed" and spec.draw == 0:
            listed = list(dict.fromkeys(key(r) for r in masked))  # order of first appearance
            chosen = set(listed[:n])
        else:
            rng = np.random.default_rng([spec.seed, spec.draw, 104729])
            chosen = set(rng.permutation(np.array(candidates, dtype=object))[:n].tolist())
    labeled = [r for r in masked if key(r) in chosen]
    if not labeled:
        raise DataError(
            bundle.root or None,
            f"{bundle.name}: the labeled training set is empty (check data.split and that masks exist)",
        )
    rest = [r for r in pool if key(r) not in chosen or r.mask is None]
    unlabeled = {"rest": rest, "all": labeled + rest}.get(spec.unlabeled, [])
    return Split(labeled=labeled, unlabeled=unlabeled, val=val, test=test, spec=spec)
