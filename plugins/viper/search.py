"""Search over a snapshot of segments: per-segment top-k (ANN or exact), merged by distance.

Per segment the planner picks one of:

- **exact** (``proxistore.distance.exact_topk``) when the segment has no usable index (below
  ``indexing_threshold``, not built yet, or its file missing/corrupt), or when a filter keeps at
  most ``filter_exact_max_rows`` live rows, or keeps so few that the filtered ANN search would
  evaluate at least as many distances as there are allowed rows (its efSearch/nprobe grow as
  the kept fraction shrinks, see :mod:`.index`): exact over just those rows is then cheaper,
  and exact;
- **ann** otherwise, with the filter and the deletion vector pushed into the index as one
  allowed-rows selector, so deleted rows never come back and k rows come back whenever k rows
  are allowed (a query whose graph walk still found fewer is redone exactly).

A snapshot holds at most one live row per id (write_segment and compaction keep that
invariant), so merging needs no de-duplication.
"""
from __future__ import annotations

import threading
from collections import Counter
from typing import List, Optional, Tuple

import numpy as np

from proxistore.contracts import SearchHits
from proxistore.distance import exact_topk

from .config import ViperSettings
from .index import IndexShortfall, prepare
from .segment import SegmentData
from .snapshot import SegmentView

__all__ = ["SearchCounters", "search_views"]


class SearchCounters:
    """How many segment searches took each path (for stats and planner tests)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter = Counter()

    def add(self, path: str) -> None:
        with self._lock:
            self._counts[path] += 1

    def snapshot(self) -> dict:
        with self._lock:
            return dict(self._counts)


def _exact(data: SegmentData, q_raw: np.ndarray, q_prep: np.ndarray, k: int, metric: str,
           allowed: Optional[np.ndarray], n_allowed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Exact top-k over the allowed rows of one segment (positions are segment rows)."""
    cosine = metric == "cosine"
    vectors = data.prepared() if cosine else data.vectors()
    queries = q_prep if cosine else q_raw
    xmetric = "ip" if cosine else metric   # unit vectors: cosine distance = 1 + ip distance
    if allowed is None:
        pos, dist = exact_topk(queries, vectors, k, xmetric)
    elif n_allowed * 2 < data.n:
        rows = np.flatnonzero(allowed)
        pos, dist = exact_topk(queries, vectors[rows], k, xmetric)
        pos = np.where(pos >= 0, rows[np.maximum(pos, 0)], -1)
    else:
        pos, dist = exact_topk(queries, vectors, k, xmetric, mask=allowed)
    if cosine:
        dist = dist + np.float32(1.0)
    return pos, dist


def _search_view(view: SegmentView, q_raw: np.ndarray, q_prep: np.ndarray, k: int, flt, ef: int,
                 settings: ViperSettings, metric: str, counters: SearchCounters
                 ) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    data = view.data
    allowed = None
    n_allowed = data.n
    if flt is not None:
        allowed = flt.mask(data.meta)
        if view.deleted is not None:
            allowed &= view.live_mask()[0]
        n_allowed = int(np.count_nonzero(allowed))
    elif view.deleted is not None and view.entry.deleted:
        allowed, n_allowed = view.live_mask()
    if n_allowed == 0:
        return None
    kk = min(k, n_allowed)
    ref = view.entry.index
    index = data.index(ref) if ref is not None else None
    filtered = flt is not None
    if index is not None and filtered:
        if n_allowed <= settings.filter_exact_max_rows or \
                index.evaluations(kk, ef, settings.ivf_nprobe, n_allowed / data.n) >= n_allowed:
            index = None       # few rows kept: exact over them is cheaper (and exact)
    if index is not None:
        index.pin_ef(settings.hnsw_ef_search)
        try:
            pos, dist = index.search(q_prep, kk, ef=ef, nprobe=settings.ivf_nprobe,
                                     allowed=allowed, n_allowed=n_allowed)
            counters.add("ann_filtered" if filtered else "ann")
            short = (pos < 0).any(axis=1) if pos.size and pos.min() < 0 else None
            if short is not None:   # the graph walk found fewer than k allowed rows: redo those exactly
                counters.add("ann_shortfall")
                redo_pos, redo_dist = _exact(data, q_raw[short], q_prep[short], kk, metric, allowed, n_allowed)
                pos, dist = pos.copy(), dist.copy()
                pos[short], dist[short] = redo_pos, redo_dist
            return pos, dist
        except IndexShortfall:
            counters.add("ann_shortfall")
    counters.add("exact_filtered" if filtered else "exact")
    return _exact(data, q_raw, q_prep, kk, metric, allowed, n_allowed)


