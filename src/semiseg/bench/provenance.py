"""Where a result comes from: the git commit, the hash of the code that trained it, the hardware.

:func:`source_hash` identifies the code a training run executes: every ``.py`` file of the
``semiseg`` package except the ones training never runs (:data:`NOT_TRAINING`: the benchmark
harness, the command line, the demo), read as syntax trees without docstrings (:func:`code_text`). A
commit that touches only those, comments, docstrings, the docs, the tests or the benchmark scripts
keeps the hash, and so keeps the run cache (:mod:`semiseg.bench.cache`) valid.
"""

from __future__ import annotations

import ast
import hashlib
import os
import platform
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

#: the package folder (``src/semiseg``)
PACKAGE_ROOT = Path(__file__).resolve().parent.parent

#: paths relative to the package that a training run does not execute (folders end with "/")
NOT_TRAINING = ("bench/", "cli.py", "demo.py")


def training_sources(root: str | Path = PACKAGE_ROOT) -> list[Path]:
    """The ``.py`` files under ``root`` that training runs, sorted by their path relative to ``root``.

    Examples:
        >>> any(p.name == "trainer.py" for p in training_sources())
        True
        >>> any("bench" in p.parts for p in training_sources())
        False
    """
    root = Path(root)
    files = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).as_posix()
        if any(rel.startswith(x) if x.endswith("/") else rel == x for x in NOT_TRAINING):
            continue
        files.append(path)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def code_text(data: bytes) -> bytes:
    r"""What the hash reads of a source file: its syntax tree without docstrings and other bare string
    statements (``ast.dump``, no line numbers), so comments, docstrings and formatting do not count;
    the raw bytes when the file does not parse.

    Examples:
        >>> code_text(b"def f():\n    'Doc.'\n    return 1  # one\n") == code_text(b"def f():\n    return 1\n")
        True
        >>> code_text(b"x = 1\n") == code_text(b"x = 2\n")
        False
    """
    try:
        tree = ast.parse(data)
    except (SyntaxError, ValueError):
        return data
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if not isinstance(body, list):
            continue
        kept = [
            s for s in body
            if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant) and isinstance(s.value.value, str))
        ]  # fmt: skip
        node.body = kept or [ast.Pass()]
    return ast.dump(tree).encode()


def source_hash(root: str | Path = PACKAGE_ROOT) -> str:
    """SHA-256 (hex, first 16 digits) over the relative paths and the :func:`code_text` of
    :func:`training_sources`.

    Renaming, adding or removing a training file changes it; so does any change of its code, but not
    of its comments, docstrings or formatting.
    """
    root = Path(root)
    h = hashlib.sha256()
    for path in training_sources(root):
        rel = path.relative_to(root).as_posix().encode()
        data = code_text(path.read_bytes())
        h.update(len(rel).to_bytes(8, "little") + rel + len(data).to_bytes(8, "little") + data)
    return h.hexdigest()[:16]


def load_training_code(root: str | Path = PACKAGE_ROOT) -> str:
    """Import every training module now and return the :func:`source_hash` of what was imported.

    A long table run then executes the code it records, even if the files change on disk while it
    runs (modules imported later would otherwise be read from the changed files). A module that
    fails to import (an optional dependency is missing) is left out; training cannot use it either.
    Raises ConfigError if the files changed while they were being imported.
    """
    import importlib

    from semiseg.errors import ConfigError

    root = Path(root)
    before = source_hash(root)
    for path in training_sources(root):
        parts = path.relative_to(root).with_suffix("").parts
        name = (
            ".".join(("semiseg", *parts[:-1])) if parts[-1] == "__init__" else ".".join(("semiseg", *parts))
        )
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001  (a missing optional dependency, or a module being edited)
            continue
    after = source_hash(root)
    if after != before:
        raise ConfigError(f"bench: the training code changed while it was being loaded ({before} → {after})")
    return after


#: set by ``benchmarks/campaign.sh`` for a pin ``<commit>+bench=<other>``: the checkout is ``<commit>``
#: with ``src/semiseg/bench`` (the table definitions and harness, outside the training code's hash)
#: taken from ``<other>``
BENCH_OVERLAY_ENV = "SEMISEG_BENCH_OVERLAY"


def git_commit() -> str:
    """Commit of the checkout semiseg runs from, else "unknown". ``+dirty`` with uncommitted changes;
    ``+bench@<other>`` when the only changes are ``src/semiseg/bench`` taken from commit ``<other>``
    (:data:`BENCH_OVERLAY_ENV`): the training code is the commit's, the table definitions the other's."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], capture_output=True, text=True, check=True, cwd=PACKAGE_ROOT
        ).stdout.rstrip("\n")

    try:
        head = git("rev-parse", "HEAD")
        changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()]
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    if not changed:
        return head
    overlay = os.environ.get(BENCH_OVERLAY_ENV)
    if overlay and all(path.startswith("src/semiseg/bench/") for path in changed):
        return f"{head}+bench@{overlay}"
    return head + "+dirty"


def hardware() -> dict[str, Any]:
    """CPU model, core count, torch threads, GPU name, Python / torch versions and the platform."""
    import torch

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def provenance(**extra: Any) -> dict[str, Any]:
    """The common provenance block of a benchmark result: commit, source hash, hardware + ``extra``."""
    return {"git_commit": git_commit(), "source_hash": source_hash(), "hardware": hardware(), **extra}


def provenance_line(p: dict[str, Any]) -> str:
    """The closing Markdown line of a benchmark script's results: commit, source hash, wall time and
    hardware of a :func:`provenance` block that carries ``wall_seconds``."""
    hw = p["hardware"]
    return (
        f"Commit `{p['git_commit']}`; source hash `{p['source_hash']}`; wall time {p['wall_seconds']} s; "
        f"hardware: {hw['cpu']} ({hw['cores']} cores), torch {hw['torch']}."
    )


def write_result(
    out: str | Path, result: dict[str, Any], render: Callable[[dict[str, Any], str], str]
) -> str:
    """Write a benchmark script's ``result`` as ``<out>.json`` and its Markdown ``render(result,
    provenance line)`` as ``<out>.md`` (``result["provenance"]`` carries ``wall_seconds``); returns the
    Markdown."""
    import json

    from semiseg.io import atomic_write_text

    out = Path(out)
    text = render(result, provenance_line(result["provenance"]))
    atomic_write_text(out.with_suffix(".json"), json.dumps(result, indent=1) + "\n")
    atomic_write_text(out.with_suffix(".md"), text)
    return text
