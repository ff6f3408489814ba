"""A run's record as one flat dict of named numbers, and the tables that show it.

Every name says what it measures and in which unit (``_s`` seconds, ``_bytes`` bytes,
``_per_s`` per second); :data:`METRICS` holds each fixed metric's help, unit and which direction
is better, which ``proxistore ab`` uses to say "B better" or "B worse". Names that depend on the
config (``flush.by_policy.<policy>``, ``flush.phase.<phase>.p50_s``) follow the same rules.
"""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

__all__ = ["Metric", "METRICS", "summarise", "metric_info", "format_metric", "flush_breakdown", "bench_tables",
           "percentile"]


@dataclass(frozen=True)
class Metric:
    """What a metric measures, its unit (seconds, bytes, per_s, count, ratio) and the better way."""

    help: str
    unit: str = "count"
    better: Optional[str] = None      # "higher", "lower" or None (informational)


METRICS: Dict[str, Metric] = {
    "write.rows": Metric("rows in acknowledged write calls (inserted + upserted + deleted ids)"),
    "write.batches": Metric("acknowledged write calls"),
    "write.inserted_rows": Metric("rows acknowledged by insert()"),
    "write.upserted_rows": Metric("rows acknowledged by upsert()"),
    "write.deleted_rows": Metric("ids acknowledged by delete()"),
    "write.errors": Metric("write calls that raised (the writer stopped there)", better="lower"),
    "write.seconds": Metric("first write call to last acknowledgement", "seconds", "lower"),
    "write.rows_per_s": Metric("acknowledged rows / write.seconds", "per_s", "higher"),
    "write.latency_p50_s": Metric("median acknowledged-write latency (call to return)", "seconds", "lower"),
    "write.latency_p99_s": Metric("99th percentile acknowledged-write latency", "seconds", "lower"),
    "write.latency_max_s": Metric("slowest acknowledged write", "seconds", "lower"),
    "stall.count": Metric("writes that waited for memtable memory (back-pressure)", better="lower"),
    "stall.seconds": Metric("total time writes waited for memory", "seconds", "lower"),
    "stall.timeouts": Metric("writes that gave up waiting (BackpressureTimeout)", better="lower"),
    "flush.count": Metric("flushes finished (observer hook), all policies: one per memtable a policy froze"),
    "flush.writes": Metric("segment writes of those flushes: fewer when queued memtables were written together"),
    "flush.failures": Metric("flushes that failed (and were retried)", better="lower"),
    "flush.seconds_p50": Metric("median flush duration as the core reports it (segment write to WAL "
                                "checkpoint; the freeze before it is the phase 'freeze')", "seconds", "lower"),
    "flush.seconds_max": Metric("longest flush", "seconds", "lower"),
    "flush.rows_p50": Metric("median rows per segment write"),
    "memtable.peak_bytes": Metric("largest total memtable bytes seen (sampler and after each ack)", "bytes"),
    "wal.peak_bytes": Metric("largest WAL bytes on disk seen by the sampler", "bytes"),
    "wal.end_bytes": Metric("WAL bytes at the end of the ingest phase", "bytes"),
    "segments.peak": Metric("most storage segments seen (sampler, end of ingest, end)"),
    "segments.end_of_ingest": Metric("storage segments right after the last acknowledgement"),
    "segments.final": Metric("storage segments at the end of the ingest phase"),
    "compactions": Metric("compactions done by the storage engine"),
    "search.ingest.count": Metric("searches completed while writers ran"),
    "search.ingest.per_s": Metric("searches per second achieved while writers ran", "per_s", "higher"),
    "search.ingest.p50_s": Metric("median search latency during ingest", "seconds", "lower"),
    "search.ingest.p99_s": Metric("99th percentile search latency during ingest", "seconds", "lower"),
    "search.after.count": Metric("searches after ingest (one per query)"),
    "search.after.per_s": Metric("searches per second after ingest, one at a time", "per_s", "higher"),
    "search.after.p50_s": Metric("median search latency after ingest", "seconds", "lower"),
    "search.after.p99_s": Metric("99th percentile search latency after ingest", "seconds", "lower"),
    "recall.after_ingest": Metric("recall@k after ingest vs exact results on the live rows", "ratio", "higher"),
    "recall.after_reopen": Metric("recall@k after the reopen (search_batch)", "ratio", "higher"),
    "final.seconds": Metric("the workload's final flush/compact call", "seconds", "lower"),
    "settle.seconds": Metric("wait for background flushes and compactions (wait_idle)", "seconds", "lower"),
    "close.seconds": Metric("db.close() (close runs only)", "seconds", "lower"),
    "reopen.seconds": Metric("proxistore.open() on the directory after the close or crash", "seconds", "lower"),
    "rows.expected": Metric("live rows the acknowledged writes leave"),
    "rows.after_reopen": Metric("count() after the reopen"),
    "rows.missing": Metric("rows.expected - rows.after_reopen (must be 0)", better="lower"),
    "disk.bytes": Metric("bytes of every file in the data directory at the end of the ingest phase",
                         "bytes", "lower"),
}


