"""Peers, side by side (issue 6, item 5): proxistore vs the embedded vector stores a user would
pick instead, on the same data, the same queries and the same durability probe, in one run.

Systems (each peer is optional: ``pip install '.[peers]'``; a peer that is not importable is
skipped with a ``SKIP`` line, proxistore always runs):

  proxistore   ``proxistore.open(dir)`` with the default config (WAL sync_mode ``group``: fsync
               before each acknowledgement), ``create_collection(dim, metric="cosine")``,
               ``col.insert`` of 1,000 rows; indexed by ``db.flush(); db.compact()``.
  chromadb     ``chromadb.PersistentClient(path)``, HNSW with ``space = cosine``, ``col.add``;
               the HNSW index is updated on insert.
  lancedb      ``lancedb.connect(path)``, ``table.add`` of an Arrow batch (a new table version
               per batch); indexed by ``create_index("vector", IvfPq(distance_type="cosine"))``.
  lancedb_fsync  lancedb as above, then every file the ``add`` wrote, and each directory that
               gained an entry, fsynced before the batch counts as acknowledged: what LanceDB's
               appends cost made as durable as proxistore's. Insert throughput only.
  qdrant       ``QdrantClient(path=...)`` (local mode, pure Python, no server), ``upsert`` of a
               ``Batch``; local mode searches by brute force (numpy): no index, no effort knob.

Per system (rows = ``--rows``, batches of 1,000, 384-d, metric cosine):

  insert/s          acknowledged rows / wall time from the first insert call to the last ack
  to indexed        last ack -> searchable through an ANN index (0 where the index is built on insert)
  p50/p99, recall   single-query latency (one query a call, k = 10) over the queries; recall@10
                    against exact neighbours (numpy); first at the system's default setting, then
                    up its search-effort knob until recall@10 reaches the target (0.99 for
                    proxistore, 0.95 for the peers)
  reopen            a fresh process: from the open call to the first search's answer (imports
                    excluded; the OS page cache is warm)
  lost after kill   a writer process inserts batches and prints ``ack N`` after each acknowledged
                    batch; it is SIGKILLed at a random moment after >= 5 acks (``--kills`` times);
                    the store is reopened and every acknowledged id looked up

Ratios are taken within the same run: proxistore insert/s / LanceDB's and / Chroma's, proxistore
p50 (at recall@10 >= 0.99) / Chroma's p50 (at >= 0.95). The goals of the issue are >= 2x, >= 50x
and <= 0.2x.

Data: ``--rows`` <= 27,473 uses the real stdlib_minilm MiniLM embeddings
(``../shared/data/stdlib_minilm/base.parquet``, first N rows) and its ``dev_queries.parquet``;
otherwise seeded synthetic clustered unit vectors (``proxistore.bench.data.synthetic_vectors``,
1,000 Gaussian clusters, spread 1.0, seed 42, queries held out of the same distribution).

Usage: python benchmarks/peers.py [--rows 100000] [--queries 500] [--kills 3] [--rounds 1]
                                  [--only proxistore,chromadb,lancedb,qdrant] [--json FILE] [--profile]
       python benchmarks/peers.py --rows 5000 --kills 1       # a smoke run, about a minute
"""
from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

REPO = HERE.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "stdlib_minilm"
DIM = 384
K = 10
BATCH = 1000
NAME = "bench"                      # collection / table name (Chroma wants >= 3 characters)
SYSTEMS = ("proxistore", "chromadb", "lancedb", "lancedb_fsync", "qdrant")
PACKAGES = {"proxistore": "proxistore", "chromadb": "chromadb", "lancedb": "lancedb", "lancedb_fsync": "lancedb",
            "qdrant": "qdrant-client"}
TARGET = {"proxistore": 0.99, "chromadb": 0.95, "lancedb": 0.95, "lancedb_fsync": 0.95, "qdrant": 0.95}
KILL_MIN_ACKS = 5
KILL_MAX_ACKS = 25                  # the writer is killed after a random number of acks in [5, 25]
PROBE_BATCHES = 40                  # batches the writer has to write (it never gets to the end)


# ==================================================================================================
# the systems: one adapter each, used by the parent (measurements) and by _peer_child.py
# (the writer of the durability probe, and the reopen timing)
# ==================================================================================================

