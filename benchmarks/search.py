"""Viper search benchmark (issue 4, item 9) on stdlib_minilm, against raw faiss built in the same
run with the same parameters (HNSW, M=16, efConstruction=40, efSearch=64, inner product).

The store is driven through the CollectionStore contract: rows are written the way the core's
flushes would (segments of ~600 rows, i.e. a 1 MB memtable of 384-d float32), a background thread
calls maintain() every tick as the core's maintenance thread does, then compact() waits until
everything is merged and indexed.

  recall@10 after compact, default config          vs ground truth              (goal >= 0.99)
  batch query throughput (500 queries, k=10)       vs raw faiss                 (goal >= 0.8x)
  single-query latency (mean over 500)             vs raw faiss                 (goal <= 1.5x)
  filtered recall@10, module=torch (43%) / json    vs brute force on the subset (goal >= 0.95)
  time from last insert to fully indexed           vs raw faiss build           (goal <= 1.3x)

Usage: python benchmarks/search.py [--data DIR] [--repeats 3] [--flush-rows 600] [--tick 0.05]
Skips (exit 0, with a message) when the dataset is absent, as in a plain clone.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "stdlib_minilm"
K = 10


def load(data: Path):
    import pyarrow.parquet as pq
    base = pq.read_table(data / "base.parquet", columns=["id", "vector", "module", "kind"])
    vectors = base["vector"].combine_chunks().flatten().to_numpy().reshape(-1, 384).astype(np.float32)
    queries_t = pq.read_table(data / "dev_queries.parquet", columns=["vector"])
    queries = queries_t["vector"].combine_chunks().flatten().to_numpy().reshape(-1, 384).astype(np.float32)
    gt = np.load(data / "dev_groundtruth.npy")
    return (base["id"].to_pylist(), vectors, base["module"].to_pylist(), base["kind"].to_pylist(),
            np.ascontiguousarray(queries), gt)


def recall_at_k(found_rows: np.ndarray, truth_rows: np.ndarray, k: int = K) -> float:
    hits = [len(set(f[:k].tolist()) & set(t[:k].tolist())) / min(k, max(1, len(t[:k]))) for f, t in zip(found_rows, truth_rows)]
    return float(np.mean(hits))


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def single_query_latency(search_one: Callable[[np.ndarray], object], queries: np.ndarray, repeats: int) -> float:
    """Mean seconds per query, one query per call, best of ``repeats`` passes over all queries."""
    def one_pass():
        for i in range(len(queries)):
            search_one(queries[i:i + 1])
    return best_of(repeats, one_pass) / len(queries)


def rows_of(ids: np.ndarray) -> np.ndarray:
    return np.array([[int(i[4:]) if i is not None else -1 for i in row] for row in ids])


def main(argv: List[str] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--flush-rows", type=int, default=600, help="rows per segment (~1 MB of 384-d)")
    ap.add_argument("--tick", type=float, default=0.05, help="seconds between background maintain() calls")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON object too")
    args = ap.parse_args(argv)
    if not (args.data / "base.parquet").exists():
        print(f"SKIP: stdlib_minilm dataset not found at {args.data} (it lives in ../shared/data "
              f"next to the repository; a plain clone does not have it)")
        return 0

    import faiss

    from proxistore.contracts import CollectionInfo, SegmentRows
    from proxistore.fileio import LocalFileSystem
    from proxistore.filters import compile_filter
    from proxistore.plugins.viper import ViperEngine, ViperSettings

    ids, base, modules, kinds, queries, gt = load(args.data)
    n, dim = base.shape
    s = ViperSettings()
    print(f"stdlib_minilm: {n} x {dim} base, {len(queries)} queries; faiss {faiss.__version__}, "
          f"{faiss.omp_get_max_threads()} OpenMP threads")
    print(f"viper defaults: index={s.index}/{s.index_backend} M={s.hnsw_m} efC={s.hnsw_ef_construction} "
          f"efSearch={s.hnsw_ef_search} indexing_threshold={s.indexing_threshold} "
          f"filter_exact_max_rows={s.filter_exact_max_rows}")
    figures: Dict[str, float] = {}

    # -- raw faiss ---------------------------------------------------------------------------
    t = time.perf_counter()
    raw = faiss.IndexHNSWFlat(dim, s.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    raw.hnsw.efConstruction = s.hnsw_ef_construction
    raw.add(base)
    raw_build = time.perf_counter() - t
    raw.hnsw.efSearch = s.hnsw_ef_search
    _, raw_found = raw.search(queries, K)
    raw_recall = recall_at_k(raw_found, gt)
    raw_batch = best_of(args.repeats, lambda: raw.search(queries, K))
    raw_single = single_query_latency(lambda q: raw.search(q, K), queries, args.repeats)

    # -- viper through the CollectionStore contract --------------------------------------------
    root = tempfile.mkdtemp(prefix="proxistore-bench-search-")
    try:
        engine = ViperEngine({}, fs=LocalFileSystem(), root=root)
        info = CollectionInfo(name="stdlib", dim=dim, metric="cosine")
        engine.create_collection(info)
        store = engine.open_collection(info, {})
        stop = threading.Event()
        maintain_errors: List[BaseException] = []

        def background() -> None:
            while not stop.is_set():
                try:
                    store.maintain()
                except BaseException as e:  # noqa: BLE001 - reported after the run
                    maintain_errors.append(e)
                    return
                stop.wait(args.tick)

        thread = threading.Thread(target=background, daemon=True)
        t_ingest = time.perf_counter()
        thread.start()
        lsn = 1
        for start in range(0, n, args.flush_rows):
            end = min(n, start + args.flush_rows)
            m = end - start
            store.write_segment(SegmentRows(
                ids=ids[start:end], vectors=base[start:end], lsns=np.arange(lsn, lsn + m, dtype=np.int64),
                metadata=[{"module": modules[i], "kind": kinds[i]} for i in range(start, end)],
                deleted_ids=[], deleted_lsns=np.zeros(0, dtype=np.int64), max_lsn=lsn + m - 1))
            lsn += m
        t_last_insert = time.perf_counter()
        at_last_insert = store.stats()
        stop.set()
        result = store.compact()      # waits for a maintain() step in flight, then merges + indexes
        t_indexed = time.perf_counter()
        thread.join()
        if maintain_errors:
            raise maintain_errors[0]
        st = store.stats()
        ingest = t_last_insert - t_ingest
        to_indexed = t_indexed - t_last_insert
        print(f"at the last insert: {at_last_insert['segments']} segments, {at_last_insert['indexed_segments']} "
              f"indexed; compact(): {result.segments_in if result else 0} segments in, "
              f"{result.seconds if result else 0:.2f} s of the {to_indexed:.2f} s to fully indexed")
        print(f"ingest: {n} rows in {(n + args.flush_rows - 1) // args.flush_rows} segments, {ingest:.2f} s; "
              f"after compact: {st['segments']} segment(s), indexes {st['index_kinds']}, "
              f"{st['compactions']} compactions, index builds {st['index_builds']}, reuses {st['index_reuses']}")

        hits = store.search(queries, K)
        viper_recall = recall_at_k(rows_of(hits.ids), gt)
        viper_batch = best_of(args.repeats, lambda: store.search(queries, K))
        viper_single = single_query_latency(lambda q: store.search(q, K), queries, args.repeats)

        filtered = {}
        module_arr = np.array(modules, dtype=object)
        for module in ("torch", "json"):
            mask = module_arr == module
            rows = np.flatnonzero(mask)
            sims = queries @ base[rows].T
            truth = rows[np.argsort(-sims, axis=1, kind="stable")[:, :K]]
            flt = compile_filter({"module": module})
            before = dict(store.stats()["searches"])
            t = time.perf_counter()
            fh = store.search(queries, K, filter=flt)
            secs = time.perf_counter() - t
            after = store.stats()["searches"]
            path = [p for p in after if after[p] != before.get(p, 0)]
            bits = np.packbits(mask, bitorder="little")
            sel = faiss.IDSelectorBitmap(n, faiss.swig_ptr(bits))
            _, raw_f = raw.search(queries, K, params=faiss.SearchParametersHNSW(sel=sel, efSearch=s.hnsw_ef_search))
            filtered[module] = (mask.mean(), recall_at_k(rows_of(fh.ids), truth), secs,
                                recall_at_k(raw_f, truth), ",".join(path))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    figures = {
        "raw_recall@10": raw_recall, "viper_recall@10": viper_recall,
        "batch_qps_raw": len(queries) / raw_batch, "batch_qps_viper": len(queries) / viper_batch,
        "batch_throughput_ratio": raw_batch / viper_batch,
        "single_latency_raw_ms": raw_single * 1e3, "single_latency_viper_ms": viper_single * 1e3,
        "single_latency_ratio": viper_single / raw_single,
        "raw_build_s": raw_build, "time_to_indexed_s": to_indexed, "time_to_indexed_ratio": to_indexed / raw_build,
        "ingest_s": ingest,
    }
    for module, (frac, rec, secs, raw_rec, path) in filtered.items():
        figures[f"filtered_recall@10_{module}"] = rec
        figures[f"filtered_raw_faiss_recall@10_{module}"] = raw_rec
        figures[f"filtered_batch_s_{module}"] = secs

    def row(name: str, value: str, goal: str, ok: bool) -> None:
        print(f"  {name:<44} {value:<34} {goal:<12} {'ok' if ok else 'MISS'}")

    print("\nresults (viper default config vs raw faiss, same parameters)")
    row("recall@10 after compact", f"{viper_recall:.4f} (raw faiss {raw_recall:.4f})", ">= 0.99", viper_recall >= 0.99)
    row("batch throughput ratio (500 queries)", f"{raw_batch / viper_batch:.2f}x ({len(queries) / viper_batch:,.0f} vs "
        f"{len(queries) / raw_batch:,.0f} q/s)", ">= 0.8x", raw_batch / viper_batch >= 0.8)
    row("single-query latency ratio", f"{viper_single / raw_single:.2f}x ({viper_single * 1e3:.3f} vs "
        f"{raw_single * 1e3:.3f} ms)", "<= 1.5x", viper_single / raw_single <= 1.5)
    for module, (frac, rec, secs, raw_rec, path) in filtered.items():
        row(f"filtered recall@10 module={module} ({frac:.1%})", f"{rec:.4f} [{path}] (raw sel {raw_rec:.4f})",
            ">= 0.95", rec >= 0.95)
    row("time from last insert to fully indexed", f"{to_indexed / raw_build:.2f}x ({to_indexed:.2f} vs "
        f"{raw_build:.2f} s build)", "<= 1.3x", to_indexed / raw_build <= 1.3)
    if args.json:
        print(json.dumps({k: round(v, 5) for k, v in figures.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
