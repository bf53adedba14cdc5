"""Several ``semiseg bench`` processes on one table: per-run lock files (live, stale, released however
training ends) and a runner that leaves runs held by another process pending, writes no results
then, and renders the table from the cache once they are finished."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from bench_helpers import (
    COMMIT,
    MRF,
    RECIPE,
    SOURCE,
    SUP,
    TV,
    Spy,
    registered,
    simple_table,
    tiny_table,
    write_recipe,
)

from semiseg.bench import lock as bench_lock
from semiseg.bench.cache import LOCK, RunCache
from semiseg.bench.lock import EXIT_BUSY, RunBusy, claim, is_alive, lock_owner
from semiseg.bench.runner import Row, TablePending, row_config, run_table
from semiseg.cli import main
from semiseg.config import build_config

CONTINUED = "continued | 20 px"


def tiny_cfg(seed: int = 0):
    return build_config(RECIPE, [f"train.seed={seed}", f"data.split.draw={seed}"], source="test")


def owner(pid: int, **extra) -> dict:
    return {"pid": pid, "host": socket.gethostname(), "started": "2024-05-01 12:00:00", **extra}


def hold(run_dir: Path, record: dict | str, name: str = LOCK) -> Path:
    """A lock file in ``run_dir`` as another process would leave it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / name).write_text(record if isinstance(record, str) else json.dumps(record))
    return run_dir / name


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def sleeper():
    """A live process that is not this one."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------------------- the lock
def test_claim_writes_the_owner_and_removes_the_lock_however_the_block_ends(tmp_path):
    lock = tmp_path / "x.lock"
    with claim(lock) as me:
        held = lock_owner(lock)
        assert held == me and held["pid"] == os.getpid() and held["host"] == socket.gethostname()
        assert held["started"] and is_alive(held)
        with pytest.raises(RunBusy, match=f"pid {os.getpid()}"):  # not even this process takes it twice
            bench_lock.acquire(lock)
    assert not lock.exists()
    with pytest.raises(RuntimeError, match="inside"), claim(lock):
        raise RuntimeError("inside")
    assert not lock.exists()


def test_liveness_of_owners(sleeper):
    assert is_alive(owner(os.getpid())) and is_alive(owner(sleeper.pid))
    assert is_alive({**owner(os.getpid()), "host": "another-host"})  # cannot be checked: held
    assert not is_alive(owner(dead_pid()))
    assert not is_alive(owner(0)) and not is_alive(owner("12"))
    start = bench_lock._process_start(os.getpid())
    if start is not None:  # Linux: a reused pid (another start time) or another boot is not the owner
        assert is_alive(owner(os.getpid(), process_start=start, boot_id=bench_lock._boot_id()))
        assert not is_alive(owner(os.getpid(), process_start=start + 1))
        assert not is_alive(owner(os.getpid(), boot_id="another-boot"))


# ---------------------------------------------------------------------------------------- the cache
def test_a_run_held_by_a_live_process_is_busy(tmp_path, monkeypatch, sleeper):
    spy = Spy(monkeypatch)
    cache = RunCache(tmp_path / "cache", SOURCE, COMMIT)
    cfg = tiny_cfg()
    for pid in (os.getpid(), sleeper.pid):
        lock = hold(cache.run_dir(cfg), owner(pid))
        with pytest.raises(RunBusy, match=f"pid {pid} on {socket.gethostname()}") as busy:
            cache.train(cfg)
        assert (
            busy.value.path == lock and busy.value.owner["pid"] == pid and busy.value.exit_code == EXIT_BUSY
        )
        assert lock_owner(lock)["pid"] == pid  # the loser leaves the lock alone
    assert spy.trained == [] and cache.counts == {"trained": 0, "resumed": 0, "reused": 0}


@pytest.mark.parametrize("stale", ["dead pid", "corrupt", "empty"])
def test_a_stale_lock_is_taken_over_and_the_run_completes(tmp_path, monkeypatch, capsys, stale):
    spy = Spy(monkeypatch)
    cache = RunCache(tmp_path / "cache", SOURCE, COMMIT)
    cfg = tiny_cfg()
    content = {"dead pid": owner(dead_pid()), "corrupt": "{not json", "empty": ""}[stale]
    lock = hold(cache.run_dir(cfg), content)
    run = cache.train(cfg)
    assert run.status == "trained" and len(spy.trained) == 1 and run.record["finished"]
    assert not lock.exists()
    (line,) = [x for x in capsys.readouterr().out.splitlines() if "stale" in x]
    assert line.startswith(f"bench: taking over the stale lock {lock}")


def test_an_interrupted_run_whose_process_died_is_resumed_under_a_new_lock(tmp_path, monkeypatch):
    import dataclasses

    import semiseg.engine.run as engine_run

    real_train = engine_run.train
    cfg = dataclasses.replace(tiny_cfg(), train=dataclasses.replace(tiny_cfg().train, epochs=2))

    def one_epoch_then_crash(cfg, **kwargs):
        real_train(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=1)), **kwargs)
        raise KeyboardInterrupt

    cache = RunCache(tmp_path / "cache", SOURCE, COMMIT)
    with pytest.MonkeyPatch.context() as mp:
        Spy(mp, train=one_epoch_then_crash)
        with pytest.raises(KeyboardInterrupt):
            cache.train(cfg)
    out = cache.run_dir(cfg)
    assert (out / "last.pt").is_file() and not (out / LOCK).exists()  # released on the interrupt
    hold(out, owner(dead_pid()))  # as if that process had been killed before releasing it
    spy = Spy(monkeypatch)
    run = cache.train(cfg)
    assert run.status == "resumed" and spy.resumed == [True] and not (out / LOCK).exists()


def test_the_lock_is_removed_after_success_and_after_an_exception(tmp_path, monkeypatch):
    cache = RunCache(tmp_path / "cache", SOURCE, COMMIT)
    seen = []

    def failing(cfg, **kwargs):
        seen.append(lock_owner(Path(kwargs["output_dir"]) / LOCK))  # held while training
        raise RuntimeError("boom")

    with pytest.MonkeyPatch.context() as mp:
        Spy(mp, train=failing)
        with pytest.raises(RuntimeError, match="boom"):
            cache.train(tiny_cfg())
    out = cache.run_dir(tiny_cfg())
    assert seen[0]["pid"] == os.getpid() and not (out / LOCK).exists()
    assert not cache.read_record(out)["finished"]
    spy = Spy(monkeypatch)
    assert cache.train(tiny_cfg()).status == "trained" and not (out / LOCK).exists()
    hold(out, owner(os.getpid()))  # a finished run is reused without looking at any lock
    assert cache.train(tiny_cfg()).status == "reused" and len(spy.trained) == 1


def test_a_run_finished_by_another_process_while_this_one_waited_is_reused(tmp_path, monkeypatch):
    """Unfinished when first read, finished by the time the lock is taken: read again, not trained."""
    import semiseg.bench.cache as cache_module

    spy = Spy(monkeypatch)
    done = RunCache(tmp_path / "other", SOURCE, COMMIT).train(tiny_cfg())
    cache = RunCache(tmp_path / "cache", SOURCE, COMMIT)
    real_claim = cache_module.claim

    def claim_after_the_other_finished(path):
        (Path(path).parent / "bench-run.json").write_text((done.run_dir / "bench-run.json").read_text())
        return real_claim(path)

    monkeypatch.setattr(cache_module, "claim", claim_after_the_other_finished)
    run = cache.train(tiny_cfg())
    assert run.status == "reused" and len(spy.trained) == 1
    assert run.result == RunCache.read_record(done.run_dir)["result"]


def test_a_derived_result_being_computed_elsewhere_is_busy(tmp_path):
    cache = RunCache(tmp_path / "cache", SOURCE, COMMIT)
    hold(tmp_path / "run", owner(os.getpid()), name="bench-mrf.lock")
    with pytest.raises(RunBusy):
        cache.memo(tmp_path / "run", "mrf", lambda: pytest.fail("computed while busy"))
    (tmp_path / "run" / "bench-mrf.lock").unlink()
    assert cache.memo(tmp_path / "run", "mrf", lambda: {"x": 1}) == ({"x": 1}, False)
    assert cache.memo(tmp_path / "run", "mrf", lambda: {"x": 2}) == ({"x": 1}, True)
    assert not (tmp_path / "run" / "bench-mrf.lock").exists()


# ---------------------------------------------------------------------------------------- the runner
def held_table(tmp_path: Path):
    """supervised (seeds 0, 1), a row continuing from it and its MRF post-processing."""
    rows = [Row("supervised", "20 px"), Row("continued", "20 px", init_from=SUP),
            Row("MRF post-processing", "20 px", postprocess="mrf", reuse=SUP)]  # fmt: skip
    return simple_table(write_recipe(tmp_path / "tiny.yaml"), "tiny-held", rows, quick_seeds=[0, 1])


def test_the_runner_leaves_a_busy_run_pending_and_writes_the_table_once_it_is_done(
    tmp_path, monkeypatch, capsys
):
    table = held_table(tmp_path)
    results, work = tmp_path / "results", tmp_path / "work"
    kwargs = dict(quick=True, results_dir=results, work_dir=work)
    cfg1 = row_config(table, table.rows[0], 1, quick=True)
    cache = RunCache(work / "cache", SOURCE, COMMIT)
    held = cache.run_dir(cfg1)
    lock = hold(held, owner(os.getpid(), started="2024-05-01 12:00:00"))  # "another worker" trains seed 1
    with registered(table):
        with pytest.MonkeyPatch.context() as mp:
            spy = Spy(mp)
            with pytest.raises(TablePending) as pending:
                run_table("tiny-held", **kwargs)
        # the others were trained: supervised and continued seed 0 (and seed 0 post-processed)
        assert [(cfg.method["name"], cfg.train.seed) for cfg, _ in spy.trained] == [
            ("supervised", 0),
            ("supervised", 0),
        ]
        assert [cfg.train.init is not None for cfg, _ in spy.trained] == [False, True]
        assert len(spy.postprocessed) == 1
        assert not results.exists()  # nothing half-written
        assert [(p.row, p.seed, p.busy) for p in pending.value.pending] == [
            (SUP, 1, True), (CONTINUED, 1, False), (MRF, 1, False)]  # fmt: skip
        out = capsys.readouterr().out.splitlines()
        lines = [x for x in out if "pending: " in x]
        assert lines[0] == (f"[tiny-held] pending: {SUP} | draw 1 | {held} (being trained by pid {os.getpid()} "
                            f"on {socket.gethostname()} since 2024-05-01 12:00:00)")  # fmt: skip
        assert lines[1].startswith(f"[tiny-held] pending: {CONTINUED} | draw 1 | {work / 'cache'}/")
        assert lines[1].endswith(f"(waits for {SUP}, seed 1)")
        assert lines[2] == f"[tiny-held] pending: {MRF} | draw 1 | {held} (waits for {SUP}, seed 1)"
        assert out[-1] == ("[tiny-held] 1 run is being trained by another process (2 more wait for them); "
                           "run the same command again when they finish to write the table")  # fmt: skip
        index = json.loads((work / "tiny-held" / "runs.json").read_text())
        assert index[f"{SUP} | seed 1"] == str(held)  # where to look for the held run

        # the command line: the same, exit code 75, nothing trained again
        argv = ["bench", "tiny-held", "--quick", "--results-dir", str(results), "--work-dir", str(work)]
        with pytest.MonkeyPatch.context() as mp:
            spy = Spy(mp)
            assert main(argv) == EXIT_BUSY == 75
        assert spy.trained == [] and not results.exists()
        assert "run the same command again" in capsys.readouterr().out

        # the other worker finishes its run and releases the lock
        lock.unlink()
        with pytest.MonkeyPatch.context() as mp:
            spy = Spy(mp)
            assert cache.train(cfg1).status == "trained"
        # run again: only the run that waited is trained, and the table is written
        with pytest.MonkeyPatch.context() as mp:
            spy = Spy(mp)
            first = run_table("tiny-held", **kwargs)
        assert [(cfg.train.seed, cfg.train.init) for cfg, _ in spy.trained] == [(1, str(held / "best.pt"))]
        assert (results / "tiny-held.json").is_file() and [r["n_runs"] for r in first["rows"]] == [2, 2, 2]
        # and once more: everything from the cache, the same table
        (results / "tiny-held.json").unlink()
        with pytest.MonkeyPatch.context() as mp:
            spy = Spy(mp)
            mp.setattr("semiseg.postprocess.tune_mrf_weight", None)  # MRF scores come from the cache too
            assert main(argv) == 0
        assert spy.trained == [] and spy.postprocessed and "pending" not in capsys.readouterr().out
    again = json.loads((results / "tiny-held.json").read_text())
    assert again["rows"] == json.loads(json.dumps(first["rows"]))
    assert not list((work / "cache").glob("*/*.lock"))


def test_a_busy_tuning_trial_leaves_the_tuned_rows_pending(tmp_path, monkeypatch, capsys):
    table = tiny_table(write_recipe(tmp_path / "tiny.yaml"), name="tiny-tv-held")
    tv = next(r for r in table.rows if r.key == TV)
    trial = row_config(
        table, tv, 0, quick=True, extra={"method.tv_weight": table.tuning.grid["method.tv_weight"][1]}
    )
    hold(RunCache(tmp_path / "work" / "cache", SOURCE, COMMIT).run_dir(trial), owner(os.getpid()))
    spy = Spy(monkeypatch)
    with registered(table), pytest.raises(TablePending) as pending:
        run_table("tiny-tv-held", quick=True, results_dir=tmp_path / "results", work_dir=tmp_path / "work")
    # the first trial and the supervised runs (with their post-processing) were done
    assert sorted((cfg.method["name"], cfg.train.seed) for cfg, _ in spy.trained) == [
        ("supervised", 0), ("supervised", 1), ("tv", 0)]  # fmt: skip
    assert len(spy.postprocessed) == 2 and not (tmp_path / "results").exists()
    assert [(p.row, p.seed, p.busy, p.run_dir) for p in pending.value.pending][1:] == [
        (TV, 0, False, None), (TV, 1, False, None)]  # fmt: skip
    assert pending.value.pending[0].row.startswith(f"tuning {TV}") and pending.value.pending[0].busy
    out = capsys.readouterr().out
    assert (
        f"pending: {TV} | draw 1 | (folder known once the tuning is done) (waits for the tuning of {TV})"
        in out
    )
    assert "1 run is being trained by another process (2 more wait for them)" in out
