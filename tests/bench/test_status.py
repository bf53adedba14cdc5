"""``semiseg bench TABLE --status``: the state of each run of a table in the run cache (done, running,
partial, pending, waiting for another run or for the tuning, derived), read from fabricated run
folders (record, lock, epoch log) without training, plus one tiny real table run whose cached runs
the status must find exactly where the runner put them. No test metric may appear."""

from __future__ import annotations

import doctest
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
    SOURCE,
    SUP,
    TV,
    TV_WEIGHTS,
    USER,
    Spy,
    registered,
    simple_table,
    tiny_table,
    write_recipe,
)

from semiseg.bench import provenance, runner
from semiseg.bench import status as bench_status
from semiseg.bench.cache import FORMAT, LOCK, RECORD, RunCache
from semiseg.bench.runner import Row, row_config, run_table
from semiseg.bench.status import format_status, status_summary, table_status
from semiseg.cli import main

CONTINUED = "continued | 20 px"
#: test / validation values of the fabricated runs: none of them (nor the metric names) may be shown
TEST_VALUES = {"pixel_error": 0.4321, "dice/mean": 0.8765}
VAL_VALUE = 0.1234
HIDDEN = ("0.4321", "43.21", "0.8765", "87.65", "0.1234", "12.34", "0.5678", "pixel_error", "dice")


