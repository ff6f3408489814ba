"""ANN indexes of one segment: HNSW, IVF or flat in faiss, or HNSW in hnswlib.

An index is built over a segment's vectors *prepared* for the metric (unit-normalised for cosine,
as is for ip and l2) with row positions as labels, so a search returns segment row positions.
Distances come back in proxistore's convention (``proxistore.distance``): l2 = squared
euclidean, cosine = 1 - cos, ip = -dot; lower is closer.

Filtering is pushed into the search: ``allowed`` (a bool per row: filter matches and not
deleted) becomes a faiss ``IDSelectorBitmap`` in ``SearchParameters`` or an hnswlib ``filter``
callable, so k results come back whenever k rows are allowed. Because a selector shrinks the
fraction f of rows that count, efSearch (HNSW) and nprobe (IVF) are raised to
``value / f**1.5``; :meth:`AnnIndex.evaluations` estimates the distance evaluations that costs,
which the query planner compares with an exact search over the allowed rows.
"""
from __future__ import annotations

import abc
import math
import os
import tempfile
import threading
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

from proxistore.distance import normalize

#: Rows added to an index between two checks of the cancel flag (about 0.5 s of HNSW build).
ADD_CHUNK_ROWS = 4096


class BuildCancelled(Exception):
    """An index build or merge was abandoned because its collection is closing."""


__all__ = ["BuildCancelled", "AnnIndex", "FaissIndex", "HnswlibIndex", "IndexShortfall", "prepare", "build_index",
           "load_index", "auto_nlist"]


class IndexShortfall(Exception):
    """The index could not return k allowed rows (hnswlib); the caller searches exactly instead."""


def prepare(vectors: np.ndarray, metric: str) -> np.ndarray:
    """Vectors as an index stores them (and queries as it expects them): float32, C-contiguous,
    unit-normalised for cosine."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    return normalize(x) if metric == "cosine" else x


def auto_nlist(rows: int, nlist: int) -> int:
    """IVF lists for a segment: ``nlist`` (0 = 4 * sqrt(rows)), at most rows / 39, at least 1."""
    want = nlist if nlist > 0 else int(4 * math.sqrt(rows))
    return max(1, min(want, rows // 39 if rows >= 39 else 1))


def _to_convention(sim_or_dist: np.ndarray, metric: str, *, kind: str) -> np.ndarray:
    """Library distances -> proxistore's. ``kind``: ``dot`` (faiss inner product),
    ``one_minus_dot`` (hnswlib "ip" space) or ``l2`` (squared L2, unchanged)."""
    d = np.asarray(sim_or_dist, dtype=np.float32)
    if kind == "l2":
        return d
    if kind == "dot":
        return (1.0 - d) if metric == "cosine" else -d
    return d if metric == "cosine" else (d - 1.0)


class AnnIndex(abc.ABC):
    """A segment's ANN index (rows are labelled by position)."""

    kind: str = ""
    backend: str = ""
    #: True when a search's selector costs a Python call per candidate (hnswlib's filter):
    #: the planner then filters the candidates of an unfiltered walk instead (search.py)
    python_selector: bool = False

    def __init__(self, metric: str, dim: int, params: Dict[str, Any]) -> None:
        self.metric = metric
        self.dim = dim
        self.params = dict(params)

    @property
    @abc.abstractmethod
    def ntotal(self) -> int:
        """Rows indexed."""

    @abc.abstractmethod
    def search(self, queries: np.ndarray, k: int, *, ef: int, nprobe: int,
               allowed: Optional[np.ndarray] = None, n_allowed: Optional[int] = None
               ) -> Tuple[np.ndarray, np.ndarray]:
        """Positions ``(m, k)`` (-1 when missing) and distances ``(m, k)`` of prepared queries."""

    def pin_ef(self, ef: int) -> None:
        """Hint: the efSearch most searches will use (the configured one)."""

    @abc.abstractmethod
    def evaluations(self, k: int, ef: int, nprobe: int, fraction: float) -> int:
        """Estimated distance evaluations per query of :meth:`search` when a selector keeps
        ``fraction`` of the rows (HNSW: efSearch' * 2M; IVF: nprobe' * rows / nlist; flat: rows)."""

    def add(self, vectors: np.ndarray, cancel: Optional[Callable[[], bool]] = None,
            chunk_rows: Optional[int] = None) -> None:
        """Append prepared vectors (labelled ``ntotal``, ``ntotal + 1``, ...), in chunks of
        ``chunk_rows`` (default :data:`ADD_CHUNK_ROWS`), raising :class:`BuildCancelled` between
        chunks once ``cancel()`` is true (close() is waiting)."""
        chunk = chunk_rows or ADD_CHUNK_ROWS
        for start in range(0, len(vectors), chunk):
            if cancel is not None and cancel():
                raise BuildCancelled("index build stopped: the collection is closing")
            self._add(vectors[start:start + chunk])

    @abc.abstractmethod
    def _add(self, vectors: np.ndarray) -> None:
        """Append one chunk of prepared vectors."""

    @abc.abstractmethod
    def to_bytes(self) -> Any:
        """The index file's content (bytes or a buffer)."""


