"""``proxistore bench`` and ``proxistore ab``: run a workload file and report what it measured.

Why: the incident this project answers was a threshold nobody could see being ignored. ``bench``
runs a workload (``config/workloads/*.toml``) on a fresh temporary directory with one config and
reports throughput, acknowledged-write latency, stalls, flushes by policy with their phase
timings, memtable and WAL peaks, segments, search latency during and after ingest, recall@k
against exact results, the reopen after a close or a SIGKILL, and disk bytes. ``ab`` runs two
configs alternately and says, metric by metric, whether they differ by more than the run-to-run
spread (the rule is :data:`proxistore.bench.RULE`). Neither touches ``--data``.
"""
from __future__ import annotations

import argparse
import os
from typing import Any, Dict, List, Mapping, Optional

from proxistore.config import load_config

from .common import UsageError
from .output import Output, fmt_seconds

__all__ = ["cmd_bench", "cmd_ab", "add_bench_commands"]


def add_bench_commands(command: Any, handler: Any) -> None:
    """Declare ``bench`` and ``ab`` with ``command(name, help, handler)`` from :mod:`.main`."""
    workload_help = ("a workload .toml file, or the name of one in config/workloads/ (incident, steady, sustained, "
                     "bulk, real), looked up in ./config/workloads and then in the checkout proxistore runs from")
    p = command("bench", "run a workload on a fresh directory with --config; report throughput, latency, flushes, "
                "recall, reopen", handler("bench_cmd", "cmd_bench"))
    p.add_argument("--workload", required=True, metavar="W", help=workload_help)
    p.add_argument("--plot", metavar="FILE.png", help="draw memtable bytes, WAL bytes, write latency and segments "
                   "over time, each flush marked by policy (needs matplotlib: the 'plot' extra)")
    p.add_argument("--workdir", metavar="DIR", help="make the fresh data directory under DIR (default: the "
                   "system temp dir); it is removed afterwards")
    p = command("ab", "run configs A and B alternately on a workload; medians, B/A and whether they differ "
                "beyond the run-to-run spread", handler("bench_cmd", "cmd_ab"))
    p.add_argument("config_a", metavar="A.toml", help="config A ('default' = the built-in defaults)")
    p.add_argument("config_b", metavar="B.toml", help="config B ('default' = the built-in defaults)")
    p.add_argument("--workload", required=True, metavar="W", help=workload_help)
    p.add_argument("--repeat", type=int, default=3, metavar="N", help="runs of each config, alternating "
                   "A B A B ... (default 3, at least 2)")
    p.add_argument("--plot", metavar="FILE.png", help="A and B side by side: the run of each with the median "
                   "write throughput (needs matplotlib)")
    p.add_argument("--workdir", metavar="DIR", help="make the fresh data directories under DIR")


def _prepare_common(args: argparse.Namespace) -> Any:
    """The workload (validated), after checking --plot and --workdir; errors exit 2."""
    from proxistore.bench import load_workload

    if args.plot:
        from proxistore.bench.plot import PlotUnavailable, require
        try:
            require()
        except PlotUnavailable as exc:
            raise UsageError(str(exc)) from None
        parent = os.path.dirname(os.path.abspath(args.plot))
        if not os.path.isdir(parent):
            raise UsageError(f"--plot {args.plot}: directory {parent} does not exist")
    if args.workdir and not os.path.isdir(args.workdir):
        raise UsageError(f"--workdir {args.workdir}: not a directory")
    return load_workload(args.workload)


def _describe(wl: Any, data: Any, plan: Any) -> str:
    d, i, q = wl.data, wl.ingest, wl.queries
    src = "synthetic clustered" if d["source"] == "synthetic" else d["path"]
    qs = {"holdout": f"{len(data.queries)} held-out queries", "parquet": f"{len(data.queries)} queries from "
          f"{q['path']}", "none": "no queries"}[q["source"]]
    return (f"workload {wl.name} ({wl.source}): {len(data.ids):,} x {data.dim} {d['metric']} vectors ({src}); "
            f"{plan.batches:,} batches of <= {i['batch_size']} by {i['writers']} writer(s) "
            f"({plan.rows_by_kind.get('upsert', 0):,} rows upserted, {plan.rows_by_kind.get('delete', 0):,} deleted); "
            f"{qs}, k={q['k']}" + (f", filter {wl.filter}" if wl.filter else "")
            + (f", {q['rate_during_ingest']:g}/s during ingest" if q["rate_during_ingest"] else "")
            + f"; final {wl.finish['final']}, then {'SIGKILL' if wl.finish['crash'] else 'close'} and reopen")


def _timeline(record: Mapping[str, Any]) -> Dict[str, Any]:
    ing = record["ingest"]
    w = ing["writes"]
    return {"samples": ing["samples"],
            "writes": {"t": w["t"], "latency": w["latency"], "kind": w["kind"], "memtable_bytes": w["memtable"]},
            "write_end": ing["write_end"],
            "flushes": [{k: f[k] for k in ("start", "policy", "seconds", "rows")} for f in ing["flushes"]]}


