"""One VIPER collection: immutable Parquet segments, deletion vectors, ANN indexes, a manifest.

Writes (``write_segment``, compaction, index installs) prepare their files outside any lock,
then take the commit lock only to decide deletion vectors, fsync the directory, commit the
manifest and swap the in-memory :class:`~.snapshot.Snapshot`. Reads take the current snapshot
once and never wait for a writer. Invariant after every commit: each id has at most one live
stored row (the newest); older versions are marked in their segment's deletion vector by the
same commit that writes the newer one. Where each id's live row is (:mod:`.locations`) is
updated by the same commits, so ``get``, ``existing`` and superseding never scan segments.
"""
from __future__ import annotations

import os
import threading
import time
import zlib
from collections import Counter
from dataclasses import replace
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from proxistore.contracts import (CollectionInfo, CollectionStore, SearchHits, SegmentRows,
                                  SegmentWriteResult, StoredRecord)
from proxistore.errors import DimensionMismatch, InvalidArgument, StorageError
from proxistore.fileio import FileSystem
from proxistore.filters import MetadataFilter, column_kind, compile_filter

from . import parquet
from .config import ViperSettings, segment_bound
from .deletions import decode_deletions, encode_deletions, mark
from .files import UncommittedFiles, fsync_dir, remove_files, write_file
from .index import AnnIndex
from .locations import Locations
from .maintenance import Maintenance
from .manifest import (IndexRef, Manifest, SegmentEntry, commit_manifest, load_manifest,
                       remove_orphans)
from .search import SearchCounters, search_views
from .segment import SegmentData, SegmentRetired
from .snapshot import SegmentView, Snapshot

__all__ = ["ViperCollection"]

_RETRIES = 5


