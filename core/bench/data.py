"""The vectors a workload writes and the queries it asks, and the exact answers to those queries.

Synthetic data is Gaussian clusters from a seed (the same seed gives the same vectors on every
machine), L2-normalised when the metric is cosine, with optional ``cluster`` and ``group``
metadata. Parquet data comes from a file with an ``id`` and a ``vector`` column; its scalar
columns named in ``data.metadata`` become metadata. Held-out queries are rows of the same data
that are never written. Ground truth is exact (numpy, :func:`proxistore.distance.exact_topk`)
over the rows that are actually live at the end, so recall stays honest under upserts and deletes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..distance import distances, exact_topk, normalize
from .workload import Workload

__all__ = ["Dataset", "load_dataset", "synthetic_vectors", "perturbed", "exact_neighbours", "recall_at_k"]

_CHUNK = 50_000


@dataclass
class Dataset:
    """Rows to write (``ids``, ``vectors``, ``metadata``) and the ``queries`` to ask."""

    ids: List[str]
    vectors: np.ndarray
    metadata: Optional[List[Optional[Dict[str, Any]]]]
    queries: np.ndarray
    metric: str

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


def load_dataset(wl: Workload) -> Dataset:
    """The workload's rows and queries (deterministic for a given workload file)."""
    d, q = wl.data, wl.queries
    holdout = q["count"] if q["source"] == "holdout" else 0
    if d["source"] == "synthetic":
        n = d["vectors"]
        vectors, labels = synthetic_vectors(n + holdout, d["dim"], d["metric"], d["seed"], d["clusters"],
                                            d["cluster_spread"])
        queries = vectors[n:].copy()
        vectors = vectors[:n]
        ids = [f"vec-{i:08d}" for i in range(n)]
        metadata = None
        if d["metadata"]:
            fields = set(d["metadata"])
            metadata = [{**({"cluster": int(labels[i])} if "cluster" in fields else {}),
                         **({"group": "abcd"[i % 4]} if "group" in fields else {})} for i in range(n)]
    else:
        ids, vectors, metadata, queries = _parquet_rows(d["path"], d["vectors"], holdout, d["metadata"], d["seed"])
    if q["source"] == "parquet":
        queries = _parquet_queries(q["path"], q["count"])
    elif q["source"] == "none":
        queries = np.zeros((0, vectors.shape[1]), dtype=np.float32)
    return Dataset(ids, vectors, metadata, queries, d["metric"])


