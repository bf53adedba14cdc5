"""The run ledger (:mod:`semiseg.bench.cache`): finished runs' records kept in a folder that outlives
the run cache, so that a new checkout (an empty work dir) reuses them and trains only what needs a
checkpoint."""

from __future__ import annotations

import json
import shutil

from bench_helpers import SUP, Spy, registered, simple_table, write_recipe

from semiseg.bench.runner import Row, run_table
from semiseg.bench.status import table_status

CONTINUED = "continued | 20 px"


def _rows(continued: bool = True) -> list[Row]:
    rows = [Row("supervised", "20 px"), Row("MRF post-processing", "20 px", postprocess="mrf", reuse=SUP)]
    if continued:
        rows.append(Row("continued", "20 px", {"train.epochs": 2}, init_from=SUP))
    return rows


def _run(tmp_path, table, **kw):
    return run_table(table.name, quick=True, results_dir=tmp_path / "r", work_dir=tmp_path / "w",
                     ledger=tmp_path / "ledger", seeds=[0], **kw)  # fmt: skip


def test_a_new_checkout_takes_finished_runs_and_memos_from_the_ledger(tmp_path, monkeypatch):
    table = simple_table(write_recipe(tmp_path / "tiny.yaml"), "tiny-ledger", _rows())
    with registered(table):
        spy = Spy(monkeypatch)
        first = _run(tmp_path, table)
        assert len(spy.trained) == 2 and len(spy.postprocessed) == 1
        keys = sorted({r["run_dir"].rsplit("/", 1)[1] for r in first["runs"]})
        sup_key = first["runs"][0]["run_dir"].rsplit("/", 1)[1]
        kept = sorted(p.name for p in (tmp_path / "ledger").iterdir())
        assert kept == sorted([f"{k}.json" for k in keys] + [f"{sup_key}.mrf.json"])
        shutil.rmtree(tmp_path / "w")  # a new checkout: the cache is gone, the ledger is not
        spy = Spy(monkeypatch)
        monkeypatch.setattr(
            "semiseg.postprocess.tune_mrf_weight", None
        )  # the MRF score comes from the ledger
        again = _run(tmp_path, table)
    assert spy.trained == []
    assert again["rows"] == first["rows"]
    assert [r["status"] for r in again["runs"]] == ["reused", "post-processed", "reused"]
    assert again["provenance"]["cache"]["ledger"] == str(tmp_path / "ledger")


def test_a_restored_start_is_trained_again_for_a_row_that_needs_its_checkpoint(tmp_path, monkeypatch):
    recipe = write_recipe(tmp_path / "tiny.yaml")
    only = simple_table(recipe, "tiny-ledger-a", _rows(continued=False)[:1])
    both = simple_table(recipe, "tiny-ledger-b", [_rows()[0], _rows()[2]])
    with registered(only), registered(both):
        spy = Spy(monkeypatch)
        first = _run(tmp_path, only)
        shutil.rmtree(tmp_path / "w")
        spy = Spy(monkeypatch)
        second = _run(tmp_path, both)
    (sup_dir,) = {r["run_dir"] for r in first["runs"]}
    # the supervised run is trained again (same key) for its best.pt, then the continued row from it
    assert [str(out) for _, out in spy.trained][0] == sup_dir
    assert len(spy.trained) == 2 and spy.trained[1][0].train.init == f"{sup_dir}/best.pt"
    assert second["runs"][0]["test"] == first["runs"][0]["test"]
    record = json.loads((tmp_path / "ledger" / f"{sup_dir.rsplit('/', 1)[1]}.json").read_text())
    assert record["finished"] and record["resumed_at"] == []  # the ledger keeps the first record
    local = tmp_path / "w" / "cache" / sup_dir.rsplit("/", 1)[1]
    assert (local / "best.pt").is_file()
    again = json.loads(
        (local / "bench-run.json").read_text()
    )  # the ledger's record, with the retraining noted
    assert again["result"] == record["result"] and again["retrained"]["git_commit"] == record["git_commit"]


def test_status_counts_ledger_runs_as_done(tmp_path, monkeypatch):
    table = simple_table(write_recipe(tmp_path / "tiny.yaml"), "tiny-ledger-s", _rows(continued=False)[:1])
    with registered(table):
        Spy(monkeypatch)
        _run(tmp_path, table)
        shutil.rmtree(tmp_path / "w")
        kw = dict(quick=True, work_dir=tmp_path / "w", seeds=[0], source="5ca1ab1e5ca1ab1e")
        assert [e["state"] for e in table_status(table.name, **kw)] == ["pending"]
        assert [e["state"] for e in table_status(table.name, ledger=tmp_path / "ledger", **kw)] == ["done"]


def test_a_run_that_never_validates_keeps_its_checkpoint_in_last_pt(tmp_path):
    """A run without validation (the SSLDEC moons recipe) writes last.pt and no best.pt: its folder
    has its checkpoint, so a figure that loads it does not train it again. A folder restored from the
    ledger (a record only) has none, and neither has one whose own record is unfinished: a run being
    trained again for its checkpoint (or cut off doing so) already has a last.pt of an early phase."""
    from semiseg.bench.cache import FORMAT, RECORD, RunCache

    def record(finished):
        (tmp_path / RECORD).write_text(json.dumps({"format": FORMAT, "finished": finished}))

    record(True)
    assert not RunCache._has_checkpoint(tmp_path)  # restored from the ledger: the record alone
    (tmp_path / "last.pt").write_bytes(b"")
    assert RunCache._has_checkpoint(tmp_path)
    record(False)  # trained again for its checkpoint: not finished yet
    assert not RunCache._has_checkpoint(tmp_path)
    (tmp_path / "best.pt").write_bytes(b"")
    assert not RunCache._has_checkpoint(tmp_path)
