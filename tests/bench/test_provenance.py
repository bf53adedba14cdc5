"""The training-code hash that keys the run cache: which files it covers and which edits change it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from semiseg.bench import provenance
from semiseg.bench.provenance import NOT_TRAINING, PACKAGE_ROOT, source_hash, training_sources


@pytest.fixture
def package(tmp_path) -> Path:
    """A copy of the package's .py files (what the hash reads)."""
    root = tmp_path / "semiseg"
    for path in PACKAGE_ROOT.rglob("*.py"):
        target = root / path.relative_to(PACKAGE_ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    return root


def _append(path: Path, text: str = "\n# edited\n") -> None:
    path.write_text(path.read_text() + text)


def test_the_hash_covers_the_training_code_only():
    rel = {p.relative_to(PACKAGE_ROOT).as_posix() for p in training_sources()}
    assert {"engine/trainer.py", "losses/tv.py", "methods/supervised.py", "config.py", "metrics.py"} <= rel
    assert not any(r.startswith("bench/") for r in rel)
    assert "cli.py" not in rel and "demo.py" not in rel
    assert NOT_TRAINING == ("bench/", "cli.py", "demo.py")


def test_the_hash_of_the_copy_is_the_packages(package):
    assert source_hash(package) == source_hash() and len(source_hash()) == 16


@pytest.mark.parametrize("edited", ["bench/runner.py", "bench/tables.py", "cli.py", "demo.py"])
def test_editing_the_harness_keeps_the_hash(package, edited):
    before = source_hash(package)
    _append(package / edited)
    (package / "bench" / "new_table.py").write_text("X = 1\n")
    assert source_hash(package) == before


@pytest.mark.parametrize("edited", ["losses/tv.py", "engine/trainer.py", "methods/base.py", "config.py"])
def test_editing_training_code_changes_the_hash(package, edited):
    before = source_hash(package)
    _append(package / edited, "\n_EDITED = 1\n")
    assert source_hash(package) != before


@pytest.mark.parametrize("edited", ["losses/tv.py", "methods/fixmatch.py"])
def test_comments_docstrings_and_formatting_keep_the_hash(package, edited):
    before = source_hash(package)
    path = package / edited
    text = path.read_text()
    first = text.index('"""', text.index('"""') + 3) + 3  # the end of the module docstring
    path.write_text('"""Another docstring."""' + text[first:] + '\n# a comment\n\n\n"""A bare string."""\n')
    assert source_hash(package) == before


def test_adding_renaming_or_removing_a_training_file_changes_the_hash(package):
    before = source_hash(package)
    (package / "losses" / "extra.py").write_text("")
    added = source_hash(package)
    (package / "losses" / "extra.py").rename(package / "losses" / "other.py")
    renamed = source_hash(package)
    (package / "losses" / "other.py").unlink()
    assert len({before, added, renamed}) == 3 and source_hash(package) == before


def test_non_python_files_do_not_count(package):
    before = source_hash(package)
    (package / "configs").mkdir(exist_ok=True)
    (package / "configs" / "new.yaml").write_text("a: 1\n")  # recipes reach a run through its config
    assert source_hash(package) == before


def test_load_training_code_returns_the_hash_of_the_imported_code():
    assert provenance.load_training_code() == source_hash()


def test_the_commit_names_a_bench_overlay_and_nothing_else(tmp_path, monkeypatch):
    """A campaign pin `<commit>+bench=<other>` changes only src/semiseg/bench: the commit is recorded
    as `<head>+bench@<other>`; a change anywhere else is `+dirty`, overlay or not."""
    import subprocess

    repo = tmp_path / "repo"
    package = repo / "src" / "semiseg"
    for rel in ("bench/tables.py", "engine/trainer.py"):
        (package / rel).parent.mkdir(parents=True, exist_ok=True)
        (package / rel).write_text("x = 1\n")

    def git(*args):
        return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo,
                              capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip

    git("init", "-q")
    git("add", ".")
    git("commit", "-qm", "start")
    head = git("rev-parse", "HEAD")
    monkeypatch.setattr(provenance, "PACKAGE_ROOT", package)
    monkeypatch.delenv(provenance.BENCH_OVERLAY_ENV, raising=False)
    assert provenance.git_commit() == head
    (package / "bench" / "tables.py").write_text("x = 2\n")
    assert provenance.git_commit() == f"{head}+dirty"
    monkeypatch.setenv(provenance.BENCH_OVERLAY_ENV, "abc1234")
    assert provenance.git_commit() == f"{head}+bench@abc1234"
    (package / "engine" / "trainer.py").write_text("x = 2\n")
    assert provenance.git_commit() == f"{head}+dirty"
