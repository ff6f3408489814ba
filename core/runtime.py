"""The live state of one open collection: its WAL, memtables and store, and the data path.

Write: validate (caller) → reserve ids and LSNs under the collection lock → WAL append →
WAL sync outside the lock (so concurrent batches share fsyncs) → apply to the active memtable →
acknowledge. Read: memtables newest first, then storage; newest LSN wins, tombstones hide.
"""
from __future__ import annotations

import threading
import time
from itertools import repeat
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .contracts import (OP_DELETE, OP_INSERT, CollectionInfo, CollectionState, CollectionStore,
                        CollectionWal, SearchHits, StoredRecord, WalBatch)
from .errors import DuplicateId
from .memindex import MemtableIndex
from .memtable import Memtable
from .validation import check_metadata

__all__ = ["CollectionRuntime"]

#: Bytes a row costs in a memtable beyond its vector, used to reserve memory before a write.
ROW_OVERHEAD_ESTIMATE = 9 + 80 + 100


class CollectionRuntime:
    """One collection's data path. Thread-safe; owned by a :class:`~proxistore.database.Database`."""

    def __init__(self, db: Any, info: CollectionInfo, settings: Mapping[str, Mapping[str, Any]],
                 wal: CollectionWal, store: CollectionStore) -> None:
        self.db = db
        self.info = info
        self.name = info.name
        self.dim = info.dim
        self.metric = info.metric
        self.settings = settings              # {"flush": {policy: {...}}, "storage": {engine: {...}}}
        self.wal = wal
        self.store = store
        self._cond = threading.Condition(threading.RLock())
        self.memtables: List[Memtable] = [Memtable(self.dim, self.metric)]   # newest first
        self._index = MemtableIndex()         # id -> newest memtable with a row for it
        self.flush_lock = threading.Lock()
        self.flushing = False
        self._freezing = False
        self._inflight = 0
        self._pending: Dict[str, Tuple[int, bool]] = {}
        self._meta_types: Dict[str, str] = dict(store.metadata_types())
        self.live_count = store.count()
        self.recovery: Dict[str, Any] = {}

    # -- recovery --------------------------------------------------------------------------

    def replay(self) -> Tuple[int, int]:
        """Re-apply WAL batches above the store's flushed LSN; returns (batches, max LSN seen)."""
        flushed = self.store.flushed_lsn
        batches = 0
        max_lsn = flushed
        for batch in self.wal.replay(flushed):
            if batch.last_lsn <= flushed:
                continue
            states = self._states(batch.ids)
            self._note_metadata_types(batch)
            age = max(0.0, time.time() - batch.timestamp) if batch.timestamp else 0.0
            self._apply_active(batch, written_at=time.monotonic() - age)
            self.live_count += self._count_delta(batch.op, batch.ids, states)
            batches += 1
            max_lsn = max(max_lsn, batch.last_lsn)
        # Segments that storage already covers (a crash came between a flush's commit and its
        # checkpoint) go now rather than at the next flush.
        self.wal.checkpoint(flushed)
        return batches, max_lsn

    # -- writes ----------------------------------------------------------------------------

    def write(self, op: str, ids: List[str], vectors: Optional[np.ndarray],
              metadata: Optional[Sequence[Any]]) -> int:
        """Durably apply one batch and return its first LSN (the acknowledgement)."""
        self.db.maintenance.check_running()
        reserve = len(ids) * ((self.dim * 4 if vectors is not None else 0) + ROW_OVERHEAD_ESTIMATE)
        self.db.admission.admit(reserve, self.name)
        try:
            with self._cond:
                while self._freezing:
                    self._cond.wait()
                states = self._states(ids)
                if op == OP_INSERT:
                    existing = [i for i in ids if states[i]]
                    if existing:
                        raise DuplicateId(f"insert of ids that already exist in collection {self.name!r}: "
                                          f"{existing[:5]}{' ...' if len(existing) > 5 else ''}; use upsert "
                                          f"to replace them")
                if metadata is not None:
                    metadata = check_metadata(metadata, len(ids), self._meta_types)
                first = self.db.allocate_lsns(len(ids))
                batch = WalBatch(op, first, ids, vectors, metadata, time.time())
                token = self.wal.append(batch)
                self._note_metadata_types(batch)
                live = op != OP_DELETE
                self._pending.update(zip(ids, zip(range(first, first + len(ids)), repeat(live))))
                self._inflight += 1
            try:
                self.wal.sync(token)
            except BaseException:
                with self._cond:
                    self._unpend(batch)
                    self._inflight -= 1
                    self._cond.notify_all()
                raise
            with self._cond:
                try:
                    self._apply_active(batch)
                    self.live_count += self._count_delta(op, ids, states)
                finally:   # whatever apply raised, a freeze waiting for in-flight batches goes on
                    self._unpend(batch)
                    self._inflight -= 1
                    self._cond.notify_all()
        finally:
            self.db.admission.release(reserve)
        self.db.maintenance.wake()
        return first

    def _apply_active(self, batch: WalBatch, written_at: Optional[float] = None) -> None:
        """Apply ``batch`` to the active memtable and point its ids at it in the index (even when
        the apply failed part-way: an id the index points at a memtable without its row is
        resolved by asking the memtables, see :meth:`_states`)."""
        active = self.memtables[0]
        try:
            active.apply(batch, written_at=written_at)
        finally:
            self._index.note_applied(active, batch.ids)

    def _unpend(self, batch: WalBatch) -> None:
        """Forget ``batch``'s in-flight ids (call under the lock, before ``_inflight`` drops)."""
        if self._inflight == 1:     # the only batch in flight: every pending id is its own
            self._pending.clear()
            return
        for i, id_ in enumerate(batch.ids):
            entry = self._pending.get(id_)
            if entry is not None and entry[0] == batch.first_lsn + i:
                del self._pending[id_]

    def _states(self, ids: Sequence[str]) -> Dict[str, bool]:
        """Whether each id currently has a live version (pending, the newest memtable holding
        it, then storage). Under fast ingest dozens of frozen memtables may wait for their
        flush; the index finds the one memtable to ask per id, where asking all of them
        cost about a tenth of an insert of 100 rows. Call under the collection lock."""
        out: Dict[str, bool] = {}
        rest = set(ids)
        pending = self._pending
        if pending:
            for id_ in rest.intersection(pending):
                out[id_] = pending[id_][1]
            rest.difference_update(out)
        if rest:
            found, unresolved = self._index.live_states(rest)
            out.update(found)
            rest.difference_update(found)
            if unresolved:      # an apply failed part-way: ask every memtable, newest first
                for mt in self.memtables:
                    found = mt.live_states(unresolved)
                    out.update(found)
                    unresolved.difference_update(found)
                    rest.difference_update(found)
        if rest:
            stored = self.store.existing(list(rest))
            out.update(dict.fromkeys(rest, False))
            out.update(dict.fromkeys(stored, True))
        return out

    @staticmethod
    def _count_delta(op: str, ids: Sequence[str], states: Mapping[str, bool]) -> int:
        live_before = sum(map(states.__getitem__, ids))
        return -live_before if op == OP_DELETE else len(ids) - live_before

    def _note_metadata_types(self, batch: WalBatch) -> None:
        types = self._meta_types
        for meta in batch.metadata or ():
            if meta and not types.keys() >= meta.keys():    # the usual row has only known keys
                for key, value in meta.items():
                    if value is not None and key not in types:
                        types[key] = type(value).__name__

    # -- reads -----------------------------------------------------------------------------

    def get(self, ids: Sequence[str]) -> List[Optional[StoredRecord]]:
        memtables = self.memtables
        found: Dict[str, Optional[StoredRecord]] = {}
        rest = []
        for id_ in ids:
            for mt in memtables:
                hit = mt.lookup(id_)
                if hit is not None:
                    found[id_] = mt.get(id_) if hit[1] else None
                    break
            else:
                rest.append(id_)
        if rest:
            stored = self.store.get(rest)
            for id_ in rest:
                found[id_] = stored.get(id_)
        return [found[i] for i in ids]

    def metadata(self, ids: Sequence[str]) -> List[Optional[Mapping[str, Any]]]:
        """The metadata of the newest live version of each id (None if it has none or is gone);
        what ``search`` fetches for its hits, without copying vectors."""
        memtables = [mt for mt in self.memtables if len(mt)]
        if not memtables:                      # everything is in storage
            stored = self.store.metadata(ids)
            return [stored.get(i) for i in ids]
        found: Dict[str, Optional[Mapping[str, Any]]] = {}
        rest = []
        for id_ in ids:
            for mt in memtables:
                hit = mt.lookup(id_)
                if hit is not None:
                    found[id_] = mt.metadata(id_) if hit[1] else None
                    break
            else:
                rest.append(id_)
        if rest:
            stored = self.store.metadata(rest)
            for id_ in rest:
                found[id_] = stored.get(id_)
        return [found[i] for i in ids]

    def search(self, queries: np.ndarray, k: int, filter: Any = None, ef: Optional[int] = None,
               with_metadata: bool = False) -> SearchHits:
        """Top-k over memtables and storage: newest version wins, deleted ids never appear.

        ``with_metadata``: ask the store for its hits' metadata along (``hits.metadata``; it
        may stay None, then the caller uses :meth:`metadata`)."""
        memtables = list(self.memtables)          # snapshot before the store: see module doc
        m = len(queries)
        if not any(len(mt) for mt in memtables):  # everything is in storage: its hits are the answer
            if with_metadata:
                hits = self.store.search_with_metadata(queries, k, filter=filter, ef=ef)
            else:
                hits = self.store.search(queries, k, filter=filter, ef=ef)
            if hits.ids.shape == (m, k):
                return hits
            return _merge([hits], m, k)
        parts: List[SearchHits] = []
        seen: List[Tuple[Memtable, int]] = []     # memtables searched so far (newer), rows each showed
        for mt in memtables:
            if len(mt):                           # an empty memtable has nothing to add or shadow
                shadowed = self._shadow_test(mt, list(seen)) if seen else None
                hits, n = mt.search_visible(queries, k, filter=filter, shadowed=shadowed,
                                            with_metadata=with_metadata)
                parts.append(hits)
                seen.append((mt, n))
        parts.append(self._search_store(queries, k, filter, ef, memtables, with_metadata))
        return _merge(parts, m, k)

    def _shadow_test(self, mt: Memtable, newer: List[Tuple[Memtable, int]]) -> Callable[[str], bool]:
        """Whether an id of ``mt`` has a row in one of the ``newer`` memtables among the rows that
        search saw there (a row written after that part of the search does not hide the older
        one, or the id would vanish from the answer)."""
        index = self._index

        def shadowed(id_: str) -> bool:
            # Only the newest memtable of an id can hold it without a newer one holding it too;
            # a lock-free dict read, since writers replace whole entries.
            if index.newest(id_) is mt:
                return False
            for other, n in newer:
                row = other.row_of(id_)
                if row is not None and row < n:
                    return True
            return False
        return shadowed

    def _search_store(self, queries: np.ndarray, k: int, filter: Any, ef: Optional[int],
                      memtables: List[Memtable], with_metadata: bool = False) -> SearchHits:
        """Storage hits not superseded by a memtable row; fetches deeper when some were dropped."""
        fetch = k
        total = self.store.count()
        search = self.store.search_with_metadata if with_metadata else self.store.search
        while True:
            hits = search(queries, fetch, filter=filter, ef=ef)
            dropped = np.zeros(hits.ids.shape, dtype=bool)
            if any(len(mt) for mt in memtables):
                for (qi, j), id_ in np.ndenumerate(hits.ids):
                    if id_ is None:
                        continue
                    for mt in memtables:
                        found = mt.lookup(id_)
                        if found is not None:
                            if found[0] > hits.lsns[qi, j]:
                                dropped[qi, j] = True
                            break
            if not dropped.any():
                return hits
            kept = (~dropped) & (hits.lsns >= 0)
            if kept.sum(axis=1).min() >= k or fetch >= total:
                hits.ids[dropped] = None
                hits.distances[dropped] = np.inf
                hits.lsns[dropped] = -1
                return hits
            fetch = min(total, fetch * 2)

    def count(self) -> int:
        return self.live_count

    # -- flush support ---------------------------------------------------------------------

    def memtable_bytes(self) -> Tuple[int, int]:
        """(bytes of the active memtable, bytes of all memtables including frozen ones)."""
        memtables = self.memtables
        active = memtables[0].nbytes
        return active, sum(m.nbytes for m in memtables)

    def has_frozen(self) -> bool:
        """Whether a frozen memtable waits for its flush."""
        return len(self.memtables) > 1

    def frozen_for_flush(self, max_bytes: int = 0) -> List[Memtable]:
        """The frozen memtables the next flush writes, oldest first: the oldest, and the ones
        frozen after it by the same policy while their bytes together stay within ``max_bytes``
        (so a flush stays attributed to one policy); empty when none is frozen."""
        frozen = self.memtables[:0:-1]          # oldest first, the active one left out
        if not frozen:
            return []
        policy = getattr(frozen[0].flush_reason, "policy", None)
        taken, total = frozen[:1], frozen[0].nbytes
        for mt in frozen[1:]:
            total += mt.nbytes
            if total > max_bytes or getattr(mt.flush_reason, "policy", None) != policy:
                break
            taken.append(mt)
        return taken

    def freeze(self, reason: Any = None) -> Optional[Memtable]:
        """Make the active memtable immutable (after in-flight batches land), tagged with
        ``reason`` (the FlushRequest), and rotate the WAL; None when it is empty.

        The tag is set before the memtable joins the frozen ones, since a running drain may
        pick it up at once. Writers wait while this holds the lock, so only the rotation itself
        is done there; the WAL then makes its next segments ahead (on this thread, while writers
        go on, see ``CollectionWal.prepare_rotation``)."""
        started = time.perf_counter()
        with self._cond:
            self._freezing = True
            try:
                while self._inflight:
                    self._cond.wait()
                active = self.memtables[0]
                if len(active) == 0:
                    return None
                self.wal.rotate()
                active.flush_reason = reason
                active.drop_spare()
                active.freeze_seconds = time.perf_counter() - started
                active.frozen_at = time.monotonic()
                self.memtables = [Memtable(self.dim, self.metric)] + self.memtables
            finally:
                self._freezing = False
                self._cond.notify_all()
        self.wal.prepare_rotation()
        return active

    def drop_frozen(self, frozen: Sequence[Memtable]) -> None:
        """Forget flushed memtables, all at once: their rows are in storage now."""
        with self._cond:
            gone = set(map(id, frozen))
            self.memtables = [m for m in self.memtables if id(m) not in gone]
            for mt in frozen:
                self._index.forget(mt)

    def state(self, now: float) -> CollectionState:
        """What policies see: the active memtable (frozen ones are already on their way)."""
        memtables = self.memtables
        active = memtables[0]
        return CollectionState(
            name=self.name,
            memtable_bytes=active.nbytes,
            memtable_rows=len(active),
            oldest_unflushed_age=(now - active.first_write_at) if active.first_write_at is not None else None,
            wal_bytes=self.wal.size_bytes(),
            flushing=self.flushing or len(memtables) > 1,
            settings=self.settings["flush"],
        )

    def close(self) -> None:
        self.wal.close()
        self.store.close()


