"""One flush of one collection, each phase timed and the reason recorded.

freeze memtable (and rotate the WAL) → storage writes a segment and commits its manifest with the
flushed LSN → WAL checkpoint deletes what that LSN covers → the frozen memtable is dropped.
A failure at any step keeps the frozen memtable (still searchable) and the WAL; the next attempt
resumes with the same frozen memtable.
"""
from __future__ import annotations

import logging
import time
from collections import Counter, deque
from typing import Any, Deque, Optional

from .contracts import FlushRequest
from .errors import FlushError
from .events import FlushEvent
from .runtime import CollectionRuntime

__all__ = ["FlushLog", "run_flush"]

log = logging.getLogger("proxistore.flush")


class FlushLog:
    """Counters and the recent flushes of one collection, for ``stats()``."""

    def __init__(self, keep: int) -> None:
        self.recent: Deque[FlushEvent] = deque(maxlen=keep)
        self.by_policy: Counter = Counter()
        self.failures = 0
        self.consecutive_failures = 0
        self.last_error: Optional[str] = None

    def to_dict(self) -> dict:
        return {"total": sum(self.by_policy.values()), "by_policy": dict(self.by_policy),
                "failures": self.failures, "last_error": self.last_error,
                "last": [e.to_dict() for e in self.recent]}


def run_flush(rt: CollectionRuntime, request: FlushRequest, hook: Any, flush_log: FlushLog,
              attempt: int = 1) -> Optional[FlushEvent]:
    """Flush ``rt`` for ``request``; returns the event, or None when there was nothing to flush."""
    with rt.flush_lock:
        rt.flushing = True
        try:
            return _flush(rt, request, hook, flush_log, attempt)
        finally:
            rt.flushing = False


def _flush(rt: CollectionRuntime, request: FlushRequest, hook: Any, flush_log: FlushLog,
           attempt: int) -> Optional[FlushEvent]:
    started = time.perf_counter()
    event = FlushEvent(collection=rt.name, reason=request, started_at=time.time(), attempt=attempt)
    t = time.perf_counter()
    frozen = rt.oldest_frozen() or rt.freeze()
    event.phases["freeze"] = time.perf_counter() - t
    if frozen is None:
        return None
    _fire(hook.proxistore_flush_started, event)
    try:
        rows = frozen.to_segment_rows()
        result = rt.store.write_segment(rows)
        event.phases.update(result.phases)
        t = time.perf_counter()
        event.wal_bytes_freed = rt.wal.checkpoint(rows.max_lsn)
        event.phases["wal_checkpoint"] = time.perf_counter() - t
    except Exception as exc:  # any failure is recorded, reported and retried; nothing is dropped
        event.error = f"{type(exc).__name__}: {exc}"
        event.seconds = time.perf_counter() - started
        flush_log.failures += 1
        flush_log.consecutive_failures += 1
        flush_log.last_error = event.error
        log.error("flush of %s failed (attempt %d, %s); memtable and WAL kept: %s",
                  rt.name, attempt, request.describe(), event.error)
        _fire(hook.proxistore_flush_finished, event)
        raise FlushError(f"flush of collection {rt.name!r} failed: {event.error}") from exc
    rt.drop_frozen(frozen)
    rt.db.admission.memory_freed()
    event.rows = len(rows.ids)
    event.deletes = len(rows.deleted_ids)
    event.bytes = result.bytes
    event.segment = result.segment
    event.flushed_lsn = rows.max_lsn
    event.seconds = time.perf_counter() - started
    flush_log.recent.append(event)
    flush_log.by_policy[request.policy] += 1
    flush_log.consecutive_failures = 0
    log.info("flushed %s: %d rows, %d deletes, %d bytes to %s in %.3fs (%s); phases %s",
             rt.name, event.rows, event.deletes, event.bytes, event.segment, event.seconds,
             request.describe(), {k: round(v, 6) for k, v in event.phases.items()})
    _fire(hook.proxistore_flush_finished, event)
    return event


def _fire(hook_caller: Any, event: Any) -> None:
    """Call an observer hook; an observer's bug is logged, never breaks the data path."""
    try:
        hook_caller(event=event)
    except Exception:  # observers are third-party code; the flush itself already succeeded or failed
        log.exception("an observer hook failed on %s", type(event).__name__)
