"""Background work of a collection: compaction and index builds, off the write path.

``maintain()`` (the core's background thread, every tick) runs size-tiered merges to a fixed
point, when ``auto_compaction`` is on, then builds the ANN index of every segment of at least
``indexing_threshold`` rows that lacks a current one (never built, built with other parameters,
or found missing/corrupt by a search). ``compact()`` merges every non-full segment now, then
indexes, and waits. Only one of them runs at a time; flushes and searches continue meanwhile.

Merges come before index builds, and an index build holds them up for one chunk at most.
A background merge writes its index only when that is one chunk of work (at most
:data:`BACKGROUND_CHUNK_ROWS` rows; never with the default ``indexing_threshold``): building a
bigger one takes seconds to minutes, during which flushes would pile up small segments (each
one more for every flush, insert and manifest commit to deal with), and for a segment that is
not full the index would be thrown away by its next merge. The build phase gives each big
enough segment its index, in chunks of :data:`BACKGROUND_CHUNK_ROWS` rows, and runs the
merges that became due between chunks. When such a merge takes the segment
being indexed, that build is dropped (its segment is gone). ``compact()`` builds the merged
segment's index as it merges, extending the biggest input's index when it can.

A merge reads its inputs from a snapshot and writes the merged segment and its index without
holding the commit lock. At commit it takes the lock, carries over rows a concurrent flush
deleted or superseded in the inputs since that snapshot (into the merged segment's deletion
vector), swaps the segments in one manifest commit, and only then removes the input files.
"""
from __future__ import annotations

import time
from dataclasses import replace
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence

from proxistore.contracts import CompactionResult
from proxistore.errors import StorageError

from .compaction import index_is_current, merge, plan_full, plan_size_tiered
from .deletions import mark
from .files import UncommittedFiles
from .index import BuildCancelled, build_index
from .snapshot import SegmentView

#: Rows added to an index between two looks for due merges in background builds (about 0.1 s
#: of HNSW build at M=16, efConstruction=200, 384-d, 2 cores; a chunk's rows are added in
#: parallel all the same).
BACKGROUND_CHUNK_ROWS = 1024

#: A background ``maintain()`` starts no further index build after this many seconds: it returns,
#: and ``has_background_work()`` tells the core to give it another turn after the other
#: collections have had theirs (under a steady ingest, merges keep making segments to index, and
#: one collection's maintain() would otherwise keep the core's storage worker to itself).
MAINTAIN_TURN_SECONDS = 2.0


class _Superseded(Exception):
    """A merge that ran between two chunks of an index build took the segment being indexed."""

if TYPE_CHECKING:  # pragma: no cover
    from .store import ViperCollection

__all__ = ["Maintenance"]