class Adapter:
    """One store as a user drives it. ``ids`` are row numbers (ints); each store gets them in the
    form it wants (strings for proxistore and Chroma)."""

    name = ""
    durability = ""                 # what an acknowledgement means, in words
    index_note = ""
    effort_note = ""
    insert_only = False             # measure acknowledged inserts only (no index, search, reopen, kills)

    def create(self, path: str) -> None: ...
    def open(self, path: str) -> None: ...
    def insert(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...
    def make_indexed(self) -> Dict[str, Any]:
        return {}
    def efforts(self) -> List[Optional[Any]]:
        """The search-effort settings to try, default (None) first, in increasing effort."""
        return [None]
    def set_effort(self, effort: Optional[Any]) -> None: ...
    def search(self, q: np.ndarray, k: int) -> List[int]: ...
    def present(self, ids: np.ndarray) -> np.ndarray:
        """A boolean per id: is it in the store."""
        raise NotImplementedError
    def close(self) -> None: ...
    def describe_effort(self, effort: Optional[Any]) -> str:
        return "default" if effort is None else str(effort)


class ProxistoreAdapter(Adapter):
    name = "proxistore"
    durability = "WAL sync_mode group (default): fsync before each ack"
    index_note = "db.flush() + db.compact() (+ wait until stats() shows every segment indexed)"
    effort_note = "search(..., ef=N) (HNSW efSearch; default storage.viper.hnsw_ef_search)"

    def __init__(self) -> None:
        self.db = None
        self.col = None
        self.ef: Optional[int] = None

    def create(self, path: str) -> None:
        import proxistore
        self.db = proxistore.open(path)
        self.col = self.db.create_collection(NAME, dim=DIM, metric="cosine")

    def open(self, path: str) -> None:
        import proxistore
        self.db = proxistore.open(path)
        self.col = self.db.collection(NAME)

    def insert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.col.insert([str(i) for i in ids.tolist()], vectors)

    def make_indexed(self) -> Dict[str, Any]:
        db = self.db
        t0 = time.perf_counter()
        at_ack = db.stats()["collections"][NAME]
        db.flush()
        t_flush = time.perf_counter()
        db.compact()
        t_compact = time.perf_counter()
        deadline = time.monotonic() + 120
        while True:
            st = db.stats()["collections"][NAME]
            s = st["storage"]
            pending = st["memtable"]["rows"] > 0 or (
                s["exact_segments"] > 0 and s["rows"] >= db.config.storage["indexing_threshold"])
            if not pending or time.monotonic() > deadline:
                break
            db.wait_idle(1.0)
        return {"flush_s": t_flush - t0, "compact_s": t_compact - t_flush,
                "at_last_ack": {"segments": at_ack["storage"]["segments"],
                                "memtable_rows": at_ack["memtable"]["rows"],
                                "flushes": at_ack["flushes"]["total"]},
                "after": {"segments": s["segments"], "indexed": s["indexed_segments"],
                          "exact": s["exact_segments"], "index_kinds": s.get("index_kinds")}}

    def default_ef(self) -> int:
        return int(self.db.config.storage["hnsw_ef_search"])

    def efforts(self) -> List[Optional[Any]]:
        d = self.default_ef()
        return [None] + [ef for ef in (128, 256, 512) if ef > d]

    def set_effort(self, effort: Optional[Any]) -> None:
        self.ef = effort

    def describe_effort(self, effort: Optional[Any]) -> str:
        return f"ef {self.default_ef()} (default)" if effort is None else f"ef {effort}"

    def search(self, q: np.ndarray, k: int) -> List[int]:
        return [int(h.id) for h in self.col.search(q, k=k, ef=self.ef)]

    def present(self, ids: np.ndarray) -> np.ndarray:
        recs = self.col.get([str(i) for i in ids.tolist()])
        return np.array([r is not None for r in recs], dtype=bool)

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
        self.db = self.col = None


class ChromaAdapter(Adapter):
    name = "chromadb"
    durability = ("each add is a SQLite transaction (rollback journal, synchronous FULL): "
                  "fsynced before add() returns")
    index_note = "none beyond the inserts: the HNSW index is updated on insert"
    effort_note = "collection configuration hnsw.ef_search (default 100)"

    def __init__(self) -> None:
        self.client = None
        self.col = None

    def _client(self, path: str) -> Any:
        import chromadb
        from chromadb.config import Settings
        return chromadb.PersistentClient(path=path, settings=Settings(anonymized_telemetry=False))

    def create(self, path: str) -> None:
        self.client = self._client(path)
        self.col = self.client.create_collection(NAME, configuration={"hnsw": {"space": "cosine"}},
                                                 embedding_function=None)

    def open(self, path: str) -> None:
        self.client = self._client(path)
        self.col = self.client.get_collection(NAME, embedding_function=None)

    def insert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.col.add(ids=[str(i) for i in ids.tolist()], embeddings=vectors)

    def make_indexed(self) -> Dict[str, Any]:
        return {"count": self.col.count()}

    def efforts(self) -> List[Optional[Any]]:
        return [None, 200, 400, 800]

    def set_effort(self, effort: Optional[Any]) -> None:
        if effort is not None:
            self.col.modify(configuration={"hnsw": {"ef_search": int(effort)}})

    def describe_effort(self, effort: Optional[Any]) -> str:
        if effort is None:
            ef = (self.col.configuration or {}).get("hnsw", {}).get("ef_search", "?") if self.col else "?"
            return f"ef_search {ef} (default)"
        return f"ef_search {effort}"

    def search(self, q: np.ndarray, k: int) -> List[int]:
        r = self.col.query(query_embeddings=q.reshape(1, -1), n_results=k, include=["distances"])
        return [int(i) for i in r["ids"][0]]

    def present(self, ids: np.ndarray) -> np.ndarray:
        found = set(self.col.get(ids=[str(i) for i in ids.tolist()], include=[])["ids"])
        return np.array([str(i) in found for i in ids.tolist()], dtype=bool)

    def close(self) -> None:
        if self.client is not None:
            try:
                self.client.close()
            except Exception:  # noqa: BLE001 - older clients have no close()
                pass
            try:
                self.client.clear_system_cache()
            except Exception:  # noqa: BLE001
                pass
        self.client = self.col = None


class LanceAdapter(Adapter):
    name = "lancedb"
    durability = "each add() commits a new table version (data files + manifest) without fsync"
    index_note = "table.create_index('vector', config=IvfPq(distance_type='cosine')) with its defaults"
    effort_note = "query nprobes / refine_factor (defaults of lancedb)"

    def __init__(self) -> None:
        self.db = None
        self.tbl = None
        self.effort: Optional[Tuple[int, Optional[int]]] = None

    def _schema(self) -> Any:
        import pyarrow as pa
        return pa.schema([pa.field("id", pa.int64()), pa.field("vector", pa.list_(pa.float32(), DIM))])

    def create(self, path: str) -> None:
        import lancedb
        self.db = lancedb.connect(path)
        self.tbl = self.db.create_table(NAME, schema=self._schema())

    def open(self, path: str) -> None:
        import lancedb
        self.db = lancedb.connect(path)
        self.tbl = self.db.open_table(NAME)

    def insert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        import pyarrow as pa
        vec = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(vectors, np.float32).ravel()), DIM)
        self.tbl.add(pa.Table.from_arrays([pa.array(ids, pa.int64()), vec], schema=self._schema()))

    def make_indexed(self) -> Dict[str, Any]:
        from lancedb.index import IvfPq
        self.tbl.create_index("vector", config=IvfPq(distance_type="cosine"))
        info: Dict[str, Any] = {}
        try:
            idx = self.tbl.list_indices()[0]
            det = dict(idx.index_details or {})
            info.update(index=idx.index_type, indexed_rows=idx.num_indexed_rows,
                        unindexed_rows=idx.num_unindexed_rows,
                        pq_sub_vectors=(det.get("compression") or {}).get("num_sub_vectors"))
            info["fragments"] = self.tbl.stats()["fragment_stats"]["num_fragments"]
        except Exception as exc:  # noqa: BLE001 - informational only
            info["stats_error"] = repr(exc)
        return info

    def efforts(self) -> List[Optional[Any]]:
        return [None, (50, None), (50, 10), (100, 20), (200, 50)]

    def set_effort(self, effort: Optional[Any]) -> None:
        self.effort = effort

    def describe_effort(self, effort: Optional[Any]) -> str:
        if effort is None:
            return "IVF_PQ, default nprobes, no refine"
        nprobes, refine = effort
        return f"nprobes {nprobes}" + (f", refine_factor {refine}" if refine else "")

    def search(self, q: np.ndarray, k: int) -> List[int]:
        b = self.tbl.search(q, vector_column_name="vector").distance_type("cosine").limit(k).select(["id", "_distance"])
        if self.effort is not None:
            nprobes, refine = self.effort
            b = b.nprobes(nprobes)
            if refine:
                b = b.refine_factor(refine)
        return b.to_arrow().column("id").to_pylist()

    def present(self, ids: np.ndarray) -> np.ndarray:
        have = set(self.tbl.to_arrow().column("id").to_pylist())
        return np.array([i in have for i in ids.tolist()], dtype=bool)

    def close(self) -> None:
        self.db = self.tbl = None


