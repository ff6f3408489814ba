"""The in-memory table of one collection's unflushed writes: numpy-backed, searched exactly.

Vectors are kept in chunks of ~16 MB: the first grows by 1.5x (most memtables stay small), later
ones are allocated whole (their pages mapped ahead on a helper thread), a full chunk is never
copied again, so an insert into a large memtable never stalls on copying all of
it (a 150,000-row memtable of 384-d vectors grown as one array copied ~230 MB in one insert:
~370 ms). LSNs, squared norms and tombstone flags, 13 bytes a row, stay in contiguous arrays
that grow by 1.5x (amortised O(1) appends). An id has at most
one row; a newer LSN overwrites it in place (a delete turns it into a tombstone), an older LSN is
ignored, so applying batches out of LSN order still leaves the newest version.

Byte accounting (``nbytes``) counts what the rows hold: vector and LSN bytes, the id strings and
the index entry for each, and the metadata dicts with their keys and values (as JSON text,
shared evenly among the rows of a batch that have metadata). ``allocated_bytes``
adds the unused capacity of the arrays.
"""
from __future__ import annotations

import json
import os
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .contracts import OP_DELETE, SearchHits, SegmentRows, StoredRecord, WalBatch
from .distance import exact_topk, squared_norms
from .filters import metadata_table

__all__ = ["Memtable"]

_GROWTH = 1.5
_CHUNK_BYTES = 16 << 20   # vector bytes of a full chunk
_INDEX_ENTRY_BYTES = 100  # one slot of the id -> row dict and of the ids list, measured on CPython 3.11


_prefault_lock = threading.Lock()
_prefault_pool: Optional[ThreadPoolExecutor] = None


def _idle_priority() -> None:
    """The prefault thread runs only on an otherwise idle CPU: it is never urgent (it starts a
    chunk ahead), and as a normal thread it took a CPU from the writers for one scheduler tick
    (~4 ms here) each time. It holds the GIL only to start and end a fill."""
    if hasattr(os, "SCHED_IDLE"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except OSError:
            pass   # not allowed here: the chunk is still mapped ahead, at normal priority


def _touched_chunk(rows: int, dim: int) -> np.ndarray:
    chunk = np.zeros((rows, dim), dtype=np.float32)
    chunk.fill(0.0)       # maps every page now (numpy releases the GIL for it)
    return chunk


def _prefault(rows: int, dim: int) -> Optional[Future]:
    """A chunk whose pages are mapped on a helper thread, or None (interpreter exiting).

    Mapping fresh memory is the costly part of a new chunk where the kernel zeroes huge pages on
    first touch (on the 2-vCPU VM of the benchmarks: ~6 ms per 2 MB page, paid by one write in
    every ~14 of 100 rows); done here, no write waits for it."""
    global _prefault_pool
    with _prefault_lock:
        if _prefault_pool is None:
            _prefault_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="proxistore-memtable-prefault",
                                                initializer=_idle_priority)
        try:
            return _prefault_pool.submit(_touched_chunk, rows, dim)
        except RuntimeError:   # the pool is shut down: the interpreter is exiting
            return None


def _metadata_sizes(metas: Sequence[Optional[Mapping[str, Any]]]) -> List[int]:
    """Bytes each row's metadata holds: its dict as CPython sizes it, plus its share of the
    batch's keys and values measured as JSON text (one C call for the batch, where sizing every
    key and value object took a third of an insert of 1,000 rows with two keys each)."""
    present = [m for m in metas if m]
    if not present:
        return [0] * len(metas)
    share = len(json.dumps(present, separators=(",", ":"))) // len(present)
    return [sys.getsizeof(m) + share if m else 0 for m in metas]


