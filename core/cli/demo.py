"""``proxistore demo``: the whole data path on real text, narrated, in under a minute.

It ingests the shipped sample of docstring embeddings (or ``--dataset FILE.parquet``) in batches,
prints every flush the moment the maintenance thread reports it (policy, threshold, measured
value, rows, segment, phase timings), shows why the rest has not flushed yet, searches with a
few rows kept out of the ingest, prints the stats, then closes, reopens and checks that the
count and the top hit are back. Flushes are observed through the public observer hook
(``proxistore_flush_finished``), exactly as a third-party metrics plugin would.
"""
from __future__ import annotations

import argparse
import os
import time
from importlib import resources
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
from proxistore.errors import ProxistoreError

from .admin import flush_counts, flush_line, threshold_units
from .common import FlushRecorder, UsageError, open_database
from .output import Output, fmt_bytes, fmt_seconds, fmt_value, shorten
from .sources import parquet_metadata_columns, parquet_vectors, rows_metadata

__all__ = ["cmd_demo", "sample_path", "DEMO_COLLECTION"]

DEMO_COLLECTION = "stdlib"
SAMPLE_FILE = "stdlib_minilm_sample.parquet"
QUERIES = 4
SEED = 7
#: Queries for the shipped sample, chosen for readable text and a close neighbour in the sample
#: (random, asyncio, logging, torch); another dataset gets QUERIES rows picked with SEED.
SAMPLE_QUERIES = ("doc-001967", "doc-003201", "doc-004685", "doc-007766")
TOP_K = 3


def sample_path() -> str:
    """The sample shipped as package data (``proxistore/demo_data/``)."""
    return str(resources.files("proxistore").joinpath("demo_data").joinpath(SAMPLE_FILE))


def _load(path: str) -> Tuple[List[str], np.ndarray, List[Optional[Dict[str, Any]]]]:
    """ids, float32 vectors and per-row metadata of a Parquet file with ``id`` and ``vector``."""
    import pyarrow.parquet as pq

    if not os.path.isfile(path):
        raise UsageError(f"dataset not found: {path}")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise UsageError(f"{path}: not a readable Parquet file: {exc}") from None
    if "id" not in table.column_names or "vector" not in table.column_names:
        raise UsageError(f"{path}: the demo needs columns 'id' and 'vector' (has: {', '.join(table.column_names)})")
    meta_cols, _ = parquet_metadata_columns(table.schema)
    ids = [str(i) for i in table.column("id").to_pylist()]
    vectors = parquet_vectors(table.column("vector"), path)
    metas = rows_metadata(table, meta_cols) or [None] * len(ids)
    return ids, vectors, metas


def _plan(ids: List[str], rows: Optional[int]) -> Tuple[List[int], List[int]]:
    """(query rows kept out of the ingest, ingest rows in a seeded random order).

    A random order makes any ``--rows`` prefix a fair sample of the whole set (the file itself
    is in source order: stdlib first, then numpy, torch...).
    """
    n = len(ids)
    if n < QUERIES + 1:
        raise UsageError(f"the dataset has {n} rows; the demo needs at least {QUERIES + 1}")
    rng = np.random.default_rng(SEED)
    order = [int(i) for i in rng.permutation(n)]
    position = {id_: i for i, id_ in enumerate(ids)}
    if all(q in position for q in SAMPLE_QUERIES):
        queries = [position[q] for q in SAMPLE_QUERIES]
    else:
        queries = sorted(order[:QUERIES])
    chosen = set(queries)
    ingest = [i for i in order if i not in chosen]
    if rows is not None:
        if rows <= 0:
            raise UsageError("--rows must be a positive integer")
        ingest = ingest[:rows]
    return queries, ingest


def _label(meta: Optional[Dict[str, Any]]) -> Tuple[str, str]:
    meta = meta or {}
    return str(meta.get("module", "")), shorten(meta.get("text", ""), 90)


class _Narrator:
    """Prints flush events as they arrive, numbered, and keeps them for the JSON summary."""

    def __init__(self, out: Output, recorder: FlushRecorder, units: Dict, first: int = 1) -> None:
        self.out, self.recorder, self.units, self.first = out, recorder, units, first
        self.events: List[Dict[str, Any]] = []

    def drain(self) -> None:
        for ev in self.recorder.drain():
            self.events.append(ev)
            self.out.print(f"  #{self.first + len(self.events) - 1} {flush_line(ev, self.units)}")


