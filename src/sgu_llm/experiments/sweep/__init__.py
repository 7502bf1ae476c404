"""`sgu-llm sweep SWEEP.yaml`: methods x points (learning rates x grids) x model seeds x splits on the
embedded benchmark - the configuration (`config`), the runs (`runner`) and the records' aggregation
(`records`); the tables are rendered by `sgu_llm.report.tables`."""

from __future__ import annotations

from sgu_llm.experiments.sweep.config import SweepConfig, load_sweep
from sgu_llm.experiments.sweep.records import aggregate, collect_records, complete_seeds, pareto_front
from sgu_llm.experiments.sweep.runner import Sweep, main, write_results

__all__ = [
    "Sweep",
    "SweepConfig",
    "aggregate",
    "collect_records",
    "complete_seeds",
    "load_sweep",
    "main",
    "pareto_front",
    "write_results",
]