class LanceFsyncAdapter(LanceAdapter):
    """LanceDB's appends made durable: after each ``add``, every file it wrote and every
    directory that gained an entry are fsynced (the comparison the owners were offered for
    issue 6's "2x LanceDB")."""
    name = "lancedb_fsync"
    durability = ("each add() commits a new table version; then every new file and each directory "
                  "that gained one is fsynced before the batch counts as acknowledged")
    index_note = "— (inserts only)"
    effort_note = "—"
    insert_only = True

    def create(self, path: str) -> None:
        super().create(path)
        self._track(path)

    def open(self, path: str) -> None:
        super().open(path)
        self._track(path)

    def _track(self, path: str) -> None:
        self.root = path
        self.synced: set = set()
        self._sync_new()

    def insert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        super().insert(ids, vectors)
        self._sync_new()

    def _sync_new(self) -> None:
        grew = set()
        for where, dirs, files in os.walk(self.root):
            for entry in dirs + files:
                path = os.path.join(where, entry)
                if path not in self.synced:
                    _fsync_path(path)
                    self.synced.add(path)
                    grew.add(where)
        for where in grew:
            _fsync_path(where)


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class QdrantAdapter(Adapter):
    name = "qdrant"
    durability = ("local mode persists each point in its own SQLite transaction (Python sqlite3, "
                  "rollback journal, synchronous FULL): fsynced before upsert() returns")
    index_note = "none: local mode keeps the vectors in numpy and searches by brute force"
    effort_note = "none: local mode is always exact (hnsw_ef / exact are ignored)"

    def __init__(self) -> None:
        self.client = None

    def _client(self, path: str) -> Any:
        from qdrant_client import QdrantClient
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return QdrantClient(path=path)

    def create(self, path: str) -> None:
        from qdrant_client import models
        self.client = self._client(path)
        self.client.create_collection(NAME, vectors_config=models.VectorParams(size=DIM,
                                                                                distance=models.Distance.COSINE))

    def open(self, path: str) -> None:
        self.client = self._client(path)

    def insert(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        from qdrant_client import models
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")     # "local mode is not recommended for > 20,000 points"
            self.client.upsert(NAME, points=models.Batch(ids=ids.tolist(), vectors=vectors.tolist()), wait=True)

    def make_indexed(self) -> Dict[str, Any]:
        return {"count": self.client.count(NAME).count}

    def describe_effort(self, effort: Optional[Any]) -> str:
        return "exact (local mode)"

    def search(self, q: np.ndarray, k: int) -> List[int]:
        return [int(p.id) for p in self.client.query_points(NAME, query=q.tolist(), limit=k).points]

    def present(self, ids: np.ndarray) -> np.ndarray:
        found = {int(p.id) for p in self.client.retrieve(NAME, ids=ids.tolist(), with_payload=False,
                                                          with_vectors=False)}
        return np.array([i in found for i in ids.tolist()], dtype=bool)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
        self.client = None


ADAPTERS: Dict[str, Callable[[], Adapter]] = {"proxistore": ProxistoreAdapter, "chromadb": ChromaAdapter,
                                              "lancedb": LanceAdapter, "lancedb_fsync": LanceFsyncAdapter,
                                              "qdrant": QdrantAdapter}
IMPORTS = {"proxistore": "proxistore", "chromadb": "chromadb", "lancedb": "lancedb", "lancedb_fsync": "lancedb",
           "qdrant": "qdrant_client"}


def import_system(name: str) -> None:
    __import__(IMPORTS[name])
    if name.startswith("lancedb"):
        import lancedb.index  # noqa: F401
    if name == "qdrant":
        import qdrant_client.models  # noqa: F401


# ==================================================================================================
# the parent: data, measurements, report
# ==================================================================================================

@dataclass
class Data:
    vectors: np.ndarray             # (n, DIM) float32, unit rows
    queries: np.ndarray             # (m, DIM) float32, unit rows
    truth: np.ndarray               # (m, K) row numbers of the exact neighbours
    describe: str


def load_data(rows: int, nq: Optional[int], data_dir: Path, seed: int) -> Data:
    from proxistore.bench.data import exact_neighbours, synthetic_vectors
    from proxistore.distance import normalize

    real = data_dir / "base.parquet"
    if real.exists():
        import pyarrow.parquet as pq
        total = pq.read_metadata(real).num_rows
    else:
        total = 0
    if rows <= total:
        from proxistore.cli.sources import parquet_vectors
        import pyarrow.parquet as pq
        base = parquet_vectors(pq.read_table(real, columns=["vector"]).column("vector"), str(real))[:rows]
        queries = parquet_vectors(pq.read_table(data_dir / "dev_queries.parquet", columns=["vector"])
                                  .column("vector"), "dev_queries.parquet")
        if nq:
            queries = queries[:nq]
        base, queries = normalize(np.ascontiguousarray(base)), normalize(np.ascontiguousarray(queries))
        what = (f"stdlib_minilm: first {rows:,} of {total:,} rows x {DIM} (real MiniLM docstring embeddings, "
                f"unit length), {len(queries)} dev queries")
    else:
        nq = nq or 500
        allv, _ = synthetic_vectors(rows + nq, DIM, "cosine", seed, 1000, 1.0)
        base, queries = np.ascontiguousarray(allv[:rows]), np.ascontiguousarray(allv[rows:])
        what = (f"synthetic: {rows:,} x {DIM} unit vectors (proxistore.bench.data.synthetic_vectors: 1,000 "
                f"Gaussian clusters, spread 1.0, seed {seed}), {nq} held-out queries of the same distribution")
    truth, _ = exact_neighbours(queries, base, K, "cosine")
    return Data(base, queries, truth, what + f"; exact top-{K} by numpy; metric cosine; batches of {BATCH:,}")


def recall(found: Sequence[Sequence[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[:K]) & set(t.tolist())) / K for f, t in zip(found, truth)]))


