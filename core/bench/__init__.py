"""Workload benchmarks: ``proxistore bench`` (one config) and ``proxistore ab`` (two, alternately).

    from proxistore.bench import load_workload, run, summarise
    wl = load_workload("config/workloads/incident.toml")     # validated like a config
    record = run(wl, "my.toml")                               # a fresh temp dir, then close or crash + reopen
    metrics = summarise(record)                               # one flat dict of named numbers

Modules: :mod:`.workload` (declared keys, loading, validation), :mod:`.data` (synthetic and Parquet
data, exact ground truth), :mod:`.plan` (who writes what), :mod:`.runner` (one run),
:mod:`.report` (metrics and tables), :mod:`.ab` (alternating runs and the verdict rule),
:mod:`.plot` (matplotlib, optional).
"""
from __future__ import annotations

from .ab import RULE, AbResult, Comparison, compare, run_ab
from .report import METRICS, bench_tables, flush_breakdown, format_metric, summarise
from .runner import BenchError, prepare, run
from .workload import DatasetMissing, Workload, WorkloadError, find_workload, load_workload, workload_from_dict

__all__ = ["load_workload", "workload_from_dict", "find_workload", "Workload", "WorkloadError", "DatasetMissing",
           "prepare", "run", "BenchError", "summarise", "METRICS", "bench_tables", "flush_breakdown",
           "format_metric", "run_ab", "compare", "AbResult", "Comparison", "RULE"]