def metric_info(name: str) -> Metric:
    """The declaration of ``name``, including the config-dependent families."""
    if name in METRICS:
        return METRICS[name]
    if name.startswith("flush.by_policy."):
        return Metric(f"flushes triggered by policy {name.rsplit('.', 1)[1]!r}")
    if name.startswith("flush.phase."):
        return Metric(f"median time of flush phase {name.split('.')[2]!r}", "seconds", "lower")
    return Metric(name)


def percentile(values: Sequence[float], q: float) -> Optional[float]:
    """The q-th percentile (linear interpolation), or None for no values."""
    return float(np.percentile(np.asarray(values, dtype=float), q)) if len(values) else None


def summarise(run: Mapping[str, Any]) -> Dict[str, Optional[float]]:
    """The flat dict of named numbers for one run record (see :func:`proxistore.bench.runner.run`)."""
    ing, end = run["ingest"], run["end"]
    w = ing["writes"]
    rows_by_kind: Dict[str, int] = defaultdict(int)
    for kind, n in zip(w["kind"], w["rows"]):
        rows_by_kind[kind] += n
    total = sum(w["rows"])
    seconds = max(w["t"]) - min(w["start"]) if w["t"] else 0.0
    lat = w["latency"]
    m: Dict[str, Optional[float]] = {
        "write.rows": total, "write.batches": len(lat), "write.inserted_rows": rows_by_kind["insert"],
        "write.upserted_rows": rows_by_kind["upsert"], "write.deleted_rows": rows_by_kind["delete"],
        "write.errors": sum(1 for e in ing["errors"] if e.startswith("writer")), "write.seconds": seconds,
        "write.rows_per_s": total / seconds if seconds > 0 else None,
        "write.latency_p50_s": percentile(lat, 50), "write.latency_p99_s": percentile(lat, 99),
        "write.latency_max_s": max(lat) if lat else None,
    }
    bp = ing["end"]["backpressure"]
    m.update({"stall.count": bp["stalls"], "stall.seconds": bp["stall_seconds"], "stall.timeouts": bp["timeouts"]})
    flushes = [f for f in ing["flushes"] if not f["error"]]
    m["flush.count"] = sum(f["memtables"] for f in flushes)
    m["flush.writes"] = len(flushes)
    for policy in ing["policies"]:
        m[f"flush.by_policy.{policy}"] = 0
    for f in flushes:
        m[f"flush.by_policy.{f['policy']}"] = (m.get(f"flush.by_policy.{f['policy']}") or 0) + f["memtables"]
    m["flush.failures"] = len(ing["flushes"]) - len(flushes)
    m["flush.seconds_p50"] = percentile([f["seconds"] for f in flushes], 50)
    m["flush.seconds_max"] = max((f["seconds"] for f in flushes), default=None)
    m["flush.rows_p50"] = percentile([f["rows"] for f in flushes], 50)
    phases: Dict[str, List[float]] = defaultdict(list)
    for f in flushes:
        for name, sec in f["phases"].items():
            phases[name].append(sec)
    for name, secs in phases.items():
        m[f"flush.phase.{name}.p50_s"] = percentile(secs, 50)
    s = ing["samples"]
    segs = [x for x in s["segments"] if x is not None]
    m.update({
        "memtable.peak_bytes": max(list(s["memtable_bytes"]) + list(w["memtable"]), default=None),
        "wal.peak_bytes": max(s["wal_bytes"], default=None), "wal.end_bytes": ing["end"]["wal_bytes"],
        "segments.peak": max(segs + [x for x in (ing["end_of_ingest"]["segments"], ing["end"]["segments"])
                                     if x is not None], default=None), "segments.end_of_ingest": ing["end_of_ingest"]["segments"],
        "segments.final": ing["end"]["segments"], "compactions": ing["end"]["compactions"],
    })
    during = ing["search_during"]["latency"]
    m.update({"search.ingest.count": len(during),
              "search.ingest.per_s": len(during) / ing["write_end"] if ing["write_end"] > 0 else None,
              "search.ingest.p50_s": percentile(during, 50), "search.ingest.p99_s": percentile(during, 99)})
    after = ing["search_after"]
    m.update({"search.after.count": len(after["latency"]),
              "search.after.per_s": len(after["latency"]) / after["seconds"] if after["seconds"] > 0 else None,
              "search.after.p50_s": percentile(after["latency"], 50),
              "search.after.p99_s": percentile(after["latency"], 99),
              "recall.after_ingest": after["recall"], "recall.after_reopen": end.get("recall_after_reopen")})
    m.update({"final.seconds": ing["final_seconds"], "settle.seconds": ing["settle_seconds"],
              "close.seconds": end.get("close_seconds"), "reopen.seconds": end["reopen_seconds"],
              "rows.expected": ing["expected_rows"], "rows.after_reopen": end["rows_after_reopen"],
              "rows.missing": ing["expected_rows"] - end["rows_after_reopen"], "disk.bytes": ing["disk_bytes"]})
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in m.items()}