def _merge(parts: List[SearchHits], m: int, k: int) -> SearchHits:
    """Merge per-source top-k lists by distance, one entry per id (the newest LSN).

    Each source lists an id at most once per query (a memtable holds one row per id, a store
    returns live rows, one version per id), so a single source that is already best-first, k
    wide and padded only at the end is returned as it is; otherwise entries are taken in distance
    order, skipping ids already taken.
    """
    found = [(p, p.ids != None) for p in parts if p.ids.size]  # noqa: E711 (elementwise)
    live = [(p, valid) for p, valid in found if valid.any()]
    if not live:
        return SearchHits.empty(m, k)
    if len(live) == 1:
        p, valid = live[0]
        if (p.ids.shape[1] == k and (valid[:, :-1] >= valid[:, 1:]).all()
                and (p.distances[:, 1:] >= p.distances[:, :-1]).all()):
            return p
    out = SearchHits.empty(m, k)
    with_meta = all(p.metadata is not None for p, _ in live)
    ids = np.concatenate([p.ids for p, _ in live], axis=1)
    dists = np.concatenate([p.distances for p, _ in live], axis=1)
    lsns = np.concatenate([p.lsns for p, _ in live], axis=1)
    order = np.argsort(dists, axis=1, kind="stable")
    ids_l, order_l = ids.tolist(), order.tolist()          # plain lists: the loop stays in Python
    rows, cols, taken = [], [], []
    for qi in range(m):
        row_ids = ids_l[qi]
        seen = set()
        j = 0
        for col in order_l[qi]:
            id_ = row_ids[col]
            if id_ is None or id_ in seen:
                continue
            seen.add(id_)
            rows.append(qi)
            cols.append(j)
            taken.append(col)
            j += 1
            if j == k:
                break
    if taken:
        r = np.asarray(rows)
        c = np.asarray(cols)
        src = np.asarray(taken)
        out.ids[r, c] = ids[r, src]
        out.distances[r, c] = dists[r, src]
        out.lsns[r, c] = lsns[r, src]
    if with_meta:      # each hit keeps the metadata its source read with it
        metas = [[meta for p, _ in live for meta in p.metadata[qi]] for qi in range(m)]
        out.metadata = [[None] * k for _ in range(m)]
        for qi, j, col in zip(rows, cols, taken):
            out.metadata[qi][j] = metas[qi][col]
    return out