#: efSearch / nprobe grow as value / f**_FILTER_EXPONENT when a selector keeps a fraction f of
#: the rows. Measured on stdlib_minilm (HNSW M=16, efConstruction=200, k=10, filter module=torch,
#: f=0.43): efSearch 64/f gives recall@10 0.963, 64/f**1.5 gives 0.980, 64/f**2 0.990.
_FILTER_EXPONENT = 1.5


def raised_for_filter(value: int, fraction: float, ceiling: int) -> int:
    """efSearch (or nprobe) ``value`` raised for a filter keeping ``fraction`` of the rows, at
    most ``ceiling`` (see _FILTER_EXPONENT)."""
    if fraction >= 1.0:
        return value
    raised = math.ceil(value / max(fraction, 1e-9) ** _FILTER_EXPONENT)
    return int(min(max(value, raised), max(ceiling, value)))


def _selector(faiss: Any, n: int, allowed: np.ndarray) -> Tuple[np.ndarray, Any]:
    """A faiss ``IDSelectorBitmap`` of ``allowed`` and the bitmap it points into."""
    bits = np.packbits(allowed, bitorder="little")
    return bits, faiss.IDSelectorBitmap(n, faiss.swig_ptr(bits))


def _search_c(index: Any, queries: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """``index.search(queries, k)`` through faiss's C entry point; ``queries`` must already be
    C-contiguous float32 of the index's dimension (viper's query preparation makes them so)."""
    if queries.dtype != np.float32 or not queries.flags.c_contiguous:
        return index.search(queries, k)
    import faiss
    n = len(queries)
    dist = np.empty((n, k), dtype=np.float32)
    pos = np.empty((n, k), dtype=np.int64)
    index.search_c(n, faiss.swig_ptr(queries), k, faiss.swig_ptr(dist), faiss.swig_ptr(pos))
    return dist, pos


class FaissIndex(AnnIndex):
    """A faiss ``IndexHNSWFlat``, ``IndexIVFFlat`` or ``IndexFlat`` (inner product or L2)."""

    backend = "faiss"

    def __init__(self, index: Any, kind: str, metric: str, dim: int, params: Dict[str, Any]) -> None:
        super().__init__(metric, dim, params)
        self.index = index
        self.kind = kind
        self._pinned: Optional[int] = None
        self._pin_lock = threading.Lock()
        self._last_selector: Optional[Tuple[np.ndarray, Tuple[np.ndarray, Any]]] = None

    def _selector_for(self, allowed: np.ndarray) -> Tuple[np.ndarray, Any]:
        """The bitmap selector of ``allowed``, kept while the same read-only mask comes back (a
        segment's live rows, :meth:`SegmentView.live_mask`); a filter's writable mask gets a new one."""
        import faiss
        if allowed.flags.writeable:
            return _selector(faiss, self.ntotal, allowed)
        last = self._last_selector
        if last is not None and last[0] is allowed:
            return last[1]
        made = _selector(faiss, self.ntotal, allowed)
        self._last_selector = (allowed, made)
        return made

    def _pinned_ef(self) -> int:
        """efSearch stored in the index itself, set once by :meth:`pin_ef` (to the configured
        efSearch) so unfiltered searches with it need no SearchParameters; any other value goes
        through SearchParameters, so concurrent searches never race on index state."""
        if self._pinned is None:
            return -1
        return self._pinned

    def pin_ef(self, ef: int) -> None:
        if self._pinned is not None:
            return
        with self._pin_lock:
            if self._pinned is None and self.kind == "hnsw":
                self.index.hnsw.efSearch = int(ef)
                self._pinned = int(ef)

    @classmethod
    def build(cls, kind: str, params: Dict[str, Any], x: np.ndarray, metric: str,
              cancel: Optional[Callable[[], bool]] = None, chunk_rows: Optional[int] = None) -> "FaissIndex":
        import faiss
        n, dim = x.shape
        fm = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, int(params["m"]), fm)
            index.hnsw.efConstruction = int(params["ef_construction"])
        elif kind == "ivf":
            nlist = auto_nlist(n, int(params["nlist"]))
            index = faiss.IndexIVFFlat(faiss.IndexFlat(dim, fm), dim, nlist, fm)
            index.cp.min_points_per_centroid = 1
            index.train(x)
        else:
            index = faiss.IndexFlat(dim, fm)
        built = cls(index, kind, metric, dim, params)
        built.add(x, cancel, chunk_rows)
        return built

    @classmethod
    def from_bytes(cls, data: bytes, kind: str, metric: str, dim: int, params: Dict[str, Any]) -> "FaissIndex":
        import faiss
        index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        return cls(index, kind, metric, dim, params)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def evaluations(self, k: int, ef: int, nprobe: int, fraction: float) -> int:
        n = self.ntotal
        if self.kind == "hnsw":
            return raised_for_filter(max(ef, k), fraction, n) * 2 * int(self.params["m"])
        if self.kind == "ivf":
            nlist = int(self.index.nlist)
            return min(raised_for_filter(nprobe, fraction, nlist), nlist) * n // max(nlist, 1)
        return n

    def search(self, queries, k, *, ef, nprobe, allowed=None, n_allowed=None):
        if allowed is None and self._pinned is not None and max(ef, k) == self._pinned:
            # The usual unfiltered query at the configured efSearch: straight to faiss. The
            # general path below costs ~10 µs more per call (a third of viper's overhead on a
            # single query), and faiss's Python wrapper ~5 µs more than its C entry point.
            dist, pos = _search_c(self.index, queries, k)
            out = (np.float32(1.0) - dist) if self.metric == "cosine" else \
                (dist if self.metric == "l2" else -dist)
            if pos.size and pos.min() < 0:
                out = np.where(pos < 0, np.float32(np.inf), out)
            return pos, out
        import faiss
        n = self.ntotal
        fraction = 1.0 if allowed is None else (n_allowed if n_allowed is not None else int(allowed.sum())) / max(n, 1)
        bits = sel = None
        if allowed is not None:   # the selector reads the bitmap: keep both referenced together
            bits, sel = self._selector_for(allowed)
        if self.kind == "hnsw":
            efs = raised_for_filter(max(ef, k), fraction, n)
            if sel is None and efs == self._pinned_ef():
                params = None     # the index's own efSearch already is efs: the fastest call
            else:
                params = faiss.SearchParametersHNSW(efSearch=efs)
        elif self.kind == "ivf":
            nlist = int(self.index.nlist)
            params = faiss.SearchParametersIVF(nprobe=min(raised_for_filter(nprobe, fraction, nlist), nlist))
        else:
            params = faiss.SearchParameters()
        if sel is not None:
            params.sel = sel
        if params is None:
            dist, pos = self.index.search(queries, k)
        else:
            dist, pos = self.index.search(queries, k, params=params)
        del bits  # the bitmap must outlive the search: keep it referenced until here
        out = _to_convention(dist, self.metric, kind="l2" if self.metric == "l2" else "dot")
        if pos.size and pos.min() < 0:    # one reduction: the common case costs ~1 µs less a query
            out = np.where(pos < 0, np.float32(np.inf), out)
        return pos, out

    def _add(self, vectors: np.ndarray) -> None:
        if len(vectors):
            self.index.add(vectors)

    def to_bytes(self):
        import faiss
        return faiss.serialize_index(self.index)