def search_views(views: Tuple[SegmentView, ...], queries: np.ndarray, k: int, *, flt, ef: Optional[int],
                 settings: ViperSettings, metric: str, counters: SearchCounters,
                 with_metadata: bool = False) -> SearchHits:
    """Top-k live rows of ``views`` per query, best first (may raise SegmentRetired); with
    ``with_metadata``, the hits' metadata too, read by segment row (no id lookups)."""
    m = len(queries)
    q_raw = np.ascontiguousarray(queries, dtype=np.float32)
    q_prep = prepare(q_raw, metric) if metric == "cosine" else q_raw
    ef = int(ef) if ef is not None else settings.hnsw_ef_search
    parts: List[Tuple[SegmentData, np.ndarray, np.ndarray]] = []
    for view in views:
        found = _search_view(view, q_raw, q_prep, k, flt, ef, settings, metric, counters)
        if found is not None:
            parts.append((view.data, found[0], found[1]))
    if not parts:
        return SearchHits.empty(m, k)
    if len(parts) == 1:
        data, pos, dist = parts[0]
        kk = pos.shape[1]
        if kk == k and (pos.size == 0 or pos.min() >= 0):    # the common case: k hits from one segment
            hits = SearchHits(data.ids[pos], np.ascontiguousarray(dist, dtype=np.float32), data.lsns[pos])
            if with_metadata:
                hits.metadata = [data.metadata_rows(row) for row in pos.tolist()]
            return hits
        hits = SearchHits.empty(m, k)
        valid = pos >= 0
        safe = np.where(valid, pos, 0)
        hits.ids[:, :kk] = np.where(valid, data.ids[safe], None)
        hits.distances[:, :kk] = np.where(valid, dist, np.inf)
        hits.lsns[:, :kk] = np.where(valid, data.lsns[safe], -1)
        if with_metadata:
            hits.metadata = _hit_metadata([data], np.zeros_like(pos), pos, k)
        return hits
    all_ids = []
    all_lsns = []
    all_dist = []
    for data, pos, dist in parts:
        valid = pos >= 0
        safe = np.where(valid, pos, 0)
        all_ids.append(np.where(valid, data.ids[safe], None))
        all_lsns.append(np.where(valid, data.lsns[safe], -1))
        all_dist.append(np.where(valid, dist, np.inf).astype(np.float32, copy=False))
    ids = np.concatenate(all_ids, axis=1)
    lsns = np.concatenate(all_lsns, axis=1)
    dist = np.concatenate(all_dist, axis=1)
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    kk = order.shape[1]
    hits = SearchHits.empty(m, k)
    hits.ids[:, :kk] = np.take_along_axis(ids, order, axis=1)
    hits.distances[:, :kk] = np.take_along_axis(dist, order, axis=1)
    hits.lsns[:, :kk] = np.take_along_axis(lsns, order, axis=1)
    if with_metadata:
        part = np.concatenate([np.full(p.shape, i) for i, (_, p, _) in enumerate(parts)], axis=1)
        pos = np.concatenate([p for _, p, _ in parts], axis=1)
        hits.metadata = _hit_metadata([d for d, _, _ in parts], np.take_along_axis(part, order, axis=1),
                                      np.take_along_axis(pos, order, axis=1), k)
    return hits


def _hit_metadata(datas: List[SegmentData], part: np.ndarray, pos: np.ndarray, k: int
                  ) -> List[List[Optional[dict]]]:
    """Per query, the metadata of each hit (``datas[part]``, row ``pos``; -1: no hit), padded
    with None to ``k``."""
    out = []
    for parts_q, pos_q in zip(part.tolist(), pos.tolist()):
        row: List[Optional[dict]] = [None] * k
        by_part: dict = {}
        for j, (p, r) in enumerate(zip(parts_q, pos_q)):
            if r >= 0:
                by_part.setdefault(p, []).append((j, r))
        for p, hits in by_part.items():
            for (j, _), meta in zip(hits, datas[p].metadata_rows([r for _, r in hits])):
                row[j] = meta
        out.append(row)
    return out