def cmd_demo(args: argparse.Namespace, out: Output) -> int:
    """Ingest, flush, search, stats, close, reopen: see the module docstring."""
    if args.batch_size <= 0:
        raise UsageError("--batch-size must be a positive integer")
    path = args.dataset or sample_path()
    ids, vectors, metas = _load(path)
    queries, ingest = _plan(ids, args.rows)
    name, dim = args.collection, int(vectors.shape[1])
    report: Dict[str, Any] = {"data": os.path.abspath(args.data), "dataset": path, "collection": name,
                              "dim": dim, "metric": "cosine", "rows_ingested": len(ingest)}
    out.heading("proxistore demo")
    out.print(f"dataset {path}: {len(ids):,} rows, dim {dim}; ingesting {len(ingest):,} rows in batches of "
              f"{args.batch_size}, keeping {len(queries)} rows out as queries")

    recorder = FlushRecorder()
    db = open_database(args, create=True, recorder=recorder)
    try:
        units = threshold_units(db.config)
        narrator = _Narrator(out, recorder, units)
        _describe_config(db, out)
        if name in db.collections():
            old = db.collection(name).count()
            db.drop_collection(name)
            report["dropped_previous_rows"] = old
            out.print(f"dropped collection {name!r} left by an earlier demo run ({old:,} rows)")
        col = db.create_collection(name, dim=dim, metric="cosine")
        out.print(f"created collection {name!r} (dim {dim}, cosine) in {db.path}")

        out.heading("\ningest (each flush is printed when the maintenance thread finishes it)")
        started = time.perf_counter()
        with out.progress(f"inserting into {name}", len(ingest)) as advance:
            for start in range(0, len(ingest), args.batch_size):
                rows = ingest[start:start + args.batch_size]
                col.insert([ids[i] for i in rows], vectors[rows], [metas[i] for i in rows])
                advance(len(rows))
                narrator.drain()
        seconds = time.perf_counter() - started
        _wait_for_background(db, name)
        narrator.drain()
        out.print(f"inserted {len(ingest):,} rows in {seconds:.2f} s ({len(ingest) / max(seconds, 1e-9):,.0f} rows/s); "
                  f"every batch was in the WAL before insert() returned; {len(narrator.events)} flush(es) so far")
        report["ingest_seconds"] = seconds

        report["why"] = _show_why(db, name, out)
        report["queries"] = top = _searches(col, ids, vectors, metas, queries, out)
        report["stats"] = _show_stats(db, name, narrator.events, out)
        count = col.count()
    finally:
        db.close()
    narrator.drain()  # a flush that close() waited for

    out.heading("\nclose and reopen")
    out.print(f"closed {db.path}; opening it again (WAL replay of whatever was not flushed)")
    recorder2 = FlushRecorder()
    with open_database(args, recorder=recorder2) as db2:
        narrator2 = _Narrator(out, recorder2, threshold_units(db2.config), first=len(narrator.events) + 1)
        col2 = db2.collection(name)
        count2 = col2.count()
        recovery = db2.stats()["collections"][name].get("recovery") or {}
        first_q = queries[0]
        hit2 = col2.search(vectors[first_q], k=1)
        top2 = hit2[0].id if hit2 else None
        top1 = top[0]["hits"][0]["id"] if top[0]["hits"] else None
        same_top = top1 == top2
        out.print(f"back after reopen: {count2:,} rows (before close: {count:,}); "
                  f"{recovery.get('rows', 0):,} rows replayed from the WAL; top hit for query 1 is {top2} "
                  + ("(same as before close)" if same_top else f"(before close: {top1}; ANN results can "
                                                                  f"differ once segments are indexed)"))
        out.print("flushing the replayed rows by hand (policy manual):")
        db2.flush(name)
        narrator2.drain()
        if not narrator2.events:
            out.print("  nothing to flush: every row was already in a segment")
    report["reopen"] = {"count_before_close": count, "count_after_reopen": count2, "top_hit_before": top1,
                        "top_hit_after": top2, "same_top_hit": same_top, "recovery": recovery,
                        "manual_flushes": narrator2.events}
    report["flushes"] = narrator.events
    out.heading("\nnext")
    out.print(f"proxistore --data {args.data} stats {name}     proxistore --data {args.data} search {name} "
              f"--from-id {ids[ingest[0]]} -k 5")
    out.emit(report, lambda: None)
    if count2 != count:
        raise ProxistoreError(f"demo check failed: {count:,} rows before close but {count2:,} after reopen")
    return 0


