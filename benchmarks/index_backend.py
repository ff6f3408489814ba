"""Which library should build and search HNSW indexes: faiss or hnswlib? (docs/tuning.md)

Both sides run proxistore through its public API on the same data, in one process, one
database per library (``storage.viper.index_backend``), each ingested, flushed and compacted
into one indexed segment with the default HNSW parameters (M 16, efConstruction 200,
efSearch 64). Then, alternating A B A B over ``--rounds`` rounds:

  build          db.compact() until the segment has its index (one build per side)
  p50            single-query latency, ``col.search(q, 10)``, one query a call
  2 threads      queries/s of two threads searching at once
  1% deleted     p50 once 1% of the rows are deleted (the deletion vector is pushed into the index)
  filter 43%     p50 of ``search(q, 10, filter={"half": True})``, a filter keeping 43% of rows
  recall@10      against exact neighbours (numpy), unfiltered and filtered

Ratios are hnswlib / faiss. Data: seeded synthetic clustered unit vectors
(``proxistore.bench.data.synthetic_vectors``, 1,000 clusters, spread 1.0), metric cosine,
``--rows`` (default 100,000) x 384, ``--queries`` held out (default 500).

Usage: python benchmarks/index_backend.py [--rows 100000] [--queries 500] [--rounds 5] [--json FILE]
       python benchmarks/index_backend.py --rows 20000 --rounds 2      # a smoke run
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

import _report as rep

DIM = 384
K = 10
BATCH = 1000
BACKENDS = ("faiss", "hnswlib")
KEEP = 0.43                                  # the share of rows the filter keeps


def _config(backend: str) -> Dict[str, Any]:
    return {"storage": {"viper": {"index_backend": backend}}}


def _p50_us(search, queries: np.ndarray) -> float:
    times = []
    for q in queries:
        t = time.perf_counter()
        search(q)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e6


def _two_thread_qps(col, queries: np.ndarray, calls: int = 2000) -> float:
    def work(offset: int) -> None:
        for i in range(calls // 2):
            col.search(queries[(i + offset) % len(queries)], K)
    threads = [threading.Thread(target=work, args=(j * 7,)) for j in range(2)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return calls / (time.perf_counter() - t)


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found.tolist(), truth.tolist())]))


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--json", default=None, metavar="FILE")
    args = ap.parse_args(argv)

    import proxistore
    from proxistore.bench.data import exact_neighbours, synthetic_vectors

    machine = rep.print_machine(f"{args.rows:,} x {DIM} synthetic unit vectors, cosine, {args.queries} queries")
    allv, _ = synthetic_vectors(args.rows + args.queries, DIM, "cosine", args.seed, 1000, 1.0)
    base, queries = np.ascontiguousarray(allv[:args.rows]), np.ascontiguousarray(allv[args.rows:])
    rng = np.random.default_rng(args.seed)
    half = rng.random(args.rows) < KEEP
    ids = np.array([str(i) for i in range(args.rows)], dtype=object)
    truth, _ = exact_neighbours(queries, base, K, "cosine")
    kept = np.flatnonzero(half)
    truth_f, _ = exact_neighbours(queries, base[kept], K, "cosine")
    truth_filtered = np.asarray(ids[kept][truth_f])
    gone = ids[::100].tolist()

    work = Path(tempfile.mkdtemp(prefix="proxistore-index-backend-"))
    dbs, cols, built = {}, {}, {}
    for backend in BACKENDS:
        db = proxistore.open(work / backend, _config(backend))
        col = db.create_collection("c", dim=DIM, metric="cosine")
        for s in range(0, args.rows, BATCH):
            col.insert(ids[s:s + BATCH].tolist(), base[s:s + BATCH],
                       [{"half": bool(h)} for h in half[s:s + BATCH]])
        db.flush()
        t = time.perf_counter()
        db.compact()
        while db.stats()["collections"]["c"]["storage"]["exact_segments"]:
            db.wait_idle(1.0)
        built[backend] = time.perf_counter() - t
        kinds = db.stats()["collections"]["c"]["storage"]["index_kinds"]
        rep.console.print(f"{backend}: compact + index build {built[backend]:.1f} s, indexes {kinds}")
        dbs[backend], cols[backend] = db, col

    figures: Dict[str, Dict[str, List[float]]] = {b: {} for b in BACKENDS}

    def note(backend: str, name: str, value: float) -> None:
        figures[backend].setdefault(name, []).append(value)

    for backend, col in cols.items():                 # recall, and one untimed pass to warm up
        note(backend, "recall@10", _recall(np.asarray(col.search_batch(queries, K)[0]).astype(str).astype(int),
                                           ids[truth].astype(int)))
        hits = [[h.id for h in col.search(q, K, filter={"half": True})] for q in queries]
        note(backend, "recall@10 filter 43%",
             float(np.mean([len(set(h) & set(t)) / K for h, t in zip(hits, truth_filtered.tolist())])))
    for phase in ("clean", "deleted"):
        if phase == "deleted":
            for backend, db in dbs.items():
                cols[backend].delete(gone)
                db.flush()
                db.wait_idle(30)
        for _ in range(args.rounds):
            for backend, col in cols.items():
                if phase == "clean":
                    note(backend, "p50 µs", _p50_us(lambda q: col.search(q, K), queries))
                    note(backend, "2 threads q/s", _two_thread_qps(col, queries))
                    note(backend, "p50 µs filter 43%",
                         _p50_us(lambda q: col.search(q, K, filter={"half": True}), queries))
                else:
                    note(backend, "p50 µs 1% deleted", _p50_us(lambda q: col.search(q, K), queries))
    for db in dbs.values():
        db.close()
    shutil.rmtree(work, ignore_errors=True)

    out: List[rep.Figure] = [rep.figure("compact + index build, hnswlib / faiss", [built["hnswlib"] / built["faiss"]],
                                        suffix="x", detail=f"{built['hnswlib']:.1f} s vs {built['faiss']:.1f} s")]
    for name in figures["faiss"]:
        a, b = figures["faiss"][name], figures["hnswlib"][name]
        if name.startswith("recall"):
            out.append(rep.figure(f"{name}: hnswlib, faiss", [statistics.median(b)], spec=".4f",
                                  detail=f"hnswlib {statistics.median(b):.4f}, faiss {statistics.median(a):.4f}"))
            continue
        ratios = [y / x for x, y in zip(a, b)]
        out.append(rep.figure(f"{name}, hnswlib / faiss", ratios, suffix="x",
                              detail=f"{statistics.median(b):,.0f} vs {statistics.median(a):,.0f} "
                                     f"(hnswlib {min(b):,.0f}–{max(b):,.0f}, faiss {min(a):,.0f}–{max(a):,.0f})"))
    rep.print_figures(f"index backend, {args.rows:,} x {DIM}, {args.rounds} rounds A B A B", out)
    rep.write_json(args.json, {"machine": machine, "rows": args.rows, "figures": out, "raw": figures,
                               "build_seconds": built})
    return 0


if __name__ == "__main__":
    sys.exit(main())