@dataclass
class SearchRow:
    setting: str
    recall: float
    p50_ms: List[float]             # one per timed pass
    p99_ms: List[float]
    target: float

    @property
    def reaches(self) -> bool:
        return self.recall >= self.target


@dataclass
class Result:
    system: str
    version: str
    rounds: List[Dict[str, Any]] = field(default_factory=list)   # one per build (or ingest-only) round
    search: List[SearchRow] = field(default_factory=list)         # from the first round's build
    reopen_s: List[float] = field(default_factory=list)
    kills: List[Dict[str, Any]] = field(default_factory=list)
    notes: Dict[str, str] = field(default_factory=dict)
    profile: str = ""


def med(xs: Sequence[float]) -> float:
    return float(np.median(np.asarray(xs, dtype=float))) if len(xs) else float("nan")


def spread_txt(xs: Sequence[float], spec: str, suffix: str = "") -> str:
    if not xs:
        return "—"
    if len(xs) == 1:
        return f"{xs[0]:{spec}}{suffix}"
    return f"{med(xs):{spec}}{suffix} ({min(xs):{spec}}–{max(xs):{spec}})"


def ingest(ad: Adapter, d: Data) -> Tuple[float, List[float]]:
    """Insert every row in batches; wall time first call -> last ack, and each batch's latency."""
    n = len(d.vectors)
    lat = []
    t0 = time.perf_counter()
    for s in range(0, n, BATCH):
        t = time.perf_counter()
        ad.insert(np.arange(s, min(n, s + BATCH)), d.vectors[s:s + BATCH])
        lat.append(time.perf_counter() - t)
    return time.perf_counter() - t0, lat