class HnswlibIndex(AnnIndex):
    """An hnswlib HNSW index ("ip" space for ip and cosine over prepared vectors, "l2" for l2).

    hnswlib's efSearch is index-wide state (``set_ef``), not a per-call argument. Searches at
    the pinned efSearch (:meth:`pin_ef`, the configured one) run concurrently; a search at any
    other efSearch (an explicit ``ef``, or one raised by a filter) has the index to itself
    while it sets efSearch, searches and sets it back, and waiting ones go before new pinned
    searches so they are not starved."""

    backend = "hnswlib"
    kind = "hnsw"
    python_selector = True

    def __init__(self, index: Any, metric: str, dim: int, params: Dict[str, Any]) -> None:
        super().__init__(metric, dim, params)
        self.index = index
        self._ef_state = threading.Condition()
        self._pinned: Optional[int] = None
        self._sharing = 0             # searches running at the pinned efSearch
        self._exclusive = False       # a search at another efSearch is running
        self._waiting = 0             # searches at another efSearch waiting for their turn

    @staticmethod
    def _space(metric: str) -> str:
        return "l2" if metric == "l2" else "ip"

    @classmethod
    def build(cls, params: Dict[str, Any], x: np.ndarray, metric: str,
              cancel: Optional[Callable[[], bool]] = None, chunk_rows: Optional[int] = None) -> "HnswlibIndex":
        import hnswlib
        n, dim = x.shape
        index = hnswlib.Index(space=cls._space(metric), dim=dim)
        index.init_index(max_elements=max(n, 1), ef_construction=int(params["ef_construction"]),
                         M=int(params["m"]), random_seed=100)
        built = cls(index, metric, dim, params)
        built.add(x, cancel, chunk_rows)
        return built

    @classmethod
    def from_file(cls, path: str, metric: str, dim: int, params: Dict[str, Any], rows: int) -> "HnswlibIndex":
        import hnswlib
        index = hnswlib.Index(space=cls._space(metric), dim=dim)
        index.load_index(path, max_elements=max(rows, 1))
        return cls(index, metric, dim, params)

    @property
    def ntotal(self) -> int:
        return int(self.index.get_current_count())

    def evaluations(self, k: int, ef: int, nprobe: int, fraction: float) -> int:
        return raised_for_filter(max(ef, k), fraction, self.ntotal) * 2 * int(self.params["m"])

    def pin_ef(self, ef: int) -> None:
        with self._ef_state:
            if self._pinned is None:
                while self._exclusive:
                    self._ef_state.wait()
                self.index.set_ef(int(ef))
                self._pinned = int(ef)

    def search(self, queries, k, *, ef, nprobe, allowed=None, n_allowed=None):
        n = self.ntotal
        fraction = 1.0 if allowed is None else (n_allowed if n_allowed is not None else int(allowed.sum())) / max(n, 1)
        # The mask's own __getitem__: as fast per call as a list's, with no O(rows) copy a query.
        predicate = allowed.__getitem__ if allowed is not None else None
        efs = raised_for_filter(max(ef, k), fraction, n)
        # hnswlib walks with max(efSearch, k): a k above the pinned efSearch needs no set_ef
        shared = self._pinned is not None and efs == max(self._pinned, k)
        with self._ef_state:
            if shared:
                while self._exclusive or self._waiting:
                    self._ef_state.wait()
                self._sharing += 1
            else:
                self._waiting += 1
                while self._exclusive or self._sharing:
                    self._ef_state.wait()
                self._waiting -= 1
                self._exclusive = True
        try:
            if not shared:
                self.index.set_ef(efs)
            try:
                labels, dist = self.index.knn_query(queries, k=k, filter=predicate,
                                                    num_threads=1 if predicate else -1)
            except RuntimeError as e:  # "Cannot return the results in a contiguous 2D array"
                raise IndexShortfall(str(e)) from e
            finally:
                if not shared and self._pinned is not None:
                    self.index.set_ef(self._pinned)
        finally:
            with self._ef_state:
                if shared:
                    self._sharing -= 1
                else:
                    self._exclusive = False
                self._ef_state.notify_all()
        return labels.astype(np.int64), _to_convention(dist, self.metric,
                                                      kind="l2" if self.metric == "l2" else "one_minus_dot")

    def _add(self, vectors: np.ndarray) -> None:
        if len(vectors):
            start = self.ntotal
            self.index.resize_index(start + len(vectors))
            self.index.add_items(vectors, np.arange(start, start + len(vectors)))

    def to_bytes(self) -> bytes:
        with tempfile.TemporaryDirectory(prefix="proxistore-hnswlib-") as tmp:
            path = os.path.join(tmp, "index.bin")  # scratch copy; the durable write goes through the seam
            self.index.save_index(path)
            with open(path, "rb") as f:
                return f.read()


