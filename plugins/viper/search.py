"""Search over a snapshot of segments: per-segment top-k (ANN or exact), merged by distance.

Per segment the planner picks one of:

- **exact** (``proxistore.distance.exact_topk``) when the segment has no usable index (below
  ``indexing_threshold``, not built yet, or its file missing/corrupt), or when a filter keeps at
  most ``filter_exact_max_rows`` live rows, or keeps so few that the filtered ANN search would
  evaluate at least as many distances as there are allowed rows (its efSearch/nprobe grow as
  the kept fraction shrinks, see :mod:`.index`): exact over just those rows is then cheaper,
  and exact;
- **ann_postfiltered** when an hnswlib segment's filter and deletion vector together keep at
  least :data:`POSTFILTER_MIN_SHARE` of its rows: an unfiltered search for as many candidates
  as a filtered walk would keep (its raised efSearch; at least :data:`POSTFILTER_OVERSAMPLE`
  × k / share), of which the first k allowed ones are kept. A query whose candidates hold
  fewer than k allowed rows (a filter that excludes its neighbourhood) is redone the next way;
- **ann** otherwise, with the filter and the deletion vector pushed into the index as one
  allowed-rows selector, so deleted rows never come back and k rows come back whenever k rows
  are allowed (a query whose graph walk still found fewer is redone exactly).

A snapshot holds at most one live row per id (write_segment and compaction keep that
invariant), so merging needs no de-duplication.
"""
from __future__ import annotations

import math
import threading
from collections import Counter
from typing import List, Optional, Tuple

import numpy as np

from proxistore.contracts import SearchHits
from proxistore.distance import exact_topk

from .config import ViperSettings
from .index import IndexShortfall, prepare, raised_for_filter
from .segment import SegmentData
from .snapshot import SegmentView

__all__ = ["POSTFILTER_MIN_SHARE", "POSTFILTER_OVERSAMPLE", "SearchCounters", "search_views"]

#: The share of a segment's rows a filter (with the deletion vector) must keep for the planner
#: to filter the candidates of an unfiltered walk rather than push the filter into the walk,
#: when the index applies a selector through a Python call per candidate (hnswlib; faiss tests
#: its bitmap in C++, where the selector costs less than the longer candidate list). Both walks
#: go as deep (efSearch raised for the share, see :mod:`.index`), so recall stays close.
#: Measured on stdlib_minilm (27,473 rows, M 16, efSearch 64, k 10, raw hnswlib): a filter
#: keeping 43% at random, 375 µs p50 and recall@10 0.9986 against 910 µs and 0.9998 through
#: the selector; module=torch (43%, correlated with the queries, so a third of them are redone
#: with the selector): 848 µs mean and 0.9976 against 991 µs and 0.9998. Below 0.2 kept, a
#: segment of up to ~100,000 rows is searched exactly anyway (the raised efSearch would cost
#: more distances than the kept rows).
POSTFILTER_MIN_SHARE = 0.2
#: At least this many times k / share candidates (which would hold k allowed rows on average).
POSTFILTER_OVERSAMPLE = 3.0


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
        allowed = data.filter_mask(flt)
        if view.deleted is not None:
            allowed = allowed & view.live_mask()[0]
        n_allowed = int(np.count_nonzero(allowed))
    elif view.deleted is not None and view.entry.deleted:
        allowed, n_allowed = view.live_mask()
    if n_allowed == 0:
        return None
    kk = min(k, n_allowed)
    ref = view.entry.index
    index = data.index(ref) if ref is not None else None
    filtered = flt is not None
    if index is not None and filtered and n_allowed <= settings.filter_exact_max_rows:
        index = None               # the configured cut-off: few rows kept are searched exactly
    if index is not None and filtered and \
            index.evaluations(kk, ef, settings.ivf_nprobe, n_allowed / data.n) >= n_allowed:
        index = None               # few rows kept: exact over them is cheaper (and exact)
    if index is not None:
        index.pin_ef(settings.hnsw_ef_search)
        search = _Search(index, data, q_raw, q_prep, kk, ef, settings, metric, allowed, n_allowed,
                         filtered, counters)
        if allowed is not None and index.python_selector and n_allowed >= POSTFILTER_MIN_SHARE * data.n:
            found = search.postfiltered()
        else:
            found = search.with_selector()
        if found is not None:
            return found
    counters.add("exact_filtered" if filtered else "exact")
    return _exact(data, q_raw, q_prep, kk, metric, allowed, n_allowed)


