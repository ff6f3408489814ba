"""Search benchmark (issue 4, item 9): proxistore as a user runs it vs the raw HNSW library, same run.

proxistore is driven through its public API only: ``proxistore.open`` on a temp dir with the
default config (1 MB flush threshold; background maintenance flushing, merging and indexing),
``create_collection(dim=384, metric=...)``, inserts of 1,000 rows through the WAL, then
``db.flush()`` + ``db.compact()``. The baseline is an HNSW index (inner product over the same
unit vectors) built in the same run, by the library the default config builds HNSW with
(``storage.viper.index_backend``: hnswlib under "auto", or faiss's ``IndexHNSWFlat``), with
proxistore's default index parameters from ``proxistore.config.load_config().storage``
(hnsw_m, hnsw_ef_construction, hnsw_ef_search).

  recall@10 after compact, default settings     vs exact ground truth          (goal >= 0.99)
  batch query throughput, search_batch          vs raw batch search            (goal >= 0.8x)
  single-query latency, search (median, p99)    vs raw, 1 query a call         (goal <= 1.5x)
  filtered recall@10, module=torch / json       vs brute force on the subset   (goal >= 0.95)
  last acknowledged insert -> fully indexed     vs raw index build             (goal <= 1.3x)

"Fully indexed" is: the memtable flushed (db.flush()), compact() returned, and stats() shows
every segment with an ANN index. Every query timing also runs the layers below ``search``
(CollectionStore.search, the core read path, search_batch of one query) so that a gap to raw
the raw library is attributed to a layer; ``--profile`` adds a cProfile of ``search``.

--scale: 200,000 synthetic 384-d vectors (1,000 seeded Gaussian clusters, normalised) and 1,000
held-out queries with exact ground truth (brute force); the same figures minus filters, plus
ingest throughput.

Usage: python benchmarks/search.py [--repeats 5] [--builds N] [--metric cosine|ip] [--profile]
       python benchmarks/search.py --scale [--scale-rows 200000] [--builds 1]
       python benchmarks/search.py --rows 8000 --repeats 1        # a smoke run
Timings are medians over rounds with (min–max). Skips (exit 0) when ../shared/data is absent
(not in --scale mode, which makes its own data).
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

import _report as rep

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "stdlib_minilm"
K = 10
BATCH = 1000
FILTERS = ("torch", "json")
BATCH_CALLS = 3     # batch searches per round and side, alternating; the round keeps their median


@dataclass
class Workload:
    name: str
    ids: List[str]
    base: np.ndarray                      # (n, dim) float32, unit rows
    metadata: Optional[List[dict]]
    queries: np.ndarray                   # (m, dim) float32
    truth: np.ndarray                     # (m, >= K) base rows, best first
    filters: Dict[str, Tuple[dict, np.ndarray, float]] = field(default_factory=dict)  # spec, truth, fraction
    describe: str = ""


# -- data ----------------------------------------------------------------------------------------

def exact_truth(base: np.ndarray, queries: np.ndarray, k: int, rows: Optional[np.ndarray] = None,
                chunk: int = 50_000) -> np.ndarray:
    """Exact top-k base rows by inner product (ties: lower row first), optionally within ``rows``."""
    pool = np.arange(len(base)) if rows is None else rows
    best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_r = np.zeros((len(queries), 0), dtype=np.int64)
    for start in range(0, len(pool), chunk):
        part = pool[start:start + chunk]
        sims = queries @ base[part].T
        kk = min(k, len(part))
        top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        best_s = np.concatenate([best_s, np.take_along_axis(sims, top, axis=1)], axis=1)
        best_r = np.concatenate([best_r, part[top]], axis=1)
    order = np.lexsort((best_r, -best_s), axis=1)[:, :k]
    return np.take_along_axis(best_r, order, axis=1)


def load_dataset(data: Path, rows: Optional[int]) -> Workload:
    import pyarrow.parquet as pq
    t = pq.read_table(data / "base.parquet", columns=["id", "vector", "module", "kind"])
    base = t["vector"].combine_chunks().flatten().to_numpy().reshape(-1, 384).astype(np.float32)
    q = pq.read_table(data / "dev_queries.parquet", columns=["vector"])
    queries = np.ascontiguousarray(q["vector"].combine_chunks().flatten().to_numpy().reshape(-1, 384),
                                   dtype=np.float32)
    ids, modules, kinds = t["id"].to_pylist(), t["module"].to_pylist(), t["kind"].to_pylist()
    n = len(ids) if rows is None else min(rows, len(ids))
    base, ids, modules, kinds = base[:n], ids[:n], modules[:n], kinds[:n]
    truth = np.load(data / "dev_groundtruth.npy")[:, :K] if n == t.num_rows else exact_truth(base, queries, K)
    module_arr = np.array(modules, dtype=object)
    filters = {}
    for module in FILTERS:
        rows_m = np.flatnonzero(module_arr == module)
        if len(rows_m):
            filters[module] = ({"module": module}, exact_truth(base, queries, K, rows_m), len(rows_m) / n)
    meta = [{"module": m, "kind": k} for m, k in zip(modules, kinds)]
    return Workload("stdlib_minilm", ids, base, meta, queries, truth, filters,
                    f"stdlib_minilm: {n:,} x 384 base (real MiniLM docstring embeddings, L2-normalised), "
                    f"{len(queries)} dev queries, ground truth {'dev_groundtruth.npy' if n == t.num_rows else 'brute force'}")


def synthetic(rows: int, nq: int, clusters: int, seed: int, dim: int = 384, sigma: float = 1.0) -> Workload:
    """Gaussian clusters around unit centres (noise norm ~sigma), rows normalised; queries from the
    same distribution, held out; exact ground truth by brute force."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def draw(n: int) -> np.ndarray:
        out = np.empty((n, dim), dtype=np.float32)
        for s in range(0, n, 50_000):
            e = min(n, s + 50_000)
            x = centres[rng.integers(0, clusters, e - s)]
            x = x + rng.standard_normal((e - s, dim)).astype(np.float32) * np.float32(sigma / np.sqrt(dim))
            out[s:e] = x / np.linalg.norm(x, axis=1, keepdims=True)
        return out

    base, queries = draw(rows), draw(nq)
    t = time.perf_counter()
    truth = exact_truth(base, queries, K)
    ids = [f"vec-{i:07d}" for i in range(rows)]
    return Workload("synthetic", ids, base, None, queries, truth, {},
                    f"synthetic (seed {seed}): {rows:,} x {dim} vectors in {clusters:,} Gaussian clusters "
                    f"(noise norm {sigma}), normalised; {nq:,} held-out queries, exact ground truth by "
                    f"brute force ({time.perf_counter() - t:.1f} s)")


