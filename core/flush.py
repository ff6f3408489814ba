"""Flushing one collection: freeze now, write in order, each flush timed and explained.

When a policy says a collection is due, its active memtable is frozen at once (cheap: the WAL
rotates and a new memtable takes writes) and tagged with the reason. A worker then drains the
frozen memtables oldest first, one segment each: storage writes the segment and commits its
manifest with the flushed LSN (the flush has now succeeded) → the WAL checkpoint deletes what
that LSN covers (a failure here is reported, and the next checkpoint catches up) → the frozen
memtable is dropped. Freezing does not wait for a running flush, so segments stay close to the
threshold that triggered them even under fast ingest. A failure keeps the frozen memtable (still
searchable) and the WAL; the next attempt resumes with the same memtable.
"""
from __future__ import annotations

import logging
import time
from collections import Counter
from typing import List, Optional

from .contracts import FlushRequest
from .errors import FlushError
from .events import FlushEvent
from .history import RecentEvents
from .memtable import Memtable
from .registry import Registry
from .runtime import CollectionRuntime

__all__ = ["FlushLog", "freeze_for", "drain"]

log = logging.getLogger("proxistore.flush")


class FlushLog:
    """Counters of one collection's flushes since open, and its recent flush attempts.

    ``recent`` holds each attempt's ``FlushEvent.to_dict()``, newest last, including those that
    earlier opens recorded on disk (see ``history.py``); the counters count this open only.
    """

    def __init__(self, recent: RecentEvents) -> None:
        self.recent = recent
        self.by_policy: Counter = Counter()
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
        return {"total": sum(by_policy.values()), "by_policy": by_policy,
                "failures": self.failures, "checkpoint_failures": self.checkpoint_failures,
                "last_error": self.last_error, "counted_since": self.opened_at,
                "history_errors": self.recent.history_errors, "last": recent}


def freeze_for(rt: CollectionRuntime, request: FlushRequest) -> Optional[Memtable]:
    """Freeze ``rt``'s active memtable for ``request``; None when it is empty."""
    return rt.freeze(request)


def drain(rt: CollectionRuntime, registry: Registry, flush_log: FlushLog) -> List[FlushEvent]:
    """Flush every frozen memtable of ``rt``, oldest first; raises FlushError on the first failure."""
    events = []
    with rt.flush_lock:
        rt.flushing = True
        try:
            while True:
                frozen = rt.oldest_frozen()
                if frozen is None:
                    return events
                events.append(_flush(rt, frozen, registry, flush_log))
        finally:
            rt.flushing = False


def _flush(rt: CollectionRuntime, frozen: Memtable, registry: Registry, flush_log: FlushLog) -> FlushEvent:
    request = frozen.flush_reason
    started = time.perf_counter()
    event = FlushEvent(collection=rt.name, reason=request, started_at=time.time(),
                       attempt=flush_log.consecutive_failures + 1)
    event.phases["freeze"] = frozen.freeze_seconds
    if frozen.frozen_at is not None:
        event.waited_seconds = max(0.0, time.monotonic() - frozen.frozen_at)
    registry.notify("proxistore_flush_started", event)
    try:
        rows = frozen.to_segment_rows()
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
    frozen.flush_event = event
    flush_log.record(event)
    flush_log.by_policy[request.policy] += 1
    flush_log.consecutive_failures = 0
    log.info("flushed %s: %d rows, %d deletes, %d bytes to %s in %.3fs (%s); phases %s",
             rt.name, event.rows, event.deletes, event.bytes, event.segment, event.seconds,
             request.describe(), {k: round(v, 6) for k, v in event.phases.items()})
    registry.notify("proxistore_flush_finished", event)
    return event