class _Search:
    """One segment's ANN search for a batch of queries, by either of the planner's ways."""

    def __init__(self, index, data: SegmentData, q_raw: np.ndarray, q_prep: np.ndarray, k: int, ef: int,
                 settings: ViperSettings, metric: str, allowed: Optional[np.ndarray], n_allowed: int,
                 filtered: bool, counters: SearchCounters) -> None:
        self.index, self.data, self.q_raw, self.q_prep = index, data, q_raw, q_prep
        self.k, self.ef, self.settings, self.metric = k, ef, settings, metric
        self.allowed, self.n_allowed, self.filtered, self.counters = allowed, n_allowed, filtered, counters

    def with_selector(self, rows: Optional[np.ndarray] = None) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """Top-k of the queries (those of the mask ``rows``, or all) with the allowed rows pushed into the index; a
        query whose graph walk found fewer than k allowed rows is redone exactly. None when the
        index cannot return k per query at all: the caller searches exactly."""
        q_raw, q_prep = (self.q_raw, self.q_prep) if rows is None else (self.q_raw[rows], self.q_prep[rows])
        try:
            pos, dist = self.index.search(q_prep, self.k, ef=self.ef, nprobe=self.settings.ivf_nprobe,
                                          allowed=self.allowed, n_allowed=self.n_allowed)
        except IndexShortfall:
            self.counters.add("ann_shortfall")
            return None
        self.counters.add("ann_filtered" if self.filtered else "ann")
        short = (pos < 0).any(axis=1) if pos.size and pos.min() < 0 else None
        if short is not None:
            self.counters.add("ann_shortfall")
            redo_pos, redo_dist = _exact(self.data, q_raw[short], q_prep[short], self.k, self.metric,
                                         self.allowed, self.n_allowed)
            pos, dist = pos.copy(), dist.copy()
            pos[short], dist[short] = redo_pos, redo_dist
        return pos, dist

    def postfiltered(self) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """The first k allowed rows among each query's candidates from an unfiltered search
        (:data:`POSTFILTER_MIN_SHARE`); a query left with fewer is redone with the selector."""
        n = self.index.ntotal
        share = self.n_allowed / n
        # as many candidates as the walk with a selector would keep (its raised efSearch), so
        # recall stays that walk's; hnswlib walks with max(efSearch, k), so no set_ef either
        candidates = min(n, max(math.ceil(POSTFILTER_OVERSAMPLE * self.k / share) + 4,
                                raised_for_filter(max(self.ef, self.k), share, n)))
        try:
            pos, dist = self.index.search(self.q_prep, candidates, ef=self.ef, nprobe=self.settings.ivf_nprobe)
        except IndexShortfall:
            return self.with_selector()
        self.counters.add("ann_postfiltered")
        valid = pos >= 0
        kept = valid & self.allowed[np.where(valid, pos, 0)]
        order = np.argsort(~kept, axis=1, kind="stable")[:, :self.k]   # kept candidates first, best first
        pos = np.take_along_axis(pos, order, axis=1)
        dist = np.take_along_axis(dist, order, axis=1)
        short = np.count_nonzero(kept, axis=1) < self.k
        if not short.any():
            return pos, dist
        self.counters.add("ann_postfilter_short")
        redone = self.with_selector(short)
        if redone is None:
            self.counters.add("exact_filtered" if self.filtered else "exact")
            redone = _exact(self.data, self.q_raw[short], self.q_prep[short], self.k, self.metric,
                            self.allowed, self.n_allowed)
        pos[short], dist[short] = redone
        return pos, dist


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