class ViperCollection(Maintenance, CollectionStore):
    """The :class:`~proxistore.contracts.CollectionStore` of the viper engine."""

    def __init__(self, info: CollectionInfo, settings: ViperSettings, *, fs: FileSystem,
                 directory: str) -> None:
        self.info = info
        self.settings = settings
        self.fs = fs
        self.directory = directory
        self.dim = int(info.dim)
        self.metric = info.metric
        self._commit_lock = threading.Lock()      # one manifest commit at a time
        self._maintain_lock = threading.Lock()    # one compaction / index build pass at a time
        self._alloc_lock = threading.Lock()
        self._compact_waiting = 0                 # compact() callers waiting for maintain()
        self._stopping = threading.Event()        # set by stop_background(): closing
        self.counters = SearchCounters()
        self.events: Counter = Counter()
        manifest = load_manifest(fs, directory)
        if manifest.dim != self.dim or manifest.metric != self.metric:
            raise StorageError(f"{directory}: manifest has dim {manifest.dim} metric {manifest.metric}, "
                               f"the collection says dim {self.dim} metric {self.metric}")
        self.orphans_removed = remove_orphans(fs, directory, manifest)
        self._next_file = manifest.next_file
        self._state = Snapshot(manifest, tuple(self._load_view(e) for e in manifest.segments))
        self._where = Locations(self._state.views)   # changed only under _commit_lock, after a commit
        self._types_cache: Tuple[int, Dict[str, str]] = (-1, {})

    def _load_view(self, entry: SegmentEntry) -> SegmentView:
        path = os.path.join(self.directory, entry.file)
        data = SegmentData.open(entry.name, path, self.dim, self.metric, entry.rows, fs=self.fs)
        deleted = None
        if entry.deletes_file:
            dpath = os.path.join(self.directory, entry.deletes_file)
            try:
                raw = self.fs.read_bytes(dpath)
            except OSError as e:
                raise StorageError(f"{dpath}: cannot read deletion vector: {e}") from e
            deleted = decode_deletions(raw, entry.rows, dpath)
            if int(deleted.sum()) != entry.deleted:
                raise StorageError(f"{dpath}: {int(deleted.sum())} deleted rows, the manifest says {entry.deleted}")
        return SegmentView(entry, data, deleted)

    # -- file helpers (also used by maintenance) -------------------------------------------------

    def _alloc(self) -> int:
        with self._alloc_lock:
            n = self._next_file
            self._next_file += 1
            return n

    def _write(self, name: str, data: Any) -> int:
        return write_file(self.fs, self.directory, name, data)

    def _write_index(self, segment: str, index: AnnIndex, written: Optional[UncommittedFiles] = None) -> IndexRef:
        data = index.to_bytes()
        file = f"{segment}.{self._alloc():08d}.{index.kind}.{index.backend}"
        nbytes = self._write(written.add(file) if written is not None else file, data)
        return IndexRef(file=file, kind=index.kind, backend=index.backend, params=dict(index.params),
                        bytes=nbytes, crc32=zlib.crc32(memoryview(data).cast("B")))

    def _write_deletions(self, segment: str, deleted: np.ndarray) -> Tuple[str, int]:
        file = f"{segment}.{self._alloc():08d}.del"
        return file, self._write(file, encode_deletions(deleted))

    def _commit(self, manifest: Manifest, views: Sequence[SegmentView],
                phases: Optional[Dict[str, float]] = None) -> None:
        """Caller holds the commit lock and has fsynced every new file: make their directory
        entries durable, commit the manifest, publish the snapshot."""
        t = time.perf_counter()
        fsync_dir(self.fs, self.directory)
        t2 = time.perf_counter()
        manifest = replace(manifest, next_file=self._next_file)
        manifest = commit_manifest(self.fs, self.directory, manifest)   # atomic: rename, or a new versioned object
        self._state = Snapshot(manifest, tuple(views))
        if phases is not None:
            phases["fsync_dir"] = t2 - t
            phases["manifest"] = time.perf_counter() - t2

    def _remove(self, names: Iterable[str]) -> None:
        failed = remove_files(self.fs, self.directory, names)
        self.events["cleanup_errors"] += len(failed)

    # -- contract: writes ----------------------------------------------------------------------

    @property
    def flushed_lsn(self) -> int:
        return self._state.manifest.flushed_lsn

    def _new_segment(self, ids: List[str], vectors: np.ndarray, lsns: np.ndarray, metadata: list,
                     written: UncommittedFiles, phases: Dict[str, float]) -> SegmentView:
        """Encode and write the Parquet file of a flush's live rows (not yet committed)."""
        t = time.perf_counter()
        name = f"seg-{self._alloc():08d}"
        table = parquet.table_from_rows(ids, vectors, lsns, metadata, self.dim)
        buf = parquet.encode(table)
        phases["encode"] = time.perf_counter() - t
        t = time.perf_counter()
        file = name + ".parquet"
        nbytes = self._write(written.add(file), buf)
        phases["write"] = time.perf_counter() - t
        data = SegmentData(name, os.path.join(self.directory, file), self.dim, self.metric,
                           np.array(ids, dtype=object), lsns, parquet.metadata_of(table), vectors=vectors, fs=self.fs)
        entry = SegmentEntry(name=name, file=file, rows=len(ids), bytes=nbytes,
                             min_lsn=int(lsns.min()), max_lsn=int(lsns.max()))
        return SegmentView(entry, data, None)

    def write_segment(self, rows: SegmentRows) -> SegmentWriteResult:
        """Write the live rows as a new segment, mark what they supersede or delete in older
        segments' deletion vectors, and record ``rows.max_lsn`` — in one manifest commit."""
        phases: Dict[str, float] = {}
        flushed = self._state.manifest.flushed_lsn
        if (len(rows.ids) or len(rows.deleted_ids)) and rows.max_lsn <= flushed:
            raise StorageError(f"write_segment: rows up to LSN {rows.max_lsn} are not above "
                               f"flushed_lsn {flushed} of collection {self.info.name!r}")
        ids, vectors, lsns, metadata = _newest_live(rows, self.dim)
        with UncommittedFiles(self.fs, self.directory) as written:
            new_view = self._new_segment(ids, vectors, lsns, metadata, written, phases) if ids else None
            nbytes = new_view.entry.bytes if new_view is not None else 0
            old_files: List[str] = []
            with self._commit_lock:
                t = time.perf_counter()
                state = self._state
                targets = set(ids)
                targets.update(rows.deleted_ids)
                hits = self._where.group(targets)
                views = []
                for view in state.views:
                    pairs = hits.get(view.data)
                    if not pairs:
                        views.append(view)
                        continue
                    deleted = mark(view.deleted, view.data.n, [row for _, row in pairs])
                    dfile, dbytes = self._write_deletions(view.entry.name, deleted)
                    written.add(dfile)
                    nbytes += dbytes
                    if view.entry.deletes_file:
                        old_files.append(view.entry.deletes_file)
                    entry = replace(view.entry, deleted=int(deleted.sum()), deletes_file=dfile, deletes_bytes=dbytes)
                    views.append(SegmentView(entry, view.data, deleted))
                if new_view is not None:
                    views.append(new_view)
                phases["deletion_vectors"] = time.perf_counter() - t
                manifest = state.manifest.with_segments([v.entry for v in views],
                                                        flushed_lsn=max(flushed, int(rows.max_lsn)))
                written.committing()
                self._commit(manifest, views, phases)
                self._where.removed(targets.difference(ids))
                if new_view is not None:
                    self._where.stored(new_view)
        self._remove(old_files)
        self.events["flushes"] += 1
        return SegmentWriteResult(segment=new_view.entry.name if new_view else None, rows=len(ids),
                                  bytes=nbytes, phases=phases)

    # -- contract: reads -----------------------------------------------------------------------

    def search(self, queries: np.ndarray, k: int, *, filter: Any = None,
               ef: Optional[int] = None) -> SearchHits:
        """Top-k live rows per query; ``filter`` is a MetadataFilter (or a spec to compile)."""
        return self._search(queries, k, filter, ef, False)

    def search_with_metadata(self, queries: np.ndarray, k: int, *, filter: Any = None,
                             ef: Optional[int] = None) -> SearchHits:
        """:meth:`search` with each hit's metadata, read by segment row."""
        return self._search(queries, k, filter, ef, True)

    def _search(self, queries: np.ndarray, k: int, filter: Any, ef: Optional[int],
                with_metadata: bool) -> SearchHits:
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q.reshape(1, -1)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise DimensionMismatch(f"queries have shape {q.shape}, collection {self.info.name!r} has dim {self.dim}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise InvalidArgument(f"k must be a positive integer, not {k!r}")
        if ef is not None and (isinstance(ef, bool) or not isinstance(ef, (int, np.integer)) or ef < 1):
            raise InvalidArgument(f"ef must be a positive integer, not {ef!r}")
        flt = None if filter is None else compile_filter(filter)
        if flt is not None and not isinstance(flt, MetadataFilter):  # pragma: no cover - defensive
            raise InvalidArgument("filter must be a mapping or a MetadataFilter")
        for _ in range(_RETRIES):
            state = self._state
            try:
                return search_views(state.views, q, int(k), flt=flt, ef=ef, settings=self.settings,
                                    metric=self.metric, counters=self.counters,
                                    with_metadata=with_metadata)
            except SegmentRetired:
                continue   # a compaction committed and removed files this snapshot still listed
        raise StorageError(f"collection {self.info.name!r}: search kept racing compactions")

    def get(self, ids: Sequence[str]) -> Dict[str, StoredRecord]:
        """The live stored version of each id that has one (vector, metadata, LSN)."""
        for _ in range(_RETRIES):
            try:
                out: Dict[str, StoredRecord] = {}
                for data, pairs in self._where.group(ids).items():
                    rows = [r for _, r in pairs]
                    vectors = data.vectors()[rows]
                    metas = data.metadata_rows(rows)
                    for (id_, row), vec, meta in zip(pairs, vectors, metas):
                        out[id_] = StoredRecord(id=id_, vector=np.array(vec), metadata=meta,
                                                lsn=int(data.lsns[row]))
                return out
            except SegmentRetired:   # its vectors were not loaded and compaction removed its file
                continue
        raise StorageError(f"collection {self.info.name!r}: get kept racing compactions")

    def metadata(self, ids: Sequence[str]) -> Dict[str, Optional[Dict[str, Any]]]:
        """The metadata of each id with a live stored version (no vectors are read or copied)."""
        out: Dict[str, Optional[Dict[str, Any]]] = {}
        for data, pairs in self._where.group(ids).items():
            for (id_, _), meta in zip(pairs, data.metadata_rows([r for _, r in pairs])):
                out[id_] = meta
        return out

    def existing(self, ids: Sequence[str]) -> set:
        """The subset of ``ids`` with a live stored version."""
        return self._where.existing(ids)

    def count(self) -> int:
        return sum(v.entry.live_rows for v in self._state.views)

    def metadata_types(self) -> Dict[str, str]:
        """Metadata key -> ``str``/``int``/``float``/``bool`` over live segments (int + float: float)."""
        state = self._state
        gen, cached = self._types_cache
        if gen == state.manifest.generation:
            return dict(cached)
        types: Dict[str, str] = {}
        for view in state.views:
            for field in view.data.meta.schema:
                kind = column_kind(field.type)
                if kind == "null":
                    continue
                seen = types.get(field.name)
                types[field.name] = "float" if {seen, kind} == {"int", "float"} else kind
        self._types_cache = (state.manifest.generation, types)
        return dict(types)

    def stats(self) -> Dict[str, Any]:
        state = self._state
        entries = [v.entry for v in state.views]
        kinds = Counter(f"{e.index.kind}/{e.index.backend}" for e in entries if e.index)
        live = sum(e.live_rows for e in entries)
        return {
            "segments": len(entries),
            "rows": live,
            "stored_rows": sum(e.rows for e in entries),
            "deleted_rows": sum(e.deleted for e in entries),
            "bytes": sum(e.total_bytes() for e in entries),
            "segment_bytes": sum(e.bytes for e in entries),
            "index_bytes": sum(e.index.bytes for e in entries if e.index),
            "indexed_segments": sum(1 for e in entries if e.index),
            "index_kinds": dict(kinds),
            "exact_segments": sum(1 for e in entries if not e.index),
            "compactions": state.manifest.compactions,
            "flushed_lsn": state.manifest.flushed_lsn,
            "segment_bound": segment_bound(self.settings, live),
            "searches": self.counters.snapshot(),
            "flushes": self.events["flushes"],
            "index_builds": self.events["index_builds"],
            "index_reuses": self.events["index_reuses"],
            "cleanup_errors": self.events["cleanup_errors"],
            "orphans_removed_on_open": len(self.orphans_removed),
        }

    def close(self) -> None:
        """Wait for a running compaction or index build, then drop the snapshot."""
        with self._maintain_lock:
            pass


def _newest_live(rows: SegmentRows, dim: int) -> Tuple[List[str], np.ndarray, np.ndarray, list]:
    """The rows to store: one (the newest) per id, none hidden by a newer tombstone in the batch."""
    ids = list(rows.ids)
    n = len(ids)
    vectors = np.ascontiguousarray(rows.vectors, dtype=np.float32) if n else np.zeros((0, dim), np.float32)
    if vectors.shape != (n, dim):
        raise DimensionMismatch(f"write_segment: vectors of shape {vectors.shape} for {n} ids of dim {dim}")
    lsns = np.asarray(rows.lsns, dtype=np.int64)
    metadata = list(rows.metadata) if rows.metadata is not None else [None] * n
    if len(lsns) != n or len(metadata) != n:
        raise StorageError(f"write_segment: {n} ids, {len(lsns)} lsns, {len(metadata)} metadata")
    tomb: Dict[str, int] = {}
    for id_, lsn in zip(rows.deleted_ids, np.asarray(rows.deleted_lsns, dtype=np.int64).tolist()):
        tomb[id_] = max(lsn, tomb.get(id_, -1))
    if len(set(ids)) == n and tomb.keys().isdisjoint(ids):   # a memtable's rows: nothing to drop
        return ids, vectors, lsns, metadata     # handed over (SegmentRows): kept without a copy
    newest: Dict[str, int] = {}
    for i, (id_, lsn) in enumerate(zip(ids, lsns.tolist())):
        if lsn <= tomb.get(id_, -1):
            continue
        j = newest.get(id_)
        if j is None or lsn > lsns[j]:
            newest[id_] = i
    if len(newest) == n:
        return ids, vectors, lsns, metadata
    keep = sorted(newest.values())
    return [ids[i] for i in keep], vectors[keep], lsns[keep], [metadata[i] for i in keep]