def build_index(kind: str, backend: str, params: Dict[str, Any], x: np.ndarray, metric: str,
                cancel: Optional[Callable[[], bool]] = None, chunk_rows: Optional[int] = None) -> AnnIndex:
    """Build an index over prepared vectors ``x`` (see :func:`prepare`); ``cancel`` and
    ``chunk_rows`` as in :meth:`AnnIndex.add`."""
    if backend == "hnswlib":
        return HnswlibIndex.build(params, x, metric, cancel, chunk_rows)
    return FaissIndex.build(kind, params, x, metric, cancel, chunk_rows)


def load_index(data: bytes, path: Optional[str], kind: str, backend: str, params: Dict[str, Any],
               metric: str, dim: int, rows: int) -> AnnIndex:
    """Load an index file whose verified content is ``data``.

    faiss deserializes ``data``. hnswlib loads only from a local file: ``path`` when the index
    file is on the local disk, else (``path`` None: an object store) a temporary copy of ``data``."""
    if backend == "hnswlib":
        if path is not None:
            return HnswlibIndex.from_file(path, metric, dim, params, rows)
        with tempfile.TemporaryDirectory(prefix="proxistore-hnswlib-") as tmp:
            scratch = os.path.join(tmp, "index.bin")   # scratch copy, outside the durable store
            with open(scratch, "wb") as f:
                f.write(data)
            return HnswlibIndex.from_file(scratch, metric, dim, params, rows)
    return FaissIndex.from_bytes(data, kind, metric, dim, params)