def _describe_config(db: Any, out: Output) -> None:
    cfg = db.config
    out.print(f"config {cfg.source}: WAL {cfg.wal_spec.name} (sync_mode {cfg.wal.get('sync_mode', '?')}), "
              f"storage {cfg.storage_spec.name}")
    parts = []
    for name in cfg.policies:
        keys = [r for r in cfg.explain() if r.threshold and r.path.startswith(f"flush.{name}.")]
        parts.append(name + (" " + ", ".join(f"{r.path.split('.')[-1]}={r.display}" for r in keys)
                             if keys else " (on request)"))
    out.print("flush policies: " + "; ".join(parts))


def _wait_for_background(db: Any, name: str, timeout: float = 60.0) -> None:
    """Let the flushes the policies call for run, so their lines print before the searches.

    Waits until no threshold of ``name`` is crossed any more (``db.why``) and no background job
    is running; the policies themselves decide, the demo never flushes on their behalf.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        db.wait_idle(max(0.0, deadline - time.monotonic()))
        if not any(r["due"] for r in db.why(name)):
            db.wait_idle(max(0.0, deadline - time.monotonic()))  # a flush that froze before why() looked
            return
        time.sleep(db.config.maintenance["check_interval"])


def _show_why(db: Any, name: str, out: Output) -> List[Dict[str, Any]]:
    mt = db.stats()["collections"][name]["memtable"]
    readings = db.why(name)
    if mt["rows"]:
        out.heading(f"\nnot flushed yet: {mt['rows']:,} rows ({fmt_bytes(mt['bytes'])}) in the memtable and the WAL, "
                    f"because no threshold is crossed:")
    else:
        out.heading("\nnothing waiting: every row is in a segment; the thresholds now:")
    out.table(["policy", "threshold key", "threshold", "measured now", "crossed"],
              [[r["policy"], r["key"] or "(on request)", fmt_value(r["threshold"], r["unit"]),
                fmt_value(r["measured"], r["unit"]), "yes" if r["due"] else "no"] for r in readings])
    return readings


def _searches(col: Any, ids: List[str], vectors: np.ndarray, metas: List[Optional[Dict[str, Any]]],
              queries: List[int], out: Output) -> List[Dict[str, Any]]:
    out.heading(f"\nsearch: {len(queries)} rows that were not ingested, as queries (top {TOP_K}, cosine distance)")
    results = []
    for n, qi in enumerate(queries, 1):
        module, text = _label(metas[qi])
        hits = col.search(vectors[qi], k=TOP_K)
        out.print(f"query {n}: {ids[qi]} [{module}] {text}")
        out.table(["rank", "distance", "id", "module", "text"],
                  [[r, f"{h.distance:.4f}", h.id, *_label(h.metadata)] for r, h in enumerate(hits, 1)],
                  right=("rank", "distance"), empty="no hits")
        results.append({"query_id": ids[qi], "module": module, "text": (metas[qi] or {}).get("text"),
                        "hits": [{"id": h.id, "distance": h.distance, "metadata": h.metadata} for h in hits]})
    return results


def _show_stats(db: Any, name: str, events: List[Dict[str, Any]], out: Output) -> Dict[str, Any]:
    s = db.stats()["collections"][name]
    wal, storage = s["wal"], s["storage"]
    by_policy = flush_counts(events)
    summary = {"rows": s["rows"], "segments": storage.get("segments"), "flushes_by_policy": by_policy,
               "wal_append_seconds": wal.get("append_seconds"), "wal_fsync_seconds": wal.get("fsync_seconds"),
               "wal_fsyncs": wal.get("fsyncs"), "wal_sync_mode": wal.get("sync_mode"),
               "memtable_rows": s["memtable"]["rows"]}
    out.heading("\nstats")
    out.table(["what", "value"], [
        ["rows", f"{s['rows']:,} ({s['memtable']['rows']:,} in the memtable, the rest in segments)"],
        ["segments", f"{storage.get('segments')} ({fmt_bytes(storage.get('bytes'))})"],
        ["flushes by policy", ", ".join(f"{p} {n}" for p, n in sorted(by_policy.items())) or "none"],
        ["WAL append", f"{fmt_seconds(wal.get('append_seconds', 0) + wal.get('write_seconds', 0))} "
                       f"encoding records and writing them to the OS"],
        ["WAL fsync", f"{fmt_seconds(wal.get('fsync_seconds'))} in {wal.get('fsyncs')} fsyncs "
                      f"(sync_mode {wal.get('sync_mode')})"],
    ])
    return summary