def rows_of(ids: np.ndarray) -> np.ndarray:
    return np.array([[int(i.rsplit("-", 1)[1]) if i is not None else -1 for i in row] for row in ids])


def recall(found: np.ndarray, truth: np.ndarray, k: int = K) -> float:
    return float(np.mean([len(set(f[:k].tolist()) & set(t[:k].tolist())) / k for f, t in zip(found, truth)]))


# -- building --------------------------------------------------------------------------------------

class RawIndex:
    """The baseline: an HNSW index over ``base`` built by ``library`` (faiss or hnswlib) directly,
    inner product, proxistore's default parameters; ``build_s`` is its build time."""

    def __init__(self, library: str, base: np.ndarray, params: Dict[str, int]) -> None:
        self.library = library
        t = time.perf_counter()
        if library == "faiss":
            import faiss
            self.index = faiss.IndexHNSWFlat(base.shape[1], params["hnsw_m"], faiss.METRIC_INNER_PRODUCT)
            self.index.hnsw.efConstruction = params["hnsw_ef_construction"]
            self.index.add(base)
            self.build_s = time.perf_counter() - t
            self.index.hnsw.efSearch = params["hnsw_ef_search"]
        else:
            import hnswlib
            self.index = hnswlib.Index(space="ip", dim=base.shape[1])
            self.index.init_index(max_elements=len(base), ef_construction=params["hnsw_ef_construction"],
                                  M=params["hnsw_m"], random_seed=100)
            self.index.add_items(base, np.arange(len(base)))
            self.build_s = time.perf_counter() - t
            self.index.set_ef(params["hnsw_ef_search"])
        self.ef = params["hnsw_ef_search"]
        self.ntotal = len(base)

    def search(self, q: np.ndarray, k: int) -> np.ndarray:
        """Row numbers of the top-k per query, at the default efSearch."""
        if self.library == "faiss":
            return self.index.search(q, k)[1]
        return self.index.knn_query(q, k=k)[0]

    def search_filtered(self, q: np.ndarray, k: int, mask: np.ndarray) -> np.ndarray:
        """Top-k among the rows of ``mask``, the filter pushed into the graph walk at the
        default efSearch (faiss: an IDSelectorBitmap; hnswlib: a predicate)."""
        if self.library == "faiss":
            import faiss
            bits = np.packbits(mask, bitorder="little")
            sel = faiss.IDSelectorBitmap(self.ntotal, faiss.swig_ptr(bits))
            return self.index.search(q, k, params=faiss.SearchParametersHNSW(sel=sel, efSearch=self.ef))[1]
        return self.index.knn_query(q, k=k, filter=mask.__getitem__, num_threads=1)[0]


