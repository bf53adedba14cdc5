"""What a benchmark table is: its rows, seeds, tuning grid, and the catalogue of tables.

A table is a function returning a :class:`Table`, registered by name::

    @register_table("supervised-horse")
    def supervised_horse() -> Table:
        return Table(name="supervised-horse", ...)

The built-in tables live in :mod:`semiseg.bench.tables`; :data:`TABLES` imports it on the first
look-up, and a plugin module registers further tables the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from semiseg.errors import ConfigError
from semiseg.registry import Registry

if TYPE_CHECKING:
    from semiseg.bench.runner import BenchContext


@dataclass
class Row:
    """One line of a table.

    Attributes:
        method: Shown in the table.
        setting: Shown in the table; ``method | setting`` must be unique.
        overrides: Dotted config overrides on top of the table's recipe.
        paper: The paper's number for this line, or None.
        tuned: Apply the overrides chosen by the table's :class:`Tuning`.
        postprocess: No training: "mrf" post-processes each seed's checkpoint of row ``reuse``;
            "ensemble" averages the class probabilities of all of row ``reuse``'s runs (one value,
            a single run in the statistics).
        reuse: ``method | setting`` of the trained row to post-process.
        seeds: Seeds of this row (default: the table's).
        quick_seeds: Seeds of this row in quick mode (default: ``seeds``, else the table's quick seeds).
        quick_overrides: Further overrides in quick mode only (e.g. a shorter schedule).
        init_from: ``method | setting`` of an earlier trained row: each seed starts from that row's
            same-seed ``best.pt`` (``train.init``).
        recipe: Built-in recipe of this row (default: the table's), e.g. each method's own recipe
            in a table comparing methods.
        metric: Test metric key of this row (default: the table's), for tables that mix tasks (e.g.
            moons accuracy and MNIST error); ``metric_label`` its label.
        draw: Pin the split's draw (``data.split.draw``) while the seeds vary ``train.seed`` only,
            e.g. the members of an ensemble trained on one labeled subset. None: draw = seed.
        full_only: A row of full mode only (e.g. network sizes a CPU cannot afford in quick mode).
    """

    method: str
    setting: str
    overrides: dict[str, Any] = field(default_factory=dict)
    paper: float | None = None
    tuned: bool = False
    postprocess: str | None = None
    reuse: str | None = None
    seeds: list[int] | None = None
    quick_seeds: list[int] | None = None
    init_from: str | None = None
    quick_overrides: dict[str, Any] = field(default_factory=dict)  #: on top of ``overrides`` in quick mode
    recipe: str | None = None
    metric: str | None = None
    metric_label: str | None = None
    draw: int | None = None
    full_only: bool = False

    @property
    def key(self) -> str:
        return f"{self.method} | {self.setting}"

    def seeds_for(self, table_seeds: list[int], quick: bool) -> list[int]:
        """The seeds this row runs among ``table_seeds`` (the first one if none of its own is there)."""
        wanted = (self.quick_seeds if quick and self.quick_seeds else None) or self.seeds or table_seeds
        return [s for s in wanted if s in table_seeds] or table_seeds[:1]


@dataclass
class Tuning:
    """Grid search on the validation split: the best combination is applied to ``tuned`` rows."""

    row: str  #: key of the row whose configuration is tuned
    grid: dict[str, list[Any]]  #: dotted key → candidate values (all combinations are tried)
    seed: int = 0


@dataclass
class Table:
    name: str
    title: str
    recipe: (
        str  #: built-in recipe (src/semiseg/configs/<recipe>.yaml) a row starts from unless it names its own
    )
    rows: list[Row]
    metric: str  #: key of the test metrics, e.g. "pixel_error" or "dice/mean"
    metric_label: str
    scale: float = 100.0  #: reported as percent
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    quick_seeds: list[int] = field(default_factory=lambda: [0, 1])
    notes: str = ""
    tuning: Tuning | None = None
    #: called with the finished :class:`BenchContext`; returns extra provenance (figures, timings)
    extras: Callable[[BenchContext], dict[str, Any]] | None = None
    #: which model a run's test value is: "best" (``best.pt``, selected on validation) or "last" (the
    #: model as training left it; the recipes must set ``train.eval_last``), e.g. for methods that do
    #: not select on validation (SSLDEC, with 10 validation digits)
    score: str = "best"

    def __post_init__(self) -> None:
        keys = [r.key for r in self.rows]
        where = f"bench {self.name}"
        if len(set(keys)) != len(keys):
            dup = next(k for k in keys if keys.count(k) > 1)
            raise ConfigError(f"{where}: row '{dup}' appears twice (method | setting must be unique)")
        named = [(r.key, "reuse", r.reuse) for r in self.rows] + [
            (r.key, "init_from", r.init_from) for r in self.rows
        ]
        if self.tuning is not None:
            named.append(("tuning", "row", self.tuning.row))
        for key, field_name, target in named:
            if target is not None and target not in keys:
                raise ConfigError(f"{where}: {key}: {field_name} '{target}' is not a row of the table")

    def rows_for(self, quick: bool) -> list[Row]:
        """The rows run in quick or full mode."""
        return [r for r in self.rows if not (quick and r.full_only)]

    def metric_of(self, row: Row) -> tuple[str, str]:
        """The test metric key and label of ``row``."""
        return row.metric or self.metric, row.metric_label or self.metric_label


# ------------------------------------------------------------------------------------ catalogue
#: table name → function building the :class:`Table`; the built-in tables register themselves in
#: :mod:`semiseg.bench.tables` (imported on the first look-up), add-ons through the entry-point group
#: ``semiseg.tables``
TABLES: Registry[Callable[[], Table]] = Registry("table", package="semiseg.bench.tables")


def register_table(name: str) -> Callable[[Callable[[], Table]], Callable[[], Table]]:
    """Decorator: register a function returning a :class:`Table` under ``name``."""
    return TABLES.register(name)


def table_names() -> list[str]:
    """Names of all registered tables, sorted."""
    return TABLES.names()


def get_table(name: str) -> Table:
    """The :class:`Table` registered as ``name``; a ConfigError naming the known tables otherwise."""
    return TABLES.get(name, where="bench")()
