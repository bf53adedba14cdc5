"""Benchmark tables and their harness.

- :mod:`.spec`: what a table is (:class:`Table`, :class:`Row`, :class:`Tuning`) and the table
  registry (:data:`TABLES`, :func:`register_table`); :mod:`.tables`: the built-in tables.
- :mod:`.runner`: trains a table's rows over their seeds through the run cache (:mod:`.cache`);
  :mod:`.lock`: the per-run lock files that let several processes share a table's runs.
- :mod:`.provenance`: git commit, training-code hash, hardware; :mod:`.timing`: throughput and
  interleaved step-time ratios; :mod:`.stats`: row statistics; :mod:`.render`: Markdown;
  :mod:`.figures`: result figures.
"""

from semiseg.bench.lock import RunBusy
from semiseg.bench.runner import TablePending, run_table
from semiseg.bench.spec import TABLES, Row, Table, Tuning, get_table, register_table, table_names

__all__ = [
    "TABLES",
    "Row",
    "RunBusy",
    "Table",
    "TablePending",
    "Tuning",
    "get_table",
    "register_table",
    "run_table",
    "table_names",
]
