"""Experiments over many runs: sweeps of settings and seeds (``vitlab sweep``), and comparisons (``vitlab compare``)."""

from vitlab.experiments.spec import SweepSpec
from vitlab.experiments.summary import compare_runs, load_run, write_results
from vitlab.experiments.sweep import SweepConflictError, plan_sweep, run_sweep

__all__ = ["SweepConflictError", "SweepSpec", "compare_runs", "load_run", "plan_sweep", "run_sweep", "write_results"]
