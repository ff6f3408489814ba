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
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from proxistore.errors import StorageError
from proxistore.fileio import FileSystem, default_filesystem

from . import parquet
from .index import AnnIndex, load_index, prepare
from .manifest import IndexRef

__all__ = ["SegmentData", "SegmentRetired", "REPAIR_HINT"]

#: Appended to the error of a segment file that does not read back: how to find and handle it.
REPAIR_HINT = ("; `proxistore storage verify` lists all damage, `proxistore storage repair` sets damaged "
               "segments aside and lists the rows lost")


#: Filter masks a segment keeps (:meth:`SegmentData.filter_mask`): n bytes each.
FILTER_MASKS_KEPT = 8


class SegmentRetired(Exception):
    """A reader touched a segment whose files compaction has removed; retry on the current state."""


class SegmentData:
    """Ids, LSNs, metadata (eager) and vectors, index (lazy) of one immutable segment file."""

    def __init__(self, name: str, path: str, dim: int, metric: str, ids: np.ndarray,
                 lsns: np.ndarray, meta: pa.Table, vectors: Optional[np.ndarray] = None, *,
                 fs: Optional[FileSystem] = None) -> None:
        self.name = name
        self.path = path
        self.fs = fs if fs is not None else default_filesystem()   # reads go through it
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
        self._meta_columns: Optional[_MetadataColumns] = None   # built on the first metadata fetch
        self._filter_masks: "OrderedDict[str, np.ndarray]" = OrderedDict()   # see filter_mask
        self._masks_lock = threading.Lock()      # not _lock: an index load holds that for seconds

    @classmethod
    def open(cls, name: str, path: str, dim: int, metric: str, rows: int, *,
             fs: Optional[FileSystem] = None) -> "SegmentData":
        fs = fs if fs is not None else default_filesystem()
        try:
            ids, lsns, meta = parquet.read_columns(path, fs.pyarrow_fs)
        except StorageError as e:
            raise StorageError(f"{e}{REPAIR_HINT}") from e
        if len(ids) != rows:
            raise StorageError(f"{path}: segment has {len(ids)} rows, the manifest says {rows}{REPAIR_HINT}")
        return cls(name, path, dim, metric, ids, lsns, meta, fs=fs)

    # -- vectors -------------------------------------------------------------------------------

    def vectors(self) -> np.ndarray:
        """The stored vectors ``(n, dim)`` float32 (read on first use)."""
        v = self._vectors
        if v is not None:
            return v
        with self._lock:
            if self._vectors is None:
                try:
                    self._vectors = parquet.read_vectors(self.path, self.dim, self.fs.pyarrow_fs)
                except StorageError as e:
                    if self.retired:  # compaction removed the file after this reader's snapshot
                        raise SegmentRetired(self.name) from None
                    raise StorageError(f"{e}{REPAIR_HINT}") from e
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

    def prepared_once(self) -> np.ndarray:
        """Prepared vectors for a one-off use (an index build): the cached array when exact
        searches made one, else a temporary that is not kept (kept, it would double the
        segment's memory for as long as the segment lives)."""
        p = self._prepared
        return p if p is not None else prepare(self.vectors(), self.metric)

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
            data = self.fs.read_immutable(path)
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
            index = load_index(data, path if self.fs.local else None, ref.kind, ref.backend, ref.params,
                               self.metric, self.dim, self.n)
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

    def filter_mask(self, flt: Any) -> np.ndarray:
        """The rows ``flt`` (a MetadataFilter) keeps, read-only. The metadata never changes, so
        the masks of the last :data:`FILTER_MASKS_KEPT` filters are kept: evaluating one over
        100,000 rows costs ~160 µs, most of a post-filtered search, and workloads repeat their
        filters (a tenant, a category)."""
        key = flt.cache_key
        if key is None:
            return flt.mask(self.meta)
        with self._masks_lock:
            mask = self._filter_masks.get(key)
            if mask is not None:
                self._filter_masks.move_to_end(key)
                return mask
        mask = flt.mask(self.meta)
        mask.flags.writeable = False
        with self._masks_lock:
            self._filter_masks[key] = mask
            while len(self._filter_masks) > FILTER_MASKS_KEPT:
                self._filter_masks.popitem(last=False)
        return mask

    def metadata_rows(self, rows: Sequence[int]) -> List[Optional[Dict[str, Any]]]:
        """Metadata dicts of ``rows`` (ints): each row's non-null keys, or None when it has none."""
        columns = self._meta_columns
        if columns is None:
            with self._lock:
                if self._meta_columns is None:
                    self._meta_columns = _MetadataColumns(self.meta)
                columns = self._meta_columns
        return columns.rows(rows)


class _MetadataColumns:
    """The metadata columns as Python lists, built on a segment's first metadata fetch.

    A search's hits are a few rows at scattered positions; picking them from lists costs ~1 µs
    for 10 rows, where ``Table.take`` costs ~40 µs and numpy fancy indexing plus ``tolist`` ~15.
    When no column has nulls, a row's dict is made by a function compiled for these keys, one
    dict display (``{'module': c0[r], 'kind': c1[r]}``), as ``namedtuple`` compiles its
    methods: 10 rows right after a faiss search (caches cold) cost 9.7 µs that way, 15.2 µs
    with ``dict(zip(keys, values))``.
    Strings are decoded once through a dictionary, so a column repeating a few values holds one
    string object per distinct value and 8 bytes a row. All-null columns are left out (their
    keys are never set); a null is None in its list and its key is left out of the row's dict.
    """

    def __init__(self, meta: pa.Table) -> None:
        self.keys: List[str] = []
        self.lists: List[List[Any]] = []
        self.has_nulls = False
        for key, col in zip(meta.column_names, meta.columns):
            arr = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
            if pa.types.is_null(arr.type) or arr.null_count == len(arr):
                continue
            if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
                enc = pc.dictionary_encode(arr)
                lookup = enc.dictionary.to_pylist() + [None]
                codes = enc.indices.fill_null(len(lookup) - 1).to_numpy(zero_copy_only=False)
                values = [lookup[c] for c in codes.tolist()]
            else:
                values = arr.to_pylist()
            self.keys.append(key)
            self.lists.append(values)
            self.has_nulls = self.has_nulls or arr.null_count > 0
        self._row = None if self.has_nulls or not self.keys else _row_builder(self.keys, self.lists)

    def rows(self, rows: Sequence[int]) -> List[Optional[Dict[str, Any]]]:
        if self._row is not None:
            return list(map(self._row, rows))
        if not self.keys:
            return [None] * len(rows)
        picked = zip(*[[values[r] for r in rows] for values in self.lists])
        keys = self.keys
        if self.has_nulls:
            return [{k: v for k, v in zip(keys, vals) if v is not None} or None for vals in picked]
        return [dict(zip(keys, vals)) for vals in picked]


def _row_builder(keys: List[str], lists: List[List[Any]]) -> Callable[[int], Dict[str, Any]]:
    """``row -> {keys[0]: lists[0][row], ...}`` as one compiled dict display. The keys enter the
    source as ``repr`` literals (a ``str``'s repr always reads back as the same string) and the
    columns as the function's globals, so no metadata text is ever run as code."""
    columns = {f"c{i}": values for i, values in enumerate(lists)}
    body = ", ".join(f"{key!r}: c{i}[row]" for i, key in enumerate(keys))
    return eval(f"lambda row: {{{body}}}", columns)     # noqa: S307 - built from repr literals