@dataclass
class Built:
    db: Any
    coll: Any
    root: str
    ingest_s: float            # first insert call -> last insert acknowledged
    to_indexed_s: float        # last insert acknowledged -> fully indexed
    flush_s: float
    compact_s: float
    at_last_ack: Dict[str, Any]
    after: Dict[str, Any]


def build_proxistore(w: Workload, metric: str) -> Built:
    import proxistore
    root = tempfile.mkdtemp(prefix="proxistore-bench-search-")
    db = proxistore.open(root)                       # the default config
    coll = db.create_collection("bench", dim=w.base.shape[1], metric=metric)
    n = len(w.ids)
    batches = [(w.ids[s:s + BATCH], w.base[s:s + BATCH], w.metadata[s:s + BATCH] if w.metadata else None)
               for s in range(0, n, BATCH)]
    t0 = time.perf_counter()
    for ids, vecs, meta in batches:
        coll.insert(ids, vecs, meta)
    t_ack = time.perf_counter()
    st = db.stats()["collections"]["bench"]
    at_ack = {"segments": st["storage"]["segments"], "indexed": st["storage"]["indexed_segments"],
              "memtable_rows": st["memtable"]["rows"], "flushes": st["flushes"]["total"]}
    db.flush()
    t_flushed = time.perf_counter()
    merged = db.compact()
    t_compacted = time.perf_counter()
    # compact() builds the indexes before it returns; check, and wait briefly if stats disagree
    # (segments under indexing_threshold stay exact by design: only in runs of < 10,000 rows)
    deadline = time.monotonic() + 30
    while True:
        st = db.stats()["collections"]["bench"]
        s = st["storage"]
        pending = st["memtable"]["rows"] > 0 or (s["exact_segments"] > 0 and n >= db.config.storage["indexing_threshold"])
        if not pending or time.monotonic() > deadline:
            break
        db.wait_idle(1.0)
    t_indexed = time.perf_counter()
    after = {"segments": s["segments"], "indexed": s["indexed_segments"], "exact": s["exact_segments"],
             "memtable_rows": st["memtable"]["rows"], "index_builds": s["index_builds"],
             "index_reuses": s["index_reuses"], "compactions": s["compactions"], "rows": s["rows"],
             "flushes": st["flushes"]["total"],
             "compact_merge_s": sum(e["seconds"] for e in merged),
             "compact_rows_in": sum(e["rows_in"] for e in merged),
             "compact_segments_in": sum(e["segments_in"] for e in merged)}
    return Built(db, coll, root, t_ack - t0, t_indexed - t_ack, t_flushed - t_ack, t_compacted - t_flushed,
                 at_ack, after)


# -- querying --------------------------------------------------------------------------------------

LAYERS = ("raw", "CollectionStore.search", "core read path", "search_batch (1 query)", "search")


