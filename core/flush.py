"""Flushing one collection: freeze now, write in order, each flush timed and explained.

When a policy says a collection is due, its active memtable is frozen at once (cheap: the WAL
rotates and a new memtable takes writes) and tagged with the reason. A worker then drains the
frozen memtables oldest first: storage writes a segment and commits its manifest with the flushed
LSN (the flush has now succeeded) → the WAL checkpoint deletes what that LSN covers (a failure
here is reported, and the next checkpoint catches up) → the flushed memtables are dropped.
Freezing does not wait for a running flush, so each memtable stays close to the threshold that
froze it even under fast ingest.

When ingest outruns the flushes, frozen memtables queue up. One flush then takes the oldest of
them that were frozen by the same policy, up to ``maintenance.max_flush_bytes`` of memtable, and
writes them as one segment (as RocksDB flushes its immutable memtables together): a flush's cost
is mostly per segment (deletion vectors, manifest, fsyncs, WAL checkpoint), so flushing the queue
one memtable at a time let it grow without bound, and every search scanned it exactly. A failure
keeps the frozen memtables (still searchable) and the WAL; the next attempt resumes with them.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .contracts import FlushRequest, SegmentRows
from .errors import FlushError
from .events import FlushEvent
from .history import RecentEvents
from .memtable import Memtable
from .registry import Registry
from .runtime import CollectionRuntime

__all__ = ["FlushLog", "freeze_for", "drain", "merged_rows"]

log = logging.getLogger("proxistore.flush")


class FlushLog:
    """Counters of one collection's flushes since open, and its recent flush attempts.

    ``recent`` holds each attempt's ``FlushEvent.to_dict()``, newest last, including those that
    earlier opens recorded on disk (see ``history.py``); the counters count this open only.
    ``by_policy`` counts flushes as the policies asked for them: one per memtable a policy froze
    and storage then holds. ``writes`` counts segment writes, which are fewer when queued
    memtables were written together.
    """

    def __init__(self, recent: RecentEvents) -> None:
        self.recent = recent
        self.by_policy: Counter = Counter()
        self.writes = 0
        self.failures = 0
        self.consecutive_failures = 0
        self.checkpoint_failures = 0
        self.last_error: Optional[str] = None
        self.opened_at = time.time()

    def record(self, event: FlushEvent) -> None:
        """Keep ``event`` (a finished attempt, failed or not) in memory and in the history."""
        self.recent.record(event.to_dict())

    @property
    def total(self) -> int:
        """Flushes that succeeded since open."""
        return sum(dict(self.by_policy).values())   # one C call copies it (see to_dict)

    def to_dict(self) -> dict:
        # Copies first, each made in one C call that a worker's append cannot interleave with:
        # iterating the live deque in Python raises "deque mutated during iteration" when a
        # flush finishes meanwhile (stats() is called from any thread).
        recent, by_policy = self.recent.list(), dict(self.by_policy)
        return {"total": sum(by_policy.values()), "by_policy": by_policy, "writes": self.writes,
                "failures": self.failures, "checkpoint_failures": self.checkpoint_failures,
                "last_error": self.last_error, "counted_since": self.opened_at,
                "history_errors": self.recent.history_errors, "last": recent}


def freeze_for(rt: CollectionRuntime, request: FlushRequest) -> Optional[Memtable]:
    """Freeze ``rt``'s active memtable for ``request``; None when it is empty."""
    return rt.freeze(request)


def drain(rt: CollectionRuntime, registry: Registry, flush_log: FlushLog, max_bytes: int = 0) -> List[FlushEvent]:
    """Flush every frozen memtable of ``rt``, oldest first; raises FlushError on the first failure.

    ``max_bytes``: how many memtable bytes one flush may write as one segment when several
    frozen memtables wait (``maintenance.max_flush_bytes``); 0 flushes each on its own."""
    events = []
    with rt.flush_lock:
        rt.flushing = True
        try:
            while True:
                frozen = rt.frozen_for_flush(max_bytes)
                if not frozen:
                    return events
                events.append(_flush(rt, frozen, registry, flush_log))
        finally:
            rt.flushing = False


