"""Benchmark tables: protocols (:mod:`.tables`), the runner and provenance (:mod:`.runner`)."""

from semiseg.bench.runner import Row, Table, Tuning, run_table
from semiseg.bench.tables import TABLES

__all__ = ["TABLES", "Row", "Table", "Tuning", "run_table"]