def query_round(raw: RawIndex, b: Built, w: Workload, seed: int) -> Dict[str, Any]:
    coll = b.coll
    rt = b.db._runtime("bench")          # diagnostics only: the layers below the public API
    store = rt.store
    q = w.queries
    out: Dict[str, Any] = {}
    ids, _ = coll.search_batch(q, K)
    out["recall"] = recall(rows_of(ids), w.truth)
    out["raw_recall"] = recall(raw.search(q, K), w.truth)

    batch: Dict[str, List[float]] = {"raw": [], "store": [], "api": []}
    for _ in range(BATCH_CALLS):
        batch["raw"].append(rep.timed(lambda: raw.search(q, K)))
        batch["store"].append(rep.timed(lambda: store.search(q, K)))
        batch["api"].append(rep.timed(lambda: coll.search_batch(q, K)))
    out["batch"] = {k: float(np.median(v)) for k, v in batch.items()}

    calls: List[Callable[[int], Any]] = [
        lambda i: raw.search(q[i:i + 1], K),
        lambda i: store.search(q[i:i + 1], K),
        lambda i: rt.search(q[i:i + 1], K),
        lambda i: coll.search_batch(q[i:i + 1], K),
        lambda i: coll.search(q[i], K),
    ]
    # Each layer runs whole passes over the queries, as a user's loop would: interleaving layers
    # query by query lets the layers that share proxistore's index warm the CPU caches for each
    # other and leaves the raw library's graph cold (measured: raw 137 -> 222 µs). Pass order is
    # shuffled per round and there are two passes per layer.
    lat: List[List[float]] = [[] for _ in calls]
    perf = time.perf_counter
    rng = np.random.default_rng(seed)
    for c in np.concatenate([rng.permutation(len(calls)), rng.permutation(len(calls))]):
        fn, sink = calls[c], lat[c]
        for i in range(len(q)):
            t = perf()
            fn(i)
            sink.append(perf() - t)
    out["single"] = {name: (float(np.median(v)), rep.percentile(v, 99)) for name, v in zip(LAYERS, lat)}

    out["filtered"] = {}
    for label, (spec, truth, frac) in w.filters.items():
        t = time.perf_counter()
        fids, _ = coll.search_batch(q, K, filter=spec)
        secs = time.perf_counter() - t
        mask = np.array([m["module"] == spec["module"] for m in w.metadata])
        t = time.perf_counter()
        raw_f = raw.search_filtered(q, K, mask)
        raw_secs = time.perf_counter() - t
        out["filtered"][label] = {"recall": recall(rows_of(fids), truth), "raw_recall": recall(raw_f, truth),
                                  "seconds": secs, "raw_seconds": raw_secs, "fraction": frac}
    return out


def profile_search(b: Built, w: Workload) -> str:
    """cProfile of one pass of single-query ``search`` and of 3 ``search_batch`` calls."""
    q = w.queries
    buf = io.StringIO()
    for title, fn in (("search, one query per call", lambda: [b.coll.search(q[i], K) for i in range(len(q))]),
                      ("search_batch, all queries x 3", lambda: [b.coll.search_batch(q, K) for _ in range(3)])):
        pr = cProfile.Profile()
        pr.enable()
        fn()
        pr.disable()
        buf.write(f"\n--- cProfile: {title} (sorted by own time) ---\n")
        pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(18)
    return buf.getvalue()


# -- main ------------------------------------------------------------------------------------------