def single_query_pass(ad: Adapter, queries: np.ndarray) -> Tuple[List[List[int]], np.ndarray]:
    found, times = [], np.empty(len(queries))
    for i, q in enumerate(queries):
        t = time.perf_counter()
        found.append(ad.search(q, K))
        times[i] = time.perf_counter() - t
    return found, times


def measure_search(ad: Adapter, d: Data, passes: int, console: Any) -> List[SearchRow]:
    rows = []
    target = TARGET[ad.name]
    for effort in ad.efforts():
        ad.set_effort(effort)
        found, _ = single_query_pass(ad, d.queries)           # recall pass, also the warm-up
        r = recall(found, d.truth)
        p50, p99 = [], []
        for _ in range(passes):
            _, times = single_query_pass(ad, d.queries)
            p50.append(float(np.percentile(times, 50)) * 1e3)
            p99.append(float(np.percentile(times, 99)) * 1e3)
        row = SearchRow(ad.describe_effort(effort), r, p50, p99, target)
        rows.append(row)
        console.print(f"  {ad.name} search ({row.setting}): recall@{K} {r:.4f}, p50 {spread_txt(p50, '.3f', ' ms')}, "
                      f"p99 {spread_txt(p99, '.3f', ' ms')}")
        if r >= target:
            break
    ad.set_effort(None)
    return rows


def child_cmd(*args: str) -> List[str]:
    return [sys.executable, str(HERE / "_peer_child.py"), *args]


def reopen_time(system: str, path: str, query_file: str) -> float:
    out = subprocess.run(child_cmd("reopen", system, path, query_file), capture_output=True, text=True,
                         timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"reopen child for {system} failed: {out.stderr[-2000:]}")
    return float(json.loads(out.stdout.strip().splitlines()[-1])["open_to_first_search_s"])