def merged_rows(parts: Sequence[SegmentRows]) -> SegmentRows:
    """The rows of several frozen memtables, oldest first, as the rows of one flush: the newest
    version of each id, and a tombstone only where an id's newest operation is a delete (a newer
    live row supersedes older stored versions by itself)."""
    if len(parts) == 1:
        return parts[0]
    newest: Dict[str, Tuple[int, int, bool]] = {}
    entries = 0
    for p, rows in enumerate(parts):    # a memtable holds one entry per id: live or a tombstone
        for i, id_ in enumerate(rows.ids):
            newest[id_] = (p, i, True)
        for i, id_ in enumerate(rows.deleted_ids):
            newest[id_] = (p, i, False)
        entries += len(rows.ids) + len(rows.deleted_ids)
    if len(newest) == entries:          # no id in two of them: the rows as they are
        keep = [(np.arange(len(r.ids)), np.arange(len(r.deleted_ids))) for r in parts]
    else:
        keep = [(np.array([i for i, id_ in enumerate(r.ids) if newest[id_] == (p, i, True)], dtype=np.int64),
                 np.array([i for i, id_ in enumerate(r.deleted_ids) if newest[id_] == (p, i, False)],
                          dtype=np.int64))
                for p, r in enumerate(parts)]
    return SegmentRows(
        ids=[r.ids[i] for r, (live, _) in zip(parts, keep) for i in live.tolist()],
        vectors=np.concatenate([r.vectors[live] for r, (live, _) in zip(parts, keep)]),
        lsns=np.concatenate([np.asarray(r.lsns)[live] for r, (live, _) in zip(parts, keep)]),
        metadata=[r.metadata[i] for r, (live, _) in zip(parts, keep) for i in live.tolist()],
        deleted_ids=[r.deleted_ids[i] for r, (_, dead) in zip(parts, keep) for i in dead.tolist()],
        deleted_lsns=np.concatenate([np.asarray(r.deleted_lsns)[dead] for r, (_, dead) in zip(parts, keep)]),
        max_lsn=max(r.max_lsn for r in parts),
    )


def _flush(rt: CollectionRuntime, frozen: List[Memtable], registry: Registry, flush_log: FlushLog) -> FlushEvent:
    """Write ``frozen`` (oldest first, frozen by one policy) as one segment."""
    oldest = frozen[0]
    request = oldest.flush_reason
    started = time.perf_counter()
    event = FlushEvent(collection=rt.name, reason=request, started_at=time.time(),
                       attempt=flush_log.consecutive_failures + 1, memtables=len(frozen))
    event.phases["freeze"] = sum(m.freeze_seconds for m in frozen)
    if oldest.frozen_at is not None:
        event.waited_seconds = max(0.0, time.monotonic() - oldest.frozen_at)
    registry.notify("proxistore_flush_started", event)
    try:
        rows = merged_rows([m.to_segment_rows() for m in frozen])
        result = rt.store.write_segment(rows)
        event.phases.update(result.phases)
    except Exception as exc:  # any failure is recorded, reported and retried; nothing is dropped
        event.error = f"{type(exc).__name__}: {exc}"
        event.seconds = time.perf_counter() - started
        flush_log.failures += 1
        flush_log.consecutive_failures += 1
        flush_log.last_error = event.error
        flush_log.record(event)
        log.error("flush of %s failed (attempt %d, %s); memtable and WAL kept: %s",
                  rt.name, event.attempt, request.describe(), event.error)
        registry.notify("proxistore_flush_finished", event)
        raise FlushError(f"flush of collection {rt.name!r} failed: {event.error}") from exc
    # The rows are durably in storage: the flush has succeeded. A failed checkpoint only leaves
    # WAL segments that the next checkpoint (or the next open) deletes; retrying the flush
    # would write the same rows into storage a second time.
    t = time.perf_counter()
    try:
        event.wal_bytes_freed = rt.wal.checkpoint(rows.max_lsn)
    except Exception as exc:  # reported and counted; the next checkpoint covers these segments
        event.checkpoint_error = f"{type(exc).__name__}: {exc}"
        flush_log.checkpoint_failures += 1
        flush_log.last_error = event.checkpoint_error
        log.warning("flush of %s: rows are in storage, but the WAL checkpoint at LSN %d failed "
                    "(the next checkpoint deletes those segments): %s", rt.name, rows.max_lsn,
                    event.checkpoint_error)
    event.phases["wal_checkpoint"] = time.perf_counter() - t
    rt.drop_frozen(frozen)
    rt.db.admission.memory_freed()
    event.rows = len(rows.ids)
    event.deletes = len(rows.deleted_ids)
    event.bytes = result.bytes
    event.segment = result.segment
    event.flushed_lsn = rows.max_lsn
    event.seconds = time.perf_counter() - started
    for m in frozen:
        m.flush_event = event
    flush_log.record(event)
    flush_log.by_policy[request.policy] += len(frozen)
    flush_log.writes += 1
    flush_log.consecutive_failures = 0
    log.info("flushed %s: %d rows, %d deletes from %d memtable(s), %d bytes to %s in %.3fs (%s); phases %s",
             rt.name, event.rows, event.deletes, event.memtables, event.bytes, event.segment, event.seconds,
             request.describe(), {k: round(v, 6) for k, v in event.phases.items()})
    registry.notify("proxistore_flush_finished", event)
    return event
