"""On-disk cache of benchmark runs, so a table that trains for many hours can stop and go on later.

A run is keyed by the hash of the training code (:func:`semiseg.bench.provenance.source_hash`),
its resolved config and its seed, and lives in ``<work_dir>/cache/<key>/``: the trainer's files
(``last.pt`` after every epoch, ``best.pt``, logs, ``metrics.json``) plus ``bench-run.json``, the
cache record (key parts, the commit it was started and resumed at, its result once finished).
Running the table again:

- a finished run (same key) is taken from the cache, not trained again;
- an interrupted run resumes from its ``last.pt`` (``train(..., resume=True)``), which
  reproduces the uninterrupted run;
- a change of the training code, of the config or of the seed is another key: trained afresh.

Commits that touch only docs, tests, benchmark scripts, other tables or the harness itself keep
the key. The data root is recorded but not part of the key (a dataset is expected not to change).

Several processes may share a cache: a run is trained (or resumed) only under its lock file
(``bench-run.lock``, :mod:`semiseg.bench.lock`); a run whose lock a live process holds raises
:class:`~semiseg.bench.lock.RunBusy`, and a finished run is reused without any lock.

**Ledger.** The cache folder is scratch space that a new checkout does not have. With a ledger
folder (``semiseg bench --ledger DIR``, e.g. a folder committed to the repository), every finished
run's record and every memo is also written there as ``<key>.json`` / ``<key>.<memo>.json`` (a few
kB, no checkpoint), and a run found there is not trained again: its record is restored into the
cache. A restored run has no checkpoint; a later step that needs one (a row that starts from it,
post-processing, a figure) trains it again first (:meth:`RunCache.checkpoint`), with the same key,
and the ledger keeps the first record.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semiseg.bench.lock import claim
from semiseg.bench.provenance import hardware

RECORD = "bench-run.json"
#: the lock file of a run being trained (see :mod:`semiseg.bench.lock`)
LOCK = "bench-run.lock"
#: bump when the record layout changes: older records are then not reused
FORMAT = 1


@dataclass
class CachedRun:
    """A finished run: where it lives, its result (``train``'s metrics dict) and how it was obtained."""

    run_dir: Path
    result: dict[str, Any]
    record: dict[str, Any]
    status: str  #: "trained", "resumed" (finished from an interrupted run) or "reused" (cache hit)


def run_key(source: str, config: dict[str, Any], seed: int) -> str:
    """Cache key (24 hex digits) of a run: training-code hash, resolved config (a dict), seed.

    Examples:
        >>> run_key("abc", {"train": {"seed": 0}}, 0) == run_key("abc", {"train": {"seed": 0}}, 0)
        True
        >>> run_key("abc", {"train": {"seed": 0}}, 0) == run_key("abd", {"train": {"seed": 0}}, 0)
        False
    """
    blob = json.dumps(
        {"format": FORMAT, "source_hash": source, "config": config, "seed": seed}, sort_keys=True
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class Bundles:
    """The datasets of a table's runs, each loaded once: one per data config (every ``data.*`` setting
    but the split, which only selects among a dataset's items), so rows on other datasets or variants
    (e.g. cluttered MNIST 48x48 and 128x128, moons and MNIST) each get their own.

    ``bundles(cfg.data)`` → the :class:`~semiseg.data.records.DatasetBundle` of that data config.
    """

    def __init__(self, data_root: str | None = None):
        self.data_root = data_root
        self.loaded: dict[str, Any] = {}

    @staticmethod
    def key(data_cfg) -> str:
        from semiseg.config import to_dict

        return json.dumps({k: v for k, v in to_dict(data_cfg).items() if k != "split"}, sort_keys=True)

    def __call__(self, data_cfg):
        key = self.key(data_cfg)
        if key not in self.loaded:
            from semiseg.data import load_bundle

            self.loaded[key] = load_bundle(data_cfg, self.data_root)
        return self.loaded[key]


class RunCache:
    """Runs of one source hash under ``root`` (``<work_dir>/cache``).

    Args:
        root: Folder of the cached runs.
        source: The training-code hash every run of this cache is trained with.
        commit: The current git commit (recorded in each run).
        data_root: Passed to training; recorded.
        bundles: The datasets of the runs, each loaded once (:class:`Bundles`); None = every run loads
            its own.
        ledger: Folder of finished-run records that outlives the cache (see the module's docstring);
            None = none.
    """

    def __init__(
        self,
        root: Path,
        source: str,
        commit: str,
        data_root: str | None = None,
        bundles: Bundles | None = None,
        ledger: Path | None = None,
    ):
        self.root, self.source, self.commit = Path(root), source, commit
        self.data_root, self.bundles = data_root, bundles
        self.ledger = Path(ledger) if ledger is not None else None
        self.counts = {"trained": 0, "resumed": 0, "reused": 0}

    def bundle(self, cfg):
        """The dataset of run ``cfg`` (None: training loads it)."""
        return self.bundles(cfg.data) if self.bundles is not None else None

    def key(self, cfg) -> str:
        from semiseg.config import to_dict

        return run_key(self.source, to_dict(cfg), cfg.train.seed)

    def run_dir(self, cfg) -> Path:
        return self.root / self.key(cfg)

    @staticmethod
    def read_record(run_dir: Path, path: Path | None = None) -> dict[str, Any] | None:
        """The record of the run in ``run_dir`` (or the record file ``path``); None if there is none
        (or it is unreadable, or of another format)."""
        path = Path(path) if path is not None else Path(run_dir) / RECORD
        if not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return record if record.get("format") == FORMAT else None

    def _write_record(self, run_dir: Path, record: dict[str, Any], name: str = RECORD) -> None:
        from semiseg.io import atomic_write_text

        atomic_write_text(run_dir / name, json.dumps(record, indent=1, default=float))

    def train(self, cfg, checkpoint: bool = False) -> CachedRun:
        """The finished run of ``cfg``: from the cache or the ledger, resumed from its last epoch, or
        trained. With ``checkpoint``, a run restored from the ledger without its ``best.pt`` is
        trained again.

        Raises:
            RunBusy: Another live process is training this run.
        """
        out = self.run_dir(cfg)
        record = self.finished_record(out)
        if record is not None and (not checkpoint or self._has_checkpoint(out)):
            return self._reused(out, record)
        out.mkdir(parents=True, exist_ok=True)
        with claim(out / LOCK):
            record = self.read_record(out)  # read again: another process may have finished it meanwhile
            if record is not None and record.get("finished"):
                if not checkpoint or self._has_checkpoint(out):
                    return self._reused(out, record)
                record = None  # restored from the ledger: train it again for its checkpoint
            return self._train_claimed(cfg, out, record)

    @classmethod
    def _has_checkpoint(cls, out: Path) -> bool:
        """Whether a run folder holds the checkpoints of its finished training: its own record says
        finished (a run being trained again for its checkpoint, or cut off doing so, has an unfinished
        one; one restored from the ledger has no checkpoint) and it has ``best.pt``, or ``last.pt``
        alone for a run that never validates (no ``best.pt`` is written)."""
        record = cls.read_record(out)
        if record is None or not record.get("finished"):
            return False
        return (out / "best.pt").is_file() or (out / "last.pt").is_file()

    def finished(self, cfg) -> bool:
        """Whether the run of ``cfg`` is finished (in the cache or the ledger); trains nothing."""
        return self.finished_record(self.run_dir(cfg)) is not None

    def checkpoint(self, cfg) -> Path:
        """The folder of the run of ``cfg`` with its checkpoints, training it (again) if it has none."""
        out = self.run_dir(cfg)
        if self._has_checkpoint(out) and self.finished_record(out) is not None:
            return out  # not counted as a reuse: the run itself was counted when its row took it
        return self.train(cfg, checkpoint=True).run_dir

    def finished_record(self, out: Path) -> dict[str, Any] | None:
        """The finished record of run folder ``out``: the cache's, else the ledger's (restored into
        the cache), else None. A finished run missing from the ledger is added to it."""
        record = self.read_record(out)
        if record is not None and record.get("finished"):
            self._to_ledger(out.name, record)
            return record
        entry = self.read_record(out, self.ledger / f"{out.name}.json") if self.ledger is not None else None
        if entry is None or not entry.get("finished"):
            return None
        if record is None:  # restore; not over a run being trained again (it resumes from last.pt)
            out.mkdir(parents=True, exist_ok=True)
            self._write_record(out, entry)
        return entry

    def _to_ledger(self, key: str, record: dict[str, Any]) -> None:
        if self.ledger is not None and not (self.ledger / f"{key}.json").is_file():
            self.ledger.mkdir(parents=True, exist_ok=True)
            self._write_record(self.ledger, record, f"{key}.json")

    def _reused(self, out: Path, record: dict[str, Any]) -> CachedRun:
        self.counts["reused"] += 1
        return CachedRun(out, record["result"], record, "reused")

    def _train_claimed(self, cfg, out: Path, record: dict[str, Any] | None) -> CachedRun:
        """Train (or resume) the run of ``cfg`` in ``out``, whose lock this process holds."""
        from semiseg.config import to_dict
        from semiseg.engine import run as engine_run

        resume = record is not None and (out / "last.pt").is_file()
        if record is None:
            record = {
                "format": FORMAT,
                "key": out.name,
                "source_hash": self.source,
                "config": to_dict(cfg),
                "seed": cfg.train.seed,
                "data_root": self.data_root,
                "git_commit": self.commit,  # the commit the run was started at
                "resumed_at": [],
                "seconds": 0.0,
                "finished": False,
            }
        elif resume:
            record["resumed_at"].append(self.commit)
        # the machines the run trained on, in order (a run resumed elsewhere has more than one): a
        # table's provenance names only the writing process's hardware
        machine = _machine()
        if record.setdefault("trained_on", [])[-1:] != [machine]:
            record["trained_on"].append(machine)
        self._write_record(out, record)
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            result = engine_run.train(
                cfg, data_root=self.data_root, output_dir=out, bundle=self.bundle(cfg), resume=resume
            )
        finally:  # an interrupted session's time still counts
            record["seconds"] = round(record["seconds"] + time.perf_counter() - t0, 1)
            # CPU time of this process (all its threads): unlike the wall time, not inflated by a
            # stopped (SIGSTOP) or descheduled process
            record["cpu_seconds"] = round(record.get("cpu_seconds", 0.0) + time.process_time() - c0, 1)
            self._write_record(out, record)
        record.update(finished=True, result=result)
        kept = self.read_record(out, self.ledger / f"{out.name}.json") if self.ledger is not None else None
        if kept is not None and kept.get("finished"):  # trained again for its checkpoint: the ledger's
            # record stays the run's record (its numbers are the ones a table reports)
            record = {**kept, "retrained": {k: record[k] for k in ("git_commit", "seconds", "cpu_seconds")}
                      | {"test": result.get("test")}}  # fmt: skip
        self._write_record(out, record)
        self._to_ledger(out.name, record)
        status = "resumed" if resume else "trained"
        self.counts[status] += 1
        return CachedRun(out, record["result"], record, status)

    def has_memo(self, run_dir: Path, name: str) -> bool:
        """Whether :meth:`memo` ``name`` of ``run_dir`` is computed (in the folder or the ledger)."""
        kept = self.ledger / f"{Path(run_dir).name}.{name}.json" if self.ledger is not None else None
        return self._read_memo(Path(run_dir) / f"bench-{name}.json") is not None or (
            kept is not None and self._read_memo(kept) is not None
        )

    def memo(
        self, run_dir: Path, name: str, compute: Callable[[], dict[str, Any]]
    ) -> tuple[dict[str, Any], bool]:
        """A result derived from a cached run (e.g. a post-processing score), computed once and kept in
        ``run_dir/bench-<name>.json``. Returns ``(value, reused)``.

        Raises:
            RunBusy: Another live process is computing it (under ``run_dir/bench-<name>.lock``).
        """
        from semiseg.io import atomic_write_text

        path = Path(run_dir) / f"bench-{name}.json"
        kept = self.ledger / f"{Path(run_dir).name}.{name}.json" if self.ledger is not None else None
        value = self._read_memo(path)
        if value is None and kept is not None:
            value = self._read_memo(kept)
        if value is not None:
            return value, True
        with claim(path.with_suffix(".lock")):  # RunBusy if another process is computing it
            value = self._read_memo(path)
            if value is not None:
                return value, True
            value = compute()
            text = json.dumps(value, indent=1, default=float)
            atomic_write_text(path, text)
            if kept is not None:
                kept.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(kept, text)
        return value, False

    @staticmethod
    def _read_memo(path: Path) -> dict[str, Any] | None:
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None


def _machine() -> str:
    """This machine as a run record names it: CPU model, core count and GPU, if any."""
    hw = hardware()
    return f"{hw['cpu']}, {hw['cores']} cores" + (f", {hw['gpu']}" if hw["gpu"] else "")