def kill_probe(system: str, work: Path, vec_file: str, rng: np.random.Generator, console: Any,
               i: int) -> Dict[str, Any]:
    """One writer process, SIGKILLed after a random number (>= 5) of acks at a random moment
    inside the next batch; then reopen here and look up every acknowledged id."""
    path = str(work / f"kill-{system}-{i}")
    target = int(rng.integers(KILL_MIN_ACKS, KILL_MAX_ACKS + 1))
    proc = subprocess.Popen(child_cmd("write", system, path, vec_file), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, bufsize=1)
    acks: List[int] = []
    ack_times: List[float] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("ack "):
            acks.append(int(line.split()[1]))
            ack_times.append(time.perf_counter())
            if len(acks) >= target:
                break
    else:
        proc.wait()
        raise RuntimeError(f"{system} writer ended before {target} acks: {proc.stderr.read()[-2000:]}")
    gaps = np.diff(ack_times[1:]) if len(ack_times) > 2 else np.array([0.01])
    delay = float(rng.uniform(0, float(np.median(gaps))))   # a random moment inside the next batch
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    rest, _ = proc.communicate()
    acks += [int(line.split()[1]) for line in rest.splitlines() if line.startswith("ack ")]
    n_acked = len(acks)
    ad = ADAPTERS[system]()
    ad.open(path)
    acked_ids = np.arange(n_acked * BATCH)
    present = ad.present(acked_ids) if n_acked else np.zeros(0, dtype=bool)
    inflight = ad.present(np.arange(n_acked * BATCH, (n_acked + 1) * BATCH))
    ad.close()
    lost = int((~present).sum())
    inflight_n = int(inflight.sum())
    state = "none" if inflight_n == 0 else ("all" if inflight_n == BATCH else f"partial ({inflight_n})")
    console.print(f"  {system} kill {i + 1}: SIGKILL {delay * 1e3:.1f} ms after ack {n_acked} "
                  f"(returncode {proc.returncode}); acknowledged {n_acked * BATCH:,} rows, lost {lost:,}; "
                  f"in-flight batch present: {state}")
    shutil.rmtree(path, ignore_errors=True)
    return {"acked_batches": n_acked, "acked_rows": n_acked * BATCH, "lost": lost, "delay_ms": delay * 1e3,
            "inflight_present": inflight_n, "returncode": proc.returncode}


def profile_proxistore(d: Data, work: Path) -> str:
    """cProfile of proxistore's ingest (all batches) and of one pass of single queries."""
    buf = io.StringIO()
    ad = ProxistoreAdapter()
    path = str(work / "profile-proxistore")
    ad.create(path)
    pr = cProfile.Profile()
    pr.enable()
    ingest(ad, d)
    pr.disable()
    buf.write("\n--- cProfile: proxistore ingest (sorted by own time) ---\n")
    pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(22)
    buf.write("\n--- cProfile: proxistore ingest (cumulative) ---\n")
    pstats.Stats(pr, stream=buf).sort_stats("cumulative").print_stats(30)
    ad.make_indexed()
    single_query_pass(ad, d.queries)
    pr = cProfile.Profile()
    pr.enable()
    single_query_pass(ad, d.queries)
    pr.disable()
    buf.write("\n--- cProfile: proxistore single-query pass (sorted by own time) ---\n")
    pstats.Stats(pr, stream=buf).sort_stats("tottime").print_stats(18)
    ad.close()
    shutil.rmtree(path, ignore_errors=True)
    return buf.getvalue()


def compact_info(info: Dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.2f}"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} {fmt(x)}" for k, x in v.items()) + "}"
        return str(v)
    return ", ".join(f"{k} {fmt(v)}" for k, v in info.items())


def run_system(system: str, d: Data, args: argparse.Namespace, work: Path, files: Dict[str, str],
               rng: np.random.Generator, console: Any) -> Result:
    res = Result(system, importlib_metadata.version(PACKAGES[system]))
    proto = ADAPTERS[system]()
    res.notes = {"durability": proto.durability, "index": proto.index_note, "effort": proto.effort_note}
    for rnd in range(args.rounds):
        path = str(work / f"{system}-{rnd}")
        ad = ADAPTERS[system]()
        ad.create(path)
        ingest_s, lat = ingest(ad, d)
        t = time.perf_counter()
        info = {} if ad.insert_only else ad.make_indexed()
        to_indexed = time.perf_counter() - t
        n = len(d.vectors)
        r = {"ingest_s": ingest_s, "insert_per_s": n / ingest_s, "to_indexed_s": to_indexed,
             "batch_p50_ms": float(np.percentile(lat, 50)) * 1e3, "batch_p99_ms": float(np.percentile(lat, 99)) * 1e3,
             "info": info}
        res.rounds.append(r)
        console.print(f"  {system} round {rnd + 1}: {n:,} rows in {ingest_s:.2f} s = {n / ingest_s:,.0f} rows/s "
                      f"(batch p50 {r['batch_p50_ms']:.1f} ms, p99 {r['batch_p99_ms']:.1f} ms); "
                      f"to indexed {to_indexed:.2f} s ({compact_info(info)})")
        if rnd == 0 and not ad.insert_only:
            res.search = measure_search(ad, d, args.passes, console)
        ad.close()
        del ad
        gc.collect()
        if rnd == 0 and not proto.insert_only:
            for _ in range(args.reopens):
                res.reopen_s.append(reopen_time(system, path, files["query"]))
            console.print(f"  {system} reopen (open -> first search, fresh process): "
                          f"{spread_txt(res.reopen_s, '.3f', ' s')}")
        shutil.rmtree(path, ignore_errors=True)
    for i in range(0 if proto.insert_only else args.kills):
        res.kills.append(kill_probe(system, work, files["probe"], rng, console, i))
    if args.profile and system == "proxistore":
        res.profile = profile_proxistore(d, work)
    return res