def flush_breakdown(run: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """Per policy: flushes (memtables), segment writes, median rows and seconds per write, and
    the median seconds of each phase."""
    by: Dict[str, List[Mapping[str, Any]]] = defaultdict(list)
    for f in run["ingest"]["flushes"]:
        if not f["error"]:
            by[f["policy"]].append(f)
    out = []
    for policy, fl in sorted(by.items()):
        names = list(dict.fromkeys(n for f in fl for n in f["phases"]))
        out.append({"policy": policy, "count": sum(f["memtables"] for f in fl), "writes": len(fl),
                    "rows_p50": percentile([f["rows"] for f in fl], 50),
                    "seconds_p50": percentile([f["seconds"] for f in fl], 50),
                    "phases_p50": {n: percentile([f["phases"][n] for f in fl if n in f["phases"]], 50)
                                   for n in names}})
    return out


def format_metric(name: str, value: Any) -> str:
    """``value`` in the unit of metric ``name``, for people."""
    from ..cli.output import fmt_bytes, fmt_seconds

    if value is None:
        return "—"
    unit = metric_info(name).unit
    if unit == "seconds":
        return fmt_seconds(value)
    if unit == "bytes":
        return fmt_bytes(value)
    if unit == "ratio":
        return f"{value:.4f}"
    if unit == "per_s":
        return f"{value:,.1f}/s"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"


#: The bench table's sections: a title and the metric-name prefixes it shows.
SECTIONS: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("writes", ("write.", "stall.")),
    ("flushes, memtable, WAL, segments", ("flush.", "memtable.", "wal.", "segments.", "compactions")),
    ("searches", ("search.", "recall.")),
    ("end: close or crash, reopen, disk", ("final.", "settle.", "close.", "reopen.", "rows.", "disk.")),
)


def bench_tables(metrics: Mapping[str, Any]) -> List[Tuple[str, List[Tuple[str, str, str]]]]:
    """``[(title, [(metric, value for people, what it measures), ...]), ...]`` in :data:`SECTIONS`."""
    out = []
    for title, prefixes in SECTIONS:
        rows = [(name, format_metric(name, value), metric_info(name).help) for name, value in metrics.items()
                if name.startswith(prefixes) and not name.startswith("flush.phase.")]
        out.append((title, rows))
    return out