def cmd_bench(args: argparse.Namespace, out: Output) -> int:
    """Run one workload with ``--config`` and print its report."""
    from proxistore.bench import bench_tables, flush_breakdown, format_metric, prepare, run, summarise

    wl = _prepare_common(args)
    load_config(args.config)
    data, plan = prepare(wl)
    about = _describe(wl, data, plan)
    out.note(about)
    with out.progress(f"bench {wl.name}", plan.rows) as advance:
        record = run(wl, args.config, workdir=args.workdir, progress=advance, prepared=(data, plan))
    metrics = summarise(record)
    flushes = flush_breakdown(record)
    result = {"workload": wl.to_dict(), "config": record["config"], "about": about, "metrics": metrics,
              "flushes_by_policy": flushes, "errors": record["ingest"]["errors"], "timeline": _timeline(record)}
    if args.plot:
        from proxistore.bench.plot import plot_run
        result["plot"] = plot_run(record, args.plot)

    def render() -> None:
        out.heading(f"proxistore bench: workload {wl.name}, config {record['config']}")
        for title, rows in bench_tables(metrics):
            out.table(["metric", "value", "what it measures"], rows, title=title, right=("value",), nowrap=("metric",))
        out.table(["policy", "flushes", "writes", "rows (median)", "seconds (median)", "phases (median)"],
                  [[f["policy"], f["count"], f["writes"], format_metric("flush.rows_p50", f["rows_p50"]),
                    fmt_seconds(f["seconds_p50"]),
                    ", ".join(f"{n} {fmt_seconds(s)}" for n, s in f["phases_p50"].items())] for f in flushes],
                  title="flushes by policy", right=("flushes", "writes", "rows (median)", "seconds (median)"),
                  empty="no flushes")
        if args.plot:
            out.print(f"plot written to {args.plot}")

    out.emit(result, render)
    _warn(out, metrics, record["ingest"]["errors"])
    return 0


def _warn(out: Output, metrics: Mapping[str, Any], errors: List[str]) -> None:
    for e in errors[:5]:
        out.note(f"warning: {e}")
    if metrics.get("rows.missing"):
        out.note(f"warning: {metrics['rows.missing']:,} acknowledged live rows were not back after the reopen")


def _config_arg(value: str) -> Optional[str]:
    if value == "default" and not os.path.exists(value):
        return None
    load_config(value)
    return value


def cmd_ab(args: argparse.Namespace, out: Output) -> int:
    """Run A and B alternately ``--repeat`` times each and print the comparison."""
    from proxistore.bench import format_metric, prepare, run_ab

    if args.repeat < 2:
        raise UsageError("--repeat must be at least 2: the verdict compares the difference with the spread "
                         "between runs of the same config")
    if args.config:
        raise UsageError("ab takes its two configs as A.toml B.toml; --config does not apply")
    wl = _prepare_common(args)
    config_a, config_b = _config_arg(args.config_a), _config_arg(args.config_b)
    data, plan = prepare(wl)
    out.note(_describe(wl, data, plan))
    out.note(f"A = {args.config_a}, B = {args.config_b}; {args.repeat} runs each, in the order A B A B ...")

    def note(side: str, i: int, m: Mapping[str, Any]) -> None:
        out.note(f"{side} run {i + 1}/{args.repeat}: {format_metric('write.rows_per_s', m['write.rows_per_s'])} "
                 f"acknowledged rows, write p99 {fmt_seconds(m['write.latency_p99_s'])}, "
                 f"{m['flush.count']} flushes, recall {format_metric('recall.after_ingest', m['recall.after_ingest'])}")

    with out.progress(f"ab {wl.name}: {2 * args.repeat} runs", plan.rows * 2 * args.repeat) as advance:
        result = run_ab(wl, config_a, config_b, args.repeat, workdir=args.workdir, progress=advance, on_run=note)
    result.config_a, result.config_b = args.config_a, args.config_b
    payload = result.to_dict()
    if args.plot:
        from proxistore.bench.plot import plot_ab
        payload["plot"] = plot_ab(result, args.plot)

    def cell(name: str, side: Mapping[str, Any]) -> str:
        if side["median"] is None:
            return "—"
        return (f"{format_metric(name, side['median'])} ({format_metric(name, side['min'])}–"
                f"{format_metric(name, side['max'])})")

    def render() -> None:
        out.heading(f"proxistore ab: workload {wl.name}, A = {args.config_a}, B = {args.config_b}, "
                    f"{args.repeat} runs each (A B A B ...)")
        rows = [[c["name"], cell(c["name"], c["a"]), cell(c["name"], c["b"]),
                 "—" if c["ratio"] is None else f"{c['ratio']:.3f}", c["verdict"]] for c in payload["metrics"]]
        out.table(["metric", "A median (min–max)", "B median (min–max)", "B/A", "verdict"], rows,
                  right=("B/A",), nowrap=("metric",))
        out.print(f"rule: {payload['rule']}")
        differs = payload["differs"]
        out.print(f"{len(differs)} of {len(rows)} metrics differ" + (f": {', '.join(differs)}" if differs else ""))
        if args.plot:
            out.print(f"plot written to {args.plot}")

    out.emit(payload, render)
    return 0