def first_reaching(res: Result) -> Optional[SearchRow]:
    return next((s for s in res.search if s.reaches), None)


def report(results: Dict[str, Result], console: Any) -> Tuple[List[Dict[str, Any]], List[Dict[str, Any]]]:
    from rich.table import Table

    t = Table(title="Side by side (medians; (min–max) over rounds or passes)", title_justify="left")
    for col in ("system", "version", "insert/s (acked)", "to indexed", "search setting", f"recall@{K}",
                "p50", "p99", "reopen", "lost after SIGKILL"):
        t.add_column(col, overflow="fold")
    rows_out = []
    for name, res in results.items():
        ins = [r["insert_per_s"] for r in res.rounds]
        idx = [r["to_indexed_s"] for r in res.rounds]
        lost = sum(k["lost"] for k in res.kills)
        acked = sum(k["acked_rows"] for k in res.kills)
        for j, s in enumerate(res.search):
            first = j == 0
            t.add_row(name if first else "", res.version if first else "",
                      spread_txt(ins, ",.0f") if first else "", spread_txt(idx, ".2f", " s") if first else "",
                      s.setting, f"{s.recall:.4f}", spread_txt(s.p50_ms, ".3f", " ms"),
                      spread_txt(s.p99_ms, ".3f", " ms"),
                      spread_txt(res.reopen_s, ".3f", " s") if first else "",
                      (f"{lost:,} of {acked:,} in {len(res.kills)} kills" if res.kills else "—") if first else "",
                      style=None if s.reaches else "dim")
            rows_out.append({"system": name, "setting": s.setting, "recall": s.recall,
                             "p50_ms": med(s.p50_ms), "p99_ms": med(s.p99_ms)})
        if not res.search:             # inserts only
            t.add_row(name, res.version, spread_txt(ins, ",.0f"), "—", "—", "—", "—", "—", "—", "—")
    console.print(t)

    d = Table(title="What an acknowledgement means, and the index", title_justify="left")
    for col in ("system", "acknowledged write", "index / time to indexed", "search-effort knob"):
        d.add_column(col, overflow="fold")
    for name, res in results.items():
        d.add_row(name, res.notes["durability"], res.notes["index"], res.notes["effort"])
    console.print(d)

    # ratios and goals, within this run
    goals = []
    px = results.get("proxistore")

    def ins(name: str) -> Optional[float]:
        r = results.get(name)
        return med([x["insert_per_s"] for x in r.rounds]) if r else None

    g = Table(title="Ratios in this run, and the goals of the issue", title_justify="left")
    for col in ("figure", "measured", "goal", "verdict"):
        g.add_column(col, overflow="fold")
    if px:
        for peer, label, want in (("lancedb", "LanceDB appends", 2.0), ("chromadb", "Chroma inserts", 50.0)):
            if peer not in results:
                g.add_row(f"proxistore insert/s / {label}", "peer not run", f">= {want:g}x", "—")
                continue
            ratio = ins("proxistore") / ins(peer)
            met = ratio >= want
            g.add_row(f"proxistore durable insert/s / {label}",
                      f"{ratio:.2f}x ({ins('proxistore'):,.0f} vs {ins(peer):,.0f} rows/s)", f">= {want:g}x",
                      "met" if met else "NOT MET", style="green" if met else "bold red")
            goals.append({"goal": f"insert/s vs {peer} >= {want:g}x", "ratio": ratio, "met": met})
        if "chromadb" in results:
            pr, cr = first_reaching(px), first_reaching(results["chromadb"])
            if pr is None or cr is None:
                shown = (f"proxistore best recall {max(s.recall for s in px.search):.4f}" if pr is None
                         else f"Chroma best recall {max(s.recall for s in results['chromadb'].search):.4f}")
                g.add_row("proxistore p50 at recall >= 0.99 / Chroma p50 at >= 0.95", shown, "<= 0.2x", "NOT MET",
                          style="bold red")
                goals.append({"goal": "p50 vs chromadb <= 0.2x at recall >= 0.99", "ratio": None, "met": False})
            else:
                ratio = med(pr.p50_ms) / med(cr.p50_ms)
                met = ratio <= 0.2 and pr.recall >= 0.99
                g.add_row("proxistore p50 at recall@10 >= 0.99 / Chroma p50 at >= 0.95",
                          f"{ratio:.2f}x ({med(pr.p50_ms):.3f} ms at {pr.setting}, recall {pr.recall:.4f}; vs "
                          f"{med(cr.p50_ms):.3f} ms at {cr.setting}, recall {cr.recall:.4f})", "<= 0.2x",
                          "met" if met else "NOT MET", style="green" if met else "bold red")
                goals.append({"goal": "p50 vs chromadb <= 0.2x at recall >= 0.99", "ratio": ratio, "met": met})
        if "lancedb_fsync" in results:
            g.add_row("(information) proxistore durable insert/s / LanceDB appends with each batch's files fsynced",
                      f"{ins('proxistore') / ins('lancedb_fsync'):.2f}x ({ins('proxistore'):,.0f} vs "
                      f"{ins('lancedb_fsync'):,.0f} rows/s)", "", "")
        for peer in results:
            if peer in ("proxistore", "lancedb_fsync"):
                continue
            if peer == "qdrant":
                g.add_row(f"(information) proxistore insert/s / {peer}", f"{ins('proxistore') / ins(peer):.2f}x", "", "")
            pr, qr = first_reaching(px), first_reaching(results[peer])
            if pr and qr and peer != "chromadb":
                g.add_row(f"(information) proxistore p50 / {peer} p50, each at its target recall",
                          f"{med(pr.p50_ms) / med(qr.p50_ms):.3f}x ({med(pr.p50_ms):.3f} vs {med(qr.p50_ms):.3f} ms)",
                          "", "")
    console.print(g)
    return rows_out, goals