def synthetic_vectors(n: int, dim: int, metric: str, seed: int, clusters: int,
                      spread: float) -> Tuple[np.ndarray, np.ndarray]:
    """``n`` float32 vectors around ``clusters`` Gaussian centres, and each one's cluster."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    labels = rng.integers(0, clusters, size=n)
    out = np.empty((n, dim), dtype=np.float32)
    for s in range(0, n, _CHUNK):
        e = min(n, s + _CHUNK)
        out[s:e] = centres[labels[s:e]] + np.float32(spread) * rng.standard_normal((e - s, dim), dtype=np.float32)
        if metric == "cosine":
            out[s:e] = normalize(out[s:e])
    return out, labels


def perturbed(vectors: np.ndarray, rng: np.random.Generator, metric: str, scale: float = 0.1) -> np.ndarray:
    """New versions of ``vectors`` (what an upsert writes): each moved by Gaussian noise of
    ``scale`` times its own RMS value, then normalised again for cosine."""
    rms = np.sqrt((vectors.astype(np.float32) ** 2).mean(axis=1, keepdims=True)) + np.float32(1e-12)
    out = vectors + np.float32(scale) * rms * rng.standard_normal(vectors.shape, dtype=np.float32)
    return normalize(out) if metric == "cosine" else out.astype(np.float32, copy=False)


# ------------------------------------------------------------------------------------------------
# Parquet
# ------------------------------------------------------------------------------------------------

def _vectors(column: Any, where: str) -> np.ndarray:
    """The ``vector`` column as float32 ``(n, dim)``: the command line's reader, with its errors
    as ValueError for the workload loader."""
    from proxistore.cli.common import UsageError
    from proxistore.cli.sources import parquet_vectors

    try:
        return parquet_vectors(column, where)
    except UsageError as exc:
        raise ValueError(str(exc)) from None


def _parquet_rows(path: str, n: int, holdout: int, meta_cols: Sequence[str], seed: int
                  ) -> Tuple[List[str], np.ndarray, Optional[List[Optional[Dict[str, Any]]]], np.ndarray]:
    """The first ``n`` rows of ``path`` not held out, and ``holdout`` rows picked with ``seed``."""
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["id", "vector"] + list(meta_cols))
    total = table.num_rows
    held = np.sort(np.random.default_rng(seed).choice(total, size=holdout, replace=False)) if holdout else \
        np.zeros(0, dtype=np.int64)
    keep = np.setdiff1d(np.arange(total), held)[:n]
    all_vectors = _vectors(table.column("vector"), path)
    queries = all_vectors[held].copy()
    vectors = np.ascontiguousarray(all_vectors[keep])
    rows = table.take(keep)
    ids = [str(i) for i in rows.column("id").to_pylist()]
    metadata = None
    if meta_cols:
        metadata = []
        for rec in rows.select(list(meta_cols)).to_pylist():
            clean = {k: v for k, v in rec.items() if v is not None and not (isinstance(v, float) and v != v)}
            metadata.append(clean or None)
    return ids, vectors, metadata, queries


def _parquet_queries(path: str, count: int) -> np.ndarray:
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["vector"])
    return np.ascontiguousarray(_vectors(table.column("vector"), path)[:count])


# ------------------------------------------------------------------------------------------------
# ground truth and recall
# ------------------------------------------------------------------------------------------------

def exact_neighbours(queries: np.ndarray, vectors: np.ndarray, k: int, metric: str,
                     mask: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Exact top-k row positions and distances, in chunks of queries to bound memory."""
    step = max(1, 20_000_000 // max(1, len(vectors)))
    parts = [exact_topk(queries[s:s + step], vectors, k, metric, mask) for s in range(0, len(queries), step)]
    if not parts:
        return np.zeros((0, k), dtype=np.int64), np.zeros((0, k), dtype=np.float32)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def recall_at_k(found: Sequence[Sequence[Optional[str]]], queries: np.ndarray, live_ids: Sequence[str],
                live_vectors: np.ndarray, k: int, metric: str, mask: Optional[np.ndarray] = None) -> float:
    """Mean over queries of (correct hits) / min(k, rows the query may match).

    A hit is correct when it is a live row the filter admits and its exact distance is no larger
    than the exact k-th distance (ties count, so exact duplicates in the data cannot lower recall).
    Distances of hits are recomputed here from the live vectors, not taken from the engine.
    """
    if len(queries) == 0:
        return float("nan")
    position: Mapping[str, int] = {id_: i for i, id_ in enumerate(live_ids)}
    eligible = int(mask.sum()) if mask is not None else len(live_ids)
    _, truth = exact_neighbours(queries, live_vectors, k, metric, mask)
    scores = []
    for qi, hits in enumerate(found):
        want = min(k, eligible)
        if want == 0:
            scores.append(1.0)
            continue
        rows = sorted({position[h] for h in hits[:k] if h is not None and h in position})
        if mask is not None:
            rows = [r for r in rows if mask[r]]
        kth = float(truth[qi, want - 1])
        if rows:
            d = distances(queries[qi:qi + 1], live_vectors[rows], metric)[0]
            good = int((d <= kth + 1e-5 * max(1.0, abs(kth))).sum())
        else:
            good = 0
        scores.append(min(good, want) / want)
    return float(np.mean(scores))
