"""One segment's content in memory, shared by every snapshot that lists the segment.

A segment file never changes, so its ids, LSNs and metadata are loaded once (on open) and its
vectors and ANN index lazily, on first use, under a per-segment lock. What *does* change (its
deletion vector and which index file the manifest references) lives in the collection's
snapshot, not here.

When compaction retires a segment it removes the files after the manifest commit; a reader
still holding an older snapshot that then needs an unloaded part gets :class:`SegmentRetired`
and retries on the current snapshot.
"""
from __future__ import annotations

import os
import threading
import zlib
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pyarrow as pa

from proxistore.errors import StorageError

from . import parquet
from .index import AnnIndex, load_index, prepare
from .manifest import IndexRef

__all__ = ["SegmentData", "SegmentRetired"]


class SegmentRetired(Exception):
    """A reader touched a segment whose files compaction has removed; retry on the current state."""


class SegmentData:
    """Ids, LSNs, metadata (eager) and vectors, index (lazy) of one immutable segment file."""

    def __init__(self, name: str, path: str, dim: int, metric: str, ids: np.ndarray,
                 lsns: np.ndarray, meta: pa.Table, vectors: Optional[np.ndarray] = None) -> None:
        self.name = name
        self.path = path
        self.dim = dim
        self.metric = metric
        self.ids = ids
        self.lsns = lsns
        self.meta = meta
        self.n = len(ids)
        self.row_of: Dict[str, int] = dict(zip(ids.tolist(), range(self.n)))
        self._vectors = vectors
        self._prepared: Optional[np.ndarray] = None
        self._indexes: Dict[str, Optional[AnnIndex]] = {}
        self._lock = threading.Lock()
        self.retired = False
        self.index_loads = 0

    @classmethod
    def open(cls, name: str, path: str, dim: int, metric: str, rows: int) -> "SegmentData":
        ids, lsns, meta = parquet.read_columns(path)
        if len(ids) != rows:
            raise StorageError(f"{path}: segment has {len(ids)} rows, the manifest says {rows}")
        return cls(name, path, dim, metric, ids, lsns, meta)

    # -- vectors -------------------------------------------------------------------------------

    def vectors(self) -> np.ndarray:
        """The stored vectors ``(n, dim)`` float32 (read on first use)."""
        v = self._vectors
        if v is not None:
            return v
        with self._lock:
            if self._vectors is None:
                try:
                    self._vectors = parquet.read_vectors(self.path, self.dim)
                except StorageError:
                    if self.retired:  # compaction removed the file after this reader's snapshot
                        raise SegmentRetired(self.name) from None
                    raise
            return self._vectors

    def prepared(self) -> np.ndarray:
        """Vectors as the metric's exact search and index want them (unit rows for cosine)."""
        p = self._prepared
        if p is not None:
            return p
        v = self.vectors()
        with self._lock:
            if self._prepared is None:
                self._prepared = prepare(v, self.metric)
            return self._prepared

    # -- index ---------------------------------------------------------------------------------

    def index(self, ref: IndexRef) -> Optional[AnnIndex]:
        """The loaded index of ``ref``, or None when its file is missing or corrupt (the caller
        searches exactly and maintenance rebuilds it)."""
        if ref.file in self._indexes:
            return self._indexes[ref.file]
        with self._lock:
            if ref.file not in self._indexes:
                self._indexes[ref.file] = self._load_index(ref)
            return self._indexes[ref.file]

    def _load_index(self, ref: IndexRef) -> Optional[AnnIndex]:
        path = os.path.join(os.path.dirname(self.path), ref.file)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            if self.retired:
                raise SegmentRetired(self.name) from None
            return None
        except OSError:
            return None
        if len(data) != ref.bytes or zlib.crc32(data) != ref.crc32:
            return None
        self.index_loads += 1
        try:
            index = load_index(data, path, ref.kind, ref.backend, ref.params, self.metric, self.dim, self.n)
        except (RuntimeError, ValueError, MemoryError):
            return None  # unreadable despite a matching checksum: rebuilt by maintenance
        return index if index.ntotal == self.n else None

    def set_index(self, ref: IndexRef, index: AnnIndex) -> None:
        """Install an index just built (so it is not read back from its file)."""
        with self._lock:
            self._indexes[ref.file] = index

    def index_broken(self, ref: IndexRef) -> bool:
        """True once loading ``ref`` failed (missing, checksum mismatch or unreadable)."""
        return ref.file in self._indexes and self._indexes[ref.file] is None

    def drop_index(self, file: str) -> None:
        with self._lock:
            self._indexes.pop(file, None)

    # -- rows ----------------------------------------------------------------------------------

    def metadata_rows(self, rows: Sequence[int]) -> List[Optional[Dict[str, Any]]]:
        """Metadata dicts of ``rows``: each row's non-null keys, or None when it has none."""
        if self.meta.num_columns == 0:
            return [None] * len(rows)
        picked = self.meta.take(pa.array(np.asarray(rows, dtype=np.int64))).to_pylist()
        out: List[Optional[Dict[str, Any]]] = []
        for rec in picked:
            kept = {k: v for k, v in rec.items() if v is not None}
            out.append(kept or None)
        return out