def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--repeats", type=int, default=5, help="query-timing rounds (default 5)")
    ap.add_argument("--builds", type=int, default=None,
                    help="index builds / ingests (default: --repeats; 1 with --scale); query rounds "
                         "are spread over them")
    ap.add_argument("--metric", choices=("cosine", "ip"), default="cosine")
    ap.add_argument("--rows", type=int, default=None, help="use only the first N base rows (smoke runs)")
    ap.add_argument("--scale", action="store_true", help="200k synthetic vectors instead of the dataset")
    ap.add_argument("--scale-rows", type=int, default=200_000)
    ap.add_argument("--scale-queries", type=int, default=1_000)
    ap.add_argument("--clusters", type=int, default=1_000)
    ap.add_argument("--seed", type=int, default=20240)
    ap.add_argument("--profile", action="store_true", help="print a cProfile of search / search_batch")
    ap.add_argument("--json", default=None, metavar="FILE", help="also write the figures to FILE")
    args = ap.parse_args(argv)
    if not args.scale and not (args.data / "base.parquet").exists():
        return rep.skip(f"stdlib_minilm dataset not found at {args.data} (it lives in ../shared/data next "
                        f"to the repository; a plain clone does not have it). --scale needs no data.")
    builds = args.builds or (1 if args.scale else args.repeats)
    builds = max(1, min(builds, args.repeats))

    import faiss
    import proxistore
    from proxistore.config import load_config
    from proxistore.plugins.viper.config import ViperSettings

    storage = load_config().storage
    library = ViperSettings.from_config(storage).build_backend
    params = {k: int(storage[k]) for k in ("hnsw_m", "hnsw_ef_construction", "hnsw_ef_search")}
    w = (synthetic(args.scale_rows, args.scale_queries, args.clusters, args.seed) if args.scale
         else load_dataset(args.data, args.rows))
    machine = rep.print_machine(f"faiss OpenMP threads {faiss.omp_get_max_threads()}")
    rep.console.print(w.describe)
    rep.console.print(f"proxistore {proxistore.__version__} default config: index {storage['index']}/"
                      f"{storage['index_backend']} M={params['hnsw_m']} efConstruction="
                      f"{params['hnsw_ef_construction']} efSearch={params['hnsw_ef_search']}, "
                      f"indexing_threshold={storage['indexing_threshold']}, compaction_target_rows="
                      f"{storage['compaction_target_rows']}, metric={args.metric}; raw: {library} HNSW "
                      f"built directly, inner product, same M/efConstruction/efSearch")
    rep.console.print(f"{builds} build round(s) (raw build + proxistore ingest), {args.repeats} query round(s); "
                      f"inserts of {BATCH} rows through the WAL (default sync_mode group)")

    per_round = [args.repeats // builds + (1 if b < args.repeats % builds else 0) for b in range(builds)]
    rounds: List[Dict[str, Any]] = []
    build_rows: List[Dict[str, Any]] = []
    profile_text = ""
    for bi in range(builds):
        raw = RawIndex(library, w.base, params)
        raw_build = raw.build_s
        b = build_proxistore(w, args.metric)
        try:
            build_rows.append({"raw_build_s": raw_build, "ingest_s": b.ingest_s, "to_indexed_s": b.to_indexed_s,
                               "flush_s": b.flush_s, "compact_s": b.compact_s, "at_last_ack": b.at_last_ack,
                               "after": b.after})
            rep.console.print(
                f"build {bi + 1}: raw {library} {raw_build:.2f} s | proxistore ingest {b.ingest_s:.2f} s "
                f"({len(w.ids) / b.ingest_s:,.0f} rows/s acknowledged); at the last ack: "
                f"{b.at_last_ack['flushes']} flushes, {b.at_last_ack['segments']} segments "
                f"({b.at_last_ack['indexed']} indexed), {b.at_last_ack['memtable_rows']} rows in the memtable; "
                f"then flush {b.flush_s:.2f} s + compact {b.compact_s:.2f} s (of which merging {b.after['compact_segments_in']} "
                f"segments / {b.after['compact_rows_in']:,} rows {b.after['compact_merge_s']:.2f} s; the rest waits for "
                f"background work in flight) -> {b.after['segments']} segment(s), "
                f"{b.after['indexed']} indexed, {b.after['exact']} exact, memtable {b.after['memtable_rows']} rows "
                f"(index builds {b.after['index_builds']}, reuses {b.after['index_reuses']})")
            for _ in range(per_round[bi]):
                rounds.append(query_round(raw, b, w, seed=len(rounds)))
            if args.profile and bi == builds - 1:
                profile_text = profile_search(b, w)
        finally:
            b.db.close()
            shutil.rmtree(b.root, ignore_errors=True)
            del raw

    figs = figures(w, rounds, build_rows, library)
    title = (f"proxistore (public API, default config, metric={args.metric}) vs raw {library} HNSW, "
             f"{w.name} {len(w.ids):,} rows; median (min–max) over {args.repeats} query rounds / {builds} builds")
    rep.print_figures(title, figs)
    print_layers(rounds, library)
    if profile_text:
        print(profile_text)
    rep.write_json(args.json, {"benchmark": "search", "workload": w.describe, "metric": args.metric,
                               "params": params, "raw_library": library, "machine": machine, "figures": figs, "rounds": rounds,
                               "builds": build_rows})
    return 0


def figures(w: Workload, rounds: List[Dict[str, Any]], builds: List[Dict[str, Any]], library: str) -> List[rep.Figure]:
    f = rep.figure
    med = lambda xs: float(np.median(xs))  # noqa: E731
    n, m = len(w.ids), len(w.queries)
    out = [
        f("recall@10 after compact", [r["recall"] for r in rounds], spec=".4f", goal=">= 0.99",
          detail=f"raw {library} recall@10 {med([r['raw_recall'] for r in rounds]):.4f}"),
        f("batch throughput (search_batch, all queries)", [r["batch"]["raw"] / r["batch"]["api"] for r in rounds],
          suffix="x", goal=">= 0.8x",
          detail=f"{m / med([r['batch']['api'] for r in rounds]):,.0f} vs {m / med([r['batch']['raw'] for r in rounds]):,.0f} "
                 f"queries/s raw; CollectionStore.search alone "
                 f"{med([r['batch']['raw'] / r['batch']['store'] for r in rounds]):.2f}x"),
        f("single-query latency (search), median", [r["single"]["search"][0] / r["single"]["raw"][0] for r in rounds],
          suffix="x", goal="<= 1.5x",
          detail=f"{med([r['single']['search'][0] for r in rounds]) * 1e6:,.0f} vs "
                 f"{med([r['single']['raw'][0] for r in rounds]) * 1e6:,.0f} µs raw"),
        f("single-query latency (search), p99", [r["single"]["search"][1] / r["single"]["raw"][1] for r in rounds],
          suffix="x", goal="<= 1.5x",
          detail=f"{med([r['single']['search'][1] for r in rounds]) * 1e6:,.0f} vs "
                 f"{med([r['single']['raw'][1] for r in rounds]) * 1e6:,.0f} µs raw"),
    ]
    for label in w.filters:
        vals = [r["filtered"][label] for r in rounds]
        out.append(f(f"filtered recall@10, module={label} ({vals[0]['fraction']:.1%} of rows)",
                     [v["recall"] for v in vals], spec=".4f", goal=">= 0.95",
                     detail=f"raw {library}, filter in the walk at efSearch {med([v['raw_recall'] for v in vals]):.4f}; "
                            f"{m / med([v['seconds'] for v in vals]):,.0f} vs "
                            f"{m / med([v['raw_seconds'] for v in vals]):,.0f} q/s raw filtered"))
    out.append(f("last ack -> fully indexed vs raw build", [b["to_indexed_s"] / b["raw_build_s"] for b in builds],
                 suffix="x", goal="<= 1.3x",
                 detail=f"{med([b['to_indexed_s'] for b in builds]):.2f} s (flush {med([b['flush_s'] for b in builds]):.2f} "
                        f"+ compact {med([b['compact_s'] for b in builds]):.2f}) vs {med([b['raw_build_s'] for b in builds]):.2f} s"))
    out.append(f("ingest throughput (acknowledged inserts)", [n / b["ingest_s"] for b in builds], spec=",.0f",
                 suffix=" rows/s", detail=f"{n:,} rows in {med([b['ingest_s'] for b in builds]):.2f} s"))
    out.append(f("first insert -> fully indexed vs raw build", [(b["ingest_s"] + b["to_indexed_s"]) / b["raw_build_s"]
                                                                for b in builds], suffix="x",
                 detail=f"{med([b['ingest_s'] + b['to_indexed_s'] for b in builds]):.2f} s vs "
                        f"{med([b['raw_build_s'] for b in builds]):.2f} s; raw {library} adds "
                        f"{n / med([b['raw_build_s'] for b in builds]):,.0f} rows/s"))
    return out


def print_layers(rounds: List[Dict[str, Any]], library: str) -> None:
    """Where a single query's time goes: each layer's median and p99, and what it adds."""
    from rich.table import Table
    table = Table(title="single-query latency by layer (µs; median of per-round medians / p99s, min–max)",
                  title_justify="left")
    for col in ("layer", "median µs", "p99 µs", "adds to the layer above (median µs)", "what the layer adds"):
        table.add_column(col, overflow="fold")
    what = {
        "raw": f"{library} HNSW search, baseline",
        "CollectionStore.search": f"viper: argument checks, segment snapshot, planner, {library}, ids/LSNs",
        "core read path": "core: memtable search, superseded check, merge of sources",
        "search_batch (1 query)": "public API: validation (finite check), filter compile",
        "search": "metadata read along with the store's hits (CollectionStore.search_with_metadata; memtables and "
                  "CollectionStore.metadata when a memtable holds rows; skipped when the collection has no metadata), "
                  "Hit objects",
    }
    prev = None
    for name in LAYERS:
        meds = [r["single"][name][0] * 1e6 for r in rounds]
        p99s = [r["single"][name][1] * 1e6 for r in rounds]
        m = rep.spread(meds)
        add = "" if prev is None else f"{m.median - prev:+,.0f}"
        table.add_row(name, m.fmt(",.0f"), rep.spread(p99s).fmt(",.0f"), add, what[name])
        prev = m.median
    rep.console.print(table)


if __name__ == "__main__":
    sys.exit(main())