def owner(pid: int) -> dict:
    return {"pid": pid, "host": socket.gethostname(), "started": "2024-05-01 12:00:00"}


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def fabricate(
    run_dir: Path,
    *,
    finished: bool | None = None,
    seconds: float = 0.0,
    epochs: list[str] | int = 0,
    lock: dict | None = None,
) -> Path:
    """A run folder as the cache leaves it: ``finished`` None = no record; ``epochs`` = the phase of
    each logged epoch (or a number of main-phase epochs), each 10 s; a lock file holding ``lock``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if finished is not None:
        record = {"format": FORMAT, "key": run_dir.name, "source_hash": SOURCE, "seconds": seconds,
                  "finished": finished}  # fmt: skip
        if finished:
            record["result"] = {"test": TEST_VALUES, "best": {"value": VAL_VALUE, "epoch": 1}}
        (run_dir / RECORD).write_text(json.dumps(record))
    phases = ["train"] * epochs if isinstance(epochs, int) else epochs
    count: dict[str, int] = {}
    lines = []
    for phase in phases:
        count[phase] = count.get(phase, 0) + 1
        lines.append({"phase": phase, "epoch": count[phase], "train/loss": 0.9, "val/pixel_error": 0.5678,
                      "seconds": 10.0})  # fmt: skip
    if lines:
        (run_dir / "epochs.jsonl").write_text("".join(json.dumps(h) + "\n" for h in lines))
    if lock is not None:
        (run_dir / LOCK).write_text(json.dumps(lock))
    return run_dir


def by_run(entries: list[dict]) -> dict[tuple[str, int], dict]:
    return {(e["row"], e["seed"]): e for e in entries}


def assert_no_metric(text: str) -> None:
    for hidden in HIDDEN:
        assert hidden not in text, hidden


# ---------------------------------------------------------------------------------------- states
def test_each_state_of_a_run_and_the_summary(tmp_path):
    table = simple_table(write_recipe(tmp_path / "tiny.yaml"), "tiny-status", [Row("supervised", "20 px")],
                         quick_seeds=[0, 1, 2, 3, 4, 5])  # fmt: skip
    cache = RunCache(tmp_path / "work" / "cache", SOURCE, COMMIT)

    def run_dir(seed: int) -> Path:
        return cache.run_dir(row_config(table, table.rows[0], seed, quick=True))

    fabricate(run_dir(0), finished=True, seconds=5400.0, epochs=1)
    fabricate(run_dir(1), finished=False, seconds=0.0, epochs=0, lock=owner(os.getpid()))  # live: running
    fabricate(run_dir(2), finished=False, seconds=1800.0, epochs=1, lock=owner(dead_pid()))  # stale lock
    fabricate(run_dir(3), finished=False, seconds=0.0, epochs=1)  # killed before recording its time
    fabricate(run_dir(4), lock=owner(dead_pid()))  # a stale lock and no record: nothing to resume
    fabricate(
        run_dir(5), finished=True, seconds=60.0, epochs=1, lock=owner(os.getpid())
    )  # lock not yet removed
    with registered(table):
        entries = table_status("tiny-status", quick=True, work_dir=tmp_path / "work", source=SOURCE)
    assert [(e["seed"], e["state"]) for e in entries] == [
        (0, "done"), (1, "running"), (2, "partial"), (3, "partial"), (4, "pending"), (5, "done")]  # fmt: skip
    assert [e["run_dir"] for e in entries] == [str(run_dir(s)) for s in range(6)]
    done, running, stale, killed, pending, _ = entries
    assert done["seconds"] == 5400.0 and done["epochs"] == 1 and done["epochs_total"] == 1
    assert running["owner"] == f"pid {os.getpid()} on {socket.gethostname()} since 2024-05-01 12:00:00"
    assert running["text"] == f"running: {running['owner']}" and running["epochs"] == 0
    assert stale["seconds"] == 1800.0 and stale["text"] == "partial (resumable)" and stale["owner"] is None
    assert killed["seconds"] == 0.0 and killed["logged_seconds"] == 10.0
    assert pending["seconds"] is None and pending["epochs"] == 0
    assert status_summary(entries) == {"done": 2, "running": 1, "partial": 2, "pending": 1, "total": 6,
                                       "seconds": 7270.0, "hours": 2.02, "shared": 0, "derived": 0}  # fmt: skip
    text = format_status(entries)
    lines = text.splitlines()
    assert lines[0].split() == ["row", "seed", "state", "epochs", "seconds", "run"]
    assert lines[2].split() == [*SUP.split(), "0", "done", "1/1", "5400.0", run_dir(0).name]
    assert f"running: {running['owner']}; its logged epochs took" not in text  # no epoch logged yet
    assert "partial (resumable); its logged epochs took 10 s" in lines[5]  # the record says 0 s
    assert lines[-1] == ("2/6 runs done, 1 running, 2 partial, 1 pending; 2.02 h spent on the started runs; "
                         "about 3.0 h of wall time to go at the done runs' mean per row")  # fmt: skip
    assert_no_metric(text)


def test_epochs_of_a_run_with_several_phases(tmp_path):
    run_dir = fabricate(tmp_path / "run", finished=False, epochs=["warmup"] * 4, lock=owner(os.getpid()))
    e = bench_status.run_state(run_dir, epochs_total=15)
    assert e["state"] == "running" and bench_status._epochs_text(e) == "4 (warmup 4)"
    fabricate(run_dir, epochs=["warmup"] * 10 + ["train"] * 2)
    e = bench_status.run_state(run_dir, epochs_total=15)
    assert bench_status._epochs_text(e) == "12 (train 2/15)" and e["logged_seconds"] == 120.0


# ----------------------------------------------------------------------------- rows that depend on others
def held_table(tmp_path: Path, name: str):
    """supervised (seeds 0, 1), a row continuing from it and its MRF post-processing."""
    rows = [Row("supervised", "20 px"), Row("continued", "20 px", init_from=SUP),
            Row("MRF post-processing", "20 px", postprocess="mrf", reuse=SUP)]  # fmt: skip
    return simple_table(write_recipe(tmp_path / "tiny.yaml"), name, rows, quick_seeds=[0, 1])


def test_init_from_rows_wait_for_their_starting_run_and_post_processing_follows_it(tmp_path):
    table = held_table(tmp_path, "tiny-status-init")
    work = tmp_path / "work"
    cache = RunCache(work / "cache", SOURCE, COMMIT)
    sup0, sup1 = (cache.run_dir(row_config(table, table.rows[0], s, quick=True)) for s in (0, 1))
    fabricate(sup0, finished=True, seconds=36.0, epochs=1)
    fabricate(sup1, finished=False, seconds=0.0, epochs=0, lock=owner(os.getpid()))
    # seed 0 continues from the finished run: its config (train.init = its best.pt) and folder are known
    cont0 = cache.run_dir(
        row_config(table, table.rows[1], 0, quick=True, extra={"train.init": str(sup0 / "best.pt")})
    )
    fabricate(cont0, finished=False, seconds=18.0, epochs=1)
    (sup0 / "bench-mrf.json").write_text(json.dumps({"test": TEST_VALUES, "mrf_weight": 0.5}))
    with registered(table):
        entries = by_run(table_status("tiny-status-init", quick=True, work_dir=work, source=SOURCE))
    assert entries[(CONTINUED, 0)]["state"] == "partial" and entries[(CONTINUED, 0)]["run_dir"] == str(cont0)
    waits = entries[(CONTINUED, 1)]
    assert waits["state"] == "waits" and waits["text"] == f"waits for {SUP}, seed 1"
    assert entries[(MRF, 0)]["state"] == "derived" and entries[(MRF, 0)]["run_dir"] == str(sup0)
    assert entries[(MRF, 0)]["text"] == f"derived from {SUP}, seed 0: done (mrf post-processing done)"
    assert entries[(MRF, 1)]["text"].startswith(f"derived from {SUP}, seed 1: running: pid {os.getpid()}")
    assert status_summary(list(entries.values())) == {
        "done": 1, "running": 1, "partial": 1, "pending": 1, "total": 4, "seconds": 54.0, "hours": 0.01,
        "shared": 0, "derived": 2}  # fmt: skip
    text = format_status(list(entries.values()))
    assert text.splitlines()[-1] == ("1/4 runs done, 1 running, 1 partial, 1 pending; 0.01 h spent on the started "
                                     "runs; about 0.0 h of wall time to go at the done runs' mean per row "
                                     "(2 unfinished runs in rows with none done counted at the mean of all done "
                                     "runs; 2 post-processing entries follow their runs)")  # fmt: skip
    assert_no_metric(text)


def test_a_row_that_starts_from_a_row_without_that_seed_is_a_config_error(tmp_path):
    from semiseg.errors import ConfigError

    rows = [Row("supervised", "20 px", seeds=[1]), Row("continued", "20 px", init_from=SUP)]  # no seed-0 run
    table = simple_table(write_recipe(tmp_path / "tiny.yaml"), "tiny-status-bad", rows, quick_seeds=[0, 1])
    with registered(table), pytest.raises(ConfigError, match="starts from 'supervised \\| 20 px'.*seed 0"):
        table_status("tiny-status-bad", quick=True, work_dir=tmp_path / "work", source=SOURCE)


def test_tuned_rows_depend_on_the_tuning_until_its_trials_are_finished(tmp_path):
    table = tiny_table(write_recipe(tmp_path / "tiny.yaml"), name="tiny-status-tv")
    work = tmp_path / "work"
    cache = RunCache(work / "cache", SOURCE, COMMIT)
    tv = next(r for r in table.rows if r.key == TV)
    trials = [
        cache.run_dir(row_config(table, tv, 0, True, {"method.tv_weight": w}, USER)) for w in TV_WEIGHTS
    ]
    fabricate(trials[0], finished=True, seconds=10.0, epochs=1)
    kwargs = dict(quick=True, work_dir=work, overrides=USER, source=SOURCE)
    with registered(table):
        entries = table_status("tiny-status-tv", **kwargs)
        assert [(e["row"], e["state"]) for e in entries[:2]] == [
            (f"tuning {TV} {{'method.tv_weight': {TV_WEIGHTS[0]}}}", "done"),
            (f"tuning {TV} {{'method.tv_weight': {TV_WEIGHTS[1]}}}", "pending")]  # fmt: skip
        tuned = [e for e in entries if e["row"] == TV]
        assert [e["state"] for e in tuned] == ["tuning", "tuning"] and tuned[0]["run_dir"] is None
        assert tuned[0]["text"] == f"depends on the tuning of {TV}"
        assert status_summary(entries)["pending"] == 5  # a trial, 2 supervised runs, 2 tuned runs
        # the second trial finishes with the better validation value: the tuned runs are looked up
        fabricate(trials[1], finished=True, seconds=10.0, epochs=1)
        record = json.loads((trials[1] / RECORD).read_text())
        record["result"]["best"]["value"] = VAL_VALUE / 2  # pixel error: lower is better
        (trials[1] / RECORD).write_text(json.dumps(record))
        entries = table_status("tiny-status-tv", **kwargs)
    tuned = [e for e in entries if e["row"] == TV]
    assert tuned[0]["state"] == "done" and tuned[0]["run_dir"] == str(trials[1])  # seed 0 is the trial's run
    assert tuned[1]["state"] == "pending"
    summary = status_summary(entries)
    assert (summary["done"], summary["total"], summary["shared"]) == (2, 5, 1)  # the trial counts once
    assert "1 entries share a run listed above" in format_status(entries).splitlines()[-1]


# ---------------------------------------------------------------------------------- against the runner
def fake_train(cfg, **kwargs) -> dict:
    """Training as the cache sees it (a result and a best.pt), without the training: the validation
    error falls with the TV weight, so the tuning picks the last one."""
    (Path(kwargs["output_dir"]) / "best.pt").write_bytes(b"")
    val = 0.3 - cfg.method.get("tv_weight", 0.0) / 10
    return {"test": {"pixel_error": 0.25}, "best": {"value": val, "epoch": 1}, "images_per_second": 1.0,
            "labeled": 6}  # fmt: skip


def test_the_status_finds_every_run_where_the_runner_put_it(tmp_path, monkeypatch):
    """The runner on a tiny table with a tuning, tuned rows, an init_from row and post-processing
    (training and the MRF score stubbed): every run is done, in the folder the runner's index lists,
    and the tuned rows take the trial the runner chose."""
    table = tiny_table(write_recipe(tmp_path / "tiny.yaml"), name="tiny-status-real")
    table.rows.insert(1, Row("continued", "20 px", init_from=SUP))
    work = tmp_path / "work"
    with registered(table):
        before = table_status("tiny-status-real", quick=True, work_dir=work, overrides=USER, source=SOURCE)
        with pytest.MonkeyPatch.context() as mp:
            spy = Spy(mp, train=fake_train)
            mp.setattr(runner, "_postprocessed", lambda ctx, run_dir: (0.5, {"mrf_weight": 1.0}))
            results = run_table(
                "tiny-status-real", quick=True, results_dir=tmp_path / "r", work_dir=work, overrides=USER
            )
        monkeypatch.setattr(provenance, "source_hash", lambda: SOURCE)  # as the stubbed runner recorded
        after = table_status("tiny-status-real", quick=True, work_dir=work, overrides=USER)
    assert {e["state"] for e in before} == {"pending", "waits", "tuning", "derived"}
    index = json.loads((work / "tiny-status-real" / "runs.json").read_text())
    rows = {
        f"{e['row']} | seed {e['seed']}": e["run_dir"] for e in after if not e["row"].startswith("tuning")
    }
    assert rows == index
    trials = [e for e in after if e["row"].startswith("tuning")]
    assert [e["run_dir"] for e in trials] == [t["run_dir"] for t in results["provenance"]["tuning"]["trials"]]
    assert results["provenance"]["tuning"]["chosen"] == {"method.tv_weight": TV_WEIGHTS[-1]}
    assert rows[f"{TV} | seed 0"] == trials[-1]["run_dir"]  # the chosen trial is the tuned row's seed 0
    assert all(e["state"] == "done" for e in after if e["state"] != "derived")
    assert len(spy.trained) == 7  # 2 trials, 2 supervised, 2 continued, the tuned row's seed 1
    summary = status_summary(after)
    assert (summary["done"], summary["total"], summary["shared"], summary["derived"]) == (7, 7, 1, 2)


# ---------------------------------------------------------------------------------- command line
def test_the_command_prints_the_status_and_exits_0(tmp_path, monkeypatch, capsys):
    table = held_table(tmp_path, "tiny-status-cli")
    work = tmp_path / "work"
    sup0 = RunCache(work / "cache", SOURCE, COMMIT).run_dir(row_config(table, table.rows[0], 0, quick=True))
    fabricate(sup0, finished=True, seconds=7200.0, epochs=1)
    monkeypatch.setattr(provenance, "source_hash", lambda: SOURCE)
    monkeypatch.setattr(
        "semiseg.bench.run_table", lambda *a, **k: pytest.fail("--status must not run the table")
    )
    with registered(table):
        assert main(["bench", "tiny-status-cli", "--quick", "--work-dir", str(work), "--status"]) == 0
    out = capsys.readouterr().out
    assert (
        out.splitlines()[0] == f"tiny-status-cli (quick): runs of training code {SOURCE} in {work / 'cache'}"
    )
    rows = [line.split("  ") for line in out.splitlines()]
    assert any(r[0] == SUP and "done" in r for r in rows) and f"waits for {SUP}, seed 1" in out
    assert out.splitlines()[-1].startswith("1/4 runs done, 0 running, 0 partial, 3 pending; 2.00 h spent")
    assert_no_metric(out)
    assert not (tmp_path / "r").exists() and sorted(p.name for p in (work / "cache").iterdir()) == [sup0.name]


def test_an_unknown_table_is_a_one_line_error(tmp_path, capsys):
    assert main(["bench", "no-such-table", "--status", "--work-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("semiseg bench: error: ") and "no-such-table" in err


def test_status_examples():
    result = doctest.testmod(bench_status, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0