class Maintenance:
    """``maintain()`` and ``compact()`` of :class:`~.store.ViperCollection` (a mixin)."""

    def maintain(self: "ViperCollection") -> List[CompactionResult]:
        """Merges the size tiers call for, then missing index builds; returns the merges run.

        One turn: after :data:`MAINTAIN_TURN_SECONDS` it starts no further merge or build (at
        least one of each runs) and :meth:`has_background_work` says what is left. Returns at
        once (nothing done) when another maintain() or compact() is running.
        """
        if not self._maintain_lock.acquire(blocking=False):
            return []
        results: List[CompactionResult] = []
        try:
            until = time.monotonic() + MAINTAIN_TURN_SECONDS
            self._merge_due(results, until=until)
            self._build_indexes(background=results, until=until)
        except BuildCancelled:
            pass  # closing: what was written and not committed is an orphan, removed on open
        finally:
            self._maintain_lock.release()
        return results

    def _merge_due(self: "ViperCollection", results: List[CompactionResult],
                   building: Optional[str] = None, until: Optional[float] = None) -> None:
        """Run the size-tiered merges due now, to a fixed point (when auto_compaction is on),
        or start none after ``until`` (time.monotonic()) once one is done. ``building``: the
        segment whose index is being built; a merge that takes it raises :class:`_Superseded`
        before it starts."""
        if not self.settings.auto_compaction:
            return
        merged = 0
        while not self._compact_waiting and not self._stopping.is_set():
            if merged and until is not None and time.monotonic() >= until:
                return
            plan = plan_size_tiered(self._state.views, self.settings)
            if plan is None:
                return
            group, reason = plan
            if building is not None and any(v.entry.name == building for v in group):
                raise _Superseded(building)
            small = sum(v.entry.live_rows for v in group) <= BACKGROUND_CHUNK_ROWS
            results.append(self._merge(group, reason, with_index=small))
            merged += 1

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
                results.append(self._merge([v for v in current if v is not None], "manual compaction",
                                           with_index=True))
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

    def _merge(self: "ViperCollection", group: Sequence[SegmentView], reason: str, *,
               with_index: bool) -> CompactionResult:
        """Merge ``group`` into one segment (with its index when ``with_index`` and it is big enough)."""
        start = time.perf_counter()
        with UncommittedFiles(self.fs, self.directory) as written:
            out = merge(group, self.settings, fs=self.fs, directory=self.directory, dim=self.dim, metric=self.metric,
                        alloc=self._alloc, write=lambda file, data: self._write(written.add(file), data),
                        write_index=lambda segment, index: self._write_index(segment, index, written),
                        cancel=self._stopping.is_set, with_index=with_index)
            names = {v.entry.name for v in group}
            old_files: List[str] = []
            with self._commit_lock:
                state = self._state
                current = {v.entry.name: v for v in state.views}
                missing = names - set(current)
                if missing:
                    raise StorageError(f"compaction inputs {sorted(missing)} vanished before commit")
                merged_deleted = None
                merged_view = None
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
                        written.add(dfile)
                        entry = replace(entry, deleted=int(merged_deleted.sum()), deletes_file=dfile,
                                        deletes_bytes=dbytes)
                    new_view = SegmentView(entry, out.data, merged_deleted)
                merged_view = new_view
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
                written.committing()
                self._commit(manifest, views)
                if merged_view is not None:
                    self._where.stored(merged_view)   # the live ids of the inputs now live here
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
        if e.index is None or not index_is_current(e.index, self.settings):
            return True
        return view.data.index_broken(e.index)

    def has_background_work(self: "ViperCollection") -> bool:
        """Whether a segment needs an index, or (with auto_compaction) a merge is due."""
        views = self._state.views
        if any(self._needs_index(v) for v in views):
            return True
        return self.settings.auto_compaction and plan_size_tiered(views, self.settings) is not None

    def _build_indexes(self: "ViperCollection", *,
                       background: Optional[List[CompactionResult]] = None,
                       until: Optional[float] = None) -> int:
        """Build every missing index. ``background`` (maintain()): stop when compact() waits,
        and between chunks run the merges that became due, appending them to that list; start
        no build after ``until`` (time.monotonic()) once one is done."""
        built = 0
        while not self._stopping.is_set() and not (background is not None and self._compact_waiting):
            if built and until is not None and time.monotonic() >= until:
                break
            view = next((v for v in self._state.views if self._needs_index(v)), None)
            if view is None:
                break
            if background is None:
                self._build_index(view, self._stopping.is_set)
                built += 1
                continue
            try:
                self._build_index(view, self._between_chunks(view, background), BACKGROUND_CHUNK_ROWS)
                built += 1
            except _Superseded:
                self.events["index_builds_dropped"] += 1
                self._merge_due(background)     # the merge that takes the segment (if not compact())
        return built

    def _between_chunks(self: "ViperCollection", view: SegmentView,
                        results: List[CompactionResult]) -> Callable[[], bool]:
        """The cancel check of a background build: True when closing; otherwise it first runs
        the merges due meanwhile, and raises _Superseded when one of them, or a compact() that
        waits for this build, is going to merge ``view`` (its index would be thrown away)."""
        name = view.entry.name

        def check() -> bool:
            if self._stopping.is_set():
                return True
            if self._compact_waiting:
                if any(v.entry.name == name for g in plan_full(self._state.views, self.settings) for v in g):
                    raise _Superseded(name)
                return False
            self._merge_due(results, building=name)
            return self._stopping.is_set()
        return check

    def _build_index(self: "ViperCollection", view: SegmentView, cancel: Callable[[], bool],
                     chunk_rows: Optional[int] = None) -> None:
        s = self.settings
        index = build_index(s.index, s.build_backend, s.index_params(), view.data.prepared_once(), self.metric,
                            cancel, chunk_rows)
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