def versions() -> Dict[str, str]:
    out = {}
    for pkg in ("proxistore", "chromadb", "lancedb", "pylance", "qdrant-client", "numpy", "pyarrow", "faiss-cpu",
                "hnswlib", "fastavro"):
        try:
            out[pkg] = importlib_metadata.version(pkg)
        except importlib_metadata.PackageNotFoundError:
            pass
    return out


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=None,
                    help="queries (default: the 500 dev queries for the real data, 500 held out for synthetic)")
    ap.add_argument("--kills", type=int, default=3, help="SIGKILLs of a writer per system (default 3)")
    ap.add_argument("--rounds", type=int, default=1, help="ingest + index rounds per system (default 1)")
    ap.add_argument("--passes", type=int, default=3, help="timed single-query passes per setting (default 3)")
    ap.add_argument("--reopens", type=int, default=3, help="reopen timings per system (default 3)")
    ap.add_argument("--only", default=",".join(SYSTEMS), help="comma-separated: " + ",".join(SYSTEMS))
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--profile", action="store_true", help="add a cProfile of proxistore's ingest and queries")
    ap.add_argument("--json", default=None, metavar="FILE", help="also write every figure to FILE")
    args = ap.parse_args(argv)

    import _report as rep
    console = rep.console
    wanted = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in wanted if s not in SYSTEMS]
    if bad:
        ap.error(f"unknown system(s) {bad}; choose from {', '.join(SYSTEMS)}")
    if "proxistore" not in wanted:
        wanted.insert(0, "proxistore")
    present = []
    for s in [x for x in SYSTEMS if x in wanted]:
        try:
            import_system(s)
            present.append(s)
        except ImportError as exc:
            print(f"SKIP {s}: not installed (pip install '.[peers]') [{exc}]")

    vers = versions()
    m = rep.print_machine()
    console.print("measured: " + ", ".join(f"{k} {v}" for k, v in vers.items()))
    rng = np.random.default_rng(args.seed)
    t = time.perf_counter()
    d = load_data(args.rows, args.queries, args.data, args.seed)
    console.print(f"data: {d.describe} (prepared in {time.perf_counter() - t:.1f} s)")
    console.print(f"systems: {', '.join(present)}; {args.rounds} ingest round(s), {args.passes} timed query "
                  f"pass(es) per setting, {args.reopens} reopen(s), {args.kills} kill(s) per system")

    results: Dict[str, Result] = {}
    work = Path(tempfile.mkdtemp(prefix="proxistore-peers-"))
    try:
        files = {"query": str(work / "query.npy"), "probe": str(work / "probe.npy")}
        np.save(files["query"], d.queries[:1])
        probe = d.vectors[:PROBE_BATCHES * BATCH]
        if len(probe) < PROBE_BATCHES * BATCH:    # small runs: repeat rows (ids stay distinct)
            probe = np.resize(probe, (PROBE_BATCHES * BATCH, DIM))
        np.save(files["probe"], np.ascontiguousarray(probe, dtype=np.float32))
        for s in present:
            console.rule(s)
            results[s] = run_system(s, d, args, work, files, rng, console)
            gc.collect()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    console.rule("results")
    console.print(f"data: {d.describe}")
    rows, goals = report(results, console)
    for res in results.values():
        if res.profile:
            console.print(res.profile, markup=False)
    rep.write_json(args.json, {
        "machine": m, "versions": vers, "data": d.describe, "args": vars(args) | {"data": str(args.data)},
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "results": {k: {"version": v.version, "rounds": v.rounds, "search": [s.__dict__ for s in v.search],
                         "reopen_s": v.reopen_s, "kills": v.kills, "notes": v.notes} for k, v in results.items()},
        "table": rows, "goals": goals})
    return 0


if __name__ == "__main__":
    sys.exit(main())
