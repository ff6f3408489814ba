"""Distances and exact top-k search, shared by the memtable and every exact search path.

l2 is squared euclidean, cosine is 1 - cosine similarity, ip is -dot; lower is closer.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np

__all__ = ["METRICS", "normalize", "squared_norms", "distances", "exact_topk"]

METRICS = ("cosine", "l2", "ip")


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm (zero rows stay zero)."""
    if len(x) == 1:   # one query: a dot product and a scalar, half the time of the general path
        norm = np.float32(math.sqrt(float(np.dot(x[0], x[0]))))
        return (x / norm if norm > 0 else x.copy()).astype(np.float32, copy=False)
    # what np.linalg.norm(x, axis=1, keepdims=True) computes, without its Python overhead
    # (a third of this function's time for one query)
    norms = np.sqrt(np.add.reduce(x * x, axis=1, keepdims=True))
    norms[norms == 0] = 1.0
    return (x / norms).astype(np.float32, copy=False)


def squared_norms(vectors: np.ndarray) -> np.ndarray:
    """Each row's squared euclidean norm (float32), for :func:`distances`' ``sqnorms``."""
    v = np.asarray(vectors, dtype=np.float32)
    return np.einsum("ij,ij->i", v, v).astype(np.float32, copy=False)


def distances(queries: np.ndarray, vectors: np.ndarray, metric: str,
              sqnorms: Optional[np.ndarray] = None) -> np.ndarray:
    """The ``(m, n)`` matrix of distances between queries and vectors under ``metric``.

    ``sqnorms``: the rows' squared norms, kept by a caller that searches the same rows many
    times (a memtable), so that cosine and l2 cost one matrix product and no pass over the rows.
    """
    q = np.asarray(queries, dtype=np.float32)
    v = np.asarray(vectors, dtype=np.float32)
    if metric == "ip":
        return -(q @ v.T)
    if metric == "cosine":
        if sqnorms is None:
            return 1.0 - normalize(q) @ normalize(v).T
        norms = np.sqrt(sqnorms)
        norms[norms == 0] = 1.0
        return 1.0 - (normalize(q) @ v.T) / norms[None, :]
    if metric == "l2":
        vv = (v * v).sum(1) if sqnorms is None else sqnorms
        d = (q * q).sum(1)[:, None] - 2.0 * (q @ v.T) + vv[None, :]
        return np.maximum(d, 0.0)
    raise ValueError(f"unknown metric {metric!r}")


def exact_topk(queries: np.ndarray, vectors: np.ndarray, k: int, metric: str,
               mask: Optional[np.ndarray] = None,
               sqnorms: Optional[np.ndarray] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Row positions ``(m, k)`` and distances ``(m, k)`` of the k closest rows, best first.

    Rows where ``mask`` is False are never returned; missing results are position -1, distance inf.
    """
    m = len(queries)
    pos = np.full((m, k), -1, dtype=np.int64)
    dist = np.full((m, k), np.inf, dtype=np.float32)
    n = len(vectors)
    if n == 0 or m == 0:
        return pos, dist
    d = distances(queries, vectors, metric, sqnorms).astype(np.float32, copy=False)
    if mask is not None:
        d = np.where(mask[None, :], d, np.inf)
    kk = min(k, n)
    if kk < n:
        part = np.argpartition(d, kk - 1, axis=1)[:, :kk]
    else:
        part = np.broadcast_to(np.arange(n), (m, n))
    pd = np.take_along_axis(d, part, axis=1)
    order = np.argsort(pd, axis=1, kind="stable")
    top = np.take_along_axis(part, order, axis=1)
    topd = np.take_along_axis(pd, order, axis=1)
    valid = np.isfinite(topd)
    pos[:, :kk] = np.where(valid, top, -1)
    dist[:, :kk] = topd
    return pos, dist