class Memtable:
    """Rows of one collection not yet in storage. Thread-safe for one writer and many readers."""

    def __init__(self, dim: int, metric: str, capacity: int = 64, chunk_rows: Optional[int] = None) -> None:
        self.dim = dim
        self.metric = metric
        self._lock = threading.RLock()
        #: rows per vector chunk; every chunk but the last holds exactly this many
        self._chunk_rows = chunk_rows or max(64, _CHUNK_BYTES // (dim * 4))
        self._chunks: List[np.ndarray] = [np.zeros((min(capacity, self._chunk_rows), dim), dtype=np.float32)]
        self._spare: Optional[Future] = None   # the next full chunk, being mapped in the background
        self._sqnorms = np.zeros(capacity, dtype=np.float32)    # of each row, for exact search
        self._lsns = np.zeros(capacity, dtype=np.int64)
        self._deleted = np.zeros(capacity, dtype=bool)
        self._ids: List[str] = []
        self._meta: List[Optional[Mapping[str, Any]]] = []
        self._row_of: Dict[str, int] = {}
        self._row_bytes: List[int] = []
        self.nbytes = 0
        self.max_lsn = 0
        self.first_write_at: Optional[float] = None  # time.monotonic() of the oldest row
        self.flush_reason: Any = None   # the FlushRequest it was frozen for
        self.freeze_seconds = 0.0
        self.frozen_at: Optional[float] = None   # time.monotonic() when it was frozen
        self.flush_event: Any = None    # the FlushEvent that wrote it to storage, once one has
        self._meta_table = None  # cached pyarrow table of metadata, rebuilt after writes

    # -- writes ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def allocated_bytes(self) -> int:
        used = len(self._ids)
        vector_rows = (len(self._chunks) - 1) * self._chunk_rows + len(self._chunks[-1])
        return self.nbytes + (vector_rows - used) * self.dim * 4 + (len(self._lsns) - used) * 9

    def apply(self, batch: WalBatch, written_at: Optional[float] = None) -> None:
        """Apply a batch; per id, the newest LSN wins whatever the order of application.

        ``written_at`` (a ``time.monotonic()`` value) dates a replayed batch to when it was first
        written, so that age-based flush policies keep counting across a restart.
        """
        with self._lock:
            n = len(batch.ids)
            self._reserve(len(self._ids) + n)
            is_delete = batch.op == OP_DELETE
            sq = None if is_delete else squared_norms(batch.vectors)
            if not is_delete and self._row_of.keys().isdisjoint(batch.ids) and len(set(batch.ids)) == n:
                self._append_new(batch, sq)
            else:
                self._apply_rows(batch, sq)
            if self._ids:
                at = time.monotonic() if written_at is None else written_at
                if self.first_write_at is None or at < self.first_write_at:
                    self.first_write_at = at
            self._meta_table = None

    def _append_new(self, batch: WalBatch, sq: np.ndarray) -> None:
        """The common case, without a loop in Python: every id of an insert or upsert is new here."""
        n = len(batch.ids)
        start = len(self._ids)
        end = start + n
        self._put_vectors(start, batch.vectors)
        self._sqnorms[start:end] = sq
        self._lsns[start:end] = np.arange(batch.first_lsn, batch.first_lsn + n, dtype=np.int64)
        self._deleted[start:end] = False
        self._ids.extend(batch.ids)
        self._row_of.update(zip(batch.ids, range(start, end)))
        metas = batch.metadata if batch.metadata is not None else [None] * n
        self._meta.extend(metas)
        fixed = self.dim * 4 + 9 + _INDEX_ENTRY_BYTES
        sizes = [fixed + a + b for a, b in zip(map(sys.getsizeof, batch.ids), _metadata_sizes(metas))]
        self._row_bytes.extend(sizes)
        self.nbytes += sum(sizes)
        self.max_lsn = max(self.max_lsn, batch.first_lsn + n - 1)

    def _apply_rows(self, batch: WalBatch, sq: Optional[np.ndarray]) -> None:
        """Row by row: deletes, and batches with ids this memtable already holds."""
        is_delete = batch.op == OP_DELETE
        vecs = batch.vectors
        metas = batch.metadata
        for i, id_ in enumerate(batch.ids):
            lsn = batch.first_lsn + i
            meta = None if is_delete or metas is None else metas[i]
            row = self._row_of.get(id_)
            if row is None:
                row = len(self._ids)
                self._ids.append(id_)
                self._meta.append(None)
                self._row_bytes.append(0)
                self._row_of[id_] = row
                self._lsns[row] = -1
            elif self._lsns[row] >= lsn:
                continue
            self._lsns[row] = lsn
            self._deleted[row] = is_delete
            chunk, at = divmod(row, self._chunk_rows)
            if is_delete:
                self._chunks[chunk][at] = 0.0
                self._sqnorms[row] = 0.0
            else:
                self._chunks[chunk][at] = vecs[i]
                self._sqnorms[row] = sq[i]
            self._meta[row] = meta
            size = self.dim * 4 + 9 + sys.getsizeof(id_) + _INDEX_ENTRY_BYTES + _metadata_sizes([meta])[0]
            self.nbytes += size - self._row_bytes[row]
            self._row_bytes[row] = size
            if lsn > self.max_lsn:
                self.max_lsn = lsn

    def _reserve(self, rows: int) -> None:
        cap = len(self._lsns)
        if rows > cap:
            new_cap = max(rows, int(cap * _GROWTH) + 1)
            for name in ("_sqnorms", "_lsns", "_deleted"):
                old = getattr(self, name)
                new = np.zeros(new_cap, dtype=old.dtype)
                new[:cap] = old
                setattr(self, name, new)
        per = self._chunk_rows
        chunks = self._chunks
        while (len(chunks) - 1) * per + len(chunks[-1]) < rows:
            last = chunks[-1]
            if len(last) == per:
                chunks.append(self._full_chunk())
                continue
            size = min(per, max(rows - (len(chunks) - 1) * per, int(len(last) * _GROWTH) + 1))
            grown = self._full_chunk() if size == per else np.zeros((size, self.dim), dtype=np.float32)
            grown[:len(last)] = last
            chunks[-1] = grown
        if self._spare is None and (len(chunks) > 1 or rows > per // 2):
            self._spare = _prefault(per, self.dim)   # a whole chunk ahead, or half of the first

    def drop_spare(self) -> None:
        """Let go of the prefaulted next chunk (called when the memtable is frozen: it takes no
        more rows, and the spare would hold ~16 MB until the flush ends)."""
        with self._lock:
            spare, self._spare = self._spare, None
        if spare is not None:
            spare.cancel()

    def _full_chunk(self) -> np.ndarray:
        """A zeroed chunk of ``_chunk_rows`` rows: the prefaulted spare if it is ready (never
        waited for), else a new one whose pages map as rows are written."""
        spare, self._spare = self._spare, None
        if spare is not None and spare.done() and spare.exception() is None:
            return spare.result()
        return np.zeros((self._chunk_rows, self.dim), dtype=np.float32)

    def _put_vectors(self, start: int, vectors: np.ndarray) -> None:
        """Store ``vectors`` as rows ``start, start + 1, ...`` (capacity reserved)."""
        per = self._chunk_rows
        done = 0
        while done < len(vectors):
            chunk, at = divmod(start + done, per)
            take = min(per - at, len(vectors) - done)
            self._chunks[chunk][at:at + take] = vectors[done:done + take]
            done += take

    def _vectors_at(self, rows: np.ndarray) -> np.ndarray:
        """The vectors of ``rows`` (ascending row numbers), as one new contiguous array."""
        per = self._chunk_rows
        if len(self._chunks) == 1:
            return np.ascontiguousarray(self._chunks[0][rows])
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        bounds = np.searchsorted(rows, np.arange(1, len(self._chunks) + 1) * per)
        lo = 0
        for c, (chunk, hi) in enumerate(zip(self._chunks, bounds)):
            if hi > lo:
                out[lo:hi] = chunk[rows[lo:hi] - c * per]
            lo = hi
        return out

    # -- reads -----------------------------------------------------------------------------

    def lookup(self, id_: str) -> Optional[Tuple[int, bool]]:
        """``(lsn, is_live)`` of the id's row, or ``None`` when this memtable has no row for it."""
        row = self._row_of.get(id_)
        if row is None:
            return None
        return int(self._lsns[row]), not bool(self._deleted[row])

    def live_states(self, ids: set) -> Dict[str, bool]:
        """For the ids in ``ids`` that have a row here: whether it is live (not a tombstone)."""
        with self._lock:
            deleted = self._deleted
            return {id_: not deleted[row] for id_, row in
                    ((i, self._row_of[i]) for i in self._row_of.keys() & ids)}

    def get(self, id_: str) -> Optional[StoredRecord]:
        """The id's live row (``None`` if absent or deleted here; check :meth:`lookup` first)."""
        with self._lock:
            row = self._row_of.get(id_)
            if row is None or self._deleted[row]:
                return None
            chunk, at = divmod(row, self._chunk_rows)
            return StoredRecord(id_, self._chunks[chunk][at].copy(), self._meta[row], int(self._lsns[row]))

    def metadata(self, id_: str) -> Optional[Mapping[str, Any]]:
        """The metadata of the id's row (None if it has none; check :meth:`lookup` first)."""
        with self._lock:
            row = self._row_of.get(id_)
            return None if row is None else self._meta[row]

    def live_rows(self) -> int:
        with self._lock:
            return int(len(self._ids) - self._deleted[: len(self._ids)].sum())

    def metadata_table(self):
        """The rows' metadata as a pyarrow table (absent keys are null), for filter evaluation."""
        with self._lock:
            if self._meta_table is None or self._meta_table.num_rows != len(self._ids):
                self._meta_table = metadata_table(self._meta)
            return self._meta_table

    def search(self, queries: np.ndarray, k: int, *, filter: Any = None,
               shadowed: Optional[Callable[[str], bool]] = None, with_metadata: bool = False) -> SearchHits:
        """Exact top-k over live rows; rows whose id ``shadowed(id)`` says a newer memtable holds
        are skipped (see :meth:`search_visible`)."""
        return self.search_visible(queries, k, filter=filter, shadowed=shadowed, with_metadata=with_metadata)[0]

    def search_visible(self, queries: np.ndarray, k: int, *, filter: Any = None,
                       shadowed: Optional[Callable[[str], bool]] = None,
                       with_metadata: bool = False) -> Tuple[SearchHits, int]:
        """:meth:`search`, and how many rows it saw: the rows ``0 .. n-1``, in the order they were
        applied, so a caller can tell whether a later id's row was there when it searched.

        ``shadowed`` is asked only about the ids of candidate rows, never about every row: with
        dozens of frozen memtables queued behind a fast ingest, checking each row against every
        newer memtable made a search cost time in the square of the queue. A shadowed candidate
        leaves the mask and the top-k is taken again, deeper, until no candidate is shadowed.

        ``with_metadata``: each hit's metadata as of the same moment as its LSN and the filter
        (a concurrent upsert of a hit cannot give it a newer version's metadata)."""
        metas: Optional[List[Optional[Mapping[str, Any]]]] = None
        with self._lock:
            n = len(self._ids)
            m = len(queries)
            if n == 0:
                return SearchHits.empty(m, k), 0
            mask = ~self._deleted[:n]
            if filter is not None:
                mask &= filter.mask(self.metadata_table())
            chunks = list(self._chunks)
            sqnorms = self._sqnorms[:n]
            lsns = self._lsns[:n].copy()
            ids = self._ids          # append-only: rows below n keep their id
            if with_metadata:
                metas = list(self._meta)
        fetch = k
        cleared: set = set()     # candidate rows already found not shadowed
        while True:
            pos, dist = self._topk_over_chunks(queries, chunks, n, fetch, mask, sqnorms)
            if shadowed is None:
                break
            fresh = [r for r in np.unique(pos[pos >= 0]).tolist() if r not in cleared]
            gone = [r for r in fresh if shadowed(ids[r])]
            if not gone:
                break
            cleared.update(fresh)
            cleared.difference_update(gone)
            mask[gone] = False
            # The candidates are a best-first prefix of the rows; without the shadowed ones they
            # still are. A query whose prefix keeps k rows, or that ran out of rows, is answered.
            drop = np.isin(pos, gone)
            kept = ((pos >= 0) & ~drop).sum(axis=1)
            if fetch >= n or ((kept >= k) | (pos < 0).any(axis=1)).all():
                order = np.argsort(drop, axis=1, kind="stable")
                pos = np.take_along_axis(np.where(drop, -1, pos), order, axis=1)
                dist = np.take_along_axis(np.where(drop, np.inf, dist), order, axis=1)
                break
            fetch = min(n, fetch * 2)
        pos, dist = pos[:, :k], dist[:, :k]
        valid = pos >= 0
        hits = SearchHits.empty(m, k)
        hits.ids[valid] = [ids[p] for p in pos[valid].tolist()]
        hits.distances[:] = dist
        hits.lsns[valid] = lsns[pos[valid]]
        if metas is not None:
            hits.metadata = [[metas[p] if p >= 0 else None for p in row] for row in pos.tolist()]
        return hits, n

    def row_of(self, id_: str) -> Optional[int]:
        """The row index of ``id_`` here (rows keep their index), or None."""
        return self._row_of.get(id_)

    def _topk_over_chunks(self, queries: np.ndarray, chunks: List[np.ndarray], n: int, k: int,
                          mask: np.ndarray, sqnorms: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """exact_topk over the first ``n`` rows held in ``chunks``: per chunk, then the best k of those."""
        per = self._chunk_rows
        if n <= per:
            return exact_topk(queries, chunks[0][:n], k, self.metric, mask, sqnorms)
        found_pos, found_dist = [], []
        for c, chunk in enumerate(chunks):
            lo = c * per
            hi = min(n, lo + per)
            if hi <= lo:
                break
            pos, dist = exact_topk(queries, chunk[:hi - lo], k, self.metric, mask[lo:hi], sqnorms[lo:hi])
            found_pos.append(np.where(pos >= 0, pos + lo, -1))
            found_dist.append(dist)
        pos, dist = np.hstack(found_pos), np.hstack(found_dist)
        best = np.argsort(dist, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(pos, best, axis=1), np.take_along_axis(dist, best, axis=1)

    def ids(self) -> List[str]:
        with self._lock:
            return list(self._ids)

    # -- flush -----------------------------------------------------------------------------

    def to_segment_rows(self) -> SegmentRows:
        """Live rows and tombstones, for the storage engine (call on a frozen memtable)."""
        with self._lock:
            n = len(self._ids)
            deleted = self._deleted[:n]
            live = np.flatnonzero(~deleted)
            dead = np.flatnonzero(deleted)
            ids = [self._ids[i] for i in live]
            return SegmentRows(
                ids=ids,
                vectors=self._vectors_at(live),
                lsns=self._lsns[live].copy(),
                metadata=[self._meta[i] for i in live],
                deleted_ids=[self._ids[i] for i in dead],
                deleted_lsns=self._lsns[dead].copy(),
                max_lsn=int(self.max_lsn),
            )
