"""Background work of a collection: compaction and index builds, off the write path.

``maintain()`` (the core's background thread, every tick) runs size-tiered merges to a fixed
point, when ``auto_compaction`` is on, then builds the ANN index of every segment of at least
``indexing_threshold`` rows that lacks a current one (never built, built with other parameters,
or found missing/corrupt by a search). ``compact()`` merges every non-full segment now, then
indexes, and waits. Only one of them runs at a time; flushes and searches continue meanwhile.

A merge reads its inputs from a snapshot and writes the merged segment and its index without
holding the commit lock. At commit it takes the lock, carries over rows a concurrent flush
deleted or superseded in the inputs since that snapshot (into the merged segment's deletion
vector), swaps the segments in one manifest commit, and only then removes the input files.
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING, List, Optional, Sequence

from proxistore.contracts import CompactionResult
from proxistore.errors import StorageError

from .compaction import index_signature, merge, plan_full, plan_size_tiered
from .deletions import mark
from .index import BuildCancelled, build_index
from .snapshot import SegmentView

if TYPE_CHECKING:  # pragma: no cover
    from .store import ViperCollection

__all__ = ["Maintenance"]


class Maintenance:
    """``maintain()`` and ``compact()`` of :class:`~.store.ViperCollection` (a mixin)."""

    def maintain(self: "ViperCollection") -> List[CompactionResult]:
        """Merges the size tiers call for, then missing index builds; returns the merges run.

        Returns at once (nothing done) when another maintain() or compact() is running.
        """
        if not self._maintain_lock.acquire(blocking=False):
            return []
        results: List[CompactionResult] = []
        try:
            if self.settings.auto_compaction:
                while not self._compact_waiting and not self._stopping.is_set():
                    plan = plan_size_tiered(self._state.views, self.settings)
                    if plan is None:
                        break
                    results.append(self._merge(plan[0], plan[1]))
            self._build_indexes(yield_to_compact=True)
        except BuildCancelled:
            pass  # closing: what was written and not committed is an orphan, removed on open
        finally:
            self._maintain_lock.release()
        return results

    def stop_background(self: "ViperCollection") -> None:
        """Make a running maintain() stop at its next safe point (between index chunks)."""
        self._stopping.set()

    def compact(self: "ViperCollection") -> Optional[CompactionResult]:
        """Merge every segment below ``compaction_target_rows`` (or with deleted rows) into as
        few segments as fit, index what needs it, and wait. None when there was nothing to merge."""
        with self._alloc_lock:
            self._compact_waiting += 1  # a running maintain() stops after its current step
        try:
            self._maintain_lock.acquire()
        finally:
            with self._alloc_lock:
                self._compact_waiting -= 1
        try:
            start = time.perf_counter()
            results = []
            for group in plan_full(self._state.views, self.settings):
                current = [self._state.find(v.entry.name) for v in group]
                results.append(self._merge([v for v in current if v is not None], "manual compaction"))
            self._build_indexes()
        finally:
            self._maintain_lock.release()
        if not results:
            return None
        return CompactionResult(
            segments_in=sum(r.segments_in for r in results),
            segments_out=sum(r.segments_out for r in results),
            rows_in=sum(r.rows_in for r in results), rows_out=sum(r.rows_out for r in results),
            seconds=time.perf_counter() - start, reason="manual compaction")

    # -- merges --------------------------------------------------------------------------------

    def _merge(self: "ViperCollection", group: Sequence[SegmentView], reason: str) -> CompactionResult:
        start = time.perf_counter()
        out = merge(group, self.settings, directory=self.directory, dim=self.dim, metric=self.metric,
                    alloc=self._alloc, write=self._write, write_index=self._write_index,
                    cancel=self._stopping.is_set)
        names = {v.entry.name for v in group}
        old_files: List[str] = []
        with self._commit_lock:
            state = self._state
            current = {v.entry.name: v for v in state.views}
            missing = names - set(current)
            if missing:
                raise StorageError(f"compaction inputs {sorted(missing)} vanished before commit")
            merged_deleted = None
            for v0 in group:
                v1 = current[v0.entry.name]
                if v1.deleted is None or out.entry is None:
                    continue
                newly = v1.deleted if v0.deleted is None else (v1.deleted & ~v0.deleted)
                if newly.any():   # deleted or superseded by a flush while we merged
                    merged_deleted = mark(merged_deleted, out.entry.rows, out.positions[v0.entry.name][newly])
            new_view = None
            if out.entry is not None:
                entry = out.entry
                if merged_deleted is not None:
                    dfile, dbytes = self._write_deletions(entry.name, merged_deleted)
                    entry = replace(entry, deleted=int(merged_deleted.sum()), deletes_file=dfile,
                                    deletes_bytes=dbytes)
                new_view = SegmentView(entry, out.data, merged_deleted)
            views = []
            for v in state.views:
                if v.entry.name in names:
                    if new_view is not None:
                        views.append(new_view)
                        new_view = None
                    old_files.extend(v.entry.files())
                    continue
                views.append(v)
            manifest = state.manifest.with_segments([v.entry for v in views],
                                                    compactions=state.manifest.compactions + 1)
            self._commit(manifest, views)
        for v in group:
            v.data.retired = True   # readers of older snapshots retry instead of reading removed files
        self._remove(old_files)
        self.events["compactions"] += 1
        if out.reused_index:
            self.events["index_reuses"] += 1
        elif out.index is not None:
            self.events["index_builds"] += 1
        return CompactionResult(segments_in=len(group), segments_out=1 if out.entry else 0,
                                rows_in=out.rows_in, rows_out=out.entry.rows if out.entry else 0,
                                seconds=time.perf_counter() - start, reason=reason)

    # -- indexes -------------------------------------------------------------------------------

    def _needs_index(self: "ViperCollection", view: SegmentView) -> bool:
        e = view.entry
        if e.rows < self.settings.indexing_threshold or e.live_rows == 0:
            return False
        if e.index is None or e.index.signature() != index_signature(self.settings):
            return True
        return view.data.index_broken(e.index)

    def _build_indexes(self: "ViperCollection", *, yield_to_compact: bool = False) -> int:
        built = 0
        for view in list(self._state.views):
            if (yield_to_compact and self._compact_waiting) or self._stopping.is_set():
                break
            if self._needs_index(view):
                self._build_index(view)
                built += 1
        return built

    def _build_index(self: "ViperCollection", view: SegmentView) -> None:
        s = self.settings
        index = build_index(s.index, s.index_backend, s.index_params(), view.data.prepared(), self.metric,
                            self._stopping.is_set)
        ref = self._write_index(view.entry.name, index)
        with self._commit_lock:
            state = self._state
            cur = state.find(view.entry.name)
            if cur is None:     # cannot happen while we hold the maintain lock; stay safe anyway
                stale = [ref.file]
            else:
                old = cur.entry.index
                stale = [old.file] if old is not None else []
                view.data.set_index(ref, index)
                updated = SegmentView(replace(cur.entry, index=ref), cur.data, cur.deleted)
                views = [updated if v is cur else v for v in state.views]
                self._commit(state.manifest.with_segments([v.entry for v in views]), views)
        self._remove(stale)
        for file in stale:
            view.data.drop_index(file)
        self.events["index_builds"] += 1
